"""The optional C helper (``skqueue._speedups``), or None: one decision for the package.

None when the helper was not built or ``SKQUEUE_PURE`` is set; every module that has a
C fast path (the knote lock, the descriptor probes, the scan) asks here, so they are
either all on or all off.

``SKQUEUE_REQUIRE_C=1`` turns a missing helper into an ImportError instead of a silent
fallback (CI sets it, so a broken build cannot pass as the pure-Python path).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def _load() -> Any:
    if os.environ.get("SKQUEUE_PURE"):
        return None
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError as e:
        if os.environ.get("SKQUEUE_REQUIRE_C"):
            raise ImportError(f"SKQUEUE_REQUIRE_C is set but the C helper is missing: {e}") from e
        return None
    return _speedups


speedups: Any = _load()


def verify(expected: Mapping[str, int]) -> None:
    """Check the values the C helper hard-codes against Python's (called once, by
    ``_knote`` where the status bits are defined); a mismatch is a stale build."""
    if speedups is None:
        return
    built = speedups.constants()
    wrong = {k: (built.get(k), v) for k, v in expected.items() if built.get(k) != v}
    if wrong or set(built) - set(expected):
        detail = ", ".join(f"{k}: C {c!r}, Python {p:#x}" for k, (c, p) in wrong.items())
        raise ImportError(
            "skqueue._speedups disagrees with the Python constants "
            f"({detail or 'unknown names ' + repr(sorted(set(built) - set(expected)))}); "
            "rebuild it (pip install -e .) or set SKQUEUE_PURE=1"
        )
