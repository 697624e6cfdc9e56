"""Filters: one module per kqueue filter behind one table of operations.

Each filter implements FreeBSD's ``filterops``: ``attach`` (hook the knote to its event
source, or raise ``OSError(errno)``), ``detach``, ``event`` (re-evaluate the condition now;
update the knote's output ``data``/``fflags``/``EV_EOF``; return whether it holds),
``touch`` (a change to an existing knote: it gets the whole change) and ``copyout``
(produce the returned ``(fflags, data)`` and reset whatever the filter resets at
retrieval).  Two optional hooks: ``gone`` (the source vanished behind the kqueue's back)
and ``scan_event`` (a filter's own hot path for the knotes it marks ``fast``).

All methods run with the knote's flux lock held (``attach`` before the knote is visible).
What a filter may use of its kqueue is :class:`KqueueOps`; nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .._kevent import kevent
    from .._knote import Knote
    from ..backend import Backend
    from ..backend.timers import TimerHeap
    from ..sched import Tunables
    from .vnode import Inotify


class KqueueOps(Protocol):
    """The kqueue as its filters see it (``KqueueCore`` implements it)."""

    closed: bool
    backend: Backend  # register/modify/unregister descriptors in the kqueue's epoll
    timers: TimerHeap  # one-shot callbacks on the kqueue's timer heap
    tunables: Tunables
    timer_count: int  # EVFILT_TIMER knotes (bounded by tunables.timer_max)
    empty_states: dict[int, Any]  # EVFILT_EMPTY's per-knote tickers

    def activate(self, kn: Knote) -> None:
        """The source saw activity on ``kn`` (any thread; takes the knote lock)."""

    def unqueue(self, kn: Knote) -> None:
        """Take ``kn`` off the queue that holds it (caller holds the knote lock)."""

    def mark_gone(self, kn: Knote) -> None:
        """``kn``'s source is gone: delete it outside the knote lock."""

    def fd_attach(self, kn: Knote, interest: int, refuse_files: bool = False) -> None:
        """Watch descriptor ``kn.ident`` for ``interest`` (EPOLL* bits); sets ``kn.hook``."""

    def fd_detach(self, kn: Knote) -> None:
        """Stop watching ``kn``'s descriptor for it."""

    def inotify(self) -> Inotify:
        """The kqueue's inotify instance (VNODE, and regular files)."""


class Filter:
    """Base filter: a condition that is true while the knote is active."""

    __slots__ = ()
    name = "base"
    fd_based = False  # ident is a descriptor (EBADF rules, identity checks)
    auto_clear = False  # EV_CLEAR is implied (PROC, SIGNAL, relative TIMER)

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        raise NotImplementedError

    def detach(self, kq: KqueueOps, kn: Knote) -> None:
        pass

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        from .._status import KN_ACTIVE

        return bool(kn.status & KN_ACTIVE)

    def touch(self, kq: KqueueOps, kn: Knote, kev: kevent) -> None:
        kn.sfflags = kev.fflags
        kn.sdata = kev.data

    def copyout(self, kq: KqueueOps, kn: Knote) -> tuple[int, int]:
        return kn.fflags, kn.data

    def gone(self, kn: Knote) -> bool:
        """The event source vanished behind the kqueue's back (a descriptor closed or
        reused): the scan drops the knote instead of delivering it."""
        return False

    def scan_event(
        self, kq: KqueueOps, kn: Knote, cls: type[kevent]
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


__all__ = ["Filter", "KqueueOps", "filter_table"]
