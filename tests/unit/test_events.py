"""Input validation (DESIGN.md §3): every invalid input gets a reason code naming the field; nothing raises."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from state.batches import RawBatch, Tick
from state.events import (
    BASE_TYPES,
    CHANNELS,
    MAX_ATTRS,
    MAX_ID_CHARS,
    MAX_MESSAGE_BYTES,
    MAX_TS_MS,
    MIN_TS_MS,
    Event,
    Invalid,
    InvalidReason,
    parse_event,
)
from state.outputs import MAX_DEAD_LETTER_MAX_BYTES, dead_letter_record
from state.shard import Shard, process
from tests.helpers import MIN, PACK, T0, ev, raws, rules_fired, run

GOOD = {"event_id": "e1", "customer_id": "c1", "ts": T0, "channel": "app", "type": "view"}
_DROP = object()
HOUR = 60 * MIN


def _with(**changes: object) -> bytes:
    d: dict[str, object] = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return orjson.dumps(d)


def _replace(old: bytes, new: bytes) -> bytes:
    """GOOD with one literal piece of its JSON replaced (for values orjson will not write)."""
    raw = orjson.dumps(GOOD)
    assert old in raw
    return raw.replace(old, new, 1)


# -- valid input ---------------------------------------------------------------------------------
def test_valid_event_parses_with_optional_fields() -> None:
    raw = _with(journey="cart", step="checkout", entry="search", attrs={"reason": "x", "amount": 12.5, "ok": True})
    e = parse_event(raw)
    assert isinstance(e, Event)
    assert (e.event_id, e.customer_id, e.ts_ms, e.channel, e.type) == ("e1", "c1", T0, "app", "view")
    assert (e.journey, e.step, e.entry) == ("cart", "checkout", "search")
    assert e.attrs == {"reason": "x", "amount": 12.5, "ok": True}


def test_optional_fields_may_be_absent_null_or_empty() -> None:
    for raw in (_with(), _with(journey=None, step=None, entry=None, attrs=None), _with(journey="", attrs={})):
        e = parse_event(raw)
        assert isinstance(e, Event)
        assert (e.journey, e.step, e.entry, e.attrs) == (None, None, None, None)


@pytest.mark.parametrize(
    ("ts", "ms"),
    [
        ("2026-01-01T08:00:00.250+08:00", T0 + 250),
        ("2026-01-01T00:00:00Z", T0),
        ("2025-12-31T19:00:00-05:00", T0),
        ("2026-01-01T00:00:00.000001+00:00", T0),
    ],
)
def test_iso_timestamp_with_offset_is_converted_to_epoch_ms(ts: str, ms: int) -> None:
    e = parse_event(_with(ts=ts))
    assert isinstance(e, Event)
    assert e.ts_ms == ms


@pytest.mark.parametrize("ts", [MIN_TS_MS, MAX_TS_MS - 1, "2000-01-01T00:00:00Z", "2099-12-31T23:59:59.999Z"])
def test_timestamps_at_the_edges_of_the_valid_range_are_accepted(ts: object) -> None:
    assert isinstance(parse_event(_with(ts=ts)), Event)


def test_limits_are_inclusive() -> None:
    at_limits = _with(event_id="e" * MAX_ID_CHARS, customer_id="c" * MAX_ID_CHARS,
                      attrs={f"k{i}": i for i in range(MAX_ATTRS)})
    assert isinstance(parse_event(at_limits), Event)


def test_message_of_exactly_64_kib_is_accepted_and_one_byte_more_is_too_large() -> None:
    base = len(_with(attrs={"pad": ""}))
    exact = _with(attrs={"pad": "x" * (MAX_MESSAGE_BYTES - base)})
    assert len(exact) == MAX_MESSAGE_BYTES
    assert isinstance(parse_event(exact), Event)
    over = _with(attrs={"pad": "x" * (MAX_MESSAGE_BYTES - base + 1)})
    result = parse_event(over)
    assert isinstance(result, Invalid)
    assert result.code == "too_large"


def test_every_channel_and_base_type_of_the_design_is_accepted() -> None:
    assert {"app", "web", "wechat", "ivr", "sms", "call_center", "store", "email", "other"} == CHANNELS
    assert {"view", "start", "submit", "complete", "fail", "cancel", "contact", "engage", "feedback"} == BASE_TYPES
    for ch in CHANNELS:
        for ty in BASE_TYPES:
            assert isinstance(parse_event(_with(channel=ch, type=ty)), Event)


def test_extra_event_types_come_from_the_rule_pack() -> None:
    raw = _with(type="quote")
    assert isinstance(parse_event(raw), Invalid)
    assert isinstance(parse_event(raw, types={"view", "quote"}), Event)


def test_unknown_top_level_fields_are_ignored() -> None:
    assert isinstance(parse_event(_with(schema=1, source={"deep": [1, 2]})), Event)


# -- invalid input ---------------------------------------------------------------------------------
DEEP = b'{"a":' * 2000 + b"1" + b"}" * 2000


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        # Not JSON at all, or JSON that orjson refuses (NaN/Infinity, invalid UTF-8, too deep).
        (b"not json", "not_json"),
        (b"", "not_json"),
        (b'{"event_id": "e1",', "not_json"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (_replace(b'"e1"', b'"e\xff1"'), "not_json"),
        (_replace(b'"c1"', b'"\xed\xa0\x80"'), "not_json"),
        (_replace(b'"c1"', b'"\\ud800"'), "not_json"),
        (_replace(str(T0).encode(), b"NaN"), "not_json"),
        (_replace(str(T0).encode(), b"Infinity"), "not_json"),
        (_replace(str(T0).encode(), b"-Infinity"), "not_json"),
        (b"[" * 5000 + b"]" * 5000, "not_json"),
        (DEEP, "not_json"),
        # JSON, but not an object.
        (b"[1, 2]", "not_object"),
        (b'"text"', "not_object"),
        (b"42", "not_object"),
        (b"null", "not_object"),
        # Missing required fields (absent or null).
        (_with(event_id=_DROP), "missing_field:event_id"),
        (_with(customer_id=_DROP), "missing_field:customer_id"),
        (_with(ts=_DROP), "missing_field:ts"),
        (_with(channel=_DROP), "missing_field:channel"),
        (_with(type=_DROP), "missing_field:type"),
        (_with(customer_id=None), "missing_field:customer_id"),
        (_with(ts=None), "missing_field:ts"),
        (b"{}", "missing_field:event_id"),
        # Wrong types.
        (_with(customer_id=42), "bad_type:customer_id"),
        (_with(event_id=["e"]), "bad_type:event_id"),
        (_with(event_id=True), "bad_type:event_id"),
        (_with(channel=1), "bad_type:channel"),
        (_with(type={"t": "view"}), "bad_type:type"),
        (_with(ts=True), "bad_type:ts"),
        (_with(ts=False), "bad_type:ts"),
        (_with(ts=1.5e12), "bad_type:ts"),
        (_with(ts=float(T0)), "bad_type:ts"),
        (_with(ts=[T0]), "bad_type:ts"),
        (_with(ts={"ms": T0}), "bad_type:ts"),
        (_with(journey=5), "bad_type:journey"),
        (_with(step=["a"]), "bad_type:step"),
        (_with(entry=False), "bad_type:entry"),
        (_with(attrs=[1]), "bad_type:attrs"),
        (_with(attrs="reason=x"), "bad_type:attrs"),
        # Empty or whitespace-only ids.
        (_with(event_id=""), "empty_field:event_id"),
        (_with(event_id=" \t"), "empty_field:event_id"),
        (_with(customer_id=""), "empty_field:customer_id"),
        (_with(customer_id="   "), "empty_field:customer_id"),
        (_with(channel=""), "empty_field:channel"),
        (_with(type=""), "empty_field:type"),
        # Over-long ids and texts.
        (_with(event_id="x" * 129), "too_long:event_id"),
        (_with(customer_id="ü" * 129), "too_long:customer_id"),
        (_with(step="s" * 129), "too_long:step"),
        (_with(journey="j" * 129), "too_long:journey"),
        (_with(entry="e" * 129), "too_long:entry"),
        # Timestamps: unparseable, without an offset, outside 2000..2100 (int and ISO).
        (_with(ts="yesterday"), "bad_ts:ts"),
        (_with(ts=str(T0)), "bad_ts:ts"),
        (_with(ts=""), "bad_ts:ts"),
        (_with(ts="2026-01-01T00:00:00"), "bad_ts:ts"),
        (_with(ts="2026-01-01"), "bad_ts:ts"),
        (_with(ts=MIN_TS_MS - 1), "bad_ts:ts"),
        (_with(ts=MAX_TS_MS), "bad_ts:ts"),
        (_with(ts=0), "bad_ts:ts"),
        (_with(ts=-T0), "bad_ts:ts"),
        (_with(ts=T0 * 1000), "bad_ts:ts"),
        (_with(ts="1999-12-31T23:59:59.999Z"), "bad_ts:ts"),
        (_with(ts="2100-01-01T00:00:00Z"), "bad_ts:ts"),
        (_with(ts="9999-12-31T23:59:59+00:00"), "bad_ts:ts"),
        # Unknown channel or type.
        (_with(channel="fax"), "unknown_channel:channel"),
        (_with(channel="APP"), "unknown_channel:channel"),
        (_with(type="teleport"), "unknown_type:type"),
        # Attributes: nested values or too many keys.
        (_with(attrs={"a": {"b": 1}}), "attrs_nested:attrs"),
        (_with(attrs={"a": [1]}), "attrs_nested:attrs"),
        (_with(attrs={"a": []}), "attrs_nested:attrs"),
        (_with(attrs={f"k{i}": i for i in range(MAX_ATTRS + 1)}), "attrs_too_many:attrs"),
        # Oversized messages, whatever they contain.
        (b'{"pad": "' + b"x" * MAX_MESSAGE_BYTES + b'"}', "too_large"),
        (b"x" * (MAX_MESSAGE_BYTES + 1), "too_large"),
    ],
)
def test_invalid_input_is_rejected_with_reason_code(raw: bytes, code: str) -> None:
    result = parse_event(raw)
    assert isinstance(result, Invalid)
    assert result.code == code
    assert result.raw == raw
    assert result.reason in InvalidReason
    assert "c1" not in result.detail, "details name fields, never the customer"


def test_far_future_event_is_rejected_only_in_live_mode() -> None:
    raw = _with(ts=T0 + 2 * HOUR)
    assert isinstance(parse_event(raw), Event)
    live = parse_event(raw, now_ms=T0, max_future_ms=HOUR)
    assert isinstance(live, Invalid)
    assert live.code == "bad_ts:ts"
    assert isinstance(parse_event(_with(ts=T0 + HOUR), now_ms=T0, max_future_ms=HOUR), Event)
    iso = parse_event(_with(ts="2026-01-01T02:00:00Z"), now_ms=T0, max_future_ms=HOUR)
    assert isinstance(iso, Invalid)
    assert iso.code == "bad_ts:ts"


def test_live_shard_dead_letters_events_from_beyond_its_future_window() -> None:
    sh = Shard(PACK, live=True, max_future_ms=HOUR, clock=lambda: T0)
    out = process(sh, [RawBatch("kafka:cx.events", 2, raws([ev("soon", HOUR), ev("far", HOUR + 1)]), [10, 11])])
    assert [(d["reason"], d["offset"]) for d in out.dead] == [("bad_ts:ts", 11)]
    assert sh.max_ts == T0 + HOUR


def test_out_of_range_timestamps_are_rejected_in_replay_mode_too() -> None:
    out = run([_with(ts=MAX_TS_MS + 1), _with(ts=MIN_TS_MS - 1)])
    assert [d["reason"] for d in out.dead] == ["bad_ts:ts", "bad_ts:ts"]


# -- dead letters ---------------------------------------------------------------------------------
def test_dead_letter_record_keeps_original_bytes_and_base64_for_binary() -> None:
    text = parse_event(b"oops")
    binary = parse_event(b"\x00\xff\x10")
    assert isinstance(text, Invalid)
    assert isinstance(binary, Invalid)
    rec = dead_letter_record(text, "kafka:cx.events", 3, 42, 1)
    assert (rec["reason"], rec["raw"], rec["raw_encoding"], rec["partition"], rec["offset"]) == (
        "not_json", "oops", "utf8", 3, 42)
    rec = dead_letter_record(binary, "file:x", 0, 7, 1)
    assert rec["raw_encoding"] == "base64"
    assert base64.b64decode(rec["raw"]) == b"\x00\xff\x10"


def test_a_huge_dead_letter_keeps_a_bounded_prefix_with_the_original_length_and_hash() -> None:
    # The poison pill: 200 KiB of NULs; every NUL is 6 bytes of JSON escape when kept whole.
    nuls = parse_event(b"\x00" * 200 * 1024)
    assert isinstance(nuls, Invalid)
    rec = dead_letter_record(nuls, "kafka:cx.events", 0, 1, 1)
    assert rec["raw"] == "\x00" * 16 * 1024
    assert rec["raw_encoding"] == "utf8"
    assert (rec["raw_len"], rec["truncated"]) == (200 * 1024, True)
    assert rec["raw_sha256"] == hashlib.sha256(b"\x00" * 200 * 1024).hexdigest()
    assert len(orjson.dumps(rec)) < 110_000  # far below Kafka's default 1 MB limit
    # Every setting up to the largest allowed stays below the limit even when every byte is escaped.
    rec = dead_letter_record(nuls, "kafka:cx.events", 0, 1, 1, max_bytes=MAX_DEAD_LETTER_MAX_BYTES)
    assert len(orjson.dumps(rec)) < 1_000_000


def test_a_cut_dead_letter_stays_text_when_the_cut_splits_a_character() -> None:
    raw = ("é" * 10).encode()  # 20 bytes; a cut at 7 splits the fourth character
    rec = dead_letter_record(Invalid(InvalidReason.NOT_JSON, "x", raw), "file:x", 0, 0, 1, max_bytes=7)
    assert (rec["raw"], rec["raw_encoding"], rec["raw_len"], rec["truncated"]) == ("ééé", "utf8", 20, True)
    binary = dead_letter_record(Invalid(InvalidReason.NOT_JSON, "x", b"\xff" * 20), "file:x", 0, 0, 1, max_bytes=7)
    assert (base64.b64decode(binary["raw"]), binary["raw_encoding"]) == (b"\xff" * 7, "base64")
    # Not cut: a short input keeps all its bytes, and an incomplete last character makes it binary.
    whole = dead_letter_record(Invalid(InvalidReason.NOT_JSON, "x", raw[:7]), "file:x", 0, 0, 1)
    assert (base64.b64decode(whole["raw"]), whole["truncated"], whole["raw_len"]) == (raw[:7], False, 7)


def test_duplicate_dead_letters_describe_the_event_id_they_hold() -> None:
    out = run([ev("f1", 0, "fail"), ev("f1", 0, "fail")])
    (rec,) = out.dead
    assert (rec["raw"], rec["raw_len"], rec["raw_sha256"]) == ("f1", 2, hashlib.sha256(b"f1").hexdigest())


def test_invalid_messages_reach_the_dead_letters_with_bytes_reason_and_position() -> None:
    bad_utf8 = _replace(b'"e1"', b'"\xc3\x28"')
    missing = _with(customer_id=_DROP)
    sh = Shard(PACK, clock=lambda: 123)
    out = process(sh, [RawBatch("file:events.jsonl", 0, [missing, raws([ev("ok", 0)])[0], bad_utf8], [7, 8, 9]),
                       Tick(0, final=True)])
    assert [(d["reason"], d["offset"], d["source"]) for d in out.dead] == [
        ("missing_field:customer_id", 7, "file:events.jsonl"), ("not_json", 9, "file:events.jsonl")]
    assert out.dead[0]["raw"] == missing.decode()
    assert out.dead[0]["raw_encoding"] == "utf8"
    assert out.dead[1]["raw_encoding"] == "base64"
    assert base64.b64decode(out.dead[1]["raw"]) == bad_utf8
    assert out.dead[0]["received_at"] == 123
    assert out.invalid == {"missing_field": 1, "not_json": 1}
    assert sum(out.events.values()) == 1


def test_invalid_input_never_moves_the_watermark() -> None:
    sh = Shard(PACK, lateness_ms=30_000)
    process(sh, [RawBatch("t", 0, raws([ev("k", 0, "submit", step="checkout")]), [0])])
    wm, max_ts = sh.wm, sh.max_ts
    poison = [_with(ts=T0 + 5 * HOUR, channel="fax"), _with(ts=T0 + 5 * HOUR, customer_id=""),
              _with(ts=T0 + 5 * HOUR, attrs={"a": [1]}), _with(ts=MAX_TS_MS + 5)]
    out = process(sh, [RawBatch("t", 0, poison, [1, 2, 3, 4])])
    assert len(out.dead) == 4
    assert (sh.wm, sh.max_ts) == (wm, max_ts)
    # The abandonment is still pending: nothing invalid pushed time past its due.
    assert out.moments == []


def test_same_event_id_of_different_customers_is_not_a_duplicate() -> None:
    out = run([ev("e", 0, "fail"), ev("e", 0, "fail", customer="c2")])
    assert out.dead == []
    assert rules_fired(out) == ["cart.failed", "cart.failed"]


def test_reasons_are_a_bounded_set_of_snake_case_codes() -> None:
    values = {r.value for r in InvalidReason}
    assert values >= {"not_json", "not_object", "missing_field", "bad_type", "empty_field", "too_long", "too_large",
                      "bad_ts", "unknown_channel", "unknown_type", "attrs_too_many", "attrs_nested", "duplicate"}
    assert all(v.replace("_", "").isalpha() and v.islower() for v in values)


# -- property: the fast path and the slow path agree with a plain reading of §3 -------------------
_IDS = st.one_of(st.text(max_size=3), st.text(min_size=127, max_size=130), st.just(" "), st.integers(), st.none(),
                 st.booleans())
_TS = st.one_of(st.integers(MIN_TS_MS - 2, MIN_TS_MS + 2), st.integers(MAX_TS_MS - 2, MAX_TS_MS + 2),
                st.integers(0, 2**62), st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none(),
                st.sampled_from(["2026-01-01T00:00:00Z", "2026-01-01T00:00:00", "x", "2100-01-01T00:00:00+00:00"]))
_ATTRS = st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), st.text(max_size=2),
                                                                                 st.lists(st.integers(), max_size=1)),
                                                max_size=34), st.integers())
_OPT = st.one_of(st.none(), st.text(max_size=2), st.text(min_size=128, max_size=129), st.integers())


def _violations(doc: dict[str, Any]) -> set[str]:
    """Every rule of DESIGN.md §3 the document breaks, as reason codes."""
    found: set[str] = set()
    for name, limit in (("event_id", 128), ("customer_id", 128), ("channel", 128), ("type", 128)):
        v = doc.get(name)
        if v is None:
            found.add(f"missing_field:{name}")
        elif not isinstance(v, str):
            found.add(f"bad_type:{name}")
        elif not v.strip():
            found.add(f"empty_field:{name}")
        elif len(v) > limit:
            found.add(f"too_long:{name}")
        elif name == "channel" and v not in CHANNELS:
            found.add("unknown_channel:channel")
        elif name == "type" and v not in BASE_TYPES:
            found.add("unknown_type:type")
    ts = doc.get("ts")
    if ts is None:
        found.add("missing_field:ts")
    elif isinstance(ts, bool) or not isinstance(ts, int | str):
        found.add("bad_type:ts")
    elif isinstance(ts, int) and not MIN_TS_MS <= ts < MAX_TS_MS:
        found.add("bad_ts:ts")
    elif isinstance(ts, str) and ts != "2026-01-01T00:00:00Z":
        found.add("bad_ts:ts")
    for name in ("journey", "step", "entry"):
        v = doc.get(name)
        if v is not None and not isinstance(v, str):
            found.add(f"bad_type:{name}")
        elif isinstance(v, str) and len(v) > 128:
            found.add(f"too_long:{name}")
    attrs = doc.get("attrs")
    if attrs is not None:
        if not isinstance(attrs, dict):
            found.add("bad_type:attrs")
        elif len(attrs) > MAX_ATTRS:
            found.add("attrs_too_many:attrs")
        elif any(isinstance(x, dict | list) for x in attrs.values()):
            found.add("attrs_nested:attrs")
        elif any(type(x) is int and not -(2**63) <= x < 2**64 for x in attrs.values()):
            found.add("int_too_large:attrs")
    return found


_VALID_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": st.text(min_size=1, max_size=128).filter(lambda v: bool(v.strip())),
    "customer_id": st.text(min_size=1, max_size=128).filter(lambda v: bool(v.strip())),
    "ts": st.one_of(st.integers(MIN_TS_MS, MAX_TS_MS - 1), st.just("2026-01-01T00:00:00Z")),
    "channel": st.sampled_from(sorted(CHANNELS)),
    "type": st.sampled_from(sorted(BASE_TYPES)),
    "journey": st.text(max_size=128),
    "step": st.text(max_size=128),
    "entry": st.text(max_size=128),
    "attrs": st.dictionaries(st.text(max_size=3), st.one_of(st.integers(), st.text(max_size=2), st.booleans()),
                             max_size=MAX_ATTRS),
}
_BAD_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "event_id": _IDS, "customer_id": _IDS, "ts": _TS, "channel": _IDS, "type": _IDS,
    "journey": _OPT, "step": _OPT, "entry": _OPT, "attrs": _ATTRS,
}


@st.composite
def _documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with a few fields (often none) replaced by odd values or left out."""
    doc: dict[str, Any] = {}
    for name, valid in _VALID_FIELDS.items():
        how = draw(st.sampled_from(["valid"] * 8 + ["odd", "absent"]))
        if how == "valid":
            doc[name] = draw(valid)
        elif how == "odd":
            doc[name] = draw(_BAD_FIELDS[name])
    return doc


@settings(max_examples=400, deadline=None)
@given(_documents())
def test_validation_matches_a_plain_reading_of_the_schema(doc: dict[str, Any]) -> None:
    raw = json.dumps(doc).encode()
    result = parse_event(raw)
    expected = _violations(doc)
    if expected:
        assert isinstance(result, Invalid), expected
        assert result.code in expected
    else:
        assert isinstance(result, Event), result
        assert (result.event_id, result.customer_id, result.channel, result.type) == (
            doc["event_id"], doc["customer_id"], doc["channel"], doc["type"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    result = parse_event(raw)
    assert isinstance(result, Event | Invalid)


def test_a_trailing_cr_or_lf_never_counts_towards_the_size_limit_of_events_and_feedback() -> None:
    from state.events import MAX_MESSAGE_BYTES
    from state.feedback import Feedback, parse_feedback

    ev = {"event_id": "e1", "customer_id": "c1", "ts": 1_767_225_600_000, "channel": "app", "type": "view"}
    fb = {"moment_id": "m1", "customer_id": "c1", "outcome": "contacted", "ts": 1_767_225_600_000}
    for doc, parse, kind in ((ev, parse_event, Event), (fb, parse_feedback, Feedback)):
        bare = orjson.dumps({**doc, "pad": ""})
        at_limit = orjson.dumps({**doc, "pad": "x" * (MAX_MESSAGE_BYTES - len(bare))})
        assert len(at_limit) == MAX_MESSAGE_BYTES
        for ending in (b"", b"\r", b"\r\n", b"\n"):
            assert type(parse(at_limit + ending)) is kind, ending
        over = at_limit[:-1] + b' }'
        assert parse(over).reason == InvalidReason.TOO_LARGE  # type: ignore[union-attr]
        assert parse(over + b"\r").reason == InvalidReason.TOO_LARGE  # type: ignore[union-attr]


@pytest.mark.parametrize(("literal", "kept"), [
    (b"18446744073709551615", True), (b"-9223372036854775808", True), (b"1.8446744073709552e19", True),
    (b"-1e300", True), (b"18446744073709551616", False), (b"-9223372036854775809", False),
    (b"123456789012345678901234567890", False),
])
def test_an_attrs_integer_beyond_64_bits_is_refused_naming_the_key(literal: bytes, kept: bool) -> None:
    raw = (b'{"event_id":"e","customer_id":"c","ts":1767225600000,"channel":"app","type":"view",'
           b'"attrs":{"a":1,"order":' + literal + b"}}")
    got = parse_event(raw)
    if kept:
        assert type(got) is Event
        assert got.attrs == {"a": 1, "order": orjson.loads(literal)}
    else:
        assert isinstance(got, Invalid)
        assert (got.code, got.detail) == ("int_too_large:attrs", "attrs.order: integer beyond 64 bits (send it as "
                                                                  "a string)")


def test_only_one_crlf_is_framing_more_carriage_returns_count_towards_the_limit() -> None:
    from state.events import too_large, unframed

    event = b'{"event_id":"e","customer_id":"c","ts":1767225600000,"channel":"app","type":"view"}'
    assert unframed(event + b"\r\n") == unframed(event + b"\n") == unframed(event + b"\r") == event
    assert unframed(event + b"\r\r\n") == event + b"\r"
    assert not too_large(event + b"\r")
    assert too_large(event + b"\r" * 70_000)  # a run of CRs is content, not framing
