"""Property test: random EVFILT_USER operations against a reference model of kqueue(2).

A hypothesis RuleBasedStateMachine applies register / modify / trigger / enable / disable /
delete / force-oneshot operations (with and without EV_RECEIPT) to a few USER knotes of one
kqueue and polls with timeout 0.  After every poll the returned events must equal what the
model predicts: which knotes, their user fflags, data, udata and ONESHOT/CLEAR bits.

The model encodes these rules (FreeBSD kern_event.c kqueue_register / kqueue_scan and
filt_usertouch; docs/semantics.md §2.6-§2.8, §2.11):

* (ident, EVFILT_USER) names at most one knote; a change without EV_ADD on a missing knote
  fails with ENOENT; EV_ADD on an existing knote modifies it and does not re-enable it;
* every change to an existing knote replaces udata and the stored data, and combines the
  user fflags by FFNOP/FFAND/FFOR/FFCOPY; NOTE_TRIGGER sets the trigger;
* a knote is returned iff it is enabled and (triggered, or activated by EV_FORCEONESHOT);
  a returned event carries the stored user flags, stored data and udata;
* after delivery: EV_ONESHOT deletes, EV_CLEAR resets the trigger (stored fflags/data stay),
  EV_DISPATCH disables; otherwise a triggered knote is returned again on every poll;
* EV_RECEIPT gives exactly one EV_ERROR entry with data = errno (0 on success) and no
  events are collected in that call.

To stay within what FreeBSD and the spec agree on, the generated changes avoid two corners:
the initial EV_ADD only uses FFCOPY (FreeBSD stores the raw fflags of the first add), and
enable/disable/force-oneshot changes carry the knote's current data and udata.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule

import skqueue
from skqueue import (
    EV_ADD,
    EV_CLEAR,
    EV_DELETE,
    EV_DISABLE,
    EV_DISPATCH,
    EV_ENABLE,
    EV_EOF,
    EV_ERROR,
    EV_FORCEONESHOT,
    EV_ONESHOT,
    EV_RECEIPT,
    EVFILT_USER,
    NOTE_FFAND,
    NOTE_FFCOPY,
    NOTE_FFLAGSMASK,
    NOTE_FFNOP,
    NOTE_FFOR,
    NOTE_TRIGGER,
    kevent,
)

# FreeBSD filt_usertouch: EV_CLEAR retrieval resets only the trigger; the stored fflags and
# data (what a returned event carries) survive.  Flip to True to model the other reading of
# EV_CLEAR (retrieval also resets the stored flags and data; semantics §2.11) when triaging.
CLEAR_RESETS_STORED = False

IDENTS = st.integers(min_value=0, max_value=2)
CTRL = st.sampled_from([NOTE_FFNOP, NOTE_FFAND, NOTE_FFOR, NOTE_FFCOPY])
FFBITS = st.integers(min_value=0, max_value=0xFF) | st.just(NOTE_FFLAGSMASK)
DATA = st.integers(min_value=0, max_value=1000)
UDATA = st.sampled_from(["u0", "u1", "u2", 3, None])
RARELY = st.sampled_from([False, False, False, True])  # e.g. EV_DISABLE on add/modify
THEN_POLL = st.booleans()  # poll right after the change (else changes accumulate)
BEHAVIOUR = st.sets(st.sampled_from([EV_ONESHOT, EV_CLEAR, EV_DISPATCH]), max_size=3)


@dataclass
class Knote:
    oneshot: bool
    clear: bool
    dispatch: bool
    enabled: bool = True
    triggered: bool = False
    forced: bool = False
    sfflags: int = 0
    sdata: int = 0
    udata: Any = None


def combine(stored: int, ctrl: int, bits: int) -> int:
    bits &= NOTE_FFLAGSMASK
    if ctrl == NOTE_FFAND:
        return stored & bits
    if ctrl == NOTE_FFOR:
        return stored | bits
    if ctrl == NOTE_FFCOPY:
        return bits
    return stored


def then_maybe_poll(fn: Callable[..., None]) -> Callable[..., None]:
    """Let a change rule optionally poll right after the change (``then_poll``)."""

    @functools.wraps(fn)
    def wrapper(self: UserEventMachine, *, then_poll: bool, **kwargs: Any) -> None:
        fn(self, **kwargs)
        if then_poll:
            self.check_poll()

    return wrapper


class UserEventMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.kq = skqueue.kqueue()
        mode = os.environ.get("SKQ_MODEL_MODE", "legacy")  # or a policy label, e.g. rand
        if mode != "legacy":
            self.kq.set_multi(skqueue.parse_sched(mode))
        self.model: dict[int, Knote] = {}

    def teardown(self) -> None:
        self.kq.close()

    # -- plumbing ----------------------------------------------------------------------

    def apply(self, ev: kevent, expect_errno: int, receipt: bool) -> None:
        """Apply one change; check its outcome against the model's expected errno."""
        if receipt:
            ev.flags |= EV_RECEIPT
            out = self.kq.control([ev], 4, 0)
            assert len(out) == 1, out
            (r,) = out
            assert (r.ident, r.filter) == (ev.ident, EVFILT_USER)
            assert r.flags == EV_ERROR, r
            assert r.data == expect_errno, r
            return
        if expect_errno:
            try:
                self.kq.control([ev], 0)
            except OSError as e:
                assert e.errno == expect_errno, e
            else:
                raise AssertionError(f"expected errno {expect_errno} for {ev!r}")
        else:
            self.kq.control([ev], 0)

    # -- rules -------------------------------------------------------------------------

    @rule(
        ident=IDENTS,
        behaviour=BEHAVIOUR,
        trigger=st.booleans(),
        bits=FFBITS,
        data=DATA,
        udata=UDATA,
        disabled=RARELY,
        receipt=st.booleans(),
        then_poll=THEN_POLL,
    )
    @then_maybe_poll
    def add_new(self, ident, behaviour, trigger, bits, data, udata, disabled, receipt):
        if ident in self.model:
            return  # modify_existing covers this
        flags = EV_ADD | (EV_DISABLE if disabled else 0)
        for b in behaviour:
            flags |= b
        fflags = NOTE_FFCOPY | bits | (NOTE_TRIGGER if trigger else 0)
        self.apply(kevent(ident, EVFILT_USER, flags, fflags, data, udata), 0, receipt)
        self.model[ident] = Knote(
            oneshot=EV_ONESHOT in behaviour,
            clear=EV_CLEAR in behaviour,
            dispatch=EV_DISPATCH in behaviour,
            enabled=not disabled,
            triggered=trigger,
            sfflags=bits & NOTE_FFLAGSMASK,
            sdata=data,
            udata=udata,
        )

    @rule(
        ident=IDENTS,
        ctrl=CTRL,
        bits=FFBITS,
        data=DATA,
        udata=UDATA,
        disable=RARELY,
        receipt=st.booleans(),
        then_poll=THEN_POLL,
    )
    @then_maybe_poll
    def modify_existing(self, ident, ctrl, bits, data, udata, disable, receipt):
        kn = self.model.get(ident)
        if kn is None:
            return
        flags = EV_ADD | (EV_DISABLE if disable else 0)
        self.apply(kevent(ident, EVFILT_USER, flags, ctrl | bits, data, udata), 0, receipt)
        kn.sfflags = combine(kn.sfflags, ctrl, bits)
        kn.sdata = data
        kn.udata = udata
        if disable:
            kn.enabled = False

    @rule(
        ident=IDENTS,
        ctrl=CTRL,
        bits=FFBITS,
        data=DATA,
        udata=UDATA,
        enable=st.booleans(),
        receipt=st.booleans(),
        then_poll=THEN_POLL,
    )
    @then_maybe_poll
    def trigger(self, ident, ctrl, bits, data, udata, enable, receipt):
        kn = self.model.get(ident)
        flags = EV_ENABLE if enable else 0
        ev = kevent(ident, EVFILT_USER, flags, NOTE_TRIGGER | ctrl | bits, data, udata)
        if kn is None:
            self.apply(ev, errno.ENOENT, receipt)
            return
        self.apply(ev, 0, receipt)
        kn.sfflags = combine(kn.sfflags, ctrl, bits)
        kn.sdata = data
        kn.udata = udata
        kn.triggered = True
        if enable:
            kn.enabled = True

    @rule(
        ident=IDENTS,
        receipt=st.booleans(),
        then_poll=THEN_POLL,
    )
    @then_maybe_poll
    def enable(self, ident, receipt):
        self._toggle(ident, EV_ENABLE, receipt)

    @rule(
        ident=IDENTS,
        receipt=st.booleans(),
        then_poll=THEN_POLL,
    )
    @then_maybe_poll
    def disable(self, ident, receipt):
        self._toggle(ident, EV_DISABLE, receipt)

    def _toggle(self, ident: int, flag: int, receipt: bool) -> None:
        kn = self.model.get(ident)
        if kn is None:
            self.apply(kevent(ident, EVFILT_USER, flag), errno.ENOENT, receipt)
            return
        self.apply(kevent(ident, EVFILT_USER, flag, 0, kn.sdata, kn.udata), 0, receipt)
        kn.enabled = flag == EV_ENABLE

    @rule(
        ident=IDENTS,
        receipt=st.booleans(),
        then_poll=THEN_POLL,
    )
    @then_maybe_poll
    def delete(self, ident, receipt):
        kn = self.model.pop(ident, None)
        self.apply(
            kevent(ident, EVFILT_USER, EV_DELETE), errno.ENOENT if kn is None else 0, receipt
        )

    @rule(
        ident=IDENTS,
        receipt=st.booleans(),
        then_poll=THEN_POLL,
    )
    @then_maybe_poll
    def force_oneshot(self, ident, receipt):
        kn = self.model.get(ident)
        if kn is None:
            self.apply(kevent(ident, EVFILT_USER, EV_FORCEONESHOT), errno.ENOENT, receipt)
            return
        ev = kevent(ident, EVFILT_USER, EV_FORCEONESHOT, 0, kn.sdata, kn.udata)
        self.apply(ev, 0, receipt)
        kn.oneshot = True
        kn.forced = True

    @rule()
    def poll(self):
        self.check_poll()

    def check_poll(self) -> None:
        got = self.kq.control(None, 16, 0)
        expect = {
            i: kn for i, kn in self.model.items() if kn.enabled and (kn.triggered or kn.forced)
        }
        idents = sorted(e.ident for e in got)
        assert idents == sorted(expect), (got, expect)
        for e in got:
            kn = expect[e.ident]
            assert e.filter == EVFILT_USER
            assert not e.flags & (EV_ERROR | EV_EOF), e
            assert bool(e.flags & EV_ONESHOT) == kn.oneshot, (e, kn)
            assert bool(e.flags & EV_CLEAR) == kn.clear, (e, kn)
            assert e.fflags & NOTE_FFLAGSMASK == kn.sfflags, (e, kn)
            assert e.data == kn.sdata, (e, kn)
            assert e.udata == kn.udata, (e, kn)
        for i, kn in expect.items():
            if kn.oneshot:
                del self.model[i]
                continue
            if kn.clear:
                kn.triggered = False
                if CLEAR_RESETS_STORED:
                    kn.sfflags = 0
                    kn.sdata = 0
            kn.forced = False
            if kn.dispatch:
                kn.enabled = False


UserEventMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    database=None,
    report_multiple_bugs=False,
)
TestUserEventModel = UserEventMachine.TestCase
