"""skqueue.server: the server runtime, its protocols, stores and service models.

``Server(ServerConfig(...), session_factory)`` serves any protocol written as a session with
``feed`` (README, "Writing a server"), with any queue policy.  The protocol layer is
sans-I/O: a *session* per connection turns received bytes into reply bytes (``feed``), so
the same code runs under the multi-threaded kqueue runtime (``skqueue.server.runtime``) and
under the single-threaded asyncio/uvloop baselines (``skqueue.server.aio``).

Modules:
    ``runtime``          the worker-pool server (``Server``, ``ProtocolHandler``)
    ``config``           its settings (``ServerConfig``)
    ``connection``       one connection and the ledger of pending replies
    ``stats``            per-worker counters
    ``service``          service-time models (sleep / hash / spin)
    ``proto_rpc``        ping-pong RPC sessions (ECHO, TOUCH, GET/PUT/SEEK)
    ``kv``               key-value stores (``DictKV``; ``RocksKV``: C-API extension or rocksdict)
    ``proto_memcached``  memcached text and meta protocol (``MemcachedSession``)
    ``memcached_meta``   memcached's meta commands
    ``memcached_store``  the memcached item store (``MemcachedStore``: LRU, memory limit)
    ``aio``              asyncio / uvloop baseline servers
"""

from __future__ import annotations

from skqueue.server.config import ServerConfig
from skqueue.server.kv import DictKV, KVStore, RocksKV, populate
from skqueue.server.memcached_store import MemcachedStore
from skqueue.server.proto_memcached import MemcachedSession
from skqueue.server.proto_rpc import ProtocolError, RpcSession, Session
from skqueue.server.runtime import ProtocolHandler, Server
from skqueue.server.service import HashService, SleepService, SpinService, make_service

__all__ = [
    "DictKV",
    "HashService",
    "KVStore",
    "MemcachedSession",
    "MemcachedStore",
    "ProtocolError",
    "ProtocolHandler",
    "RocksKV",
    "RpcSession",
    "Server",
    "ServerConfig",
    "Session",
    "SleepService",
    "SpinService",
    "make_service",
    "populate",
]
