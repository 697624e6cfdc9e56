"""Descriptor close and reuse behind the kqueue's back (docs/semantics.md §2.12).

FreeBSD drops every knote of a descriptor on close(2).  On Linux skqueue cannot see
os.close(), and epoll keeps a registration as long as any duplicate of the open file
description lives; libkqueue documents the resulting bug (stale events for a reused fd
number).  skqueue must do better: record the file identity at registration and re-check
it before delivery, and offer kq.forget(fd).

In every test the OLD file is kept alive through a dup() so that its readiness still
reaches the kernel-side registration: that is exactly the hazardous case.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time

import pytest

from skqueue import EV_ADD, EV_CLEAR, EV_DELETE, EVFILT_READ, EVFILT_WRITE


class Reused:
    """Set up: READ on socket fd N, then N closed and re-pointed at a new pipe/socket."""

    def __init__(self, kq, h, new_kind: str, clear: bool = False):
        self.old_a, self.old_peer = socket.socketpair()
        self.old_a.setblocking(False)
        self.n = self.old_a.fileno()
        flags = EV_ADD | (EV_CLEAR if clear else 0)
        h.change(kq, self.n, EVFILT_READ, flags, udata="old")
        # Keep the old open file description alive, then close N behind the kqueue's back by
        # atomically re-pointing the number at a new file with dup2() (a plain close()
        # followed by open() could hand N to another thread in between).
        self.keep = os.dup(self.n)
        self.old_a.detach()
        if new_kind == "pipe":
            r, w = os.pipe()
            os.dup2(r, self.n)
            os.close(r)
            os.set_blocking(self.n, False)
            self.new_write = lambda data: os.write(w, data)
            self._closers = [lambda: os.close(w)]
        else:
            s1, s2 = socket.socketpair()
            os.dup2(s1.fileno(), self.n)
            s1.close()
            os.set_blocking(self.n, False)
            self.new_write = s2.send
            self._closers = [s2.close]

    def close(self) -> None:
        for c in self._closers:
            c()
        for fd in (self.n, self.keep):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.old_peer.close()


@pytest.fixture(params=["pipe", "socket"])
def reused(request, kq, h):
    r = Reused(kq, h, request.param)
    try:
        yield r
    finally:
        r.close()


def test_no_stale_event_from_old_file(kq, h, reused):
    reused.old_peer.send(b"stale!")  # the OLD file becomes readable
    time.sleep(0.05)
    evs = kq.control(None, 8, 0.2)
    assert h.for_ident(evs, reused.n) == [], evs


def test_no_stale_event_when_old_was_already_queued(kq, h):
    # The old socket is readable (knote queued) before N is re-pointed at a new pipe.
    old_a, old_peer = socket.socketpair()
    n = old_a.fileno()
    try:
        h.change(kq, n, EVFILT_READ, udata="old")
        old_peer.send(b"queued")
        assert h.wait_one(kq, n, EVFILT_READ) is not None  # level: stays queued
        keep = os.dup(n)
        old_a.detach()
        pr, pw = os.pipe()
        os.dup2(pr, n)
        os.close(pr)
        try:
            evs = kq.control(None, 8, 0.1)
            assert h.for_ident(evs, n) == [], evs
        finally:
            os.close(pw)
            os.close(n)
            os.close(keep)
    finally:
        old_peer.close()


def test_new_file_readiness_after_readd(kq, h, reused):
    # (b) EV_ADD on the same number registers the NEW file and reports its readiness.
    h.change(kq, reused.n, EVFILT_READ, udata="new")
    time.sleep(0.02)
    assert h.for_ident(h.poll(kq), reused.n) == []  # new file is empty
    reused.old_peer.send(b"old-data")  # must not show up as the new file's readiness
    time.sleep(0.05)
    assert h.for_ident(kq.control(None, 8, 0.1), reused.n) == []
    reused.new_write(b"12345")
    ev = h.wait_one(kq, reused.n, EVFILT_READ)
    assert ev is not None
    assert ev.udata == "new"
    assert ev.data == 5  # the new file's byte count, not the old one's
    # (c) EV_DELETE then works, and nothing more is reported.
    h.change(kq, reused.n, EVFILT_READ, EV_DELETE)
    reused.old_peer.send(b"more")
    reused.new_write(b"more")
    time.sleep(0.05)
    assert h.for_ident(kq.control(None, 8, 0.1), reused.n) == []


def test_delete_after_reuse_without_readd(kq, h, reused):
    # EV_DELETE of the stale registration: ENOENT (already dropped) or success; afterwards
    # nothing is reported and a fresh EV_ADD works.
    err = h.change_err(kq, reused.n, EVFILT_READ, EV_DELETE)
    assert err in (0, errno.ENOENT)
    reused.old_peer.send(b"x")
    time.sleep(0.05)
    assert h.for_ident(kq.control(None, 8, 0.1), reused.n) == []
    h.change(kq, reused.n, EVFILT_READ)
    reused.new_write(b"ab")
    ev = h.wait_one(kq, reused.n, EVFILT_READ)
    assert ev is not None and ev.data == 2


def test_closed_descriptor_dropped_silently(kq, h):
    a, b = socket.socketpair()
    n = a.fileno()
    try:
        h.change(kq, n, EVFILT_READ)
        b.send(b"x")
        assert h.wait_one(kq, n, EVFILT_READ) is not None
        keep = os.dup(n)
        a.close()  # closed, number not reused (keep holds the file open)
        try:
            evs = kq.control(None, 8, 0.1)  # no exception, no event for n
            assert h.for_ident(evs, n) == []
        finally:
            os.close(keep)
    finally:
        b.close()


def test_forget_drops_knotes(kq, h, sockpair):
    a, b = sockpair
    n = a.fileno()
    h.change(kq, n, EVFILT_READ)
    h.change(kq, n, EVFILT_WRITE)
    b.send(b"x")
    kq.forget(n)
    time.sleep(0.02)
    assert h.for_ident(kq.control(None, 8, 0.05), n) == []
    assert h.change_err(kq, n, EVFILT_READ, EV_DELETE) == errno.ENOENT
    assert h.change_err(kq, n, EVFILT_WRITE, EV_DELETE) == errno.ENOENT
    # The descriptor can be registered again afterwards.
    h.change(kq, n, EVFILT_READ)
    ev = h.wait_one(kq, n, EVFILT_READ)
    assert ev is not None and ev.data == 1


def test_forget_then_close_and_reuse(kq, h):
    a, b = socket.socketpair()
    n = a.fileno()
    h.change(kq, n, EVFILT_READ)
    keep = os.dup(n)
    kq.forget(n)
    a.detach()
    r, w = os.pipe()
    os.dup2(r, n)  # closes the old N and reuses the number atomically
    os.close(r)
    try:
        b.send(b"old")
        time.sleep(0.05)
        assert h.for_ident(kq.control(None, 8, 0.1), n) == []
        h.change(kq, n, EVFILT_READ)
        os.write(w, b"new!")
        ev = h.wait_one(kq, n, EVFILT_READ)
        assert ev is not None and ev.data == 4
    finally:
        for fd in (w, n, keep):
            os.close(fd)
        b.close()


def test_forget_unknown_fd_is_harmless(kq, h):
    kq.forget(h.free_fd_number())


def test_edge_triggered_knote_after_reuse(kq, h):
    r = Reused(kq, h, "socket", clear=True)
    try:
        r.old_peer.send(b"stale")
        time.sleep(0.05)
        assert h.for_ident(kq.control(None, 8, 0.1), r.n) == []
        h.change(kq, r.n, EVFILT_READ, EV_ADD | EV_CLEAR, udata="new")
        r.new_write(b"zz")
        ev = h.wait_one(kq, r.n, EVFILT_READ)
        assert ev is not None and ev.data == 2 and ev.udata == "new"
    finally:
        r.close()
