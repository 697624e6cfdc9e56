"""The errors every KV store raises, whichever backend serves (``skqueue.server.kv``).

A module of its own, with no imports, so that the C extension ``skqueue.server._rocksdb``
raises these very classes (it imports this module when it is loaded) and the ``rocksdict``
fallback raises them too: callers catch one set of exceptions for every backend.
"""

from __future__ import annotations

__all__ = ["KVClosedError", "KVError"]


class KVError(RuntimeError):
    """A store operation or the opening of a store failed; the message names the cause."""


class KVClosedError(KVError):
    """The store is closed, or being closed by another thread, so the call was refused."""
