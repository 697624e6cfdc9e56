"""The load generator's worker: one process's block of connections driven from one ``epoll``
loop, each connection with its own open-loop schedule (see :mod:`skqueue.load.generator` for
the schedule, the measurement window and the timing precision).

:class:`Worker` runs inline or inside a worker process (:func:`worker_entry`, started by
:func:`skqueue.load.generator.run_load`); its result is a picklable dict of per-class
:class:`~skqueue.load.config.ClassResult` and counters.
"""

from __future__ import annotations

import ctypes
import heapq
import multiprocessing.connection
import random
import select
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

from skqueue import rpcwire
from skqueue.load.config import NORMAL, RT, ClassResult, LoadConfig, connection_class
from skqueue.load.dist import (
    Distribution,
    MixGraph,
    MixGraphConn,
    ServiceModel,
    parse_interarrival,
    parse_service,
)
from skqueue.load.hist import LatencyHistogram
from skqueue.load.memcache_client import McReply, get_request, mc_key, set_request

__all__ = ["MS", "NS", "Worker", "intended_schedule", "worker_entry"]

#: nanoseconds per second and per millisecond (the clocks and schedules count ns)
NS, MS = 1_000_000_000, 1_000_000


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
        self.mc = McReply()
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
        return t0_ns + int(self.sched_rng.random() * self.ia.mean * NS)

    def advance(self, intended_ns: int) -> int:
        """The intended send time after ``intended_ns``."""
        return intended_ns + int(self.ia.sample(self.sched_rng) * NS)


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


class Worker:
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
        self.acc = {k: ClassResult.empty(k, backend) for k in (NORMAL, RT)}
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
            remaining = (deadline_ns - self.clock()) / NS
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
            return set_request(key, self.mc_value)
        c.expect_get = True
        return get_request(key)

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
            self.acc[c.klass].sent += 1
            self.acc[c.klass].intended += 1
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
            res = self.acc[c.klass]
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
        self.ws = t0_ns + int(cfg.warmup_s * NS)
        self.we = self.ws + int(cfg.duration_s * NS)
        drain_ns = int(min(1.0, cfg.timeout_s / 4.0) * NS)
        hard_end = self.we + drain_ns
        by_id = {c.conn_id: c for c in self.conns}
        for c in self.conns:
            res = self.acc[c.klass]
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
            elif wait >= MS:
                timeout = (wait // MS) / 1000.0
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
            if not events and 0 < wait < MS and not cfg.busy_poll:
                self.sleep(min(wait / NS, 100e-6))
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
                res = self.acc[c.klass]
                while t < self.we:
                    if t >= self.ws:
                        res.unsent += 1
                        res.intended += 1
                    t = c.advance(t)
        return {
            "classes": dict(self.acc),
            "errors": dict(self.errors),
            "replies": self.replies,
            "not_found": self.not_found,
            "in_flight_at_end": self.in_flight_at_end,
            "send_lag": self.send_lag,
            "connections_ok": self.connected,
        }


def _lower_timer_slack() -> None:
    """Best effort: 1 ns timer slack for this thread (prctl PR_SET_TIMERSLACK = 29)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(29, ctypes.c_ulong(1), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - non-glibc systems
        pass


def worker_entry(
    cfg: LoadConfig,
    conn_ids: list[int],
    pipe: multiprocessing.connection.Connection,
    setup_deadline_ns: int,
) -> None:
    """Body of one worker process: connect, report ready, wait for t0, run, report."""
    worker: Worker | None = None
    try:
        _lower_timer_slack()
        worker = Worker(cfg, conn_ids)
        ok = worker.connect(setup_deadline_ns)
        pipe.send(("ready", ok))
        wait_s = max(0.0, (setup_deadline_ns - time.monotonic_ns()) / NS) + 1.0
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
