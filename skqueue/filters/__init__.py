"""Filters: one module per kqueue filter behind one table of operations.

Each filter implements FreeBSD's ``filterops``: ``attach`` (hook the knote to its event
source, or raise ``OSError(errno)``), ``detach``, ``event`` (re-evaluate the condition now;
update the knote's output ``data``/``fflags``/``EV_EOF``; return whether it holds),
``touch`` (an ``EV_ADD`` on an existing knote) and ``copyout`` (produce the returned
``(fflags, data)`` and reset whatever the filter resets at retrieval).

All methods run with the knote's flux lock held (``attach`` before the knote is visible).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .._kevent import kevent
    from .._knote import Knote


class Filter:
    """Base filter: a condition that is true while the knote is active."""

    __slots__ = ()
    name = "base"
    fd_based = False  # ident is a descriptor (EBADF rules, identity checks)
    auto_clear = False  # EV_CLEAR is implied (PROC, SIGNAL, relative TIMER)
    rechecks = True  # re-evaluated at scan; False: the activation itself is the event

    def attach(self, kq: Any, kn: Knote) -> None:
        raise NotImplementedError

    def detach(self, kq: Any, kn: Knote) -> None:
        pass

    def event(self, kq: Any, kn: Knote) -> bool:
        from .._status import KN_ACTIVE

        return bool(kn.status & KN_ACTIVE)

    def touch(self, kq: Any, kn: Knote, fflags: int, data: int) -> None:
        kn.sfflags = fflags
        kn.sdata = data

    def copyout(self, kq: Any, kn: Knote) -> tuple[int, int]:
        return kn.fflags, kn.data

    def gone(self, kn: Knote) -> bool:
        """The event source vanished behind the kqueue's back (a descriptor closed or
        reused): the scan drops the knote instead of delivering it."""
        return False

    def scan_event(
        self, kq: Any, kn: Knote, cls: type[kevent]
    ) -> kevent | Literal[False] | None:
        """Optional hot path for knotes the filter marked ``fast``: the event, False if
        stale, None to fall back to ``event``/``copyout``."""
        return None


def filter_table() -> dict[int, Filter]:
    """A fresh filter table (one per kqueue: filters may keep per-kqueue caches)."""
    from ..constants import (
        EVFILT_EMPTY,
        EVFILT_PROC,
        EVFILT_READ,
        EVFILT_SIGNAL,
        EVFILT_TIMER,
        EVFILT_USER,
        EVFILT_VNODE,
        EVFILT_WRITE,
    )
    from .fd import EmptyFilter, ReadFilter, WriteFilter
    from .proc import ProcFilter
    from .signal import SignalFilter
    from .timer import TimerFilter
    from .user import UserFilter
    from .vnode import VnodeFilter

    return {
        EVFILT_READ: ReadFilter(),
        EVFILT_WRITE: WriteFilter(),
        EVFILT_EMPTY: EmptyFilter(),
        EVFILT_TIMER: TimerFilter(),
        EVFILT_USER: UserFilter(),
        EVFILT_SIGNAL: SignalFilter(),
        EVFILT_PROC: ProcFilter(),
        EVFILT_VNODE: VnodeFilter(),
    }


__all__ = ["Filter", "filter_table"]
