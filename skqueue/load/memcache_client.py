"""The load generator's memcached text-protocol client side: key names, request lines, an
incremental reply parser, and the preload that stores every key once before a run.

Only what a ``get``/``set`` load needs; it talks to skq's memcached server and to a stock
memcached alike.
"""

from __future__ import annotations

import socket
import time

__all__ = ["McReply", "get_request", "mc_key", "memcached_preload", "set_request"]


class McReply:
    """Incremental parser of one memcached text-protocol reply (get or set)."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes, expect_get: bool) -> tuple[int, bool, bool]:
        """Returns ``(complete, ok, hit)``: complete = 1 once a whole reply is buffered."""
        buf = self.buf
        buf += data
        eol = buf.find(b"\r\n")
        if eol < 0:
            return 0, False, False
        line = bytes(buf[:eol])
        if expect_get:
            if line == b"END":
                del buf[: eol + 2]
                return 1, True, False
            if line.startswith(b"VALUE "):
                parts = line.split()
                try:
                    nbytes = int(parts[3])
                except (IndexError, ValueError):
                    raise ValueError(f"bad VALUE line {line!r}") from None
                need = eol + 2 + nbytes + 2 + 5
                if len(buf) < need:
                    return 0, False, False
                if bytes(buf[need - 5 : need]) != b"END\r\n":
                    raise ValueError("memcached reply: multi-value or missing END")
                del buf[:need]
                return 1, True, True
        elif line == b"STORED":
            del buf[: eol + 2]
            return 1, True, False
        # ERROR / CLIENT_ERROR / SERVER_ERROR / NOT_STORED ...: a complete, failed reply
        del buf[: eol + 2]
        return 1, False, False


def mc_key(index: int, key_size: int) -> bytes:
    """The memcached key of key index ``index``: zero-padded decimal, ``key_size`` chars."""
    s = str(index)
    if len(s) > key_size:
        raise ValueError("key_size too small for the key count")
    return s.rjust(key_size, "0").encode("ascii")


def get_request(key: bytes) -> bytes:
    """The ``get`` request line of ``key``."""
    return b"get %s\r\n" % key


def set_request(key: bytes, value: bytes) -> bytes:
    """The ``set`` request of ``key`` to ``value`` (flags 0, no expiry)."""
    return b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)


def memcached_preload(
    host: str,
    port: int,
    keys: int,
    key_size: int = 30,
    value_size: int = 200,
    timeout_s: float = 10.0,
    batch: int = 100,
) -> int:
    """Store every key once (``set``, pipelined ``batch`` at a time); returns keys stored."""
    value = b"v" * value_size
    stored = 0
    deadline = time.monotonic() + timeout_s
    with socket.create_connection((host, port), timeout=timeout_s) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for start in range(0, keys, batch):
            n = min(batch, keys - start)
            req = b"".join(set_request(mc_key(i, key_size), value) for i in range(start, start + n))
            s.sendall(req)
            buf = b""
            while buf.count(b"\r\n") < n:
                if time.monotonic() > deadline:
                    raise TimeoutError("memcached preload timed out")
                chunk = s.recv(65536)
                if not chunk:
                    raise ConnectionError("memcached closed the connection during preload")
                buf += chunk
            stored += buf.count(b"STORED\r\n")
    return stored
