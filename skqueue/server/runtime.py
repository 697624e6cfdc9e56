"""Worker-pool server runtime: N worker threads serving TCP connections from kqueue events.

This is the Python counterpart of the SKQ benchmarks' ``ppd`` server (docs/semantics.md §6.2): one
acceptor thread, ``threads`` workers, and one of three queue architectures chosen by
``policy``.  It is usable as a library (``Server``) and drives any *protocol handler*.

Protocol handlers (the contract for users)
------------------------------------------
``session_factory()`` is called once per accepted connection (in the acceptor thread) and
must return an object with:

* ``feed(data: bytes) -> bytes``: consume bytes received from the peer and return the bytes
  to send back (possibly empty).  Raising any exception closes the connection: raise
  ``skqueue.server.proto_rpc.ProtocolError`` for input that can never be valid; other
  exceptions are treated the same way (logged at debug level, counted as ``errors``), so a
  malformed request or a buggy handler never kills a worker thread;
* ``wants_close`` (attribute or property): once true (checked after each ``feed`` and after
  the reply is sent) the runtime closes the connection;
* optionally ``close()``: called exactly once when the connection goes away, whatever the
  reason (peer EOF, error, limit, server stop);
* optionally an integer ``requests`` attribute counting requests answered; if present the
  per-worker ``requests`` counter adds its increments, otherwise it counts ``feed`` calls
  that produced a reply.

``feed`` may be called from different worker threads over a connection's life (never from
two at once: see ownership below), so a handler must not rely on thread-local state.
``skqueue.server.proto_rpc.RpcSession`` and ``skqueue.server.proto_memcached.MemcachedSession``
satisfy this contract.

Queue architectures (``policy``)
--------------------------------
* **SKQ** (any label ``skqueue.parse_sched`` accepts: ``rand``, ``best2_ws``, ``cpu0`` ...):
  ONE kqueue switched to multi mode with that scheduler word before first use.  Connections
  are registered with plain ``EV_ADD``: a delivered event is *owned* by the worker that got it
  until that worker calls ``control()`` again (semantics §3.10), so no two workers ever serve
  one connection at the same time and no ``EV_DISPATCH`` re-arm is needed.  Level-triggered
  leftovers (more bytes than one ``recv``) come back to the same worker.
* **legacy**: one shared kqueue NOT in multi mode (stock kqueue semantics).  Connections are
  registered ``EV_ADD|EV_DISPATCH`` so an event disables its knote on delivery; the worker
  appends the ``EV_ENABLE`` re-arm to a change list that rides on its *next* ``control()``
  call (the batching the authors' "shared legacy" baseline does).
* **vanilla**: one kqueue per worker, connections assigned round-robin by the acceptor, as
  memcached's per-thread event bases or nginx with SO_REUSEPORT.  Not work-conserving.

Realtime clients (peer IP in ``rt_hosts``, or ``rt_predicate((ip, port))`` true) are
registered with ``EV_REALTIME`` in every mode (the core keeps a realtime FIFO per kevq in
legacy mode too); ``rtshare`` is applied with ``KQTUNE_RTSHARE`` to every kqueue, ``tfreq``
with ``KQTUNE_FREQ`` (SKQ policies only: the kernel refuses it outside multi mode, so a
nonzero ``tfreq`` with vanilla/legacy is a ``ValueError``).

Threads
-------
* The **acceptor** has its own private kqueue (listening socket, a stop ``EVFILT_USER``
  event, and the optional dump timer, as ``ppd -d``).  On the shared kqueue it only
  *registers* (``control(changes, 0)``): a register-only thread keeps an inactive kevq, so in
  multi mode it never receives connection events (semantics §3.7).  Accepted sockets get
  ``TCP_NODELAY`` and are made non-blocking.  Beyond ``max_conns`` open connections a new
  connection is accepted and closed at once (counted as ``refused``).
* **Workers** loop on ``kq.control(changes, batch, poll_interval)``.  Per connection event:
  one ``recv`` of up to 64 KiB, ``session.feed``, send the reply fully, then close on peer
  EOF (``recv`` returned ``b""``; an ``EV_EOF`` event with bytes still buffered is served
  first and closes on the following event), socket error, handler exception or
  ``wants_close``.  Closing is ``kq.forget(fd)`` (the registration goes away while the
  descriptor still names our socket, so a reused number can never lose a newer
  registration), then ``session.close()``, then the socket's close.
* **Pinning** (``pin=True``): worker *i* runs on CPU ``cpus[i % len(cpus)]`` of the process's
  allowed set, set inside the thread with ``os.sched_setaffinity(0, ...)``.  The original
  pinned to an SMT pair; here one CPU, because the build machines have no SMT siblings.

Sending replies: blocking with a timeout (documented choice)
------------------------------------------------------------
Replies are written with ``send`` on the non-blocking socket; on ``EAGAIN`` the worker waits
for ``POLLOUT`` on that one descriptor (``select.poll``) and continues, up to
``send_timeout`` seconds in total, after which the connection is closed as stuck.  For the
workloads served here (request/response, small replies) the socket buffer almost never
fills, and this keeps each connection on ONE knote (EVFILT_READ) handled by one thread at a
time.  The rejected alternative, a pending-output buffer plus an ``EVFILT_WRITE`` knote and
``EV_DISABLE`` of reading while output is pending, puts two knotes of one connection in
flight at once: in multi mode they may be delivered to two different workers, and their
queued re-arm/disable changes can race with a close and a descriptor reuse.  The price: a
peer that pipelines a lot and stops reading ties one worker up for ``send_timeout``.

Stopping
--------
``stop()`` sets a flag and triggers an ``EVFILT_USER`` stop event registered on every
kqueue.  Vanilla: one per worker's kqueue.  SKQ: the event is level-triggered and pushed to
one worker, which exits and calls ``kq.detach()``, so the still-triggered event is re-homed
to the next worker, and so on.  Legacy: the core wakes one sleeper per activation (no
thundering herd, unlike stock kqueue's ``wakeup()`` of every sleeper), and a level-triggered
event re-queued after delivery wakes nobody, so the event is ``EV_CLEAR`` and every exiting
worker triggers it again for the next one.  Workers also wake every ``poll_interval``
(0.2 s) to re-check the flag, so a stop never depends on the chain alone.  After joining the
threads (``stop_timeout``), every open connection, the listener and the kqueues are closed.

Statistics
----------
Each worker counts ``events``, ``batches`` (non-empty ``control()`` returns), ``requests``,
``bytes_in``, ``bytes_out``, ``closed`` connections, ``errors`` and ``protocol_errors``.
Counters are accumulated per batch in a thread-private tally and published under the
worker's lock, so ``dump()`` from any thread reads consistent values.  ``dump()`` returns the
kqueue dump(s) (``kq.dump()``, semantics §3.4) plus those counters, as a JSON-serialisable dict.
"""

from __future__ import annotations

import errno
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from skqueue import kevent, kqueue, parse_sched, sched_label
from skqueue.constants import (
    EV_ADD,
    EV_CLEAR,
    EV_DISPATCH,
    EV_ENABLE,
    EV_ERROR,
    EV_REALTIME,
    EVFILT_READ,
    EVFILT_TIMER,
    EVFILT_USER,
    KQTUNE_FREQ,
    KQTUNE_MAKE,
    KQTUNE_RTSHARE,
    NOTE_TRIGGER,
)
from skqueue.sched import Tunables
from skqueue.server.proto_rpc import ProtocolError

__all__ = [
    "RECV_SIZE",
    "ProtocolHandler",
    "Server",
    "WorkerStats",
    "mode_of",
]

log = logging.getLogger("skqueue.server")

#: Bytes read per connection event.
RECV_SIZE = 64 * 1024
#: Ident of the EVFILT_USER stop event registered on every kqueue.
_STOP_IDENT = 0x51A7
#: Ident of the acceptor's dump timer.
_DUMP_IDENT = 0xD0
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


# What a worker counts per batch (_Tally) and publishes (WorkerStats): the names of both
# classes' counters and of ``stats()``'s per-worker keys.
_TALLIED = ("events", "requests", "bytes_in", "bytes_out", "closed", "errors", "protocol_errors")


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

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in _TALLIED:
            setattr(self, name, 0)


class _Conn:
    """One accepted connection: socket, session, and the kqueue it is registered on."""

    __slots__ = (
        "sock",
        "fd",
        "session",
        "peer",
        "realtime",
        "kq",
        "counts_requests",
        "closed",
        "lock",
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
        self.closed = False
        self.lock = threading.Lock()


def _send_all(sock: socket.socket, data: bytes, timeout: float) -> bool:
    """Write all of ``data`` to a non-blocking socket; wait for POLLOUT on EAGAIN.

    Returns False if ``timeout`` seconds pass before everything is written.  Socket errors
    (EPIPE, ECONNRESET...) propagate as OSError.
    """
    try:
        n = sock.send(data)
    except (BlockingIOError, InterruptedError):
        n = 0
    if n == len(data):
        return True
    view = memoryview(data)[n:]
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLOUT)
    while view:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        poller.poll(max(1, int(remaining * 1000)))
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            continue
        view = view[n:]
    return True


class Server:
    """A multi-threaded TCP server on kqueue(s); see the module docstring.

    ``Server(host, port, session_factory, threads=4, policy="best2_ws", ...)`` then
    ``start()`` (binds, starts the threads; ``address`` is the bound ``(host, port)``, port 0
    picks a free one), ``stop()`` (prompt, idempotent), or ``serve_forever()`` (start if
    needed and block until ``stop()``).  Also a context manager (start / stop).

    Parameters beyond the brief of ``ppd``: ``send_timeout`` (seconds a reply may wait for
    socket buffer space before the connection is closed), ``poll_interval`` (worker
    ``control()`` timeout, the bound on stop latency should the stop event be missed),
    ``dump_interval`` + ``on_dump`` (call ``on_dump(self.dump())`` every ``dump_interval``
    seconds from the acceptor thread, as ``ppd -d``), ``stop_timeout`` (join limit).
    """

    def __init__(
        self,
        host: str,
        port: int,
        session_factory: Callable[[], Any],
        threads: int = 4,
        policy: str = "best2_ws",
        pin: bool = False,
        rt_hosts: Iterable[str] = (),
        rt_predicate: Callable[[Any], bool] | None = None,
        max_conns: int = 10000,
        rtshare: int | None = None,
        tfreq: int | None = None,
        backlog: int = 1024,
        batch: int = 64,
        tunables: Tunables | None = None,
        *,
        send_timeout: float = 5.0,
        poll_interval: float = 0.2,
        dump_interval: float | None = None,
        on_dump: Callable[[dict[str, Any]], None] | None = None,
        stop_timeout: float = 5.0,
    ) -> None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        if max_conns < 1:
            raise ValueError(f"max_conns must be >= 1, got {max_conns}")
        if rtshare is not None and rtshare not in _RTSHARE_RANGE:
            raise ValueError(f"rtshare must be 1..100, got {rtshare}")
        if tfreq is not None and tfreq not in _TFREQ_RANGE:
            raise ValueError(f"tfreq must be 0..65535, got {tfreq}")
        if poll_interval <= 0 or send_timeout <= 0:
            raise ValueError("poll_interval and send_timeout must be positive")
        if dump_interval is not None and dump_interval <= 0:
            raise ValueError("dump_interval must be positive")
        self.mode, self.word = mode_of(policy)
        if tfreq and self.mode != "skq":
            raise ValueError(
                f"tfreq needs an SKQ policy (KQTUNE_FREQ is multi-mode only), not {policy!r}"
            )
        self.policy = policy.strip().lower() if self.word is None else sched_label(self.word)
        self.host = host
        self.port = port
        self.session_factory = session_factory
        self.threads = threads
        self.pin = pin
        self.rt_hosts = frozenset(rt_hosts)
        self.rt_predicate = rt_predicate
        self.max_conns = max_conns
        self.rtshare = rtshare
        self.tfreq = tfreq
        self.backlog = backlog
        self.batch = batch
        self.tunables = tunables
        self.send_timeout = send_timeout
        self.poll_interval = poll_interval
        self.dump_interval = dump_interval
        self.on_dump = on_dump
        self.stop_timeout = stop_timeout

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
        cpus = sorted(os.sched_getaffinity(0)) if self.pin else []
        for i in range(self.threads):
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
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        ls = socket.socket(family, socket.SOCK_STREAM)
        self._listener = ls
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ls.bind((self.host, self.port))
        ls.listen(self.backlog)
        ls.setblocking(False)
        name = ls.getsockname()
        self._address = (str(name[0]), int(name[1]))

        nkq = self.threads if self.mode == "vanilla" else 1
        for _ in range(nkq):
            kq = kqueue(tunables=self.tunables.copy() if self.tunables is not None else None)
            self._kqs.append(kq)
            if self.word is not None:
                kq.set_multi(self.word)
            if self.rtshare is not None:
                kq.tune(KQTUNE_MAKE(KQTUNE_RTSHARE, self.rtshare))
            if self.tfreq:
                kq.tune(KQTUNE_MAKE(KQTUNE_FREQ, self.tfreq))
            # SKQ: level-triggered, re-homed by kq.detach() of each exiting worker.  Legacy:
            # EV_CLEAR, re-triggered by each exiting worker (one wake-up per trigger).
            stop_flags = EV_ADD if self.mode == "skq" else EV_ADD | EV_CLEAR
            kq.control([kevent(_STOP_IDENT, EVFILT_USER, stop_flags)], 0)

        akq = kqueue()
        self._akq = akq
        changes = [
            kevent(ls.fileno(), EVFILT_READ, EV_ADD),
            kevent(_STOP_IDENT, EVFILT_USER, EV_ADD),
        ]
        if self.dump_interval is not None and self.on_dump is not None:
            ms = max(1, round(self.dump_interval * 1000))
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
            self._done.wait(self.stop_timeout + 5)
            return
        try:
            for kq in [*self._kqs, *([self._akq] if self._akq is not None else [])]:
                try:
                    kq.control([kevent(_STOP_IDENT, EVFILT_USER, 0, NOTE_TRIGGER)], 0)
                except (OSError, ValueError):
                    log.debug("skqueue.server: triggering the stop event failed", exc_info=True)
            deadline = time.monotonic() + self.stop_timeout
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
        try:
            while not stopping.is_set():
                try:
                    events = akq.control(None, 8, self.poll_interval * 2.5)
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
                    elif ev.filter == EVFILT_TIMER and self.on_dump is not None:
                        try:
                            self.on_dump(self.dump())
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
            full = len(self._conns) >= self.max_conns
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
        flags = EV_ADD
        if self.mode == "legacy":
            flags |= EV_DISPATCH
        if rt:
            flags |= EV_REALTIME
        with self._conns_lock:
            self._conns.add(conn)
            self._accepted += 1
            if rt:
                self._realtime += 1
        try:
            kq.control([kevent(conn.fd, EVFILT_READ, flags, 0, 0, conn)], 0)
        except (OSError, ValueError):
            if not self._stopping.is_set():
                log.exception("skqueue.server: registering %s failed", peer)
            self._close(conn, None)

    def _is_realtime(self, peer: Any) -> bool:
        if self.rt_predicate is not None:
            try:
                return bool(self.rt_predicate(peer))
            except Exception:  # noqa: BLE001
                log.exception("skqueue.server: rt_predicate failed for %s", peer)
                return False
        return bool(self.rt_hosts) and isinstance(peer, tuple) and peer[0] in self.rt_hosts

    # ------------------------------------------------------------------ workers
    def _worker_main(self, kq: kqueue, st: WorkerStats, cpu: int | None) -> None:
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError:
                log.warning("skqueue.server: cannot pin %s to CPU %d", st.thread, cpu)
        legacy = self.mode == "legacy"
        stopping = self._stopping
        batch = self.batch
        timeout = self.poll_interval
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
                if not events:
                    changes = []
                    continue
                changes = []
                tally.events = len(events)
                stop = False
                for ev in events:
                    conn = ev.udata
                    if type(conn) is _Conn:
                        serve(conn, ev, changes, legacy, tally)
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
                # The core wakes ONE sleeper per activation (no thundering herd, unlike
                # stock kqueue), so each worker passes the stop on to the next.
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

    def _serve(
        self, conn: _Conn, ev: kevent, changes: list[kevent], legacy: bool, t: _Tally
    ) -> None:
        """Serve one read event of ``conn``; append a legacy re-arm to ``changes``."""
        if conn.closed:
            return
        if ev.flags & EV_ERROR:
            log.debug("skqueue.server: EV_ERROR %d on %s", ev.data, conn.peer)
            t.errors += 1
            self._close(conn, t)
            return
        sock = conn.sock
        try:
            data = sock.recv(RECV_SIZE)
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
        session = conn.session
        try:
            if conn.counts_requests:
                before = session.requests
                reply = session.feed(data)
                t.requests += session.requests - before
            else:
                reply = session.feed(data)
                if reply:
                    t.requests += 1
        except ProtocolError as exc:
            log.debug("skqueue.server: protocol error from %s: %s", conn.peer, exc)
            t.protocol_errors += 1
            self._close(conn, t)
            return
        except Exception:  # noqa: BLE001 - malformed input must never kill a worker
            log.debug("skqueue.server: handler failed for %s", conn.peer, exc_info=True)
            t.errors += 1
            self._close(conn, t)
            return
        if reply:
            try:
                ok = _send_all(sock, reply, self.send_timeout)
            except OSError:
                ok = False
            if not ok:
                self._close(conn, t)
                return
            t.bytes_out += len(reply)
        if session.wants_close:
            self._close(conn, t)
            return
        if legacy:
            changes.append(kevent(conn.fd, EVFILT_READ, EV_ENABLE, 0, 0, conn))

    def _close(self, conn: _Conn, t: _Tally | None) -> None:
        """Forget the registration, close the session, then the socket (once)."""
        with conn.lock:
            if conn.closed:
                return
            conn.closed = True
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
            k: sum(int(w[k]) for w in workers)
            for k in (
                "events",
                "batches",
                "requests",
                "bytes_in",
                "bytes_out",
                "closed",
                "errors",
                "protocol_errors",
            )
        }
        with self._conns_lock:
            conns = {
                "open": len(self._conns),
                "accepted": self._accepted,
                "refused": self._refused,
                "realtime": self._realtime,
            }
        return {
            "server": {
                "mode": self.mode,
                "policy": self.policy,
                "word": None if self.word is None else f"{self.word:#x}",
                "threads": self.threads,
                "address": list(self._address) if self._address else None,
                "pin": self.pin,
                "rt_hosts": sorted(self.rt_hosts),
                "rtshare": self.rtshare,
                "tfreq": self.tfreq,
                "batch": self.batch,
                "max_conns": self.max_conns,
                "running": self.running,
                "uptime_s": (time.monotonic() - self._started_at) if self._started_at else 0.0,
            },
            "connections": conns,
            "kqueues": kqs,
            "workers": workers,
            "totals": totals,
        }

    def __repr__(self) -> str:
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "unbound"
        return f"<skqueue.server.Server {self.policy} threads={self.threads} {where}>"
