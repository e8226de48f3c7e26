"""Firing a moment (its record, tag and wake-up) and deciding the contact policy for what fired."""

from __future__ import annotations

from state.context import BatchContext
from state.detectors import KIND_BITS
from state.events import Event
from state.journey import Attempt
from state.moments import SCHEMA_VERSION, moment_id
from state.policy import CONTROL, HOLDOUT, SENT, action_record, evaluate, in_holdout, order, remember_send
from state.record import CustomerState
from state.rule_model import MomentRule
from state.tags import TAG_OPEN, mark_actioned, tag_row


def fire(
    ctx: BatchContext,
    c: CustomerState,
    r: MomentRule,
    a: Attempt,
    ev: Event | None,
    evidence: tuple[str, ...],
    due: int,
    step: str | None,
    anchor: str | None = None,
) -> str:
    """Fire rule ``r`` in attempt ``a``: emit the moment, open its tag, queue its decision; return its id.

    Args:
        ctx: The batch context.
        c: The customer.
        r: The rule.
        a: The attempt it fired in.
        ev: The event that fired it (None for a wake-up: ``ctx.current_customer`` is the customer).
        evidence: Event ids of the evidence, oldest first.
        due: The moment's due time.
        step: The step it is at.
        anchor: The event id the moment id derives from (default: the event's, else the last evidence).
    """
    a.fired |= r.bit or KIND_BITS[r.kind]
    cid = ctx.current_customer if ev is None else ev.customer_id
    ctx.mark_dirty(c, cid, ctx.journey_index[r.journey])
    anchor_id = anchor if anchor is not None else (ev.event_id if ev is not None else evidence[-1])
    mid = moment_id(cid, r.name, anchor_id)
    attrs = dict(ev.attrs) if ev is not None and ev.attrs else {}
    ctx.out.moments.append(
        {
            "schema": SCHEMA_VERSION,
            "moment_id": mid,
            "customer_id": cid,
            "rule": r.name,
            "rule_version": r.version,
            "kind": r.kind,
            "journey": r.journey,
            "step": step or "",
            "urgency": r.urgency,
            "due_ts": due,
            "detected_at": ctx.now_ms(),
            "evidence": list(evidence),
            "attrs": attrs,
            "action": r.action,
        }
    )
    # A directory of versions: the tag keeps its version (its TTL and rule_version) in the key's high byte.
    c.put_tag(r.index if ctx.single else r.index | r.version << 8, mid, due, 0)
    tag_row(ctx, cid, r, mid, TAG_OPEN, "", due, due)
    ctx.schedule(c, due + r.ttl_ms)
    ctx.pending.append((r, ctx.out.moments[-1], a.stage))
    return mid


def decide(ctx: BatchContext, c: CustomerState, cid: str) -> None:
    """Turn the moments one event or timer fired for a customer into actions or suppressions.

    Moments fired at the same instant compete: the most urgent is decided first, and once one
    of them is acted on (sent or held out), the other customer contacts are ``outranked``.
    """
    pending = order(ctx.pending) if len(ctx.pending) > 1 else ctx.pending
    ctx.pending = []
    policy = ctx.pack.policy
    clock = ctx.decision_clock()
    acted = False
    out = ctx.out.actions
    # Decoded from the packed record once: only remember_send below changes it (tags are stored apart).
    contact = c.contact
    for r, m, stage in pending:
        due = m["due_ts"]
        status, reason, channel, skipped = evaluate(
            policy, r, contact, due_ms=due, lag_ms=clock - due, stage=stage,
            journey_index=ctx.journey_index[r.journey], acted_now=acted,
        )
        control = in_holdout(cid, r.name, r.holdout)
        if status == SENT:
            if control:
                status, reason = CONTROL, HOLDOUT
            if r.contact:
                acted = True
                c.contact = contact = remember_send(policy, contact, due, channel)
            if status == SENT:
                mark_actioned(ctx, c, cid, r, m["moment_id"], due)
        out.append(action_record(r, m, status, reason, channel, skipped, control, m["detected_at"]))
