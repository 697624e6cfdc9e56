"""``skq dump``: fetch the live state dump of a running ``skq serve`` over its control socket.

Both ends of the (tiny) control protocol live here:

* ``ControlServer(path, dump_fn)`` listens on a unix stream socket at ``path`` (``skq serve
  --control PATH``).  A client sends one request line, ``dump\\n``; the server answers with
  ``json.dumps(dump_fn())`` and a newline, then closes.  Any other request gets
  ``{"error": ...}``.  One short-lived thread serves the requests one at a time.
* ``fetch_dump(path)`` is the client side; ``render_text(dump)`` renders a server dump in the
  XML-like form of the original's ``FKQMPRNT`` (docs/semantics.md §3.4: ``<kq_dump>``,
  ``<kevq_dump>`` with one ``<kevq .../>`` per kevq, ``<kqdom_dump>``), wrapped in a
  ``<server>`` element that also carries the per-worker counters.

``skq dump --control PATH`` prints the JSON (indented); ``--text`` prints the text form.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ControlServer", "add_arguments", "fetch_dump", "main", "render_text"]

log = logging.getLogger("skqueue.server")

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
        if cmd == "dump":
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


def fetch_dump(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the control socket at ``path`` for the dump; raise ``OSError`` / ``ValueError``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b"dump\n")
        chunks = []
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    data = json.loads(b"".join(chunks))
    if not isinstance(data, dict):
        raise ValueError("control socket answered with something other than a JSON object")
    if "error" in data and len(data) == 1:
        raise ValueError(str(data["error"]))
    return data


# ---------------------------------------------------------------------- text rendering
def _attrs(d: dict[str, Any], skip: tuple[str, ...] = ()) -> str:
    parts = []
    for k, v in d.items():
        if k in skip or isinstance(v, dict | list):
            continue
        if isinstance(v, float):
            v = f"{v:.6g}"
        elif v is None:
            v = ""
        elif isinstance(v, bool):
            v = int(v)
        parts.append(f'{k}="{v}"')
    return " ".join(parts)


def _render_kqdom(node: dict[str, Any], depth: int, out: list[str]) -> None:
    pad = "  " * depth
    children = node.get("children") or []
    kevqs = node.get("kevqs")
    if not children and not kevqs:
        out.append(f"{pad}<kqdom {_attrs(node)}/>")
        return
    out.append(f"{pad}<kqdom {_attrs(node)}>")
    for k in kevqs or []:
        out.append(f'{pad}  <kevq ptr="{k}"/>')
    for ch in children:
        _render_kqdom(ch, depth + 1, out)
    out.append(f"{pad}</kqdom>")


def render_kq(kq: dict[str, Any], depth: int = 0) -> list[str]:
    """Lines of one kqueue dump (``kq.dump()``) in the FKQMPRNT-like text form."""
    pad = "  " * depth
    out = [f"{pad}<kq_dump {_attrs(kq)}>", f"{pad}  <kevq_dump>"]
    for q in kq.get("kevqs", []):
        out.append(f"{pad}    <kevq {_attrs(q)}/>")
    out.append(f"{pad}  </kevq_dump>")
    if kq.get("kqdom"):
        out.append(f"{pad}  <kqdom_dump>")
        sub: list[str] = []
        _render_kqdom(kq["kqdom"], depth + 2, sub)
        out.extend(sub)
        out.append(f"{pad}  </kqdom_dump>")
    out.append(f"{pad}</kq_dump>")
    return out


def render_text(dump: dict[str, Any]) -> str:
    """A server dump (``Server.dump()``) as XML-like text; a bare kqueue dump works too."""
    if "kevqs" in dump and "server" not in dump:
        return "\n".join(render_kq(dump)) + "\n"
    out = [f"<server {_attrs(dump.get('server', {}))}>"]
    conns = dump.get("connections")
    if conns:
        out.append(f"  <connections {_attrs(conns)}/>")
    for kq in dump.get("kqueues", []):
        out.extend(render_kq(kq, 1))
    out.append("  <workers>")
    for w in dump.get("workers", []):
        out.append(f"    <worker {_attrs(w)}/>")
    out.append("  </workers>")
    if dump.get("totals"):
        out.append(f"  <totals {_attrs(dump['totals'])}/>")
    out.append("</server>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- command
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq dump``."""
    p.add_argument("--control", required=True, metavar="PATH",
                   help="control socket of a running `skq serve --control PATH`")
    p.add_argument("--text", action="store_true",
                   help="print the XML-like FKQMPRNT form instead of JSON")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait (default 5)")


def main(args: argparse.Namespace) -> int:
    """``skq dump``: print the dump; exit 1 if the server cannot be reached."""
    try:
        d = fetch_dump(args.control, args.timeout)
    except (OSError, ValueError) as e:
        print(f"skq dump: {args.control}: {e}", file=sys.stderr)
        return 1
    if args.text:
        sys.stdout.write(render_text(d))
    else:
        sys.stdout.write(json.dumps(d, indent=2) + "\n")
    sys.stdout.flush()
    return 0
