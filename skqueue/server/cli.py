"""``skq serve``: run the worker-pool server (``skqueue.server.runtime.Server``).

Output contract (the benchmark harness relies on it):

* stdout line 1 is the bound address ``HOST:PORT`` (``[HOST]:PORT`` for IPv6), flushed as soon
  as the server accepts connections (``--port 0`` picks a free port);
* ``--ready-file PATH`` receives the same line, written atomically (temporary file + rename), so
  a waiter never reads a partial address;
* ``--dump-interval S`` writes one JSON line with ``Server.dump()`` to **stderr** every S
  seconds (driven by a timer on the acceptor's kqueue, as ``ppd -d``);
* ``--control PATH`` opens a unix socket for ``skq dump --control PATH``;
* SIGINT and SIGTERM stop the server (workers end promptly, every connection is closed) and
  the command exits 0.

Protocols: ``--proto rpc`` (``RpcSession`` with ``--service sleep|hash|spin`` and an optional
KV store, ``--kv dict|rocksdb``, preloaded with ``--kv-keys N`` mixgraph keys) or ``--proto
memcached`` (``MemcachedSession`` over one shared ``MemcachedStore``).

With a KV store, one line on **stderr** says which store and backend serve and why
(``skq serve: KV store ...``; RocksDB: the C-API extension whose SEEK runs without the GIL, or
the rocksdict fallback and the reason), and every dump carries it as its ``kv`` field.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

__all__ = ["add_arguments", "build_factory", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``skq serve``."""
    p.add_argument("--proto", choices=("rpc", "memcached"), default="rpc")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="TCP port (0: any free port)")
    p.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
    p.add_argument("--policy", default="best2_ws",
                   help="SKQ label (rand, best2_ws, cpu0, queue2_ws...), vanilla or legacy")
    p.add_argument("--pin", action="store_true", help="pin worker i to CPU i %% ncpu")
    p.add_argument("--idle-first", action="store_true",
                   help="SKQ: every event goes to an idle worker when one exists, before the "
                   "policy (Tunables.idle_first)")
    p.add_argument("--service", choices=("sleep", "hash", "spin"), default="spin",
                   help="how ECHO spends its service time (default spin, like ppd)")
    p.add_argument("--kv", choices=("none", "dict", "rocksdb"), default="none",
                   help="KV store behind GET/PUT/SEEK (rpc only)")
    p.add_argument("--kv-path", default=None, metavar="DIR", help="RocksDB directory")
    p.add_argument("--kv-backend", choices=("auto", "capi", "rocksdict"), default="auto",
                   help="RocksDB binding: auto (the C extension if built, else rocksdict)")
    p.add_argument("--kv-release-gil", action="store_true",
                   help="RocksDB: release the GIL in point get/put too (SEEK always does, "
                   "with the C extension)")
    p.add_argument("--kv-keys", type=int, default=0, metavar="N",
                   help="preload N mixgraph keys into the store (default 0)")
    p.add_argument("--memory-mb", type=int, default=None,
                   help="memcached memory limit in MiB (default 64, as memcached -m)")
    p.add_argument("--rt-hosts", default="", metavar="IP,...",
                   help="clients from these IPs are registered EV_REALTIME")
    p.add_argument("--rtshare", type=int, default=None, help="KQTUNE_RTSHARE, 1..100")
    p.add_argument("--tfreq", type=int, default=None, help="KQTUNE_FREQ, calls/s (SKQ only)")
    p.add_argument("--batch", type=int, default=64, help="events per control() call")
    p.add_argument("--max-conns", type=int, default=10000)
    p.add_argument("--backlog", type=int, default=1024)
    p.add_argument("--max-conn-output", type=int, default=None, metavar="BYTES",
                   help="pending reply bytes a connection may hold before it is closed "
                        "(default 64 MiB)")
    p.add_argument("--max-total-output", type=int, default=None, metavar="BYTES",
                   help="pending reply bytes of all connections above which no connection "
                        "is read (default 256 MiB)")
    p.add_argument("--write-idle-timeout", type=float, default=None, metavar="S",
                   help="close a connection whose pending replies are not read for S "
                        "seconds (default 60)")
    p.add_argument("--poll-interval", type=float, default=None, metavar="S",
                   help="workers' control() timeout: bounds how long a stop can go unseen, "
                        "never a request's latency (default 0.2)")
    p.add_argument("--ready-file", default=None, metavar="PATH",
                   help="write the bound HOST:PORT here once serving")
    p.add_argument("--control", default=None, metavar="PATH",
                   help="unix socket for `skq dump --control PATH`")
    p.add_argument("--dump-interval", type=float, default=None, metavar="S",
                   help="print the dump as a JSON line on stderr every S seconds")
    p.add_argument("--log-level", default="WARNING",
                   choices=("DEBUG", "INFO", "WARNING", "ERROR"))


def build_factory(
    args: argparse.Namespace,
) -> tuple[Callable[[], Any], Callable[[], None], dict[str, Any]]:
    """``(session_factory, cleanup, info)`` for the protocol options in ``args``; ``info`` is
    merged into the server's dumps (the KV store's ``describe()`` under ``kv``)."""
    if args.proto == "memcached":
        from skqueue.server.memcached_store import MemcachedStore
        from skqueue.server.proto_memcached import MemcachedSession

        store = MemcachedStore(memory_limit_mb=args.memory_mb, threads=args.threads)
        return (lambda: MemcachedSession(store)), (lambda: None), {}

    from skqueue.server.kv import KVError, make_store
    from skqueue.server.proto_rpc import RpcSession
    from skqueue.server.service import make_service

    service = make_service(args.service)
    try:
        kv = make_store(args.kv, args.kv_path, backend=args.kv_backend, keys=args.kv_keys,
                        release_gil=args.kv_release_gil)
    except (KVError, ValueError) as exc:
        raise SystemExit(f"skq serve: {exc}") from None
    info: dict[str, Any] = {}
    if kv is not None:
        info["kv"] = kv.describe()
        line = f"KV store {args.kv} via {kv.backend}: {kv.backend_reason}"
        logging.getLogger("skqueue.server").info("%s", line)
        print(f"skq serve: {line}", file=sys.stderr, flush=True)

    def cleanup() -> None:
        if kv is not None:
            kv.close()

    return (lambda: RpcSession(service, kv)), cleanup, info


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_ready(path: str, line: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(line + "\n")
    os.replace(tmp, path)


def main(args: argparse.Namespace) -> int:
    """Run until SIGINT/SIGTERM; exit 0."""
    from skqueue.sched import Tunables
    from skqueue.server.control import ControlServer
    from skqueue.server.runtime import Server, ServerConfig

    logging.basicConfig(level=getattr(logging, args.log_level),
                        format="%(asctime)s %(threadName)s %(levelname)s %(message)s")
    if args.threads < 1:
        print("skq serve: --threads must be >= 1", file=sys.stderr)
        return 2
    rt_hosts = [h.strip() for h in args.rt_hosts.split(",") if h.strip()]
    factory, cleanup, info = build_factory(args)

    def emit(d: dict[str, Any]) -> None:
        sys.stderr.write(json.dumps(d | info) + "\n")
        sys.stderr.flush()

    optional = {
        name: getattr(args, name)
        for name in ("max_conn_output", "max_total_output", "write_idle_timeout",
                     "poll_interval")
        if getattr(args, name) is not None
    }
    try:
        config = ServerConfig(
            host=args.host, port=args.port, threads=args.threads, policy=args.policy,
            pin=args.pin, rt_hosts=tuple(rt_hosts), max_conns=args.max_conns,
            rtshare=args.rtshare, tfreq=args.tfreq, backlog=args.backlog, batch=args.batch,
            dump_interval=args.dump_interval, on_dump=emit if args.dump_interval else None,
            tunables=Tunables(idle_first=True) if args.idle_first else None,
            **optional,
        )
        server = Server(config, factory)
    except ValueError as e:
        cleanup()
        print(f"skq serve: {e}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    control: ControlServer | None = None
    try:
        try:
            host, port = server.start()
        except OSError as e:
            print(f"skq serve: cannot listen on {args.host}:{args.port}: {e}", file=sys.stderr)
            return 1
        if args.control:
            control = ControlServer(args.control, lambda: server.dump() | info)
            control.start()
        line = _format_address(host, port)
        if args.ready_file:
            _write_ready(args.ready_file, line)
        print(line, flush=True)
        while not stop.wait(0.5):
            pass
        return 0
    finally:
        server.stop()
        if control is not None:
            control.stop()
        cleanup()
        for s, h in old.items():
            signal.signal(s, h)
