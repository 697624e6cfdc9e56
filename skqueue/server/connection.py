"""One server connection and the ledger of the replies all connections hold.

``Conn`` is one accepted connection of ``skqueue.server.runtime.Server``: its socket, its
session, the one knote that watches it, and the replies the socket has not taken yet.
``OutputLedger`` counts those replies over all connections and knows who waits on them
(connections writing, connections parked until the total drops).  The ownership rules are
in ``docs/design.md``, "Server runtime".
"""

from __future__ import annotations

import fcntl
import socket
import struct
import termios
import threading
from collections import deque
from typing import Any

from skqueue import kqueue

__all__ = ["PARKED", "READING", "WRITING", "Conn", "OutputLedger", "send_until_blocked",
           "unsent"]

# What a connection's one knote watches (None while parked).
READING, WRITING, PARKED = "reading", "writing", "parked"


class Conn:
    """One accepted connection.  Every field below ``lock`` is read and written only by the
    thread holding ``lock``: that thread *is* the connection's owner."""

    __slots__ = (
        "sock",
        "fd",
        "session",
        "peer",
        "realtime",
        "kq",
        "counts_requests",
        "lock",
        "closed",
        "state",
        "out",
        "out_bytes",
        "inbuf",
        "progress_at",
        "unsent",
    )

    def __init__(
        self, sock: socket.socket, session: Any, peer: Any, realtime: bool, kq: kqueue
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.session = session
        self.peer = peer
        self.realtime = realtime
        self.kq = kq
        self.counts_requests = isinstance(getattr(session, "requests", None), int)
        self.lock = threading.Lock()
        self.closed = False
        self.state = READING
        self.out: deque[memoryview] = deque()  # replies not yet taken by the socket
        self.out_bytes = 0
        self.inbuf = b""  # received bytes not fed yet (feeding stopped while output waits)
        self.progress_at = 0.0  # monotonic time the peer was last seen reading
        self.unsent = -1  # bytes in the kernel's send queue at the last sweep


class OutputLedger:
    """Pending reply bytes of all connections, who writes them and who waits for them.

    One lock guards the total and both sets, so a connection that parks (``park``) and a
    release that brings the total down (``release``) cannot miss each other.
    """

    __slots__ = ("_lock", "limit", "total", "writing", "parked", "parks", "closed_idle",
                 "closed_over")

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        #: the total above which connections are parked (max_total_output)
        self.limit = limit
        self.total = 0  # read without the lock only as a hint (see Server._on_readable)
        self.writing: set[Conn] = set()
        self.parked: list[Conn] = []
        self.parks = 0
        self.closed_idle = 0
        self.closed_over = 0

    def add(self, n: int) -> None:
        """``n`` more bytes wait."""
        with self._lock:
            self.total += n

    def release(self, n: int) -> list[Conn]:
        """``n`` bytes left; the parked connections to read again once the total is back
        under half the limit (the caller unparks them, outside any ledger lock)."""
        with self._lock:
            self.total -= n
            if not self.parked or self.total > self.limit // 2:
                return []
            parked, self.parked = self.parked, []
            return parked

    def park(self, conn: Conn) -> bool:
        """Park ``conn`` if the total is over the limit; False if it is not (any more)."""
        with self._lock:
            if self.total <= self.limit:
                return False
            self.parked.append(conn)
            self.parks += 1
            return True

    def start_writing(self, conn: Conn) -> None:
        with self._lock:
            self.writing.add(conn)

    def stop_writing(self, conn: Conn) -> None:
        with self._lock:
            self.writing.discard(conn)

    def writers(self) -> list[Conn]:
        """The connections with replies waiting (a copy)."""
        with self._lock:
            return list(self.writing)

    def forget(self, conn: Conn) -> None:
        """``conn`` is closing: it neither writes nor waits any more."""
        with self._lock:
            self.writing.discard(conn)
            if conn in self.parked:
                self.parked.remove(conn)

    def count(self, name: str) -> None:
        """Count a ``closed_idle`` or ``closed_over`` event."""
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {
                "pending_bytes": self.total,
                "writing": len(self.writing),
                "parked": len(self.parked),
                "parks": self.parks,
                "closed_idle": self.closed_idle,
                "closed_over_limit": self.closed_over,
            }


def unsent(fd: int) -> int:
    """Bytes in a socket's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0])
    except OSError:
        return -1


def send_until_blocked(sock: socket.socket, data: bytes | memoryview) -> int:
    """Send as much of ``data`` as the socket takes; the bytes sent.  Stops on EAGAIN, which
    also guarantees a write-space wake-up from the kernel later (the WRITE knote is
    edge-triggered).  Socket errors propagate as OSError."""
    view = memoryview(data)
    sent = 0
    while sent < len(view):
        try:
            sent += sock.send(view[sent:])
        except BlockingIOError:
            break
    return sent
