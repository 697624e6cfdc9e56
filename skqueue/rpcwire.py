"""Wire format of skqueue's ping-pong RPC protocol (shared by server and load generator).

Every message is a frame: a 9-byte header ``!IBI`` = (body length, op/status, arg)
followed by ``body length`` bytes of payload.  The length counts only the payload.

Requests (op):
    ECHO  0  arg = service time in µs the server spends before replying; payload echoed back
    TOUCH 1  arg = number of per-connection cache-line items to touch; payload b"\\x01" to
             increment them, empty to only sum them
    GET   2  payload = key;                 reply payload = value (status NOT_FOUND if absent)
    PUT   3  payload = 2-byte key length + key + value
    SEEK  4  arg = number of values to scan; payload = key; reply arg = values read,
             payload = the first value

Replies carry a status in the op byte (OK 0, NOT_FOUND 1, BAD_REQUEST 2, UNSUPPORTED 3,
SERVER_ERROR 4) and an op-specific arg.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("!IBI")
HEADER_SIZE = HEADER.size
MAX_BODY = 1 << 20  # frames larger than 1 MiB are refused

OP_ECHO = 0
OP_TOUCH = 1
OP_GET = 2
OP_PUT = 3
OP_SEEK = 4
OP_NAMES = {OP_ECHO: "ECHO", OP_TOUCH: "TOUCH", OP_GET: "GET", OP_PUT: "PUT", OP_SEEK: "SEEK"}

ST_OK = 0
ST_NOT_FOUND = 1
ST_BAD_REQUEST = 2
ST_UNSUPPORTED = 3
ST_SERVER_ERROR = 4


class FrameError(ValueError):
    """A frame that can never be valid (e.g. longer than MAX_BODY)."""


def encode(op: int, arg: int = 0, payload: bytes = b"") -> bytes:
    """Encode one frame (request or reply)."""
    return HEADER.pack(len(payload), op, arg & 0xFFFFFFFF) + payload


def encode_put(key: bytes, value: bytes) -> bytes:
    return encode(OP_PUT, 0, struct.pack("!H", len(key)) + key + value)


def split_put(payload: bytes) -> tuple[bytes, bytes]:
    if len(payload) < 2:
        raise FrameError("PUT payload shorter than its key length field")
    (klen,) = struct.unpack_from("!H", payload)
    if 2 + klen > len(payload):
        raise FrameError("PUT key length exceeds payload")
    return payload[2 : 2 + klen], payload[2 + klen :]


class FrameParser:
    """Incremental frame parser: feed bytes, get complete (op, arg, payload) frames."""

    __slots__ = ("_buf", "max_body")

    def __init__(self, max_body: int = MAX_BODY) -> None:
        self._buf = bytearray()
        self.max_body = max_body

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        buf = self._buf
        buf += data
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        n = len(buf)
        while n - pos >= HEADER_SIZE:
            length, op, arg = HEADER.unpack_from(buf, pos)
            if length > self.max_body:
                raise FrameError(f"frame body of {length} bytes exceeds {self.max_body}")
            end = pos + HEADER_SIZE + length
            if end > n:
                break
            out.append((op, arg, bytes(buf[pos + HEADER_SIZE : end])))
            pos = end
        if pos:
            del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buf)
