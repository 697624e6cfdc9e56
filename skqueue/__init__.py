"""skqueue: Schedulable Kqueue (SKQ) for Python on Linux.

FreeBSD's kqueue(2) re-implemented in user space over epoll, eventfd, timerfd, pidfd and
inotify, with the API shape of ``select.kqueue``; plus SKQ's multi-threaded event
scheduling: one kqueue shared by many threads, each with its own ready queue, and a
policy that decides which thread gets each event.

    import skqueue
    kq = skqueue.kqueue()
    kq.control([skqueue.kevent(sock, skqueue.EVFILT_READ, skqueue.EV_ADD)], 0)
    for ev in kq.control(None, 64, timeout=1.0):
        ...
"""

from __future__ import annotations

from ._kevent import kevent
from ._kqueue import kqueue
from .constants import *  # noqa: F403
from .constants import KQSCHED_MAKE, KQTUNE_MAKE
from .sched import Topology, Tunables, parse_sched, sched_label

__version__ = "0.1.0"

__all__ = [
    "kqueue",
    "kevent",
    "KQSCHED_MAKE",
    "KQTUNE_MAKE",
    "parse_sched",
    "sched_label",
    "Tunables",
    "Topology",
]
__all__ += [n for n in dir() if n.isupper() and not n.startswith("_")]
