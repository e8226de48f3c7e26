"""Per-customer state and the event/timer transitions that detect moments.

Called by ``state.shard.Shard`` in event-time order (late events excepted); all
rule semantics of DESIGN.md §4 live here and in ``state.detectors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from state.detectors import KIND_BITS, abandoned, channel_hop, failed, handoff, interested, maze, stuck
from state.events import Event
from state.feedback import TRANSITIONS, Feedback
from state.journey import COMPLETED, EXPIRED, Attempt
from state.moments import SCHEMA_VERSION, moment_id
from state.policy import (
    CONTROL,
    HOLDOUT,
    SENT,
    Contact,
    action_record,
    evaluate,
    in_holdout,
    order,
    remember_completion,
    remember_send,
    remember_tz,
)
from state.rules import STAGE_REUSE, STAGE_USE, MomentRule

if TYPE_CHECKING:
    from state.shard import JourneyView, Shard

DEDUP_SLOTS = 8  # recent event ids remembered per customer (8 bytes each)
_DEDUP_KEEP = 8 * (DEDUP_SLOTS - 1)
_B_ABANDONED = KIND_BITS["abandoned"]
_B_FAILED = KIND_BITS["failed"]
_B_STUCK = KIND_BITS["stuck"]
_B_MAZE = KIND_BITS["maze"]
_B_HOP = KIND_BITS["channel_hop"]
_B_INTERESTED = KIND_BITS["interested"]
_B_HANDOFF = KIND_BITS["handoff"]

# Timer kinds, in the shard's heap.
T_ABANDON = 0
T_EXPIRE = 1
T_EVICT = 2
T_TAG_TTL = 3

TAG_OPEN = "open"
TAG_ACTIONED = "actioned"
TAG_RESOLVED = "resolved"
TAG_EXPIRED = "expired"
_TAG_RANK = {TAG_OPEN: 0, TAG_ACTIONED: 1, TAG_RESOLVED: 2, TAG_EXPIRED: 3}
_TAG_STATES = (TAG_OPEN, TAG_ACTIONED)  # states of a tag still held, by the index kept in the tag tuple


class CustomerState:
    """Everything kept about one customer: one attempt slot per journey, recent ids, open tags, contact history."""

    __slots__ = ("attempts", "last_seen", "dedup", "tags", "contact")

    def __init__(self, n_journeys: int, ts: int) -> None:
        self.attempts: list[Attempt | None] = [None] * n_journeys
        self.last_seen = ts
        self.dedup = b""
        # rule index -> (moment_id, opened_ts, expires_ts, journey, state: 0 open | 1 actioned);
        # None while no tag is held.
        self.tags: dict[int, tuple[str, int, int, str, int]] | None = None
        # Created at the first moment, completion or time zone: most customers never need one.
        self.contact: Contact | None = None

    def __getstate__(self) -> tuple[object, ...]:
        return (self.attempts, self.last_seen, self.dedup, self.tags, self.contact)

    def __setstate__(self, st: tuple[Any, ...]) -> None:
        self.attempts, self.last_seen, self.dedup, self.tags, self.contact = st


def seen_before(c: CustomerState, ev: Event) -> bool:
    """Return whether the event id is among the customer's recent ones; remember it otherwise.

    Ids are kept as 8-byte string hashes. Python's string hash is per process,
    which is enough: after a restart the restored state and the replayed input
    agree (recovery resumes input where the snapshot was taken), so only
    duplicates that straddle a restart go unnoticed, and those carry the same
    moment ids anyway.
    """
    key = hash(ev.event_id).to_bytes(8, "little", signed=True)
    blob = c.dedup
    # Entries are 8-byte aligned; an unaligned match of 8 hashed bytes is not a practical concern.
    if key in blob:
        return True
    c.dedup = blob[-_DEDUP_KEEP:] + key if len(blob) > _DEDUP_KEEP else blob + key
    return False


def apply_event(sh: Shard, c: CustomerState, ev: Event) -> None:
    """Advance one customer by one (validated, non-duplicate) event.

    Args:
        sh: The shard (rule pack, timers, outputs).
        c: The customer's state.
        ev: The event.
    """
    if ev.ts_ms > c.last_seen:
        c.last_seen = ev.ts_ms
    pack = sh.pack
    attrs = ev.attrs
    if attrs and "tz" in attrs:
        if c.contact is None:
            c.contact = Contact()
        remember_tz(c.contact, attrs["tz"])
    if sh.handoff_rules and ev.type in sh.handoff_types and ev.channel in sh.handoff_channels:
        _handoffs(sh, c, ev)
    j = ev.journey
    if j is None:
        return
    jidx = sh.journey_index.get(j)
    if jidx is None:
        return
    jdef = sh.journey_defs[jidx]
    t = ev.ts_ms
    a = c.attempts[jidx]
    if a is None or a.ended or t - a.last_ts >= pack.attempt_timeout_ms:
        if a is not None and not a.ended:
            a.ended = EXPIRED
            sh.state_row(c, ev.customer_id, jidx, a, a.last_ts + pack.attempt_timeout_ms)
        prev = a
        a = Attempt(ev.event_id, t)
        if prev is not None:
            # `interested` looks back over J's views and intents in time (DESIGN.md §4), not per attempt.
            a.views, a.intent_ts = prev.views, prev.intent_ts
        if _completed_before(c, prev, jidx):
            a.stage = STAGE_USE  # a returning user: completing again is reuse
        c.attempts[jidx] = a
        sh.mark_dirty(c, ev.customer_id, jidx)
        sh.push_timer(t + pack.attempt_timeout_ms, T_EXPIRE, ev.customer_id, jidx, a.attempt_id, t)
    cid = ev.customer_id
    step = sh.canon(ev.step) if ev.step is not None else None
    latest = t >= a.last_ts
    if latest:
        a.last_ts = t
        a.last_eid = ev.event_id
        if step is not None:
            a.last_step = step
    etype = ev.type
    st = jdef.stage_types.get(etype, 0)
    if step is not None:
        st2 = jdef.stage_steps.get(step, 0)
        if st2 > st:
            st = st2
    if st > a.stage:
        a.stage = st
        sh.mark_dirty(c, cid, jidx)

    if step is not None:
        idx = jdef.step_index.get(step)
        if idx is not None and not a.reached >> idx & 1:
            a.reached |= 1 << idx
            sh.step_row(cid, j, a.attempt_id, step, idx, ev)
            sh.mark_dirty(c, cid, jidx)
        if not a.recent or a.recent[-1] != step:
            n = sh.recent_steps
            a.recent = (*a.recent[-(n - 1):], step) if n > 1 else (step,)

    if etype == jdef.complete_type:
        a.ended = COMPLETED
        a.last_key = False
        a.stage = STAGE_REUSE if a.stage >= STAGE_USE else STAGE_USE
        if pack.policy.after_complete_ms:
            if c.contact is None:
                c.contact = Contact()
            remember_completion(c.contact, jidx, t)
        sh.step_row(cid, j, a.attempt_id, "(complete)", len(jdef.steps), ev)
        _resolve_tags(sh, c, cid, j, a, t)
        sh.state_row(c, cid, jidx, a, t)
        return

    fired = a.fired
    if etype == "fail":
        r = jdef.failed
        if r is not None and not fired & _B_FAILED:
            _fire(sh, c, r, a, ev, failed.on_fail(a, ev), t, step)
        r = jdef.stuck
        if r is not None and not fired & _B_STUCK:
            ev_ids = stuck.on_fail(r, a, ev)
            if ev_ids:
                _fire(sh, c, r, a, ev, ev_ids, t, step)
    elif etype in interested.INTEREST_TYPES:
        r = jdef.interested
        # Views are recorded even once the rule fired: they carry over to the next attempt's window.
        if r is not None and interested.on_interest(r, a, ev) and not fired & _B_INTERESTED:
            _fire(sh, c, r, a, ev, (ev.event_id,), t, step)
    elif etype in interested.INTENT_TYPES:
        if t > a.intent_ts:
            a.intent_ts = t

    r = jdef.channel_hop
    if r is not None and not fired & _B_HOP:
        ev_ids = channel_hop.on_event(r, a, ev, sh.canon(ev.channel))
        if ev_ids:
            _fire(sh, c, r, a, ev, ev_ids, t, step)

    if step is not None and step in jdef.key_steps:
        if ev.entry is not None:
            r = jdef.maze
            if r is not None and not fired & _B_MAZE:
                ev_ids = maze.on_key_step(r, a, ev, step, sh.canon(ev.entry))
                if ev_ids:
                    _fire(sh, c, r, a, ev, ev_ids, t, step)
        if latest:
            a.last_key = True
            r = jdef.abandoned
            if r is not None and not a.armed and not a.fired & _B_ABANDONED:
                a.armed = True
                sh.push_timer(t + r.within_ms, T_ABANDON, cid, jidx, a.attempt_id, t)
    elif latest:
        a.last_key = False


def _handoffs(sh: Shard, c: CustomerState, ev: Event) -> None:
    for jidx, r in sh.handoff_rules:
        a = c.attempts[jidx]
        if a is None or a.fired & _B_HANDOFF or not handoff.is_contact(r, ev) or not handoff.applies(r, a, ev):
            continue
        mid = _fire(sh, c, r, a, ev, (ev.event_id,), ev.ts_ms, a.last_step)
        ctx = handoff.context(a)
        open_tags = [sh.pack.rules[i].name for i in (c.tags or {}) if sh.pack.rules[i].journey == r.journey]
        sh.out.context.append(
            {
                "schema": SCHEMA_VERSION,
                "moment_id": mid,
                "customer_id": ev.customer_id,
                "journey": r.journey,
                "contact_event_id": ev.event_id,
                "contact_ts": ev.ts_ms,
                "open_tags": open_tags,
                **ctx,
            }
        )


def _fire(
    sh: Shard,
    c: CustomerState,
    r: MomentRule,
    a: Attempt,
    ev: Event | None,
    evidence: tuple[str, ...],
    due: int,
    step: str | None,
    anchor: str | None = None,
) -> str:
    a.fired |= KIND_BITS[r.kind]
    cid = sh.current_customer if ev is None else ev.customer_id
    sh.mark_dirty(c, cid, sh.journey_index[r.journey])
    anchor_id = anchor if anchor is not None else (ev.event_id if ev is not None else evidence[-1])
    mid = moment_id(cid, r.name, anchor_id)
    attrs = dict(ev.attrs) if ev is not None and ev.attrs else {}
    sh.out.moments.append(
        {
            "schema": SCHEMA_VERSION,
            "moment_id": mid,
            "customer_id": cid,
            "rule": r.name,
            "kind": r.kind,
            "journey": r.journey,
            "step": step or "",
            "urgency": r.urgency,
            "due_ts": due,
            "detected_at": sh.now_ms(),
            "evidence": list(evidence),
            "attrs": attrs,
            "action": r.action,
        }
    )
    expires = due + r.ttl_ms
    if c.tags is None:
        c.tags = {}
    c.tags[r.index] = (mid, due, expires, r.journey, 0)
    sh.tag_row(cid, r, mid, TAG_OPEN, "", due, due)
    sh.push_timer(expires, T_TAG_TTL, cid, r.index, mid, due)
    sh.pending.append((r, sh.out.moments[-1], a.stage))
    return mid


def decide(sh: Shard, c: CustomerState, cid: str) -> None:
    """Turn the moments one event or timer fired for a customer into actions or suppressions.

    Moments fired at the same instant compete: the most urgent is decided first, and once one
    of them is acted on (sent or held out), the other customer contacts are ``outranked``.
    """
    pending = order(sh.pending) if len(sh.pending) > 1 else sh.pending
    sh.pending = []
    policy = sh.pack.policy
    clock = sh.decision_clock()
    acted = False
    out = sh.out.actions
    for r, m, stage in pending:
        due = m["due_ts"]
        status, reason, channel, skipped = evaluate(
            policy, r, c.contact, due_ms=due, lag_ms=clock - due, stage=stage,
            journey_index=sh.journey_index[r.journey], acted_now=acted,
        )
        control = in_holdout(cid, r.name, r.holdout)
        if status == SENT:
            if control:
                status, reason = CONTROL, HOLDOUT
            if r.contact:
                acted = True
                if c.contact is None:
                    c.contact = Contact()
                remember_send(policy, c.contact, due, channel)
            if status == SENT:
                _mark_actioned(sh, c, cid, r, m["moment_id"], due)
        out.append(action_record(r, m, status, reason, channel, skipped, control, m["detected_at"]))


def _mark_actioned(sh: Shard, c: CustomerState, cid: str, r: MomentRule, mid: str, t: int) -> None:
    tag = c.tags.get(r.index) if c.tags else None
    if c.tags is not None and tag is not None and tag[0] == mid and tag[4] == 0:
        c.tags[r.index] = (*tag[:4], 1)
        sh.tag_row(cid, r, mid, TAG_ACTIONED, "", tag[1], t)


def _completed_before(c: CustomerState, prev: Attempt | None, jidx: int) -> bool:
    """Return whether the customer is known to have completed the journey before."""
    if prev is not None and prev.ended == COMPLETED:
        return True
    return c.contact is not None and any(j == jidx for j, _t in c.contact.done)


def _resolve_tags(sh: Shard, c: CustomerState, cid: str, journey: str, a: Attempt, t: int) -> None:
    if not c.tags:
        return
    # The customer finished what the moment was about (in this attempt or, within the tag's TTL, a later one).
    for ridx, (mid, opened, _exp, j, _st) in list(c.tags.items()):
        if j == journey:
            del c.tags[ridx]
            sh.tag_row(cid, sh.pack.rules[ridx], mid, TAG_RESOLVED, "recovered", opened, t)
    if not c.tags:
        c.tags = None


def on_timer(sh: Shard, c: CustomerState, cid: str, kind: int, idx: int, token: str, armed: int, due: int) -> bool:
    """Handle one due timer of a customer.

    Args:
        sh: The shard.
        c: The customer's state.
        cid: The customer id.
        kind: ``T_ABANDON``, ``T_EXPIRE``, ``T_EVICT`` or ``T_TAG_TTL``.
        idx: Journey index (abandon/expire) or rule index (tag TTL).
        token: Attempt id or moment id the timer was armed for.
        armed: Event time the timer was armed at.
        due: The timer's due time.

    Returns:
        True when the customer should be evicted.
    """
    if kind == T_ABANDON:
        a = c.attempts[idx]
        r = sh.journey_defs[idx].abandoned
        if a is None or r is None or a.attempt_id != token:
            return False
        a.armed = False
        if a.fired & _B_ABANDONED:
            return False
        decision = abandoned.on_timer(r, a, token, due)
        if decision == abandoned.FIRE:
            sh.current_customer = cid
            _fire(sh, c, r, a, None, (a.last_eid,), a.last_ts + r.within_ms, a.last_step, anchor=a.last_eid)
        elif decision == abandoned.REARM:
            a.armed = True
            sh.push_timer(a.last_ts + r.within_ms, T_ABANDON, cid, idx, token, a.last_ts)
    elif kind == T_EXPIRE:
        a = c.attempts[idx]
        if a is None or a.attempt_id != token:
            return False
        if not a.ended:
            expiry = a.last_ts + sh.pack.attempt_timeout_ms
            if expiry > due:
                sh.push_timer(expiry, T_EXPIRE, cid, idx, token, armed)
                return False
            a.ended = EXPIRED
            sh.state_row(c, cid, idx, a, due)
        # An ended attempt is kept only while a contact may still hand it off or its interest
        # windows still reach into the next attempt; timers fire before events of their time,
        # so the last moment it is needed at must have passed (due > keep) before it goes.
        keep = _ended_needed_until(sh.journey_defs[idx], a)
        if keep < due:
            c.attempts[idx] = None
        else:
            sh.push_timer(keep + 1, T_EXPIRE, cid, idx, token, armed)
    elif kind == T_TAG_TTL:
        tag = c.tags.get(idx) if c.tags else None
        if tag is not None and tag[0] == token and c.tags is not None:
            del c.tags[idx]
            if not c.tags:
                c.tags = None
            sh.tag_row(cid, sh.pack.rules[idx], token, TAG_EXPIRED, "expired", tag[1], due)
    elif kind == T_EVICT:
        evict_at = c.last_seen + sh.evict_after_ms
        if evict_at > due:
            sh.push_timer(evict_at, T_EVICT, cid, 0, "", c.last_seen)
            return False
        later = max(t[2] for t in c.tags.values()) if c.tags else 0
        if c.contact is not None:
            # Caps, gaps and the after-completion rule look back further than the detection rules.
            later = max(later, c.contact.needed_until(sh.pack.policy))
        if later >= due:
            sh.push_timer(max(later, due) + 1, T_EVICT, cid, 0, "", c.last_seen)
            return False
        return True
    return False


def _ended_needed_until(jd: JourneyView, a: Attempt) -> int:
    """Return the last event time at which an ended attempt still matters to the handoff or interested rules."""
    keep = a.last_ts
    r = jd.handoff
    if r is not None:
        keep = a.last_ts + r.within_ms
    r = jd.interested
    if r is not None:
        if a.views:
            keep = max(keep, max(a.views) + r.within_ms)
        if a.intent_ts:
            keep = max(keep, a.intent_ts + r.no_intent_ms)
    return keep


def apply_feedback(sh: Shard, c: CustomerState, fb: Feedback) -> None:
    """Move the tag of the moment a feedback record names (contacted → actioned, converted → resolved…)."""
    if not c.tags:
        return
    for ridx, tag in list(c.tags.items()):
        mid, opened = tag[0], tag[1]
        if mid != fb.moment_id:
            continue
        state, closes = TRANSITIONS[fb.outcome]
        if closes:
            del c.tags[ridx]
            if not c.tags:
                c.tags = None
        else:
            c.tags[ridx] = (*tag[:4], 1)
        # A feedback clock behind the moment's must not order the transition before the opening.
        sh.tag_row(fb.customer_id, sh.pack.rules[ridx], mid, state, fb.outcome, opened, max(fb.ts_ms, opened))
        return


def tag_rank(state: str) -> int:
    """Order of tag states within one timestamp, for row versions."""
    return _TAG_RANK[state]
