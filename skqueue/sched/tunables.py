"""Scheduler tunables (the original's sysctls) and the ``FKQTUNE`` word
(docs/semantics.md §3.3, §3.18).

The original kept ``kern.kq_cache_pen``, ``kern.kq_ws_int``, ``kern.kq_ws_kn_factor``,
``kern.log_threshold`` and ``kern.kq_calloutmax`` as global sysctls.  Here they are a
plain :class:`Tunables` object: a process-wide default that each kqueue copies at
creation and may then change on its own, so nothing is module-level state.  Times are
monotonic nanoseconds (D5): the 1000-cycle cache penalty becomes 476 ns (2.1 GHz).

The per-kqueue knobs set through ``FKQTUNE`` (``rtshare``, ``tfreq``) are not here:
they belong to the kqueue and are validated by :func:`validate_tune`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from skqueue.constants import KQTUNE_FREQ, KQTUNE_PARSE_OBJ, KQTUNE_PARSE_VAL, KQTUNE_RTSHARE

__all__ = [
    "Tunables",
    "validate_tune",
    "DEFAULT_RTSHARE",
    "DEFAULT_TFREQ",
    "RTSHARE_MAX",
    "TFREQ_MAX",
]

#: Default realtime share, percent of each batch (semantics §3.3).
DEFAULT_RTSHARE = 100
#: Default target frequency; 0 = no batch cap (semantics §3.3).
DEFAULT_TFREQ = 0
RTSHARE_MAX = 100
TFREQ_MAX = 0xFFFF


@dataclass(slots=True)
class Tunables:
    """Scheduler tunables of one kqueue (semantics §3.18); copy with :meth:`copy`.

    - ``cache_pen_ns``: hybrid penalty; a remote kevq must beat the local one by more
      than this (D2).  Original: 1000 cycles = 476 ns at 2.1 GHz.
    - ``ws_interval_ns``: sleep slice of an idle stealing thread (``kern.kq_ws_int``).
    - ``ws_kn_factor``: at most ``fargs * ws_kn_factor`` entries are examined per steal.
    - ``log_threshold``: a diagnostic, off (0) by default: when set, a scan on a kevq
      holding this many knotes logs a WARNING with the kqueue's dump (at most once a
      second per kevq).  The original's sysctl defaulted to 400 and printed on every
      scan; stock kqueue prints nothing.
    - ``timer_max``: limit on live timers (``kern.kq_calloutmax``; the benchmarks' value).
    - ``seed``: seed of the kqueue's random source; ``None`` = from ``os.urandom``.
    - ``rt_idle_first``: realtime activations go to an idle thread when one exists,
      before the policy (a skqueue extension; see ``policy.choose``).
    - ``idle_first``: every activation goes to an idle thread when one exists, before
      the policy (a skqueue extension, off by default: it changes what the original's
      policies decide; see ``policy.choose``).
    - ``rt_steal``: a thread entering a scan with no realtime work of its own takes the
      oldest realtime event from a busy thread's queue (a skqueue extension), so a
      realtime event waits for the first thread to come back, not for one thread.
    """

    cache_pen_ns: int = 476
    ws_interval_ns: int = 100_000
    ws_kn_factor: int = 2
    log_threshold: int = 0
    timer_max: int = 65536
    seed: int | None = None
    rt_idle_first: bool = True
    rt_steal: bool = True
    idle_first: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ValueError` if a value is out of range (all must be >= 0;
        ``ws_interval_ns``, ``ws_kn_factor`` and ``timer_max`` must be >= 1)."""
        if self.cache_pen_ns < 0:
            raise ValueError(f"cache_pen_ns must be >= 0, got {self.cache_pen_ns}")
        if self.ws_interval_ns < 1:
            raise ValueError(f"ws_interval_ns must be >= 1, got {self.ws_interval_ns}")
        if self.ws_kn_factor < 1:
            raise ValueError(f"ws_kn_factor must be >= 1, got {self.ws_kn_factor}")
        if self.log_threshold < 0:
            raise ValueError(f"log_threshold must be >= 0, got {self.log_threshold}")
        if self.timer_max < 1:
            raise ValueError(f"timer_max must be >= 1, got {self.timer_max}")

    def copy(self) -> Tunables:
        """An independent copy (each kqueue gets its own)."""
        return replace(self)


def validate_tune(word: int, multi: bool) -> tuple[int, int]:
    """Parse an ``FKQTUNE`` word ``KQTUNE_MAKE(obj, val)`` into ``(obj, val)``.

    ``KQTUNE_RTSHARE`` accepts 0..100 (D7: 0 means no reserved realtime slots);
    ``KQTUNE_FREQ`` accepts 0..65535 (0 = off).  Any other object, a value out of range,
    or a word that does not fit in 32 bits raises :class:`ValueError` (EINVAL).

    ``multi`` is the kqueue's mode.  Like the original, FREQ is accepted in both modes
    and only *applied* in multi mode (semantics §3.14); the parameter exists so callers
    state the mode and so the rule can change in one place.
    """
    del multi  # accepted in both modes; see docstring
    if isinstance(word, bool) or not isinstance(word, int):
        raise ValueError(f"tune word must be an int, not {type(word).__name__}")
    if not 0 <= word <= 0xFFFFFFFF:
        raise ValueError(f"tune word {word:#x} does not fit in 32 bits")
    obj, val = KQTUNE_PARSE_OBJ(word), KQTUNE_PARSE_VAL(word)
    if obj == KQTUNE_RTSHARE:
        if not 0 <= val <= RTSHARE_MAX:
            raise ValueError(f"KQTUNE_RTSHARE value {val} out of range 0..{RTSHARE_MAX}")
    elif obj == KQTUNE_FREQ:
        if not 0 <= val <= TFREQ_MAX:  # always true for a 16-bit field; kept explicit
            raise ValueError(f"KQTUNE_FREQ value {val} out of range 0..{TFREQ_MAX}")
    else:
        raise ValueError(
            f"unknown tune object {obj:#x}; expected KQTUNE_FREQ (0x1) or KQTUNE_RTSHARE (0x2)"
        )
    return obj, val
