"""SKQ realtime share (docs/semantics.md §3.14, D7, §5.1 "kevent(realtime)").

The authors' test: 8 readable socketpairs, sockets 4-7 registered ``EV_REALTIME``,
each holding one unread byte; for share = 1..100 set ``KQTUNE_RTSHARE`` and fetch 4
events: exactly the first ``ceil(4 * share / 100)`` carry ``EV_REALTIME``.  It runs on a
legacy kqueue (as in the original) and on a multi-mode one (one thread).  Added: share 0
(no reserved realtime slots) and work conservation (D7: with only realtime events
queued, every slot is still filled).
"""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Iterator

import pytest

import skqueue
from skqueue import (
    EV_ADD,
    EV_REALTIME,
    EVFILT_READ,
    KQTUNE_FREQ,
    KQTUNE_MAKE,
    KQTUNE_RTSHARE,
    kevent,
)

pytestmark = pytest.mark.timeout(60)

NRT = 4
NNORM = 4


@pytest.fixture
def pairs() -> Iterator[list[tuple[socket.socket, socket.socket]]]:
    ps = []
    for _ in range(NRT + NNORM):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        a.setblocking(False)
        b.setblocking(False)
        ps.append((a, b))
    try:
        yield ps
    finally:
        for a, b in ps:
            a.close()
            b.close()


def _make_kq(mode: str) -> skqueue.kqueue:
    kq = skqueue.kqueue(tunables=skqueue.Tunables(seed=1))
    if mode != "legacy":
        kq.set_multi(skqueue.parse_sched(mode))
    return kq


def _register(kq: skqueue.kqueue, pairs: list[tuple[socket.socket, socket.socket]]) -> set[int]:
    """Sockets 0-3 normal, 4-7 EV_REALTIME, each with one unread byte; return rt idents."""
    rt = set()
    changes = []
    for i, (a, b) in enumerate(pairs):
        b.send(b"x")
        flags = EV_ADD
        if i >= NNORM:
            flags |= EV_REALTIME
            rt.add(a.fileno())
        changes.append(kevent(a, EVFILT_READ, flags))
    kq.control(changes, 0)
    return rt


@pytest.mark.parametrize("mode", ["legacy", "rand", "best2", "ws"])
def test_realtime_share_1_to_100(mode: str, pairs: list[tuple[socket.socket, socket.socket]]
                                 ) -> None:
    with _make_kq(mode) as kq:
        rt = _register(kq, pairs)
        for share in range(1, 101):
            kq.tune(KQTUNE_MAKE(KQTUNE_RTSHARE, share))
            evs = kq.control(None, 4, 1.0)
            assert len(evs) == 4, (share, evs)
            want = math.ceil(4 * share / 100)
            flags = [bool(e.flags & EV_REALTIME) for e in evs]
            assert flags == [True] * want + [False] * (4 - want), (share, evs)
            # the flag is echoed exactly for the sockets registered realtime
            for e in evs:
                assert (e.ident in rt) == bool(e.flags & EV_REALTIME)
                assert e.data == 1


@pytest.mark.parametrize("mode", ["legacy", "rand"])
def test_realtime_share_zero_reserves_nothing(
    mode: str, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    with _make_kq(mode) as kq:
        _register(kq, pairs)
        kq.tune(KQTUNE_MAKE(KQTUNE_RTSHARE, 0))
        for _ in range(10):
            evs = kq.control(None, 4, 1.0)
            assert len(evs) == 4
            assert not any(e.flags & EV_REALTIME for e in evs), evs
        # With 8 slots, the 4 normal events come first, then the realtime ones fill in.
        evs = kq.control(None, 8, 1.0)
        assert [bool(e.flags & EV_REALTIME) for e in evs] == [False] * 4 + [True] * 4


@pytest.mark.parametrize("mode", ["legacy", "rand"])
@pytest.mark.parametrize("share", [0, 1, 25, 50, 100])
def test_realtime_work_conserving(
    mode: str, share: int, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """Only realtime events queued: a call returns all of them whatever the share (D7)."""
    with _make_kq(mode) as kq:
        changes = []
        for i, (a, b) in enumerate(pairs):
            if i >= NNORM:
                b.send(b"x")
                changes.append(kevent(a, EVFILT_READ, EV_ADD | EV_REALTIME))
            else:
                changes.append(kevent(a, EVFILT_READ, EV_ADD))  # registered, but idle
        kq.control(changes, 0)
        kq.tune(KQTUNE_MAKE(KQTUNE_RTSHARE, share))
        for _ in range(5):
            evs = kq.control(None, 8, 1.0)
            assert len(evs) == NRT, (share, evs)
            assert all(e.flags & EV_REALTIME for e in evs)


def test_realtime_counters_in_dump(pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    with _make_kq("rand") as kq:
        _register(kq, pairs)
        kq.tune(KQTUNE_MAKE(KQTUNE_RTSHARE, 50))
        got_rt = 0
        for _ in range(20):
            evs = kq.control(None, 4, 1.0)
            got_rt += sum(1 for e in evs if e.flags & EV_REALTIME)
        assert got_rt == 20 * 2
        d = kq.dump()
        json.dumps(d)
        assert d["rtshare"] == 50
        assert sum(q["total_realtime"] for q in d["kevqs"]) == got_rt
        assert sum(q["rt_knotes"] for q in d["kevqs"]) <= NRT


def test_tfreq_caps_batch_only_in_multi_mode(
    pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """A huge target frequency caps every batch to 1 event in multi mode, never in legacy."""
    for mode in ("legacy", "rand"):
        with _make_kq(mode) as kq:
            _register(kq, pairs)
            kq.tune(KQTUNE_MAKE(KQTUNE_FREQ, 65535))
            sizes = []
            for _ in range(30):
                sizes.append(len(kq.control(None, 8, 1.0)))
                time.sleep(0.001)  # >= 125 us of "work" per event in the estimator
            if mode == "legacy":
                assert sizes == [8] * 30
            else:
                # once the estimator has a sample: 1 s / (avg_lat * 65535) < 1 -> 1 event
                assert sizes[0] == 8
                assert set(sizes[5:]) == {1}, sizes
