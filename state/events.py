"""Input events (schema v1, DESIGN.md §3): the typed event and its validation."""

from __future__ import annotations

import json
import math
from collections.abc import Collection
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, NamedTuple

import orjson

_loads: Final = orjson.loads
_JSONDecodeError: Final = orjson.JSONDecodeError

MAX_MESSAGE_BYTES: Final = 64 * 1024
MAX_ID_CHARS: Final = 128
MAX_TEXT_CHARS: Final = 128
MAX_ATTRS: Final = 32
MIN_TS_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_TS_MS: Final = 4_102_444_800_000  # 2100-01-01T00:00:00Z
# orjson reads an integer outside [-2**63, 2**64) as a float, silently rounded; such a float is at least this big.
_INT_RANGE: Final = (-(1 << 63), 1 << 64)
_BIG_LOW: Final = float(-(1 << 63))
_BIG_HIGH: Final = float(1 << 64)

CHANNELS: Final[frozenset[str]] = frozenset(
    {"app", "web", "wechat", "ivr", "sms", "call_center", "store", "email", "other"}
)
BASE_TYPES: Final[frozenset[str]] = frozenset(
    {"view", "start", "submit", "complete", "fail", "cancel", "contact", "engage", "feedback"}
)


class InvalidReason(StrEnum):
    """Why an input was rejected; a bounded set, safe as a metric label."""

    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    TOO_LARGE = "too_large"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    EMPTY_FIELD = "empty_field"
    TOO_LONG = "too_long"
    BAD_TS = "bad_ts"
    UNKNOWN_CHANNEL = "unknown_channel"
    UNKNOWN_TYPE = "unknown_type"
    ATTRS_TOO_MANY = "attrs_too_many"
    ATTRS_NESTED = "attrs_nested"
    INT_TOO_LARGE = "int_too_large"
    DUPLICATE = "duplicate"
    ROUTING_MISMATCH = "routing_mismatch"
    UNDECODABLE = "undecodable"


class Invalid(NamedTuple):
    """A rejected input: the reason, a detail naming the field (never the customer), the bytes."""

    reason: InvalidReason
    detail: str
    raw: bytes
    field: str = ""

    @property
    def code(self) -> str:
        """Reason code with the field, e.g. ``missing_field:customer_id``."""
        return f"{self.reason.value}:{self.field}" if self.field else self.reason.value


ORIGIN_BITS: Final = 48
"""``Event.origin`` is ``place << ORIGIN_BITS | position``: positions (line numbers, Kafka offsets) stay below 2**48."""


class Event(NamedTuple):
    """One validated input event; times are epoch milliseconds.

    ``origin`` is where it was read (not an input field): its place in the input (the file's index in the input
    list, or the Kafka partition) shifted by ``ORIGIN_BITS``, plus its line number or offset; -1 when unknown.
    Copies of one ``event_id`` at one ``ts`` are released in origin order, so the first in input order is kept
    whatever order the partitions' batches arrive in.
    """

    event_id: str
    customer_id: str
    ts_ms: int
    channel: str
    type: str
    journey: str | None = None
    step: str | None = None
    entry: str | None = None
    attrs: dict[str, Any] | None = None
    origin: int = -1


_tuple_new: Final = tuple.__new__


class _RejectError(Exception):
    def __init__(self, reason: InvalidReason, field: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.field = field
        self.detail = detail


def _ident(doc: dict[str, Any], name: str, limit: int) -> str:
    v = doc.get(name)
    if v is None:
        raise _RejectError(InvalidReason.MISSING_FIELD, name, f"{name} is required")
    if type(v) is not str:
        raise _RejectError(InvalidReason.BAD_TYPE, name, f"{name} must be a string, got {type(v).__name__}")
    if not v.strip():
        raise _RejectError(InvalidReason.EMPTY_FIELD, name, f"{name} must not be empty")
    if len(v) > limit:
        raise _RejectError(InvalidReason.TOO_LONG, name, f"{name} is longer than {limit} characters")
    return v


def id_problem(value: str, name: str = "customer_id") -> str | None:
    """Return why ``value`` could not be an input event's id (as ``parse_event`` judges it), or None.

    For ids that arrive elsewhere than in an event, e.g. in a look-up URL: the same rules, one place.

    Args:
        value: The id, decoded.
        name: The field it stands for, named in the problem.

    Returns:
        The problem (naming ``name``, never the value), or None when the id is acceptable.
    """
    if not value.strip():
        return f"{name} must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"{name} is longer than {MAX_ID_CHARS} characters"
    return None


def _optional(doc: dict[str, Any], name: str) -> str | None:
    v = doc.get(name)
    if v is None:
        return None
    if type(v) is not str:
        raise _RejectError(InvalidReason.BAD_TYPE, name, f"{name} must be a string, got {type(v).__name__}")
    if len(v) > MAX_TEXT_CHARS:
        raise _RejectError(InvalidReason.TOO_LONG, name, f"{name} is longer than {MAX_TEXT_CHARS} characters")
    return v or None


def parse_ts(value: object) -> int:
    """Return epoch ms from an int epoch-ms or an ISO-8601 string with an offset.

    Args:
        value: The ``ts`` field as decoded from JSON.

    Returns:
        Epoch milliseconds.

    Raises:
        _RejectError: when the value is of the wrong type, unparseable, naive or out of range.
    """
    if type(value) is int:
        ts = value
    elif type(value) is str:
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _RejectError(InvalidReason.BAD_TS, "ts", "ts is not an ISO-8601 timestamp") from None
        if dt.tzinfo is None:
            raise _RejectError(InvalidReason.BAD_TS, "ts", "ts has no UTC offset")
        ts = math.floor(dt.timestamp() * 1000 + 0.5)
    else:
        raise _RejectError(InvalidReason.BAD_TYPE, "ts", f"ts must be epoch ms or ISO-8601, got {type(value).__name__}")
    if not MIN_TS_MS <= ts < MAX_TS_MS:
        raise _RejectError(InvalidReason.BAD_TS, "ts", "ts is outside 2000-01-01..2100-01-01")
    return ts


def _attrs(v: object, raw: bytes) -> dict[str, Any] | None:
    if v is None:
        return None
    if type(v) is not dict:
        raise _RejectError(InvalidReason.BAD_TYPE, "attrs", f"attrs must be an object, got {type(v).__name__}")
    if len(v) > MAX_ATTRS:
        raise _RejectError(InvalidReason.ATTRS_TOO_MANY, "attrs", f"attrs has more than {MAX_ATTRS} keys")
    for item in v.values():
        if isinstance(item, dict | list):
            raise _RejectError(InvalidReason.ATTRS_NESTED, "attrs", "attrs values must be scalars")
    if any(type(item) is float and not _BIG_LOW < item < _BIG_HIGH for item in v.values()):
        _check_big_ints(raw)
    return v or None


def _check_big_ints(raw: bytes) -> None:
    """Refuse an ``attrs`` integer beyond 64 bits, which orjson would carry on as a rounded float.

    Outputs (JSONL, Kafka, ClickHouse) write 64-bit integers only: a 30-digit order number would reach them
    changed. Only a value orjson read as a huge float gets here; Python's parser tells an integer from a float.
    """
    try:
        exact = json.loads(raw).get("attrs")
    except ValueError:
        return
    if type(exact) is not dict:
        return
    low, high = _INT_RANGE
    for key, item in exact.items():
        if type(item) is int and not low <= item < high:
            raise _RejectError(InvalidReason.INT_TOO_LARGE, "attrs",
                               f"attrs.{key[:64]}: integer beyond 64 bits (send it as a string)")


def unframed(line: bytes) -> bytes:
    """A line without its framing: one trailing LF, then one CR (a CRLF file's). More CRs are content."""
    if line.endswith(b"\n"):
        line = line[:-1]
    return line[:-1] if line.endswith(b"\r") else line


def too_large(raw: bytes) -> bool:
    """Whether a message exceeds ``MAX_MESSAGE_BYTES`` once its line framing (``unframed``) is left out.

    A file's lines and ``moments produce`` drop the framing; a Kafka message produced from a CRLF file keeps
    its ``\\r``: the same event must pass or fail the limit alike from every source.
    """
    return len(raw) > MAX_MESSAGE_BYTES and len(unframed(raw)) > MAX_MESSAGE_BYTES


def parse_event(
    raw: bytes,
    *,
    types: Collection[str] = BASE_TYPES,
    now_ms: int | None = None,
    max_future_ms: int | None = None,
    origin: int = -1,
) -> Event | Invalid:
    """Decode and validate one message; never raises on bad input.

    Args:
        raw: The message bytes (one JSON object).
        types: Accepted event types (the base set plus the rule pack's).
        now_ms: Wall clock in live mode; with ``max_future_ms`` rejects events from the future.
        max_future_ms: How far ahead of ``now_ms`` an event may be.
        origin: Where the message was read (``Event.origin``).

    Returns:
        The typed event, or an ``Invalid`` naming the reason and field.
    """
    if len(raw) > MAX_MESSAGE_BYTES and too_large(raw):
        return Invalid(InvalidReason.TOO_LARGE, f"message is larger than {MAX_MESSAGE_BYTES} bytes", raw)
    try:
        doc = _loads(raw)
    except _JSONDecodeError:
        return Invalid(InvalidReason.NOT_JSON, "message is not valid JSON", raw)
    if type(doc) is not dict:
        return Invalid(InvalidReason.NOT_OBJECT, "message is not a JSON object", raw)
    # Fast path: one pass of cheap checks for the common, valid event; anything
    # unusual falls through to the slow path, which finds and names the problem.
    # ``doc.get`` written out each time: compiled, it is a direct dict look-up, where a bound ``get`` kept in a
    # local is a generic call per field.
    eid = doc.get("event_id")
    cid = doc.get("customer_id")
    ts = doc.get("ts")
    ch = doc.get("channel")
    ty = doc.get("type")
    j = doc.get("journey")
    st = doc.get("step")
    en = doc.get("entry")
    at = doc.get("attrs")
    if (
        type(eid) is str
        and 0 < len(eid) <= MAX_ID_CHARS
        and type(cid) is str
        and 0 < len(cid) <= MAX_ID_CHARS
        and type(ts) is int
        and MIN_TS_MS <= ts < MAX_TS_MS
        and type(ch) is str
        and ch in CHANNELS
        and type(ty) is str
        and ty in types
        and (j is None or (type(j) is str and 0 < len(j) <= MAX_TEXT_CHARS))
        and (st is None or (type(st) is str and 0 < len(st) <= MAX_TEXT_CHARS))
        and (en is None or (type(en) is str and 0 < len(en) <= MAX_TEXT_CHARS))
        and (now_ms is None or max_future_ms is None or ts <= now_ms + max_future_ms)
        and not eid.isspace()
        and not cid.isspace()
        and (at is None or (type(at) is dict and len(at) <= MAX_ATTRS and _flat(at)))
    ):
        # tuple.__new__ is what Event() runs, minus its Python-level frame (this is per event).
        return _tuple_new(Event, (eid, cid, ts, ch, ty, j, st, en, at or None, origin))
    return _parse_slow(doc, raw, types, now_ms, max_future_ms, origin)


def _flat(attrs: dict[str, Any]) -> bool:
    for v in attrs.values():
        t = type(v)
        if t is dict or t is list or (t is float and not _BIG_LOW < v < _BIG_HIGH):
            return False  # nested, or perhaps an integer beyond 64 bits read as a float
    return True


def _parse_slow(
    doc: dict[str, Any], raw: bytes, types: Collection[str], now_ms: int | None, max_future_ms: int | None,
    origin: int = -1,
) -> Event | Invalid:
    try:
        event_id = _ident(doc, "event_id", MAX_ID_CHARS)
        customer_id = _ident(doc, "customer_id", MAX_ID_CHARS)
        if "ts" not in doc or doc["ts"] is None:
            raise _RejectError(InvalidReason.MISSING_FIELD, "ts", "ts is required")
        ts_ms = parse_ts(doc["ts"])
        if now_ms is not None and max_future_ms is not None and ts_ms > now_ms + max_future_ms:
            raise _RejectError(InvalidReason.BAD_TS, "ts", "ts is too far in the future")
        channel = _ident(doc, "channel", MAX_TEXT_CHARS)
        if channel not in CHANNELS:
            raise _RejectError(InvalidReason.UNKNOWN_CHANNEL, "channel", "channel is not a known channel")
        etype = _ident(doc, "type", MAX_TEXT_CHARS)
        if etype not in types:
            raise _RejectError(InvalidReason.UNKNOWN_TYPE, "type", "type is not a known event type")
        return Event(
            event_id,
            customer_id,
            ts_ms,
            channel,
            etype,
            _optional(doc, "journey"),
            _optional(doc, "step"),
            _optional(doc, "entry"),
            _attrs(doc.get("attrs"), raw),
            origin,
        )
    except _RejectError as r:
        return Invalid(r.reason, r.detail, raw, r.field)
