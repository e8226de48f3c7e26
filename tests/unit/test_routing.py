"""Routing raw bytes to shards: the same customer always meets the same shard, whatever the encoding."""

from __future__ import annotations

import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state.events import MAX_TS_MS, MIN_TS_MS, Event, parse_event
from state.routing import (
    _ID_AT,
    _shard_by_slicing,
    _ts_by_slicing,
    id_value_at,
    shard_of_id,
    shard_of_raw,
    ts_of_raw,
)
from tests.helpers import T0, styled

SHARDS = 16


def _raw(cid: object, **extra: object) -> bytes:
    return orjson.dumps({"event_id": "e1", "customer_id": cid, "ts": T0, "channel": "app", "type": "view", **extra})


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"e1","customer_id":"c123","ts":1,"channel":"app","type":"view"}',
        b'{"event_id":"e1", "customer_id" : "c123" ,"ts":1}',
        b'{"event_id":"e1",\n  "customer_id":\n\t"c123"}',
        b'{"customer_id":"\\u0063123"}',
        b'{"customer_id":"c\\u0031\\u00323"}',
        b'{"attrs":{"customer_id":"other"},"customer_id":"c123"}',
        b'{"note":"customer_id","customer_id":"c123"}',
    ],
)
def test_encodings_of_one_customer_id_route_to_one_shard(raw: bytes) -> None:
    assert orjson.loads(raw)["customer_id"] == "c123"
    assert shard_of_raw(raw, SHARDS) == shard_of_id("c123", SHARDS)


def test_unicode_ids_route_like_their_parsed_value_raw_or_escaped() -> None:
    cid = "客户-ü-😀"
    plain = _raw(cid)
    escaped = json.dumps(orjson.loads(plain), ensure_ascii=True).encode()
    assert b"\\u" in escaped
    assert shard_of_raw(plain, SHARDS) == shard_of_raw(escaped, SHARDS) == shard_of_id(cid, SHARDS)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id":"e1","ts":1}',
        b'{"customer_id":42}',
        b'{"customer_id":null,"x":"y"}',
        b'{"customer_id":["c1"]}',
        b"not json",
        b"[1,2]",
        b"",
    ],
)
def test_messages_without_a_usable_customer_id_go_to_shard_zero(raw: bytes) -> None:
    assert shard_of_raw(raw, SHARDS) == 0


def test_shard_of_id_is_stable_and_in_range() -> None:
    # crc32 of the UTF-8 bytes: the same in every process and after restarts (no per-process string hash).
    assert shard_of_id("c1", 1_000_000) == 159457
    assert shard_of_id("客户", 1_000_000) == 704597
    assert all(0 <= shard_of_id(f"c{i}", 5) < 5 for i in range(200))
    assert len({shard_of_id(f"c{i}", 5) for i in range(200)}) == 5


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.integers(1, 64), st.sampled_from(["orjson", "ascii", "spaced", "attrs_first"]))
def test_shard_of_raw_agrees_with_the_parsed_customer_id(cid: str, shards: int, style: str) -> None:
    doc = {"event_id": "e1", "customer_id": cid, "ts": T0, "channel": "app", "type": "view"}
    raw = styled(doc, style, attrs={"customer_id": cid + "x"})
    assert shard_of_raw(raw, shards) == shard_of_id(cid, shards)
    parsed = parse_event(raw)
    if isinstance(parsed, Event):
        assert shard_of_raw(raw, shards) == shard_of_id(parsed.customer_id, shards)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120), st.integers(1, 8))
def test_shard_of_raw_never_raises_and_stays_in_range(raw: bytes, shards: int) -> None:
    assert 0 <= shard_of_raw(raw, shards) < shards


# -- ts_of_raw -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "ts"),
    [
        (b'{"ts":1767225600000}', T0),
        (b'{"event_id":"e","ts" : 1767225600000 ,"type":"view"}', T0),
        (b'{"ts":\t1767225600000\n}', T0),
        (b'{"step":"ts","ts":1767225600000}', T0),
        (b'{"attrs":{"ts":4000000000000},"ts":1767225600000}', T0),
        (b'{"ts":1767225600000,"attrs":{"ts":1}}', T0),
        (b'{"ts":"2026-01-01T00:00:00Z"}', T0),
        (b'{"ts" : "2026-01-01T00:00:11.153+00:00","x":1}', T0 + 11_153),
        (b'{"ts":"2026-01-01T08:00:00.0005+08:00"}', T0 + 1),
        (b'{"ts":"2026-01-01T00:00:00"}', None),
        (b'{"ts":"1999-12-31T23:59:59Z"}', None),
        (b'{"ts":"not a time"}', None),
        (b'{"ts":"2026-01-01T00:00:00\\u005a"}', None),
        (b'{"ts":"2026-01-01T00:00:00Z}', None),
        (b'{"step":"ts","ts":"2026-01-01T00:00:00Z"}', T0),
        (b'{"ts":1767225600000.5}', None),
        (b'{"ts":-1767225600000}', None),
        (b'{"ts":1e12}', None),
        (b'{"ts":null}', None),
        (b'{"event_id":"e"}', None),
        (b'{"ts":99999999999999}', None),
        (b'{"ts":946684799999}', None),
        (b'{"ts":4102444800000}', None),
        (b'{"ts":12345678901234567890}', None),
        (b"not json", None),
    ],
)
def test_ts_of_raw_reads_the_integer_or_iso_event_time_or_nothing(raw: bytes, ts: int | None) -> None:
    assert ts_of_raw(raw) == ts


@settings(max_examples=300, deadline=None)
@given(st.integers(MIN_TS_MS - 10, MAX_TS_MS + 10),
       st.dictionaries(st.sampled_from(["ts", "reason", "t"]), st.integers(0, 2**53), max_size=3),
       st.booleans())
def test_ts_of_raw_is_the_parsed_ts_or_none(ts: int, attrs: dict[str, int], attrs_first: bool) -> None:
    doc: dict[str, object] = {"event_id": "e1", "customer_id": "c", "ts": ts, "channel": "app", "type": "view"}
    doc = {"attrs": attrs, **doc} if attrs_first else {**doc, "attrs": attrs}
    raw = orjson.dumps(doc)
    got = ts_of_raw(raw)
    assert got == (ts if MIN_TS_MS <= ts < MAX_TS_MS else None)


@settings(max_examples=300, deadline=None)
@given(st.integers(MIN_TS_MS - 10_000, MAX_TS_MS + 10_000), st.integers(-14 * 60, 14 * 60),
       st.sampled_from(["milliseconds", "microseconds", "seconds"]), st.booleans())
def test_ts_of_raw_reads_an_iso_ts_as_parsing_does(ts: int, offset_min: int, spec: str, attrs_ts: bool) -> None:
    """The end-of-input flush and the live release must see ISO-8601 times, and read them as parsing does."""
    from datetime import UTC, datetime, timedelta, timezone

    tz = timezone(timedelta(minutes=offset_min))
    try:
        iso = datetime.fromtimestamp(ts / 1000, UTC).astimezone(tz).isoformat(timespec=spec)
    except (OverflowError, ValueError):
        return  # outside datetime's years
    doc: dict[str, object] = {"event_id": "e1", "customer_id": "c", "ts": iso, "channel": "app", "type": "view"}
    if attrs_ts:
        doc["attrs"] = {"ts": 1}
    raw = orjson.dumps(doc)
    ev = parse_event(raw)
    assert ts_of_raw(raw) == (ev.ts_ms if type(ev) is Event else None)
    assert ts_of_raw(raw) == _ts_by_slicing(raw)


# -- the patterns agree with slicing byte by byte -------------------------------------------------------
_ODD_LINES = [
    b'{"event_id":"e1","customer_id":"c123","ts":1767225600000,"channel":"app","type":"view"}',
    b'{"event_id":"e1", "customer_id" : "c123" ,"ts" : 1767225600000 }',
    b'{"event_id":"e1",\n  "customer_id":\n\t"c123","ts":\t1767225600000\n}',
    b'{"customer_id":"\\u0063123"}',
    b'{"attrs":{"customer_id":"other"},"customer_id":"c123"}',
    b'{"note":"customer_id","customer_id":"c123"}',
    b'{"customer_id":42}',
    b'{"customer_id":"unterminated',
    b'{"step":"ts","ts":1767225600000}',
    b'{"attrs":{"ts":4000000000000},"ts":1767225600000}',
    b'{"ts":"2026-01-01T00:00:00Z"}',
    b'{"ts": "2026-01-01T00:00:11.153+00:00"}',
    b'{"ts":"2026-01-01T00:00:00"}',
    b'{"ts":"2026-01-01T00:00:00Z',
    b'{"ts":1767225600000.5}',
    b'{"ts":12345678901234567890}',
    b'{"ts":946684799999}',
    b'{"ts":4102444800000}',
    b'{"ts"ts":1767225600000}',
    b'{"ts" x:1767225600000}',
    b'{"ts":1767225600000',
    b'{"event_id":"e1","customer_id":"c1","ts":1767225600000,"channel":"app"}',
    b'{"event_id":"e1","customer_id":"c1","ts":1767225600000}',
    b'{"event_id":"ts","customer_id":"c1","ts":1767225600000,"x":1}',
    b'{"event_id":"customer_id","customer_id":"c1","ts":1767225600000,"x":1}',
    b'{"event_id":"e1","customer_id":"ts","ts":1767225600000,"x":1}',
    b'{"event_id":"e1","customer_id":"c1","ts":1767225600000,"attrs":{"ts":4000000000000}}',
    b'{"event_id":"e1","customer_id":"c1","ts":1767225600000,"customer_id":"c2"}',
    b'{"event_id":"e1","customer_id":"c\\u0031","ts":1767225600000,"x":1}',
    b'{"event_id":"e1","customer_id":"c1","ts":1234567890123456,"x":1}',
    b'{"event_id":"e1","customer_id":"c1","ts":4102444800000,"x":1}',
    b'{"event_id":"e1","customer_id":"c1","ts":1767225600000.5,"x":1}',
    b'{"event_id":"e1","customer_id":"\xff\xfe","ts":1767225600000}',
    b"not json",
    b"",
]


@pytest.mark.parametrize("raw", _ODD_LINES)
def test_patterns_agree_with_slicing_on_odd_lines(raw: bytes) -> None:
    assert shard_of_raw(raw, SHARDS) == _shard_by_slicing(raw, SHARDS)
    assert ts_of_raw(raw) == _ts_by_slicing(raw)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.integers(MIN_TS_MS - 10, MAX_TS_MS + 10), st.integers(1, 64),
       st.sampled_from(["orjson", "ascii", "spaced", "attrs_first", "attrs_last"]))
def test_patterns_agree_with_slicing_on_events(cid: str, ts: int, shards: int, style: str) -> None:
    doc = {"event_id": "e1", "customer_id": cid, "ts": ts, "channel": "app", "type": "view"}
    raw = styled(doc, style, attrs={"customer_id": cid, "ts": ts})
    assert shard_of_raw(raw, shards) == _shard_by_slicing(raw, shards)
    assert ts_of_raw(raw) == _ts_by_slicing(raw)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b'"customer_id"', b'"ts"', b":", b" ", b"\t", b'"', b"\\", b"c1", b"17672256",
                                 b"00000", b",", b"}", b"{", b"\n", b"x", b'{"event_id":"', b'","customer_id":"',
                                 b'","ts":', b"1767225600000", b'"ts","']), max_size=14).map(b"".join))
def test_patterns_agree_with_slicing_on_hostile_bytes(raw: bytes) -> None:
    assert shard_of_raw(raw, SHARDS) == _shard_by_slicing(raw, SHARDS)
    assert ts_of_raw(raw) == _ts_by_slicing(raw)


def _id_pattern_agrees(raw: bytes) -> None:
    # The compiled build routes by bytes (``id_value_at``), the pure one by the pattern: both builds check both.
    i = raw.find(b'"customer_id"')
    while i >= 0:
        m = _ID_AT(raw, i)
        assert id_value_at(raw, i + 13) == (m.group(1) if m is not None else None), raw
        i = raw.find(b'"customer_id"', i + 1)


@pytest.mark.parametrize("raw", [*_ODD_LINES, b'{"customer_id"\x0b:\x0c"c1"}', b'{"customer_id": ""}',
                                 b'{"customer_id":', b'{"customer_id" "c1"}', b'{"customer_id":"a\\"b"}'])
def test_id_bytes_agree_with_the_pattern(raw: bytes) -> None:
    _id_pattern_agrees(raw)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([b'"customer_id"', b":", b" ", b"\t", b"\x0b", b"\r", b'"', b"\\", b"c1", b",",
                                 b"}", b"{", b"\n", b"\xff"]), max_size=12).map(b"".join))
def test_id_bytes_agree_with_the_pattern_on_hostile_bytes(raw: bytes) -> None:
    _id_pattern_agrees(raw)


def _escape_all(s: str) -> str:
    return "".join(f"\\u{ord(ch):04x}" for ch in s)


@settings(max_examples=300, deadline=None)
@given(st.integers(MIN_TS_MS, MAX_TS_MS - 1), st.integers(MIN_TS_MS, MAX_TS_MS - 1),
       st.sampled_from(["key", "iso", "both", "plain"]), st.booleans())
def test_tracked_ts_is_the_parsed_ts_whatever_the_spelling(ts: int, decoy: int, spelling: str, iso: bool) -> None:
    """The end-of-input time counts a valid event by its parsed ts: an escaped key or ISO string, with a decoy
    ``attrs.ts`` beside it, neither hides the real time nor lets the decoy stand in for it."""
    from datetime import UTC, datetime

    from state.routing import tracked_ts

    value = orjson.dumps(datetime.fromtimestamp(ts / 1000, UTC).isoformat(timespec="milliseconds") if iso else ts)
    if spelling in ("iso", "both") and iso:
        value = b'"' + _escape_all(orjson.loads(value)).encode() + b'"'
    key = _escape_all("ts") if spelling in ("key", "both") else "ts"
    raw = (b'{"event_id":"e1","customer_id":"c","%s":%s,"channel":"app","type":"view","attrs":{"ts":%d}}'
           % (key.encode(), value, decoy))
    parsed = parse_event(raw)
    assert type(parsed) is Event
    assert tracked_ts(raw) == parsed.ts_ms
