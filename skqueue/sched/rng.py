"""Injectable random source for the scheduler (docs/semantics.md §3.2, D6).

The original used a Park-Miller generator seeded from object addresses and carved
best-of-N draws out of 8-bit slices of a single 31-bit number, which capped it at 256
queues, made draws dependent, and (when excluding one queue) doubled a neighbour's
odds.  :class:`Rng` instead wraps its own :class:`random.Random` (never the global
one): every sample is an independent uniform draw, any number of queues works, and a
user seed makes runs reproducible.  The simulator passes a seeded ``Rng``; the runtime
may give each kqueue (or each kevq, via :meth:`Rng.spawn`) its own.

Concurrency: each method's result is a valid draw when called from several threads,
because every step it takes on the underlying generator (``getrandbits``/``random``)
is a single C call that CPython makes atomic (the GIL on default builds, a per-object
critical section on free-threaded builds).  Concurrent use interleaves the stream, so
bit-for-bit reproducibility needs one thread per ``Rng``.
"""

from __future__ import annotations

import os
import random

__all__ = ["Rng"]


class Rng:
    """Independent, seedable random source (``Rng(None)`` seeds from ``os.urandom``)."""

    __slots__ = ("_r", "seed")

    def __init__(self, seed: int | None = None) -> None:
        if seed is None:
            seed = int.from_bytes(os.urandom(16), "little")
        #: The seed actually used (the urandom one too), so a run can be replayed.
        self.seed: int = seed
        self._r = random.Random(seed)

    def randrange(self, n: int) -> int:
        """Uniform integer in ``0..n-1``; ``ValueError`` if ``n < 1``.

        Exact (rejection sampling on ``getrandbits``, the same method CPython's
        ``randrange`` uses) but without its argument handling, which matters on the
        per-event path.
        """
        if n <= 1:
            if n == 1:
                return 0
            raise ValueError(f"randrange: empty range (n={n})")
        bits = n.bit_length()
        getrandbits = self._r.getrandbits
        x = getrandbits(bits)
        while x >= n:
            x = getrandbits(bits)
        return x

    def random(self) -> float:
        """Uniform float in [0, 1)."""
        return self._r.random()

    def sample_distinct(self, n_items: int, k: int, exclude_index: int | None) -> list[int]:
        """``k`` uniform draws without replacement from ``0..n_items-1`` minus ``exclude_index``.

        Returned in draw order.  ``k`` is capped at the number of eligible indices, so
        the result may be shorter (empty when nothing is eligible).  The exclusion is
        an exact bijection from ``n_items - 1`` slots, so every eligible index is
        equally likely (the original's "i+1 on a hit" skew, D6, cannot happen).
        Every ordered draw is equally likely too: the order breaks :func:`choose`'s ties.
        Both paths draw with :meth:`randrange` alone; ``random.Random.sample`` first
        checks its population against an ABC, which nearly doubles the cost of a
        best-of-2 draw over two kevqs (every activation, in a two-thread server).
        ``exclude_index`` outside ``0..n_items-1`` excludes nothing.
        """
        if exclude_index is not None and not 0 <= exclude_index < n_items:
            exclude_index = None
        m = n_items - 1 if exclude_index is not None else n_items
        if k > m:
            k = m
        if k <= 0:
            return []
        randrange = self.randrange
        if 2 * k <= m:  # few draws among many: rejection is cheap (the common best-of-2)
            out: list[int] = []
            while len(out) < k:
                x = randrange(m)
                if x not in out:
                    out.append(x)
        else:  # most of a small range (best-of-2 over 2 or 3 kevqs): partial Fisher-Yates
            out = list(range(m))
            # the last position of a full shuffle has one choice left (randrange(1) is 0)
            for i in range(k if k < m else m - 1):
                j = i + randrange(m - i)
                out[i], out[j] = out[j], out[i]
            del out[k:]
        if exclude_index is not None:
            out = [i + 1 if i >= exclude_index else i for i in out]
        return out

    def spawn(self) -> Rng:
        """A new ``Rng`` seeded from this one (deterministic if this one is seeded)."""
        return Rng(self._r.getrandbits(64))

    def __repr__(self) -> str:
        return f"Rng(seed={self.seed})"
