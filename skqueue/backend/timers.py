"""A kqueue's timer heap, carried by one timerfd armed at the earliest deadline."""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

from .timerfd import TimerFd


class TimerEntry:
    __slots__ = ("deadline", "seq", "fn", "cancelled")

    def __init__(self, deadline: int, seq: int, fn: Callable[[int], None]) -> None:
        self.deadline = deadline
        self.seq = seq
        self.fn = fn
        self.cancelled = False

    def __lt__(self, other: TimerEntry) -> bool:
        return (self.deadline, self.seq) < (other.deadline, other.seq)


class TimerHeap:
    """Deadlines in monotonic ns; callbacks get the current time and run outside the lock."""

    def __init__(self, tfd: TimerFd) -> None:
        self._heap: list[TimerEntry] = []
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._tfd = tfd
        self._armed = 0  # deadline the timerfd is armed for (0: disarmed)

    def schedule(self, deadline: int, fn: Callable[[int], None]) -> TimerEntry:
        e = TimerEntry(deadline, next(self._seq), fn)
        with self._lock:
            heapq.heappush(self._heap, e)
            if self._armed == 0 or deadline < self._armed:
                self._armed = deadline
                self._tfd.arm_at(max(deadline, 1))
        return e

    @staticmethod
    def cancel(e: TimerEntry) -> None:
        e.cancelled = True

    def next_deadline(self) -> int:
        with self._lock:
            return self._heap[0].deadline if self._heap else 0

    def run_expired(self, now: int) -> None:
        due: list[TimerEntry] = []
        with self._lock:
            heap = self._heap
            while heap and (heap[0].cancelled or heap[0].deadline <= now):
                e = heapq.heappop(heap)
                if not e.cancelled:
                    due.append(e)
            nxt = heap[0].deadline if heap else 0
            if nxt != self._armed:
                self._armed = nxt
                self._tfd.arm_at(nxt)
        for e in due:
            e.fn(now)

    def __len__(self) -> int:
        return len(self._heap)
