"""The OS side of one kqueue: an edge-triggered epoll set plus its wake-up descriptors.

Every OS readiness source of a kqueue (sockets, pipes, pidfds, the inotify descriptor,
the timerfd that carries the timer heap's earliest deadline) is registered here with a
callback.  ``harvest()`` runs one ``epoll_wait`` and invokes the callbacks, which turn
readiness into knote activations.  Exactly one thread harvests at a time (the
*leader*, see ``_kqueue.py``); ``leader`` is that lock.

Design notes
------------
* Registrations are edge-triggered (``EPOLLET``): an epoll event means "new activity",
  which is what knote activation means in FreeBSD.  Level-triggered kqueue behaviour is
  produced by the knote layer (re-check at scan, requeue), not by epoll, so a knote that
  one thread owns never makes another thread's epoll_wait spin.
* ``poke()`` writes the eventfd so a leader blocked in ``epoll_wait`` returns; it is how
  an activation aimed at the leader's own kevq, or a close(), reaches it.
* ``close()`` may race with a ``poke()`` from a thread still inside ``control()``, or
  (when it cannot get the leader lock in time) with a harvest.  A write or read on a
  closed descriptor number could hit whatever file reuses that number, so ``poke``, the
  harvest's read of the poke eventfd and ``close`` hold ``_lock``, and nothing touches
  a descriptor after ``closed`` is set.
* The C helper's ``fast_control`` runs the non-blocking harvest itself: it tries
  ``leader`` (the core passes its knote lock type, so C takes it directly), calls
  ``epoll_wait`` on ``epfd`` and hands what it got to :meth:`Backend.dispatch`, the same
  callback loop :meth:`Backend.harvest` runs.  Unless its last harvest found something
  (``busy``), it first asks poll(2) whether ``epfd`` is readable, in the poll that
  re-checks the scan's first descriptors anyway, and calls epoll_wait only if it is.
* CPython's epoll returns only the fd number as event data, so callbacks are keyed by
  fd.  A descriptor that was closed and reused behind our back can therefore still
  produce a stray callback for the new file; the knote layer re-checks readiness and
  identity before anything is delivered, so a stray callback costs a re-check, never a
  wrong event.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from .timerfd import TimerFd

monotonic_ns = time.monotonic_ns

Callback = Callable[[int], None]

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLET = select.EPOLLET
EPOLLRDHUP = select.EPOLLRDHUP
EPOLLHUP = select.EPOLLHUP
EPOLLERR = select.EPOLLERR

_MAX_HARVEST = 1024


class Backend:
    """Owns the epoll descriptor, the wake eventfd and the timerfd of one kqueue.

    ``lock`` makes the leader lock (default ``threading.Lock``)."""

    __slots__ = (
        "ep", "epfd", "poke_fd", "timer", "callbacks", "leader", "_lock", "on_timer", "closed",
        "busy",
    )  # fmt: skip

    def __init__(self, lock: Callable[[], Any] = threading.Lock) -> None:
        self.ep = select.epoll()
        self.epfd = self.ep.fileno()
        self.poke_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.timer = TimerFd()
        self.callbacks: dict[int, Callback] = {}
        self.leader = lock()
        self.busy = False  # the C helper's last harvest found events (fast_control)
        # Serialises register/modify/unregister bookkeeping, and the eventfd's use with close.
        self._lock = threading.Lock()
        self.on_timer: Callable[[], None] | None = None
        self.ep.register(self.poke_fd, EPOLLIN | EPOLLET)
        self.ep.register(self.timer.fd, EPOLLIN | EPOLLET)
        self.closed = False

    # -- registrations -------------------------------------------------------
    def register(self, fd: int, mask: int, cb: Callback) -> None:
        with self._lock:
            # The callback must exist before epoll can report the fd: a harvest running
            # in another thread right after epoll_ctl would otherwise drop the edge.
            old = self.callbacks.get(fd)
            self.callbacks[fd] = cb
            try:
                self.ep.register(fd, mask | EPOLLET)
            except FileExistsError:
                # A previous open file description with this number is still
                # registered (it was dup'ed and closed behind our back).
                self.ep.modify(fd, mask | EPOLLET)
            except BaseException:
                if old is None:
                    self.callbacks.pop(fd, None)
                else:
                    self.callbacks[fd] = old
                raise

    def modify(self, fd: int, mask: int) -> None:
        with self._lock:
            self.ep.modify(fd, mask | EPOLLET)

    def unregister(self, fd: int) -> None:
        with self._lock:
            self.callbacks.pop(fd, None)
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass  # already gone: closed behind our back, or never registered

    # -- waking ------------------------------------------------------------------
    def poke(self) -> None:
        """Make a thread blocked in harvest() return (a no-op once closed)."""
        with self._lock:
            if self.closed:
                return
            try:
                os.eventfd_write(self.poke_fd, 1)
            except (BlockingIOError, OSError):
                pass

    def harvest(self, timeout: float) -> int:
        """One epoll_wait (caller holds ``leader``); run callbacks; return #events."""
        try:
            events = self.ep.poll(timeout, _MAX_HARVEST)
        except ValueError:  # closed under us
            return 0
        return self.dispatch(events)

    def dispatch(self, events: list[tuple[int, int]]) -> int:
        """Run the callbacks of what one epoll_wait returned (caller holds ``leader``)."""
        callbacks = self.callbacks
        poke_fd = self.poke_fd
        timer_fd = self.timer.fd
        for fd, mask in events:
            if fd == poke_fd:
                with self._lock:
                    if self.closed:
                        return 0
                    try:
                        os.eventfd_read(poke_fd)
                    except (BlockingIOError, OSError):
                        pass
            elif fd == timer_fd:
                self.timer.drain()
                if self.on_timer is not None:
                    self.on_timer()
            else:
                cb = callbacks.get(fd)
                if cb is not None:
                    cb(mask)
        return len(events)

    def close(self) -> None:
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.ep.close()
            os.close(self.poke_fd)
        self.timer.close()
