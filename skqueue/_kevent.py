"""The ``kevent`` record: one change (input) or one event (output).

Field order and comparison order follow CPython's ``select.kevent``: ident, filter,
flags, fflags, data, udata.  Unlike ``select.kevent``, ``udata`` may be any Python
object (the kernel echoes a pointer; we echo the object itself) and defaults to None.
"""

from __future__ import annotations

from typing import Any

from .constants import EV_ADD, EVFILT_READ

__all__ = ["kevent"]


def _as_ident(ident: Any) -> int:
    if isinstance(ident, int):
        return ident
    fileno = getattr(ident, "fileno", None)
    if fileno is None:
        raise TypeError(
            f"ident must be an int or have a fileno() method, not {type(ident).__name__}"
        )
    fd = fileno()
    if not isinstance(fd, int):
        raise TypeError("fileno() returned a non-integer")
    if fd < 0:
        raise ValueError(f"file descriptor cannot be a negative integer ({fd})")
    return fd


def _udata_key(u: Any) -> int:
    return u if type(u) is int else id(u)


class kevent:  # noqa: N801 - the name mirrors select.kevent
    """A kqueue event: ``kevent(ident, filter=EVFILT_READ, flags=EV_ADD, fflags=0, data=0,
    udata=None)``.  ``ident`` may be an int or any object with ``fileno()``."""

    __slots__ = ("ident", "filter", "flags", "fflags", "data", "udata")
    __hash__ = None  # type: ignore[assignment]  # mutable, like select.kevent

    ident: int
    filter: int
    flags: int
    fflags: int
    data: int
    udata: Any

    def __init__(
        self,
        ident: Any,
        filter: int = EVFILT_READ,  # noqa: A002 - select.kevent's keyword name
        flags: int = EV_ADD,
        fflags: int = 0,
        data: int = 0,
        udata: Any = None,
    ) -> None:
        self.ident = _as_ident(ident)
        self.filter = filter
        self.flags = flags
        self.fflags = fflags
        self.data = data
        self.udata = udata

    def _key(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.ident,
            self.filter,
            self.flags,
            self.fflags,
            self.data,
            _udata_key(self.udata),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, kevent):
            return NotImplemented
        return (
            self.ident == other.ident
            and self.filter == other.filter
            and self.flags == other.flags
            and self.fflags == other.fflags
            and self.data == other.data
            and (self.udata is other.udata or self.udata == other.udata)
        )

    def __ne__(self, other: object) -> bool:
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, kevent):
            return NotImplemented
        return self._key() < other._key()

    def __le__(self, other: object) -> bool:
        if not isinstance(other, kevent):
            return NotImplemented
        return self._key() <= other._key()

    def __gt__(self, other: object) -> bool:
        if not isinstance(other, kevent):
            return NotImplemented
        return self._key() > other._key()

    def __ge__(self, other: object) -> bool:
        if not isinstance(other, kevent):
            return NotImplemented
        return self._key() >= other._key()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} ident={self.ident} filter={self.filter} "
            f"flags={self.flags:#x} fflags={self.fflags:#x} data={self.data:#x} "
            f"udata={self.udata!r}>"
        )


def make_event(
    cls: type[kevent], ident: int, filt: int, flags: int, fflags: int, data: int, udata: Any
) -> kevent:
    """Build an output event without re-validating ident (hot path)."""
    ev = cls.__new__(cls)
    ev.ident = ident
    ev.filter = filt
    ev.flags = flags
    ev.fflags = fflags
    ev.data = data
    ev.udata = udata
    return ev
