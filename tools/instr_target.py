"""Target of tools/instr.sh: N always-readable pipes (one unread byte each) on a kqueue, then
CALLS ``control(None, N, 0)`` calls.  CALLS=0 is the baseline run instr.sh subtracts.

    python tools/instr_target.py MODE NPIPES CALLS [data] [PER_CALL]

MODE: ``raw`` (select.epoll and a dict lookup per event, the overhead benchmark's
baseline), ``legacy``, or an SKQ policy label (``best2_ws``, ``rand``, ...).  ``data``
reads ``ev.data`` of every event.  PER_CALL: max_events of each call (default NPIPES).
"""

from __future__ import annotations

import os
import select
import sys


def main() -> None:
    mode, npipes, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    data = len(sys.argv) > 4 and sys.argv[4] == "data"
    per = int(sys.argv[5]) if len(sys.argv) > 5 else npipes
    fds = [os.pipe() for _ in range(npipes)]
    for _r, w in fds:
        os.write(w, b"x")
    sink = 0
    if mode == "raw":
        ep = select.epoll()
        table = {}
        for r, _w in fds:
            ep.register(r, select.EPOLLIN)
            table[r] = r
        for _ in range(calls):
            for fd, _m in ep.poll(0, per):
                sink += table[fd]
        return
    from skqueue import kevent, kqueue
    from skqueue.constants import EV_ADD, EVFILT_READ
    from skqueue.sched import Tunables, parse_sched

    kq = kqueue(tunables=Tunables(seed=1))
    if mode != "legacy":
        kq.set_multi(parse_sched(mode))
    kq.control([kevent(r, EVFILT_READ, EV_ADD) for r, _w in fds], 0)
    control = kq.control
    for _ in range(3):  # warm-up: every knote delivered once, the lazy class built
        for ev in control(None, per, 0):
            if data:
                sink += ev.data
    if data:
        for _ in range(calls):
            for ev in control(None, per, 0):
                sink += ev.data
    else:
        for _ in range(calls):
            control(None, per, 0)


if __name__ == "__main__":
    main()
