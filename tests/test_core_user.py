"""EVFILT_USER conformance.

From FreeBSD tests/sys/kqueue/libkqueue/user.c and libkqueue test/user.c (add_and_delete,
event_wait, disable_and_enable, oneshot, dispatch), plus the fflags operations those tests
leave as TODO, following FreeBSD's filt_usertouch (kern_event.c) and docs/semantics.md §2.11:

* the low 24 bits of fflags are user flags, combined into the stored value by the control
  bits FFNOP/FFAND/FFOR/FFCOPY; a change's data replaces the stored data;
* a returned event carries the stored flags (control bits and NOTE_TRIGGER clear) and the
  stored data;
* without EV_CLEAR a triggered event is returned on every retrieval; with EV_CLEAR the
  retrieval resets the trigger.
"""

from __future__ import annotations

import errno
import threading
import time

from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_DISPATCH,
    EV_ENABLE,
    EV_ERROR,
    EV_ONESHOT,
    EVFILT_USER,
    NOTE_FFAND,
    NOTE_FFCOPY,
    NOTE_FFCTRLMASK,
    NOTE_FFLAGSMASK,
    NOTE_FFNOP,
    NOTE_FFOR,
    NOTE_TRIGGER,
    kevent,
)


def trigger(kq, ident, fflags=0, data=0, udata=None, flags=0):
    kq.control([kevent(ident, EVFILT_USER, flags, NOTE_TRIGGER | fflags, data, udata)], 0)


def test_add_and_delete(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    assert h.poll(kq) == []
    h.change(kq, 1, EVFILT_USER, EV_DELETE)
    assert h.poll(kq) == []
    assert h.change_err(kq, 1, EVFILT_USER, EV_DELETE) == errno.ENOENT


def test_event_wait_clear(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    trigger(kq, 1)
    evs = h.poll(kq)
    assert len(evs) == 1
    ev = evs[0]
    assert (ev.ident, ev.filter) == (1, EVFILT_USER)
    assert ev.flags & EV_CLEAR
    assert not ev.flags & EV_ERROR
    assert ev.fflags == 0  # NOTE_TRIGGER / control bits are never returned
    assert h.poll(kq) == []


def test_trigger_without_clear_returned_every_time(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    assert h.poll(kq) == []
    trigger(kq, 1)
    for _ in range(3):
        assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}
    h.change(kq, 1, EVFILT_USER, EV_DISABLE)
    assert h.poll(kq) == []
    h.change(kq, 1, EVFILT_USER, EV_DELETE)


def test_disable_and_enable(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    h.change(kq, 1, EVFILT_USER, EV_DISABLE)
    trigger(kq, 1)
    assert h.poll(kq) == []  # disabled: nothing reported
    h.change(kq, 1, EVFILT_USER, EV_ENABLE)
    # The trigger recorded while disabled is reported once enabled (EV_ENABLE re-evaluates
    # the filter; kern_event.c kqueue_register).
    evs = h.poll(kq)
    assert h.keys(evs) == {(1, EVFILT_USER)}
    assert h.poll(kq) == []
    trigger(kq, 1)
    assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}


def test_oneshot(kq, h):
    h.change(kq, 2, EVFILT_USER, EV_ADD | EV_ONESHOT)
    trigger(kq, 2)
    evs = h.poll(kq)
    assert len(evs) == 1 and evs[0].flags & EV_ONESHOT
    assert h.poll(kq) == []
    assert h.change_err(kq, 2, EVFILT_USER, EV_DELETE) == errno.ENOENT


def test_dispatch(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR | EV_DISPATCH)
    trigger(kq, 1)
    assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}
    assert h.poll(kq) == []
    trigger(kq, 1)
    assert h.poll(kq) == []  # disabled by the delivery
    h.change(kq, 1, EVFILT_USER, EV_ENABLE)
    assert h.keys(h.poll(kq)) == {(1, EVFILT_USER)}  # the trigger made while disabled
    assert h.poll(kq) == []
    h.change(kq, 1, EVFILT_USER, EV_DELETE)


def test_enable_and_trigger_in_one_change(kq, h):
    # libkqueue threading.c: the EV_ENABLE | NOTE_TRIGGER re-arm idiom with EV_DISPATCH.
    h.change(kq, 0, EVFILT_USER, EV_ADD | EV_DISPATCH)
    for _ in range(3):
        trigger(kq, 0, flags=EV_ENABLE)
        assert h.keys(h.poll(kq)) == {(0, EVFILT_USER)}
        assert h.poll(kq) == []


def test_trigger_on_initial_add(kq, h):
    # semantics §2.11: NOTE_TRIGGER in any change, the first EV_ADD included, fires it.
    h.change(kq, 3, EVFILT_USER, EV_ADD | EV_CLEAR, NOTE_TRIGGER | NOTE_FFCOPY | 0x11, 5, "u")
    evs = h.poll(kq)
    assert len(evs) == 1
    # Unsure whether FreeBSD applies the control bits on the initial add (it stores the raw
    # fflags); we only require the user bits and no control bits.
    assert evs[0].fflags & NOTE_FFLAGSMASK == 0x11
    assert evs[0].fflags & NOTE_FFCTRLMASK == 0
    assert evs[0].data == 5
    assert evs[0].udata == "u"


def test_fflags_operations(kq, h):
    # Level-triggered knote: the stored value is independent of any EV_CLEAR reset rule.
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    trigger(kq, 1, NOTE_FFCOPY | 0x0F0)
    assert [e.fflags for e in h.poll(kq)] == [0x0F0]
    trigger(kq, 1, NOTE_FFOR | 0x00F)
    assert [e.fflags for e in h.poll(kq)] == [0x0FF]
    trigger(kq, 1, NOTE_FFAND | 0x03C)
    assert [e.fflags for e in h.poll(kq)] == [0x03C]
    trigger(kq, 1, NOTE_FFNOP | 0xFFF)  # NOP ignores the given bits
    assert [e.fflags for e in h.poll(kq)] == [0x03C]
    trigger(kq, 1, NOTE_FFCOPY | NOTE_FFLAGSMASK)
    assert [e.fflags for e in h.poll(kq)] == [NOTE_FFLAGSMASK]


def test_fflags_update_without_trigger_is_silent(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    h.change(kq, 1, EVFILT_USER, 0, NOTE_FFOR | 0x5)
    assert h.poll(kq) == []
    trigger(kq, 1, NOTE_FFOR | 0x2)
    assert [e.fflags for e in h.poll(kq)] == [0x7]


def test_data_replaced_by_each_change(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    trigger(kq, 1, data=42)
    assert [e.data for e in h.poll(kq)] == [42]
    trigger(kq, 1, data=7)
    assert [e.data for e in h.poll(kq)] == [7]


def test_stored_fflags_survive_clear(kq, h):
    # kern_event.c filt_usertouch EVENT_PROCESS returns kn_sfflags/kn_sdata and EV_CLEAR
    # resets only the trigger (kn_hookid), not the stored user flags.  Unsure: a reading of
    # EV_CLEAR as "retrieval resets the trigger, flags and data"; we take those as the internal
    # kn_fflags/kn_data, not the returned stored values (semantics §2.11).
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    trigger(kq, 1, NOTE_FFCOPY | 0x30, data=9)
    assert [(e.fflags, e.data) for e in h.poll(kq)] == [(0x30, 9)]
    trigger(kq, 1, NOTE_FFNOP, data=9)
    assert [(e.fflags, e.data) for e in h.poll(kq)] == [(0x30, 9)]


def test_change_udata_replaced(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR, udata="old")
    trigger(kq, 1, udata="new")
    assert [e.udata for e in h.poll(kq)] == ["new"]


def test_trigger_missing_is_enoent(kq, h):
    assert h.change_err(kq, 99, EVFILT_USER, 0, NOTE_TRIGGER) == errno.ENOENT


def test_many_user_events(kq, h):
    for i in range(50):
        h.change(kq, i, EVFILT_USER, EV_ADD | EV_CLEAR, udata=i)
    for i in range(0, 50, 2):
        trigger(kq, i, udata=i)
    evs = h.poll(kq, 100)
    assert sorted(e.ident for e in evs) == list(range(0, 50, 2))
    assert all(e.udata == e.ident for e in evs)
    assert h.poll(kq, 100) == []


def test_max_events_limits_and_rest_remains(kq, h):
    for i in range(5):
        h.change(kq, i, EVFILT_USER, EV_ADD | EV_CLEAR)
        trigger(kq, i)
    first = kq.control(None, 2, 0)
    assert len(first) == 2
    rest = h.poll(kq)
    assert len(rest) == 3
    assert {e.ident for e in first} | {e.ident for e in rest} == set(range(5))


def test_trigger_from_other_thread_wakes_blocked_control(kq, h):
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)

    def fire():
        time.sleep(0.05)
        trigger(kq, 1)

    t = threading.Thread(target=fire)
    t0 = time.monotonic()
    t.start()
    evs = kq.control(None, 1, 5.0)
    elapsed = time.monotonic() - t0
    t.join(5)
    assert [e.ident for e in evs] == [1]
    assert elapsed < 1.0


def test_clear_retrieval_resets_trigger_for_reevaluation(kq, h):
    # kern_event.c kqueue_register re-evaluates the filter on EV_ENABLE and on re-add; the
    # EV_CLEAR retrieval reset the trigger, so neither may report the event again.
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    trigger(kq, 1)
    assert len(h.poll(kq)) == 1
    h.change(kq, 1, EVFILT_USER, EV_DISABLE)
    h.change(kq, 1, EVFILT_USER, EV_ENABLE)
    assert h.poll(kq) == []
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    assert h.poll(kq) == []


def test_change_with_clear_resets_trigger(kq, h):
    # semantics §2.11 / filt_usertouch EVENT_REGISTER: a change carrying EV_CLEAR resets the
    # trigger of a not-yet-retrieved event.
    h.change(kq, 1, EVFILT_USER, EV_ADD)
    trigger(kq, 1)
    h.change(kq, 1, EVFILT_USER, EV_ADD | EV_CLEAR)
    assert h.poll(kq) == []
