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
two at once, so a handler must not rely on thread-local state.  Replies the peer does not
read fast enough wait per connection, within ``ServerConfig``'s limits.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from skqueue import kevent, kqueue, sched_label
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
from skqueue.server.config import ServerConfig, legacy_config, mode_of
from skqueue.server.connection import (
    PARKED,
    READING,
    WRITING,
    Conn,
    OutputLedger,
    send_until_blocked,
    unsent,
)
from skqueue.server.proto_rpc import ProtocolError
from skqueue.server.stats import TALLIED, Tally, WorkerStats

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


class ProtocolHandler(Protocol):
    """What ``session_factory()`` must return (see the module docstring)."""

    @property
    def wants_close(self) -> bool: ...

    def feed(self, data: bytes) -> bytes: ...


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
            config, factory = legacy_config((config, *args), kwargs)
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
        self._conns: set[Conn] = set()
        self._accepted = 0
        self._refused = 0
        self._realtime = 0
        self._rr = 0
        self._started_at = 0.0
        self._ledger = OutputLedger(config.max_total_output)

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
        conn = Conn(sock, session, peer, rt, kq)
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
        for c in self._ledger.writers():
            with c.lock:
                if c.closed or c.state != WRITING:
                    continue
                queued = unsent(c.fd)
                if queued != c.unsent:
                    c.unsent = queued
                    c.progress_at = max(c.progress_at, now)
                    continue
                if now - c.progress_at <= limit:
                    continue
                log.warning(
                    "skqueue.server: closing %s: its %d pending reply bytes were not read "
                    "for %.1f s (write_idle_timeout %.1f s)",
                    c.peer, c.out_bytes, now - c.progress_at, limit,
                )
                self._ledger.count("closed_idle")
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
        tally = Tally()
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
                    if type(conn) is Conn:
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

    def _serve(self, conn: Conn, ev: kevent, changes: list[kevent], t: Tally) -> None:
        """Serve one event of ``conn``, owning it (its lock) for the whole time."""
        with conn.lock:
            if conn.closed:
                return
            if ev.flags & EV_ERROR:
                log.debug("skqueue.server: EV_ERROR %d on %s", ev.data, conn.peer)
                t.errors += 1
                self._close(conn, t)
            elif ev.filter == EVFILT_WRITE:
                if conn.state == WRITING:
                    self._on_writable(conn, t)
            elif conn.state == READING:
                self._on_readable(conn, changes, t)

    def _on_readable(self, conn: Conn, changes: list[kevent], t: Tally) -> None:
        legacy = self._legacy
        if self._ledger.total > self._ledger.limit and self._park(conn):
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

    def _on_writable(self, conn: Conn, t: Tally) -> None:
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

    def _pump(self, conn: Conn, data: bytes, t: Tally) -> bool:
        """Feed ``conn.inbuf + data`` slice by slice, sending each reply at once, until the
        input is used up or replies wait; keeps the rest in ``conn.inbuf``.  False if the
        connection was closed."""
        if conn.inbuf:
            data = conn.inbuf + data
            conn.inbuf = b""
        session = conn.session
        pos = 0
        while pos < len(data) and not conn.out and not session.wants_close:
            chunk = data[pos : pos + FEED_SLICE] if pos or len(data) > FEED_SLICE else data
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

    def _send(self, conn: Conn, reply: bytes, t: Tally) -> bool:
        """Send ``reply`` now as far as the socket takes it; queue the rest.  False if the
        connection was closed (socket error, or over ``max_conn_output``)."""
        try:
            n = send_until_blocked(conn.sock, reply)
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
            self._ledger.count("closed_over")
            self._close(conn, t)
            return False
        conn.out.append(rest)
        conn.out_bytes += len(rest)
        self._ledger.add(len(rest))
        return True

    def _flush(self, conn: Conn, t: Tally) -> bool:
        """Send pending replies until the socket refuses more; False if it was closed."""
        out = conn.out
        sent = 0
        try:
            while out:
                head = out[0]
                n = send_until_blocked(conn.sock, head)
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
        """``n`` pending bytes left: unpark the parked connections once the total is back
        under half of ``max_total_output``.  Lock order: a writing connection's lock (held
        by our caller), then a parked one's; never the reverse (parked ones hold nothing)."""
        for c in self._ledger.release(n):
            self._unpark(c)

    # ------------------------------------------------------------------ knotes
    def _watch(self, conn: Conn, old: int | None, new: int | None) -> bool:
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

    def _start_writing(self, conn: Conn) -> None:
        conn.progress_at = time.monotonic()
        conn.unsent = unsent(conn.fd)
        if not self._watch(conn, EVFILT_READ, EVFILT_WRITE):
            self._close(conn, None)
            return
        conn.state = WRITING
        self._ledger.start_writing(conn)

    def _stop_writing(self, conn: Conn) -> None:
        self._ledger.stop_writing(conn)
        conn.state = READING
        if not self._watch(conn, EVFILT_WRITE, EVFILT_READ):
            self._close(conn, None)

    def _park(self, conn: Conn) -> bool:
        """Too much output pending server-wide: stop reading this connection until the
        total drops (its requests wait in the kernel).  False if the total dropped
        meanwhile (then the caller reads on)."""
        if not self._ledger.park(conn):
            return False
        conn.state = PARKED
        if not self._watch(conn, EVFILT_READ, None):
            self._close(conn, None)
        return True

    def _unpark(self, conn: Conn) -> None:
        with conn.lock:
            if conn.closed or conn.state != PARKED:
                return
            conn.state = READING
            if not self._watch(conn, None, EVFILT_READ):
                self._close(conn, None)

    def _close(self, conn: Conn, t: Tally | None) -> None:
        """Forget the registration, close the session, then the socket (once).  The caller
        holds ``conn.lock``."""
        if conn.closed:
            return
        conn.closed = True
        self._ledger.forget(conn)
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
            k: sum(int(w[k]) for w in workers) for k in ("batches", *TALLIED)
        }
        with self._conns_lock:
            conns = {
                "open": len(self._conns),
                "accepted": self._accepted,
                "refused": self._refused,
                "realtime": self._realtime,
            }
        output = self._ledger.snapshot()
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
                "idle_first": cfg.tunables is not None and cfg.tunables.idle_first,
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
