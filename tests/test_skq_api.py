"""SKQ control surface: set_multi / tune / dump, and pollability (SKQ-SPEC 3.1-3.4,
3.18, D4, D8, D9, D13; 5.3 gaps 7 and 12).

* ``set_multi`` only before first use (any ``control()``), only once, and only with a
  valid word (D4): otherwise ``OSError(EINVAL)`` and the kqueue is unchanged.
* ``tune``: RTSHARE 0..100, FREQ 0..65535, other objects ``EINVAL``; allowed at any
  time, in both modes, and does not count as first use.
* ``dump()``: JSON-serialisable, SKQ field names, consistent counters
  (``total_fallbacks == total_sched`` under the random policy), a kqdom tree exactly
  for the CPU/QUEUE policies.
* ``fileno()`` in multi mode: ``select()`` says readable when events are pending and
  not otherwise; a multi-mode kqueue inside a kqueue is readable with ``data`` = the
  number of available events (D9); a legacy one too.
"""

from __future__ import annotations

import errno
import json
import select
import socket
import threading
import time
from typing import Any

import pytest

import skqueue
from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EVFILT_READ,
    KQ_SCHED_BEST,
    KQ_SCHED_CPU,
    KQ_SCHED_FEAT_WS,
    KQ_SCHED_QUEUE,
    KQSCHED_MAKE,
    KQTUNE_FREQ,
    KQTUNE_MAKE,
    KQTUNE_RTSHARE,
    kevent,
)

pytestmark = pytest.mark.timeout(60)

LABELS = ["rand", "queue0", "queue2", "queue2_ws", "cpu0", "cpu2", "ws1", "best2", "best2_ws",
          "q0_ws", "cpu0_ws", "cpu2_ws"]


@pytest.fixture
def pairs(pair_factory: Any) -> list[tuple[socket.socket, socket.socket]]:
    return pair_factory(8)


def _kq() -> skqueue.kqueue:
    return skqueue.kqueue(tunables=skqueue.Tunables(seed=1),
                          topology=skqueue.Topology.synthetic(2, 4, 1))


def _einval(fn: object, *args: object) -> None:
    with pytest.raises(OSError) as ei:
        fn(*args)  # type: ignore[operator]
    assert ei.value.errno == errno.EINVAL


# ------------------------------------------------------------------ set_multi


@pytest.mark.parametrize(
    "first_use",
    ["register", "register_only_empty", "poll", "wait", "none_zero"],
)
def test_set_multi_after_first_use_is_einval(
    first_use: str, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    a, _ = pairs[0]
    with _kq() as kq:
        if first_use == "register":
            kq.control([kevent(a, EVFILT_READ, EV_ADD)], 0)
        elif first_use == "register_only_empty":
            kq.control([], 0)
        elif first_use == "poll":
            kq.control(None, 1, 0)
        elif first_use == "wait":
            kq.control(None, 1, 0.01)
        else:
            kq.control(None, 0)
        _einval(kq.set_multi, 0)
        assert not kq.multi


def test_set_multi_twice_is_einval() -> None:
    with _kq() as kq:
        kq.set_multi(skqueue.parse_sched("best2"))
        assert kq.multi
        _einval(kq.set_multi, 0)
        _einval(kq.set_multi, skqueue.parse_sched("best2"))
        assert kq.dump()["policy"] == "best2"


@pytest.mark.parametrize(
    "word",
    [
        0x03,  # QUEUE|CPU combination
        0x05,
        0x06,
        0x07,
        0x08,  # unknown policy
        0xFF,
        KQSCHED_MAKE(0, 0, KQ_SCHED_FEAT_WS, 0),  # stealing 0 per attempt
        KQSCHED_MAKE(KQ_SCHED_BEST, 2, KQ_SCHED_FEAT_WS, 0),
        KQSCHED_MAKE(0, 0, 0x02, 0),  # unknown feature
        KQSCHED_MAKE(0, 0, 0x03, 1),
        KQSCHED_MAKE(KQ_SCHED_BEST, 0, 0, 0),  # best of 0
        -1,
        2**32,
    ],
)
def test_set_multi_bad_word_is_einval_and_harmless(word: int) -> None:
    with _kq() as kq:
        _einval(kq.set_multi, word)
        assert not kq.multi
        # still unused: a good word is accepted afterwards
        kq.set_multi(0)
        assert kq.multi


@pytest.mark.parametrize(
    "word",
    [
        0,
        KQSCHED_MAKE(KQ_SCHED_QUEUE, 0, 0, 0),
        KQSCHED_MAKE(KQ_SCHED_CPU, 2, 0, 0),
        KQSCHED_MAKE(KQ_SCHED_BEST, 2, 0, 0),
        KQSCHED_MAKE(KQ_SCHED_BEST, 255, KQ_SCHED_FEAT_WS, 255),  # D4/D6: any N, any K
        KQSCHED_MAKE(0, 0, KQ_SCHED_FEAT_WS, 8),
        KQSCHED_MAKE(0, 77, 0, 0),  # sargs ignored by random
    ],
)
def test_set_multi_good_words(word: int, pairs: list[tuple[socket.socket, socket.socket]]
                              ) -> None:
    a, b = pairs[0]
    with _kq() as kq:
        kq.set_multi(word)
        kq.control([kevent(a, EVFILT_READ, EV_ADD)], 0)
        b.send(b"x")
        evs = kq.control(None, 1, 1.0)
        assert [e.ident for e in evs] == [a.fileno()]


def test_policy_labels_match_authors_words() -> None:
    words = {"queue0": 0x1, "cpu0": 0x2, "queue2": 0x201, "cpu2": 0x202, "best2": 0x204,
             "ws1": 0x01010000, "q0_ws": 0x01010001, "q2_ws": 0x01010201,
             "queue2_ws": 0x01010201, "cpu0_ws": 0x01010002, "cpu2_ws": 0x01010202,
             "best2_ws": 0x01010204, "rand": 0}
    for label, word in words.items():
        assert skqueue.parse_sched(label) == word, label


# ------------------------------------------------------------------ tune


@pytest.mark.parametrize("mode", ["legacy", "multi"])
def test_tune_values_and_errors(mode: str) -> None:
    with _kq() as kq:
        if mode == "multi":
            kq.set_multi(0)
        for share in (0, 1, 50, 100):
            kq.tune(KQTUNE_MAKE(KQTUNE_RTSHARE, share))
            assert kq.dump()["rtshare"] == share
        for freq in (0, 1, 9999, 65535):
            kq.tune(KQTUNE_MAKE(KQTUNE_FREQ, freq))
            assert kq.dump()["tfreq"] == freq
        assert KQTUNE_MAKE(KQTUNE_RTSHARE, 50) == 0x00320002
        _einval(kq.tune, KQTUNE_MAKE(KQTUNE_RTSHARE, 101))
        _einval(kq.tune, KQTUNE_MAKE(KQTUNE_RTSHARE, 0xFFFF))
        _einval(kq.tune, KQTUNE_MAKE(0, 1))
        _einval(kq.tune, KQTUNE_MAKE(3, 1))
        _einval(kq.tune, KQTUNE_MAKE(0xFFFF, 1))
        assert kq.dump()["rtshare"] == 100  # unchanged by the failures
        assert kq.dump()["tfreq"] == 65535


def test_tune_is_not_first_use_and_works_from_any_thread() -> None:
    with _kq() as kq:
        kq.tune(KQTUNE_MAKE(KQTUNE_RTSHARE, 10))
        kq.dump()
        kq.set_multi(0)  # neither tune nor dump counted as first use
        t = threading.Thread(target=kq.tune, args=(KQTUNE_MAKE(KQTUNE_RTSHARE, 20),))
        t.start()
        t.join(5)
        assert kq.dump()["rtshare"] == 20


# ------------------------------------------------------------------ dump


def _traffic(kq: skqueue.kqueue, pairs: list[tuple[socket.socket, socket.socket]],
             nthreads: int = 3, rounds: int = 30) -> list[dict[str, object]]:
    """Run ``nthreads`` workers that consume ``rounds`` x len(pairs) packets; return the
    dump taken while all of them are still alive."""
    by_fd = {a.fileno(): a for a, _ in pairs}
    kq.control([kevent(a, EVFILT_READ, EV_ADD) for a, _ in pairs], 0)
    total = rounds * len(pairs)
    lock = threading.Lock()
    done = [0]
    finished = threading.Event()
    release = threading.Event()
    ready = threading.Barrier(nthreads + 1)

    def worker() -> None:
        ready.wait(5)
        while not finished.is_set():
            for e in kq.control(None, 2, 0.02):
                try:
                    n = len(by_fd[e.ident].recv(1))
                except BlockingIOError:
                    n = 0
                with lock:
                    done[0] += n
                    if done[0] >= total:
                        finished.set()
        release.wait(5)

    ts = [threading.Thread(target=worker, daemon=True) for _ in range(nthreads)]
    for t in ts:
        t.start()
    ready.wait(5)
    time.sleep(0.05)
    for _ in range(rounds):
        for _, b in pairs:
            b.send(b"d")
        time.sleep(0.001)
    assert finished.wait(20), done
    time.sleep(0.05)
    d = [kq.dump()]
    release.set()
    for t in ts:
        t.join(5)
    return d


@pytest.mark.parametrize("label", LABELS)
def test_dump_consistent(label: str, pairs: list[tuple[socket.socket, socket.socket]]) -> None:
    with _kq() as kq:
        kq.set_multi(skqueue.parse_sched(label))
        d = _traffic(kq, pairs)[0]
    text = json.dumps(d)
    assert json.loads(text) == d
    sw = skqueue.parse_sched(label)
    assert int(str(d["sched"]), 16) == sw & 0xFF
    assert int(str(d["sargs"]), 16) == (sw >> 8) & 0xFF
    assert int(str(d["feat"]), 16) == (sw >> 16) & 0xFF
    assert int(str(d["fargs"]), 16) == (sw >> 24) & 0xFF
    kevqs = d["kevqs"]
    assert isinstance(kevqs, list)
    active = [q for q in kevqs if q["active"]]
    assert len(active) == 3
    fields = {"ptr", "knotes", "rt_knotes", "avg_rtlimit", "total_time", "total_syscall",
              "total_events", "avg_latency", "avg_events", "total_fallbacks",
              "total_mismatches", "total_worksteal", "total_worksteal_scan",
              "total_realtime", "total_sched", "last_kev", "last_nkev"}
    for q in kevqs:
        assert fields <= set(q), fields - set(q)
        assert q["total_fallbacks"] <= q["total_sched"]
        assert q["total_events"] >= 0 and q["total_syscall"] >= 0
    assert sum(q["total_events"] for q in kevqs) >= 30 * len(pairs)
    assert sum(q["total_sched"] for q in kevqs) > 0
    for key in ("rtshare", "tfreq", "total_sched_time", "cache_pen", "ws_interval",
                "ws_kn_factor", "log_threshold"):
        assert key in d
    if label.startswith(("rand", "ws")):
        # every placement of the random policy is a "fallback" placement
        assert all(q["total_fallbacks"] > 0 for q in active)
    elif label.startswith("best"):
        # best-of-N always finds a candidate among the active kevqs: never a fallback
        assert all(q["total_fallbacks"] == 0 for q in kevqs)
    else:
        # CPU/QUEUE fall back only when the chosen leaf holds no kevq
        assert sum(q["total_fallbacks"] for q in kevqs) <= sum(q["total_sched"] for q in kevqs)
    if "ws" not in label:
        assert all(q["total_worksteal"] == 0 for q in kevqs)
    if label.startswith(("cpu", "queue", "q0", "q2")):
        tree = d["kqdom"]
        assert isinstance(tree, dict)
        leaves = []
        stack = [tree]
        while stack:
            node = stack.pop()
            assert {"id", "level", "cpu_mask", "num_children", "num_active", "leaf",
                    "num_kevq"} <= set(node)
            assert node["num_children"] == len(node["children"])
            if node["leaf"]:
                leaves.append(node)
            stack.extend(node["children"])
        assert len(leaves) == 8  # synthetic(2, 4, 1)
        assert sum(n["num_kevq"] for n in leaves) == len(active)
        assert tree["cpu_mask"] == hex(0xFF)
    else:
        assert "kqdom" not in d


def test_dump_fallbacks_equal_sched_under_rand(
    pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    with _kq() as kq:
        kq.set_multi(0)
        d = _traffic(kq, pairs)[0]
    kevqs = d["kevqs"]
    assert isinstance(kevqs, list)
    assert sum(q["total_sched"] for q in kevqs) > 0
    assert [q["total_fallbacks"] for q in kevqs] == [q["total_sched"] for q in kevqs]


def test_dump_fallbacks_equal_sched_under_rand_edge_triggered(
    pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    """Without requeues (EV_CLEAR, one packet per activation) every enqueue is a
    placement, and under the random policy every placement is a fallback."""
    by_fd = {a.fileno(): a for a, _ in pairs}
    with _kq() as kq:
        kq.set_multi(0)
        kq.control([kevent(a, EVFILT_READ, EV_ADD | EV_CLEAR) for a, _ in pairs], 0)
        got = []
        for i in range(40):
            a, b = pairs[i % len(pairs)]
            b.send(b"x")
            evs = kq.control(None, 1, 1.0)
            got.extend(evs)
            for e in evs:
                by_fd[e.ident].recv(1)
        assert len(got) == 40
        d = kq.dump()
    q = d["kevqs"][0]
    assert q["total_sched"] == 40
    assert q["total_fallbacks"] == q["total_sched"]


def test_dump_legacy_and_tunables_reflected(pairs: list[tuple[socket.socket, socket.socket]]
                                            ) -> None:
    tun = skqueue.Tunables(cache_pen_ns=1234, ws_interval_ns=55_000, ws_kn_factor=3,
                           log_threshold=999, seed=5)
    with skqueue.kqueue(tunables=tun) as kq:
        a, b = pairs[0]
        kq.control([kevent(a, EVFILT_READ, EV_ADD)], 0)
        b.send(b"x")
        assert len(kq.control(None, 1, 1.0)) == 1
        d = kq.dump()
        json.dumps(d)
        assert d["multi"] is False
        assert d["policy"] == "legacy"
        assert (d["cache_pen"], d["ws_interval"], d["ws_kn_factor"], d["log_threshold"]) == (
            1234, 55_000, 3, 999)
        assert len(d["kevqs"]) == 1
        assert d["kevqs"][0]["total_events"] == 1


# ------------------------------------------------------------------ fileno / select / nesting


@pytest.mark.parametrize("label", ["rand", "ws", "cpu0"])
def test_fileno_select_in_multi_mode(
    label: str, pairs: list[tuple[socket.socket, socket.socket]]
) -> None:
    a, b = pairs[0]
    with _kq() as kq:
        kq.set_multi(skqueue.parse_sched(label))
        fd = kq.fileno()
        assert fd == kq.fileno()  # stable, kqueue-wide
        kq.control([kevent(a, EVFILT_READ, EV_ADD)], 0)
        assert kq.control(None, 1, 0) == []  # this thread's kevq is active now
        assert select.select([fd], [], [], 0.05)[0] == []
        b.send(b"x")
        assert select.select([fd], [], [], 1.0)[0] == [fd]
        evs = kq.control(None, 1, 0)
        assert [e.ident for e in evs] == [a.fileno()]
        a.recv(1)
        assert kq.control(None, 1, 0) == []  # releases and drops the (now empty) knote
        assert select.select([fd], [], [], 0.05)[0] == []
        # another thread's pending event also makes the shared descriptor readable
        got: list[int] = []
        go = threading.Event()
        done = threading.Event()

        def other() -> None:
            kq.control(None, 1, 0)  # activate a second kevq
            go.wait(5)
            got.extend(e.ident for e in kq.control(None, 1, 1.0))
            # Stay alive (owning what it got) until the main thread's call is over: a
            # thread's exit re-homes the unread level-triggered event (SKQ 3.16), which
            # the main thread would then rightly get too.
            done.wait(5)

        t = threading.Thread(target=other)
        t.start()
        time.sleep(0.05)
        b.send(b"y")
        assert select.select([fd], [], [], 1.0)[0] == [fd]
        go.set()
        evs = kq.control(None, 1, 0.2)
        done.set()
        t.join(5)
        assert len(evs) + len(got) == 1


@pytest.mark.parametrize("inner_mode", ["legacy", "rand", "best2_ws"])
def test_kqueue_in_kqueue(inner_mode: str, pairs: list[tuple[socket.socket, socket.socket]]
                          ) -> None:
    """D9: the inner kqueue is readable iff it has available events, data = their count."""
    with _kq() as inner, skqueue.kqueue() as outer:
        if inner_mode != "legacy":
            inner.set_multi(skqueue.parse_sched(inner_mode))
        inner.control([kevent(a, EVFILT_READ, EV_ADD) for a, _ in pairs[:3]], 0)
        assert inner.control(None, 1, 0) == []  # activates this thread's kevq
        outer.control([kevent(inner.fileno(), EVFILT_READ, EV_ADD)], 0)
        assert outer.control(None, 1, 0.05) == []
        for _, b in pairs[:3]:
            b.send(b"x")
        evs = outer.control(None, 1, 1.0)
        assert [(e.ident, e.filter) for e in evs] == [(inner.fileno(), EVFILT_READ)]
        assert evs[0].data == 3
        got = inner.control(None, 8, 0)
        assert len(got) == 3
        for a, _ in pairs[:3]:
            a.recv(1)
        assert inner.control(None, 8, 0) == []
        assert outer.control(None, 1, 0.05) == []


def test_threshold_dump_is_logged_once_per_second_per_kevq(caplog, monkeypatch) -> None:
    # SKQ's automatic dump when a scan starts on a kevq holding >= log_threshold knotes;
    # the original printed it on every scan.  Here: once, then a count of the scans since.
    import logging
    import os

    from skqueue import _kqueue as kqmod

    pipes = [os.pipe() for _ in range(5)]
    try:
        for _r, w in pipes:
            os.write(w, b"x")
        with skqueue.kqueue(tunables=skqueue.Tunables(log_threshold=3)) as kq, \
                caplog.at_level(logging.WARNING, logger="skqueue"):
            kq.control([kevent(r, EVFILT_READ, EV_ADD) for r, _ in pipes], 0)
            for _ in range(20):
                assert len(kq.control(None, 16, 0)) == 5
            dumps = [r for r in caplog.records if "log_threshold 3" in r.getMessage()]
            assert len(dumps) == 1
            assert "holds 5 knotes" in dumps[0].getMessage()
            assert "'kevqs'" in dumps[0].getMessage()  # the whole dump
            # A second later (the interval shrunk here), the next dump counts the rest.
            monkeypatch.setattr(kqmod, "_THRESHOLD_DUMP_EVERY_NS", 0)
            kq.control(None, 16, 0)
            dumps = [r for r in caplog.records if "log_threshold 3" in r.getMessage()]
            assert len(dumps) == 2
            assert "19 more such scans" in dumps[1].getMessage()
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
