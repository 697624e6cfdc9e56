"""EVFILT_PROC with NOTE_EXIT, over pidfd.

The pidfd becomes readable when the process exits.  The exit status is read with
``waitid(P_PIDFD, ..., WEXITED | WNOWAIT)``, which leaves the child unreaped (the kqueue
never reaps); for a process that is not our child the status is unavailable and ``data``
is 0.  NOTE_FORK, NOTE_EXEC and NOTE_TRACK need the proc connector (root) and are
refused with ENOTSUP; other unknown bits with EINVAL.
"""

from __future__ import annotations

import errno
import os
import select
from typing import TYPE_CHECKING

from ..constants import (
    EV_EOF,
    EV_ONESHOT,
    NOTE_EXEC,
    NOTE_EXIT,
    NOTE_FORK,
    NOTE_PDATAMASK,
    NOTE_TRACK,
)
from . import Filter, KqueueOps

if TYPE_CHECKING:
    from .._knote import Knote

_CLD_EXITED = 1
_CLD_KILLED = 2
_CLD_DUMPED = 3


class ProcState:
    __slots__ = ("pidfd", "exited", "status")

    def __init__(self, pidfd: int) -> None:
        self.pidfd = pidfd
        self.exited = False
        self.status = 0


def _wait_status(pidfd: int) -> int | None:
    """wait(2)-style status of an exited child, without reaping; None if not ours."""
    try:
        r = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return None
    except OSError:
        return None
    if r is None:
        return None
    if r.si_code == _CLD_EXITED:
        return (r.si_status & 0xFF) << 8
    if r.si_code == _CLD_KILLED:
        return r.si_status & 0x7F
    if r.si_code == _CLD_DUMPED:
        return (r.si_status & 0x7F) | 0x80
    return None


class ProcFilter(Filter):
    __slots__ = ()
    name = "PROC"
    auto_clear = True

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        ff = kn.sfflags
        if ff & (NOTE_FORK | NOTE_EXEC | NOTE_TRACK):
            raise OSError(errno.ENOTSUP, "NOTE_FORK/NOTE_EXEC/NOTE_TRACK are not supported")
        if ff & ~(NOTE_EXIT | NOTE_PDATAMASK):
            raise OSError(errno.EINVAL, "unsupported EVFILT_PROC fflags")
        if kn.ident <= 0:
            raise OSError(errno.ESRCH, "no such process")
        try:
            pidfd = os.pidfd_open(kn.ident)
        except ProcessLookupError:
            raise OSError(errno.ESRCH, "no such process") from None
        st = ProcState(pidfd)
        kn.hook = st
        kq.backend.register(pidfd, select.EPOLLIN, lambda mask: kq.activate(kn))

    def detach(self, kq: KqueueOps, kn: Knote) -> None:
        st: ProcState = kn.hook
        kq.backend.unregister(st.pidfd)
        os.close(st.pidfd)

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        st: ProcState = kn.hook
        if not st.exited:
            p = select.poll()
            p.register(st.pidfd, select.POLLIN)
            if not p.poll(0):
                return False
            st.exited = True
            status = _wait_status(st.pidfd)
            st.status = status if status is not None else 0
        kn.flags |= EV_EOF | EV_ONESHOT
        kn.data = st.status if kn.sfflags & NOTE_EXIT else 0
        kn.fflags = kn.sfflags & NOTE_EXIT
        return True

    def copyout(self, kq: KqueueOps, kn: Knote) -> tuple[int, int]:
        return kn.fflags, kn.data
