"""A customer's journeys advanced by one event: attempts, stages, steps, then the journey's detectors.

Called by ``state.shard.Shard`` in event-time order (late events excepted) with the shard's
``BatchContext``. What each moment kind does lives in its detector (``state.detectors``); what is due
by time in ``state.deadlines``. Old snapshots name ``state.customer.CustomerState``: it stays importable here.
"""

from __future__ import annotations

from typing import Final

from state.context import BatchContext
from state.detectors.base import Detector
from state.events import Event
from state.firing import fire
from state.generic.base import NO_TS
from state.generic.dispatch import JourneyRules
from state.journey import COMPLETED, EXPIRED, Attempt, GenericAttempt
from state.moments import SCHEMA_VERSION
from state.plan import JourneyPlan
from state.policy import remember_tz
from state.record import TAG_FIELDS, CustomerState
from state.rule_model import STAGE_REUSE, STAGE_USE
from state.tags import resolve_tags

__all__ = ["CustomerState", "apply_event", "end_attempt", "set_attempt"]

_TAG: Final = TAG_FIELDS


def apply_event(ctx: BatchContext, c: CustomerState, ev: Event) -> None:
    """Advance one customer by one (validated, non-duplicate) event.

    ``seen_before`` has checked the event's id and recorded its time as last seen.

    Args:
        ctx: The batch context (rule pack, wake-ups, outputs).
        c: The customer's state.
        ev: The event.
    """
    # This runs for every event: fields are unpacked once and the context's helpers that are trivial in
    # the common case (canon, mark_dirty) are inlined.
    eid, cid, t, _channel, etype, j, step, _entry, attrs, _origin = ev
    if attrs and "tz" in attrs and attrs["tz"] != c.tz:
        _remember_tz(c, attrs["tz"])
    contacts = ctx.contacts.get(etype)
    if contacts is not None:
        _contacts(ctx, c, ev, contacts)
    jidx = ctx.journey_index.get(j) if j is not None else None
    if jidx is None:
        return
    jp = ctx.journey_defs[jidx]
    a = c.attempts[jidx]
    if a is None or a.ended or t - a.last_ts >= ctx.attempt_timeout_ms:
        a = _new_attempt(ctx, c, cid, jidx, jp, a, eid, t)
    # Every event of the journey marks its state row for writing, so that the row written next reflects the
    # latest event whenever that is (an event moving only last_ts or last_step included). The change time 0
    # stands for the event's: an event's row is versioned by the attempt's last_ts, which is at least its
    # time (``state_record``); a later change time already marked (by a wake-up) is kept.
    ctx.dirty.setdefault((cid, jidx), (c, 0))
    prev_ts, prev_eid = a.last_ts, a.last_eid
    latest = t >= prev_ts
    # Stage, first arrival at a step, recent steps: written out here, as this runs for every event.
    key = False
    # The event type's stage, kept time and detectors (``JourneyPlan.by_type``).
    st, stamp, ds, ds_key = jp.by_type.get(etype, jp.other_type)
    if step is not None:
        step = ctx.vocab.get(step) or ctx.canon(step)
        key = step in jp.key_steps
        # Assigned rather than branched on: apply_event stays within the complexity bound.
        a.last_step = step if latest else a.last_step
        st2 = jp.stage_steps.get(step, 0)
        st = st2 if st2 > st else st
        idx = jp.step_index.get(step)
        if idx is not None and not a.reached >> idx & 1:
            a.reached |= 1 << idx
            ctx.step_row(cid, jp.id, a, step, idx, ev)
        recent = a.recent
        # The latest steps, without a repeat: kept as is (no branch: apply_event stays within its complexity bound).
        a.recent = recent if recent and recent[-1] == step else ctx.canon_steps((*recent[ctx.recent_from:], step))
    if latest:
        a.last_ts = t
        a.last_eid = eid
        a.last_key = key  # an abandonment is pending while the latest event is at a key step
        if key and a.fired & jp.key_wake_bits != jp.key_wake_bits:
            ctx.schedule(c, t + jp.key_wake_ms)  # the key-step deadlines (``Detector.WAKE_AT_KEY``), inline
    if st > a.stage:
        a.stage = st
    if etype == jp.complete_type:
        _complete(ctx, c, cid, jidx, jp, a, ev, latest)
        return
    if stamp and t > getattr(a, stamp):
        setattr(a, stamp, t)  # a detector's latest time of the type (``Detector.STAMPS``), kept without a call
    # The dispatch table: the detectors of this journey that react to this type (and, at a key step, those
    # that react to key steps), compiled at pack load.
    for d in ds_key if key else ds:
        evidence = d.on_event(ctx, c, a, ev, step, prev_ts, prev_eid)
        if evidence:
            fire(ctx, c, d.rule, a, ev, evidence, t, step)
    gr = jp.generic
    if gr is not None and latest:  # a straggler older than the attempt's latest event skips the generic rules
        _generic_event(ctx, c, jp, gr, a, ev, step)


def _generic_event(ctx: BatchContext, c: CustomerState, jp: JourneyPlan, gr: JourneyRules, a: Attempt, ev: Event,
                   step: str | None) -> None:
    """Apply an event to the journey's generic rules; each firing becomes a moment like a built-in's."""
    if not isinstance(a, GenericAttempt):
        return  # restored from a snapshot taken before the journey had generic rules: from its next attempt on
    g = a.g
    if g is None:
        g = a.g = gr.new_states()
    for f in gr.on_event(g, ev):
        fire(ctx, c, jp.generic_rules[f.rule], a, ev, f.evidence, f.due_ms, step if step is not None else a.last_step,
             anchor=f.anchor)
    if gr.timed:
        due = gr.next_due(g)
        if due != NO_TS:
            ctx.schedule(c, due)


def straggler_of_ended(ctx: BatchContext, c: CustomerState | None, ev: Event) -> bool:
    """Whether a late event belongs to a journey attempt that has ended since: in event-time order it came before
    the completion, or within the timeout of the attempt's last event.

    Applied, it would open a new attempt whose rules fire a second time for one attempt; it is left out instead
    (only a late event can be one: an attempt ends when the watermark passes its end).
    """
    jidx = ctx.journey_index.get(ev.journey) if c is not None and ev.journey is not None else None
    a = c.attempts[jidx] if c is not None and jidx is not None else None
    if a is None or not a.ended:
        return False
    if a.ended == COMPLETED:
        return ev.ts_ms < a.last_ts
    return ev.ts_ms - a.last_ts < ctx.attempt_timeout_ms


def _new_attempt(ctx: BatchContext, c: CustomerState, cid: str, jidx: int, jp: JourneyPlan, prev: Attempt | None,
                 eid: str, t: int) -> Attempt:
    """Start the journey's next attempt (ending the current one if it timed out)."""
    timeout = ctx.pack.attempt_timeout_ms
    if prev is not None and not prev.ended:
        end_attempt(jp, prev, EXPIRED)
        ctx.state_row(c, cid, jidx, prev, prev.last_ts + timeout)
    if jp.generic is None:
        a = Attempt(eid, t, jp.initial)
    else:
        # The generic rules' ``unless`` look-backs span attempts: the ended attempt's states carry over.
        a = GenericAttempt(eid, t, jp.initial, prev.g if isinstance(prev, GenericAttempt) else None)
    if prev is not None:
        for name in jp.carry_slots:
            # Kinds that look back in time rather than per attempt (interested, DESIGN.md §4).
            setattr(a, name, getattr(prev, name))
    if _completed_before(c, prev, jidx):
        a.stage = STAGE_USE  # a returning user: completing again is reuse
    set_attempt(ctx, c, jidx, a)
    ctx.mark_dirty(c, cid, jidx)
    due = t + timeout
    if due < c.wake:  # ``ctx.schedule``'s test: usually nothing to do
        ctx.schedule(c, due)
    return a


def _complete(ctx: BatchContext, c: CustomerState, cid: str, jidx: int, jp: JourneyPlan, a: Attempt,
              ev: Event, latest: bool) -> None:
    t = ev.ts_ms
    gr = jp.generic
    if gr is not None and latest:
        _generic_event(ctx, c, jp, gr, a, ev, ev.step)  # the completion belongs to the attempt it ends
    end_attempt(jp, a, COMPLETED)
    a.last_key = False
    a.stage = STAGE_REUSE if a.stage >= STAGE_USE else STAGE_USE
    if ctx.pack.policy.after_complete_ms:
        c.remember_completion(jidx, t)  # in the packed record (``policy.remember_completion`` decoded)
    ctx.step_row(cid, jp.id, a, "(complete)", len(jp.steps), ev)
    resolve_tags(ctx, c, cid, jp.id, t)
    ctx.state_row(c, cid, jidx, a, t)


def end_attempt(jp: JourneyPlan, a: Attempt, status: str) -> None:
    """End an attempt (``COMPLETED`` or ``EXPIRED``); its detectors drop what only an active one needs."""
    a.end(status)
    for d in jp.enders:
        d.on_end(a)
    gr = jp.generic
    if gr is not None and isinstance(a, GenericAttempt) and a.g is not None and gr.end_attempt(a.g, a.last_ts):
        a.g = None


def _remember_tz(c: CustomerState, tz: str) -> None:
    old = c.contact
    new = remember_tz(old, tz)
    if new is not old:
        c.contact = new


def set_attempt(ctx: BatchContext, c: CustomerState, jidx: int, a: Attempt | None) -> None:
    """Put ``a`` in the customer's slot for journey ``jidx`` (None empties it)."""
    old = c.attempts
    new = (*old[:jidx], a, *old[jidx + 1:])
    # Customers without attempts (most of them) share one tuple.
    c.attempts = ctx.no_attempts if a is None and new.count(None) == len(new) else new


def _contacts(ctx: BatchContext, c: CustomerState, ev: Event, detectors: tuple[tuple[int, Detector], ...]) -> None:
    """A contact: fire the customer-level rules (hand-offs) it triggers, with the agent's context."""
    for jidx, d in detectors:
        a = c.attempts[jidx]
        if a is None or not d.on_contact(a, ev):
            continue
        r = d.rule
        mid = fire(ctx, c, r, a, ev, (ev.event_id,), ev.ts_ms, a.last_step)
        agent = d.context(a)
        tags = c.tags or ()
        # A tag's key holds its rule's place in the low byte (``state.firing.fire``).
        held = [ctx.tag_rule(tags[i], tags[i + 2]) for i in range(0, len(tags), _TAG)]
        open_tags = [t.name for t in held if t.journey == r.journey]
        # The last contact the policy remembers sending (any journey): what the agent need not offer again.
        contact = c.contact
        sends = contact.send_records() if contact is not None else ()
        last = max(sends) if sends else (0, "")
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
                "last_action_ts": last[0],
                "last_action_channel": last[1],
            }
        )


def _completed_before(c: CustomerState, prev: Attempt | None, jidx: int) -> bool:
    """Return whether the customer is known to have completed the journey before."""
    if prev is not None and prev.ended == COMPLETED:
        return True
    return c.completed_at(jidx) is not None
