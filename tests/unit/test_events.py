"""Input validation: every invalid input gets a reason code naming the field; nothing raises."""

from __future__ import annotations

import base64

import orjson
import pytest

from state.events import Event, Invalid, InvalidReason, parse_event
from state.outputs import dead_letter_record
from tests.helpers import T0

GOOD = {"event_id": "e1", "customer_id": "c1", "ts": T0, "channel": "app", "type": "view"}


def _with(**changes: object) -> bytes:
    d = dict(GOOD)
    for k, v in changes.items():
        if v is _DROP:
            d.pop(k)
        else:
            d[k] = v
    return orjson.dumps(d)


_DROP = object()


def test_valid_event_parses_with_optional_fields() -> None:
    raw = _with(journey="cart", step="checkout", entry="search", attrs={"reason": "x", "amount": 12.5})
    ev = parse_event(raw)
    assert isinstance(ev, Event)
    assert (ev.customer_id, ev.ts_ms, ev.journey, ev.step, ev.entry) == ("c1", T0, "cart", "checkout", "search")
    assert ev.attrs == {"reason": "x", "amount": 12.5}


def test_iso_timestamp_with_offset_is_converted_to_epoch_ms() -> None:
    ev = parse_event(_with(ts="2026-01-01T08:00:00.250+08:00"))
    assert isinstance(ev, Event)
    assert ev.ts_ms == T0 + 250


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "not_json"),
        (b'{"event_id": "e1",', "not_json"),
        (b"[1, 2]", "not_object"),
        (b'"text"', "not_object"),
        (b"\xff\xfe\x00garbage", "not_json"),
        (b'{"a": NaN}', "not_json"),
        (b'{"a": Infinity}', "not_json"),
        (b"[" * 5000 + b"]" * 5000, "not_json"),
        (_with(event_id=_DROP), "missing_field:event_id"),
        (_with(customer_id=_DROP), "missing_field:customer_id"),
        (_with(ts=_DROP), "missing_field:ts"),
        (_with(channel=_DROP), "missing_field:channel"),
        (_with(type=_DROP), "missing_field:type"),
        (_with(customer_id=None), "missing_field:customer_id"),
        (_with(customer_id=42), "bad_type:customer_id"),
        (_with(event_id=["e"]), "bad_type:event_id"),
        (_with(customer_id=""), "empty_field:customer_id"),
        (_with(customer_id="   "), "empty_field:customer_id"),
        (_with(event_id="x" * 129), "too_long:event_id"),
        (_with(ts=True), "bad_type:ts"),
        (_with(ts=1.5e12), "bad_type:ts"),
        (_with(ts="yesterday"), "bad_ts:ts"),
        (_with(ts="2026-01-01T00:00:00"), "bad_ts:ts"),
        (_with(ts=946_684_799_999), "bad_ts:ts"),
        (_with(ts=4_102_444_800_000), "bad_ts:ts"),
        (_with(ts="1999-12-31T23:59:59Z"), "bad_ts:ts"),
        (_with(ts="2100-01-01T00:00:00Z"), "bad_ts:ts"),
        (_with(channel="fax"), "unknown_channel:channel"),
        (_with(type="teleport"), "unknown_type:type"),
        (_with(journey=5), "bad_type:journey"),
        (_with(step="s" * 129), "too_long:step"),
        (_with(attrs=[1]), "bad_type:attrs"),
        (_with(attrs={"a": {"b": 1}}), "attrs_nested:attrs"),
        (_with(attrs={"a": [1]}), "attrs_nested:attrs"),
        (_with(attrs={f"k{i}": i for i in range(33)}), "attrs_too_many:attrs"),
        (b'{"pad": "' + b"x" * (64 * 1024) + b'"}', "too_large"),
    ],
)
def test_invalid_input_is_rejected_with_reason_code(raw: bytes, code: str) -> None:
    result = parse_event(raw)
    assert isinstance(result, Invalid)
    assert result.code == code
    assert result.raw == raw
    assert "c1" not in result.detail, "details name fields, never the customer"


def test_far_future_event_is_rejected_only_in_live_mode() -> None:
    raw = _with(ts=T0 + 2 * 3_600_000)
    assert isinstance(parse_event(raw), Event)
    live = parse_event(raw, now_ms=T0, max_future_ms=3_600_000)
    assert isinstance(live, Invalid)
    assert live.code == "bad_ts:ts"


def test_extra_event_types_come_from_the_rule_pack() -> None:
    raw = _with(type="quote")
    assert isinstance(parse_event(raw), Invalid)
    assert isinstance(parse_event(raw, types={"view", "quote"}), Event)


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


def test_reasons_are_a_bounded_set() -> None:
    assert {r.value for r in InvalidReason} >= {"not_json", "missing_field", "bad_type", "too_large", "bad_ts",
                                                 "duplicate"}
