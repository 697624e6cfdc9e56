"""EV_AFFINITY (docs/semantics.md §3.5, D1), orphans (D10) and kevq retirement (§3.16).

* An ``EV_AFFINITY`` knote is delivered only to the thread that registered it, even
  while other threads wait, and even if it became ready before that thread first
  waited; re-registration from another thread keeps the binding.  When the bound thread
  exits the knote is dropped (deleted, never delivered to anybody else).
* Orphans: events that became ready while no kevq was active are delivered as soon as a
  thread waits, whether they were ready before any thread ever waited or every waiting
  thread exited with events pending.
* ``kq.detach()`` re-homes the calling thread's events at once.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import skqueue
from skqueue import EV_ADD, EV_AFFINITY, EV_CLEAR, EV_DELETE, EV_ERROR, EVFILT_READ, kevent
from skqueue._status import KN_DETACHED

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pairs(pair_factory: Any) -> list[tuple[socket.socket, socket.socket]]:
    return pair_factory(6)


def _multi(label: str = "rand") -> skqueue.kqueue:
    kq = skqueue.kqueue(tunables=skqueue.Tunables(seed=9))
    kq.set_multi(skqueue.parse_sched(label))
    return kq


class Loop(threading.Thread):
    """A worker: optional setup(kq) on its own thread, then control() in a loop,
    recording (ident, data) and reading one byte per event if ``read``."""

    def __init__(self, kq: skqueue.kqueue, by_fd: dict[int, socket.socket],
                 setup: Callable[[skqueue.kqueue], Any] | None = None, read: bool = True,
                 start_waiting: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.kq, self.by_fd, self.setup, self.read = kq, by_fd, setup, read
        self.start_waiting = start_waiting
        self.stop = threading.Event()
        self.set_up = threading.Event()
        self.waiting = threading.Event()
        self.lock = threading.Lock()
        self.got: list[tuple[int, int]] = []
        self.errors: list[BaseException] = []

    def run(self) -> None:
        try:
            if self.setup is not None:
                self.setup(self.kq)
            self.set_up.set()
            if self.start_waiting is not None:
                self.start_waiting.wait(10)
            while not self.stop.is_set():
                self.waiting.set()
                for e in self.kq.control(None, 4, 0.02):
                    with self.lock:
                        self.got.append((e.ident, e.data))
                    if self.read:
                        self.by_fd[e.ident].recv(1)
        except BaseException as e:  # noqa: BLE001 - asserted by the tests
            self.errors.append(e)

    def idents(self) -> list[int]:
        with self.lock:
            return [i for i, _ in self.got]

    def halt(self) -> None:
        self.stop.set()
        self.join(5)
        assert not self.is_alive()


def _wait_for(pred: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.002)
    return pred()


@pytest.mark.parametrize(
    "label",
    [
        "rand",
        "best2",
        "cpu0",
        "ws",  # stealing must never take an EV_AFFINITY knote
    ],
)
def test_affinity_delivers_only_to_registering_thread(
    label: str, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    (s, peer), (n, npeer) = pairs[0], pairs[1]
    by_fd = {s.fileno(): s, n.fileno(): n}
    go = threading.Event()
    with _multi(label) as kq:
        owner = Loop(kq, by_fd, setup=lambda k: k.control(
            [kevent(s, EVFILT_READ, EV_ADD | EV_AFFINITY)], 0), start_waiting=go)
        owner.start()
        assert owner.set_up.wait(5)
        # D1: ready before the bound thread ever waits -> delivered once it does
        peer.send(b"e")
        others = [Loop(kq, by_fd) for _ in range(3)]
        for o in others:
            o.start()
        for o in others:
            assert o.waiting.wait(5)
        time.sleep(0.1)
        assert all(s.fileno() not in o.idents() for o in others)
        go.set()
        assert _wait_for(lambda: owner.idents().count(s.fileno()) == 1)
        # a non-affinity socket still reaches the others too
        kq.control([kevent(n, EVFILT_READ, EV_ADD)], 0)
        try:
            for i in range(30):
                peer.send(b"p")
                assert _wait_for(lambda i=i: owner.idents().count(s.fileno()) == i + 2), i
                npeer.send(b"q")
            # re-registration from another thread keeps the binding (D1)
            kq.control([kevent(s, EVFILT_READ, EV_ADD | EV_AFFINITY)], 0)
            for i in range(10):
                peer.send(b"r")
                assert _wait_for(lambda i=i: owner.idents().count(s.fileno()) == i + 32), i
            assert _wait_for(lambda: sum(o.idents().count(n.fileno()) for o in others + [owner])
                             == 30)
        finally:
            for t in [owner, *others]:
                t.halt()
        for t in [owner, *others]:
            assert not t.errors, t.errors
        assert all(s.fileno() not in o.idents() for o in others)


@pytest.mark.parametrize("pending", ["queued", "owned", "idle"])
def test_affinity_dropped_when_bound_thread_exits(
    pending: str, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """The bound thread exits with the event queued (never fetched), owned (fetched,
    unconsumed) or idle (data arrives afterwards): nobody else ever gets it and the
    knote is gone."""
    s, peer = pairs[0]
    by_fd = {s.fileno(): s}
    with _multi() as kq:
        fetched = []

        def bound() -> None:
            kq.control([kevent(s, EVFILT_READ, EV_ADD | EV_AFFINITY)], 0)
            kq.control(None, 1, 0)  # activate the kevq
            if pending == "queued":
                peer.send(b"x")
                time.sleep(0.05)
                kq.control(None, 0)  # harvests nothing, fetches nothing
            elif pending == "owned":
                peer.send(b"x")
                fetched.extend(e.ident for e in kq.control(None, 1, 2.0))

        others = [Loop(kq, by_fd, read=False) for _ in range(2)]
        for o in others:
            o.start()
        for o in others:
            assert o.waiting.wait(5)
        knotes_before = kq.dump()["knotes"]
        t = threading.Thread(target=bound)
        t.start()
        t.join(5)
        assert not t.is_alive()
        if pending == "owned":
            assert fetched == [s.fileno()]
        else:
            peer.send(b"y")
        try:
            time.sleep(0.3)
            assert all(s.fileno() not in o.idents() for o in others)
            # the knote was dropped: deleting it again says ENOENT
            evs = kq.control([kevent(s, EVFILT_READ, EV_DELETE)], 1, 0)
            assert [(e.flags & EV_ERROR, e.data) for e in evs] == [(EV_ERROR, errno.ENOENT)]
            assert kq.dump()["knotes"] == knotes_before
        finally:
            for o in others:
                o.halt()


def test_affinity_drop_is_counted_in_dump(
    pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    s, peer = pairs[0]
    with _multi() as kq:

        def bound() -> None:
            kq.control([kevent(s, EVFILT_READ, EV_ADD | EV_AFFINITY)], 0)
            kq.control(None, 1, 0)
            peer.send(b"x")
            time.sleep(0.05)
            kq.control(None, 0)

        t = threading.Thread(target=bound)
        t.start()
        t.join(5)
        kq.control(None, 1, 0.05)  # a surviving thread's kevq, so the dump is not empty
        d = kq.dump()
        dropped = d.get("dropped_affinity", 0) + sum(
            q.get("dropped_affinity", 0) for q in d["kevqs"]
        )
        assert dropped >= 1, d


def test_affinity_activation_racing_the_exit_is_dropped(
    pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """The bound thread starts to exit between an activation's check of its kevq and
    the enqueue: the knote is dropped and counted, as if the exit had come first, not
    left ready on no queue (it was, until its source fired again)."""
    s, peer = pairs[0]
    with _multi() as kq:
        core = kq._core
        assert core is not None
        holder: list[Any] = []

        def bound() -> None:
            kq.control([kevent(s, EVFILT_READ, EV_ADD | EV_AFFINITY)], 0)
            kq.control(None, 1, 0)
            holder.append(core._tls.slot)  # its exit does not retire the kevq yet

        t = threading.Thread(target=bound)
        t.start()
        t.join(5)
        q = holder[0].kevq
        kn = core.knotes[(s.fileno(), EVFILT_READ)]
        real_enqueue = core._enqueue

        def enqueue(qq: Any, k: Any, *args: Any) -> None:
            if k is kn:
                qq.closing = True  # drain() marks it now, after the activation's check
            real_enqueue(qq, k, *args)

        core._enqueue = enqueue
        try:
            peer.send(b"x")
            core.activate(kn)  # what the harvest of that readiness does
        finally:
            del core._enqueue
        with kn.lock:
            assert kn.queued_on is None
            assert kn.status & KN_DETACHED  # deleted, never delivered to anybody
        assert (q.dropped_affinity, core.dropped_affinity) == (1, 1)
        holder.clear()  # the slot's finaliser retires the kevq now


def test_orphans_ready_before_any_thread_waits(
    pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """D10: readiness noticed while no kevq is active is delivered at the first wait."""
    idents = {a.fileno() for a, _ in pairs}
    with _multi() as kq:
        # half ready at registration (activated with no active kevq) ...
        for _, b in pairs[:3]:
            b.send(b"x")
        kq.control([kevent(a, EVFILT_READ, EV_ADD) for a, _ in pairs], 0)
        # ... half ready afterwards, harvested by a register-only call
        for _, b in pairs[3:]:
            b.send(b"x")
        kq.control(None, 0)
        time.sleep(0.05)
        got: list[int] = []

        orphans_after: list[int] = []

        def waiter() -> None:
            deadline = time.monotonic() + 2
            while len(set(got)) < len(idents) and time.monotonic() < deadline:
                got.extend(e.ident for e in kq.control(None, 8, 0.1))
            # (checked while this thread lives: its exit re-homes its owned knotes,
            # which are orphans again as no other kevq is active)
            orphans_after.append(kq.dump()["orphans"])

        assert kq.dump()["orphans"] == 3
        t = threading.Thread(target=waiter)
        t.start()
        t.join(5)
        assert set(got) == idents
        assert orphans_after == [0]


@pytest.mark.parametrize("label", ["rand", "queue0", "best2_ws"])
def test_orphans_after_all_threads_exit(
    label: str, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """Every waiting thread exits holding (owned) and leaving (queued) level-triggered
    events; a thread that starts later gets all of them."""
    idents = {a.fileno() for a, _ in pairs}
    kq = skqueue.kqueue(tunables=skqueue.Tunables(seed=2),
                        topology=skqueue.Topology.synthetic(2, 4, 1))
    kq.set_multi(skqueue.parse_sched(label))
    try:
        kq.control([kevent(a, EVFILT_READ, EV_ADD) for a, _ in pairs], 0)
        barrier = threading.Barrier(2)
        held: list[int] = []

        def early() -> None:
            kq.control(None, 1, 0)  # activate
            barrier.wait(5)  # both active before any data
            time.sleep(0.05)
            # (the policy may put every event on one thread: the other then times out)
            held.extend(e.ident for e in kq.control(None, 1, 0.5))

        ts = [threading.Thread(target=early) for _ in range(2)]
        for t in ts:
            t.start()
        time.sleep(0.02)
        for _, b in pairs:
            b.send(b"x")
        for t in ts:
            t.join(5)
            assert not t.is_alive()
        assert 1 <= len(held) <= 2
        got: list[int] = []

        def late() -> None:
            deadline = time.monotonic() + 2
            while len(set(got)) < len(idents) and time.monotonic() < deadline:
                got.extend(e.ident for e in kq.control(None, 8, 0.1))

        t = threading.Thread(target=late)
        t.start()
        t.join(5)
        assert set(got) == idents
    finally:
        kq.close()


def test_detach_rehomes_owned_and_queued_events(
    pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    s, peer = pairs[0]
    c, cpeer = pairs[1]
    by_fd = {s.fileno(): s, c.fileno(): c}
    with _multi() as kq:
        kq.control([kevent(s, EVFILT_READ, EV_ADD), kevent(c, EVFILT_READ, EV_ADD | EV_CLEAR)], 0)
        peer.send(b"xy")
        cpeer.send(b"xy")
        first = kq.control(None, 2, 1.0)  # main thread owns both
        assert {e.ident for e in first} == {s.fileno(), c.fileno()}
        other = Loop(kq, by_fd, read=False)
        other.start()
        assert other.waiting.wait(5)
        time.sleep(0.1)
        assert other.idents() == []  # still owned by the main thread
        kq.detach()
        # the level-triggered one is re-homed; the EV_CLEAR one waits for a new edge
        assert _wait_for(lambda: s.fileno() in other.idents())
        time.sleep(0.05)
        assert c.fileno() not in other.idents()
        cpeer.send(b"z")
        assert _wait_for(lambda: c.fileno() in other.idents())
        other.halt()
        assert not other.errors
