"""Downstream feedback on moments (``cx.feedback``): contacted, accepted, declined, converted."""

from __future__ import annotations

from typing import Final, NamedTuple

import orjson

from state.events import MAX_ID_CHARS, Invalid, InvalidReason, _RejectError, parse_ts, too_large

OUTCOMES: Final = frozenset({"contacted", "accepted", "declined", "converted"})
# outcome -> (tag state after it, whether the tag closes)
TRANSITIONS: Final = {
    "contacted": ("actioned", False),
    "accepted": ("actioned", False),
    "declined": ("resolved", True),
    "converted": ("resolved", True),
}


class Feedback(NamedTuple):
    """One feedback record about a moment."""

    moment_id: str
    customer_id: str
    outcome: str
    ts_ms: int


def parse_feedback(raw: bytes) -> Feedback | Invalid:
    """Decode and validate a feedback record; never raises on bad input.

    Args:
        raw: ``{"moment_id", "customer_id", "outcome", "ts"}`` as JSON.

    Returns:
        The feedback, or an ``Invalid`` naming the reason and field.
    """
    if too_large(raw):
        return Invalid(InvalidReason.TOO_LARGE, "message is too large", raw)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Invalid(InvalidReason.NOT_JSON, "message is not valid JSON", raw)
    if type(doc) is not dict:
        return Invalid(InvalidReason.NOT_OBJECT, "message is not a JSON object", raw)
    for name in ("moment_id", "customer_id", "outcome"):
        v = doc.get(name)
        if v is None:
            return Invalid(InvalidReason.MISSING_FIELD, f"{name} is required", raw, name)
        if type(v) is not str or not v.strip() or len(v) > MAX_ID_CHARS:
            return Invalid(InvalidReason.BAD_TYPE, f"{name} must be a non-empty string", raw, name)
    if doc["outcome"] not in OUTCOMES:
        return Invalid(InvalidReason.UNKNOWN_TYPE, "outcome must be contacted, accepted, declined or converted",
                       raw, "outcome")
    if doc.get("ts") is None:
        return Invalid(InvalidReason.MISSING_FIELD, "ts is required", raw, "ts")
    try:
        ts = parse_ts(doc["ts"])
    except _RejectError as r:
        return Invalid(r.reason, r.detail, raw, r.field)
    return Feedback(doc["moment_id"], doc["customer_id"], doc["outcome"], ts)
