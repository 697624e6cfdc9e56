"""timerfd for Python 3.11/3.12 (``os.timerfd_create`` exists only from 3.13)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable

CLOCK_MONOTONIC = 1
TFD_NONBLOCK = os.O_NONBLOCK
TFD_CLOEXEC = os.O_CLOEXEC
TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)


class TimerFd:
    """A non-blocking CLOCK_MONOTONIC timerfd armed at absolute monotonic nanoseconds.

    After ``close()`` every method is a no-op (``fd`` is -1): a registration or a harvest
    racing with the kqueue's close must not arm or read whatever file reuses the number.
    """

    __slots__ = ("fd", "_settime", "_spec", "_lock")

    def __init__(self) -> None:
        create = getattr(os, "timerfd_create", None)
        libc = _libc()
        if create is not None:
            self.fd: int = create(CLOCK_MONOTONIC, flags=TFD_NONBLOCK | TFD_CLOEXEC)
        else:
            fd = libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
            if fd < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))
            self.fd = fd
        settime = libc.timerfd_settime
        settime.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(_Itimerspec),
            ctypes.c_void_p,
        ]
        self._settime: Callable[..., int] = settime
        self._spec = _Itimerspec()
        self._lock = threading.Lock()

    def arm_at(self, deadline_ns: int) -> None:
        """Fire once at ``deadline_ns`` (time.monotonic_ns clock); 0 disarms."""
        with self._lock:  # also keeps the shared _spec to one caller
            if self.fd < 0:
                return
            spec = self._spec
            if deadline_ns <= 0:
                spec.it_value.tv_sec = 0
                spec.it_value.tv_nsec = 0
            else:
                spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
            flags = TFD_TIMER_ABSTIME if deadline_ns > 0 else 0
            if self._settime(self.fd, flags, ctypes.byref(spec), None) < 0:
                e = ctypes.get_errno()
                raise OSError(e, os.strerror(e))

    def drain(self) -> None:
        with self._lock:
            if self.fd < 0:
                return
            try:
                os.read(self.fd, 8)
            except (BlockingIOError, InterruptedError):
                pass

    def close(self) -> None:
        with self._lock:
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1
