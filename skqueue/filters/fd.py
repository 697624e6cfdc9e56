"""READ, WRITE and EMPTY: descriptor filters over one edge-triggered epoll entry per fd.

One ``FdWatch`` per descriptor merges the interest of its READ/WRITE/EMPTY knotes into
one epoll registration, keeps the *sticky* conditions epoll reports once (read side shut
down, hang-up, error) and the identity of the open file (``st_dev``, ``st_ino``) taken at
registration.  Readiness is evaluated on demand (``event``), from the descriptor itself:

=============  =====================================  ===================================
kind           READ ``data``                          WRITE ``data``
=============  =====================================  ===================================
stream/dgram   ``FIONREAD`` (bytes readable)          ``SO_SNDBUF - SIOCOUTQ``
listening      accept backlog (``TCP_INFO``)          (never fires)
pipe / FIFO    ``FIONREAD``                           ``F_GETPIPE_SZ - FIONREAD``
regular file   size - offset (may be negative)        0, always writable (filt_vfswrite)
other          poll(2) readiness, ``FIONREAD`` if ok  poll(2) readiness
=============  =====================================  ===================================

EOF and errors: epoll reports a hang-up, a shut-down read side or an error once (edge
triggered); the watch keeps them as *hints* (``eof``, ``hup``, ``err``, never reset), taken
again from a live poll(2) when a knote is registered.  A hint only sends the evaluation to
the slow path, which asks the descriptor itself (poll(2), side-effect free) what holds now:
FreeBSD's ``EV_EOF`` on READ is "the read side is shut down" (``POLLRDHUP``; for a pipe,
the other end is gone), on WRITE "the send side is shut down" (both directions:
``POLLHUP`` with ``POLLRDHUP``).  A stream socket that reports ``POLLHUP`` alone was never
connected: no EOF, not writable.  The pending socket error that FreeBSD puts in
``fflags`` cannot be read on Linux without clearing it (``SO_ERROR`` and ``recv`` consume
it), so it is inferred without side effects (``FdWatch.pending_error``).

Pipes: FreeBSD's anonymous pipes are bidirectional, Linux's are not.  READ on the write end
(asyncio watches a child's stdin this way) and WRITE on the read end never fire while the
other end is open, and report ``EV_EOF`` once it is closed (WRITE: with ``EV_ONESHOT``, as
FreeBSD's ``knlist_clear`` does); registering WRITE when the other end is already closed is
``EPIPE`` (``pipe_kqfilter``).  A FIFO opened in one direction only gets FreeBSD's
``pipe_nfiltops`` for the other: accepted, never fires.

Identity: Linux cannot tell us that a descriptor was closed (epoll only forgets it when
the last duplicate goes).  Before a knote is delivered its watch compares the fd's
current ``(st_dev, st_ino)`` with the one recorded at registration; a closed or reused
descriptor makes the watch *gone*, and the kqueue drops every knote on it, as close(2)
does on FreeBSD.  Regular files are watched by inotify only (epoll refuses them): their
READ and WRITE knotes are activated at registration, stay level-triggered and are
re-activated by each change to the file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import stat
import struct
import sys
import termios
import time
from typing import TYPE_CHECKING, Any, Literal

from .._kevent import kevent
from .._knote import Knote
from .._scan import PROBE_IDENT, PROBE_OUTQ, PROBE_READ, bind_watch, probe, read_event
from .._status import KN_ACTIVE, KN_DETACHED
from ..backend.epoll import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP
from ..constants import EV_EOF, EV_ONESHOT, NOTE_FILE_POLL, NOTE_LOWAT
from . import Filter, KqueueOps

if TYPE_CHECKING:
    from .._knote import Knote

FIONREAD = termios.FIONREAD
SIOCOUTQ = termios.TIOCOUTQ  # same number as SIOCOUTQ on Linux
F_GETPIPE_SZ = 1032
_ZERO4 = b"\0\0\0\0"
_BYTEORDER = sys.byteorder

K_STREAM = 1  # connected stream socket
K_DGRAM = 2
K_LISTEN = 3
K_PIPE = 4
K_FIFO = 5
K_FILE = 6
K_OTHER = 7
K_KQUEUE = 8

# struct tcp_info (linux/tcp.h): 8 one-byte fields (state, ca_state, retransmits, probes,
# backoff, options, wscales, flags), then u32s from offset 8 (rto, ato, snd_mss, rcv_mss,
# unacked, ...; rtt at 68), u64s from 104 (pacing rates, bytes_acked at 120,
# bytes_received at 128), u32 segs_out at 136, segs_in at 140.  Older kernels return a
# shorter prefix.  On a listening socket tcpi_unacked is the accept queue length.
_TCP_INFO_LEN = 144
_TI_UNACKED = struct.Struct("I")  # at 24
_TI_RTT = struct.Struct("I")  # at 68
_TI_U64 = struct.Struct("Q")  # bytes_acked at 120, bytes_received at 128
_TI_SEGS_IN = struct.Struct("I")  # at 140

# poll(2) bits; on Linux the EPOLL* values are the same numbers.
POLLIN = select.POLLIN
POLLOUT = select.POLLOUT
POLLERR = select.POLLERR
POLLHUP = select.POLLHUP
POLLNVAL = select.POLLNVAL
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)


def fionread(fd: int) -> int:
    return int.from_bytes(fcntl.ioctl(fd, FIONREAD, _ZERO4), _BYTEORDER, signed=True)


def _poll_once(fd: int, events: int) -> int:
    p = select.poll()
    p.register(fd, events)
    r = p.poll(0)
    return r[0][1] if r else 0


def _tcp_info(fd: int) -> bytes:
    """TCP_INFO of ``fd`` (a prefix of struct tcp_info; b"" if it cannot be read)."""
    s = socket.socket(fileno=fd)
    try:
        return bytes(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_LEN))
    except OSError:
        return b""
    finally:
        s.detach()


def _tcp_error(info: bytes) -> int:
    """The error a dead TCP connection holds, inferred from its TCP_INFO (Linux's
    ``tcp_reset``/``tcp_write_err``): never synchronised and answered (a RST to the SYN) is
    ECONNREFUSED, never answered is ETIMEDOUT; once synchronised, ETIMEDOUT if it died
    retransmitting or probing, else ECONNRESET.  A best inference: an ICMP error or a RST
    that arrives during retransmissions are reported as the timeout they interrupted."""
    retransmits, probes, options = info[2], info[3], info[5]
    rtt = _TI_RTT.unpack_from(info, 68)[0] if len(info) >= 72 else 0
    acked = _TI_U64.unpack_from(info, 120)[0] if len(info) >= 128 else 0
    received = _TI_U64.unpack_from(info, 128)[0] if len(info) >= 136 else 0
    segs_in = _TI_SEGS_IN.unpack_from(info, 140)[0] if len(info) >= 144 else 1
    if not (options or rtt or acked or received):
        return errno.ECONNREFUSED if segs_in else errno.ETIMEDOUT
    return errno.ETIMEDOUT if retransmits or probes else errno.ECONNRESET


def _filter_order(kn: Knote) -> int:
    return -kn.filter  # READ (-1), then WRITE (-2), then EMPTY (-13)


class FdWatch:
    """Per-descriptor state shared by the READ/WRITE/EMPTY knotes of one kqueue."""

    __slots__ = (
        "fd",
        "kind",
        "dev",
        "ino",
        "knotes",
        "mask",
        "eof",
        "hup",
        "err",
        "gone",
        "sndbuf",
        "pipesz",
        "is_tcp",
        "connected",
        "registered",
        "inner",
        "accmode",
        "want_data",
    )

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.knotes: tuple[Knote, ...] = ()
        self.mask = 0
        # Hints (never reset): epoll or the registration saw the read side shut down
        # (eof), a hang-up (hup), an error (err).  The filters then ask the descriptor.
        self.eof = False
        self.hup = False
        self.err = False
        self.gone = False
        self.sndbuf = 0
        self.pipesz = 0
        self.is_tcp = False
        self.connected = False  # a socket seen writable: no longer connecting
        self.registered = False
        self.inner: Any = None  # the nested kqueue object when kind == K_KQUEUE
        self.accmode = os.O_RDWR
        self.want_data = False  # the program reads READ events' data (C scan: eager)
        self.kind = K_OTHER
        mode = st.st_mode
        if stat.S_ISSOCK(mode):
            s = socket.socket(fileno=fd)
            try:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    self.kind = K_LISTEN
                elif s.type == socket.SOCK_STREAM or s.type == socket.SOCK_SEQPACKET:
                    self.kind = K_STREAM
                else:
                    self.kind = K_DGRAM
                self.sndbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
                self.is_tcp = s.family in (socket.AF_INET, socket.AF_INET6) and (
                    s.type == socket.SOCK_STREAM
                )
            finally:
                s.detach()
        elif stat.S_ISFIFO(mode):
            try:
                link = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                link = ""
            self.kind = K_PIPE if link.startswith("pipe:") else K_FIFO
            try:
                self.accmode = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
            except OSError:
                pass
            try:
                self.pipesz = fcntl.fcntl(fd, F_GETPIPE_SZ)
            except OSError:
                self.pipesz = 65536
        elif stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            self.kind = K_FILE

    def add_knote(self, kn: Knote) -> None:
        """Attach ``kn``.  READ knotes come first: when one change activates several
        knotes of a descriptor, FreeBSD wakes the readers first (soisdisconnected,
        pipeclose), so their events are queued, and returned, first."""
        self.knotes = tuple(sorted(self.knotes + (kn,), key=_filter_order))

    def same_file(self) -> bool:
        """Is the descriptor still the open file we registered?"""
        return probe(self.fd, self.dev, self.ino, PROBE_IDENT) >= 0

    def check(self) -> bool:
        """Identity check; marks the watch gone (for good) when it fails."""
        if self.gone:
            return False
        if not self.same_file():
            self.gone = True
            return False
        return True

    def _hint(self, mask: int) -> None:
        # A stream socket reports POLLHUP alone while it is not connected (Linux's
        # tcp_poll/unix_poll): only a shut-down read side (RDHUP) is its EOF.
        if mask & EPOLLRDHUP or (mask & EPOLLHUP and self.kind != K_STREAM):
            self.eof = True
        if mask & EPOLLHUP:
            self.hup = True
        if mask & EPOLLERR:
            self.err = True

    def on_epoll(self, kq: KqueueOps, mask: int) -> None:
        """epoll callback (leader thread): record the hints, activate the knotes."""
        if mask & (EPOLLRDHUP | EPOLLHUP | EPOLLERR):
            self._hint(mask)
        activate = kq.activate
        for kn in self.knotes:
            activate(kn)

    def live(self) -> int:
        """poll(2) of the descriptor now (no side effects); POLLNVAL marks it gone."""
        try:
            rev = _poll_once(self.fd, POLLIN | POLLOUT | POLLRDHUP)
        except OSError:
            rev = POLLNVAL
        if rev & POLLNVAL:
            self.gone = True
        return rev

    def sample(self) -> None:
        """At registration: take the hints from the descriptor itself, so the state it is
        in already (a refused connect, a closed peer) counts at once (FreeBSD's filters
        look at the socket or pipe when the knote is attached)."""
        if self.kind != K_FILE and self.kind != K_KQUEUE:
            self._hint(self.live())

    def pipe_peer_gone(self, rev: int) -> bool:
        """For a pipe end, from poll(2) revents: is the other end closed?  (Linux reports
        a write end without readers as POLLERR, a read end without writers as POLLHUP.)"""
        return bool(rev & (POLLHUP if self.accmode == os.O_RDONLY else POLLERR))

    def pending_error(self, rev: int) -> int:
        """The socket's pending error for an EV_EOF event's ``fflags``, learnt without
        consuming it: Linux's SO_ERROR (and recv) clear the error they report, and the
        program must still read it.  poll(2) tells whether there is one (POLLERR); TCP's
        is inferred from TCP_INFO (``_tcp_error``); an AF_UNIX stream's only asynchronous
        error is ECONNRESET (the peer closed with data unread), which also stands for
        the other families."""
        if not rev & POLLERR:
            return 0
        if self.is_tcp:
            info = _tcp_info(self.fd)
            if len(info) >= 8:
                return _tcp_error(info)
        return errno.ECONNRESET

    def backlog(self) -> int:
        if self.is_tcp:
            info = _tcp_info(self.fd)
            return _TI_UNACKED.unpack_from(info, 24)[0] if len(info) >= 28 else 0
        return 1 if _poll_once(self.fd, select.POLLIN) & select.POLLIN else 0


def _lowat(kn: Knote) -> int:
    if kn.sfflags & NOTE_LOWAT and kn.sdata > 0:
        return kn.sdata
    return 1


class _FdFilter(Filter):
    __slots__ = ()
    fd_based = True
    interest = 0

    def gone(self, kn: Knote) -> bool:
        w: FdWatch = kn.hook
        return w.gone

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        kq.fd_attach(kn, self.interest)
        w: FdWatch = kn.hook
        if w.kind == K_FILE:
            # epoll refuses regular files; inotify tells us when the file changes, so a
            # change re-activates the knote (FreeBSD's vnode hook: filt_vfsread/write).
            try:
                kq.inotify().add_plain(kn, w.fd)
            except OSError:
                pass
        else:
            w.sample()

    def detach(self, kq: KqueueOps, kn: Knote) -> None:
        w: FdWatch = kn.hook
        if w.kind == K_FILE:
            kq.inotify().remove_plain(kn)
        kq.fd_detach(kn)


class ReadFilter(_FdFilter):
    __slots__ = ()
    name = "READ"
    interest = EPOLLIN | EPOLLRDHUP

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        super().attach(kq, kn)
        self._set_fast(kn)

    def touch(self, kq: KqueueOps, kn: Knote, kev: kevent) -> None:
        super().touch(kq, kn, kev)
        self._set_fast(kn)

    def scan_event(
        self, kq: KqueueOps, kn: Knote, cls: type[kevent]
    ) -> kevent | Literal[False] | None:
        """The scan's hot path for a plain READ knote (``kn.fast``): one call checks the
        descriptor's identity, reads FIONREAD and builds the event.  Returns the event,
        False when the knote is stale (no longer active; a closed or reused descriptor
        is marked gone), or None to let ``event``/``copyout`` decide (EOF or error hints,
        EV_ONESHOT, a datagram socket reading 0, which may hold an empty datagram)."""
        w: FdWatch = kn.hook
        if w.eof or w.err:
            return None
        r = read_event(
            cls, w.fd, w.dev, w.ino, kn.ident, kn.filter, kn.flags, kn.fflags, kn.udata
        )
        if r.__class__ is not int:
            return r  # type: ignore[no-any-return]
        if kn.flags & EV_ONESHOT or not (r == -1 or (r == 0 and w.kind != K_DGRAM)):
            return None  # (-2: FIONREAD does not apply; ReadFilter.event asks poll(2))
        if r == -1:
            w.gone = True
            kq.mark_gone(kn)
        kn.status &= ~KN_ACTIVE
        return False

    @staticmethod
    def _set_fast(kn: Knote) -> None:
        # The scan takes these through scan_event (and, with the C helper, a whole run of
        # them through one poll(2) first); FIONREAD reading 0 on a datagram socket falls
        # back to ReadFilter.event (an empty datagram is readable).
        w: FdWatch = kn.hook
        kn.fast = (
            (w.kind <= K_DGRAM or (w.kind == K_PIPE and w.accmode != os.O_WRONLY))
            and not kn.sfflags & NOTE_LOWAT
        )

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        w: FdWatch = kn.hook
        kind = w.kind
        fd = w.fd
        if (kind == K_PIPE or kind == K_FIFO) and w.accmode == os.O_WRONLY:
            if not w.check() or kind == K_FIFO:
                return False  # a FIFO opened write-only: never fires (pipe_nfiltops)
            # A pipe's write end: nothing to read ever arrives on Linux (FreeBSD's pipes
            # are bidirectional); EV_EOF with data 0 once the reader is gone (filt_piperead).
            kn.data = 0
            if w.pipe_peer_gone(w.live()):
                kn.flags |= EV_EOF
                kn.fflags = 0
                return True
            return False
        if kind <= K_DGRAM or kind == K_PIPE:  # the hot path: identity + FIONREAD, one call
            n = probe(fd, w.dev, w.ino, PROBE_READ)
            if n < 0:
                if n == -1:
                    w.gone = True
                return False
            kn.data = n
            err = False
            if w.eof or w.err:  # hints: ask the descriptor what holds now
                rev = w.live()
                if rev & POLLNVAL:
                    return False
                err = bool(rev & POLLERR)
                eof = w.pipe_peer_gone(rev) if kind == K_PIPE else bool(rev & POLLRDHUP)
                if eof:
                    kn.flags |= EV_EOF
                    kn.fflags = w.pending_error(rev) if kind != K_PIPE else 0
                    return True
                if kind == K_PIPE:
                    kn.flags &= ~EV_EOF
            if n >= _lowat(kn):
                return True
            if n == 0 and kind == K_DGRAM and not kn.sfflags & NOTE_LOWAT:
                # Linux's FIONREAD on a datagram socket is the size of the *next*
                # datagram: an empty one reads 0 though recv() has something to consume
                # (and everything queued behind it would wait forever).
                try:
                    return bool(_poll_once(fd, select.POLLIN) & select.POLLIN) or err
                except OSError:
                    return err
            return err  # a pending error makes a socket readable (FreeBSD filt_soread)
        if not w.check():
            return False
        if kind == K_LISTEN:
            n = w.backlog()
            kn.data = n
            return n > 0
        if kind == K_FILE:
            try:
                size = os.fstat(fd).st_size
                off = os.lseek(fd, 0, os.SEEK_CUR)
            except OSError:
                return False
            kn.data = size - off
            return kn.data > 0 or bool(kn.sfflags & NOTE_FILE_POLL)
        if kind == K_KQUEUE:
            inner = w.inner
            n = inner.pending_count() if inner is not None else 0
            kn.data = n
            return n > 0
        # FIFO and everything else: ask poll(2) for the truth.
        try:
            rev = _poll_once(fd, select.POLLIN | POLLRDHUP)
        except OSError:
            return False
        if rev & select.POLLNVAL:
            w.gone = True
            return False
        try:
            kn.data = fionread(fd)
        except OSError:
            kn.data = 0
        if rev & (select.POLLHUP | POLLRDHUP) and not rev & select.POLLIN:
            kn.flags |= EV_EOF
            kn.fflags = 0
            return True
        if rev & (select.POLLHUP | POLLRDHUP):
            kn.flags |= EV_EOF
        else:
            kn.flags &= ~EV_EOF
        return bool(rev & (select.POLLIN | select.POLLERR)) and (
            kn.data >= _lowat(kn) or kind != K_FIFO
        )


class WriteFilter(_FdFilter):
    __slots__ = ()
    name = "WRITE"
    interest = EPOLLOUT

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        super().attach(kq, kn)
        w: FdWatch = kn.hook
        if w.kind == K_PIPE and w.pipe_peer_gone(w.live()):
            # FreeBSD pipe_kqfilter: the other end is already closed -> EPIPE.
            self.detach(kq, kn)
            raise OSError(errno.EPIPE, os.strerror(errno.EPIPE))

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        w: FdWatch = kn.hook
        kind = w.kind
        if kind == K_STREAM or kind == K_DGRAM:
            return self._socket(w, kn)
        if not w.check():
            return False
        if kind == K_FILE:
            kn.data = 0  # FreeBSD filt_vfswrite: a regular file is always writable
            return True
        if kind == K_PIPE or kind == K_FIFO:
            return self._pipe(w, kn)
        try:
            rev = _poll_once(w.fd, POLLOUT)
        except OSError:
            return False
        kn.data = 1 if rev & POLLOUT else 0
        if rev & (POLLHUP | POLLERR):
            kn.flags |= EV_EOF
            return True
        return kn.data >= _lowat(kn)

    @staticmethod
    def _socket(w: FdWatch, kn: Knote) -> bool:
        used = probe(w.fd, w.dev, w.ino, PROBE_OUTQ)
        if used < 0:
            if used == -1:
                w.gone = True
            return False
        space = w.sndbuf - used
        kn.data = max(space, 0)
        if not w.connected or w.hup or w.err:
            # Connecting, never connected, or something happened: ask the descriptor
            # (FreeBSD filt_sowrite).
            rev = w.live()
            if rev & POLLNVAL:
                return False
            if rev & POLLHUP and rev & POLLRDHUP:  # both directions shut: can't send more
                kn.flags |= EV_EOF
                kn.fflags = w.pending_error(rev)
                return True
            if rev & POLLERR:
                return True  # a pending error without EOF (a datagram socket's ICMP)
            if not rev & POLLOUT or (rev & POLLHUP and w.is_tcp):
                # Still connecting (SYN_SENT), or never connected.  (An AF_UNIX stream
                # socket gets no wake-up when it connects: it follows poll(2).)
                return False
            w.connected = True
        return space >= _lowat(kn)

    @staticmethod
    def _pipe(w: FdWatch, kn: Knote) -> bool:
        if w.kind == K_FIFO and w.accmode == os.O_RDONLY:
            return False  # a FIFO opened read-only: accepted, never fires (pipe_nfiltops)
        rev = w.live()
        if rev & POLLNVAL:
            return False
        reader = w.accmode == os.O_RDONLY  # a pipe's read end (Linux pipes are one-way)
        try:
            space = 0 if reader else max(w.pipesz - fionread(w.fd), 0)
        except OSError:
            return False
        kn.data = space
        if w.kind == K_PIPE:
            if w.pipe_peer_gone(rev):
                # FreeBSD: pipeclose's knlist_clear sets EV_EOF|EV_ONESHOT; data is kept.
                kn.flags |= EV_EOF | EV_ONESHOT
                kn.fflags = 0
                return True
            if reader:
                return False
        elif rev & POLLERR:  # a FIFO with no reader left: EOF until one opens it again
            kn.flags |= EV_EOF
            return True
        else:
            kn.flags &= ~EV_EOF
        return bool(rev & POLLOUT) and space >= _lowat(kn)


class EmptyState:
    __slots__ = ("acked", "nonempty", "entry")

    def __init__(self) -> None:
        self.acked = -1
        self.nonempty = False
        self.entry: Any = None


def _bytes_acked(w: FdWatch) -> int:
    info = _tcp_info(w.fd) if w.is_tcp else b""
    return int(_TI_U64.unpack_from(info, 120)[0]) if len(info) >= 128 else -1


class EmptyFilter(_FdFilter):
    """EVFILT_EMPTY: the send buffer is empty (TCP: everything acknowledged).

    Linux has no wake-up for "send queue drained" (epoll reports EPOLLOUT on ACKs only to
    a writer that ran out of space), so an EMPTY knote has a ticker on the kqueue's timer
    heap: every 2 ms while data is outstanding, every 20 ms otherwise.  New activity is
    detected from TCP's ``tcpi_bytes_acked`` (or, for other sockets, from having seen the
    queue non-empty), and the knote is activated when the queue is empty after activity;
    the scan then re-checks ``SIOCOUTQ`` as for any level-triggered knote.
    """

    __slots__ = ()
    name = "EMPTY"
    interest = EPOLLOUT

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        kq.fd_attach(kn, self.interest, refuse_files=True)
        w: FdWatch = kn.hook
        if w.kind not in (K_STREAM, K_DGRAM):
            kq.fd_detach(kn)
            raise OSError(errno.EINVAL, "EVFILT_EMPTY needs a socket")
        st = EmptyState()
        st.acked = _bytes_acked(w)
        kq.empty_states[id(kn)] = st
        self._tick(kq, kn, st, 2_000_000)

    def _tick(self, kq: KqueueOps, kn: Knote, st: EmptyState, delay: int) -> None:
        def fire(now: int) -> None:
            if kn.status & KN_DETACHED or kq.closed:
                return
            w: FdWatch = kn.hook
            used = probe(w.fd, w.dev, w.ino, PROBE_OUTQ)
            if used < 0:
                if used == -1:
                    w.gone = True
                kq.activate(kn)  # let the scan find it gone and drop it
                return
            if used > 0:
                st.nonempty = True
            else:
                acked = _bytes_acked(w)
                if st.nonempty or (acked >= 0 and acked != st.acked):
                    st.nonempty = False
                    st.acked = acked
                    kq.activate(kn)
            self._tick(kq, kn, st, 2_000_000 if used > 0 else 20_000_000)

        st.entry = kq.timers.schedule(time.monotonic_ns() + delay, fire)

    def detach(self, kq: KqueueOps, kn: Knote) -> None:
        st = kq.empty_states.pop(id(kn), None)
        if st is not None and st.entry is not None:
            kq.timers.cancel(st.entry)
        kq.fd_detach(kn)

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        w: FdWatch = kn.hook
        used = probe(w.fd, w.dev, w.ino, PROBE_OUTQ)
        if used < 0:
            if used == -1:
                w.gone = True
            return False
        kn.data = used
        return used == 0


bind_watch(Knote, FdWatch)  # the C scan reads the watch's slots
