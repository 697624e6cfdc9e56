"""EVFILT_VNODE over inotify (one inotify descriptor per kqueue, created on first use).

The watch is placed on ``/proc/self/fd/N``, i.e. on the open file itself.  inotify
reports per inode; each report is translated to NOTE_* bits, with ``fstat`` on the
descriptor supplying what inotify does not say: NOTE_EXTEND when the size grew,
NOTE_LINK when the link count changed, NOTE_DELETE when it dropped to zero (the open
descriptor keeps the inode alive, so IN_DELETE_SELF would come only after close).
The condition stays true while any recorded bit is set; use EV_CLEAR, as on FreeBSD.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import select
import struct
import threading
from typing import TYPE_CHECKING

from ..constants import (
    NOTE_ATTRIB,
    NOTE_CLOSE,
    NOTE_CLOSE_WRITE,
    NOTE_DELETE,
    NOTE_EXTEND,
    NOTE_LINK,
    NOTE_OPEN,
    NOTE_READ,
    NOTE_RENAME,
    NOTE_REVOKE,
    NOTE_WRITE,
)
from . import Filter, KqueueOps

if TYPE_CHECKING:
    from .._kevent import kevent
    from .._knote import Knote

IN_ACCESS = 0x001
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_CLOSE_NOWRITE = 0x010
IN_OPEN = 0x020
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DIR_ENTRIES = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO
IN_MOVE_SELF = 0x800
IN_DELETE_SELF = 0x400
IN_UNMOUNT = 0x2000
IN_IGNORED = 0x8000
IN_MASK_ADD = 0x20000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_ALL_NOTES = (
    NOTE_DELETE
    | NOTE_WRITE
    | NOTE_EXTEND
    | NOTE_ATTRIB
    | NOTE_LINK
    | NOTE_RENAME
    | NOTE_REVOKE
    | NOTE_OPEN
    | NOTE_CLOSE
    | NOTE_CLOSE_WRITE
    | NOTE_READ
)
_EVENT = struct.Struct("iIII")


# inotify events that translate one-to-one into a NOTE_* bit (both directions use it).
_ONE_TO_ONE = (
    (IN_MOVE_SELF, NOTE_RENAME),
    (IN_UNMOUNT, NOTE_REVOKE),
    (IN_OPEN, NOTE_OPEN),
    (IN_CLOSE_NOWRITE, NOTE_CLOSE),
    (IN_CLOSE_WRITE, NOTE_CLOSE_WRITE),
    (IN_ACCESS, NOTE_READ),
)


def _in_mask(notes: int) -> int:
    m = IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT  # link count & deletion
    if notes & (NOTE_WRITE | NOTE_EXTEND):
        m |= IN_MODIFY | IN_DIR_ENTRIES  # entries added/removed: NOTE_WRITE on a directory
    for in_bit, note in _ONE_TO_ONE:
        if notes & note:
            m |= in_bit
    return m


class VnodeState:
    __slots__ = ("wd", "size", "nlink", "pending", "fd")

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.wd = -1
        self.size = st.st_size
        self.nlink = st.st_nlink
        self.pending = 0


class Inotify:
    """The kqueue's inotify descriptor and its watch table."""

    def __init__(self, kq: KqueueOps) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        self.fd: int = fd
        self.kq = kq
        self.lock = threading.Lock()
        self.watches: dict[int, list[Knote]] = {}
        self.plain: dict[int, int] = {}  # id(knote) -> wd, for READ knotes on regular files
        kq.backend.register(fd, select.EPOLLIN, self._on_ready)

    def add(self, kn: Knote, st: VnodeState) -> None:
        path = f"/proc/self/fd/{st.fd}".encode()
        wd = self._add(self.fd, path, _in_mask(kn.sfflags) | IN_MASK_ADD)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        st.wd = wd
        with self.lock:
            lst = self.watches.setdefault(wd, [])
            if kn not in lst:
                lst.append(kn)

    def add_plain(self, kn: Knote, fd: int) -> None:
        """Watch the file behind ``fd`` for changes and just activate ``kn`` on each."""
        path = f"/proc/self/fd/{fd}".encode()
        wd = self._add(self.fd, path, IN_MODIFY | IN_ATTRIB | IN_MASK_ADD)
        if wd < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        with self.lock:
            lst = self.watches.setdefault(wd, [])
            if kn not in lst:
                lst.append(kn)
            self.plain[id(kn)] = wd

    def remove_plain(self, kn: Knote) -> None:
        with self.lock:
            wd = self.plain.pop(id(kn), None)
            if wd is None:
                return
            lst = self.watches.get(wd)
            if lst and kn in lst:
                lst.remove(kn)
                if not lst:
                    del self.watches[wd]
                    self._rm(self.fd, wd)

    def remove(self, kn: Knote, st: VnodeState) -> None:
        with self.lock:
            lst = self.watches.get(st.wd)
            if lst and kn in lst:
                lst.remove(kn)
                if not lst:
                    del self.watches[st.wd]
                    self._rm(self.fd, st.wd)

    def _on_ready(self, mask: int) -> None:
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pos = 0
            while pos + _EVENT.size <= len(buf):
                wd, imask, _cookie, nlen = _EVENT.unpack_from(buf, pos)
                pos += _EVENT.size + nlen
                with self.lock:
                    knotes = tuple(self.watches.get(wd, ()))
                for kn in knotes:
                    self._note(kn, imask)

    def _note(self, kn: Knote, imask: int) -> None:
        if not isinstance(kn.hook, VnodeState):
            self.kq.activate(kn)  # a plain watch (READ on a regular file)
            return
        st: VnodeState = kn.hook
        notes = 0
        with kn.lock:
            try:
                s = os.fstat(st.fd)
                size, nlink = s.st_size, s.st_nlink
            except OSError:
                size, nlink = st.size, 0
            if imask & (IN_MODIFY | IN_DIR_ENTRIES):
                notes |= NOTE_WRITE
                if size > st.size:
                    notes |= NOTE_EXTEND
            if imask & (IN_ATTRIB | IN_DELETE_SELF):
                if nlink != st.nlink:
                    notes |= NOTE_LINK
                if nlink == 0:
                    notes |= NOTE_DELETE
                if imask & IN_ATTRIB:
                    notes |= NOTE_ATTRIB
            for in_bit, note in _ONE_TO_ONE:
                if imask & in_bit:
                    notes |= note
            st.size, st.nlink = size, nlink
            notes &= kn.sfflags
            if not notes:
                return
            st.pending |= notes
        self.kq.activate(kn)

    def close(self) -> None:
        os.close(self.fd)


class VnodeFilter(Filter):
    __slots__ = ()
    name = "VNODE"
    fd_based = True

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        if kn.sfflags & ~_ALL_NOTES:
            raise OSError(errno.EINVAL, "unsupported EVFILT_VNODE fflags")
        try:
            s = os.fstat(kn.ident)
        except OSError:
            raise OSError(errno.EBADF, "bad file descriptor") from None
        st = VnodeState(kn.ident, s)
        kn.hook = st
        kq.inotify().add(kn, st)

    def detach(self, kq: KqueueOps, kn: Knote) -> None:
        kq.inotify().remove(kn, kn.hook)

    def touch(self, kq: KqueueOps, kn: Knote, kev: kevent) -> None:
        if kev.fflags & ~_ALL_NOTES:
            raise OSError(errno.EINVAL, "unsupported EVFILT_VNODE fflags")
        kn.sfflags, kn.sdata = kev.fflags, kev.data
        kq.inotify().add(kn, kn.hook)  # IN_MASK_ADD widens the watch

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        st: VnodeState = kn.hook
        kn.fflags = st.pending
        return st.pending != 0

    def copyout(self, kq: KqueueOps, kn: Knote) -> tuple[int, int]:
        st: VnodeState = kn.hook
        ff = st.pending
        from ..constants import EV_CLEAR

        if kn.flags & EV_CLEAR:
            st.pending = 0
        return ff, 0
