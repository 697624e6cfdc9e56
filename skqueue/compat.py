"""Drop-in for the kqueue part of CPython's ``select`` module, on Linux.

    from skqueue import compat as select     # or: select.kqueue = compat.kqueue ...
    kq = select.kqueue()
    kq.control([select.kevent(sock, select.KQ_FILTER_READ, select.KQ_EV_ADD)], 0)

Differences from ``skqueue.kevent``: ``udata`` defaults to 0 and is an integer, as in
CPython.  Everything else (comparisons, ``fromfd``, non-inheritable descriptor,
``ValueError`` after close, any iterable as a changelist) is the same object model.
"""

from __future__ import annotations

from typing import Any

from . import constants as _c
from ._kevent import kevent as _kevent
from ._kqueue import kqueue as _kqueue

__all__ = ["kqueue", "kevent"]


class kevent(_kevent):  # noqa: N801
    """``select.kevent(ident, filter=KQ_FILTER_READ, flags=KQ_EV_ADD, fflags=0, data=0,
    udata=0)``."""

    __slots__ = ()

    def __init__(
        self,
        ident: Any,
        filter: int = _c.EVFILT_READ,  # noqa: A002
        flags: int = _c.EV_ADD,
        fflags: int = 0,
        data: int = 0,
        udata: int = 0,
    ) -> None:
        if not isinstance(udata, int):
            raise TypeError(f"udata must be an integer, not {type(udata).__name__}")
        super().__init__(ident, filter, flags, fflags, data, udata)


class kqueue(_kqueue):  # noqa: N801
    """``select.kqueue()``: events come back as ``compat.kevent`` objects."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__()
        assert self._core is not None
        self._core.event_cls = kevent


_PREFIXES = (("EVFILT_", "KQ_FILTER_"), ("EV_", "KQ_EV_"), ("NOTE_", "KQ_NOTE_"))
for _name in dir(_c):
    for _src, _dst in _PREFIXES:
        if _name.startswith(_src):
            globals()[_dst + _name[len(_src) :]] = getattr(_c, _name)
            __all__.append(_dst + _name[len(_src) :])
del _name, _src, _dst
