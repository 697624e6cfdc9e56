"""Error reporting conformance (docs/semantics.md §2.6 and §2.13, kqueue(2) ERRORS).

* a failing change -> an entry with flags == EV_ERROR and data == errno when a slot is
  left, else OSError(errno); earlier changes stay applied, later ones are not processed;
* if any error entry was written, control() returns at once without collecting events;
* EBADF / ENOENT / EINVAL / EPERM (AIO) as FreeBSD uses them;
* Python-level misuse (negative max_events or timeout, closed kqueue) raises ValueError;
* the kqueue descriptor is non-inheritable, pollable, and dead in a forked child.
"""

from __future__ import annotations

import errno
import os
import select
import time

import pytest

import skqueue
from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_ENABLE,
    EV_ERROR,
    EVFILT_AIO,
    EVFILT_EMPTY,
    EVFILT_FS,
    EVFILT_LIO,
    EVFILT_PROCDESC,
    EVFILT_READ,
    EVFILT_SENDFILE,
    EVFILT_USER,
    EVFILT_VNODE,
    EVFILT_WRITE,
    NOTE_TRIGGER,
    kevent,
)


@pytest.mark.parametrize("filt", [EVFILT_READ, EVFILT_WRITE, EVFILT_VNODE, EVFILT_EMPTY])
def test_ebadf_for_closed_descriptor(kq, h, filt):
    fd = h.free_fd_number()
    assert h.change_err(kq, fd, filt) == errno.EBADF


def test_ebadf_raised_without_slot(kq, h):
    fd = h.free_fd_number()
    with pytest.raises(OSError) as ei:
        kq.control([kevent(fd, EVFILT_READ, EV_ADD)], 0)
    assert ei.value.errno == errno.EBADF


def test_ebadf_ident_above_int_max(kq, h):
    # semantics §2.13: descriptor filter with ident > INT_MAX -> EBADF.
    assert h.change_err(kq, 2**31 + 5, EVFILT_READ) == errno.EBADF


@pytest.mark.parametrize("flags", [EV_DELETE, EV_ENABLE, EV_DISABLE, 0])
def test_enoent_for_missing_knote(kq, h, flags):
    assert h.change_err(kq, 12345, EVFILT_USER, flags) == errno.ENOENT


def test_enoent_for_missing_fd_knote(kq, sockpair, h):
    a, _ = sockpair
    assert h.change_err(kq, a, EVFILT_READ, EV_DELETE) == errno.ENOENT


@pytest.mark.parametrize(
    "filt", [-14, -100, 1, 5, EVFILT_PROCDESC, EVFILT_FS, EVFILT_LIO, EVFILT_SENDFILE]
)
def test_einval_for_unknown_or_unsupported_filter(kq, h, filt):
    assert h.change_err(kq, 1, filt) == errno.EINVAL


def test_aio_is_eperm(kq, h):
    assert h.change_err(kq, 1, EVFILT_AIO) == errno.EPERM


def test_enable_and_disable_together_einval(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    assert h.change_err(kq, 1, EVFILT_USER, EV_ENABLE | EV_DISABLE) == errno.EINVAL
    assert h.change_err(kq, 2, EVFILT_USER, EV_ADD | EV_ENABLE | EV_DISABLE) == errno.EINVAL


def test_error_entry_shape(kq, h):
    token = object()
    evs = kq.control([kevent(777, EVFILT_USER, EV_DELETE, 3, 4, token)], 4, 0)
    assert len(evs) == 1
    e = evs[0]
    assert (e.ident, e.filter) == (777, EVFILT_USER)
    assert e.flags == EV_ERROR
    assert e.data == errno.ENOENT
    assert e.udata is token
    assert e.fflags == 3  # a copy of the change (FreeBSD copies the kevent back)


def test_error_stops_only_itself_when_slots_remain(kq, h):
    evs = kq.control(
        [
            kevent(1, EVFILT_USER, EV_ADD),
            kevent(2, EVFILT_USER, EV_DELETE),
            kevent(3, EVFILT_USER, EV_ADD),
        ],
        4,
        0,
    )
    assert [(e.ident, e.data) for e in evs] == [(2, errno.ENOENT)]
    assert h.change_err(kq, 1, EVFILT_USER, EV_DELETE) == 0
    assert h.change_err(kq, 3, EVFILT_USER, EV_DELETE) == 0


def test_no_slot_error_raises_earlier_applied_later_not(kq, h):
    with pytest.raises(OSError) as ei:
        kq.control(
            [
                kevent(1, EVFILT_USER, EV_ADD),
                kevent(2, EVFILT_USER, EV_DELETE),
                kevent(3, EVFILT_USER, EV_ADD),
            ],
            0,
        )
    assert ei.value.errno == errno.ENOENT
    assert h.change_err(kq, 1, EVFILT_USER, EV_DELETE) == 0  # applied
    assert h.change_err(kq, 3, EVFILT_USER, EV_DELETE) == errno.ENOENT  # not processed


def test_more_errors_than_slots_raises(kq, h):
    # kqueue_kevent: an error with no slot left returns that errno, even after entries
    # were copied out.
    with pytest.raises(OSError) as ei:
        kq.control([kevent(i, EVFILT_USER, EV_DELETE) for i in (1, 2, 3)], 2, 0)
    assert ei.value.errno == errno.ENOENT


def test_error_entries_returned_without_collecting_events(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    t0 = time.monotonic()
    evs = kq.control([kevent(2, EVFILT_USER, EV_DELETE)], 4, 5.0)
    assert time.monotonic() - t0 < 1.0
    assert [(e.ident, e.flags) for e in evs] == [(2, EV_ERROR)]
    assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}


def test_successful_changes_then_events_collected(kq, h):
    evs = kq.control(
        [kevent(1, EVFILT_USER, EV_ADD | EV_CLEAR), kevent(1, EVFILT_USER, 0, NOTE_TRIGGER)],
        4,
        0,
    )
    assert h.keys(evs) == {(1, EVFILT_USER)}
    assert not evs[0].flags & EV_ERROR


# -- Python-level misuse ---------------------------------------------------------------


def test_negative_max_events_value_error(kq):
    with pytest.raises(ValueError):
        kq.control(None, -1, 0)


def test_negative_timeout_value_error(kq):
    # skqueue follows select.kqueue here (ValueError), see semantics §2.6 step 1.
    with pytest.raises(ValueError):
        kq.control(None, 1, -1)


def test_bad_timeout_type(kq):
    with pytest.raises(TypeError):
        kq.control(None, 1, "soon")


def test_non_kevent_in_changelist(kq):
    with pytest.raises(TypeError):
        kq.control([42], 0)


def test_closed_kqueue(h):
    q = skqueue.kqueue()
    assert not q.closed
    q.close()
    assert q.closed
    with pytest.raises(ValueError):
        q.control(None, 1, 0)
    with pytest.raises(ValueError):
        q.control([kevent(1, EVFILT_USER, EV_ADD)], 0)
    with pytest.raises(ValueError):
        q.fileno()
    q.close()  # idempotent


def test_max_events_zero_with_pending_returns_empty(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    t0 = time.monotonic()
    assert list(kq.control(None, 0, 2.0)) == []
    assert time.monotonic() - t0 < 1.0  # nothing to wait for with no slots


# -- the kqueue descriptor -----------------------------------------------------------


def test_fileno_non_inheritable(kq):
    assert kq.fileno() >= 0
    assert os.get_inheritable(kq.fileno()) is False


def test_fileno_readable_iff_pending(kq, h, legacy_only):
    fd = kq.fileno()
    assert select.select([fd], [], [], 0)[0] == []
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    assert select.select([fd], [], [], 0)[0] == []
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    assert select.select([fd], [], [], 1.0)[0] == [fd]
    assert len(h.poll(kq)) == 1
    assert select.select([fd], [], [], 0)[0] == []


def test_fileno_readable_for_fd_readiness(kq, sockpair, h, legacy_only):
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    assert select.select([kq.fileno()], [], [], 0)[0] == []
    b.send(b"x")
    assert select.select([kq.fileno()], [], [], 1.0)[0] == [kq.fileno()]
    h.drain(a)
    h.poll(kq)
    assert select.select([kq.fileno()], [], [], 0)[0] == []


def test_fromfd_shares_the_live_queue(kq, h):
    q2 = skqueue.kqueue.fromfd(kq.fileno())
    h.change(q2, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)  # the knote added via q2 is kq's
    assert h.keys(h.poll(q2)) == {(1, EVFILT_USER)}
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}


def _exit_code_in_child(body) -> int:
    """Run ``body()`` in a forked child; its return value is the child's exit code (an
    exception gives 99).  The child never returns into pytest."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = body()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status)
    return os.WEXITSTATUS(status)


def test_forked_child_gets_ebadf(kq, h):
    # semantics §2.12: a kqueue is not inherited by fork(); in the child -> EBADF.
    h.change(kq, 1, EVFILT_USER, EV_ADD)

    def child() -> int:
        try:
            kq.control(None, 1, 0)
        except OSError as e:
            return 0 if e.errno == errno.EBADF else 3
        return 2

    assert _exit_code_in_child(child) == 0, "child: 2=no error, 3=wrong errno, 99=other"


def test_kqueue_made_in_a_forked_child_works():
    def child() -> int:
        with skqueue.kqueue() as kq:
            kq.control([skqueue.kevent(1, EVFILT_USER, EV_ADD)], 0)
            kq.control([skqueue.kevent(1, EVFILT_USER, 0, NOTE_TRIGGER)], 0)
            return 0 if len(kq.control(None, 1, 1)) == 1 else 2

    assert _exit_code_in_child(child) == 0, "child: 2=no event, 99=exception"
