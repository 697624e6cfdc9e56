"""The optional C helper (``skqueue._speedups``), or None: one decision for the package.

None when the helper was not built or ``SKQUEUE_PURE`` is set; every module that has a
C fast path (the knote lock, the descriptor probes, the scan) asks here, so they are
either all on or all off.
"""

from __future__ import annotations

import os
from typing import Any


def _load() -> Any:
    if os.environ.get("SKQUEUE_PURE"):
        return None
    try:
        from . import _speedups  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _speedups


speedups: Any = _load()
