"""``skq dump``: fetch the live state dump of a running ``skq serve`` over its control socket.

* ``fetch_dump(path)`` asks the control socket (served by
  :class:`skqueue.server.control.ControlServer`, ``skq serve --control PATH``) for the dump;
* ``render_text(dump)`` renders a server dump in the XML-like form of the original's
  ``FKQMPRNT`` (docs/semantics.md §3.4: ``<kq_dump>``, ``<kevq_dump>`` with one ``<kevq .../>``
  per kevq, ``<kqdom_dump>``), wrapped in a ``<server>`` element that also carries the
  per-worker counters.

``skq dump --control PATH`` prints the JSON (indented); ``--text`` prints the text form.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from typing import Any

# ControlServer is re-exported: it lived here before the server side had its own module
from skqueue.server.control import DUMP, ControlServer

__all__ = ["ControlServer", "add_arguments", "fetch_dump", "main", "render_text"]


def fetch_dump(path: str, timeout: float = 5.0) -> dict[str, Any]:
    """Ask the control socket at ``path`` for the dump; raise ``OSError`` / ``ValueError``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(DUMP.encode() + b"\n")
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
