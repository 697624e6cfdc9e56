"""The optional C helper and its pure-Python fallback must agree exactly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from skqueue import _scan as scanmod

speedups = pytest.importorskip("skqueue._speedups", reason="C helper not built")
IMPLS = [scanmod.py_probe, speedups.probe]


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


@pytest.mark.parametrize("probe", IMPLS, ids=["python", "c"])
def test_probe_pipe_and_socket(probe):
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        os.write(w, b"12345")
        a.send(b"abc")
        assert probe(r, *_ident(r), scanmod.PROBE_READ) == 5
        assert probe(b.fileno(), *_ident(b.fileno()), scanmod.PROBE_READ) == 3
        assert probe(b.fileno(), *_ident(b.fileno()), scanmod.PROBE_IDENT) == 0
        # Unsent bytes: loopback acknowledges at once, so the queue is empty again.
        assert probe(a.fileno(), *_ident(a.fileno()), scanmod.PROBE_OUTQ) >= 0
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


@pytest.mark.parametrize("probe", IMPLS, ids=["python", "c"])
def test_probe_detects_closed_and_reused(probe):
    r, w = os.pipe()
    dev, ino = _ident(r)
    os.close(r)
    assert probe(r, dev, ino, scanmod.PROBE_READ) == -1  # closed
    a, b = socket.socketpair()  # likely reuses the number; either way identity differs
    try:
        fd = a.fileno()
        assert probe(fd, dev, ino, scanmod.PROBE_READ) == -1
        assert probe(fd, *_ident(fd), scanmod.PROBE_READ) == 0
    finally:
        os.close(w)
        a.close()
        b.close()


@pytest.mark.parametrize("probe", IMPLS, ids=["python", "c"])
def test_probe_unsupported_ioctl(probe, tmp_path):
    p = tmp_path / "d"
    p.mkdir()
    fd = os.open(p, os.O_RDONLY)
    try:
        assert probe(fd, *_ident(fd), scanmod.PROBE_OUTQ) == -2
    finally:
        os.close(fd)


def test_pure_mode_runs_the_core():
    """SKQUEUE_PURE=1 forces the fallback; the core must behave the same."""
    code = (
        "import socket, skqueue as s\n"
        "from skqueue import _scan\n"
        "assert _scan.IMPLEMENTATION == 'python' and _scan.probe is _scan.py_probe\n"
        "a, b = socket.socketpair(); a.send(b'xyz')\n"
        "kq = s.kqueue()\n"
        "ev = kq.control([s.kevent(b, s.EVFILT_READ, s.EV_ADD)], 4, 1)\n"
        "assert len(ev) == 1 and ev[0].data == 3, ev\n"
        "a.close(); ev = kq.control(None, 4, 1)\n"
        "assert ev and ev[0].flags & s.EV_EOF, ev\n"
    )
    env = dict(os.environ, SKQUEUE_PURE="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


# -- the knote lock ---------------------------------------------------------------------


def test_lock_is_a_plain_mutex():
    lk = speedups.Lock()
    assert not lk.locked()
    assert lk.acquire() is True and lk.locked()
    assert lk.acquire(blocking=False) is False  # not reentrant
    assert lk.acquire(timeout=0.01) is False
    lk.release()
    assert not lk.locked()
    with pytest.raises(RuntimeError):
        lk.release()
    with lk:
        assert lk.locked()
    assert not lk.locked()
    with pytest.raises(ValueError):
        lk.acquire(False, 1.0)
    with pytest.raises(ValueError):
        lk.acquire(timeout=-2)
    with pytest.raises(TypeError):
        speedups.Lock(1)


def test_lock_excludes_and_waits_without_the_gil():
    import threading
    import time

    lk = speedups.Lock()
    counter = [0]

    def bump() -> None:
        for _ in range(2000):
            with lk:
                v = counter[0]
                if v % 97 == 0:
                    time.sleep(0)  # let another thread in mid-section
                counter[0] = v + 1

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert counter[0] == 8000

    # A thread blocked in acquire() must let the holder (which needs the GIL) run.
    lk.acquire()
    got = threading.Event()

    def waiter() -> None:
        with lk:
            got.set()

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.05)
    assert not got.is_set()
    lk.release()
    assert got.wait(2)
    t.join(2)


def test_knotes_use_the_c_lock():
    # ... when the helper is on (SKQUEUE_PURE=1 turns every C path off together).
    import threading

    from skqueue._accel import speedups as active
    from skqueue._scan import new_lock

    assert new_lock is (threading.Lock if active is None else speedups.Lock)


# -- the C scan and the pure-Python scan give the same events ---------------------------

_SCENARIO = r"""
import os, socket, sys
import skqueue as s
from skqueue import _scan
kq = s.kqueue()
out = []
pipes = [os.pipe() for _ in range(6)]
for i, (r, w) in enumerate(pipes):
    if i % 3:
        os.write(w, b"x" * (10 * i))
a, b = socket.socketpair()
a.send(b"hello")
c, d = socket.socketpair()
c.close()  # EOF on d
e, f = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
e.send(b""); e.send(b"abc")
names = {r: "p%d" % i for i, (r, _) in enumerate(pipes)}
names.update({b.fileno(): "sock", d.fileno(): "eof", f.fileno(): "dgram"})
changes = [s.kevent(fdn, s.EVFILT_READ, s.EV_ADD) for fdn in names]
kq.control(changes, 0)
for rnd in range(3):
    evs = kq.control(None, 64, 0.2)
    out.append(sorted((names[e.ident], e.filter, e.flags, e.data) for e in evs))
    if rnd == 0:
        os.read(pipes[1][0], 4)   # partly drained
        os.read(pipes[2][0], 100)  # drained: no longer readable
        os.write(pipes[0][1], b"new")
    if rnd == 1:
        os.close(pipes[4][0])     # closed behind the kqueue's back
print(repr(out))
print("impl", "pure" if _scan.IMPLEMENTATION == "python" else "c")
"""


def test_c_and_pure_scans_agree():
    runs = {}
    for pure in (False, True):
        env = dict(os.environ)
        env.pop("SKQUEUE_PURE", None)
        if pure:
            env["SKQUEUE_PURE"] = "1"
        r = subprocess.run(
            [sys.executable, "-c", _SCENARIO], env=env, capture_output=True, text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        events, impl = r.stdout.strip().splitlines()
        assert impl == ("impl pure" if pure else "impl c")
        runs[pure] = events
    assert runs[False] == runs[True]
    assert "'p2'" in runs[False] and "'dgram'" in runs[False]


def test_constants_agree_and_a_stale_build_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from skqueue import _accel
    from skqueue._status import KN_PROCESSING

    if _accel.speedups is None:
        pytest.skip("SKQUEUE_PURE: the helper is not in use")
    assert speedups.constants()["KN_PROCESSING"] == KN_PROCESSING
    wrong = dict(speedups.constants(), KN_PROCESSING=0x40)
    monkeypatch.setattr(speedups, "constants", lambda: wrong)
    with pytest.raises(ImportError, match="KN_PROCESSING: C 64, Python 0x80"):
        _accel.verify({"KN_PROCESSING": KN_PROCESSING})


def test_require_c_refuses_the_silent_fallback() -> None:
    code = "import sys; sys.modules['skqueue._speedups'] = None; import skqueue"
    # CI exports SKQUEUE_REQUIRE_C itself: start from an environment with neither variable
    env = {k: v for k, v in os.environ.items() if k not in ("SKQUEUE_PURE", "SKQUEUE_REQUIRE_C")}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr  # without the expectation: the pure path
    env["SKQUEUE_REQUIRE_C"] = "1"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert r.returncode != 0 and "SKQUEUE_REQUIRE_C is set" in r.stderr


def test_batch_pop_and_requeue_twins_agree() -> None:
    """The C take_batch and requeue against _scan's Python references, on knotes in
    every state the requeue meets: not claimed any more, claimed and free, claimed and
    owned by this kevq, claimed and owned by another (parked)."""
    if scanmod.speedups is None:
        pytest.skip("the C helper is not in use (it is bound to the classes only then)")
    from skqueue._kevq import Kevq
    from skqueue._knote import Knote
    from skqueue._status import KN_PROCESSING

    def world() -> tuple[Kevq, list[Knote]]:
        q, other = Kevq(1, "q", 0), Kevq(2, "other", 0)
        kns = [Knote(None, i, -1, None) for i in range(4)]  # type: ignore[arg-type]
        for kn, owner in zip(kns, (None, None, q, other), strict=True):
            kn.queued_on = q  # claimed by q's scan
            if owner is not None:
                kn.status = KN_PROCESSING
                kn.owner = owner
        kns[0].queued_on = None  # queued elsewhere meanwhile, or deleted: not appended
        return q, kns

    results = []
    for take, requeue in ((scanmod.py_take_batch, scanmod.py_requeue),
                          (speedups.take_batch, speedups.requeue)):
        q, kns = world()
        parked = requeue(q.normal, kns, q)
        state = [(kn.ident, kn.parked) for kn in q.normal]
        batch, unparked = take(q.normal, 8, q)
        results.append((parked, state, [kn.ident for kn in batch], unparked,
                        [(kn.queued_on, kn.parked) for kn in batch]))
    assert results[0] == results[1]
    assert results[0] == (1, [(1, False), (2, False), (3, True)], [1, 2, 3], 1,
                          [(None, False)] * 3)
