"""The open-loop load generator: :func:`run_load`.

Design
------
The generator re-creates the paper's ``dismember`` (docs/semantics.md §6.5) on one Linux machine,
without its coordinated-omission blind spot.

*Processes.*  Connections are split into contiguous blocks of connection ids, one block per
worker **process** (``multiprocessing``, ``spawn`` by default because the server under test may
be threads of the calling process and forking a threaded process is unsafe).  The generator
thus never competes for the server's GIL.  Each worker drives all of its connections from one
``epoll`` loop over non-blocking ``TCP_NODELAY`` sockets.  ``processes=0`` runs one worker inline
in the calling thread (handy for tests and debugging; it *does* share the caller's GIL).

*Schedule (open loop, depth 1).*  Every connection has its own schedule of *intended* send
times: the first at ``t0 + U*mean`` (a uniform phase, so ``fixed`` schedules do not fire in
lockstep), then ``next = previous intended + sample``, with per-connection rate
``lambda = target_qps / connections``.  At most one request is outstanding per connection.
If a reply is late, the next request leaves as soon as the reply arrives, but its latency is
still measured from its *intended* send time; a stalled server therefore shows up as large
latencies for every request it delayed, not just one (no coordinated omission).  The latency
from the *actual* send time (what dismember reports) is recorded too, and the send lag
(actual - intended) as a third histogram.  ``qps <= 0`` is *unpaced*: a connection sends
again as soon as its reply arrives (intended = actual).

*Windows.*  All workers share ``t0`` (CLOCK_MONOTONIC is system-wide).  ``[t0, t0+warmup)`` is
not measured; the measurement window is ``W = [t0+warmup, t0+warmup+duration)``.

* a request is *measured* when its intended send time lies in ``W``; its latencies are
  recorded when its reply arrives (even after ``W`` ends, during the drain);
* offered QPS = intended send times in ``W`` (sent or not) / duration;
* achieved QPS = successful replies *completed* in ``W`` / duration;
* after ``W`` ends, no request intended at or after its end is sent; during the drain
  (``min(1 s, timeout_s/4)``) in-flight replies are awaited and a connection whose backlog
  still holds requests intended inside ``W`` keeps sending them back to back, so their
  latencies are measured too;
* ``unsent`` counts intended sends in ``W`` that never left (backlog left when the drain
  ended); ``in_flight_at_end`` counts requests still unanswered when the drain ended
  (reported as ``timeout`` errors).

*Timing precision.*  ``epoll_wait`` has millisecond granularity, so a worker waits in
``epoll`` for whole milliseconds and then, for the last sub-millisecond, polls and sleeps in
steps of at most 100 µs (timer slack lowered to 1 ns in worker processes).  Sends are thus
late by up to ~0.2 ms and replies that arrive during those short sleeps are time-stamped up to
~0.2 ms late; ``busy_poll=True`` spins instead (burns a core; avoid on a 2-core machine shared
with the server).  The send-lag histogram shows how late sends really were.

*Bounded.*  Workers must report ready (connections made) within ``timeout_s/2``; they stop
sending at the end of ``W`` and stop listening after the drain; the parent terminates any worker
still alive at ``start + warmup + duration + timeout_s``.  So every run ends by itself.

*Protocols.*  ``rpc-echo``: ECHO frames of :mod:`skqueue.rpcwire` whose ``arg`` (the server's
service time in µs) comes from the service model (``EchoMix`` by default).  ``rpc-kv``:
GET/PUT/SEEK frames drawn from :class:`skqueue.load.dist.MixGraph`; NOT_FOUND is a normal
answer; ``kv_seed`` picks another request stream than the authors' per-connection seeds, and
``kv_rt_get_only`` makes the ``rt`` class send GETs only (the paper's master).
``memcached``: the real memcached text protocol (``get <key>`` / ``set <key> 0 0
<n>``), ``1 - mc_set_ratio`` gets, uniform keys over ``mc_keys`` keys of ``mc_key_size``
characters, values of ``mc_value_size`` bytes; it can drive a stock memcached.

*Classes.*  The last ``rt_connections`` connection ids form class ``"rt"`` (they may bind to
``rt_bind``, a loopback address such as 127.0.0.2, so a server can recognise them), the others
class ``"normal"``.  Each class has its own histograms and counts.  With ``rt_qps`` set, the rt
connections share ``rt_qps`` and the normal ones ``qps - rt_qps`` (dismember's master/agent
split); otherwise all connections get ``qps / connections``.

Determinism: each connection's schedule uses ``random.Random("skq-sched:<seed>:<conn_id>")``
and its request contents ``random.Random("skq-req:<seed>:<conn_id>")`` (rpc-kv uses MixGraph's
own per-connection generator), so schedules and request streams depend only on the seed.
"""

from __future__ import annotations

import ctypes
import heapq
import ipaddress
import multiprocessing
import multiprocessing.connection
import random
import select
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from skqueue import rpcwire
from skqueue.load.dist import (
    Distribution,
    MixGraph,
    MixGraphConn,
    ServiceModel,
    parse_interarrival,
    parse_service,
)
from skqueue.load.hist import LatencyHistogram

__all__ = [
    "PROTOCOLS",
    "LoadConfig",
    "ClassResult",
    "LoadResult",
    "run_load",
    "intended_schedule",
    "connection_class",
    "memcached_preload",
    "mc_key",
    "config_from_dict",
]

PROTOCOLS = ("rpc-echo", "rpc-kv", "memcached")
RT = "rt"
NORMAL = "normal"

_NS = 1_000_000_000
_MS = 1_000_000


@dataclass
class LoadConfig:
    """Everything a load run needs; all fields are plain data (picklable, JSON-able)."""

    host: str = "127.0.0.1"
    port: int = 0
    protocol: str = "rpc-echo"
    qps: float = 1000.0
    connections: int = 8
    processes: int = 1
    duration_s: float = 2.0
    warmup_s: float = 0.5
    interarrival: str = "fb_ia"
    service: str = "echo-mix"
    seed: int = 1
    rt_connections: int = 0
    rt_bind: str | None = "127.0.0.2"
    rt_qps: float | None = None
    rt_service: str | None = None
    bind: str | None = None
    timeout_s: float = 5.0
    conn_id_base: int = 0
    payload_size: int = 16
    kv_keyspace: int = 50_000_000
    kv_authors_quirk: bool = False
    kv_scan_cap: int | None = 10_000
    kv_seed: int | None = None
    kv_rt_get_only: bool = False
    mc_keys: int = 10_000
    mc_key_size: int = 30
    mc_value_size: int = 200
    mc_set_ratio: float = 0.03
    mc_preload: bool = False
    busy_poll: bool = False
    start_method: str = "spawn"
    histogram_backend: str = "auto"

    def validate(self) -> None:
        """Raise ``ValueError`` on an inconsistent configuration."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if not 0 < self.port < 65536:
            raise ValueError("port must be in 1..65535")
        if self.connections < 1:
            raise ValueError("connections must be >= 1")
        if not 0 <= self.rt_connections <= self.connections:
            raise ValueError("rt_connections must be in 0..connections")
        if self.processes < 0:
            raise ValueError("processes must be >= 0 (0 = inline)")
        if self.duration_s <= 0 or self.warmup_s < 0 or self.timeout_s <= 0:
            raise ValueError("duration_s and timeout_s must be > 0, warmup_s >= 0")
        for addr in (self.bind, self.rt_bind if self.rt_connections else None):
            if addr is not None and not ipaddress.ip_address(addr).is_loopback:
                raise ValueError(f"local bind address {addr} is not a loopback address")
        if self.rt_qps is not None and self.qps > 0:
            if self.rt_connections == 0:
                raise ValueError("rt_qps needs rt_connections > 0")
            if self.rt_connections < self.connections and self.qps - self.rt_qps <= 0:
                raise ValueError("qps must exceed rt_qps (qps is the total)")
        if self.payload_size < 0 or self.mc_value_size < 0:
            raise ValueError("sizes must be >= 0")
        if not 1 <= self.mc_key_size <= 250:
            raise ValueError("memcached keys are 1..250 characters")
        if not 0.0 <= self.mc_set_ratio <= 1.0:
            raise ValueError("mc_set_ratio must be in [0, 1]")
        if self.mc_keys < 1:
            raise ValueError("mc_keys must be >= 1")
        parse_interarrival(self.interarrival, 1.0)
        parse_service(self.service)
        if self.rt_service is not None:
            parse_service(self.rt_service)

    @property
    def normal_connections(self) -> int:
        """Connections of class ``"normal"``."""
        return self.connections - self.rt_connections

    def class_rate(self, klass: str) -> float:
        """Per-connection target rate (requests/s) of a class; <= 0 means unpaced."""
        if self.qps <= 0:
            if klass == RT and self.rt_qps is not None and self.rt_qps > 0:
                return self.rt_qps / self.rt_connections
            return 0.0
        if self.rt_qps is None:
            return self.qps / self.connections
        if klass == RT:
            return self.rt_qps / self.rt_connections if self.rt_qps > 0 else 0.0
        return (self.qps - self.rt_qps) / max(self.normal_connections, 1)


def connection_class(cfg: LoadConfig, conn_id: int) -> str:
    """``"rt"`` for the last ``rt_connections`` ids, ``"normal"`` otherwise."""
    local = conn_id - cfg.conn_id_base
    return RT if local >= cfg.normal_connections else NORMAL


# ----------------------------------------------------------------------------- results


@dataclass
class ClassResult:
    """Counts and histograms of one connection class over the measurement window."""

    klass: str
    connections: int = 0
    target_qps: float = 0.0
    intended: int = 0
    sent: int = 0
    unsent: int = 0
    completed: int = 0
    recorded: int = 0
    latency_intended: LatencyHistogram = field(default_factory=LatencyHistogram)
    latency_actual: LatencyHistogram = field(default_factory=LatencyHistogram)

    def merge(self, other: ClassResult) -> None:
        """Add ``other`` (same class, another worker) into this one."""
        self.connections += other.connections
        self.target_qps += other.target_qps
        self.intended += other.intended
        self.sent += other.sent
        self.unsent += other.unsent
        self.completed += other.completed
        self.recorded += other.recorded
        self.latency_intended.merge(other.latency_intended)
        self.latency_actual.merge(other.latency_actual)

    def to_dict(self, duration_s: float) -> dict[str, Any]:
        """JSON-safe summary; latencies in µs."""
        return {
            "class": self.klass,
            "connections": self.connections,
            "target_qps": self.target_qps,
            "offered_qps": self.intended / duration_s,
            "achieved_qps": self.completed / duration_s,
            "intended": self.intended,
            "sent": self.sent,
            "unsent": self.unsent,
            "completed": self.completed,
            "latency_intended_us": self.latency_intended.to_dict(),
            "latency_actual_us": self.latency_actual.to_dict(),
        }


@dataclass
class LoadResult:
    """Outcome of :func:`run_load`.  Latency histograms are in ns; ``to_dict`` reports µs."""

    config: LoadConfig
    duration_s: float
    target_qps: float
    offered_qps: float
    achieved_qps: float
    intended: int
    sent: int
    unsent: int
    completed: int
    replies: int
    not_found: int
    in_flight_at_end: int
    errors: int
    error_kinds: dict[str, int]
    connections_ok: int
    processes: int
    wall_s: float
    latency_intended: LatencyHistogram
    latency_actual: LatencyHistogram
    send_lag: LatencyHistogram
    classes: dict[str, ClassResult]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary (latencies in µs, key ``latency_unit``)."""
        return {
            "config": asdict(self.config),
            "latency_unit": "us",
            "duration_s": self.duration_s,
            "target_qps": self.target_qps,
            "offered_qps": self.offered_qps,
            "achieved_qps": self.achieved_qps,
            "intended": self.intended,
            "sent": self.sent,
            "unsent": self.unsent,
            "completed": self.completed,
            "replies": self.replies,
            "not_found": self.not_found,
            "in_flight_at_end": self.in_flight_at_end,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "connections_ok": self.connections_ok,
            "processes": self.processes,
            "wall_s": self.wall_s,
            "latency_intended_us": self.latency_intended.to_dict(),
            "latency_actual_us": self.latency_actual.to_dict(),
            "send_lag_us": self.send_lag.to_dict(),
            "classes": {k: c.to_dict(self.duration_s) for k, c in self.classes.items()},
        }


# ----------------------------------------------------------------------------- protocols


class _McReply:
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
            req = b"".join(
                b"set %s 0 0 %d\r\n%s\r\n" % (mc_key(i, key_size), value_size, value)
                for i in range(start, start + n)
            )
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


# ----------------------------------------------------------------------------- connections


class _Conn:
    """One client connection and its schedule."""

    __slots__ = (
        "conn_id",
        "klass",
        "sock",
        "fd",
        "alive",
        "ia",
        "paced",
        "sched_rng",
        "req_rng",
        "service",
        "fixed_frame",
        "mix_state",
        "parser",
        "mc",
        "expect_get",
        "outstanding",
        "cur_intended",
        "cur_sent",
        "next_intended",
        "outbuf",
        "writing",
    )

    def __init__(self, cfg: LoadConfig, conn_id: int) -> None:
        self.conn_id = conn_id
        self.klass = connection_class(cfg, conn_id)
        rate = cfg.class_rate(self.klass)
        self.paced = rate > 0
        self.ia: Distribution = parse_interarrival(cfg.interarrival, rate)
        self.sched_rng = random.Random(f"skq-sched:{cfg.seed}:{conn_id}")
        self.req_rng = random.Random(f"skq-req:{cfg.seed}:{conn_id}")
        spec = cfg.rt_service if (self.klass == RT and cfg.rt_service) else cfg.service
        self.service: ServiceModel = parse_service(spec)
        self.fixed_frame: bytes | None = None
        if cfg.protocol == "rpc-echo" and self.service.per_connection:
            arg = self.service.service_us(conn_id)
            self.fixed_frame = rpcwire.encode(rpcwire.OP_ECHO, arg, b"e" * cfg.payload_size)
        self.mix_state: MixGraphConn | None = None
        self.parser = rpcwire.FrameParser()
        self.mc = _McReply()
        self.expect_get = True
        self.sock: socket.socket | None = None
        self.fd = -1
        self.alive = False
        self.outstanding = False
        self.cur_intended = 0
        self.cur_sent = 0
        self.next_intended = 0
        self.outbuf = b""
        self.writing = False

    def first_intended(self, t0_ns: int) -> int:
        """The first intended send: a uniform phase within one mean inter-arrival."""
        if not self.paced:
            return t0_ns
        return t0_ns + int(self.sched_rng.random() * self.ia.mean * _NS)

    def advance(self, intended_ns: int) -> int:
        """The intended send time after ``intended_ns``."""
        return intended_ns + int(self.ia.sample(self.sched_rng) * _NS)


def intended_schedule(cfg: LoadConfig, conn_id: int, n: int, t0_ns: int = 0) -> list[int]:
    """The first ``n`` intended send times (ns) of connection ``conn_id`` for a run with
    ``t0 = t0_ns`` -- exactly what the worker would use.  Unpaced connections return ``[]``."""
    c = _Conn(cfg, conn_id)
    if not c.paced:
        return []
    out = [c.first_intended(t0_ns)]
    while len(out) < n:
        out.append(c.advance(out[-1]))
    return out[:n]


class _ClassAcc:
    __slots__ = ("res",)

    def __init__(self, klass: str, backend: str) -> None:
        self.res = ClassResult(
            klass,
            latency_intended=LatencyHistogram(backend),
            latency_actual=LatencyHistogram(backend),
        )


class _Worker:
    """Drives a block of connections from one epoll loop (runs inside a worker process)."""

    def __init__(
        self,
        cfg: LoadConfig,
        conn_ids: list[int],
        clock: Callable[[], int] = time.monotonic_ns,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.cfg = cfg
        self.clock = clock
        self.sleep = sleep
        self.conns = [_Conn(cfg, i) for i in conn_ids]
        self.by_fd: dict[int, _Conn] = {}
        self.ep = select.epoll()
        self.errors: dict[str, int] = {}
        self.replies = 0
        self.not_found = 0
        self.in_flight_at_end = 0
        backend = cfg.histogram_backend
        self.acc = {k: _ClassAcc(k, backend) for k in (NORMAL, RT)}
        self.send_lag = LatencyHistogram(backend)
        self.mix: MixGraph | None = None
        if cfg.protocol == "rpc-kv":
            self.mix = MixGraph(
                keyspace=cfg.kv_keyspace,
                authors_quirk=cfg.kv_authors_quirk,
                scan_cap=cfg.kv_scan_cap,
            )
            for c in self.conns:
                c.mix_state = self.mix.connection(c.conn_id, cfg.kv_seed)
        self.mc_value = b"v" * cfg.mc_value_size
        self.outstanding = 0
        self.ws = 0
        self.we = 0
        self.heap: list[tuple[int, int]] = []
        self.connected = 0

    # -------------------------------------------------------------- setup
    def _error(self, kind: str, n: int = 1) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + n

    def connect(self, deadline_ns: int) -> int:
        """Open every connection (blocking connect, then non-blocking); returns how many."""
        ok = 0
        for c in self.conns:
            remaining = (deadline_ns - self.clock()) / _NS
            if remaining <= 0:
                self._error("connect")
                continue
            local = self.cfg.rt_bind if c.klass == RT else self.cfg.bind
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                if local:
                    s.bind((local, 0))
                s.settimeout(remaining)
                s.connect((self.cfg.host, self.cfg.port))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.setblocking(False)
            except OSError:
                s.close()
                self._error("connect")
                continue
            c.sock = s
            c.fd = s.fileno()
            c.alive = True
            self.by_fd[c.fd] = c
            self.ep.register(c.fd, select.EPOLLIN)
            ok += 1
        self.connected = ok
        return ok

    def close(self) -> None:
        """Close every socket and the epoll instance."""
        for c in self.conns:
            if c.sock is not None:
                c.sock.close()
                c.sock = None
            c.alive = False
        self.by_fd.clear()
        self.ep.close()

    # -------------------------------------------------------------- requests
    def _build(self, c: _Conn) -> bytes:
        proto = self.cfg.protocol
        if proto == "rpc-echo":
            if c.fixed_frame is not None:
                return c.fixed_frame
            arg = c.service.service_us(c.conn_id, c.req_rng)
            return rpcwire.encode(rpcwire.OP_ECHO, arg, b"e" * self.cfg.payload_size)
        if proto == "rpc-kv":
            assert self.mix is not None and c.mix_state is not None
            op, key, extra = self.mix.next_op(c.mix_state)
            if c.klass == RT and self.cfg.kv_rt_get_only:
                op = rpcwire.OP_GET
            if op == rpcwire.OP_PUT:
                assert isinstance(extra, bytes)
                return rpcwire.encode_put(key, extra)
            if op == rpcwire.OP_SEEK:
                assert isinstance(extra, int)
                return rpcwire.encode(rpcwire.OP_SEEK, extra, key)
            return rpcwire.encode(rpcwire.OP_GET, 0, key)
        cfg = self.cfg
        key = mc_key(c.req_rng.randrange(cfg.mc_keys), cfg.mc_key_size)
        if c.req_rng.random() < cfg.mc_set_ratio:
            c.expect_get = False
            return b"set %s 0 0 %d\r\n%s\r\n" % (key, cfg.mc_value_size, self.mc_value)
        c.expect_get = True
        return b"get %s\r\n" % key

    def _kill(self, c: _Conn, kind: str) -> None:
        if not c.alive:
            return
        self._error(kind)
        c.alive = False
        if c.outstanding:
            c.outstanding = False
            self.outstanding -= 1
        if c.sock is not None:
            try:
                self.ep.unregister(c.fd)
            except (OSError, ValueError):
                pass
            self.by_fd.pop(c.fd, None)
            c.sock.close()
            c.sock = None

    def _send(self, c: _Conn, intended: int) -> None:
        data = self._build(c)
        now = self.clock()
        c.cur_intended = intended
        c.cur_sent = now
        c.outstanding = True
        self.outstanding += 1
        if self.ws <= intended < self.we:
            self.acc[c.klass].res.sent += 1
            self.acc[c.klass].res.intended += 1
            self.send_lag.record(now - intended)
        if c.paced:
            c.next_intended = c.advance(intended)
        assert c.sock is not None
        try:
            n = c.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self._kill(c, "send")
            return
        if n < len(data):
            c.outbuf = data[n:]
            c.writing = True
            self.ep.modify(c.fd, select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, c: _Conn) -> None:
        assert c.sock is not None
        try:
            n = c.sock.send(c.outbuf)
        except BlockingIOError:
            return
        except OSError:
            self._kill(c, "send")
            return
        c.outbuf = c.outbuf[n:]
        if not c.outbuf:
            c.writing = False
            self.ep.modify(c.fd, select.EPOLLIN)

    def _schedule_next(self, c: _Conn, now: int) -> None:
        if not c.alive:
            return
        if c.paced:
            t = c.next_intended
            if t >= self.we:
                return
            if t <= now:
                self._send(c, t)
            else:
                heapq.heappush(self.heap, (t, c.conn_id))
        elif now < self.we:
            self._send(c, now)

    def _complete(self, c: _Conn, now: int, ok: bool, kind: str = "status") -> None:
        c.outstanding = False
        self.outstanding -= 1
        self.replies += 1
        if ok:
            res = self.acc[c.klass].res
            if self.ws <= now < self.we:
                res.completed += 1
            if self.ws <= c.cur_intended < self.we:
                res.recorded += 1
                res.latency_intended.record(now - c.cur_intended)
                res.latency_actual.record(now - c.cur_sent)
        else:
            self._error(kind)
        self._schedule_next(c, now)

    def _on_readable(self, c: _Conn) -> None:
        assert c.sock is not None
        chunks: list[bytes] = []
        eof = False
        while True:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                break
            except OSError:
                self._kill(c, "reset")
                return
            if not data:
                eof = True
                break
            chunks.append(data)
            if len(data) < 65536:
                break
        now = self.clock()
        if chunks:
            data = b"".join(chunks)
            try:
                if self.cfg.protocol == "memcached":
                    done, ok, _hit = c.mc.feed(data, c.expect_get)
                    if done and (not c.outstanding or c.mc.buf):
                        raise ValueError("unsolicited memcached reply")
                    if done:
                        self._complete(c, now, ok)
                else:
                    frames = c.parser.feed(data)
                    if len(frames) > (1 if c.outstanding else 0):
                        raise ValueError("more replies than requests")
                    for status, _arg, _payload in frames:
                        if status == rpcwire.ST_NOT_FOUND:
                            self.not_found += 1
                        ok = status in (rpcwire.ST_OK, rpcwire.ST_NOT_FOUND)
                        self._complete(c, now, ok)
            except ValueError:
                self._kill(c, "protocol")
                return
        if eof:
            self._kill(c, "eof")

    # -------------------------------------------------------------- main loop
    def run(self, t0_ns: int) -> dict[str, Any]:
        """Run the schedule from ``t0_ns``; returns the picklable per-worker result."""
        cfg = self.cfg
        self.ws = t0_ns + int(cfg.warmup_s * _NS)
        self.we = self.ws + int(cfg.duration_s * _NS)
        drain_ns = int(min(1.0, cfg.timeout_s / 4.0) * _NS)
        hard_end = self.we + drain_ns
        by_id = {c.conn_id: c for c in self.conns}
        for c in self.conns:
            res = self.acc[c.klass].res
            res.connections += 1
            res.target_qps += cfg.class_rate(c.klass) if c.paced else 0.0
            c.next_intended = c.first_intended(t0_ns)
            if c.alive:
                heapq.heappush(self.heap, (c.next_intended, c.conn_id))
        heap = self.heap
        poll = self.ep.poll
        clock = self.clock
        while True:
            now = clock()
            if now >= hard_end:
                break
            while heap and heap[0][0] <= now:
                t, cid = heapq.heappop(heap)
                c = by_id[cid]
                if c.alive and not c.outstanding and t < self.we:
                    self._send(c, t)
            if not heap and self.outstanding == 0:
                break  # nothing scheduled before the window ends and nothing in flight
            wait = (heap[0][0] if heap else hard_end) - clock()
            if wait <= 0 or cfg.busy_poll:
                timeout = 0.0
            elif wait >= _MS:
                timeout = (wait // _MS) / 1000.0
            else:
                timeout = 0.0
            events = poll(timeout, 512)
            for fd, ev in events:
                c2 = self.by_fd.get(fd)
                if c2 is None:
                    continue
                if ev & select.EPOLLOUT and c2.writing:
                    self._flush(c2)
                if ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP) and c2.alive:
                    self._on_readable(c2)
            if not events and 0 < wait < _MS and not cfg.busy_poll:
                self.sleep(min(wait / _NS, 100e-6))
        return self._finish()

    def _finish(self) -> dict[str, Any]:
        # requests still unanswered after the drain
        for c in self.conns:
            if c.outstanding:
                self.in_flight_at_end += 1
                self._error("timeout")
                c.outstanding = False
                self.outstanding -= 1
            # intended sends in the window that never left (backlog behind a late reply)
            if c.paced:
                t = c.next_intended
                res = self.acc[c.klass].res
                while t < self.we:
                    if t >= self.ws:
                        res.unsent += 1
                        res.intended += 1
                    t = c.advance(t)
        return {
            "classes": {k: a.res for k, a in self.acc.items()},
            "errors": dict(self.errors),
            "replies": self.replies,
            "not_found": self.not_found,
            "in_flight_at_end": self.in_flight_at_end,
            "send_lag": self.send_lag,
            "connections_ok": self.connected,
        }


# ----------------------------------------------------------------------------- orchestration


def _lower_timer_slack() -> None:
    """Best effort: 1 ns timer slack for this thread (prctl PR_SET_TIMERSLACK = 29)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, ctypes.c_ulong(1), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - non-glibc systems
        pass


def _worker_entry(
    cfg: LoadConfig,
    conn_ids: list[int],
    pipe: multiprocessing.connection.Connection,
    setup_deadline_ns: int,
) -> None:
    """Body of one worker process: connect, report ready, wait for t0, run, report."""
    worker: _Worker | None = None
    try:
        _lower_timer_slack()
        worker = _Worker(cfg, conn_ids)
        ok = worker.connect(setup_deadline_ns)
        pipe.send(("ready", ok))
        wait_s = max(0.0, (setup_deadline_ns - time.monotonic_ns()) / _NS) + 1.0
        if not pipe.poll(wait_s):
            return
        msg = pipe.recv()
        if msg[0] != "start":
            return
        result = worker.run(int(msg[1]))
        pipe.send(("result", result))
    except BaseException:  # noqa: B036 - report anything, including KeyboardInterrupt
        try:
            pipe.send(("error", traceback.format_exc()))
        except OSError:
            pass
    finally:
        if worker is not None:
            worker.close()
        pipe.close()


def _split(ids: list[int], parts: int) -> list[list[int]]:
    """Contiguous, nearly equal blocks."""
    n = len(ids)
    out: list[list[int]] = []
    start = 0
    for k in range(parts):
        size = n // parts + (1 if k < n % parts else 0)
        out.append(ids[start : start + size])
        start += size
    return [b for b in out if b]


def _aggregate(
    cfg: LoadConfig, parts: list[dict[str, Any]], connections_ok: int, nproc: int, wall: float
) -> LoadResult:
    backend = cfg.histogram_backend
    classes: dict[str, ClassResult] = {}
    errors: dict[str, int] = {}
    send_lag = LatencyHistogram(backend)
    replies = not_found = in_flight = 0
    for part in parts:
        for k, cr in part["classes"].items():
            if cr.connections == 0:
                continue
            if k not in classes:
                classes[k] = ClassResult(
                    k,
                    latency_intended=LatencyHistogram(backend),
                    latency_actual=LatencyHistogram(backend),
                )
            classes[k].merge(cr)
        for kind, n in part["errors"].items():
            errors[kind] = errors.get(kind, 0) + n
        send_lag.merge(part["send_lag"])
        replies += part["replies"]
        not_found += part["not_found"]
        in_flight += part["in_flight_at_end"]
    lat_i = LatencyHistogram.merged([c.latency_intended for c in classes.values()], backend)
    lat_a = LatencyHistogram.merged([c.latency_actual for c in classes.values()], backend)
    dur = cfg.duration_s
    intended = sum(c.intended for c in classes.values())
    completed = sum(c.completed for c in classes.values())
    return LoadResult(
        config=cfg,
        duration_s=dur,
        target_qps=sum(c.target_qps for c in classes.values()),
        offered_qps=intended / dur,
        achieved_qps=completed / dur,
        intended=intended,
        sent=sum(c.sent for c in classes.values()),
        unsent=sum(c.unsent for c in classes.values()),
        completed=completed,
        replies=replies,
        not_found=not_found,
        in_flight_at_end=in_flight,
        errors=sum(errors.values()),
        error_kinds=errors,
        connections_ok=connections_ok,
        processes=nproc,
        wall_s=wall,
        latency_intended=lat_i,
        latency_actual=lat_a,
        send_lag=send_lag,
        classes=classes,
    )


def _run_inline(cfg: LoadConfig, ids: list[int], t_start: float) -> LoadResult:
    setup_deadline = time.monotonic_ns() + int(cfg.timeout_s * 0.5 * _NS)
    worker = _Worker(cfg, ids)
    try:
        ok = worker.connect(setup_deadline)
        part = worker.run(time.monotonic_ns() + 10 * _MS)
    finally:
        worker.close()
    return _aggregate(cfg, [part], ok, 0, time.monotonic() - t_start)


def _recv(
    pipe: multiprocessing.connection.Connection, timeout_s: float, eof_text: str
) -> tuple[Any, ...]:
    """One message from a worker: ``("timeout",)`` after ``timeout_s``, an error on EOF."""
    try:
        if timeout_s > 0 and pipe.poll(timeout_s):
            msg: tuple[Any, ...] = pipe.recv()
            return msg
    except (EOFError, OSError):
        return ("error", eof_text)
    return ("timeout",)


def run_load(cfg: LoadConfig) -> LoadResult:
    """Run one open-loop load point against ``cfg.host:cfg.port`` and return its result.

    Blocks for about ``warmup_s + duration_s`` (plus process start-up) and never longer than
    ``warmup_s + duration_s + timeout_s``.  Connection failures and protocol errors are
    counted in the result, not raised; a crash inside a worker raises ``RuntimeError``.
    """
    cfg.validate()
    t_start = time.monotonic()
    if cfg.protocol == "memcached" and cfg.mc_preload:
        memcached_preload(
            cfg.host, cfg.port, cfg.mc_keys, cfg.mc_key_size, cfg.mc_value_size, cfg.timeout_s
        )
        t_start = time.monotonic()
    ids = list(range(cfg.conn_id_base, cfg.conn_id_base + cfg.connections))
    if cfg.processes == 0:
        return _run_inline(cfg, ids, t_start)
    hard_deadline = t_start + cfg.warmup_s + cfg.duration_s + cfg.timeout_s
    setup_deadline_ns = time.monotonic_ns() + int(cfg.timeout_s * 0.5 * _NS)
    ctx = multiprocessing.get_context(cfg.start_method)
    blocks = _split(ids, min(cfg.processes, len(ids)))
    procs: list[Any] = []
    pipes: list[multiprocessing.connection.Connection] = []
    parts: list[dict[str, Any]] = []
    failures: list[str] = []
    connections_ok = 0
    try:
        for block in blocks:
            parent_end, child_end = ctx.Pipe()
            p = ctx.Process(  # type: ignore[attr-defined]
                target=_worker_entry,
                args=(cfg, block, child_end, setup_deadline_ns),
                name="skq-load-worker",
                daemon=True,
            )
            p.start()
            child_end.close()
            procs.append(p)
            pipes.append(parent_end)
        ready: list[int] = []
        for i, pipe in enumerate(pipes):
            remaining = (setup_deadline_ns - time.monotonic_ns()) / _NS + 0.5
            msg = _recv(pipe, remaining, f"worker {i} exited during set-up")
            if msg[0] == "ready":
                ready.append(i)
                connections_ok += int(msg[1])
            elif msg[0] == "error":
                failures.append(str(msg[1]))
        if failures:
            raise RuntimeError("load worker failed during setup:\n" + failures[0])
        t0 = time.monotonic_ns() + 50 * _MS
        for i in ready:
            pipes[i].send(("start", t0))
        for i in ready:
            msg = _recv(pipes[i], hard_deadline - time.monotonic(), "worker exited early")
            if msg[0] == "result":
                parts.append(msg[1])
            elif msg[0] == "error":
                failures.append(str(msg[1]))
        if failures:
            raise RuntimeError("load worker failed:\n" + failures[0])
    finally:
        for pipe in pipes:
            pipe.close()
        for p in procs:
            p.join(timeout=max(0.0, min(1.0, hard_deadline - time.monotonic())))
            if p.is_alive():
                p.terminate()
                p.join(timeout=1.0)
    missing = len(ids) - sum(sum(c.connections for c in part["classes"].values()) for part in parts)
    result = _aggregate(cfg, parts, connections_ok, len(blocks), time.monotonic() - t_start)
    if missing:
        result.error_kinds["lost_worker_connections"] = missing
        result.errors += missing
    return result


def config_from_dict(d: dict[str, Any]) -> LoadConfig:
    """A :class:`LoadConfig` from a dict (e.g. ``LoadResult.to_dict()["config"]``)."""
    return LoadConfig(**d)
