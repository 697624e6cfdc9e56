"""EVFILT_VNODE conformance.

From FreeBSD tests/sys/kqueue/libkqueue/vnode.c (note_delete, note_write, note_attrib,
note_rename, note_link, disable_and_enable, EV_ONESHOT) and kqueue(2).  All knotes use
EV_CLEAR: a VNODE knote stays true while any recorded bit is set (kqueue(2)).
"""

from __future__ import annotations

import os
import time

import pytest

from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_ENABLE,
    EV_ONESHOT,
    EVFILT_VNODE,
    NOTE_ATTRIB,
    NOTE_CLOSE,
    NOTE_CLOSE_WRITE,
    NOTE_DELETE,
    NOTE_EXTEND,
    NOTE_LINK,
    NOTE_OPEN,
    NOTE_READ,
    NOTE_RENAME,
    NOTE_WRITE,
)

ALL = NOTE_WRITE | NOTE_EXTEND | NOTE_ATTRIB | NOTE_LINK | NOTE_RENAME | NOTE_DELETE


@pytest.fixture
def vfile(tmp_path):
    path = tmp_path / "watched"
    path.write_bytes(b"initial")
    fd = os.open(path, os.O_RDONLY)
    try:
        yield path, fd
    finally:
        os.close(fd)


def collect(kq, h, fd, want, timeout=1.0):
    """OR together fflags of VNODE events on fd until ``want`` bits are all seen."""
    seen = 0
    deadline = time.monotonic() + timeout
    while seen & want != want and time.monotonic() < deadline:
        for e in kq.control(None, 8, 0.1):
            if e.ident == fd and e.filter == EVFILT_VNODE:
                seen |= e.fflags
    return seen


def test_note_write_and_extend(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_WRITE | NOTE_EXTEND, udata="v")
    assert h.poll(kq) == []
    with open(path, "ab") as f:
        f.write(b"more")
    seen = collect(kq, h, fd, NOTE_WRITE | NOTE_EXTEND)
    assert seen & NOTE_WRITE
    assert seen & NOTE_EXTEND


def test_overwrite_without_growth_is_write_not_extend(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_WRITE | NOTE_EXTEND)
    wfd = os.open(path, os.O_WRONLY)
    try:
        os.write(wfd, b"INI")  # same size
    finally:
        os.close(wfd)
    seen = collect(kq, h, fd, NOTE_WRITE)
    assert seen & NOTE_WRITE
    assert not seen & NOTE_EXTEND


def test_note_attrib_on_chmod(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_ATTRIB)
    os.chmod(path, 0o600)
    assert collect(kq, h, fd, NOTE_ATTRIB) & NOTE_ATTRIB


def test_note_link(kq, h, vfile, tmp_path):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_LINK)
    os.link(path, tmp_path / "hardlink")
    assert collect(kq, h, fd, NOTE_LINK) & NOTE_LINK


def test_note_rename(kq, h, vfile, tmp_path):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_RENAME)
    os.rename(path, tmp_path / "renamed")
    assert collect(kq, h, fd, NOTE_RENAME) & NOTE_RENAME


def test_note_delete_on_unlink_while_open(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_DELETE)
    os.unlink(path)
    assert collect(kq, h, fd, NOTE_DELETE) & NOTE_DELETE


def test_unrequested_notes_not_reported(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_RENAME)
    with open(path, "ab") as f:
        f.write(b"x")
    os.chmod(path, 0o640)
    time.sleep(0.1)
    assert h.poll(kq) == []


def test_only_requested_bits_returned(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_ATTRIB)
    with open(path, "ab") as f:
        f.write(b"x")
    os.chmod(path, 0o640)
    seen = collect(kq, h, fd, NOTE_ATTRIB)
    assert seen == NOTE_ATTRIB


def test_clear_then_quiet(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, ALL)
    with open(path, "ab") as f:
        f.write(b"x")
    assert collect(kq, h, fd, NOTE_WRITE) & NOTE_WRITE
    time.sleep(0.05)
    h.poll(kq)  # absorb any late duplicate from the same write
    assert h.poll(kq) == []
    os.chmod(path, 0o600)
    assert collect(kq, h, fd, NOTE_ATTRIB) & NOTE_ATTRIB


def test_disable_and_enable(kq, h, vfile):
    # vnode.c test_kevent_vnode_disable_and_enable.  Unsure whether activity recorded while
    # disabled is reported on EV_ENABLE (FreeBSD keeps kn_fflags), so that call is drained
    # without assertions; we require silence while disabled and reports after enabling.
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_ATTRIB)
    h.change(kq, fd, EVFILT_VNODE, EV_DISABLE, NOTE_ATTRIB)
    os.chmod(path, 0o600)
    time.sleep(0.1)
    assert h.poll(kq) == []
    h.change(kq, fd, EVFILT_VNODE, EV_ENABLE, NOTE_ATTRIB)
    h.poll(kq)
    os.chmod(path, 0o644)
    assert collect(kq, h, fd, NOTE_ATTRIB) & NOTE_ATTRIB


def test_oneshot(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_ONESHOT, NOTE_ATTRIB)
    os.chmod(path, 0o600)
    assert collect(kq, h, fd, NOTE_ATTRIB) & NOTE_ATTRIB
    os.chmod(path, 0o644)
    time.sleep(0.1)
    assert h.poll(kq) == []


def test_delete_knote(kq, h, vfile):
    path, fd = vfile
    h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, ALL)
    h.change(kq, fd, EVFILT_VNODE, EV_DELETE)
    os.chmod(path, 0o600)
    time.sleep(0.1)
    assert h.poll(kq) == []


def test_vnode_on_directory(kq, h, tmp_path):
    # kqueue(2) NOTE_WRITE on a directory when an entry is added (FreeBSD VOP_CREATE posts
    # NOTE_WRITE on the parent).  Linux reports IN_CREATE there, not IN_MODIFY.
    d = tmp_path / "dir"
    d.mkdir()
    fd = os.open(d, os.O_RDONLY)
    try:
        h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, NOTE_WRITE)
        (d / "new").write_bytes(b"")
        assert collect(kq, h, fd, NOTE_WRITE) & NOTE_WRITE
    finally:
        os.close(fd)


def test_vnode_open_read_close_notes(kq, h, tmp_path):
    # NOTE_OPEN / NOTE_READ / NOTE_CLOSE / NOTE_CLOSE_WRITE (inotify IN_OPEN, IN_ACCESS,
    # IN_CLOSE_NOWRITE, IN_CLOSE_WRITE on the watched file).
    path = tmp_path / "f"
    path.write_bytes(b"data")
    fd = os.open(path, os.O_RDONLY)
    notes = NOTE_OPEN | NOTE_READ | NOTE_CLOSE | NOTE_CLOSE_WRITE
    try:
        h.change(kq, fd, EVFILT_VNODE, EV_ADD | EV_CLEAR, notes)
        with open(path, "rb") as f:  # open, read, close without writing
            f.read()
        got = collect(kq, h, fd, NOTE_OPEN | NOTE_READ | NOTE_CLOSE)
        assert got & NOTE_OPEN and got & NOTE_READ and got & NOTE_CLOSE, hex(got)
        assert not got & NOTE_CLOSE_WRITE
        with open(path, "ab") as f:  # a writer's close
            f.write(b"x")
        got = collect(kq, h, fd, NOTE_CLOSE_WRITE)
        assert got & NOTE_CLOSE_WRITE, hex(got)
    finally:
        os.close(fd)
