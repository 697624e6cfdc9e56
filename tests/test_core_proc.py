"""EVFILT_PROC conformance (NOTE_EXIT).

From FreeBSD tests/sys/kqueue/libkqueue/proc.c (add, delete, NOTE_EXIT with status) and
kqueue(2): on exit the event has EV_EOF | EV_ONESHOT and data = the wait(2) status; a
missing pid is ESRCH; NOTE_FORK / NOTE_EXEC / NOTE_TRACK need the proc connector on Linux
and are rejected (docs/semantics.md §2.14 says ENOTSUP; EINVAL accepted).  skqueue must never reap
the child: the test itself waitpid()s it afterwards.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

from skqueue import (
    EV_ADD,
    EV_DELETE,
    EV_EOF,
    EV_ONESHOT,
    EVFILT_PROC,
    NOTE_EXEC,
    NOTE_EXIT,
    NOTE_FORK,
    NOTE_TRACK,
)

SH = "/bin/sh"


def spawn(script: str) -> int:
    return os.posix_spawn(SH, [SH, "-c", script], dict(os.environ))


def reap(pid: int) -> int:
    """waitpid the child ourselves; fails with ChildProcessError if someone reaped it."""
    _, status = os.waitpid(pid, 0)
    return status


def test_exit_status_and_not_reaped(kq, h):
    pid = spawn("sleep 0.05; exit 3")
    try:
        h.change(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT, udata="child")
        ev = h.wait_one(kq, pid, EVFILT_PROC, timeout=3.0)
        assert ev is not None
        assert ev.flags & EV_EOF
        assert ev.flags & EV_ONESHOT
        assert ev.fflags & NOTE_EXIT
        assert ev.udata == "child"
        assert os.WIFEXITED(ev.data) and os.WEXITSTATUS(ev.data) == 3
    finally:
        status = reap(pid)  # the kqueue must not have reaped the child
    assert os.WEXITSTATUS(status) == 3
    # One-shot: gone after delivery.
    assert h.poll(kq) == []
    assert h.change_err(kq, pid, EVFILT_PROC, EV_DELETE) == errno.ENOENT


def test_killed_child_status(kq, h):
    pid = spawn("sleep 5")
    try:
        h.change(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT)
        assert h.poll(kq) == []
        os.kill(pid, 9)
        ev = h.wait_one(kq, pid, EVFILT_PROC, timeout=3.0)
        assert ev is not None
        assert os.WIFSIGNALED(ev.data) and os.WTERMSIG(ev.data) == 9
    finally:
        reap(pid)


def test_zombie_target_fires_at_once(kq, h):
    pid = spawn("exit 5")
    # Wait until the child is a zombie without reaping it.
    os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    try:
        h.change(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT)
        ev = h.wait_one(kq, pid, EVFILT_PROC, timeout=1.0)
        assert ev is not None and ev.flags & EV_EOF
        assert os.WEXITSTATUS(ev.data) == 5
    finally:
        reap(pid)


def test_delete_before_exit(kq, h):
    pid = spawn("sleep 0.1")
    try:
        h.change(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT)
        h.change(kq, pid, EVFILT_PROC, EV_DELETE)
    finally:
        reap(pid)
    time.sleep(0.02)
    assert h.poll(kq) == []


def test_missing_pid_is_esrch(kq, h):
    pid = spawn("exit 0")
    reap(pid)  # now the pid does not exist (reuse within the test is very unlikely)
    assert h.change_err(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT) == errno.ESRCH


@pytest.mark.parametrize("note", [NOTE_FORK, NOTE_EXEC, NOTE_TRACK])
def test_unsupported_notes_rejected(kq, h, note, unsupported_errnos):
    pid = spawn("sleep 0.2")
    try:
        err = h.change_err(kq, pid, EVFILT_PROC, EV_ADD, NOTE_EXIT | note)
        assert err in unsupported_errnos
    finally:
        reap(pid)


def test_two_children_two_events(kq, h):
    pids = [spawn("exit 1"), spawn("sleep 0.05; exit 2")]
    try:
        for p in pids:
            h.change(kq, p, EVFILT_PROC, EV_ADD, NOTE_EXIT, udata=p)
        got: dict[int, int] = {}
        deadline = time.monotonic() + 3.0
        while len(got) < 2 and time.monotonic() < deadline:
            for e in kq.control(None, 4, 0.2):
                assert e.udata == e.ident
                got[e.ident] = os.WEXITSTATUS(e.data)
        assert got == {pids[0]: 1, pids[1]: 2}
    finally:
        for p in pids:
            reap(p)
