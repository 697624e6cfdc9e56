"""The SKQ scheduler word and its policy labels (docs/semantics.md §3.2; defect D4).

A scheduler word packs four bytes::

    bits 0-7 sched | bits 8-15 sargs | bits 16-23 feat | bits 24-31 fargs

``sched`` selects the placement policy (0 random, 0x01 QUEUE, 0x02 CPU, 0x04 BEST),
``sargs`` is its argument (extra random queues for the QUEUE/CPU hybrids, N for
best-of-N), ``feat`` is a feature bit set (only 0x01, work stealing) and ``fargs`` the
feature argument (knotes stolen per attempt).

The original kernel accepted any word and silently treated unknown or combined
policies as random (D4).  Here every :class:`SchedWord` is valid by construction:
``sched`` in {0, 1, 2, 4}, ``feat`` a subset of {0x01}, ``fargs >= 1`` when stealing,
``sargs >= 1`` for best-of-N, and every byte in 0..255.  Invalid words raise
:class:`ValueError`, which the kqueue maps to ``OSError(EINVAL)``.

Labels are the names the authors' scripts use (``rand``, ``queue2``, ``cpu0_ws``,
``best2_ws``...).  :func:`parse_sched` turns a label into a word and
:func:`sched_label` / :attr:`SchedWord.label` give the canonical label back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from skqueue.constants import (
    KQ_SCHED_BEST,
    KQ_SCHED_CPU,
    KQ_SCHED_FEAT_WS,
    KQ_SCHED_QUEUE,
    KQSCHED_GET_FARGS,
    KQSCHED_GET_FEAT,
    KQSCHED_GET_SARGS,
    KQSCHED_GET_SCHED,
    KQSCHED_MAKE,
)

__all__ = ["SchedWord", "parse_sched", "sched_label", "SCHED_RANDOM", "SCHED_NAMES"]

#: ``sched`` value of the random policy (the default; also the fallback path).
SCHED_RANDOM = 0

#: Valid ``sched`` values and the label stem of each.
SCHED_NAMES: dict[int, str] = {
    SCHED_RANDOM: "rand",
    KQ_SCHED_QUEUE: "queue",
    KQ_SCHED_CPU: "cpu",
    KQ_SCHED_BEST: "best",
}

_VALID_FEAT = KQ_SCHED_FEAT_WS  # the union of all known feature bits

_ACCEPTED_FORMS = (
    "accepted forms: 'rand', 'queueN' (alias 'qN'), 'cpuN' (N in 0..255), "
    "'bestN' (N in 1..255), each optionally followed by '_ws' or '_wsK' (K in 1..255), "
    "or 'ws' / 'wsK' alone for random + work stealing "
    "('vanilla' and 'legacy' are server modes, not scheduler words)"
)

# base[_wsK] or wsK alone.  Digits are captured loosely and range-checked afterwards so
# the error message can say which number is out of range.
_LABEL_RE = re.compile(
    r"""^(?:
        (?P<base>rand|queue|q|cpu|best)(?P<n>\d*)(?:_ws(?P<k>\d*))?
      | ws(?P<k_alone>\d*)
    )$""",
    re.VERBOSE,
)


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"scheduler word: {name}={value} is out of range 0..255")


@dataclass(frozen=True, slots=True)
class SchedWord:
    """A validated, unpacked SKQ scheduler word.

    Construction validates (see :meth:`from_word` for the rules), so every instance
    describes a policy the scheduler can run.
    """

    sched: int
    sargs: int
    feat: int
    fargs: int

    def __post_init__(self) -> None:
        for name in ("sched", "sargs", "feat", "fargs"):
            _check_byte(name, getattr(self, name))
        if self.sched not in SCHED_NAMES:
            raise ValueError(
                f"scheduler word: unknown policy sched=0x{self.sched:02x}; expected one of "
                "0 (random), 0x01 (QUEUE), 0x02 (CPU), 0x04 (BEST); combinations are invalid"
            )
        if self.feat & ~_VALID_FEAT:
            raise ValueError(
                f"scheduler word: unknown feature bits feat=0x{self.feat:02x}; "
                "only 0x01 (work stealing) is defined"
            )
        if self.feat & KQ_SCHED_FEAT_WS and self.fargs < 1:
            raise ValueError(
                "scheduler word: work stealing needs fargs >= 1 (knotes stolen per attempt)"
            )
        if self.sched == KQ_SCHED_BEST and self.sargs < 1:
            raise ValueError("scheduler word: best-of-N needs N = sargs >= 1")

    @classmethod
    def from_word(cls, word: int) -> SchedWord:
        """Unpack and validate a 32-bit scheduler word (semantics §3.2, D4).

        Rules: ``sched`` in {0, 0x01, 0x02, 0x04}; ``feat`` a subset of {0x01};
        ``fargs >= 1`` when work stealing is on; ``sargs >= 1`` for BEST.
        ``sargs`` and ``fargs`` may be anything up to 255.  Raises :class:`ValueError`.
        """
        if isinstance(word, bool) or not isinstance(word, int):
            raise ValueError(f"scheduler word must be an int, not {type(word).__name__}")
        if not 0 <= word <= 0xFFFFFFFF:
            raise ValueError(f"scheduler word {word:#x} does not fit in 32 bits")
        return cls(
            KQSCHED_GET_SCHED(word),
            KQSCHED_GET_SARGS(word),
            KQSCHED_GET_FEAT(word),
            KQSCHED_GET_FARGS(word),
        )

    @property
    def ws(self) -> bool:
        """True when work stealing (``KQ_SCHED_FEAT_WS``) is enabled."""
        return bool(self.feat & KQ_SCHED_FEAT_WS)

    @property
    def word(self) -> int:
        """The packed word, as ``KQSCHED_MAKE(sched, sargs, feat, fargs)``."""
        return KQSCHED_MAKE(self.sched, self.sargs, self.feat, self.fargs)

    @property
    def uses_topology(self) -> bool:
        """True for the CPU and QUEUE policies, which place by topology domain."""
        return self.sched in (KQ_SCHED_CPU, KQ_SCHED_QUEUE)

    @property
    def label(self) -> str:
        """Canonical label: ``rand``, ``queueN``, ``cpuN``, ``bestN``, plus ``_ws``/``_wsK``.

        Random with stealing is ``ws`` / ``wsK``.  ``sargs`` is ignored by the random
        policy and does not appear in its label.  ``fargs`` without stealing is ignored
        too, so such words do not round-trip through the label (their behaviour does).
        """
        if self.sched == SCHED_RANDOM:
            if not self.ws:
                return "rand"
            return "ws" if self.fargs == 1 else f"ws{self.fargs}"
        base = f"{SCHED_NAMES[self.sched]}{self.sargs}"
        if not self.ws:
            return base
        return f"{base}_ws" if self.fargs == 1 else f"{base}_ws{self.fargs}"


def _number(text: str, default: int, what: str, label: str, lo: int) -> int:
    if text == "":
        return default
    value = int(text)
    if not lo <= value <= 0xFF:
        raise ValueError(f"policy label {label!r}: {what} {value} out of range {lo}..255")
    return value


def parse_sched(label: str) -> int:
    """Turn a policy label into a scheduler word (DESIGN 1, semantics §3.2).

    Forms (case-insensitive, surrounding whitespace ignored): ``rand``, ``queueN`` (or
    ``qN``), ``cpuN`` with N in 0..255, ``bestN`` with N in 1..255, each optionally
    followed by ``_ws`` (steal 1 per attempt) or ``_wsK`` (steal K, 1..255); ``ws`` or
    ``wsK`` alone means random + work stealing.  Examples: ``best2_ws`` -> 0x01010204,
    ``q0_ws`` -> 0x01010001, ``ws1`` -> 0x01010000.  Anything else raises
    :class:`ValueError` naming the accepted forms.
    """
    if not isinstance(label, str):
        raise ValueError(f"policy label must be a str, not {type(label).__name__}")
    text = label.strip().lower()
    m = _LABEL_RE.match(text)
    if m is None:
        raise ValueError(f"unknown policy label {label!r}; {_ACCEPTED_FORMS}")
    feat = fargs = 0
    if m.group("base") is None:  # 'ws' / 'wsK' alone
        sched, sargs = SCHED_RANDOM, 0
        feat, fargs = KQ_SCHED_FEAT_WS, _number(m.group("k_alone"), 1, "steal count", label, 1)
    else:
        base, n = m.group("base"), m.group("n")
        if base == "rand":
            if n:
                raise ValueError(f"policy label {label!r}: 'rand' takes no number; "
                                 f"{_ACCEPTED_FORMS}")
            sched, sargs = SCHED_RANDOM, 0
        else:
            if not n:
                raise ValueError(f"policy label {label!r}: '{base}' needs a number; "
                                 f"{_ACCEPTED_FORMS}")
            sched = {"queue": KQ_SCHED_QUEUE, "q": KQ_SCHED_QUEUE, "cpu": KQ_SCHED_CPU,
                     "best": KQ_SCHED_BEST}[base]
            lo = 1 if sched == KQ_SCHED_BEST else 0
            sargs = _number(n, 0, "N", label, lo)
        if m.group("k") is not None:
            feat, fargs = KQ_SCHED_FEAT_WS, _number(m.group("k"), 1, "steal count", label, 1)
    return SchedWord(sched, sargs, feat, fargs).word


def sched_label(word: int) -> str:
    """Canonical label of a scheduler word; :class:`ValueError` if the word is invalid."""
    return SchedWord.from_word(word).label
