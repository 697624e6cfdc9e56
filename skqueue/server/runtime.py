"""Worker-pool server runtime: N worker threads serving TCP connections from kqueue events.

The Python counterpart of the SKQ benchmarks' ``ppd`` server: one acceptor thread,
``threads`` workers, and one of three queue architectures chosen by ``policy`` (an SKQ
label such as ``best2_ws``, ``legacy`` or ``vanilla``).  Settings are a ``ServerConfig``;
``Server(config, session_factory)`` serves any *protocol handler*.  How it works, and why
(connection ownership, output buffering, stopping): ``docs/design.md``, "Server runtime".

Protocol handlers (the contract for users)
------------------------------------------
``session_factory()`` is called once per accepted connection (in the acceptor thread) and
must return an object with:

* ``feed(data: bytes) -> bytes``: consume bytes received from the peer and return the bytes
  to send back (possibly empty).  The bytes arrive split anywhere (as TCP delivers them,
  and the runtime feeds at most ``FEED_SLICE`` bytes at a time).  Raising any exception
  closes the connection: raise ``skqueue.server.proto_rpc.ProtocolError`` for input that can
  never be valid; other exceptions are treated the same way (logged at debug level,
  counted as ``errors``), so a malformed request or a buggy handler never kills a worker;
* ``wants_close`` (attribute or property): once true (checked after each ``feed``) the
  runtime sends what is pending and closes the connection;
* optionally ``close()``: called exactly once when the connection goes away, whatever the
  reason (peer EOF, error, limit, server stop);
* optionally an integer ``requests`` attribute counting requests answered; if present the
  per-worker ``requests`` counter adds its increments, otherwise it counts ``feed`` calls
  that produced a reply.

``feed`` may be called from different worker threads over a connection's life, never from
two at once, so a handler must not rely on thread-local state.

Replies that the peer does not read fast enough wait in a per-connection buffer (the
connection is not read meanwhile); ``ServerConfig`` bounds them per connection and in total
and sets how long a connection may make no progress (``write_idle_timeout``).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import logging
import os
import socket
import struct
import termios
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from skqueue import kevent, kqueue, parse_sched, sched_label
from skqueue.constants import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISPATCH,
    EV_ENABLE,
    EV_ERROR,
    EV_REALTIME,
    EVFILT_READ,
    EVFILT_TIMER,
    EVFILT_USER,
    EVFILT_WRITE,
    KQTUNE_FREQ,
    KQTUNE_MAKE,
    KQTUNE_RTSHARE,
    NOTE_TRIGGER,
)
from skqueue.sched import Tunables
from skqueue.server.proto_rpc import ProtocolError

__all__ = [
    "FEED_SLICE",
    "RECV_SIZE",
    "ProtocolHandler",
    "Server",
    "ServerConfig",
    "WorkerStats",
    "mode_of",
]

log = logging.getLogger("skqueue.server")

#: Bytes read per connection event.
RECV_SIZE = 64 * 1024
#: Most bytes given to one ``feed`` call: the replies of one slice are the most a connection
#: adds to its pending output before the runtime stops feeding it.
FEED_SLICE = 16 * 1024
#: Ident of the EVFILT_USER stop event registered on every kqueue.
_STOP_IDENT = 0x51A7
#: Idents of the acceptor's dump and sweep timers.
_DUMP_IDENT = 0xD0
_SWEEP_IDENT = 0x5E
_ACCEPT_BURST = 256
_RTSHARE_RANGE = range(1, 101)
_TFREQ_RANGE = range(0, 0x10000)


class ProtocolHandler(Protocol):
    """What ``session_factory()`` must return (see the module docstring)."""

    @property
    def wants_close(self) -> bool: ...

    def feed(self, data: bytes) -> bytes: ...


def mode_of(policy: str) -> tuple[str, int | None]:
    """``(mode, word)`` for a policy: ``("vanilla", None)``, ``("legacy", None)`` or
    ``("skq", scheduler word)``.  Raises ``ValueError`` for an unknown label."""
    p = policy.strip().lower()
    if p in ("vanilla", "legacy"):
        return p, None
    return "skq", parse_sched(p)


@dataclass(frozen=True)
class ServerConfig:
    """Every setting of a ``Server``.  Invalid values raise ``ValueError`` at construction.

    Listening: ``host``, ``port`` (0 picks a free one), ``backlog``, ``max_conns`` (beyond it a
    new connection is accepted and closed at once, counted as ``refused``).

    Scheduling: ``threads`` workers; ``policy``: an SKQ label (``rand``, ``best2_ws``,
    ``cpu0``...: one kqueue in multi mode), ``legacy`` (one shared kqueue, stock semantics)
    or ``vanilla`` (one kqueue per worker); ``batch`` events per ``control()``; ``pin`` worker
    *i* to CPU ``i % ncpu``; ``tunables`` for the kqueue(s).  Realtime clients: peer IP in
    ``rt_hosts`` or ``rt_predicate((ip, port))`` true; ``rtshare`` (1..100,
    ``KQTUNE_RTSHARE``) and ``tfreq`` (0..65535, ``KQTUNE_FREQ``, SKQ policies only).

    Output: replies the peer has not taken yet wait per connection.  A connection whose
    pending replies exceed ``max_conn_output`` bytes is closed (logged at WARNING); while all
    connections together hold more than ``max_total_output`` bytes, no connection is read
    (requests wait in the kernel) until the total is back under half of it; a connection
    with pending replies that accepts no byte for ``write_idle_timeout`` seconds is closed
    (logged at WARNING).  A slow reader that keeps reading is never cut off.

    Housekeeping: ``poll_interval`` (workers' ``control()`` timeout: the bound on stop latency
    should a stop event be missed), ``stop_timeout`` (join limit), ``dump_interval`` +
    ``on_dump`` (call ``on_dump(server.dump())`` every ``dump_interval`` seconds from the
    acceptor thread, as ``ppd -d``).
    """

    host: str = "127.0.0.1"
    port: int = 0
    threads: int = 4
    policy: str = "best2_ws"
    pin: bool = False
    rt_hosts: tuple[str, ...] = ()
    rt_predicate: Callable[[Any], bool] | None = None
    max_conns: int = 10000
    rtshare: int | None = None
    tfreq: int | None = None
    backlog: int = 1024
    batch: int = 64
    tunables: Tunables | None = None
    poll_interval: float = 0.2
    stop_timeout: float = 5.0
    dump_interval: float | None = None
    on_dump: Callable[[dict[str, Any]], None] | None = None
    max_conn_output: int = 64 << 20
    max_total_output: int = 256 << 20
    write_idle_timeout: float = 60.0

    def __post_init__(self) -> None:
        if not isinstance(self.rt_hosts, tuple):
            object.__setattr__(self, "rt_hosts", tuple(self.rt_hosts))
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if self.max_conns < 1:
            raise ValueError(f"max_conns must be >= 1, got {self.max_conns}")
        if self.rtshare is not None and self.rtshare not in _RTSHARE_RANGE:
            raise ValueError(f"rtshare must be 1..100, got {self.rtshare}")
        if self.tfreq is not None and self.tfreq not in _TFREQ_RANGE:
            raise ValueError(f"tfreq must be 0..65535, got {self.tfreq}")
        for name in ("poll_interval", "stop_timeout", "write_idle_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dump_interval is not None and self.dump_interval <= 0:
            raise ValueError("dump_interval must be positive")
        if self.max_conn_output < 1 or self.max_total_output < 1:
            raise ValueError("max_conn_output and max_total_output must be positive")
        mode, _ = mode_of(self.policy)
        if self.tfreq and mode != "skq":
            raise ValueError(
                f"tfreq needs an SKQ policy (KQTUNE_FREQ is multi-mode only), not {self.policy!r}"
            )

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with some settings changed."""
        return dataclasses.replace(self, **changes)


_CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(ServerConfig))


def _legacy_config(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[ServerConfig, Any]:
    """``Server(host, port, session_factory, threads=..., ...)``, the signature before
    ``ServerConfig``: still accepted, with a DeprecationWarning."""
    if len(args) < 3:
        raise TypeError("Server(config, session_factory) or Server(host, port, session_factory)")
    host, port, factory, *rest = args
    positional = ("threads", "policy", "pin", "rt_hosts", "rt_predicate", "max_conns",
                  "rtshare", "tfreq", "backlog", "batch", "tunables")
    if len(rest) > len(positional):
        raise TypeError("too many positional arguments")
    settings = dict(zip(positional, rest, strict=False))
    for name, value in kwargs.items():
        if name in settings:
            raise TypeError(f"Server() got multiple values for {name!r}")
        settings[name] = value
    if "send_timeout" in settings:
        # The blocking send's limit became the idle limit of a connection's pending replies.
        settings["write_idle_timeout"] = settings.pop("send_timeout")
    unknown = set(settings) - _CONFIG_FIELDS
    if unknown:
        raise TypeError(f"unknown Server settings: {sorted(unknown)}")
    warnings.warn(
        "Server(host, port, session_factory, **settings) is deprecated: use "
        "Server(ServerConfig(host=..., port=..., **settings), session_factory)",
        DeprecationWarning,
        stacklevel=3,
    )
    return ServerConfig(host=host, port=port, **settings), factory


# What a worker counts per batch (_Tally) and publishes (WorkerStats): the names of both
# classes' counters and of ``stats()``'s per-worker keys.
_TALLIED = ("events", "requests", "bytes_in", "bytes_out", "closed", "errors",
            "protocol_errors", "blocked")


class WorkerStats:
    """Counters of one worker thread; written once per batch under ``lock``."""

    __slots__ = ("index", "thread", "lock", "alive", "batches", *_TALLIED)

    def __init__(self, index: int, thread: str) -> None:
        self.index = index
        self.thread = thread
        self.lock = threading.Lock()
        self.alive = False
        self.batches = 0
        for name in _TALLIED:
            setattr(self, name, 0)

    def publish(self, t: _Tally) -> None:
        """Add a thread-private tally and reset it."""
        with self.lock:
            self.batches += 1
            for name in _TALLIED:
                setattr(self, name, getattr(self, name) + getattr(t, name))
        t.reset()

    def snapshot(self) -> dict[str, Any]:
        """The counters as a dict."""
        with self.lock:
            d: dict[str, Any] = {"id": self.index, "thread": self.thread, "alive": self.alive}
            d["batches"] = self.batches
            d.update((name, getattr(self, name)) for name in _TALLIED)
            return d


class _Tally:
    """Thread-private counters of the current batch (no lock: one thread only)."""

    __slots__ = _TALLIED
    events: int
    requests: int
    bytes_in: int
    bytes_out: int
    closed: int
    errors: int
    protocol_errors: int
    blocked: int

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in _TALLIED:
            setattr(self, name, 0)


# What a connection's one knote watches.
_READING, _WRITING, _PARKED = "reading", "writing", "parked"


class _Conn:
    """One accepted connection.  Every field below ``lock`` is read and written only by the
    thread holding ``lock``: that thread *is* the connection's owner (design.md)."""

    __slots__ = (
        "sock",
        "fd",
        "session",
        "peer",
        "realtime",
        "kq",
        "counts_requests",
        "lock",
        "closed",
        "state",
        "out",
        "out_bytes",
        "inbuf",
        "progress_at",
        "unsent",
    )

    def __init__(
        self, sock: socket.socket, session: Any, peer: Any, realtime: bool, kq: kqueue
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.session = session
        self.peer = peer
        self.realtime = realtime
        self.kq = kq
        self.counts_requests = isinstance(getattr(session, "requests", None), int)
        self.lock = threading.Lock()
        self.closed = False
        self.state = _READING
        self.out: deque[memoryview] = deque()  # replies not yet taken by the socket
        self.out_bytes = 0
        self.inbuf = b""  # received bytes not fed yet (feeding stopped while output waits)
        self.progress_at = 0.0  # monotonic time the peer was last seen reading
        self.unsent = -1  # bytes in the kernel's send queue at the last sweep


class Server:
    """A multi-threaded TCP server on kqueue(s); see the module docstring.

    ``Server(config, session_factory)`` then ``start()`` (binds, starts the threads; returns
    ``address``, the bound ``(host, port)``), ``stop()`` (prompt, idempotent), or
    ``serve_forever()`` (start if needed and block until ``stop()``).  Also a context
    manager (start / stop).  ``dump()`` reports the kqueues and the counters.

    The form before ``ServerConfig``, ``Server(host, port, session_factory, **settings)``,
    still works (a DeprecationWarning); ``send_timeout`` there means ``write_idle_timeout``.
    """

    def __init__(self, config: ServerConfig | str, *args: Any, **kwargs: Any) -> None:
        if isinstance(config, ServerConfig):
            if len(args) != 1 or kwargs:
                raise TypeError("Server(config, session_factory)")
            factory = args[0]
        else:
            config, factory = _legacy_config((config, *args), kwargs)
        if not callable(factory):
            raise TypeError("session_factory must be callable")
        self.config = config
        self.session_factory: Callable[[], Any] = factory
        self.mode, self.word = mode_of(config.policy)
        self.policy = (
            config.policy.strip().lower() if self.word is None else sched_label(self.word)
        )
        self._rt_hosts = frozenset(config.rt_hosts)
        self._legacy = self.mode == "legacy"

        self._state_lock = threading.Lock()
        self._started = False
        self._up = False
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._listener: socket.socket | None = None
        self._address: tuple[str, int] | None = None
        self._kqs: list[kqueue] = []
        self._akq: kqueue | None = None
        self._workers: list[threading.Thread] = []
        self._stats: list[WorkerStats] = []
        self._acceptor: threading.Thread | None = None
        self._conns_lock = threading.Lock()
        self._conns: set[_Conn] = set()
        self._accepted = 0
        self._refused = 0
        self._realtime = 0
        self._rr = 0
        self._started_at = 0.0
        # Pending output of all connections, and who waits on it (all under _out_lock).
        self._out_lock = threading.Lock()
        self._total_out = 0
        self._writing: set[_Conn] = set()
        self._parked: list[_Conn] = []
        self._closed_idle = 0
        self._closed_over = 0
        self._parks = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)``; only after ``start()``."""
        if self._address is None:
            raise RuntimeError("server not started")
        return self._address

    @property
    def running(self) -> bool:
        """True between ``start()`` and the end of ``stop()``."""
        return self._up and not self._done.is_set()

    def start(self) -> tuple[str, int]:
        """Bind, listen and start the acceptor and worker threads; return ``address``."""
        with self._state_lock:  # held throughout, so a concurrent stop() waits for us
            if self._started:
                raise RuntimeError("server already started")
            self._started = True
            try:
                self._setup()
            except BaseException:
                self._teardown()
                self._done.set()
                raise
            self._start_threads()
            self._up = True
        return self.address

    def _start_threads(self) -> None:
        self._started_at = time.monotonic()
        cfg = self.config
        cpus = sorted(os.sched_getaffinity(0)) if cfg.pin else []
        for i in range(cfg.threads):
            name = f"skq-worker-{i}"
            st = WorkerStats(i, name)
            st.alive = True
            self._stats.append(st)
            kq = self._kqs[i] if self.mode == "vanilla" else self._kqs[0]
            cpu = cpus[i % len(cpus)] if cpus else None
            t = threading.Thread(
                target=self._worker_main, args=(kq, st, cpu), name=name, daemon=True
            )
            self._workers.append(t)
        self._acceptor = threading.Thread(
            target=self._acceptor_main, name="skq-acceptor", daemon=True
        )
        for t in self._workers:
            t.start()
        self._acceptor.start()

    def _setup(self) -> None:
        cfg = self.config
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        ls = socket.socket(family, socket.SOCK_STREAM)
        self._listener = ls
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ls.bind((cfg.host, cfg.port))
        ls.listen(cfg.backlog)
        ls.setblocking(False)
        name = ls.getsockname()
        self._address = (str(name[0]), int(name[1]))

        nkq = cfg.threads if self.mode == "vanilla" else 1
        for _ in range(nkq):
            kq = kqueue(tunables=cfg.tunables.copy() if cfg.tunables is not None else None)
            self._kqs.append(kq)
            if self.word is not None:
                kq.set_multi(self.word)
            if cfg.rtshare is not None:
                kq.tune(KQTUNE_MAKE(KQTUNE_RTSHARE, cfg.rtshare))
            if cfg.tfreq:
                kq.tune(KQTUNE_MAKE(KQTUNE_FREQ, cfg.tfreq))
            # SKQ: level-triggered, re-homed by kq.detach() of each exiting worker.  Legacy:
            # EV_CLEAR, re-triggered by each exiting worker.
            stop_flags = EV_ADD if self.mode == "skq" else EV_ADD | EV_CLEAR
            kq.control([kevent(_STOP_IDENT, EVFILT_USER, stop_flags)], 0)

        akq = kqueue()
        self._akq = akq
        sweep_ms = max(1, round(min(1.0, cfg.write_idle_timeout / 4) * 1000))
        changes = [
            kevent(ls.fileno(), EVFILT_READ, EV_ADD),
            kevent(_STOP_IDENT, EVFILT_USER, EV_ADD),
            kevent(_SWEEP_IDENT, EVFILT_TIMER, EV_ADD, 0, sweep_ms),
        ]
        if cfg.dump_interval is not None and cfg.on_dump is not None:
            ms = max(1, round(cfg.dump_interval * 1000))
            changes.append(kevent(_DUMP_IDENT, EVFILT_TIMER, EV_ADD, 0, ms))
        akq.control(changes, 0)

    def stop(self) -> None:
        """Stop accepting, end the workers promptly, close every connection and kqueue.

        Idempotent and thread-safe: later or concurrent callers wait for the first one.
        """
        with self._state_lock:
            if not self._started:
                return
            first = not self._stopping.is_set()
            self._stopping.set()
        if not first:
            self._done.wait(self.config.stop_timeout + 5)
            return
        try:
            for kq in [*self._kqs, *([self._akq] if self._akq is not None else [])]:
                try:
                    kq.control([kevent(_STOP_IDENT, EVFILT_USER, 0, NOTE_TRIGGER)], 0)
                except (OSError, ValueError):
                    log.debug("skqueue.server: triggering the stop event failed", exc_info=True)
            deadline = time.monotonic() + self.config.stop_timeout
            me = threading.current_thread()
            for t in [*([self._acceptor] if self._acceptor else []), *self._workers]:
                if t is not me and t.is_alive():
                    t.join(max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in self._workers if t.is_alive()]
            if stuck:
                log.warning("skqueue.server: threads still busy at stop: %s", stuck)
        finally:
            self._teardown()
            self._done.set()

    def _teardown(self) -> None:
        with self._conns_lock:
            conns = list(self._conns)
        for c in conns:
            with c.lock:
                self._close(c, None)
        if self._listener is not None:
            self._listener.close()
        for kq in [*self._kqs, *([self._akq] if self._akq is not None else [])]:
            try:
                kq.close()
            except Exception:  # noqa: BLE001 - teardown must finish
                log.debug("skqueue.server: closing a kqueue failed", exc_info=True)

    def serve_forever(self) -> None:
        """Start if needed, then block until ``stop()`` (from another thread or a signal
        handler); KeyboardInterrupt stops the server and returns."""
        if not self._started:
            self.start()
        try:
            while not self._stopping.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the server has fully stopped; True if it has."""
        return self._done.wait(timeout)

    def __enter__(self) -> Server:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ acceptor
    def _acceptor_main(self) -> None:
        akq = self._akq
        assert akq is not None
        stopping = self._stopping
        on_dump = self.config.on_dump
        try:
            while not stopping.is_set():
                try:
                    events = akq.control(None, 8, self.config.poll_interval * 2.5)
                except (OSError, ValueError):
                    if stopping.is_set():
                        break
                    log.exception("skqueue.server: acceptor kqueue failed")
                    time.sleep(0.05)
                    continue
                for ev in events:
                    if ev.filter == EVFILT_USER:
                        return
                    if ev.filter == EVFILT_READ:
                        self._accept_burst()
                    elif ev.ident == _SWEEP_IDENT:
                        self._sweep()
                    elif on_dump is not None:
                        try:
                            on_dump(self.dump())
                        except Exception:  # noqa: BLE001 - a dump sink must not stop accepting
                            log.exception("skqueue.server: on_dump failed")
        finally:
            try:
                akq.detach()
            except (OSError, ValueError):
                pass

    def _accept_burst(self) -> None:
        ls = self._listener
        assert ls is not None
        for _ in range(_ACCEPT_BURST):
            if self._stopping.is_set():
                return
            try:
                sock, peer = ls.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.ECONNABORTED, errno.EPROTO):
                    continue
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("skqueue.server: accept: %s; backing off", e)
                    time.sleep(0.05)
                    return
                if self._stopping.is_set():
                    return
                raise
            self._admit(sock, peer)

    def _admit(self, sock: socket.socket, peer: Any) -> None:
        with self._conns_lock:
            full = len(self._conns) >= self.config.max_conns
            if full:
                self._refused += 1
        if full:
            sock.close()
            return
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            session = self.session_factory()
        except Exception:  # noqa: BLE001 - a failing factory refuses one connection only
            log.exception("skqueue.server: session factory failed; closing %s", peer)
            sock.close()
            return
        rt = self._is_realtime(peer)
        if self.mode == "vanilla":
            kq = self._kqs[self._rr % len(self._kqs)]
            self._rr += 1
        else:
            kq = self._kqs[0]
        conn = _Conn(sock, session, peer, rt, kq)
        with self._conns_lock:
            self._conns.add(conn)
            self._accepted += 1
            if rt:
                self._realtime += 1
        with conn.lock:
            if not self._watch(conn, None, EVFILT_READ):
                if not self._stopping.is_set():
                    log.error("skqueue.server: registering %s failed", peer)
                self._close(conn, None)

    def _is_realtime(self, peer: Any) -> bool:
        pred = self.config.rt_predicate
        if pred is not None:
            try:
                return bool(pred(peer))
            except Exception:  # noqa: BLE001
                log.exception("skqueue.server: rt_predicate failed for %s", peer)
                return False
        return bool(self._rt_hosts) and isinstance(peer, tuple) and peer[0] in self._rt_hosts

    def _sweep(self) -> None:
        """Close connections whose peer read nothing of their pending replies for too long.

        The peer reads from the kernel's send queue long before the socket has room enough
        to wake a writer, so progress is also a change of that queue's length (SIOCOUTQ),
        sampled here at each sweep."""
        limit = self.config.write_idle_timeout
        now = time.monotonic()
        with self._out_lock:
            writing = list(self._writing)
        for c in writing:
            with c.lock:
                if c.closed or c.state != _WRITING:
                    continue
                unsent = _unsent(c.fd)
                if unsent != c.unsent:
                    c.unsent = unsent
                    c.progress_at = max(c.progress_at, now)
                    continue
                if now - c.progress_at <= limit:
                    continue
                log.warning(
                    "skqueue.server: closing %s: its %d pending reply bytes were not read "
                    "for %.1f s (write_idle_timeout %.1f s)",
                    c.peer, c.out_bytes, now - c.progress_at, limit,
                )
                with self._out_lock:
                    self._closed_idle += 1
                self._close(c, None)

    # ------------------------------------------------------------------ workers
    def _worker_main(self, kq: kqueue, st: WorkerStats, cpu: int | None) -> None:
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError:
                log.warning("skqueue.server: cannot pin %s to CPU %d", st.thread, cpu)
        legacy = self._legacy
        stopping = self._stopping
        batch = self.config.batch
        timeout = self.config.poll_interval
        tally = _Tally()
        changes: list[kevent] = []
        serve = self._serve
        try:
            while not stopping.is_set():
                try:
                    events = kq.control(changes or None, batch, timeout)
                except (OSError, ValueError):
                    if stopping.is_set() or kq.closed:
                        break
                    log.exception("skqueue.server: %s: control() failed", st.thread)
                    changes = []
                    time.sleep(0.01)
                    continue
                changes = []
                if not events:
                    continue
                tally.events = len(events)
                stop = False
                for ev in events:
                    conn = ev.udata
                    if type(conn) is _Conn:
                        serve(conn, ev, changes, tally)
                    elif ev.filter == EVFILT_USER:
                        stop = True
                st.publish(tally)
                if stop:
                    break
        finally:
            if changes and not kq.closed:
                # Legacy re-arms of the last batch: apply them so a surviving worker (or a
                # restart of the loop) still serves those connections.
                try:
                    kq.control(changes, 0)
                except (OSError, ValueError):
                    pass
            with st.lock:
                st.alive = False
            if legacy and not kq.closed:
                # Each exiting worker passes the (EV_CLEAR) stop event on to the next one.
                try:
                    kq.control([kevent(_STOP_IDENT, EVFILT_USER, 0, NOTE_TRIGGER)], 0)
                except (OSError, ValueError):
                    pass
            if self.mode == "skq" and not kq.closed:
                # Re-home our queued and owned events (the triggered stop event included)
                # to the remaining workers now rather than at thread exit.
                try:
                    kq.detach()
                except (OSError, ValueError):
                    pass

    def _serve(self, conn: _Conn, ev: kevent, changes: list[kevent], t: _Tally) -> None:
        """Serve one event of ``conn``, owning it (its lock) for the whole time."""
        with conn.lock:
            if conn.closed:
                return
            if ev.flags & EV_ERROR:
                log.debug("skqueue.server: EV_ERROR %d on %s", ev.data, conn.peer)
                t.errors += 1
                self._close(conn, t)
            elif ev.filter == EVFILT_WRITE:
                if conn.state == _WRITING:
                    self._on_writable(conn, t)
            elif conn.state == _READING:
                self._on_readable(conn, changes, t)

    def _on_readable(self, conn: _Conn, changes: list[kevent], t: _Tally) -> None:
        legacy = self._legacy
        if self._total_out > self.config.max_total_output and self._park(conn):
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            if legacy:
                changes.append(kevent(conn.fd, EVFILT_READ, EV_ENABLE, 0, 0, conn))
            return
        except OSError:
            self._close(conn, t)
            return
        if not data:
            self._close(conn, t)
            return
        t.bytes_in += len(data)
        if not self._pump(conn, data, t):
            return
        if conn.out:
            t.blocked += 1
            self._start_writing(conn)
        elif conn.session.wants_close:
            self._close(conn, t)
        elif legacy:
            # Re-armed by this worker's next control(): no other thread can touch this
            # connection before that (its READ knote is disabled, it has no other knote).
            changes.append(kevent(conn.fd, EVFILT_READ, EV_ENABLE, 0, 0, conn))

    def _on_writable(self, conn: _Conn, t: _Tally) -> None:
        if not self._flush(conn, t):
            return
        if not conn.out and conn.inbuf and not self._pump(conn, b"", t):
            return
        if conn.out:
            return  # the socket is full again; the WRITE knote stays (edge-triggered)
        if conn.session.wants_close:
            self._close(conn, t)
        else:
            self._stop_writing(conn)

    def _pump(self, conn: _Conn, data: bytes, t: _Tally) -> bool:
        """Feed ``conn.inbuf + data`` slice by slice, sending each reply at once, until the
        input is used up or replies wait; keeps the rest in ``conn.inbuf``.  False if the
        connection was closed."""
        if conn.inbuf:
            data = conn.inbuf + data
            conn.inbuf = b""
        session = conn.session
        pos = 0
        while pos < len(data) and not conn.out and not session.wants_close:
            chunk = data[pos : pos + FEED_SLICE] if len(data) - pos > FEED_SLICE else (
                data[pos:] if pos else data
            )
            pos += len(chunk)
            try:
                if conn.counts_requests:
                    before = session.requests
                    reply = session.feed(chunk)
                    t.requests += session.requests - before
                else:
                    reply = session.feed(chunk)
                    if reply:
                        t.requests += 1
            except ProtocolError as exc:
                log.debug("skqueue.server: protocol error from %s: %s", conn.peer, exc)
                t.protocol_errors += 1
                self._close(conn, t)
                return False
            except Exception:  # noqa: BLE001 - malformed input must never kill a worker
                log.debug("skqueue.server: handler failed for %s", conn.peer, exc_info=True)
                t.errors += 1
                self._close(conn, t)
                return False
            if reply and not self._send(conn, reply, t):
                return False
        if pos < len(data) and not session.wants_close:
            conn.inbuf = data[pos:]
        return True

    def _send(self, conn: _Conn, reply: bytes, t: _Tally) -> bool:
        """Send ``reply`` now as far as the socket takes it; queue the rest.  False if the
        connection was closed (socket error, or over ``max_conn_output``)."""
        try:
            n = _send_until_blocked(conn.sock, reply)
        except OSError:
            self._close(conn, t)
            return False
        t.bytes_out += n
        if n == len(reply):
            return True
        rest = memoryview(reply)[n:]
        limit = self.config.max_conn_output
        if conn.out_bytes + len(rest) > limit:
            log.warning(
                "skqueue.server: closing %s: %d reply bytes would be pending, over "
                "max_conn_output (%d)", conn.peer, conn.out_bytes + len(rest), limit,
            )
            with self._out_lock:
                self._closed_over += 1
            self._close(conn, t)
            return False
        conn.out.append(rest)
        conn.out_bytes += len(rest)
        with self._out_lock:
            self._total_out += len(rest)
        return True

    def _flush(self, conn: _Conn, t: _Tally) -> bool:
        """Send pending replies until the socket refuses more; False if it was closed."""
        out = conn.out
        sent = 0
        try:
            while out:
                head = out[0]
                n = _send_until_blocked(conn.sock, head)
                sent += n
                if n < len(head):
                    out[0] = head[n:]
                    break
                out.popleft()
        except OSError:
            self._close(conn, t)
            return False
        if sent:
            t.bytes_out += sent
            conn.out_bytes -= sent
            conn.progress_at = time.monotonic()
            self._release_output(sent)
        return True

    def _release_output(self, n: int) -> None:
        """``n`` pending bytes left: unpark every parked connection once the total is back
        under half of ``max_total_output``."""
        with self._out_lock:
            self._total_out -= n
            if not self._parked or self._total_out > self.config.max_total_output // 2:
                return
            parked, self._parked = self._parked, []
        for c in parked:
            # Lock order: a writing connection's lock (held by our caller), then a parked
            # one's; never the reverse, as a parked connection has no output to release.
            self._unpark(c)

    # ------------------------------------------------------------------ knotes
    def _watch(self, conn: _Conn, old: int | None, new: int | None) -> bool:
        """Switch the connection's one knote from filter ``old`` to ``new`` (either may be
        None), applied at once; the caller owns the connection.  False if the kqueue
        refused (closed at stop)."""
        changes = []
        if old is not None:
            changes.append(kevent(conn.fd, old, EV_DELETE))
        if new is not None:
            flags = EV_ADD | (EV_REALTIME if conn.realtime else 0)
            if new == EVFILT_WRITE:
                flags |= EV_CLEAR  # wake on new write space only (no re-check loop)
            elif self._legacy:
                flags |= EV_DISPATCH
            changes.append(kevent(conn.fd, new, flags, 0, 0, conn))
        try:
            conn.kq.control(changes, 0)
        except (OSError, ValueError):
            return False
        return True

    def _start_writing(self, conn: _Conn) -> None:
        conn.progress_at = time.monotonic()
        conn.unsent = _unsent(conn.fd)
        if not self._watch(conn, EVFILT_READ, EVFILT_WRITE):
            self._close(conn, None)
            return
        conn.state = _WRITING
        with self._out_lock:
            self._writing.add(conn)

    def _stop_writing(self, conn: _Conn) -> None:
        with self._out_lock:
            self._writing.discard(conn)
        conn.state = _READING
        if not self._watch(conn, EVFILT_WRITE, EVFILT_READ):
            self._close(conn, None)

    def _park(self, conn: _Conn) -> bool:
        """Too much output pending server-wide: stop reading this connection until the
        total drops (its requests wait in the kernel).  False if the total dropped
        meanwhile (then the caller reads on)."""
        with self._out_lock:
            if self._total_out <= self.config.max_total_output:
                return False
            self._parked.append(conn)
            self._parks += 1
            conn.state = _PARKED
        if not self._watch(conn, EVFILT_READ, None):
            self._close(conn, None)
        return True

    def _unpark(self, conn: _Conn) -> None:
        with conn.lock:
            if conn.closed or conn.state != _PARKED:
                return
            conn.state = _READING
            if not self._watch(conn, None, EVFILT_READ):
                self._close(conn, None)

    def _close(self, conn: _Conn, t: _Tally | None) -> None:
        """Forget the registration, close the session, then the socket (once).  The caller
        holds ``conn.lock``."""
        if conn.closed:
            return
        conn.closed = True
        with self._out_lock:
            self._writing.discard(conn)
            if conn.state == _PARKED and conn in self._parked:
                self._parked.remove(conn)
        pending = conn.out_bytes
        conn.out.clear()
        conn.out_bytes = 0
        conn.inbuf = b""
        if pending:
            self._release_output(pending)
        try:
            conn.kq.forget(conn.fd)
        except (OSError, ValueError):
            pass  # the kqueue is already closed (server stop)
        close = getattr(conn.session, "close", None)
        if close is not None:
            try:
                close()
            except Exception:  # noqa: BLE001
                log.debug("skqueue.server: session.close() failed", exc_info=True)
        try:
            conn.sock.close()
        except OSError:
            pass
        with self._conns_lock:
            self._conns.discard(conn)
        if t is not None:
            t.closed += 1

    # ------------------------------------------------------------------ dump
    def dump(self) -> dict[str, Any]:
        """Server state: settings, connection counts, kqueue dump(s), per-worker counters."""
        kqs: list[dict[str, Any]] = []
        for kq in list(self._kqs):
            try:
                kqs.append(kq.dump())
            except (OSError, ValueError):
                pass  # closed by a concurrent stop()
        workers = [s.snapshot() for s in list(self._stats)]
        totals = {
            k: sum(int(w[k]) for w in workers) for k in ("batches", *_TALLIED)
        }
        with self._conns_lock:
            conns = {
                "open": len(self._conns),
                "accepted": self._accepted,
                "refused": self._refused,
                "realtime": self._realtime,
            }
        with self._out_lock:
            output = {
                "pending_bytes": self._total_out,
                "writing": len(self._writing),
                "parked": len(self._parked),
                "parks": self._parks,
                "closed_idle": self._closed_idle,
                "closed_over_limit": self._closed_over,
            }
        cfg = self.config
        return {
            "server": {
                "mode": self.mode,
                "policy": self.policy,
                "word": None if self.word is None else f"{self.word:#x}",
                "threads": cfg.threads,
                "address": list(self._address) if self._address else None,
                "pin": cfg.pin,
                "rt_hosts": sorted(self._rt_hosts),
                "rtshare": cfg.rtshare,
                "tfreq": cfg.tfreq,
                "batch": cfg.batch,
                "max_conns": cfg.max_conns,
                "max_conn_output": cfg.max_conn_output,
                "max_total_output": cfg.max_total_output,
                "write_idle_timeout": cfg.write_idle_timeout,
                "running": self.running,
                "uptime_s": (time.monotonic() - self._started_at) if self._started_at else 0.0,
            },
            "connections": conns,
            "output": output,
            "kqueues": kqs,
            "workers": workers,
            "totals": totals,
        }

    def __repr__(self) -> str:
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "unbound"
        return f"<skqueue.server.Server {self.policy} threads={self.config.threads} {where}>"


def _unsent(fd: int) -> int:
    """Bytes in a socket's send queue not yet acknowledged by the peer (SIOCOUTQ)."""
    try:
        return int(struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, b"\0" * 4))[0])
    except OSError:
        return -1


def _send_until_blocked(sock: socket.socket, data: bytes | memoryview) -> int:
    """Send as much of ``data`` as the socket takes; the bytes sent.  Stops on EAGAIN, which
    also guarantees a write-space wake-up from the kernel later (the WRITE knote is
    edge-triggered).  Socket errors propagate as OSError."""
    view = memoryview(data)
    sent = 0
    while sent < len(view):
        try:
            sent += sock.send(view[sent:])
        except BlockingIOError:
            break
    return sent
