"""FreeBSD kqueue(2) and SKQ constants, with FreeBSD's names and values.

Values come from FreeBSD's ``sys/sys/event.h`` as extended by the SKQ tree
(``EV_AFFINITY`` = 0x0200, ``EV_REALTIME`` = 0x0400).  0x0200 is *not*
``EV_KEEPUDATA`` here: SKQ gave it the affinity meaning first, and skqueue keeps
SKQ's meaning (see docs/design.md).
"""

from __future__ import annotations

# -- filters ---------------------------------------------------------------
EVFILT_READ = -1
EVFILT_WRITE = -2
EVFILT_AIO = -3
EVFILT_VNODE = -4
EVFILT_PROC = -5
EVFILT_SIGNAL = -6
EVFILT_TIMER = -7
EVFILT_PROCDESC = -8
EVFILT_FS = -9
EVFILT_LIO = -10
EVFILT_USER = -11
EVFILT_SENDFILE = -12
EVFILT_EMPTY = -13
EVFILT_SYSCOUNT = 13

# -- action and status flags -------------------------------------------------
EV_ADD = 0x0001
EV_DELETE = 0x0002
EV_ENABLE = 0x0004
EV_DISABLE = 0x0008
EV_ONESHOT = 0x0010
EV_CLEAR = 0x0020
EV_RECEIPT = 0x0040
EV_DISPATCH = 0x0080
EV_FORCEONESHOT = 0x0100
EV_AFFINITY = 0x0200  # SKQ: hard affinity to the registering thread
EV_REALTIME = 0x0400  # SKQ: realtime (priority) queue
EV_SYSFLAGS = 0xF000
EV_DROP = 0x1000
EV_FLAG1 = 0x2000
EV_FLAG2 = 0x4000
EV_EOF = 0x8000
EV_ERROR = 0x4000

# -- READ / WRITE ---------------------------------------------------------------
NOTE_LOWAT = 0x0001
NOTE_FILE_POLL = 0x0002

# -- VNODE ----------------------------------------------------------------------
NOTE_DELETE = 0x0001
NOTE_WRITE = 0x0002
NOTE_EXTEND = 0x0004
NOTE_ATTRIB = 0x0008
NOTE_LINK = 0x0010
NOTE_RENAME = 0x0020
NOTE_REVOKE = 0x0040
NOTE_OPEN = 0x0080
NOTE_CLOSE = 0x0100
NOTE_CLOSE_WRITE = 0x0200
NOTE_READ = 0x0400

# -- PROC -----------------------------------------------------------------------
NOTE_EXIT = 0x80000000
NOTE_FORK = 0x40000000
NOTE_EXEC = 0x20000000
NOTE_PCTRLMASK = 0xF0000000
NOTE_PDATAMASK = 0x000FFFFF
NOTE_TRACK = 0x00000001
NOTE_TRACKERR = 0x00000002
NOTE_CHILD = 0x00000004

# -- TIMER ----------------------------------------------------------------------
NOTE_SECONDS = 0x01
NOTE_MSECONDS = 0x02
NOTE_USECONDS = 0x04
NOTE_NSECONDS = 0x08
NOTE_ABSTIME = 0x10

# -- USER -----------------------------------------------------------------------
NOTE_FFNOP = 0x00000000
NOTE_FFAND = 0x40000000
NOTE_FFOR = 0x80000000
NOTE_FFCOPY = 0xC0000000
NOTE_FFCTRLMASK = 0xC0000000
NOTE_FFLAGSMASK = 0x00FFFFFF
NOTE_TRIGGER = 0x01000000

# -- SKQ scheduler word -------------------------------------------------------------
KQ_SCHED_QUEUE = 0x01
KQ_SCHED_CPU = 0x02
KQ_SCHED_BEST = 0x04
KQ_SCHED_FEAT_WS = 0x01

# -- SKQ tune word --------------------------------------------------------------------
KQTUNE_FREQ = 0x01
KQTUNE_RTSHARE = 0x02

# -- SKQ ioctl numbers (amd64), for reference and for tools that speak them ------------
FKQMULTI = 0x80046659
FKQTUNE = 0x8004665A
FKQMPRNT = 0x8008665B


def KQSCHED_MAKE(sched: int, sargs: int, feat: int, fargs: int) -> int:  # noqa: N802
    """Pack a scheduler word: sched | sargs << 8 | feat << 16 | fargs << 24."""
    return (sched & 0xFF) | (sargs & 0xFF) << 8 | (feat & 0xFF) << 16 | (fargs & 0xFF) << 24


def KQSCHED_GET_SCHED(word: int) -> int:  # noqa: N802
    return word & 0xFF


def KQSCHED_GET_SARGS(word: int) -> int:  # noqa: N802
    return (word >> 8) & 0xFF


def KQSCHED_GET_FEAT(word: int) -> int:  # noqa: N802
    return (word >> 16) & 0xFF


def KQSCHED_GET_FARGS(word: int) -> int:  # noqa: N802
    return (word >> 24) & 0xFF


def KQTUNE_MAKE(obj: int, val: int) -> int:  # noqa: N802
    """Pack a tune word: (obj & 0xFFFF) | (val & 0xFFFF) << 16."""
    return (obj & 0xFFFF) | (val & 0xFFFF) << 16


def KQTUNE_PARSE_OBJ(word: int) -> int:  # noqa: N802
    return word & 0xFFFF


def KQTUNE_PARSE_VAL(word: int) -> int:  # noqa: N802
    return (word >> 16) & 0xFFFF
