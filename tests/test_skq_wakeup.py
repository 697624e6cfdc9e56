"""The wake-up invariant of multi mode: a queued, deliverable event always has an awake
owner or a pending wake (docs/design.md, "The wake-up invariant").

A thread decides to sleep from ``Kevq.available()``, which subtracts the *parked* entries
(queued on its kevq while another thread still owns the knote).  If that count is ever too
high, the thread sleeps through a queued event until its timeout: the stall of issue 14
(a memcached client's sequential sets waiting ``poll_interval`` for a reply).  These tests
run without any timeout in the workers, so a lost wake-up is a hang that the client side
reports, never something a periodic wake-up hides.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import skqueue
import skqueue._kqueue as kqmod
from skqueue import EV_ADD, EV_AFFINITY, EV_CLEAR, EVFILT_READ, EVFILT_USER, NOTE_TRIGGER, kevent
from skqueue._status import KN_PROCESSING

pytestmark = pytest.mark.timeout(240)

# The brutal matrix (tests/test_skq_brutal.py) plus the policies issue 14 saw stalling.
POLICIES = [
    "rand", "rand_ws", "best2", "best2_ws", "queue0", "queue2", "queue2_ws",
    "cpu0", "cpu2", "cpu2_ws", "ws1",
]  # fmt: skip

REPLY_TIMEOUT = 20.0  # a reply later than this is a hang: the workers never time out


class Actor:
    """A thread that runs the callables it is given, one at a time, in order."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]] | None] = (
            queue.Queue()
        )
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, done = job
            try:
                done.put((True, fn()))
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                done.put((False, e))

    def submit(self, fn: Callable[[], Any]) -> queue.Queue[Any]:
        done: queue.Queue[Any] = queue.Queue()
        self._jobs.put((fn, done))
        return done

    def call(self, fn: Callable[[], Any], timeout: float = REPLY_TIMEOUT) -> Any:
        return result(self.submit(fn), timeout)

    def stop(self) -> None:
        self._jobs.put(None)
        self.thread.join(REPLY_TIMEOUT)


def result(done: queue.Queue[Any], timeout: float = REPLY_TIMEOUT) -> Any:
    ok, value = done.get(timeout=timeout)
    if not ok:
        raise value
    return value


@pytest.mark.parametrize("path", ["python", "c"])
def test_owner_release_racing_a_pop_keeps_the_count(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The interleaving behind issue 14, forced step by step.

    A knote owned by T1 is parked on T2's kevq.  T1's next control() releases it, and
    between T1 clearing the ownership and accounting for it on T2's kevq, T2's scan pops
    the entry.  Then an event lands on T2's kevq while T2 is awake, just before T2
    decides whether to sleep.  With a parked count left one too high, T2 slept through
    that event until its timeout; it must return it at once.

    ``python``: every control() takes the Python path (the reference); ``c``: the C
    helper's fast_control releases and pops (its release calls the same ``_unpark``).
    """
    if path == "c" and kqmod.fast_control is None:
        pytest.skip("the C helper is not in use")
    if path == "python":
        monkeypatch.setattr(kqmod, "fast_control", None)
    kq = skqueue.kqueue()
    kq.set_multi(skqueue.parse_sched("rand"))
    core = kq._core
    assert core is not None
    a, b = socket.socketpair()
    b.setblocking(False)
    t1, t2 = Actor("T1"), Actor("T2")
    try:
        t1.call(lambda: kq.control(None, 1, 0))  # T1's kevq is the only active one
        kq.control([kevent(b, EVFILT_READ, EV_ADD)], 0)
        a.send(b"x")
        evs = t1.call(lambda: kq.control(None, 1, REPLY_TIMEOUT))
        assert [e.ident for e in evs] == [b.fileno()]  # T1 owns the knote now
        kn = core.knotes[(b.fileno(), EVFILT_READ)]

        def t2_setup() -> list[kevent]:
            # An EV_AFFINITY event is always queued on its registering thread's kevq.
            kq.control([kevent(7, EVFILT_USER, EV_ADD | EV_CLEAR | EV_AFFINITY)], 0)
            return kq.control(None, 1, 0)  # activates T2's kevq; nothing for it yet

        assert t2.call(t2_setup) == []
        q2 = next(q for q in core.active if q.thread_name == "T2")
        with kn.lock:
            core._enqueue(q2, kn, False)  # a new activation parks it on T2's kevq
        with q2.lock:
            assert q2.available() == 0  # parked: T1 still owns it

        # T2's scan pops the entry while T1 is between "ownership cleared" and the
        # parked-count update for it.
        popped = threading.Event()
        real_take = kqmod.take_batch

        def take_batch(dq: Any, want: int, q: Any) -> Any:
            r = real_take(dq, want, q)
            if q is q2:
                popped.set()
            return r

        monkeypatch.setattr(kqmod, "take_batch", take_batch)
        release_name = "_unpark" if hasattr(core, "_unpark") else "_unprocq"
        real_release = getattr(core, release_name)
        t2_scan: list[queue.Queue[Any]] = []

        def release(qq: Any, k: Any) -> None:
            if k is kn and not t2_scan:
                t2_scan.append(t2.submit(lambda: kq.control(None, 1, 0)))
                if path == "python":
                    assert popped.wait(REPLY_TIMEOUT)
                else:
                    # The C scan pops without a Python hook: wait for the pop itself
                    # (T2 then waits for the knote lock this thread holds).
                    deadline = time.monotonic() + REPLY_TIMEOUT
                    while kn.queued_on is not None:
                        assert time.monotonic() < deadline, "T2 never popped the entry"
                        time.sleep(0.001)
                assert t2_scan[0].empty()  # T2 waits for the knote lock this thread holds
            real_release(qq, k)

        monkeypatch.setattr(core, release_name, release)
        assert t1.call(lambda: kq.control(None, 1, 0)) == []  # releases the knote
        got = result(t2_scan[0])
        assert [e.ident for e in got] == [b.fileno()]  # T2 owns it now
        assert b.recv(16) == b"x"

        # T2 comes back with nothing queued; just before it decides to sleep, an event
        # lands on its kevq (from another thread, as an activation would).
        armed = [True]
        real_wait = core._wait

        def wait(q: Any, timeout: Any, thief: bool = False) -> None:
            if armed and q is q2:
                armed.clear()
                t1.call(lambda: kq.control([kevent(7, EVFILT_USER, 0, NOTE_TRIGGER)], 0))
            real_wait(q, timeout, thief)

        monkeypatch.setattr(core, "_wait", wait)
        t0 = time.monotonic()
        got = t2.call(lambda: kq.control(None, 1, 60.0), timeout=90.0)
        elapsed = time.monotonic() - t0
        assert [(e.ident, e.filter) for e in got] == [(7, EVFILT_USER)]
        assert not armed  # the race was really provoked
        assert elapsed < REPLY_TIMEOUT, f"T2 slept {elapsed:.1f} s with an event queued"
        with q2.lock:
            assert q2.available() == len(q2.rt) + len(q2.normal)  # nothing parked
    finally:
        t1.stop()
        t2.stop()
        kq.close()
        a.close()
        b.close()


class EchoPool:
    """Worker threads echoing what they read, on one multi-mode kqueue, no timeout."""

    def __init__(self, policy: str, socks: list[socket.socket], nworkers: int = 4) -> None:
        self.kq = skqueue.kqueue(topology=skqueue.Topology.synthetic(2, 2, 1))
        self.kq.set_multi(skqueue.parse_sched(policy))
        self.by_fd = {s.fileno(): s for s in socks}
        self.errors: list[str] = []
        self.kq.control([kevent(s, EVFILT_READ, EV_ADD) for s in socks], 0)
        self.threads = [
            threading.Thread(target=self._work, name=f"echo{i}", daemon=True)
            for i in range(nworkers)
        ]
        for t in self.threads:
            t.start()

    def _work(self) -> None:
        try:
            while True:
                for ev in self.kq.control(None, 2, None):  # no timeout: never rescued
                    s = self.by_fd[ev.ident]
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    s.sendall(data)
        except (OSError, ValueError):
            return  # closed at the end of the test
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(e))

    def quiet_check(self) -> None:
        """Once no thread owns anything, nothing can be parked anywhere.

        "Owns nothing" is judged from the knotes, not from the owned lists: a thread
        empties its list first and then releases each knote, so an empty list alone
        does not mean it is done.  A knote left owned by nobody would fail here.  And
        every thread must be asleep: one that has just released a knote may not have
        unparked it yet."""
        core = self.kq._core
        assert core is not None

        def owned() -> list[Any]:
            return [kn for kn in list(core.knotes.values()) if kn.status & KN_PROCESSING]

        def awake() -> list[Any]:
            return [q for q in list(core.kevqs)
                    if q.active and not (q.nfollowers or q.leader_waiting)]  # fmt: skip

        deadline = time.monotonic() + REPLY_TIMEOUT
        while (owned() or awake()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not owned(), f"knotes owned after {REPLY_TIMEOUT} s of quiet: {owned()}"
        for q in list(core.kevqs):
            with q.lock:
                assert not q.owned
                assert q.available() == len(q.rt) + len(q.normal), (
                    f"kevq {q.id}: {len(q.rt) + len(q.normal)} queued, "
                    f"{q.available()} available with nothing owned"
                )
                q.check()

    def close(self) -> None:
        self.kq.close()
        for t in self.threads:
            t.join(REPLY_TIMEOUT)


def _exchange(sock: socket.socket, msg: bytes) -> None:
    sock.sendall(msg)
    got = 0
    while got < len(msg):
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        got += len(chunk)


@pytest.mark.parametrize("policy", POLICIES)
def test_sequential_client_beside_bursts_never_stalls(policy: str) -> None:
    """Issue 14's pattern: one connection of back-to-back request/replies (1 B to 4 KiB)
    while other connections send bursts.  Any reply later than REPLY_TIMEOUT is a lost
    wake-up (the workers block without a timeout)."""
    pairs = [socket.socketpair() for _ in range(9)]
    for _, srv in pairs:
        srv.setblocking(False)
    pool = EchoPool(policy, [srv for _, srv in pairs])
    failures: list[str] = []
    stop = threading.Event()

    def burst(cli: socket.socket, seed: int) -> None:
        cli.settimeout(REPLY_TIMEOUT)
        i = seed
        try:
            while not stop.is_set():
                for _ in range(16):
                    _exchange(cli, b"b" * (1 + (i * 131) % 1500))
                    i += 1
                stop.wait(0.002)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"burst client: {e!r}")

    bursts = [
        threading.Thread(target=burst, args=(cli, k), daemon=True)
        for k, (cli, _) in enumerate(pairs[1:])
    ]
    for t in bursts:
        t.start()
    seq = pairs[0][0]
    seq.settimeout(REPLY_TIMEOUT)
    try:
        for i in range(1500):
            _exchange(seq, b"s" * (1 + (i * 2654435761) % 4096))
    except TimeoutError:
        failures.append(f"sequential client: no reply within {REPLY_TIMEOUT} s (request {i})")
    finally:
        stop.set()
        for t in bursts:
            t.join(REPLY_TIMEOUT)
    try:
        assert not failures, failures
        assert not pool.errors, pool.errors
        pool.quiet_check()
    finally:
        pool.close()
        for cli, srv in pairs:
            cli.close()
            srv.close()


def test_legacy_waiter_finding_only_entries_in_flux_is_woken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Legacy mode shares one queue: while T1's scan holds the only entry (popped, not
    yet re-queued), T2 finds the queue empty and sleeps.  When T1 puts the
    level-triggered entry back, T2 must be woken to rescan (FreeBSD's KQ_FLUXWAIT),
    not left asleep until its timeout."""
    kq = skqueue.kqueue()
    core = kq._core
    assert core is not None
    q = core.single
    t1, t2 = Actor("T1"), Actor("T2")
    popped, go = threading.Event(), threading.Event()
    real_make = kqmod.make_event

    def make_event(*args: Any) -> Any:
        # T1 builds the event of the entry it popped (no kevq lock held): pause here.
        if threading.current_thread() is t1.thread and not popped.is_set():
            popped.set()
            assert go.wait(REPLY_TIMEOUT)
        return real_make(*args)

    try:
        kq.control([kevent(1, EVFILT_USER, EV_ADD)], 0)  # level-triggered
        kq.control([kevent(1, EVFILT_USER, 0, NOTE_TRIGGER)], 0)
        monkeypatch.setattr(kqmod, "make_event", make_event)
        first = t1.submit(lambda: kq.control(None, 1, REPLY_TIMEOUT))
        assert popped.wait(REPLY_TIMEOUT)
        t0 = time.monotonic()
        second = t2.submit(lambda: kq.control(None, 1, 60.0))
        deadline = time.monotonic() + REPLY_TIMEOUT
        while time.monotonic() < deadline:
            with q.lock:
                if q.nfollowers or q.leader_waiting:
                    break  # T2 is asleep
            time.sleep(0.005)
        go.set()
        assert [e.ident for e in result(first)] == [1]
        assert [e.ident for e in result(second, 90.0)] == [1]
        elapsed = time.monotonic() - t0
        assert elapsed < REPLY_TIMEOUT, f"T2 slept {elapsed:.1f} s with an event queued"
    finally:
        go.set()
        t1.stop()
        t2.stop()
        kq.close()
