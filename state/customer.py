"""A customer's journeys advanced by one event: attempts, stages, steps and the event-driven detectors.

Called by ``state.shard.Shard`` in event-time order (late events excepted) with the shard's
``BatchContext``; all rule semantics of DESIGN.md §4 live here, in ``state.deadlines`` (what is due
by time) and in ``state.detectors``.
"""

from __future__ import annotations

from typing import Final

from state.context import BatchContext
from state.detectors import KIND_BITS, channel_hop, failed, handoff, interested, maze, stuck
from state.events import Event
from state.firing import fire
from state.journey import COMPLETED, EXPIRED, Attempt
from state.moments import SCHEMA_VERSION
from state.policy import remember_completion, remember_tz
from state.record import TAG_FIELDS, CustomerState
from state.rules import STAGE_REUSE, STAGE_USE
from state.tags import resolve_tags

_B_ABANDONED: Final = KIND_BITS["abandoned"]
_B_FAILED: Final = KIND_BITS["failed"]
_B_STUCK: Final = KIND_BITS["stuck"]
_B_MAZE: Final = KIND_BITS["maze"]
_B_HOP: Final = KIND_BITS["channel_hop"]
_B_INTERESTED: Final = KIND_BITS["interested"]
_B_HANDOFF: Final = KIND_BITS["handoff"]
_INTEREST_TYPES: Final = interested.INTEREST_TYPES
_INTENT_TYPES: Final = interested.INTENT_TYPES
_TAG: Final = TAG_FIELDS


def apply_event(ctx: BatchContext, c: CustomerState, ev: Event) -> None:
    """Advance one customer by one (validated, non-duplicate) event.

    ``seen_before`` has checked the event's id and recorded its time as last seen.

    Args:
        ctx: The batch context (rule pack, wake-ups, outputs).
        c: The customer's state.
        ev: The event.
    """
    # This runs for every event: fields are unpacked once and the shard's helpers that are trivial in
    # the common case (canon, mark_dirty, channel_hop on an unchanged channel) are inlined or skipped.
    eid, cid, t, channel, etype, j, step, entry, attrs = ev
    if attrs and "tz" in attrs and attrs["tz"] != c.tz:
        old = c.contact
        new = remember_tz(old, attrs["tz"])
        if new is not old:
            c.contact = new
    if ctx.handoff_rules and etype in ctx.handoff_types and channel in ctx.handoff_channels:
        _handoffs(ctx, c, ev)
    if j is None:
        return
    jidx = ctx.journey_index.get(j)
    if jidx is None:
        return
    jdef = ctx.journey_defs[jidx]
    a = c.attempts[jidx]
    # Whether (cid, jidx) is already marked dirty by this event: marking it again would change nothing.
    marked = False
    if a is None or a.ended or t - a.last_ts >= ctx.pack.attempt_timeout_ms:
        timeout = ctx.pack.attempt_timeout_ms
        if a is not None and not a.ended:
            a.end(EXPIRED)
            ctx.state_row(c, cid, jidx, a, a.last_ts + timeout)
        prev = a
        a = Attempt(eid, t)
        if prev is not None:
            # `interested` looks back over J's views and intents in time (DESIGN.md §4), not per attempt.
            a.views, a.intent_ts = prev.views, prev.intent_ts
        if _completed_before(c, prev, jidx):
            a.stage = STAGE_USE  # a returning user: completing again is reuse
        set_attempt(ctx, c, jidx, a)
        ctx.mark_dirty(c, cid, jidx)
        marked = True
        ctx.schedule(c, t + timeout)
    if step is not None:
        canonical = ctx.vocab.get(step)
        step = canonical if canonical is not None else ctx.canon(step)
    latest = t >= a.last_ts
    prev_ts, prev_eid = a.last_ts, a.last_eid
    if latest:
        a.last_ts = t
        a.last_eid = eid
        if step is not None:
            a.last_step = step
    st = jdef.stage_types.get(etype, 0)
    if step is not None:
        st2 = jdef.stage_steps.get(step, 0)
        if st2 > st:
            st = st2
    if st > a.stage:
        a.stage = st
        if not marked:
            ctx.mark_dirty(c, cid, jidx)
            marked = True

    if step is not None:
        idx = jdef.step_index.get(step)
        if idx is not None and not a.reached >> idx & 1:
            a.reached |= 1 << idx
            ctx.step_row(cid, j, a.attempt_id, step, idx, ev)
            if not marked:
                ctx.mark_dirty(c, cid, jidx)
        recent = a.recent
        if not recent or recent[-1] != step:
            n = ctx.recent_steps
            a.recent = ctx.canon_steps((*recent[-(n - 1):], step) if n > 1 else (step,))

    if etype == jdef.complete_type:
        a.end(COMPLETED)
        a.last_key = False
        a.stage = STAGE_REUSE if a.stage >= STAGE_USE else STAGE_USE
        if ctx.pack.policy.after_complete_ms:
            c.contact = remember_completion(c.contact, jidx, t)
        ctx.step_row(cid, j, a.attempt_id, "(complete)", len(jdef.steps), ev)
        resolve_tags(ctx, c, cid, j, t)
        ctx.state_row(c, cid, jidx, a, t)
        return

    fired = a.fired
    if etype == "fail":
        r = jdef.failed
        if r is not None and not fired & _B_FAILED:
            ev_ids = failed.on_fail(a, ev)
            if ev_ids:
                fire(ctx, c, r, a, ev, ev_ids, t, step)
        r = jdef.stuck
        if r is not None and not fired & _B_STUCK:
            ev_ids = stuck.on_fail(r, a, ev)
            if ev_ids:
                fire(ctx, c, r, a, ev, ev_ids, t, step)
    elif etype in _INTEREST_TYPES:
        r = jdef.interested
        # Views are recorded even once the rule fired: they carry over to the next attempt's window.
        if r is not None and interested.on_interest(r, a, ev) and not fired & _B_INTERESTED:
            fire(ctx, c, r, a, ev, (eid,), t, step)
    elif etype in _INTENT_TYPES:
        if t > a.intent_ts:
            a.intent_ts = t

    r = jdef.channel_hop
    if r is not None and not fired & _B_HOP:
        chans = a.channels
        # A customer staying on one channel (the bare-name form, see channel_hop.on_event) changes nothing.
        if type(chans) is not str or chans != channel:
            ev_ids = channel_hop.on_event(r, a, ev, ctx.canon(channel), prev_ts, prev_eid)
            if ev_ids:
                fire(ctx, c, r, a, ev, ev_ids, t, step)

    if step is not None and step in jdef.key_steps:
        if entry is not None:
            r = jdef.maze
            if r is not None and not fired & _B_MAZE:
                ev_ids = maze.on_key_step(r, a, ev, step, ctx.canon(entry))
                if ev_ids:
                    a.entries = ()  # the rule fires once per attempt: its window is not read again
                    fire(ctx, c, r, a, ev, ev_ids, t, step)
        if latest:
            a.last_key = True
            r = jdef.abandoned
            if r is not None and not a.fired & _B_ABANDONED:
                ctx.schedule(c, t + r.within_ms)
    elif latest:
        a.last_key = False


def set_attempt(ctx: BatchContext, c: CustomerState, jidx: int, a: Attempt | None) -> None:
    """Put ``a`` in the customer's slot for journey ``jidx`` (None empties it)."""
    old = c.attempts
    new = (*old[:jidx], a, *old[jidx + 1:])
    # Customers without attempts (most of them) share one tuple.
    c.attempts = ctx.no_attempts if a is None and new.count(None) == len(new) else new


def _handoffs(ctx: BatchContext, c: CustomerState, ev: Event) -> None:
    for jidx, r in ctx.handoff_rules:
        a = c.attempts[jidx]
        if a is None or a.fired & _B_HANDOFF or not handoff.is_contact(r, ev) or not handoff.applies(r, a, ev):
            continue
        mid = fire(ctx, c, r, a, ev, (ev.event_id,), ev.ts_ms, a.last_step)
        agent = handoff.context(a)
        rules = ctx.pack.rules
        tags = c.tags or ()
        open_tags = [rules[tags[i]].name for i in range(0, len(tags), _TAG) if rules[tags[i]].journey == r.journey]
        ctx.out.context.append(
            {
                "schema": SCHEMA_VERSION,
                "moment_id": mid,
                "customer_id": ev.customer_id,
                "journey": r.journey,
                "contact_event_id": ev.event_id,
                "contact_ts": ev.ts_ms,
                "open_tags": open_tags,
                **agent,
            }
        )


def _completed_before(c: CustomerState, prev: Attempt | None, jidx: int) -> bool:
    """Return whether the customer is known to have completed the journey before."""
    if prev is not None and prev.ended == COMPLETED:
        return True
    contact = c.contact
    return contact is not None and contact.completed_at(jidx) is not None
