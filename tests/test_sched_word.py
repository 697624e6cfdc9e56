"""Scheduler word, labels, tunables and the FKQTUNE word (docs/semantics.md §3.2, §3.3,
§3.18; D4, D7)."""

from __future__ import annotations

import dataclasses

import pytest

from skqueue.constants import (
    KQ_SCHED_BEST,
    KQ_SCHED_CPU,
    KQ_SCHED_FEAT_WS,
    KQ_SCHED_QUEUE,
    KQSCHED_MAKE,
    KQTUNE_FREQ,
    KQTUNE_MAKE,
    KQTUNE_RTSHARE,
)
from skqueue.sched import SchedWord, Tunables, parse_sched, sched_label, validate_tune

# The authors' words (semantics §3.2): label -> word.
AUTHORS_WORDS = {
    "queue0": 0x1,
    "cpu0": 0x2,
    "queue2": 0x201,
    "cpu2": 0x202,
    "best2": 0x204,
    "ws1": 0x01010000,
    "q0_ws": 0x01010001,
    "q2_ws": 0x01010201,
    "queue2_ws": 0x01010201,
    "cpu0_ws": 0x01010002,
    "cpu2_ws": 0x01010202,
    "best2_ws": 0x01010204,
    "rand": 0,
}


@pytest.mark.parametrize("label,word", sorted(AUTHORS_WORDS.items()))
def test_authors_words_parse(label: str, word: int) -> None:
    assert parse_sched(label) == word


@pytest.mark.parametrize("label,word", sorted(AUTHORS_WORDS.items()))
def test_authors_words_round_trip(label: str, word: int) -> None:
    sw = SchedWord.from_word(word)
    assert sw.word == word
    # the canonical label parses back to the same word
    assert parse_sched(sw.label) == word
    assert sched_label(word) == sw.label


@pytest.mark.parametrize(
    "word,label",
    [
        (0, "rand"),
        (0x01010000, "ws"),
        (0x04010000, "ws4"),
        (0x2, "cpu0"),
        (0x01010204, "best2_ws"),
        (KQSCHED_MAKE(KQ_SCHED_QUEUE, 2, KQ_SCHED_FEAT_WS, 4), "queue2_ws4"),
        (KQSCHED_MAKE(KQ_SCHED_BEST, 255, 0, 0), "best255"),
    ],
)
def test_canonical_labels(word: int, label: str) -> None:
    assert sched_label(word) == label


def test_label_aliases_and_normalisation() -> None:
    assert parse_sched("  BEST2_WS ") == 0x01010204
    assert parse_sched("Q2") == parse_sched("queue2") == 0x201
    assert parse_sched("ws") == parse_sched("ws1") == 0x01010000
    assert parse_sched("rand_ws") == 0x01010000
    assert parse_sched("cpu4_ws8") == KQSCHED_MAKE(KQ_SCHED_CPU, 4, KQ_SCHED_FEAT_WS, 8)
    assert parse_sched("queue255_ws255") == KQSCHED_MAKE(KQ_SCHED_QUEUE, 255, 1, 255)


@pytest.mark.parametrize(
    "bad",
    ["vanilla", "legacy", "", "best", "queue", "cpu", "rand2", "best0", "queue256", "ws0",
     "best2_ws0", "best2_ws256", "best2ws", "fifo", "cpu-1", "best2_ws_ws", "0x204"],
)
def test_parse_errors_name_accepted_forms(bad: str) -> None:
    with pytest.raises(ValueError) as ei:
        parse_sched(bad)
    msg = str(ei.value)
    assert repr(bad) in msg
    if bad in ("vanilla", "legacy", "fifo", ""):
        assert "accepted forms" in msg and "bestN" in msg and "_wsK" in msg
    if bad in ("vanilla", "legacy"):
        assert "server modes" in msg


def test_parse_range_messages() -> None:
    with pytest.raises(ValueError, match="out of range 1..255"):
        parse_sched("best0")
    with pytest.raises(ValueError, match="out of range 0..255"):
        parse_sched("cpu300")
    with pytest.raises(ValueError, match="steal count 0 out of range"):
        parse_sched("ws0")


def test_parse_rejects_non_str() -> None:
    with pytest.raises(ValueError):
        parse_sched(0x204)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "word,why",
    [
        (0x03, "unknown policy"),  # QUEUE|CPU combined (D4)
        (0x05, "unknown policy"),
        (0x08, "unknown policy"),
        (0xFF, "unknown policy"),
        (KQSCHED_MAKE(0, 0, 0x02, 1), "unknown feature"),
        (KQSCHED_MAKE(0, 0, 0x03, 1), "unknown feature"),
        (KQSCHED_MAKE(0, 0, KQ_SCHED_FEAT_WS, 0), "fargs >= 1"),
        (KQSCHED_MAKE(KQ_SCHED_BEST, 0, 0, 0), "sargs >= 1"),
        (-1, "32 bits"),
        (1 << 32, "32 bits"),
    ],
)
def test_from_word_validation(word: int, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        SchedWord.from_word(word)
    with pytest.raises(ValueError):
        sched_label(word)


def test_from_word_accepts_full_byte_ranges() -> None:
    # D4: any sargs/fargs up to 255 (the original asserted <= 2 and <= 8)
    for sched in (0, KQ_SCHED_QUEUE, KQ_SCHED_CPU, KQ_SCHED_BEST):
        w = KQSCHED_MAKE(sched, 255, KQ_SCHED_FEAT_WS, 255)
        sw = SchedWord.from_word(w)
        assert (sw.sched, sw.sargs, sw.feat, sw.fargs) == (sched, 255, 1, 255)
        assert sw.ws and sw.word == w
    # fargs without WS is ignored, not an error
    assert not SchedWord.from_word(KQSCHED_MAKE(0, 0, 0, 7)).ws


def test_schedword_is_frozen_and_validated() -> None:
    sw = SchedWord(KQ_SCHED_CPU, 2, 0, 0)
    assert not sw.ws and sw.uses_topology and sw.label == "cpu2"
    with pytest.raises(dataclasses.FrozenInstanceError):
        sw.sargs = 3  # type: ignore[misc]
    with pytest.raises(ValueError):
        SchedWord(0, 256, 0, 0)
    with pytest.raises(ValueError):
        SchedWord(KQ_SCHED_BEST | KQ_SCHED_CPU, 1, 0, 0)
    with pytest.raises(ValueError):
        SchedWord.from_word("0x204")  # type: ignore[arg-type]
    assert not SchedWord(KQ_SCHED_BEST, 2, 0, 0).uses_topology


# -- tunables -----------------------------------------------------------------------------


def test_tunables_defaults_and_copy() -> None:
    t = Tunables()
    assert (t.cache_pen_ns, t.ws_interval_ns, t.ws_kn_factor, t.log_threshold,
            t.timer_max, t.seed) == (476, 100_000, 2, 0, 65536, None)
    c = t.copy()
    c.cache_pen_ns = 0
    assert t.cache_pen_ns == 476
    with pytest.raises(AttributeError):
        t.bogus = 1  # type: ignore[attr-defined]  # slots
    with pytest.raises(ValueError):
        Tunables(ws_kn_factor=0)
    with pytest.raises(ValueError):
        Tunables(cache_pen_ns=-1)


def test_validate_tune_rtshare() -> None:
    assert KQTUNE_MAKE(KQTUNE_RTSHARE, 50) == 0x00320002
    assert validate_tune(0x00320002, multi=False) == (KQTUNE_RTSHARE, 50)
    for share in range(0, 101):  # D7: 0 is allowed
        assert validate_tune(KQTUNE_MAKE(KQTUNE_RTSHARE, share), multi=True) == (2, share)
    for share in (101, 200, 0xFFFF):
        with pytest.raises(ValueError, match="RTSHARE"):
            validate_tune(KQTUNE_MAKE(KQTUNE_RTSHARE, share), multi=True)


def test_validate_tune_freq_and_objects() -> None:
    for multi in (False, True):  # accepted in both modes
        assert validate_tune(KQTUNE_MAKE(KQTUNE_FREQ, 0), multi) == (KQTUNE_FREQ, 0)
        assert validate_tune(KQTUNE_MAKE(KQTUNE_FREQ, 65535), multi) == (KQTUNE_FREQ, 65535)
    for obj in (0, 3, 4, 0xFFFF):
        with pytest.raises(ValueError, match="unknown tune object"):
            validate_tune(KQTUNE_MAKE(obj, 1), multi=True)
    with pytest.raises(ValueError):
        validate_tune(-1, multi=True)
    with pytest.raises(ValueError):
        validate_tune(1 << 32, multi=True)
