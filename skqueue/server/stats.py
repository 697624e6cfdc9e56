"""Counters of the server runtime's workers: a private tally per batch, published per worker.

A worker counts into its thread-private ``Tally`` without locking and adds it to its
``WorkerStats`` once per batch under that object's lock, so ``Server.dump()`` from any
thread reads consistent values.
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["TALLIED", "Tally", "WorkerStats"]

# What a worker counts per batch (Tally) and publishes (WorkerStats): the names of both
# classes' counters and of ``stats()``'s per-worker keys.
TALLIED = ("events", "requests", "bytes_in", "bytes_out", "closed", "errors",
            "protocol_errors", "blocked")


class WorkerStats:
    """Counters of one worker thread; written once per batch under ``lock``."""

    __slots__ = ("index", "thread", "lock", "alive", "batches", *TALLIED)

    def __init__(self, index: int, thread: str) -> None:
        self.index = index
        self.thread = thread
        self.lock = threading.Lock()
        self.alive = False
        self.batches = 0
        for name in TALLIED:
            setattr(self, name, 0)

    def publish(self, t: Tally) -> None:
        """Add a thread-private tally and reset it."""
        with self.lock:
            self.batches += 1
            for name in TALLIED:
                setattr(self, name, getattr(self, name) + getattr(t, name))
        t.reset()

    def snapshot(self) -> dict[str, Any]:
        """The counters as a dict."""
        with self.lock:
            d: dict[str, Any] = {"id": self.index, "thread": self.thread, "alive": self.alive}
            d["batches"] = self.batches
            d.update((name, getattr(self, name)) for name in TALLIED)
            return d


class Tally:
    """Thread-private counters of the current batch (no lock: one thread only)."""

    __slots__ = TALLIED
    events: int
    requests: int
    bytes_in: int
    bytes_out: int
    closed: int
    errors: int
    protocol_errors: int
    blocked: int

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        for name in TALLIED:
            setattr(self, name, 0)
