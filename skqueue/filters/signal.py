"""EVFILT_SIGNAL: count process-directed deliveries of a signal.

FreeBSD records a signal for kqueue *in addition* to its normal disposition.  Linux's
signalfd cannot do that (the signal must be blocked, so handlers never run), so skqueue
chains a Python-level handler instead: while any knote watches a signal, a hub handler
counts each delivery for every watching knote and then calls the handler that was
installed before (so the program's own Python handlers still run for every signal).
Consequences, documented in README: the first registration of a signal number must be
made from the main thread (Python installs handlers only there; elsewhere it fails with
ENOTSUP), a signal whose previous disposition was SIG_DFL or SIG_IGN is counted and not
acted upon while watched (FreeBSD also counts ignored signals), and handlers run in the
main thread between bytecodes, as every Python signal handler does.

The hub is process-wide by nature (signal dispositions are): it is the one piece of
module-level state in skqueue, created lazily and guarded by a lock.

Locks and the handler: a Python signal handler runs in the main thread between two
bytecodes, wherever that thread is -- possibly inside ``with kn.lock`` or ``with
kevq.lock`` of a kqueue it is scanning, or inside the hub's own lock.  Taking any of them
there would deadlock the main thread on itself.  So the hub handler takes no lock: it
appends a mark to the ``pending`` deque of each watching knote (one C call, atomic with
or without the GIL) and writes the hub's eventfd.  That eventfd is registered
(edge-triggered, never read, so every write is a new edge) in the epoll set of every
kqueue that has a signal knote; the kqueue's next harvest, in an ordinary thread,
activates those of its signal knotes that hold marks.  The eventfd lives as long as the
process (a child gets its own after fork), so the handler never writes to a descriptor
number that was closed and reused.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import threading
import weakref
from collections import deque
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import Filter, KqueueOps

if TYPE_CHECKING:
    from .._knote import Knote


class SignalState:
    """A signal knote's deliveries not yet retrieved: one mark each, appended by the
    handler without a lock, counted and removed by the filter under the knote lock."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending: deque[None] = deque()


class SignalHub:
    def __init__(self) -> None:
        # Taken by add/remove and the relay, never by the signal handler.
        self.lock = threading.Lock()
        # signum -> watching knotes; a tuple replaced (never mutated) under the lock, so
        # the handler reads a consistent one without locking.
        self.watchers: dict[int, tuple[Knote, ...]] = {}
        # signum -> the disposition before ours, while our handler is (or may be) installed.
        self.previous: dict[int, Any] = {}
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)

    def _watches(self, kq: KqueueOps) -> bool:
        """Does ``kq`` have a signal knote (caller holds the lock)?"""
        return any(k.kq is kq for lst in self.watchers.values() for k in lst)

    def add(self, kn: Knote) -> None:
        signum = kn.ident
        kq = kn.kq
        with self.lock:
            first_of_kq = not self._watches(kq)
            if not (signum in self.previous and self._ours(signal.getsignal(signum))):
                if threading.current_thread() is not threading.main_thread():
                    raise OSError(
                        errno.ENOTSUP,
                        "the first EVFILT_SIGNAL registration of a signal must be made "
                        "from the main thread",
                    )
                self.previous[signum] = signal.signal(signum, self._handler)
            # else: our handler is still installed (a removal off the main thread left it)
            self.watchers[signum] = (*self.watchers.get(signum, ()), kn)
            if first_of_kq:
                kq.backend.register(self.efd, select.EPOLLIN, self._relay(kq))

    def remove(self, kn: Knote) -> None:
        signum = kn.ident
        with self.lock:
            lst = self.watchers.get(signum, ())
            if not any(k is kn for k in lst):
                return
            kept = tuple(k for k in lst if k is not kn)
            if kept:
                self.watchers[signum] = kept
            else:
                del self.watchers[signum]
                if threading.current_thread() is threading.main_thread():
                    prev = self.previous.pop(signum, signal.SIG_DFL)
                    signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
                # else: the hub handler stays installed and chains to previous[signum].
            if not self._watches(kn.kq):
                kn.kq.backend.unregister(self.efd)

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        for kn in self.watchers.get(signum, ()):
            kn.hook.pending.append(None)
        try:
            os.eventfd_write(self.efd, 1)
        except OSError:
            pass  # the counter is saturated: the kqueues have been told already
        prev = self.previous.get(signum)
        if callable(prev) and not self._ours(prev):
            prev(signum, frame)

    def _ours(self, handler: Any) -> bool:
        return getattr(handler, "__self__", None) is self

    def _relay(self, kq: KqueueOps) -> Callable[[int], None]:
        """The epoll callback of ``kq`` for the eventfd: activate its marked knotes."""
        ref = weakref.ref(kq)

        def cb(mask: int) -> None:
            core = ref()
            if core is None:
                return
            with self.lock:
                marked = [
                    k for lst in self.watchers.values() for k in lst
                    if k.kq is core and k.hook.pending
                ]
            for k in marked:
                core.activate(k)

        return cb

    def after_fork_in_child(self) -> None:
        old, self.efd = self.efd, os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        os.close(old)


_hub: SignalHub | None = None
_hub_lock = threading.Lock()


def hub() -> SignalHub:
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = SignalHub()
        return _hub


def _after_fork_in_child() -> None:
    if _hub is not None:  # its eventfd is shared with the parent's kqueues: not ours
        _hub.after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)


class SignalFilter(Filter):
    __slots__ = ()
    name = "SIGNAL"
    auto_clear = True

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        if not 0 < kn.ident < signal.NSIG:
            raise OSError(errno.EINVAL, "invalid signal number")
        if kn.ident in (signal.SIGKILL, signal.SIGSTOP):
            raise OSError(errno.EINVAL, "SIGKILL and SIGSTOP cannot be watched")
        kn.hook = SignalState()
        hub().add(kn)

    def detach(self, kq: KqueueOps, kn: Knote) -> None:
        hub().remove(kn)

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        kn.data = len(kn.hook.pending)
        return bool(kn.data > 0)

    def copyout(self, kq: KqueueOps, kn: Knote) -> tuple[int, int]:
        # Take exactly the marks counted: the handler may append more meanwhile.
        pending = kn.hook.pending
        n = len(pending)
        for _ in range(n):
            pending.popleft()
        return 0, n
