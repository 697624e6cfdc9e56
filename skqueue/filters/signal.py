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
"""

from __future__ import annotations

import errno
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import Filter, KqueueOps

if TYPE_CHECKING:
    from .._knote import Knote


class SignalHub:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watchers: dict[int, list[Knote]] = {}
        self.previous: dict[int, Any] = {}

    def add(self, kn: Knote) -> None:
        signum = kn.ident
        with self.lock:
            lst = self.watchers.get(signum)
            if lst is None:
                if threading.current_thread() is not threading.main_thread():
                    raise OSError(
                        errno.ENOTSUP,
                        "the first EVFILT_SIGNAL registration of a signal must be made "
                        "from the main thread",
                    )
                prev = signal.signal(signum, self._handler)
                self.previous[signum] = prev
                self.watchers[signum] = [kn]
            else:
                lst.append(kn)

    def remove(self, kn: Knote) -> None:
        signum = kn.ident
        with self.lock:
            lst = self.watchers.get(signum)
            if not lst or kn not in lst:
                return
            lst.remove(kn)
            if not lst:
                del self.watchers[signum]
                prev = self.previous.pop(signum, signal.SIG_DFL)
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signum, prev if prev is not None else signal.SIG_DFL)
                # else: the hub handler stays installed and simply chains to prev.

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        with self.lock:
            knotes = tuple(self.watchers.get(signum, ()))
            prev = self.previous.get(signum)
        for kn in knotes:
            with kn.lock:
                kn.hook += 1
            kn.kq.activate(kn)
        if callable(prev) and prev is not self._handler:
            prev(signum, frame)


_hub: SignalHub | None = None
_hub_lock = threading.Lock()


def hub() -> SignalHub:
    global _hub
    with _hub_lock:
        if _hub is None:
            _hub = SignalHub()
        return _hub


class SignalFilter(Filter):
    __slots__ = ()
    name = "SIGNAL"
    auto_clear = True

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        if not 0 < kn.ident < signal.NSIG:
            raise OSError(errno.EINVAL, "invalid signal number")
        if kn.ident in (signal.SIGKILL, signal.SIGSTOP):
            raise OSError(errno.EINVAL, "SIGKILL and SIGSTOP cannot be watched")
        kn.hook = 0
        hub().add(kn)

    def detach(self, kq: KqueueOps, kn: Knote) -> None:
        hub().remove(kn)

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        kn.data = kn.hook
        return bool(kn.hook > 0)

    def copyout(self, kq: KqueueOps, kn: Knote) -> tuple[int, int]:
        n = kn.hook
        kn.hook = 0
        return 0, n
