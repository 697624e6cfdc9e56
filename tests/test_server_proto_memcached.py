"""MemcachedSession / MemcachedStore: feed-level tests of every command, limits, malformed input.

The reply strings were checked against memcached 1.6.18 on the wire;
``tests/test_server_memcached_diff.py`` replays byte sequences against a real ``memcached``
when one is installed.
"""

from __future__ import annotations

import os
import random
import re
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skqueue.server.memcached_store import PY_ITEM_OVERHEAD, item_total
from skqueue.server.proto_memcached import (
    REL_EXPTIME_MAX,
    MemcachedSession,
    MemcachedStore,
)

T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> MemcachedStore:
    return MemcachedStore(clock=clock)


@pytest.fixture
def s(store: MemcachedStore) -> MemcachedSession:
    return MemcachedSession(store)


def test_set_get_flags_and_multiget(s: MemcachedSession) -> None:
    assert s.feed(b"set a 5 0 3\r\nabc\r\n") == b"STORED\r\n"
    assert s.feed(b"set b 4294967295 0 0\r\n\r\n") == b"STORED\r\n"
    assert s.feed(b"get a\r\n") == b"VALUE a 5 3\r\nabc\r\nEND\r\n"
    assert s.feed(b"get nope\r\n") == b"END\r\n"
    assert s.feed(b"get b nope a\r\n") == (
        b"VALUE b 4294967295 0\r\n\r\nVALUE a 5 3\r\nabc\r\nEND\r\n"
    )
    # values are binary-safe, \r\n inside the data block included
    assert s.feed(b"set bin 0 0 4\r\n\r\n\x00\xff\r\n") == b"STORED\r\n"
    assert s.feed(b"get bin\r\n") == b"VALUE bin 0 4\r\n\r\n\x00\xff\r\nEND\r\n"


def test_gets_cas_unique_changes_on_every_modification(s: MemcachedSession) -> None:
    s.feed(b"set k 0 0 1\r\n1\r\n")
    m = re.fullmatch(rb"VALUE k 0 1 (\d+)\r\n1\r\nEND\r\n", s.feed(b"gets k\r\n"))
    assert m
    cas1 = int(m.group(1))
    s.feed(b"append k 0 0 1\r\n2\r\n")
    m = re.fullmatch(rb"VALUE k 0 2 (\d+)\r\n12\r\nEND\r\n", s.feed(b"gets k\r\n"))
    assert m
    cas2 = int(m.group(1))
    assert cas2 > cas1
    s.feed(b"incr k 1\r\n")
    m = re.fullmatch(rb"VALUE k 0 2 (\d+)\r\n13\r\nEND\r\n", s.feed(b"gets k\r\n"))
    assert m and int(m.group(1)) > cas2
    s.feed(b"touch k 100\r\n")  # touch does not change the cas unique
    assert s.feed(b"gets k\r\n") == m.group(0)


def test_add_replace_append_prepend(s: MemcachedSession) -> None:
    assert s.feed(b"add k 1 0 1\r\na\r\n") == b"STORED\r\n"
    assert s.feed(b"add k 2 0 1\r\nb\r\n") == b"NOT_STORED\r\n"
    assert s.feed(b"replace nokey 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
    assert s.feed(b"append nokey 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
    assert s.feed(b"prepend nokey 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
    assert s.feed(b"replace k 7 0 1\r\nc\r\n") == b"STORED\r\n"
    # append/prepend ignore their flags and exptime
    assert s.feed(b"append k 9 -1 2\r\nde\r\n") == b"STORED\r\n"
    assert s.feed(b"prepend k 9 -1 2\r\nzz\r\n") == b"STORED\r\n"
    assert s.feed(b"get k nokey\r\n") == b"VALUE k 7 5\r\nzzcde\r\nEND\r\n"


def test_cas(s: MemcachedSession, store: MemcachedStore) -> None:
    assert s.feed(b"cas k 0 0 1 1\r\nx\r\n") == b"NOT_FOUND\r\n"
    s.feed(b"set k 3 0 1\r\nx\r\n")
    cas = int(s.feed(b"gets k\r\n").split(b"\r\n")[0].split()[-1])
    assert s.feed(b"cas k 0 0 1 %d\r\ny\r\n" % (cas + 1)) == b"EXISTS\r\n"
    assert s.feed(b"cas k 4 0 1 %d\r\ny\r\n" % cas) == b"STORED\r\n"
    assert s.feed(b"cas k 4 0 1 %d\r\nz\r\n" % cas) == b"EXISTS\r\n"  # cas moved on
    assert s.feed(b"get k\r\n") == b"VALUE k 4 1\r\ny\r\nEND\r\n"
    assert s.feed(b"cas k 0 0 1 %d noreply\r\nq\r\n" % cas) == b""
    stats = dict(store.stats())
    assert (stats["cas_misses"], stats["cas_hits"], stats["cas_badval"]) == ("1", "1", "3")


def test_cas_race_between_sessions(store: MemcachedStore) -> None:
    a, b = MemcachedSession(store), MemcachedSession(store)
    a.feed(b"set k 0 0 1\r\n0\r\n")
    cas_a = a.feed(b"gets k\r\n").split(b"\r\n")[0].split()[-1]
    cas_b = b.feed(b"gets k\r\n").split(b"\r\n")[0].split()[-1]
    assert cas_a == cas_b
    assert a.feed(b"cas k 0 0 1 %b\r\nA\r\n" % cas_a) == b"STORED\r\n"
    assert b.feed(b"cas k 0 0 1 %b\r\nB\r\n" % cas_b) == b"EXISTS\r\n"
    assert b.feed(b"get k\r\n") == b"VALUE k 0 1\r\nA\r\nEND\r\n"


def test_cas_counter_with_threads() -> None:
    store = MemcachedStore()
    MemcachedSession(store).feed(b"set ctr 0 0 1\r\n0\r\n")
    n_threads, per = 4, 60
    conflicts = [0] * n_threads

    def worker(t: int) -> None:
        sess = MemcachedSession(store)
        done = 0
        while done < per:
            head = sess.feed(b"gets ctr\r\n").split(b"\r\n")
            _, _, _, _, cas = head[0].split()
            value = int(head[1]) + 1
            data = b"%d" % value
            reply = sess.feed(b"cas ctr 0 0 %d %b\r\n%b\r\n" % (len(data), cas, data))
            if reply == b"STORED\r\n":
                done += 1
            else:
                assert reply == b"EXISTS\r\n"
                conflicts[t] += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = MemcachedSession(store).feed(b"get ctr\r\n").split(b"\r\n")[1]
    assert int(final) == n_threads * per
    stats = dict(store.stats())
    assert int(stats["cas_hits"]) == n_threads * per
    assert int(stats["cas_badval"]) == sum(conflicts)


def test_delete(s: MemcachedSession) -> None:
    s.feed(b"set k 0 0 1\r\nx\r\n")
    assert s.feed(b"delete k\r\n") == b"DELETED\r\n"
    assert s.feed(b"delete k\r\n") == b"NOT_FOUND\r\n"
    s.feed(b"set k 0 0 1\r\nx\r\n")
    assert s.feed(b"delete k 0\r\n") == b"DELETED\r\n"
    s.feed(b"set k 0 0 1\r\nx\r\n")
    assert s.feed(b"delete k noreply\r\n") == b""
    assert s.feed(b"get k\r\n") == b"END\r\n"
    assert s.feed(b"delete k 0 noreply\r\n") == b""
    assert s.feed(b"delete k 5\r\n") == (
        b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]\r\n"
    )
    assert s.feed(b"delete\r\n") == b"ERROR\r\n"
    assert s.feed(b"delete a b c d\r\n") == b"ERROR\r\n"


def test_incr_decr(s: MemcachedSession) -> None:
    assert s.feed(b"incr n 1\r\n") == b"NOT_FOUND\r\n"
    assert s.feed(b"decr n 1\r\n") == b"NOT_FOUND\r\n"
    s.feed(b"set n 3 0 2\r\n10\r\n")
    assert s.feed(b"incr n 5\r\n") == b"15\r\n"
    assert s.feed(b"decr n 100\r\n") == b"0\r\n"  # decr stops at 0
    assert s.feed(b"incr n 18446744073709551615\r\n") == b"18446744073709551615\r\n"
    assert s.feed(b"incr n 2\r\n") == b"1\r\n"  # incr wraps modulo 2**64
    # a shorter result is written in place, space-padded (memcached); flags kept
    assert s.feed(b"get n\r\n") == b"VALUE n 3 20\r\n1%b\r\nEND\r\n" % (b" " * 19)
    assert s.feed(b"incr n 1 noreply\r\n") == b""
    assert s.feed(b"get n\r\n") == b"VALUE n 3 20\r\n2%b\r\nEND\r\n" % (b" " * 19)
    s.feed(b"set d 0 0 3\r\n100\r\n")
    assert s.feed(b"decr d 1\r\n") == b"99\r\n"
    assert s.feed(b"get d\r\n") == b"VALUE d 0 3\r\n99 \r\nEND\r\n"
    assert s.feed(b"incr d 901\r\n") == b"1000\r\n"  # longer: a new item
    assert s.feed(b"get d\r\n") == b"VALUE d 0 4\r\n1000\r\nEND\r\n"
    s.feed(b"set p 0 0 5\r\n 12  \r\n")  # whitespace around the digits is tolerated
    assert s.feed(b"incr p 1\r\n") == b"13\r\n"


@pytest.mark.parametrize(
    "value", [b"abc", b"", b"-1", b"1x", b"18446744073709551616", b"1234567890123456789012"]
)
def test_incr_non_numeric(s: MemcachedSession, value: bytes) -> None:
    s.feed(b"set v 0 0 %d\r\n%b\r\n" % (len(value), value))
    err = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
    assert s.feed(b"incr v 1\r\n") == err
    assert s.feed(b"decr v 1\r\n") == err
    assert s.feed(b"get v\r\n") == b"VALUE v 0 %d\r\n%b\r\nEND\r\n" % (len(value), value)


@pytest.mark.parametrize("delta", [b"abc", b"-1", b"18446744073709551616", b"1.5"])
def test_incr_bad_delta(s: MemcachedSession, delta: bytes) -> None:
    s.feed(b"set n 0 0 1\r\n1\r\n")
    assert s.feed(b"incr n %b\r\n" % delta) == b"CLIENT_ERROR invalid numeric delta argument\r\n"
    assert s.feed(b"incr n\r\n") == b"ERROR\r\n"


def test_relative_expiry(s: MemcachedSession, clock: FakeClock) -> None:
    s.feed(b"set k 0 10 1\r\nx\r\n")
    clock.now += 9
    assert s.feed(b"get k\r\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"
    clock.now += 1
    assert s.feed(b"get k\r\n") == b"END\r\n"
    # an expired item is gone for every command
    assert s.feed(b"replace k 0 0 1\r\ny\r\n") == b"NOT_STORED\r\n"
    assert s.feed(b"add k 0 0 1\r\ny\r\n") == b"STORED\r\n"


def test_absolute_and_boundary_expiry(s: MemcachedSession, clock: FakeClock) -> None:
    # exactly 30 days is still relative
    s.feed(b"set rel 0 %d 1\r\nx\r\n" % REL_EXPTIME_MAX)
    # larger values are absolute unix times
    s.feed(b"set abs 0 %d 1\r\nx\r\n" % int(T0 + 100))
    s.feed(b"set past 0 %d 1\r\nx\r\n" % (REL_EXPTIME_MAX + 1))  # 1970: already expired
    assert s.feed(b"get rel abs past\r\n") == (
        b"VALUE rel 0 1\r\nx\r\nVALUE abs 0 1\r\nx\r\nEND\r\n"
    )
    clock.now = T0 + 100
    assert s.feed(b"get rel abs\r\n") == b"VALUE rel 0 1\r\nx\r\nEND\r\n"
    clock.now = T0 + REL_EXPTIME_MAX
    assert s.feed(b"get rel\r\n") == b"END\r\n"


def test_negative_exptime_is_expired_immediately(s: MemcachedSession) -> None:
    s.feed(b"set k 0 0 1\r\nx\r\n")
    assert s.feed(b"set k 0 -1 1\r\ny\r\n") == b"STORED\r\n"
    assert s.feed(b"get k\r\n") == b"END\r\n"
    assert s.feed(b"add k 0 0 1\r\nz\r\n") == b"STORED\r\n"
    assert s.feed(b"get k\r\n") == b"VALUE k 0 1\r\nz\r\nEND\r\n"


def test_touch_and_gat(s: MemcachedSession, clock: FakeClock, store: MemcachedStore) -> None:
    s.feed(b"set k 0 5 1\r\nx\r\n")
    assert s.feed(b"touch k 100\r\n") == b"TOUCHED\r\n"
    assert s.feed(b"touch nope 100\r\n") == b"NOT_FOUND\r\n"
    assert s.feed(b"touch k 100 noreply\r\n") == b""
    assert s.feed(b"touch k abc\r\n") == b"CLIENT_ERROR invalid exptime argument\r\n"
    assert s.feed(b"touch k\r\n") == b"ERROR\r\n"
    clock.now += 50
    assert s.feed(b"get k\r\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"
    reply = s.feed(b"gat 10 k nope\r\n")
    assert reply == b"VALUE k 0 1\r\nx\r\nEND\r\n"
    assert re.fullmatch(rb"VALUE k 0 1 \d+\r\nx\r\nEND\r\n", s.feed(b"gats 10 k\r\n"))
    clock.now += 10
    assert s.feed(b"get k\r\n") == b"END\r\n"
    assert s.feed(b"gat abc k\r\n") == b"CLIENT_ERROR invalid exptime argument\r\n"
    assert s.feed(b"gat 10\r\n") == b"END\r\n"  # no key: nothing to find (memcached)
    assert s.feed(b"gat\r\n") == b"ERROR\r\n"
    stats = dict(store.stats())
    assert stats["touch_hits"] == "4" and stats["touch_misses"] == "2"


def test_flush_all_immediate(s: MemcachedSession) -> None:
    s.feed(b"set a 0 0 1\r\nx\r\nset b 0 0 1\r\ny\r\n")
    assert s.feed(b"flush_all\r\n") == b"OK\r\n"
    assert s.feed(b"get a b\r\n") == b"END\r\n"
    s.feed(b"set a 0 0 1\r\nz\r\n")
    assert s.feed(b"get a\r\n") == b"VALUE a 0 1\r\nz\r\nEND\r\n"
    assert s.feed(b"flush_all noreply\r\n") == b""
    assert s.feed(b"get a\r\n") == b"END\r\n"
    assert s.feed(b"flush_all -1\r\n") == b"OK\r\n"
    assert s.feed(b"flush_all x\r\n") == b"CLIENT_ERROR invalid exptime argument\r\n"
    assert s.feed(b"flush_all 1 2 3\r\n") == b"ERROR\r\n"


def test_flush_all_delayed(s: MemcachedSession, clock: FakeClock) -> None:
    s.feed(b"set old 0 0 1\r\nx\r\n")
    assert s.feed(b"flush_all 10\r\n") == b"OK\r\n"
    clock.now += 5
    s.feed(b"set mid 0 0 1\r\ny\r\n")  # stored before the deadline: flushed too
    assert s.feed(b"get old mid\r\n") == b"VALUE old 0 1\r\nx\r\nVALUE mid 0 1\r\ny\r\nEND\r\n"
    clock.now += 5
    assert s.feed(b"get old mid\r\n") == b"END\r\n"
    s.feed(b"set new 0 0 1\r\nz\r\n")  # after the deadline: survives
    clock.now += 100
    assert s.feed(b"get new\r\n") == b"VALUE new 0 1\r\nz\r\nEND\r\n"
    # a later immediate flush_all replaces a pending delayed one
    s.feed(b"flush_all 10 noreply\r\n")
    s.feed(b"flush_all 0\r\n")
    s.feed(b"set after 0 0 1\r\nw\r\n")
    clock.now += 20
    assert s.feed(b"get after\r\n") == b"VALUE after 0 1\r\nw\r\nEND\r\n"


def test_version_verbosity_misc(s: MemcachedSession, store: MemcachedStore) -> None:
    assert s.feed(b"version\r\n") == b"VERSION %b\r\n" % store.version.encode()
    assert s.feed(b"verbosity 1\r\n") == b"OK\r\n"
    assert s.feed(b"verbosity 1 noreply\r\n") == b""
    assert s.feed(b"verbosity\r\n") == b"ERROR\r\n"
    assert s.feed(b"verbosity x\r\n") == b"CLIENT_ERROR bad command line format\r\n"
    assert s.feed(b"mn\r\n") == b"MN\r\n"
    assert s.feed(b"shutdown\r\n") == b"ERROR: shutdown not enabled\r\n"
    assert s.feed(b"cache_memlimit 10\r\n") == b"OK\r\n"
    assert store.memory_limit == 10 << 20
    assert s.feed(b"cache_memlimit 0\r\n") == (
        b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n"
    )
    assert s.feed(b"cache_memlimit x\r\n") == b"ERROR\r\n"
    assert s.feed(b"cache_memlimit 5 noreply\r\n") == b""
    assert store.memory_limit == 10 << 20


def test_stats(clock: FakeClock) -> None:
    store = MemcachedStore(clock=clock, threads=4, memory_limit_mb=64)
    a = MemcachedSession(store)
    b = MemcachedSession(store)
    a.feed(b"set k 0 0 2\r\nab\r\n")
    a.feed(b"get k nope k\r\n")
    clock.now += 7
    out = a.feed(b"stats\r\n")
    assert out.endswith(b"END\r\n")
    stats = {}
    for line in out.split(b"\r\n")[:-2]:
        tag, name, value = line.split(b" ", 2)
        assert tag == b"STAT"
        stats[name.decode()] = value.decode()
    assert stats["pid"] == str(os.getpid())
    assert stats["uptime"] == "7"
    assert stats["time"] == str(int(T0 + 7))
    assert stats["version"] == store.version
    assert stats["curr_items"] == "1" and stats["total_items"] == "1"
    assert stats["cmd_get"] == "3" and stats["get_hits"] == "2" and stats["get_misses"] == "1"
    assert stats["cmd_set"] == "1"
    assert stats["curr_connections"] == "2" and stats["total_connections"] == "2"
    assert stats["threads"] == "4"
    assert stats["limit_maxbytes"] == str(64 << 20)
    assert int(stats["bytes"]) == item_total(1, 2, 0) == 48 + 2 + 4 + 8  # memcached's size
    float(stats["rusage_user"])
    b.close()
    b.close()  # idempotent
    assert dict(store.stats())["curr_connections"] == "1"
    assert a.feed(b"stats reset\r\n") == b"RESET\r\n"
    assert dict(store.stats())["cmd_get"] == "0"
    settings_out = a.feed(b"stats settings\r\n")
    assert b"STAT item_size_max 1048576\r\n" in settings_out and settings_out.endswith(b"END\r\n")
    assert a.feed(b"stats items\r\n") == b"END\r\n"
    assert a.feed(b"stats bogus\r\n") == b"ERROR\r\n"


def test_quit_closes(s: MemcachedSession) -> None:
    assert s.feed(b"set k 0 0 1\r\nx\r\nquit\r\nget k\r\n") == b"STORED\r\n"
    assert s.wants_close
    assert s.feed(b"get k\r\n") == b""
    assert s.requests == 2  # set and quit; nothing after quit


def test_requests_counter(s: MemcachedSession) -> None:
    s.feed(b"set a 0 0 1\r\nx\r\nget a\r\nge")
    assert s.requests == 2
    s.feed(b"t a\r\nbogus\r\n")
    assert s.requests == 4


def test_noreply_storage_commands(s: MemcachedSession) -> None:
    for cmd in (b"set", b"add", b"replace", b"append", b"prepend"):
        assert s.feed(b"%b k 0 0 1 noreply\r\nx\r\n" % cmd) == b""
    assert s.feed(b"cas k 0 0 1 1 noreply\r\nx\r\n") == b""
    assert s.feed(b"get k\r\n") == b"VALUE k 0 3\r\nxxx\r\nEND\r\n"  # set, append, prepend
    # noreply also silences errors of that command: "bad data chunk" is not sent, but the
    # two bytes after the 3-byte block form an empty command line, which is an ERROR
    assert s.feed(b"set k 0 0 1 noreply\r\nxyz\r\n") == b"ERROR\r\n"
    assert s.feed(b"get k\r\n") == b"VALUE k 0 3\r\nxxx\r\nEND\r\n"


def test_line_endings_and_whitespace(s: MemcachedSession) -> None:
    assert s.feed(b"set k 0 0 1\nx\r\n") == b"STORED\r\n"  # bare \n ends a command line
    assert s.feed(b"get k\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"
    assert s.feed(b"  get   k  \r\n") == b"VALUE k 0 1\r\nx\r\nEND\r\n"
    assert s.feed(b"\r\n") == b"ERROR\r\n"
    assert s.feed(b"\n") == b"ERROR\r\n"


def test_unknown_and_wrong_arity(s: MemcachedSession) -> None:
    assert s.feed(b"bogus\r\n") == b"ERROR\r\n"
    assert s.feed(b"GET k\r\n") == b"ERROR\r\n"  # commands are case-sensitive
    assert s.feed(b"get\r\n") == b"ERROR\r\n"
    assert s.feed(b"set k 0 0\r\n") == b"ERROR\r\n"
    assert s.feed(b"cas k 0 0 1\r\n") == b"ERROR\r\n"
    # too many tokens: the data line is then parsed as a command too
    assert s.feed(b"set k 0 0 1 a b\r\nx\r\n") == b"ERROR\r\nERROR\r\n"
    assert not s.wants_close


@pytest.mark.parametrize(
    "line",
    [
        b"set k 18446744073709551616 0 1",  # beyond strtoul's range
        b"set k -1 0 1",
        b"set k x 0 1",
        b"set k 0 x 1",
        b"set k 0 0 -1",
        b"set k 0 0 x",
        b"set k 0 0 2147483647",  # above 2**31-3
        b"cas k 0 0 1 x",
        b"cas k 0 0 1 -1",
        b"set " + b"k" * 251 + b" 0 0 1",
    ],
)
def test_bad_command_line_format(s: MemcachedSession, line: bytes) -> None:
    # like memcached, the data block is not swallowed and is parsed as a command
    assert s.feed(line + b"\r\nx\r\n") == b"CLIENT_ERROR bad command line format\r\nERROR\r\n"
    assert not s.wants_close
    assert s.feed(b"version\r\n").startswith(b"VERSION ")


def test_key_length_limit(s: MemcachedSession) -> None:
    k250 = b"k" * 250
    assert s.feed(b"set %b 0 0 1\r\nx\r\n" % k250) == b"STORED\r\n"
    assert s.feed(b"get %b\r\n" % k250) == b"VALUE %b 0 1\r\nx\r\nEND\r\n" % k250
    bad = b"CLIENT_ERROR bad command line format\r\n"
    assert s.feed(b"get %b\r\n" % (k250 + b"k")) == bad
    assert s.feed(b"get a %b\r\n" % (k250 + b"k")) == bad
    assert s.feed(b"delete %b\r\n" % (k250 + b"k")) == bad
    assert s.feed(b"incr %b 1\r\n" % (k250 + b"k")) == bad
    assert s.feed(b"touch %b 1\r\n" % (k250 + b"k")) == bad


def test_numbers_read_like_strtoul(s: MemcachedSession) -> None:
    # flags are taken modulo 2**32, exptime and <bytes> as signed 32-bit (memcached 1.6.18)
    assert s.feed(b"set k 4294967297 0 1\r\nx\r\n") == b"STORED\r\n"
    assert s.feed(b"get k\r\n") == b"VALUE k 1 1\r\nx\r\nEND\r\n"
    assert s.feed(b"set k +5 +0 +1\r\ny\r\n") == b"STORED\r\n"
    assert s.feed(b"set j 000000000000000000007 0 000000000000000000001\r\nz\r\n") == (
        b"STORED\r\n"
    )
    assert s.feed(b"get k j\r\n") == b"VALUE k 5 1\r\ny\r\nVALUE j 7 1\r\nz\r\nEND\r\n"
    assert s.feed(b"set e 0 2147483648 1\r\nx\r\n") == b"STORED\r\n"  # wraps negative
    assert s.feed(b"get e\r\n") == b"END\r\n"
    assert s.feed(b"set n 0 0 2\r\n10\r\nincr n +000000000000000000005\r\n") == (
        b"STORED\r\n15\r\n"
    )
    assert s.feed(b"incr n -1\r\n") == b"CLIENT_ERROR invalid numeric delta argument\r\n"
    assert s.feed(b"get\tn\r\n") == b"ERROR\r\n"  # tokens are split on spaces only


def test_runaway_line_closes_without_reply(s: MemcachedSession) -> None:
    assert s.feed(b"set " + b"k" * 1000) == b""  # still waiting for the end of line
    assert s.feed(b"k" * 1100) == b""  # over 2048 bytes without a newline: closed
    assert s.wants_close
    assert s.feed(b"\r\nget k\r\n") == b""


def test_complete_long_line_is_processed(store: MemcachedStore) -> None:
    s = MemcachedSession(store)
    assert s.feed(b"delete " + b"k" * 2100 + b"\r\n") == b"CLIENT_ERROR bad command line format\r\n"
    assert not s.wants_close
    assert s.feed(b"delete " + b"k" * 17000 + b"\r\n") == b""  # beyond the read buffer
    assert s.wants_close


def test_long_multiget_line_is_allowed(s: MemcachedSession) -> None:
    keys = [b"key%05d" % i for i in range(400)]  # ~3.6 KB command line
    for k in keys[::50]:
        s.feed(b"set %b 0 0 1\r\nv\r\n" % k)
    line = b"get " + b" ".join(keys) + b"\r\n"
    assert len(line) > 2048
    out = bytearray()
    for i in range(0, len(line), 500):  # arrives in pieces
        out += s.feed(line[i : i + 500])
    assert out.count(b"VALUE ") == 8 and out.endswith(b"END\r\n")
    assert not s.wants_close


def test_multiget_line_limit(store: MemcachedStore) -> None:
    s = MemcachedSession(store, max_get_line=4096)
    assert s.feed(b"get " + b"k " * 3000) == b""
    assert s.wants_close


def test_value_too_large_is_swallowed(s: MemcachedSession) -> None:
    s.feed(b"set k 0 0 3\r\nold\r\n")
    big = 2 * 1024 * 1024
    assert s.feed(b"set k 0 0 %d\r\n" % big) == b"SERVER_ERROR object too large for cache\r\n"
    out = bytearray()
    chunk = b"y" * 65536
    for _ in range(big // len(chunk)):
        out += s.feed(chunk)
    out += s.feed(b"\r\nget k\r\n")
    # a failed set removes the old value (no stale data), and the stream is back in sync
    assert out == b"END\r\n"
    assert len(s._buf) == 0  # the swallowed block was never buffered
    s.feed(b"set k 0 0 3\r\nnew\r\n")
    assert s.feed(b"add k 0 0 %d noreply\r\n" % big + b"z" * big + b"\r\n") == b""
    assert s.feed(b"get k\r\n") == b"VALUE k 0 3\r\nnew\r\nEND\r\n"  # add keeps the old value


def test_value_size_limit_is_configurable(clock: FakeClock) -> None:
    # the limit counts memcached's item header and the key, not just the value
    store = MemcachedStore(clock=clock, item_size_max=item_total(1, 10, 0))
    s = MemcachedSession(store)
    assert s.feed(b"set k 0 0 10\r\n0123456789\r\n") == b"STORED\r\n"
    # an append whose result would be too large is NOT_STORED (memcached)
    assert s.feed(b"append k 0 0 1\r\nx\r\n") == b"NOT_STORED\r\n"
    assert s.feed(b"set kk 0 0 10\r\n0123456789\r\n") == (  # one more key byte
        b"SERVER_ERROR object too large for cache\r\n"
    )
    assert s.feed(b"set k 1 0 10\r\n0123456789\r\n") == (  # nonzero flags: 4 bytes more
        b"SERVER_ERROR object too large for cache\r\n"
    )
    assert s.feed(b"set k 0 0 11\r\n0123456789x\r\nget k\r\n") == (
        b"SERVER_ERROR object too large for cache\r\nEND\r\n"
    )


def test_bad_data_chunk(s: MemcachedSession) -> None:
    # exactly <bytes>+2 bytes are consumed; the rest is parsed as commands
    assert s.feed(b"set k 0 0 1\r\nxyz\r\n") == b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"
    assert s.feed(b"set k 0 0 3\r\n1000\r\n") == b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"
    assert s.feed(b"get k\r\n") == b"END\r\n"
    assert s.feed(b"set k 0 0 1\r\nx\n") == b""  # waiting for the 3rd byte
    assert s.feed(b"get k\r\n") == b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"
    assert not s.wants_close


def test_binary_protocol_is_refused(store: MemcachedStore) -> None:
    s = MemcachedSession(store)
    assert s.feed(b"\x80\x00\x00\x05" + b"\x00" * 20) == b""
    assert s.wants_close
    t = MemcachedSession(store)  # only as the connection's first byte
    assert t.feed(b"version\r\n\x80\x01\r\n") == (
        b"VERSION %b\r\nERROR\r\n" % store.version.encode()
    )
    assert not t.wants_close


def test_byte_by_byte_equals_whole(store: MemcachedStore) -> None:
    script = (
        b"set a 1 0 3\r\nabc\r\nget a b\r\nappend a 0 0 2\r\nde\r\nincr a 1\r\n"
        b"set n 0 0 1\r\n7\r\nincr n 5\r\ndecr n 100\r\ndelete a\r\nget a n\r\n"
        b"touch n 10\r\nbogus\r\nset x 0 0 1\r\nxyz\r\nflush_all\r\nget n\r\n"
    )
    whole = MemcachedSession(MemcachedStore(clock=lambda: T0)).feed(script)
    piecewise = MemcachedSession(MemcachedStore(clock=lambda: T0))
    rng = random.Random(1234)
    out = bytearray()
    i = 0
    while i < len(script):
        j = i + rng.randint(1, 7)
        out += piecewise.feed(script[i:j])
        i = j
    assert bytes(out) == whole
    assert whole.count(b"\r\n") > 10


def test_lru_eviction_by_memory_limit(clock: FakeClock) -> None:
    item = item_total(2, 10, 0) + PY_ITEM_OVERHEAD  # key "kN", 10-byte values
    store = MemcachedStore(memory_limit=5 * item, clock=clock)
    s = MemcachedSession(store)
    for i in range(5):
        assert s.feed(b"set k%d 0 0 10\r\n0123456789\r\n" % i) == b"STORED\r\n"
    s.feed(b"get k0\r\n")  # k0 becomes most recently used; k1 is now the oldest
    s.feed(b"set k5 0 0 10\r\n0123456789\r\n")
    assert s.feed(b"get k1\r\n") == b"END\r\n"
    assert s.feed(b"get k0\r\n").startswith(b"VALUE k0")
    stats = dict(store.stats())
    assert stats["evictions"] == "1" and stats["curr_items"] == "5"
    assert int(stats["bytes"]) == 5 * item_total(2, 10, 0)
    # an item larger than the whole cache cannot be stored
    assert s.feed(b"set huge 0 0 %d\r\n" % (6 * item) + b"h" * (6 * item) + b"\r\n") == (
        b"SERVER_ERROR out of memory storing object\r\n"
    )


def test_store_thread_safety_with_eviction() -> None:
    store = MemcachedStore(memory_limit=200 * (item_total(5, 8, 0) + PY_ITEM_OVERHEAD))
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        sess = MemcachedSession(store)
        rng = random.Random(t)
        try:
            for _ in range(400):
                k = b"k%04d" % rng.randrange(1000)
                op = rng.random()
                if op < 0.5:
                    assert sess.feed(b"set %b 0 0 8\r\n%08d\r\n" % (k, t)) == b"STORED\r\n"
                elif op < 0.8:
                    out = sess.feed(b"get %b\r\n" % k)
                    assert out == b"END\r\n" or out.startswith(b"VALUE %b 0 8\r\n" % k)
                else:
                    assert sess.feed(b"delete %b\r\n" % k) in (b"DELETED\r\n", b"NOT_FOUND\r\n")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    stats = dict(store.stats())
    assert int(stats["curr_items"]) <= 200
    assert int(stats["evictions"]) > 0
    assert int(stats["bytes"]) == int(stats["curr_items"]) * item_total(5, 8, 0)


_REPLY_LINE = re.compile(
    rb"(STORED|NOT_STORED|EXISTS|NOT_FOUND|DELETED|TOUCHED|END|OK|ERROR|RESET|MN|\d+ *"
    rb"|VERSION .*|STAT .*|VALUE .*|CLIENT_ERROR .*|SERVER_ERROR .*|ERROR: .*"
    rb"|(HD|EN|NS|EX|NF)( .*)?|VA \d+( .*)?|ME .*|ITEM .*|MEMLIMIT_.*)"
)

_TOKENS = [
    b"get", b"gets", b"set", b"add", b"cas", b"append", b"incr", b"decr", b"delete", b"touch",
    b"gat", b"flush_all", b"stats", b"noreply", b"k", b"0", b"1", b"-1", b"3", b"99999999",
    b"18446744073709551616", b"x", b"\r\n", b"\n", b" ", b"\x80", b"abc\r\n",
    b"mg", b"ms", b"md", b"ma", b"me", b"mn", b"v", b"q", b"c", b"t", b"T1", b"N1", b"C1",
    b"MA", b"MD", b"Ob", b"b", b"Zm9v", b"I", b"R5", b"J3", b"D2",
]


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    st.lists(st.one_of(st.sampled_from(_TOKENS), st.binary(max_size=6)), max_size=40),
    st.integers(1, 16),
)
def test_fuzz_never_raises(parts: list[bytes], step: int) -> None:
    sess = MemcachedSession(MemcachedStore(clock=lambda: T0))
    data = b" ".join(parts)
    out = bytearray()
    for i in range(0, len(data), step):
        out += sess.feed(data[i : i + step])
    # the reply stream parses as well-formed reply lines and VALUE data blocks
    reply = bytes(out)
    pos = 0
    while pos < len(reply):
        end = reply.index(b"\r\n", pos)
        line = reply[pos:end]
        assert _REPLY_LINE.fullmatch(line), line
        pos = end + 2
        if line.startswith((b"VALUE ", b"VA ")):
            nbytes = int(line.split(b" ")[3 if line.startswith(b"VALUE") else 1])
            assert reply[pos + nbytes : pos + nbytes + 2] == b"\r\n"
            pos += nbytes + 2


# -- memory bound ----------------------------------------------------------------------------


def test_default_memory_limit_is_64_mib() -> None:
    store = MemcachedStore()
    assert store.memory_limit == 64 << 20
    assert dict(store.settings())["evictions"] == "on"
    assert dict(store.stats())["limit_maxbytes"] == str(64 << 20)


def test_footprint_estimate_matches_python_memory() -> None:
    # The limit bounds the Python memory the items really use, not only memcached's sizes.
    import gc
    import tracemalloc

    store = MemcachedStore(memory_limit=None)
    s = MemcachedSession(store)
    n = 4000
    gc.collect()
    tracemalloc.start()
    try:
        for i in range(n):
            s.feed(b"set key:%08d 0 0 10\r\n0123456789\r\n" % i)
        gc.collect()
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = item_total(12, 10, 0) + PY_ITEM_OVERHEAD
    assert 0.6 * estimate < used / n < 1.4 * estimate


def test_half_sent_values_are_reserved_within_the_limit() -> None:
    size = 1_000_000
    need = item_total(2, size, 0) + PY_ITEM_OVERHEAD
    store = MemcachedStore(memory_limit=3 * need + need // 2)
    s0 = MemcachedSession(store)
    assert s0.feed(b"set old 0 0 3\r\nold\r\n") == b"STORED\r\n"
    sessions = [MemcachedSession(store) for _ in range(6)]
    replies = [
        sess.feed(b"set k%d 0 0 %d\r\n" % (i, size) + b"v" * 1000)
        for i, sess in enumerate(sessions)
    ]
    # three half-sent values fit (the old item is evicted to make room); the others are
    # refused at once and their data is swallowed, not buffered
    assert replies[:3] == [b""] * 3
    assert replies[3:] == [b"SERVER_ERROR out of memory storing object\r\n"] * 3
    assert s0.feed(b"get old\r\n") == b"END\r\n"
    assert dict(store.stats())["evictions"] == "1"
    assert [sess.buffered for sess in sessions] == [1000] * 3 + [0] * 3
    assert int(dict(store.stats())["reserved_bytes"]) == 3 * need
    # the refused ones stay in sync once their data has been swallowed
    assert sessions[3].feed(b"v" * (size - 1000) + b"\r\nget k3\r\n") == b"END\r\n"
    # a completed value turns its reservation into the item; a closed connection gives
    # its reservation back
    assert sessions[0].feed(b"v" * (size - 1000) + b"\r\n") == b"STORED\r\n"
    sessions[1].close()
    sessions[2].close()
    stats = dict(store.stats())
    assert stats["reserved_bytes"] == "0" and stats["curr_items"] == "1"
    assert MemcachedSession(store).feed(b"set k4 0 0 1\r\nx\r\n") == b"STORED\r\n"


def test_partial_get_lines_are_reserved_too() -> None:
    store = MemcachedStore(memory_limit=1 << 20)
    line = b"get " + b"key " * 100_000  # 400 KB of keys, no newline yet
    a, b, c = (MemcachedSession(store) for _ in range(3))
    assert a.feed(line) == b"" and not a.wants_close
    assert b.feed(line) == b"" and not b.wants_close
    assert c.feed(line) == b"" and c.wants_close  # no room left: closed, as memcached
    assert c.buffered == 0
    assert a.feed(b"\r\n") == b"END\r\n"
    assert dict(store.stats())["reserved_bytes"] != "0"  # b still holds its line
    b.close()
    assert dict(store.stats())["reserved_bytes"] == "0"
