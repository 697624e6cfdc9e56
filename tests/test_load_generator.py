"""End-to-end tests of the open-loop load generator against tiny in-test servers."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from skqueue import rpcwire
from skqueue.load import cli
from skqueue.load.config import LoadConfig, connection_class
from skqueue.load.generator import run_load
from skqueue.load.memcache_client import McReply, mc_key
from skqueue.load.worker import intended_schedule

# ----------------------------------------------------------------------------- test servers


class _ThreadedServer:
    """Thread-per-connection TCP server on 127.0.0.1 with a pluggable per-connection handler."""

    def __init__(self, handler: Callable[[_ThreadedServer, socket.socket], None]) -> None:
        self.handler = handler
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(512)
        self.port: int = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.requests = 0
        self.peers: list[str] = []
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.stop = threading.Event()
        self.stall_after: int | None = None
        self.stall_s = 0.0
        self.stall_until = 0.0
        self.kv: dict[bytes, bytes] = {}
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                s, addr = self.lsock.accept()
            except OSError:
                return
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.peers.append(addr[0])
                self.conns.append(s)
            t = threading.Thread(target=self._serve, args=(s,), daemon=True)
            with self.lock:
                self.threads.append(t)
            t.start()

    def _serve(self, s: socket.socket) -> None:
        try:
            self.handler(self, s)
        except OSError:
            pass
        finally:
            s.close()

    def count_request(self) -> None:
        """Count one request.  When the count hits ``stall_after`` the whole server stalls:
        every request handled in the next ``stall_s`` seconds waits until the stall ends."""
        now = time.monotonic()
        with self.lock:
            self.requests += 1
            if self.stall_after is not None and self.requests == self.stall_after:
                self.stall_until = now + self.stall_s
            until = self.stall_until
        if now < until:
            time.sleep(until - now)

    def close(self) -> None:
        self.stop.set()
        try:
            self.lsock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.lsock.close()
        with self.lock:
            conns = list(self.conns)
            threads = list(self.threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.accepter.join(timeout=2)
        for t in threads:
            t.join(timeout=2)


def _rpc_handler(srv: _ThreadedServer, s: socket.socket) -> None:
    parser = rpcwire.FrameParser()
    while True:
        data = s.recv(65536)
        if not data:
            return
        for op, arg, payload in parser.feed(data):
            srv.count_request()
            if op == rpcwire.OP_ECHO:
                reply = rpcwire.encode(rpcwire.ST_OK, arg, payload)
            elif op == rpcwire.OP_GET:
                with srv.lock:
                    v = srv.kv.get(payload)
                if v is None:
                    reply = rpcwire.encode(rpcwire.ST_NOT_FOUND)
                else:
                    reply = rpcwire.encode(rpcwire.ST_OK, 0, v)
            elif op == rpcwire.OP_PUT:
                key, value = rpcwire.split_put(payload)
                with srv.lock:
                    srv.kv[key] = value
                reply = rpcwire.encode(rpcwire.ST_OK)
            elif op == rpcwire.OP_SEEK:
                reply = rpcwire.encode(rpcwire.ST_OK, min(arg, 3), b"")
            else:
                reply = rpcwire.encode(rpcwire.ST_UNSUPPORTED)
            s.sendall(reply)


def _mc_handler(srv: _ThreadedServer, s: socket.socket) -> None:
    """Just enough of the memcached text protocol: get <key> / set <key> <f> <e> <n>."""
    buf = b""
    store: dict[bytes, bytes] = srv.kv
    while True:
        while b"\r\n" not in buf:
            data = s.recv(65536)
            if not data:
                return
            buf += data
        line, buf = buf.split(b"\r\n", 1)
        parts = line.split()
        srv.count_request()
        if parts[0] == b"get":
            with srv.lock:
                v = store.get(parts[1])
            if v is None:
                s.sendall(b"END\r\n")
            else:
                s.sendall(b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (parts[1], len(v), v))
        elif parts[0] == b"set":
            n = int(parts[4])
            while len(buf) < n + 2:
                data = s.recv(65536)
                if not data:
                    return
                buf += data
            value, buf = buf[:n], buf[n + 2 :]
            with srv.lock:
                store[parts[1]] = value
            s.sendall(b"STORED\r\n")
        else:
            s.sendall(b"ERROR\r\n")


@pytest.fixture
def rpc_server() -> Iterator[_ThreadedServer]:
    srv = _ThreadedServer(_rpc_handler)
    yield srv
    srv.close()


@pytest.fixture
def mc_server() -> Iterator[_ThreadedServer]:
    srv = _ThreadedServer(_mc_handler)
    yield srv
    srv.close()


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


# ----------------------------------------------------------------------------- pure parts


def test_schedule_is_deterministic_and_has_the_right_rate() -> None:
    cfg = LoadConfig(port=1, qps=800.0, connections=8, interarrival="exponential", seed=7)
    a = intended_schedule(cfg, 3, 2000)
    b = intended_schedule(cfg, 3, 2000)
    c = intended_schedule(LoadConfig(port=1, qps=800.0, connections=8, seed=8), 3, 2000)
    d = intended_schedule(cfg, 4, 2000)
    assert a == b
    assert a != c and a != d
    gaps = [y - x for x, y in zip(a, a[1:], strict=False)]
    assert all(g >= 0 for g in gaps)
    mean_gap_s = sum(gaps) / len(gaps) / 1e9
    assert mean_gap_s == pytest.approx(1 / 100.0, rel=0.1)  # lambda = 800 / 8


def test_rt_classes_and_rates() -> None:
    cfg = LoadConfig(port=1, qps=1000.0, connections=10, rt_connections=2, rt_qps=200.0)
    cfg.validate()
    assert [connection_class(cfg, i) for i in range(10)] == ["normal"] * 8 + ["rt"] * 2
    assert cfg.class_rate("rt") == pytest.approx(100.0)
    assert cfg.class_rate("normal") == pytest.approx(100.0)
    with pytest.raises(ValueError):
        LoadConfig(port=1, rt_connections=1, rt_bind="10.0.0.1").validate()
    with pytest.raises(ValueError):
        LoadConfig(port=1, protocol="http").validate()


def test_memcached_reply_parser() -> None:
    p = McReply()
    assert p.feed(b"VALUE k 0 3\r\nab", True) == (0, False, False)
    assert p.feed(b"c\r\nEND\r\n", True) == (1, True, True)
    assert p.feed(b"END\r\n", True) == (1, True, False)
    assert p.feed(b"STOR", False) == (0, False, False)
    assert p.feed(b"ED\r\n", False) == (1, True, False)
    assert p.feed(b"SERVER_ERROR out of memory\r\n", False) == (1, False, False)
    assert mc_key(42, 6) == b"000042"


# ----------------------------------------------------------------------------- end to end


def test_echo_run_counts_and_rate(rpc_server: _ThreadedServer) -> None:
    cfg = LoadConfig(
        port=rpc_server.port,
        qps=400.0,
        connections=8,
        processes=2,
        duration_s=1.5,
        warmup_s=0.3,
        interarrival="exponential",
        service="echo-mix",
        seed=3,
    )
    t = time.monotonic()
    res = run_load(cfg)
    wall = time.monotonic() - t
    assert wall < cfg.warmup_s + cfg.duration_s + cfg.timeout_s
    assert res.connections_ok == 8 and res.processes == 2
    assert res.errors == 0, res.error_kinds
    assert res.offered_qps == pytest.approx(400.0, rel=0.25)
    assert res.achieved_qps == pytest.approx(res.offered_qps, rel=0.15)
    assert res.latency_intended.count == res.sent > 0
    assert res.latency_actual.count == res.latency_intended.count
    # intended-time latency can never be below actual-send latency
    assert res.latency_intended.percentile(50) >= res.latency_actual.percentile(50)
    assert res.latency_intended.percentile(50) < 50e6  # 50 ms: an idle local server
    assert rpc_server.requests >= res.sent
    d = res.to_dict()
    json.dumps(d)
    assert d["latency_unit"] == "us" and d["classes"]["normal"]["connections"] == 8


def test_stalled_server_shows_in_intended_latency(rpc_server: _ThreadedServer) -> None:
    # 400 qps, 0.3 s warm-up: request #300 arrives ~0.45 s into the window and stalls 0.6 s.
    rpc_server.stall_after = 300
    rpc_server.stall_s = 0.6
    cfg = LoadConfig(
        port=rpc_server.port,
        qps=400.0,
        connections=4,
        processes=1,
        duration_s=1.8,
        warmup_s=0.3,
        interarrival="fixed",
        service="zero",
        seed=5,
    )
    res = run_load(cfg)
    assert res.errors == 0, res.error_kinds
    li, la = res.latency_intended, res.latency_actual
    # every request intended during the stall (~240 of ~720) is charged with its delay
    assert li.max >= 0.4e9
    assert li.percentile(90) > 0.1e9
    # measured from the actual send only the one stalled request per connection is slow
    assert la.percentile(95) < 0.05e9
    assert li.count_above(100_000_000) > 5 * la.count_above(100_000_000)


def test_rt_connections_bind_and_are_reported(rpc_server: _ThreadedServer) -> None:
    cfg = LoadConfig(
        port=rpc_server.port,
        qps=300.0,
        connections=6,
        rt_connections=2,
        rt_qps=100.0,
        rt_bind="127.0.0.2",
        processes=1,
        duration_s=0.8,
        warmup_s=0.2,
        interarrival="exponential",
        service="fixed:0",
    )
    res = run_load(cfg)
    assert res.errors == 0, res.error_kinds
    assert sorted(rpc_server.peers).count("127.0.0.2") == 2
    assert set(res.classes) == {"normal", "rt"}
    rt, normal = res.classes["rt"], res.classes["normal"]
    assert rt.connections == 2 and normal.connections == 4
    assert rt.target_qps == pytest.approx(100.0) and normal.target_qps == pytest.approx(200.0)
    assert rt.latency_intended.count > 20 and normal.latency_intended.count > 40
    assert normal.completed > rt.completed


def test_kv_protocol(rpc_server: _ThreadedServer) -> None:
    cfg = LoadConfig(
        port=rpc_server.port,
        protocol="rpc-kv",
        qps=500.0,
        connections=4,
        processes=1,
        duration_s=0.8,
        warmup_s=0.1,
        interarrival="exponential",
        kv_keyspace=300,
    )
    res = run_load(cfg)
    assert res.errors == 0, res.error_kinds
    assert res.not_found > 0  # GETs of keys never PUT
    assert len(rpc_server.kv) > 0  # PUTs arrived
    assert all(len(k) == 48 for k in rpc_server.kv)


def test_memcached_protocol(mc_server: _ThreadedServer) -> None:
    cfg = LoadConfig(
        port=mc_server.port,
        protocol="memcached",
        qps=400.0,
        connections=4,
        processes=1,
        duration_s=0.6,
        warmup_s=0.1,
        interarrival="exponential",
        mc_keys=50,
        mc_key_size=10,
        mc_value_size=32,
        mc_set_ratio=0.2,
        mc_preload=True,
    )
    res = run_load(cfg)
    assert res.errors == 0, res.error_kinds
    assert res.latency_intended.count > 100
    assert len(mc_server.kv) == 50 and all(len(v) == 32 for v in mc_server.kv.values())


def test_refused_connections_are_errors_and_bounded() -> None:
    cfg = LoadConfig(port=_free_port(), connections=3, duration_s=0.3, warmup_s=0.1, timeout_s=2)
    t = time.monotonic()
    res = run_load(cfg)
    assert time.monotonic() - t < cfg.warmup_s + cfg.duration_s + cfg.timeout_s
    assert res.connections_ok == 0
    assert res.error_kinds.get("connect") == 3
    assert res.achieved_qps == 0.0 and res.latency_intended.count == 0
    # nothing could be sent, but the schedule was still offered
    assert res.unsent == res.intended > 0


def test_server_closing_connections_is_counted(rpc_server: _ThreadedServer) -> None:
    def closer(srv: _ThreadedServer, s: socket.socket) -> None:
        s.recv(100)

    rpc_server.handler = closer
    cfg = LoadConfig(
        port=rpc_server.port,
        connections=2,
        processes=0,
        qps=100.0,
        duration_s=0.3,
        warmup_s=0.0,
        interarrival="fixed",
    )
    res = run_load(cfg)
    assert res.error_kinds.get("eof", 0) + res.error_kinds.get("reset", 0) == 2
    assert res.completed == 0


def test_cli_json(rpc_server: _ThreadedServer) -> None:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(
        [
            "--port", str(rpc_server.port), "--qps", "200", "--conns", "2", "--procs", "0",
            "--duration", "0.5", "--warmup", "0.1", "--interarrival", "uniform", "--json",
        ]
    )  # fmt: skip
    out = io.StringIO()
    assert cli.main(args, out=out) == 0
    d = json.loads(out.getvalue())
    assert d["config"]["interarrival"] == "uniform"
    assert d["latency_intended_us"]["count"] > 20
    args.json = False
    out = io.StringIO()
    assert cli.main(args, out=out) == 0
    assert "achieved" in out.getvalue() and "p99" in out.getvalue()


@pytest.mark.skipif(shutil.which("memcached") is None, reason="memcached binary not installed")
def test_drives_the_real_memcached() -> None:
    port = _free_port()
    argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-t", "1", "-m", "16"]
    if os.geteuid() == 0:
        argv += ["-u", "nobody"]  # memcached refuses to run as root otherwise
    mc = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip("memcached did not start")
                time.sleep(0.05)
        cfg = LoadConfig(
            port=port,
            protocol="memcached",
            qps=500.0,
            connections=4,
            processes=1,
            duration_s=0.6,
            warmup_s=0.1,
            mc_keys=200,
            mc_preload=True,
        )
        res = run_load(cfg)
        assert res.errors == 0, res.error_kinds
        assert res.latency_intended.count > 150
    finally:
        mc.terminate()
        mc.wait(timeout=5)
