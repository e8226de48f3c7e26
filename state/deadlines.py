"""Timers derived from the state: one wake-up per customer, at the earliest of its deadlines.

No timer is stored: a customer's pending deadlines (abandonment, attempt expiry, tag TTL, eviction)
follow from its state, and the shard keeps one wake-up per customer at the earliest of them.
Deadlines that move later need no bookkeeping: a wake-up that finds nothing due asks for the next one.
"""

from __future__ import annotations

from state.context import BatchContext
from state.customer import end_attempt, set_attempt
from state.detectors.base import Detector
from state.firing import decide, fire
from state.generic.base import NO_TS
from state.journey import EXPIRED, Attempt, GenericAttempt
from state.record import CustomerState
from state.tags import expire_tags, first_expiry, last_expiry


def next_deadline(ctx: BatchContext, c: CustomerState) -> int:
    """Return the earliest event time at which something of the customer is due.

    That is the earliest of: a pending abandonment (``last_ts + idle``), an attempt's expiry
    check (``expiry_from + attempt_timeout``), a held tag's TTL, and the eviction check
    (``last_seen + evict_after``).
    """
    due = c.last_seen + ctx.evict_after_ms
    timeout = ctx.pack.attempt_timeout_ms
    defs = ctx.journey_defs if ctx.single else None
    for jidx, a in enumerate(c.attempts):
        if a is None:
            continue
        d = a.expiry_from + timeout
        if d < due:
            due = d
        # An attempt's timers keep the version of the event that armed them.
        jp = (defs if defs is not None else ctx.defs_at(a.last_ts))[jidx]
        for det in jp.timed:
            dd = det.due(a)
            # A timer fires only when its rule stayed in force from its arming to its due time.
            if dd is not None and dd < due and (defs is not None
                                                or ctx.in_force_over(a.last_ts, dd, det.rule.index)):
                due = dd
        gr = jp.generic
        if gr is not None and isinstance(a, GenericAttempt) and a.g is not None:
            dd = gr.next_due(a.g)
            if dd != NO_TS and dd < due:
                due = dd
    return first_expiry(ctx, c, due)


def on_wake(ctx: BatchContext, c: CustomerState, cid: str, due: int) -> bool:
    """Handle everything of a customer that is due at ``due`` (its wake-up time), then re-arm it.

    Same-time deadlines run in a fixed order: tag TTLs, abandonments, attempt expiry checks, eviction.
    Each abandonment is decided on its own, as when each had its own timer.

    Args:
        ctx: The batch context.
        c: The customer's state.
        cid: The customer id.
        due: The wake-up time (the earliest deadline; the shard's clock is there).

    Returns:
        True when the customer should be evicted.
    """
    c.wake = 0  # moments fired below must not file wake-ups of their own: one is filed at the end
    if due >= ctx.switch_hi or due < ctx.switch_lo:
        ctx.use_at(due)  # the contact policy and attempt expiry of the version in force at the wake-up
    if c.tags:  # most customers hold none: no closure, no call
        expire_tags(ctx, c, cid, due)
    _abandonments(ctx, c, cid, due)
    timeout = ctx.pack.attempt_timeout_ms
    for jidx, a in enumerate(c.attempts):
        if a is not None and a.expiry_from + timeout <= due:
            _check_expiry(ctx, c, cid, jidx, a, due)
    if c.last_seen + ctx.evict_after_ms <= due:
        later = last_expiry(ctx, c)
        contact = c.contact
        if contact is not None:
            # Caps, gaps and the after-completion rule look back further than the detection rules.
            later = max(later, contact.needed_until(ctx.pack.policy))
        if later < due:
            return True
        c.last_seen = later + 1 - ctx.evict_after_ms  # check again just after the last of them
    c.wake = wake = next_deadline(ctx, c)
    ctx.file_wake(c, wake)
    return False


def _abandonments(ctx: BatchContext, c: CustomerState, cid: str, due: int) -> None:
    """Fire the timed rules (abandonments) due by ``due``, each decided on its own."""
    due_now: list[tuple[int, str, Attempt, Detector]] = []
    defs = ctx.journey_defs if ctx.single else None
    for jidx, a in enumerate(c.attempts):
        if a is not None:
            # An abandonment keeps the parameters of the version in force when its arming event happened.
            for d in (defs if defs is not None else ctx.defs_at(a.last_ts))[jidx].timed:
                dd = d.due(a)
                if dd is not None and dd <= due and (defs is not None
                                                     or ctx.in_force_over(a.last_ts, dd, d.rule.index)):
                    due_now.append((a.last_ts, a.last_eid, a, d))
    if len(due_now) > 1:
        # Several journeys abandoned at the same instant: decided one by one in the order of the events
        # that left them at a key step, as their timers were armed.
        due_now.sort(key=lambda x: (x[0], x[1]))
    for _ts, _eid, a, d in due_now:
        ctx.current_customer = cid
        evidence, at, anchor, step = d.on_due(a)
        fire(ctx, c, d.rule, a, None, evidence, at, step, anchor=anchor)
        if ctx.pending:
            decide(ctx, c, cid)
    for jidx, a in enumerate(c.attempts):
        if a is not None and (defs if defs is not None else ctx.defs_at(a.last_ts))[jidx].generic is not None \
                and isinstance(a, GenericAttempt) and a.g is not None:
            _generic_wake(ctx, c, cid, jidx, a, due)


def _generic_wake(ctx: BatchContext, c: CustomerState, cid: str, jidx: int, a: GenericAttempt, due: int) -> None:
    """Fire the generic timers (``absence``) of one attempt due by ``due``, each decided on its own."""
    jp = ctx.defs_at(a.last_ts)[jidx]
    gr = jp.generic
    g = a.g
    if gr is None or g is None:
        return
    dd = gr.next_due(g)
    if dd == NO_TS or dd > due:
        return
    for f in gr.wake(g, due):
        r = jp.generic_rules[f.rule]
        if not ctx.single and r.generic is not None:
            armed = r.generic.armed_ms(f.due_ms)
            if not ctx.in_force_over(armed, f.due_ms, r.index):
                continue  # removed (or redefined) between its arming and its due time: it fires no more
            r = ctx.rule_at(armed, r.index) or r  # the timer keeps the version in force when it was armed
        ctx.current_customer = cid
        fire(ctx, c, r, a, None, f.evidence, f.due_ms, a.last_step, anchor=f.anchor)
        if ctx.pending:
            decide(ctx, c, cid)


def _check_expiry(ctx: BatchContext, c: CustomerState, cid: str, jidx: int, a: Attempt, due: int) -> None:
    """The attempt's expiry check (``due`` = ``expiry_from + attempt_timeout``)."""
    timeout = ctx.pack.attempt_timeout_ms
    if not a.ended:
        if a.last_ts + timeout > due:
            a.expiry_from = a.last_ts  # events came meanwhile: check again a timeout after the latest
            return
        end_attempt(ctx.journey_defs[jidx], a, EXPIRED)
        ctx.state_row(c, cid, jidx, a, due)
    # An ended attempt is kept only while a contact may still hand it off or its interest
    # windows still reach into the next attempt; timers fire before events of their time,
    # so the last moment it is needed at must have passed (due > keep) before it goes.
    keep = a.last_ts
    jp = ctx.journey_defs[jidx]
    for d in jp.keepers:
        keep = max(keep, d.keep_until(a))
    if isinstance(a, GenericAttempt) and a.g is not None:
        keep = max(keep, a.last_ts + jp.generic_span_ms)  # an ``unless`` look-back reaches into the next attempt
    if keep < due:
        set_attempt(ctx, c, jidx, None)
    else:
        a.expiry_from = keep + 1 - timeout


def shed_oldest(ctx: BatchContext, customers: dict[str, CustomerState]) -> None:
    """Drop the customer seen least recently (the shard's ``max_customers`` cap), counting what it drops.

    Dicts keep insertion order and the capped shard moves a customer to the end when seen: the first
    key is the customer seen least recently.
    """
    cid = next(iter(customers))
    c = customers.pop(cid)
    out = ctx.out
    out.evicted += 1
    out.shed += 1
    # Its open tags and journeys are then in ClickHouse only: a look-up of it seen again merges them.
    out.shed_ids.append(cid)
    ctx.write_marked(cid)
    # Its pending abandonments (armed, not yet due: due ones fired before this event) would have fired
    # before its eviction; shedding drops them, which operators must see (a cap set too low halved them).
    pending = 0
    for jd, a in zip(ctx.journey_defs, c.attempts, strict=True):
        if a is not None:
            pending += sum(1 for d in jd.timed if d.due(a) is not None)
    if pending:
        out.shed_pending += 1
        out.shed_moments += pending
