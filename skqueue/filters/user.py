"""EVFILT_USER: user-triggered events, triggerable from any thread."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..constants import (
    EV_CLEAR,
    NOTE_FFAND,
    NOTE_FFCOPY,
    NOTE_FFCTRLMASK,
    NOTE_FFLAGSMASK,
    NOTE_FFOR,
    NOTE_TRIGGER,
)
from . import Filter, KqueueOps

if TYPE_CHECKING:
    from .._kevent import kevent
    from .._knote import Knote


class UserFilter(Filter):
    __slots__ = ()
    name = "USER"

    def attach(self, kq: KqueueOps, kn: Knote) -> None:
        kn.hook = False  # triggered?
        f = kn.sfflags
        kn.sfflags = 0
        self._apply(kn, f, kn.sdata)

    @staticmethod
    def _apply(kn: Knote, fflags: int, data: int) -> None:
        ctrl = fflags & NOTE_FFCTRLMASK
        ff = fflags & NOTE_FFLAGSMASK
        if ctrl == NOTE_FFAND:
            kn.sfflags &= ff
        elif ctrl == NOTE_FFOR:
            kn.sfflags |= ff
        elif ctrl == NOTE_FFCOPY:
            kn.sfflags = ff
        kn.sdata = data
        if fflags & NOTE_TRIGGER:
            kn.hook = True

    def touch(self, kq: KqueueOps, kn: Knote, kev: kevent) -> None:
        self._apply(kn, kev.fflags, kev.data)
        # A change carrying EV_CLEAR (and no trigger) resets the trigger.
        if kev.flags & EV_CLEAR and not kev.fflags & NOTE_TRIGGER:
            kn.hook = False

    def event(self, kq: KqueueOps, kn: Knote) -> bool:
        return bool(kn.hook)

    def copyout(self, kq: KqueueOps, kn: Knote) -> tuple[int, int]:
        # The stored user flags and data are returned and kept; EV_CLEAR resets only the
        # trigger (FreeBSD's filt_usertouch, EVENT_PROCESS).
        if kn.flags & EV_CLEAR:
            kn.hook = False
        return kn.sfflags & NOTE_FFLAGSMASK, kn.sdata
