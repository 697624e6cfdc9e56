"""Tests of the worker-pool server runtime (skqueue.server.runtime) and `skq serve` / `skq dump`.

Every server listens on 127.0.0.1 port 0 and is driven by a few client threads speaking the
RPC wire format (skqueue.rpcwire); each reply is checked against its request.  Timing
assertions are "within a few seconds" only.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from skqueue import rpcwire
from skqueue.server.dumpcli import ControlServer, fetch_dump, render_text
from skqueue.server.proto_rpc import RpcSession
from skqueue.server.runtime import Server, ServerConfig, mode_of
from skqueue.server.service import make_service

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[1]
MODES = ["vanilla", "legacy", "rand", "best2_ws"]


def rpc_factory() -> Callable[[], RpcSession]:
    service = make_service("sleep")
    return lambda: RpcSession(service, rng=random.Random(7))


class Client:
    """A blocking RPC client with a frame parser."""

    def __init__(self, addr: tuple[str, int], source: str | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.settimeout(5.0)
        if source is not None:
            self.sock.bind((source, 0))
        self.sock.connect(addr)
        self.parser = rpcwire.FrameParser()
        self.pending: list[tuple[int, int, bytes]] = []

    def send(self, op: int, arg: int = 0, payload: bytes = b"") -> None:
        self.sock.sendall(rpcwire.encode(op, arg, payload))

    def recv_frames(self, n: int) -> list[tuple[int, int, bytes]]:
        while len(self.pending) < n:
            data = self.sock.recv(1 << 16)
            if not data:
                raise ConnectionError("server closed the connection")
            self.pending += self.parser.feed(data)
        out, self.pending = self.pending[:n], self.pending[n:]
        return out

    def call(self, op: int, arg: int = 0, payload: bytes = b"") -> tuple[int, int, bytes]:
        self.send(op, arg, payload)
        return self.recv_frames(1)[0]

    def at_eof(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def make_server() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def make(policy: str = "best2_ws", threads: int = 3, **kw: Any) -> Server:
        factory = kw.pop("factory", None) or rpc_factory()
        s = Server(ServerConfig(threads=threads, policy=policy, **kw), factory)
        servers.append(s)
        s.start()
        return s

    yield make
    for s in servers:
        s.stop()


def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def drive(addr: tuple[str, int], n_clients: int, n_requests: int, seed: int) -> list[str]:
    """Concurrent clients mixing ECHO and pipelined bursts; return the list of failures."""
    failures: list[str] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        try:
            c = Client(addr)
            try:
                i = 0
                while i < n_requests:
                    burst = min(rng.choice((1, 1, 1, 4)), n_requests - i)
                    payloads = [rng.randbytes(rng.randrange(0, 300)) for _ in range(burst)]
                    c.sock.sendall(b"".join(
                        rpcwire.encode(rpcwire.OP_ECHO, 0, p) for p in payloads))
                    for p, got in zip(payloads, c.recv_frames(burst), strict=True):
                        if got != (rpcwire.ST_OK, 0, p):
                            with lock:
                                failures.append(f"client {k} request {i}: {got[:2]}")
                    i += burst
            finally:
                c.close()
        except Exception as e:  # noqa: BLE001 - reported through failures
            with lock:
                failures.append(f"client {k}: {e!r}")

    ts = [threading.Thread(target=one, args=(k,)) for k in range(n_clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    return failures


# ------------------------------------------------------------------------------- modes
@pytest.mark.parametrize("policy", MODES)
def test_concurrent_clients_every_reply_checked(make_server: Callable[..., Server],
                                                policy: str) -> None:
    threads = 2 if policy == "vanilla" else 3
    s = make_server(policy, threads=threads)
    failures = drive(s.address, n_clients=6, n_requests=60, seed=1)
    assert failures == []
    assert wait_for(lambda: s.dump()["totals"]["requests"] == 6 * 60)
    d = s.dump()
    assert d["server"]["mode"] == mode_of(policy)[0]
    assert d["connections"]["accepted"] == 6
    assert wait_for(lambda: s.dump()["connections"]["open"] == 0)
    assert d["totals"]["errors"] == 0
    kqs = d["kqueues"]
    if policy == "vanilla":
        assert len(kqs) == threads and not any(k["multi"] for k in kqs)
    elif policy == "legacy":
        assert len(kqs) == 1 and kqs[0]["multi"] is False
    else:
        assert len(kqs) == 1 and kqs[0]["multi"] is True and kqs[0]["policy"] == policy
        # The acceptor only registers: its kevq never becomes active nor gets events.
        workers = {w["thread"] for w in d["workers"]}
        for q in kqs[0]["kevqs"]:
            if q["thread"] not in workers:
                assert q["total_events"] == 0 and not q["active"]
    json.dumps(d)  # JSON-serialisable


@pytest.mark.parametrize("policy", ["legacy", "rand"])
def test_large_pipelined_input_and_large_reply(make_server: Callable[..., Server],
                                               policy: str) -> None:
    s = make_server(policy, threads=2)
    c = Client(s.address)
    try:
        # > 64 KiB in one go: served over several events (level-triggered leftovers).
        payloads = [bytes([i % 251]) * 1000 for i in range(200)]
        c.sock.sendall(b"".join(rpcwire.encode(rpcwire.OP_ECHO, 0, p) for p in payloads))
        got = c.recv_frames(200)
        assert [g[2] for g in got] == payloads
        # A reply larger than the socket buffers: the send waits for POLLOUT.
        big = random.Random(3).randbytes(900_000)
        c.send(rpcwire.OP_ECHO, 0, big)
        assert c.recv_frames(1)[0] == (rpcwire.ST_OK, 0, big)
    finally:
        c.close()


def test_half_close_still_gets_reply(make_server: Callable[..., Server]) -> None:
    s = make_server("best2_ws", threads=2)
    c = Client(s.address)
    assert c.call(rpcwire.OP_ECHO, 0, b"first")[2] == b"first"  # registered by now
    c.send(rpcwire.OP_ECHO, 0, b"last words")
    c.sock.shutdown(socket.SHUT_WR)
    assert c.recv_frames(1)[0] == (rpcwire.ST_OK, 0, b"last words")
    assert c.at_eof()
    c.close()
    assert wait_for(lambda: s.dump()["connections"]["open"] == 0)


@pytest.mark.parametrize("policy", ["vanilla", "legacy", "best2_ws"])
def test_request_and_close_right_after_connect(make_server: Callable[..., Server],
                                               policy: str) -> None:
    # The FIN often arrives before the acceptor registers the connection: the server must
    # still answer and close every connection.
    s = make_server(policy, threads=2)
    stuck = 0
    for i in range(40):
        if stuck:
            break
        c = Client(s.address)
        c.sock.settimeout(1.0)
        c.send(rpcwire.OP_ECHO, 0, b"%d" % i)
        c.sock.shutdown(socket.SHUT_WR)
        try:
            assert c.recv_frames(1)[0][2] == b"%d" % i
            if not c.at_eof():
                stuck += 1
        except TimeoutError:
            stuck += 1
        finally:
            c.close()
    assert stuck == 0
    assert wait_for(lambda: s.dump()["connections"]["open"] == 0)


def test_memcached_with_pymemcache(make_server: Callable[..., Server]) -> None:
    pymemcache = pytest.importorskip("pymemcache.client.base")
    from skqueue.server.proto_memcached import MemcachedSession, MemcachedStore

    store = MemcachedStore()
    s = make_server("best2_ws", threads=3, factory=lambda: MemcachedSession(store))
    errors: list[str] = []

    def worker(k: int) -> None:
        c = pymemcache.Client(s.address, connect_timeout=5, timeout=5)
        try:
            for i in range(40):
                key = f"k{k}-{i}"
                c.set(key, f"v{k}-{i}".encode())
                if c.get(key) != f"v{k}-{i}".encode():
                    errors.append(key)
            got = c.get_many([f"k{k}-{i}" for i in range(40)])
            if len(got) != 40:
                errors.append(f"get_many {k}: {len(got)}")
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))
        finally:
            c.close()

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    assert errors == []
    assert len(store) == 160


# ------------------------------------------------------------------------------- realtime
@pytest.mark.parametrize("policy", ["best2_ws", "legacy"])
def test_realtime_clients_get_ev_realtime(make_server: Callable[..., Server],
                                          policy: str) -> None:
    s = make_server(policy, threads=2, rt_hosts=("127.0.0.2",), rtshare=50)
    normal = Client(s.address)
    try:
        rt = Client(s.address, source="127.0.0.2")
    except OSError as e:  # pragma: no cover - loopback without 127.0.0.2
        pytest.skip(f"cannot bind 127.0.0.2: {e}")
    try:
        assert normal.call(rpcwire.OP_ECHO, 0, b"n")[2] == b"n"
        assert wait_for(lambda: s.dump()["totals"]["requests"] == 1)
        d = s.dump()
        assert sum(q["total_realtime"] for k in d["kqueues"] for q in k["kevqs"]) == 0
        for i in range(10):
            assert rt.call(rpcwire.OP_ECHO, 0, b"r%d" % i)[2] == b"r%d" % i
        d = s.dump()
        assert d["connections"]["realtime"] == 1
        assert d["kqueues"][0]["rtshare"] == 50
        assert sum(q["total_realtime"] for k in d["kqueues"] for q in k["kevqs"]) >= 10
    finally:
        normal.close()
        rt.close()


def test_rt_predicate(make_server: Callable[..., Server]) -> None:
    seen: list[Any] = []

    def pred(peer: Any) -> bool:
        seen.append(peer)
        return True

    s = make_server("rand", threads=2, rt_predicate=pred)
    c = Client(s.address)
    assert c.call(rpcwire.OP_ECHO, 0, b"x")[2] == b"x"
    c.close()
    assert seen and seen[0][0] == "127.0.0.1"
    assert s.dump()["connections"]["realtime"] == 1


# ------------------------------------------------------------------------------- robustness
@pytest.mark.parametrize("policy", ["vanilla", "legacy", "best2_ws"])
def test_malformed_input_closes_only_that_connection(make_server: Callable[..., Server],
                                                     policy: str) -> None:
    s = make_server(policy, threads=2)
    good = [Client(s.address) for _ in range(3)]
    bad = Client(s.address)
    try:
        for c in good:
            assert c.call(rpcwire.OP_ECHO, 0, b"before")[2] == b"before"
        # A frame header announcing more than MAX_BODY bytes: ProtocolError.
        bad.sock.sendall(rpcwire.HEADER.pack(rpcwire.MAX_BODY + 1, rpcwire.OP_ECHO, 0))
        assert bad.at_eof()
        for c in good:
            assert c.call(rpcwire.OP_ECHO, 0, b"after")[2] == b"after"
        assert wait_for(lambda: s.dump()["totals"]["protocol_errors"] == 1)
        assert all(w["alive"] for w in s.dump()["workers"])
    finally:
        for c in [*good, bad]:
            c.close()


class Exploding:
    """A handler that raises a non-protocol exception on b"boom"."""

    wants_close = False

    def __init__(self, closed: list[int]) -> None:
        self.closed = closed

    def feed(self, data: bytes) -> bytes:
        if b"boom" in data:
            raise RuntimeError("handler bug")
        if data.startswith(b"bye"):
            self.wants_close = True
        return data.upper()

    def close(self) -> None:
        self.closed.append(1)


def test_handler_exception_and_wants_close(make_server: Callable[..., Server]) -> None:
    closed: list[int] = []
    s = make_server("legacy", threads=2, factory=lambda: Exploding(closed))
    a = socket.create_connection(s.address, timeout=5)
    b = socket.create_connection(s.address, timeout=5)
    c = socket.create_connection(s.address, timeout=5)
    try:
        a.sendall(b"hello")
        assert a.recv(100) == b"HELLO"
        b.sendall(b"boom")
        assert b.recv(100) == b""
        c.sendall(b"bye")
        assert c.recv(100) == b"BYE"
        assert c.recv(100) == b""
        a.sendall(b"still here")
        assert a.recv(100) == b"STILL HERE"
        assert wait_for(lambda: len(closed) == 2)
        assert wait_for(lambda: s.dump()["totals"]["requests"] == 3)
        assert s.dump()["totals"]["errors"] == 1
    finally:
        for x in (a, b, c):
            x.close()
    s.stop()
    assert len(closed) == 3  # stop() closed the last session too


def test_connection_limit(make_server: Callable[..., Server]) -> None:
    s = make_server("rand", threads=2, max_conns=2)
    a, b = Client(s.address), Client(s.address)
    try:
        assert a.call(rpcwire.OP_ECHO, 0, b"a")[2] == b"a"
        assert b.call(rpcwire.OP_ECHO, 0, b"b")[2] == b"b"
        c = Client(s.address)
        assert c.at_eof()
        c.close()
        assert s.dump()["connections"]["refused"] == 1
        a.close()
        assert wait_for(lambda: s.dump()["connections"]["open"] == 1)
        d = Client(s.address)
        assert d.call(rpcwire.OP_ECHO, 0, b"d")[2] == b"d"
        d.close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("policy", MODES)
def test_stop_is_prompt_and_closes_everything(policy: str) -> None:
    s = Server(ServerConfig(threads=4, policy=policy, poll_interval=30.0), rpc_factory())
    s.start()
    idle = Client(s.address)
    busy = Client(s.address)
    assert busy.call(rpcwire.OP_ECHO, 0, b"x")[2] == b"x"
    time.sleep(0.1)
    t0 = time.monotonic()
    s.stop()
    # poll_interval is 30 s: only the stop events can make this prompt.
    assert time.monotonic() - t0 < 2.0
    assert not any(t.name.startswith("skq-") for t in threading.enumerate())
    assert idle.at_eof() and busy.at_eof()
    assert s.wait(0) and not s.running
    s.stop()  # idempotent
    idle.close()
    busy.close()


def test_context_manager_and_serve_forever() -> None:
    with Server(ServerConfig(threads=2, policy="cpu0"), rpc_factory()) as s:
        c = Client(s.address)
        assert c.call(rpcwire.OP_ECHO, 0, b"cm")[2] == b"cm"
        c.close()
    assert not s.running

    s2 = Server(ServerConfig(threads=2, policy="legacy"), rpc_factory())
    t = threading.Thread(target=s2.serve_forever)
    t.start()
    assert wait_for(lambda: s2.running)
    s2.stop()
    t.join(5)
    assert not t.is_alive()


def test_pinning_sets_one_cpu_per_worker(make_server: Callable[..., Server]) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    s = make_server("rand", threads=3, pin=True)
    c = Client(s.address)
    assert c.call(rpcwire.OP_ECHO, 0, b"p")[2] == b"p"
    c.close()
    workers = sorted((t for t in threading.enumerate() if t.name.startswith("skq-worker-")),
                     key=lambda t: t.name)
    assert len(workers) == 3
    for i, t in enumerate(workers):
        assert t.native_id is not None
        assert wait_for(lambda t=t: len(os.sched_getaffinity(t.native_id)) == 1)
        assert os.sched_getaffinity(t.native_id) == {cpus[i % len(cpus)]}


def test_dump_interval_callback(make_server: Callable[..., Server]) -> None:
    dumps: list[dict[str, Any]] = []
    make_server("rand", threads=2, dump_interval=0.05, on_dump=dumps.append)
    assert wait_for(lambda: len(dumps) >= 3)
    assert "kqueues" in dumps[0] and "workers" in dumps[0]


def test_invalid_arguments() -> None:
    f = rpc_factory()
    for bad in ({"policy": "fastest"}, {"policy": "vanilla", "tfreq": 1000}, {"rtshare": 0},
                {"threads": 0}, {"write_idle_timeout": 0}, {"max_total_output": 0}):
        with pytest.raises(ValueError):
            ServerConfig(**bad)
    with pytest.raises(TypeError):
        Server(ServerConfig(), f, threads=2)  # settings belong in the config
    assert mode_of("best2_ws") == ("skq", 0x01010204)
    assert mode_of("Legacy") == ("legacy", None)
    s = Server(ServerConfig(policy="best2", tfreq=1000, rtshare=30, threads=1), f)
    with s:
        kq = s.dump()["kqueues"][0]
        assert (kq["tfreq"], kq["rtshare"]) == (1000, 30)
    with pytest.raises(RuntimeError):
        s.start()


def test_old_signature_still_works_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match="ServerConfig"):
        s = Server("127.0.0.1", 0, rpc_factory(), 2, "rand", send_timeout=7.0, batch=8)
    assert s.config == ServerConfig(threads=2, policy="rand", write_idle_timeout=7.0, batch=8)
    with s:
        c = Client(s.address)
        assert c.call(rpcwire.OP_ECHO, 0, b"old")[2] == b"old"
        c.close()
    with pytest.raises(TypeError, match="bogus"):
        Server("127.0.0.1", 0, rpc_factory(), bogus=1)


# ------------------------------------------------------------------------------- dump
def test_control_socket_and_text_render(make_server: Callable[..., Server],
                                        tmp_path: Path) -> None:
    s = make_server("cpu2_ws", threads=2)
    path = str(tmp_path / "ctl.sock")
    with ControlServer(path, s.dump):
        d = fetch_dump(path)
    assert not os.path.exists(path)
    assert d["server"]["policy"] == "cpu2_ws" and len(d["workers"]) == 2
    assert d["server"]["idle_first"] is False  # the default: the original's policies
    text = render_text(d)
    assert text.startswith("<server ") and text.rstrip().endswith("</server>")
    for tag in ("<kq_dump ", "<kevq_dump>", "<kevq ", "<kqdom_dump>", "<worker "):
        assert tag in text
    assert 'sched="0x2"' in text


# ------------------------------------------------------------------------------- skq serve
def _skq(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "skqueue", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_skq_serve_and_dump_subprocess(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ctl = str(tmp_path / "ctl.sock")
    p = _skq("serve", "--port", "0", "--threads", "2", "--policy", "best2_ws",
             "--service", "sleep", "--ready-file", str(ready), "--control", ctl,
             "--idle-first")
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        host, port = line.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert ready.read_text().strip() == line
        c = Client((host, int(port)))
        assert c.call(rpcwire.OP_ECHO, 0, b"sub")[2] == b"sub"
        dump = _skq("dump", "--control", ctl)
        out, err = dump.communicate(timeout=20)
        assert dump.returncode == 0, err
        d = json.loads(out)
        assert d["server"]["policy"] == "best2_ws" and d["server"]["idle_first"] is True
        assert d["connections"]["accepted"] == 1
        text = _skq("dump", "--control", ctl, "--text")
        tout, _ = text.communicate(timeout=20)
        assert "<kq_dump " in tout
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=10) == 0
        assert c.at_eof()
        c.close()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    missing = _skq("dump", "--control", str(tmp_path / "nope.sock"))
    missing.communicate(timeout=20)
    assert missing.returncode == 1
