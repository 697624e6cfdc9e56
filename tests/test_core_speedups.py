"""The optional C helper and its pure-Python fallback must agree exactly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from skqueue.filters import fd as fdmod

speedups = pytest.importorskip("skqueue._speedups", reason="C helper not built")
IMPLS = [fdmod.py_probe, speedups.probe]


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
        assert probe(r, *_ident(r), fdmod.PROBE_READ) == 5
        assert probe(b.fileno(), *_ident(b.fileno()), fdmod.PROBE_READ) == 3
        assert probe(b.fileno(), *_ident(b.fileno()), fdmod.PROBE_IDENT) == 0
        # Unsent bytes: loopback acknowledges at once, so the queue is empty again.
        assert probe(a.fileno(), *_ident(a.fileno()), fdmod.PROBE_OUTQ) >= 0
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
    assert probe(r, dev, ino, fdmod.PROBE_READ) == -1  # closed
    a, b = socket.socketpair()  # likely reuses the number; either way identity differs
    try:
        fd = a.fileno()
        assert probe(fd, dev, ino, fdmod.PROBE_READ) == -1
        assert probe(fd, *_ident(fd), fdmod.PROBE_READ) == 0
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
        assert probe(fd, *_ident(fd), fdmod.PROBE_OUTQ) == -2
    finally:
        os.close(fd)


def test_pure_mode_runs_the_core():
    """SKQUEUE_PURE=1 forces the fallback; the core must behave the same."""
    code = (
        "import socket, skqueue as s\n"
        "from skqueue.filters import fd\n"
        "assert fd.probe is fd.py_probe\n"
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
