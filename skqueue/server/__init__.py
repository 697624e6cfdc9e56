"""skqueue.server: protocols, stores and service models of the server runtime.

The protocol layer is sans-I/O: a *session* per connection turns received bytes into reply bytes
(``feed``), so the same code runs under the multi-threaded kqueue runtime
(``skqueue.server.runtime``) and under the single-threaded asyncio/uvloop baselines
(``skqueue.server.aio``).

Modules:
    ``service``          service-time models (sleep / hash / spin)
    ``proto_rpc``        ping-pong RPC sessions (ECHO, TOUCH, GET/PUT/SEEK)
    ``kv``               key-value stores (``DictKV``, ``RocksKV`` over rocksdict)
    ``proto_memcached``  memcached text and meta protocol (``MemcachedSession``)
    ``memcached_store``  the memcached item store (``MemcachedStore``: LRU, memory limit)
    ``aio``              asyncio / uvloop baseline servers
"""

from __future__ import annotations

from skqueue.server.kv import DictKV, KVStore, RocksKV, populate
from skqueue.server.memcached_store import MemcachedStore
from skqueue.server.proto_memcached import MemcachedSession
from skqueue.server.proto_rpc import ProtocolError, RpcSession, Session
from skqueue.server.service import HashService, SleepService, SpinService, make_service

__all__ = [
    "DictKV",
    "HashService",
    "KVStore",
    "MemcachedSession",
    "MemcachedStore",
    "ProtocolError",
    "RocksKV",
    "RpcSession",
    "Session",
    "SleepService",
    "SpinService",
    "make_service",
    "populate",
]
