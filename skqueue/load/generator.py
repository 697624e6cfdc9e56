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

import multiprocessing
import multiprocessing.connection
import time
from typing import Any

from skqueue.load.config import (
    PROTOCOLS,
    ClassResult,
    LoadConfig,
    LoadResult,
    config_from_dict,
    connection_class,
)
from skqueue.load.hist import LatencyHistogram
from skqueue.load.memcache_client import mc_key, memcached_preload
from skqueue.load.worker import MS, NS, Worker, intended_schedule, worker_entry

# the names below were all defined here before the generator was split by job
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
                classes[k] = ClassResult.empty(k, backend)
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
    setup_deadline = time.monotonic_ns() + int(cfg.timeout_s * 0.5 * NS)
    worker = Worker(cfg, ids)
    try:
        ok = worker.connect(setup_deadline)
        part = worker.run(time.monotonic_ns() + 10 * MS)
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
    setup_deadline_ns = time.monotonic_ns() + int(cfg.timeout_s * 0.5 * NS)
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
                target=worker_entry,
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
            remaining = (setup_deadline_ns - time.monotonic_ns()) / NS + 0.5
            msg = _recv(pipe, remaining, f"worker {i} exited during set-up")
            if msg[0] == "ready":
                ready.append(i)
                connections_ok += int(msg[1])
            elif msg[0] == "error":
                failures.append(str(msg[1]))
        if failures:
            raise RuntimeError("load worker failed during setup:\n" + failures[0])
        t0 = time.monotonic_ns() + 50 * MS
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
