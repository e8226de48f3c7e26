"""The tag life cycle: open when a moment fires, actioned, resolved by completion or feedback, expired by TTL.

Tags are held packed in the customer record (``CustomerState.tags``: flat (rule index, moment id,
opened_ts, state) records, one per rule); each transition is also emitted as a tag row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from state.context import BatchContext
from state.feedback import TRANSITIONS, Feedback
from state.record import TAG_FIELDS, CustomerState
from state.rule_model import MomentRule

TAG_OPEN: Final = "open"
TAG_ACTIONED: Final = "actioned"
TAG_RESOLVED: Final = "resolved"
TAG_EXPIRED: Final = "expired"
_TAG_RANK: Final = {TAG_OPEN: 0, TAG_ACTIONED: 1, TAG_RESOLVED: 2, TAG_EXPIRED: 3}
_TAG: Final = TAG_FIELDS


def tag_rank(state: str) -> int:
    """Order of tag states within one timestamp, for row versions."""
    return _TAG_RANK[state]


def tag_row(ctx: BatchContext, cid: str, r: MomentRule, mid: str, state: str, outcome: str, opened: int,
            ts: int) -> None:
    """Emit a tag transition."""
    ctx.out.tags.append(
        {
            "schema": 1,
            "customer_id": cid,
            "tag": r.name,
            "rule": r.name,
            "rule_version": r.version,
            "journey": r.journey,
            "state": state,
            "outcome": outcome,
            "moment_id": mid,
            "opened_ts": opened,
            "ts": ts,
            "version": max(ts, opened) * 4 + _TAG_RANK[state],
        }
    )


def mark_actioned(ctx: BatchContext, c: CustomerState, cid: str, r: MomentRule, mid: str, t: int) -> None:
    """Move rule ``r``'s tag to actioned if it is still the open tag of moment ``mid``."""
    opened = c.mark_tag_actioned(r.index, mid)
    if opened is not None:
        tag_row(ctx, cid, r, mid, TAG_ACTIONED, "", opened, t)


def resolve_tags(ctx: BatchContext, c: CustomerState, cid: str, journey: str, t: int) -> None:
    """Resolve the customer's tags of ``journey``: it finished what their moments were about."""
    # In this attempt or, within the tag's TTL, a later one.
    _close(ctx, c, cid, TAG_RESOLVED, "recovered", t, lambda r, _opened: r.journey == journey)


def apply_feedback(ctx: BatchContext, c: CustomerState, fb: Feedback) -> None:
    """Move the tag of the moment a feedback record names (contacted → actioned, converted → resolved…)."""
    tags = c.tags
    if not tags:
        return
    for i in range(0, len(tags), _TAG):
        key, mid, opened = tags[i : i + 3]
        if mid != fb.moment_id:
            continue
        state, closes = TRANSITIONS[fb.outcome]
        if closes:
            c.tags = (tags[:i] + tags[i + _TAG:]) or None
        else:
            c.tags = (*tags[:i + 3], 1, *tags[i + _TAG:])
        # A feedback clock behind the moment's must not order the transition before the opening.
        tag_row(ctx, fb.customer_id, ctx.tag_rule(key, opened), mid, state, fb.outcome, opened,
                max(fb.ts_ms, opened))
        return


def expire_tags(ctx: BatchContext, c: CustomerState, cid: str, due: int) -> None:
    """Drop the tags whose TTL has run out by ``due``, emitting their expiry."""
    _close(ctx, c, cid, TAG_EXPIRED, "expired", due, lambda r, opened: opened + r.ttl_ms <= due)


def _close(ctx: BatchContext, c: CustomerState, cid: str, state: str, outcome: str, t: int,
           closes: Callable[[MomentRule, int], bool]) -> None:
    """Drop the held tags ``closes(rule, opened_ts)`` picks, emitting their transition to ``state`` at ``t``."""
    tags = c.tags
    if not tags:
        return
    kept: list[Any] = []
    for i in range(0, len(tags), _TAG):
        key, mid, opened = tags[i : i + 3]
        r = ctx.tag_rule(key, opened)  # a tag keeps the TTL (and rule_version) of the version it fired under
        if closes(r, opened):
            tag_row(ctx, cid, r, mid, state, outcome, opened, t)
        else:
            kept += tags[i : i + _TAG]
    if len(kept) != len(tags):
        c.tags = tuple(kept) or None


def first_expiry(ctx: BatchContext, c: CustomerState, due: int) -> int:
    """Return the earliest TTL end of the customer's tags, or ``due`` if that is earlier."""
    tags = c.tags
    if tags:
        if ctx.single:  # the common case without a call per tag
            rules = ctx.pack.rules
            for i in range(0, len(tags), _TAG):
                d = tags[i + 2] + rules[tags[i] & 0xFF].ttl_ms
                if d < due:
                    due = d
            return due
        tag_rule = ctx.tag_rule
        for i in range(0, len(tags), _TAG):
            d = tags[i + 2] + tag_rule(tags[i], tags[i + 2]).ttl_ms
            if d < due:
                due = d
    return due


def last_expiry(ctx: BatchContext, c: CustomerState) -> int:
    """Return the latest TTL end of the customer's tags (0 when none is held)."""
    tags = c.tags
    if not tags:
        return 0
    tag_rule = ctx.tag_rule
    last: int = max(tags[k + 2] + tag_rule(tags[k], tags[k + 2]).ttl_ms for k in range(0, len(tags), _TAG))
    return last


def feedback_row(ctx: BatchContext, c: CustomerState | None, fb: Feedback) -> None:
    """Record a feedback record (``feedback`` output) and apply it to the customer's tag, if the customer is known."""
    ctx.out.feedback.append({"schema": 1, "moment_id": fb.moment_id, "customer_id": fb.customer_id,
                             "outcome": fb.outcome, "ts": fb.ts_ms})
    if c is not None:
        apply_feedback(ctx, c, fb)
