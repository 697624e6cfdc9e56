"""A small, fast discrete-event engine with an integer-nanosecond virtual clock.

Design
------
The simulator needs millions of events per minute from pure Python, so the engine is
deliberately tiny: a binary heap of ``(time_ns, seq, callback, arg)`` tuples and a loop
that pops them in order and calls ``callback(arg)``.

- **Integer time.**  Virtual time is an ``int`` number of nanoseconds.  Floats would make
  results depend on summation order and rounding; integers make a run a pure function of
  (config, seed), bit for bit, on every platform.
- **Total order.**  Ties in time are broken by a monotonically increasing sequence number,
  so events scheduled for the same instant run in the order they were scheduled (FIFO).
  This is what makes runs deterministic; it never compares callbacks.
- **No cancellation in the heap.**  Cancelling by searching the heap is O(n); lazy
  deletion with a flag costs an object per event.  Models that need to cancel (a sleep
  slice that ends early because the thread was woken) carry a generation number in
  ``arg`` and ignore stale callbacks.  :class:`Timer` packages that idiom.
- **One argument.**  ``callback(arg)`` rather than ``*args`` avoids building a tuple per
  call and keeps the heap entries small; bound methods and a single object argument
  cover every use in the model.

Alternatives rejected: SimPy-style generator processes (elegant, but a resume through
``send`` per event is several times slower than a plain call), and a calendar queue
(faster asymptotically, but heapq is in C and beats it for the heap sizes we use, a few
thousand pending events).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

__all__ = ["Engine", "Timer"]

Callback = Callable[[Any], None]


class Engine:
    """Discrete-event scheduler: ``at``/``after`` schedule ``callback(arg)``; ``run`` runs.

    ``now`` is the current virtual time in integer nanoseconds.  Scheduling an event in
    the past raises :class:`ValueError` (it would break causality).
    """

    __slots__ = ("now", "_heap", "_seq", "_stopped", "events_run")

    def __init__(self, start_ns: int = 0) -> None:
        self.now: int = start_ns
        self._heap: list[tuple[int, int, Callback, Any]] = []
        self._seq: int = 0
        self._stopped: bool = False
        self.events_run: int = 0

    def at(self, time_ns: int, callback: Callback, arg: Any = None) -> None:
        """Run ``callback(arg)`` at absolute virtual time ``time_ns`` (an int >= now)."""
        if time_ns < self.now:
            raise ValueError(f"event scheduled in the past: {time_ns} < {self.now}")
        self._seq += 1
        heapq.heappush(self._heap, (time_ns, self._seq, callback, arg))

    def after(self, delay_ns: int, callback: Callback, arg: Any = None) -> None:
        """Run ``callback(arg)`` ``delay_ns`` (an int >= 0) after the current time."""
        if delay_ns < 0:
            raise ValueError(f"negative delay: {delay_ns}")
        self._seq += 1
        heapq.heappush(self._heap, (self.now + delay_ns, self._seq, callback, arg))

    def stop(self) -> None:
        """Make :meth:`run` return after the event that is running now."""
        self._stopped = True

    @property
    def pending(self) -> int:
        """Number of scheduled events not yet run."""
        return len(self._heap)

    def peek(self) -> int | None:
        """Time of the next event, or None when nothing is scheduled."""
        return self._heap[0][0] if self._heap else None

    def run(self, until: int | None = None, max_events: int | None = None) -> int:
        """Run events in (time, scheduling order) until the heap is empty, :meth:`stop`
        is called, the next event lies after ``until`` (then ``now`` becomes ``until``),
        or ``max_events`` events have run.  Returns the number of events run."""
        heap = self._heap
        pop = heapq.heappop
        self._stopped = False
        n = 0
        limit = -1 if max_events is None else max_events
        horizon = -1 if until is None else until
        while heap and n != limit:
            if horizon >= 0 and heap[0][0] > horizon:
                self.now = horizon
                break
            t, _, callback, arg = pop(heap)
            self.now = t
            callback(arg)
            n += 1
            if self._stopped:
                break
        else:
            if horizon >= 0 and not heap and self.now < horizon:
                self.now = horizon
        self.events_run += n
        return n


class Timer:
    """A cancellable, re-armable one-shot timer on an :class:`Engine`.

    Cancellation is lazy: the heap entry stays, but its generation no longer matches, so
    it is ignored when it fires.
    """

    __slots__ = ("_engine", "_callback", "_gen", "armed", "deadline")

    def __init__(self, engine: Engine, callback: Callable[[], None]) -> None:
        self._engine = engine
        self._callback = callback
        self._gen = 0
        self.armed = False
        self.deadline = 0

    def start(self, delay_ns: int) -> None:
        """(Re)arm the timer to fire ``delay_ns`` from now; a pending firing is dropped."""
        self._gen += 1
        self.armed = True
        self.deadline = self._engine.now + delay_ns
        self._engine.after(delay_ns, self._fire, self._gen)

    def cancel(self) -> None:
        """Disarm the timer; the pending heap entry will be ignored."""
        self._gen += 1
        self.armed = False

    def _fire(self, gen: int) -> None:
        if gen != self._gen or not self.armed:
            return
        self.armed = False
        self._callback()
