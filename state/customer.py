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

DEDUP_SLOTS = 8  # recent event ids remembered per customer
_TAG = 4  # fields per record in CustomerState.tags
_B_ABANDONED = KIND_BITS["abandoned"]
_B_FAILED = KIND_BITS["failed"]
_B_STUCK = KIND_BITS["stuck"]
_B_MAZE = KIND_BITS["maze"]
_B_HOP = KIND_BITS["channel_hop"]
_B_INTERESTED = KIND_BITS["interested"]
_B_HANDOFF = KIND_BITS["handoff"]
_INTEREST_TYPES = interested.INTEREST_TYPES
_INTENT_TYPES = interested.INTENT_TYPES

TAG_OPEN = "open"
TAG_ACTIONED = "actioned"
TAG_RESOLVED = "resolved"
TAG_EXPIRED = "expired"
_TAG_RANK = {TAG_OPEN: 0, TAG_ACTIONED: 1, TAG_RESOLVED: 2, TAG_EXPIRED: 3}


# CustomerState.rec: a customer's small fields packed in one bytes object, little-endian. Separate
# ints, tuples and records cost several times as much, and a shard holds millions of customers
# (contacted ones for a week, for the contact policy's caps).
#   last_seen:6  wake:6  n:1  n × event-id hash:6                     (rewritten by every event)
#   t:2  t × (rule index:2  state:1  opened_ts:6  moment id:16)       held tags
#   tz_len:1  tz  s:2  s × (ts:6  len:1  channel)  d:2  d × (journey index:2  ts:6)   contact history,
#                                                                     absent while there is none
_TS = 6  # bytes of an event time (enough until the year 6000)
_ID = 6  # bytes of a remembered event id's hash
_ID_MASK = (1 << 8 * _ID) - 1
_IDS = 2 * _TS  # offset of the id count
_RING = _IDS + 1  # offset of the first id hash
_TAG_BYTES = 25
_NO_WAKE = bytes(_TS)
_NO_TAGS = bytes(2)
_STATE_BYTE = (b"\0", b"\1")  # a tag record's state byte: open, actioned
_COUNTS = tuple(bytes((k,)) for k in range(DEDUP_SLOTS + 1))  # id-count bytes, prebuilt


def _u(b: bytes, i: int, n: int) -> int:
    return int.from_bytes(b[i : i + n], "little")


class CustomerState:
    """Everything kept about one customer: one attempt slot per journey, recent ids, open tags, contact history.

    No timer is stored: every pending deadline (abandonment, attempt expiry, tag TTL, eviction) is
    derived from the state by ``next_deadline``, and the shard keeps one wake-up per customer at
    the earliest of them (``wake``). All but the attempts live packed in ``rec`` (layout above);
    the properties decode and re-encode it, which the hot path only does for ids and times.
    """

    __slots__ = ("cid", "attempts", "rec")

    def __init__(self, journeys: tuple[Attempt | None, ...] | int, ts: int, cid: str = "") -> None:
        # The very string object the shard's dict is keyed by, so wake-ups do not pin copies of it.
        self.cid = cid
        # The current attempt per journey index; the shard's shared all-None tuple while there is none.
        self.attempts: tuple[Attempt | None, ...] = journeys if isinstance(journeys, tuple) else (None,) * journeys
        self.rec = ts.to_bytes(_TS, "little") + _NO_WAKE + b"\0" + _NO_TAGS

    @property
    def last_seen(self) -> int:
        """Latest event time, moved further while open tags or contact history keep an idle customer.

        The customer is evicted ``evict_after_ms`` after it.
        """
        return int.from_bytes(self.rec[:_TS], "little")  # not via _u: read on every wake-up check

    @last_seen.setter
    def last_seen(self, ts: int) -> None:
        self.rec = ts.to_bytes(_TS, "little") + self.rec[_TS:]

    @property
    def wake(self) -> int:
        """Event time of the customer's wake-up in the shard (0 while it is being handled)."""
        return int.from_bytes(self.rec[_TS:_IDS], "little")  # not via _u: read on every schedule()

    @wake.setter
    def wake(self, due: int) -> None:
        r = self.rec
        self.rec = r[:_TS] + due.to_bytes(_TS, "little") + r[_IDS:]

    def _tags_at(self) -> int:
        return _RING + _ID * self.rec[_IDS]

    @property
    def tags(self) -> tuple[Any, ...] | None:
        """Held tags: flat (rule index, moment_id, opened_ts, state: 0 open | 1 actioned) records.

        One per rule, in the order the rules first got one (a newer moment of a rule takes the older
        one's place); None while no tag is held.
        """
        r = self.rec
        i = _RING + _ID * r[_IDS]
        n = int.from_bytes(r[i : i + 2], "little")
        if not n:
            return None
        out: list[Any] = []
        for k in range(i + 2, i + 2 + n * _TAG_BYTES, _TAG_BYTES):
            out += (_u(r, k, 2), r[k + 9 : k + 25].hex(), _u(r, k + 3, _TS), r[k + 2])
        return tuple(out)

    @tags.setter
    def tags(self, tags: tuple[Any, ...] | None) -> None:
        r = self.rec
        i = self._tags_at()
        end = i + 2 + _u(r, i, 2) * _TAG_BYTES
        n = len(tags) // _TAG if tags else 0
        body = b"".join(
            tags[k].to_bytes(2, "little") + bytes((tags[k + 3],)) + tags[k + 2].to_bytes(_TS, "little")
            + bytes.fromhex(tags[k + 1])
            for k in range(0, n * _TAG, _TAG)
        ) if tags else b""
        self.rec = r[:i] + n.to_bytes(2, "little") + body + r[end:]

    def put_tag(self, ridx: int, mid: str, opened: int, state: int) -> None:
        """Hold a tag of rule ``ridx`` (replacing that rule's record in place, else appending one).

        The same as setting ``tags`` to the decoded tuple so edited, without decoding it: this runs
        for every moment.
        """
        r = self.rec
        i = _RING + _ID * r[_IDS]
        n = int.from_bytes(r[i : i + 2], "little")
        end = i + 2 + n * _TAG_BYTES
        key = ridx.to_bytes(2, "little")
        new = b"".join((key, _STATE_BYTE[state], opened.to_bytes(_TS, "little"), bytes.fromhex(mid)))
        for k in range(i + 2, end, _TAG_BYTES):
            if r[k : k + 2] == key:
                self.rec = b"".join((r[:k], new, r[k + _TAG_BYTES :]))
                return
        self.rec = b"".join((r[:i], (n + 1).to_bytes(2, "little"), r[i + 2 : end], new, r[end:]))

    def mark_tag_actioned(self, ridx: int, mid: str) -> int | None:
        """Move rule ``ridx``'s tag to actioned if it is the open tag of moment ``mid``; return its opened_ts.

        Returns None (and changes nothing) when the rule holds no such open tag.
        """
        r = self.rec
        i = _RING + _ID * r[_IDS]
        end = i + 2 + int.from_bytes(r[i : i + 2], "little") * _TAG_BYTES
        key = ridx.to_bytes(2, "little")
        for k in range(i + 2, end, _TAG_BYTES):
            if r[k : k + 2] == key:
                if r[k + 2] != 0 or r[k + 9 : k + 25].hex() != mid:
                    return None
                self.rec = b"".join((r[: k + 2], _STATE_BYTE[1], r[k + 3 :]))
                return int.from_bytes(r[k + 3 : k + 9], "little")
        return None

    def _contact_at(self) -> int:
        r = self.rec
        i = _RING + _ID * r[_IDS]
        return i + 2 + int.from_bytes(r[i : i + 2], "little") * _TAG_BYTES

    @property
    def contact(self) -> Contact | None:
        """The contact policy's memory of the customer, None while there is none."""
        r = self.rec
        i = self._contact_at()
        if i == len(r):
            return None
        tz_len = r[i]
        tz = r[i + 1 : i + 1 + tz_len].decode() if tz_len else None
        i += 1 + tz_len
        sends: list[tuple[int, str]] = []
        for _ in range(_u(r, i, 2)):
            ch_len = r[i + 2 + _TS]
            sends.append((_u(r, i + 2, _TS), r[i + 3 + _TS : i + 3 + _TS + ch_len].decode()))
            i += _TS + 1 + ch_len
        i += 2
        done = [(_u(r, k, 2), _u(r, k + 2, _TS)) for k in range(i + 2, i + 2 + _u(r, i, 2) * 8, 8)]
        return Contact.of(tz, sends, done)

    @contact.setter
    def contact(self, contact: Contact | None) -> None:
        r = self.rec
        head = r[: self._contact_at()]
        if contact is None:
            self.rec = head
            return
        tz = contact.tz.encode() if contact.tz else b""
        sends = contact.send_records()
        done = contact.done_records()
        self.rec = b"".join((
            head, bytes((len(tz),)), tz, len(sends).to_bytes(2, "little"),
            *(t.to_bytes(_TS, "little") + bytes((len(ch),)) + ch.encode() for t, ch in sends),
            len(done).to_bytes(2, "little"),
            *(j.to_bytes(2, "little") + t.to_bytes(_TS, "little") for j, t in done),
        ))

    @property
    def tz(self) -> str | None:
        """The customer's time zone, if known (without decoding the rest of the contact history)."""
        r = self.rec
        i = self._contact_at()
        return r[i + 1 : i + 1 + r[i]].decode() if i < len(r) and r[i] else None

    def __getstate__(self) -> tuple[object, ...]:
        return (self.cid, self.attempts, self.rec)

    def __setstate__(self, st: tuple[Any, ...]) -> None:
        self.cid, self.attempts, self.rec = st


def seen_before(c: CustomerState, ev: Event) -> bool:
    """Return whether the event id is among the customer's recent ones; else remember it and its time.

    Ids are kept as 48-bit string hashes (a false match is ~1 in 3·10^13 per event). Python's
    string hash is per process, which is enough: after a restart the restored state and the
    replayed input agree (recovery resumes input where the snapshot was taken), so only
    duplicates that straddle a restart go unnoticed, and those carry the same moment ids anyway.
    """
    key = (hash(ev.event_id) & _ID_MASK).to_bytes(_ID, "little")
    r = c.rec
    n = r[_IDS]
    end = _RING + n * _ID
    i = r.find(key, _RING, end)
    while i >= 0:
        if (i - _RING) % _ID == 0:  # only whole entries count
            return True
        i = r.find(key, i + 1, end)
    # One join builds the new record (this runs for every event): last_seen (if later), wake, the id
    # count, the ids with the oldest dropped when the ring is full, the new id, then the rest untouched.
    if n >= DEDUP_SLOTS:
        first, count = _RING + _ID, r[_IDS:_RING]
    else:
        first, count = _RING, _COUNTS[n + 1]
    ts = ev.ts_ms
    if ts > int.from_bytes(r[:_TS], "little"):
        c.rec = b"".join((ts.to_bytes(_TS, "little"), r[_TS:_IDS], count, r[first:end], key, r[end:]))
    else:
        c.rec = b"".join((r[:_IDS], count, r[first:end], key, r[end:]))
    return False


def apply_event(sh: Shard, c: CustomerState, ev: Event) -> None:
    """Advance one customer by one (validated, non-duplicate) event.

    ``seen_before`` has checked the event's id and recorded its time as last seen.

    Args:
        sh: The shard (rule pack, wake-ups, outputs).
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
    if sh.handoff_rules and etype in sh.handoff_types and channel in sh.handoff_channels:
        _handoffs(sh, c, ev)
    if j is None:
        return
    jidx = sh.journey_index.get(j)
    if jidx is None:
        return
    jdef = sh.journey_defs[jidx]
    a = c.attempts[jidx]
    # Whether (cid, jidx) is already marked dirty by this event: marking it again would change nothing.
    marked = False
    if a is None or a.ended or t - a.last_ts >= sh.pack.attempt_timeout_ms:
        timeout = sh.pack.attempt_timeout_ms
        if a is not None and not a.ended:
            a.end(EXPIRED)
            sh.state_row(c, cid, jidx, a, a.last_ts + timeout)
        prev = a
        a = Attempt(eid, t)
        if prev is not None:
            # `interested` looks back over J's views and intents in time (DESIGN.md §4), not per attempt.
            a.views, a.intent_ts = prev.views, prev.intent_ts
        if _completed_before(c, prev, jidx):
            a.stage = STAGE_USE  # a returning user: completing again is reuse
        set_attempt(sh, c, jidx, a)
        sh.mark_dirty(c, cid, jidx)
        marked = True
        sh.schedule(c, t + timeout)
    if step is not None:
        canonical = sh._vocab.get(step)
        step = canonical if canonical is not None else sh.canon(step)
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
            sh.mark_dirty(c, cid, jidx)
            marked = True

    if step is not None:
        idx = jdef.step_index.get(step)
        if idx is not None and not a.reached >> idx & 1:
            a.reached |= 1 << idx
            sh.step_row(cid, j, a.attempt_id, step, idx, ev)
            if not marked:
                sh.mark_dirty(c, cid, jidx)
        recent = a.recent
        if not recent or recent[-1] != step:
            n = sh.recent_steps
            a.recent = sh.canon_steps((*recent[-(n - 1):], step) if n > 1 else (step,))

    if etype == jdef.complete_type:
        a.end(COMPLETED)
        a.last_key = False
        a.stage = STAGE_REUSE if a.stage >= STAGE_USE else STAGE_USE
        if sh.pack.policy.after_complete_ms:
            c.contact = remember_completion(c.contact, jidx, t)
        sh.step_row(cid, j, a.attempt_id, "(complete)", len(jdef.steps), ev)
        _resolve_tags(sh, c, cid, j, a, t)
        sh.state_row(c, cid, jidx, a, t)
        return

    fired = a.fired
    if etype == "fail":
        r = jdef.failed
        if r is not None and not fired & _B_FAILED:
            ev_ids = failed.on_fail(a, ev)
            if ev_ids:
                _fire(sh, c, r, a, ev, ev_ids, t, step)
        r = jdef.stuck
        if r is not None and not fired & _B_STUCK:
            ev_ids = stuck.on_fail(r, a, ev)
            if ev_ids:
                _fire(sh, c, r, a, ev, ev_ids, t, step)
    elif etype in _INTEREST_TYPES:
        r = jdef.interested
        # Views are recorded even once the rule fired: they carry over to the next attempt's window.
        if r is not None and interested.on_interest(r, a, ev) and not fired & _B_INTERESTED:
            _fire(sh, c, r, a, ev, (eid,), t, step)
    elif etype in _INTENT_TYPES:
        if t > a.intent_ts:
            a.intent_ts = t

    r = jdef.channel_hop
    if r is not None and not fired & _B_HOP:
        chans = a.channels
        # A customer staying on one channel (the bare-name form, see channel_hop.on_event) changes nothing.
        if type(chans) is not str or chans != channel:
            ev_ids = channel_hop.on_event(r, a, ev, sh.canon(channel), prev_ts, prev_eid)
            if ev_ids:
                _fire(sh, c, r, a, ev, ev_ids, t, step)

    if step is not None and step in jdef.key_steps:
        if entry is not None:
            r = jdef.maze
            if r is not None and not fired & _B_MAZE:
                ev_ids = maze.on_key_step(r, a, ev, step, sh.canon(entry))
                if ev_ids:
                    a.entries = ()  # the rule fires once per attempt: its window is not read again
                    _fire(sh, c, r, a, ev, ev_ids, t, step)
        if latest:
            a.last_key = True
            r = jdef.abandoned
            if r is not None and not a.fired & _B_ABANDONED:
                sh.schedule(c, t + r.within_ms)
    elif latest:
        a.last_key = False


def set_attempt(sh: Shard, c: CustomerState, jidx: int, a: Attempt | None) -> None:
    """Put ``a`` in the customer's slot for journey ``jidx`` (None empties it)."""
    old = c.attempts
    new = (*old[:jidx], a, *old[jidx + 1:])
    # Customers without attempts (most of them) share one tuple.
    c.attempts = sh.no_attempts if a is None and new.count(None) == len(new) else new


def _handoffs(sh: Shard, c: CustomerState, ev: Event) -> None:
    for jidx, r in sh.handoff_rules:
        a = c.attempts[jidx]
        if a is None or a.fired & _B_HANDOFF or not handoff.is_contact(r, ev) or not handoff.applies(r, a, ev):
            continue
        mid = _fire(sh, c, r, a, ev, (ev.event_id,), ev.ts_ms, a.last_step)
        ctx = handoff.context(a)
        rules = sh.pack.rules
        tags = c.tags or ()
        open_tags = [rules[tags[i]].name for i in range(0, len(tags), _TAG) if rules[tags[i]].journey == r.journey]
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
    c.put_tag(r.index, mid, due, 0)
    sh.tag_row(cid, r, mid, TAG_OPEN, "", due, due)
    sh.schedule(c, due + r.ttl_ms)
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
    # Decoded from the packed record once: only remember_send below changes it (tags are stored apart).
    contact = c.contact
    for r, m, stage in pending:
        due = m["due_ts"]
        status, reason, channel, skipped = evaluate(
            policy, r, contact, due_ms=due, lag_ms=clock - due, stage=stage,
            journey_index=sh.journey_index[r.journey], acted_now=acted,
        )
        control = in_holdout(cid, r.name, r.holdout)
        if status == SENT:
            if control:
                status, reason = CONTROL, HOLDOUT
            if r.contact:
                acted = True
                c.contact = contact = remember_send(policy, contact, due, channel)
            if status == SENT:
                _mark_actioned(sh, c, cid, r, m["moment_id"], due)
        out.append(action_record(r, m, status, reason, channel, skipped, control, m["detected_at"]))


# -- tags: flat records in CustomerState.tags ---------------------------------------------------
def _mark_actioned(sh: Shard, c: CustomerState, cid: str, r: MomentRule, mid: str, t: int) -> None:
    opened = c.mark_tag_actioned(r.index, mid)
    if opened is not None:
        sh.tag_row(cid, r, mid, TAG_ACTIONED, "", opened, t)


def _completed_before(c: CustomerState, prev: Attempt | None, jidx: int) -> bool:
    """Return whether the customer is known to have completed the journey before."""
    if prev is not None and prev.ended == COMPLETED:
        return True
    contact = c.contact
    return contact is not None and contact.completed_at(jidx) is not None


def _resolve_tags(sh: Shard, c: CustomerState, cid: str, journey: str, a: Attempt, t: int) -> None:
    # The customer finished what the moment was about (in this attempt or, within the tag's TTL, a later one).
    tags = c.tags
    if not tags:
        return
    rules = sh.pack.rules
    kept: list[Any] = []
    for i in range(0, len(tags), _TAG):
        ridx, mid, opened = tags[i : i + 3]
        if rules[ridx].journey == journey:
            sh.tag_row(cid, rules[ridx], mid, TAG_RESOLVED, "recovered", opened, t)
        else:
            kept += tags[i : i + _TAG]
    if len(kept) != len(tags):
        c.tags = tuple(kept) or None


def apply_feedback(sh: Shard, c: CustomerState, fb: Feedback) -> None:
    """Move the tag of the moment a feedback record names (contacted → actioned, converted → resolved…)."""
    tags = c.tags
    if not tags:
        return
    for i in range(0, len(tags), _TAG):
        ridx, mid, opened = tags[i : i + 3]
        if mid != fb.moment_id:
            continue
        state, closes = TRANSITIONS[fb.outcome]
        if closes:
            c.tags = (tags[:i] + tags[i + _TAG:]) or None
        else:
            c.tags = (*tags[:i + 3], 1, *tags[i + _TAG:])
        # A feedback clock behind the moment's must not order the transition before the opening.
        sh.tag_row(fb.customer_id, sh.pack.rules[ridx], mid, state, fb.outcome, opened, max(fb.ts_ms, opened))
        return


# -- timers: derived from the state, one wake-up per customer ------------------------------------
def next_deadline(sh: Shard, c: CustomerState) -> int:
    """Return the earliest event time at which something of the customer is due.

    That is the earliest of: a pending abandonment (``last_ts + idle``), an attempt's expiry
    check (``expiry_from + attempt_timeout``), a held tag's TTL, and the eviction check
    (``last_seen + evict_after``). Deadlines that move later need no bookkeeping: a wake-up
    that finds nothing due just asks for the next one.
    """
    due = c.last_seen + sh.evict_after_ms
    timeout = sh.pack.attempt_timeout_ms
    for jidx, a in enumerate(c.attempts):
        if a is None:
            continue
        d = a.expiry_from + timeout
        if d < due:
            due = d
        r = sh.journey_defs[jidx].abandoned
        if r is not None and a.last_key:
            ab = abandoned.due_at(r, a)
            if ab is not None and ab < due:
                due = ab
    tags = c.tags
    if tags:
        rules = sh.pack.rules
        for i in range(0, len(tags), _TAG):
            d = tags[i + 2] + rules[tags[i]].ttl_ms
            if d < due:
                due = d
    return due


def on_wake(sh: Shard, c: CustomerState, cid: str, due: int) -> bool:
    """Handle everything of a customer that is due at ``due`` (its wake-up time), then re-arm it.

    Same-time deadlines run in a fixed order: tag TTLs, abandonments, attempt expiry checks, eviction.
    Each abandonment is decided on its own, as when each had its own timer.

    Args:
        sh: The shard.
        c: The customer's state.
        cid: The customer id.
        due: The wake-up time (the earliest deadline; the shard's clock is there).

    Returns:
        True when the customer should be evicted.
    """
    c.wake = 0  # moments fired below must not file wake-ups of their own: one is filed at the end
    rules = sh.pack.rules
    tags = c.tags
    if tags:
        kept: list[Any] = []
        for i in range(0, len(tags), _TAG):
            ridx, mid, opened = tags[i : i + 3]
            if opened + rules[ridx].ttl_ms <= due:
                sh.tag_row(cid, rules[ridx], mid, TAG_EXPIRED, "expired", opened, due)
            else:
                kept += tags[i : i + _TAG]
        if len(kept) != len(tags):
            c.tags = tuple(kept) or None
    defs = sh.journey_defs
    due_now: list[tuple[int, str, Attempt, MomentRule]] = []
    for jidx, a in enumerate(c.attempts):
        if a is not None and a.last_key:
            r2 = defs[jidx].abandoned
            if r2 is not None:
                ab = abandoned.due_at(r2, a)
                if ab is not None and ab <= due:
                    due_now.append((a.last_ts, a.last_eid, a, r2))
    if len(due_now) > 1:
        # Several journeys abandoned at the same instant: decided one by one in the order of the events
        # that left them at a key step, as their timers were armed.
        due_now.sort(key=lambda x: (x[0], x[1]))
    for _ts, _eid, a, r2 in due_now:
        sh.current_customer = cid
        _fire(sh, c, r2, a, None, (a.last_eid,), a.last_ts + r2.within_ms, a.last_step, anchor=a.last_eid)
        if sh.pending:
            decide(sh, c, cid)
    timeout = sh.pack.attempt_timeout_ms
    for jidx, a in enumerate(c.attempts):
        if a is not None and a.expiry_from + timeout <= due:
            _check_expiry(sh, c, cid, jidx, a, due)
    if c.last_seen + sh.evict_after_ms <= due:
        later = 0
        tags = c.tags
        if tags:
            later = max(tags[k + 2] + rules[tags[k]].ttl_ms for k in range(0, len(tags), _TAG))
        contact = c.contact
        if contact is not None:
            # Caps, gaps and the after-completion rule look back further than the detection rules.
            later = max(later, contact.needed_until(sh.pack.policy))
        if later < due:
            return True
        c.last_seen = later + 1 - sh.evict_after_ms  # check again just after the last of them
    c.wake = wake = next_deadline(sh, c)
    sh.file_wake(c, wake)
    return False


def _check_expiry(sh: Shard, c: CustomerState, cid: str, jidx: int, a: Attempt, due: int) -> None:
    """The attempt's expiry check (``due`` = ``expiry_from + attempt_timeout``)."""
    timeout = sh.pack.attempt_timeout_ms
    if not a.ended:
        if a.last_ts + timeout > due:
            a.expiry_from = a.last_ts  # events came meanwhile: check again a timeout after the latest
            return
        a.end(EXPIRED)
        sh.state_row(c, cid, jidx, a, due)
    # An ended attempt is kept only while a contact may still hand it off or its interest
    # windows still reach into the next attempt; timers fire before events of their time,
    # so the last moment it is needed at must have passed (due > keep) before it goes.
    keep = _ended_needed_until(sh.journey_defs[jidx], a)
    if keep < due:
        set_attempt(sh, c, jidx, None)
    else:
        a.expiry_from = keep + 1 - timeout


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


def tag_rank(state: str) -> int:
    """Order of tag states within one timestamp, for row versions."""
    return _TAG_RANK[state]
