"""EV_* flag conformance: ADD (modify), DELETE, ENABLE/DISABLE, ONESHOT, CLEAR, DISPATCH,
RECEIPT (with and without slots), FORCEONESHOT, level-triggered default, collapse.

Rules from docs/semantics.md §2.6-§2.8 (FreeBSD kern_event.c kqueue_register / kqueue_scan /
kern_kevent) and FreeBSD tests/sys/kqueue/libkqueue/read.c.
"""

from __future__ import annotations

import errno
import time

from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_DISPATCH,
    EV_DROP,
    EV_ENABLE,
    EV_ERROR,
    EV_FLAG1,
    EV_FORCEONESHOT,
    EV_ONESHOT,
    EV_RECEIPT,
    EVFILT_READ,
    EVFILT_USER,
    NOTE_TRIGGER,
    kevent,
)


def user(ident, flags=EV_ADD, fflags=0, data=0, udata=None):
    return kevent(ident, EVFILT_USER, flags, fflags, data, udata)


# -- EV_ADD ---------------------------------------------------------------------------


def test_readd_updates_udata(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_READ, udata="first")
    b.send(b"x")
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None and ev.udata == "first"
    h.change(kq, a, EVFILT_READ, udata="second")
    evs = h.poll(kq)
    assert [e.udata for e in evs] == ["second"]


def test_readd_is_not_a_duplicate(kq, sockpair, h):
    # At most one knote per (ident, filter): adding twice yields one event.
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    h.change(kq, a, EVFILT_READ)
    b.send(b"x")
    assert h.wait_one(kq, a.fileno(), EVFILT_READ) is not None
    assert len(h.poll(kq)) == 1


def test_add_alone_does_not_reenable(kq, sockpair, h):
    # semantics §2.7: "EV_ADD alone does not re-enable".
    a, b = sockpair
    b.send(b"x")
    h.change(kq, a, EVFILT_READ)
    assert h.wait_one(kq, a.fileno(), EVFILT_READ) is not None
    h.change(kq, a, EVFILT_READ, EV_DISABLE)
    assert h.poll(kq) == []
    h.change(kq, a, EVFILT_READ, EV_ADD)
    time.sleep(0.02)
    assert h.poll(kq) == []
    h.change(kq, a, EVFILT_READ, EV_ENABLE)
    assert h.keys(h.poll(kq)) == {(a.fileno(), EVFILT_READ)}


def test_add_disabled_then_enable_reports_existing_condition(kq, sockpair, h):
    # read.c test_kevent_socket_disable_and_enable.
    a, b = sockpair
    b.send(b"x")
    h.change(kq, a, EVFILT_READ, EV_ADD | EV_DISABLE)
    time.sleep(0.02)
    assert h.poll(kq) == []
    h.change(kq, a, EVFILT_READ, EV_ENABLE)
    evs = h.poll(kq)
    assert len(evs) == 1 and evs[0].data == 1


def test_add_with_enable_flag(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_ENABLE)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}


def test_behaviour_flags_fixed_at_creation(kq, sockpair, h):
    # semantics §2.7 (kernel code): ONESHOT/CLEAR/DISPATCH are fixed when the knote is created;
    # only EV_FORCEONESHOT can add ONESHOT later.
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    h.change(kq, a, EVFILT_READ, EV_ADD | EV_ONESHOT)
    b.send(b"x")
    assert h.wait_one(kq, a.fileno(), EVFILT_READ) is not None
    assert h.keys(h.poll(kq)) == {(a.fileno(), EVFILT_READ)}  # still there: not one-shot


def test_add_delete_on_new_knote_creates_it(kq, h):
    # semantics §2.7 (kernel code): on a new knote EV_ADD|EV_DELETE creates it and ignores
    # the delete.  Unsure: a consequence of kqueue_register's "goto done" after creation.
    h.change(kq, 5, EVFILT_USER, EV_ADD | EV_DELETE)
    h.change(kq, 5, EVFILT_USER, 0, NOTE_TRIGGER)
    assert h.keys(h.poll(kq)) == {(5, EVFILT_USER)}


def test_delete_wins_on_existing_knote(kq, h):
    h.change(kq, 5, EVFILT_USER, EV_ADD)
    h.change(kq, 5, EVFILT_USER, EV_ADD | EV_DELETE)
    assert h.change_err(kq, 5, EVFILT_USER, 0, NOTE_TRIGGER) == errno.ENOENT


# -- EV_DELETE / EV_DISABLE -----------------------------------------------------------


def test_delete_discards_pending(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    b.send(b"x")
    time.sleep(0.02)
    h.change(kq, a, EVFILT_READ, EV_DELETE)
    assert h.poll(kq) == []


def test_delete_discards_pending_user(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    h.change(kq, 1, EVFILT_USER, EV_DELETE)
    assert h.poll(kq) == []


def test_disable_discards_queued(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    h.change(kq, 1, EVFILT_USER, EV_DISABLE)
    assert h.poll(kq) == []
    h.change(kq, 1, EVFILT_USER, EV_ENABLE)
    assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}


# -- EV_ONESHOT / EV_CLEAR / EV_DISPATCH ----------------------------------------------


def test_oneshot_read(kq, sockpair, h):
    # read.c test_kevent_socket_oneshot
    a, b = sockpair
    h.change(kq, a, EVFILT_READ, EV_ADD | EV_ONESHOT)
    assert h.poll(kq) == []
    b.send(b"x")
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None and ev.data == 1 and ev.flags & EV_ONESHOT
    assert h.poll(kq) == []
    assert h.change_err(kq, a, EVFILT_READ, EV_DELETE) == errno.ENOENT


def test_dispatch_read(kq, sockpair, h):
    # read.c test_kevent_socket_dispatch: reported once although not EV_CLEAR; the knote
    # is disabled (deleting it still succeeds); EV_ENABLE re-arms it.
    a, b = sockpair
    h.change(kq, a, EVFILT_READ, EV_ADD | EV_DISPATCH)
    b.send(b"x")
    ev = h.wait_one(kq, a.fileno(), EVFILT_READ)
    assert ev is not None and ev.data == 1
    assert h.poll(kq) == []
    h.change(kq, a, EVFILT_READ, EV_ENABLE)
    evs = h.poll(kq)
    assert len(evs) == 1 and evs[0].data == 1  # data still unread: reported again
    assert h.poll(kq) == []
    h.change(kq, a, EVFILT_READ, EV_DELETE)


def test_level_triggered_default(kq, sockpair, h):
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    b.send(b"abc")
    assert h.wait_one(kq, a.fileno(), EVFILT_READ) is not None
    for _ in range(5):
        evs = h.poll(kq)
        assert len(evs) == 1 and evs[0].data == 3


def test_level_triggered_not_twice_in_one_call(kq, sockpair, h):
    # Stock FreeBSD re-appends a level-triggered knote after copy-out (semantics §2.8).
    a, b = sockpair
    h.change(kq, a, EVFILT_READ)
    b.send(b"abc")
    assert h.wait_one(kq, a.fileno(), EVFILT_READ) is not None
    assert len(kq.control(None, 16, 0)) == 1


def test_level_triggered_fifo_fairness(kq, h, legacy_only):
    # With fewer slots than ready knotes, the next call continues with the ones left out
    # (the returned ones went to the tail).
    for i in range(3):
        h.change(kq, i, EVFILT_USER, EV_ADD)
        h.change(kq, i, EVFILT_USER, 0, NOTE_TRIGGER)
    first = {e.ident for e in kq.control(None, 2, 0)}
    second = {e.ident for e in kq.control(None, 1, 0)}
    assert len(first) == 2
    assert second == {0, 1, 2} - first


def test_clear_user_and_collapse(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    for _ in range(5):
        h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    assert len(h.poll(kq)) == 1
    assert h.poll(kq) == []


# -- EV_RECEIPT -------------------------------------------------------------------------


def test_receipt_entries_with_data_zero(kq, h):
    evs = kq.control(
        [user(1, EV_ADD | EV_RECEIPT, udata="a"), user(2, EV_ADD | EV_RECEIPT, udata="b")], 4, 0
    )
    assert len(evs) == 2
    for e, ident, ud in zip(evs, (1, 2), ("a", "b"), strict=True):
        assert e.ident == ident and e.filter == EVFILT_USER
        assert e.flags == EV_ERROR  # exactly EV_ERROR
        assert e.data == 0
        assert e.udata == ud


def test_receipt_mixed_with_failure(kq, h):
    evs = kq.control([user(1, EV_ADD | EV_RECEIPT), user(9, EV_DELETE | EV_RECEIPT)], 4, 0)
    assert [(e.ident, e.flags, e.data) for e in evs] == [
        (1, EV_ERROR, 0),
        (9, EV_ERROR, errno.ENOENT),
    ]


def test_receipt_returns_without_collecting_pending(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    t0 = time.monotonic()
    evs = kq.control([user(2, EV_ADD | EV_RECEIPT)], 4, 5.0)
    assert time.monotonic() - t0 < 1.0  # no wait
    assert [(e.ident, e.flags) for e in evs] == [(2, EV_ERROR)]
    assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}  # still pending


def test_receipt_no_slot_quirk(kq, h):
    # semantics §2.6 quirk (kern_kevent: nevents == 0 -> goto done): with max_events 0, a
    # successful EV_RECEIPT change ends the call; later changes are not applied.
    res = kq.control([user(1, EV_ADD | EV_RECEIPT), user(2, EV_ADD)], 0)
    assert list(res) == []
    assert h.change_err(kq, 1, EVFILT_USER, EV_DELETE) == 0  # first applied
    assert h.change_err(kq, 2, EVFILT_USER, EV_DELETE) == errno.ENOENT  # second skipped


def test_receipt_fills_slots_then_stops(kq, h):
    # Two slots, three receipt changes: the third has no slot and ends the call, but was
    # itself applied (kqueue_kevent registers the change before looking for a slot).
    # Unsure: FreeBSD then returns 0 although two entries were copied out; we accept the
    # two entries or an empty result.
    evs = kq.control([user(i, EV_ADD | EV_RECEIPT) for i in (1, 2, 3)], 2, 0)
    assert [e.ident for e in evs] in ([1, 2], [])
    for i in (1, 2, 3):
        assert h.change_err(kq, i, EVFILT_USER, EV_DELETE) == 0


# -- EV_FORCEONESHOT / system flags -----------------------------------------------------


def test_forceoneshot_activates_and_deletes(kq, h):
    # semantics §2.4 (kernel code): returned once at the next retrieval without a filter
    # check, then deleted.
    h.change(kq, 4, EVFILT_USER, EV_ADD, udata="f")
    assert h.poll(kq) == []
    h.change(kq, 4, EVFILT_USER, EV_FORCEONESHOT, udata="f")
    evs = h.poll(kq)
    assert [(e.ident, e.udata) for e in evs] == [(4, "f")]
    assert evs[0].flags & EV_ONESHOT
    assert h.poll(kq) == []
    assert h.change_err(kq, 4, EVFILT_USER, EV_DELETE) == errno.ENOENT


def test_forceoneshot_on_socket_without_data(kq, sockpair, h):
    a, _ = sockpair
    h.change(kq, a, EVFILT_READ)
    h.change(kq, a, EVFILT_READ, EV_FORCEONESHOT)
    evs = h.poll(kq)
    assert h.keys(evs) == {(a.fileno(), EVFILT_READ)}
    assert h.poll(kq) == []
    assert h.change_err(kq, a, EVFILT_READ, EV_DELETE) == errno.ENOENT


def test_system_flags_stripped_from_changes(kq, h):
    # semantics §2.6 step 2: EV_SYSFLAGS bits (EV_DROP, EV_FLAG1, ...) are cleared from
    # each change, so EV_DROP on input does not drop the knote.
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_DROP | EV_FLAG1)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER)
    evs = h.poll(kq)
    assert h.keys(evs) == {(1, EVFILT_USER)}
    assert not evs[0].flags & (EV_DROP | EV_FLAG1)


def test_filter_zero_entries_skipped(kq, h):
    # semantics §2.6 step 2: entries with filter == 0 are skipped (no error).
    evs = kq.control([kevent(1, 0, EV_ADD), user(2)], 4, 0)
    assert list(evs) == []
    assert h.change_err(kq, 2, EVFILT_USER, EV_DELETE) == 0


def test_udata_any_object_identity(kq, h):
    obj = {"k": [1, 2]}
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR, udata=obj)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_TRIGGER, udata=obj)
    evs = h.poll(kq)
    assert len(evs) == 1 and evs[0].udata is obj


def test_changes_applied_in_order_in_one_call(kq, h):
    evs = kq.control(
        [
            user(1, EV_ADD | EV_CLEAR),
            user(1, 0, NOTE_TRIGGER),
            user(2, EV_ADD | EV_CLEAR),
            user(2, 0, NOTE_TRIGGER),
            user(2, EV_DELETE),
        ],
        8,
        0,
    )
    assert h.keys(evs) == {(1, EVFILT_USER)}
