"""The server side of ``skq serve --control PATH``: a tiny control protocol on a unix socket.

``ControlServer(path, dump_fn)`` listens on a unix stream socket at ``path``.  A client sends
one request line, ``dump\\n`` (:data:`DUMP`, then a newline); the server answers with
``json.dumps(dump_fn())`` and a newline, then closes.  Any other request gets
``{"error": ...}``.  One short-lived thread serves the requests one at a time.

The client side, ``skq dump``, is :mod:`skqueue.server.dumpcli`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["DUMP", "ControlServer"]

log = logging.getLogger("skqueue.server")

#: the one request the control socket understands (sent as one line)
DUMP = "dump"

_MAX_REQUEST = 256


class ControlServer:
    """Serve ``dump_fn()`` as JSON on a unix socket at ``path`` (see the module docstring)."""

    def __init__(self, path: str, dump_fn: Callable[[], dict[str, Any]]) -> None:
        self.path = path
        self.dump_fn = dump_fn
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Bind (replacing a stale socket file) and start serving."""
        with contextlib.suppress(FileNotFoundError):
            if os.path.exists(self.path) and not os.path.isdir(self.path):
                os.unlink(self.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(self.path)
            s.listen(16)
            s.settimeout(0.2)
        except BaseException:
            s.close()
            raise
        self._sock = s
        self._thread = threading.Thread(target=self._run, name="skq-control", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        s = self._sock
        assert s is not None
        while not self._stop.is_set():
            try:
                c, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with c:
                try:
                    self._handle(c)
                except Exception:  # noqa: BLE001 - a bad client must not end the service
                    log.debug("skqueue.server: control request failed", exc_info=True)

    def _handle(self, c: socket.socket) -> None:
        c.settimeout(2.0)
        req = b""
        while b"\n" not in req and len(req) < _MAX_REQUEST:
            chunk = c.recv(_MAX_REQUEST)
            if not chunk:
                break
            req += chunk
        cmd = req.split(b"\n", 1)[0].strip().decode("ascii", "replace")
        if cmd == DUMP:
            body: dict[str, Any] = self.dump_fn()
        else:
            body = {"error": f"unknown request {cmd!r} (expected 'dump')"}
        c.sendall(json.dumps(body).encode() + b"\n")

    def stop(self) -> None:
        """Stop serving and remove the socket file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)

    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
