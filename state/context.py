"""What customer-level code works with while a shard applies a batch: the ``BatchContext``.

It holds the rule pack resolved for the hot path, the batch's outputs, the moments awaiting their
contact-policy decision, the journey state rows to write, and the wake-up scheduling. The shard owns
one and hands it to ``state.customer``, ``state.deadlines`` and ``state.tags``, which never see the
shard itself (so state/ has no import cycle).
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any, Final

from state.detectors.base import Detector
from state.events import Event
from state.generic.base import GenericRule
from state.journey import ACTIVE, Attempt, add_trail
from state.outputs import Outputs
from state.plan import JourneyPlan
from state.record import CustomerState
from state.rule_model import STAGES, MomentRule, RulePack
from state.version_gaps import NEVER
from state.versions import PackVersions
from state.wheel import TimerWheel

_STATUS_RANK: Final = {"active": 0, "completed": 1, "expired": 2}
_CANON_MAX: Final = 10_000  # distinct strings and paths shared; more are kept as they come


class BatchContext:
    """The rule pack as the hot path reads it, and a batch's outputs, pending decisions and scheduling.

    Args:
        pack: The rule pack.
        key: The shard's key (stamped on its outputs).
        clock: Wall clock in epoch ms.
        live: Live mode (staleness of decisions is judged by the wall clock).
    """

    def __init__(self, pack: RulePack, key: str, clock: Callable[[], int], live: bool,
                 versions: PackVersions | None = None) -> None:
        self.key = key
        self.now_ms = clock
        self.live = live
        # The versions of the pack (``state.versions``): the attributes below are the version in force at the
        # event time being applied; ``use_at`` switches them when an event or wake-up lies outside
        # [switch_lo, switch_hi). One version: the bounds are never crossed.
        self.set_versions(versions if versions is not None else PackVersions.of([pack]), 0)
        self.journey_index = {jd.id: i for i, jd in enumerate(self.journey_defs)}  # the same in every version
        self._reached_names: list[dict[int, tuple[str, ...]]] = [{} for _ in self.journey_defs]
        self.vocab: dict[str, str] = {}
        self._paths: dict[tuple[str, ...], tuple[str, ...]] = {}
        for jd in pack.journeys.values():
            for s in jd.steps:
                self.vocab[s] = s
        # Customers without any attempt share this.
        self.no_attempts: tuple[None, ...] = (None,) * len(self.journey_defs)
        self.wheel = TimerWheel()
        self.out = Outputs(key)
        self.current_customer = ""
        # Moments fired by the current event or timer, awaiting their contact-policy decision.
        self.pending: list[tuple[MomentRule, dict[str, Any], int]] = []
        self.event_now = 0  # event time of the event or timer being applied
        # (customer, journey) -> (state, event time of its latest change): the row's version must grow with
        # every change, including those made by timers, which do not move the attempt's last event time.
        self.dirty: dict[tuple[str, int], tuple[CustomerState, int]] = {}

    def set_versions(self, versions: PackVersions, now: int) -> None:
        """Compile ``versions`` (laid out alike, ``state.versions.RuleLayout``) and use the one in force at ``now``."""
        self.versions = versions
        self.single = versions.single
        lay = versions.layout
        kinds = dict(lay.kinds)
        defined: dict[int, GenericRule] = {}
        for p in versions.packs:
            for r in p.rules:
                if r.generic is not None:
                    defined.setdefault(r.index, r.generic)
        # Each version's own generic rules in their places (a place only defined by others keeps theirs, inactive):
        # with the first version's objects in every version, a later version's rules were never active.
        self._compiled = [_compile(p, kinds, self._generic_places(p, kinds, defined)) for p in versions.in_force]
        # Version -> place -> its rule (``MomentRule.index`` is the rule's place in the layout, not in its pack).
        self._places = {p.version: {r.index: r for r in p.rules} for p in versions.packs}
        self.use(versions.at(now))
        self._names_of(versions)
        # Idle for longer than the horizon: rule windows are inclusive, so an event exactly
        # horizon_ms after the customer's last one must still meet the state (under any version).
        self.evict_after_ms = max(p.horizon_ms for p in versions.packs) + 1

    def _generic_places(self, p: RulePack, kinds: dict[str, Any],
                        defined: dict[int, GenericRule]) -> dict[str, tuple[GenericRule | None, ...]]:
        own = {r.index: r.generic for r in p.rules if r.generic is not None}
        lay = self.versions.layout
        return {jid: tuple(own.get(i, defined.get(i)) for i in lay.generic_places(jid)) for jid in kinds}

    def _names_of(self, versions: PackVersions) -> None:
        """The (name, bit in ``Attempt.fired``) of every rule of the layout, per journey, for the state rows."""
        lay = versions.layout
        self.fired_names: list[list[tuple[str, int]]] = [
            [(r[0], lay.bit(i)) for i, r in enumerate(lay.rules) if r[2] == jd.id] for jd in self.journey_defs]
        self._fired_names: list[dict[int, tuple[str, ...]]] = [{} for _ in self.journey_defs]

    def in_force_over(self, armed: int, due: int, place: int) -> bool:
        """Whether the rule at ``place`` was in force at every event time from ``armed`` to ``due``: a timer armed
        before the rule's removal does not fire, even when a later version adds the rule back before it falls due."""
        starts, ends = self.versions.absent[place]
        i = bisect_right(ends, armed)  # the first gap that ends after the arming
        return i == len(ends) or starts[i] > due

    def rule_at(self, t: int, place: int) -> MomentRule | None:
        """The rule at ``place`` as the version in force at event time ``t`` defines it (None: it has none)."""
        # The version in force as compiled (before a restart's boundary, with the eras' rules): rare, a timer firing.
        return next((r for r in self._compiled[self.versions.at(t)][0].rules if r.index == place), None)

    def use(self, i: int) -> None:
        """Make version ``i`` of ``versions.in_force`` the one the hot path reads."""
        (self.pack, self.journey_defs, self.contacts, self.attempt_timeout_ms, self.trails,
         self.recent_from) = self._compiled[i]
        v = self.versions
        self.switch_lo = v.starts[i] if i else -NEVER
        self.switch_hi = v.starts[i + 1] if i + 1 < len(v.starts) else NEVER

    def use_at(self, t: int) -> None:
        """Switch to the version in force at event time ``t`` (the shard calls it when ``t`` leaves the bounds)."""
        self.use(self.versions.at(t))

    def defs_at(self, t: int) -> list[JourneyPlan]:
        """The compiled journeys of the version in force at event time ``t``: a timer armed at ``t`` keeps them."""
        if self.single:
            return self.journey_defs
        return self._compiled[self.versions.at(t)][1]

    def rules_at(self, t: int) -> tuple[MomentRule, ...]:
        """The rules of the version in force at event time ``t`` (a tag opened at ``t`` keeps its TTL)."""
        if self.single:
            return self.pack.rules
        return self._compiled[self.versions.at(t)][0].rules

    def tag_rule(self, key: int, opened: int) -> MomentRule:
        """The rule of a held tag (its key: rule index, and in a directory of versions the version it fired under,
        ``state.firing.fire``): the tag keeps that version's TTL; a version no longer known, that of ``opened``."""
        if self.single:
            return self.pack.rules[key & 0xFF]
        place = key & 0xFF
        rules = self._places.get(key >> 8)
        r = rules.get(place) if rules is not None else None
        if r is None:
            r = self._places[self.pack_at(opened).version].get(place)
        return r if r is not None else self.versions.layout.ghost(place)

    def pack_at(self, t: int) -> RulePack:
        """The version in force at event time ``t``."""
        return self.versions.pack_at(t)

    def take_groups_dropped(self, out: Outputs) -> None:
        """Move the generic rules' dropped-group counts (kept on the compiled rules) into ``out``."""
        for compiled in self._compiled:
            for jp in compiled[1]:
                if jp.generic is not None:
                    jp.generic.take_dropped(out.groups_dropped)

    def canon(self, s: str) -> str:
        """Return one shared string object per distinct value, so attempts do not pin copies."""
        v = self.vocab.get(s)
        if v is None:
            if len(self.vocab) < _CANON_MAX:
                self.vocab[s] = s
            return s
        return v

    def canon_steps(self, steps: tuple[str, ...]) -> tuple[str, ...]:
        """Return one shared tuple per distinct recent-steps path: most customers walk the same few."""
        v = self._paths.get(steps)
        if v is None:
            if len(self._paths) < _CANON_MAX:
                self._paths[steps] = steps
            return steps
        return v

    def schedule(self, c: CustomerState, due: int) -> None:
        """Make sure the customer wakes up by ``due`` (a deadline its state now implies)."""
        if due < c.wake:
            c.wake = due
            self.wheel.file(c.cid, due)

    def file_wake(self, c: CustomerState, due: int | None = None) -> None:
        """File the customer's wake-up at ``c.wake`` (``due`` if the caller has it decoded already)."""
        self.wheel.file(c.cid, c.wake if due is None else due)

    def decision_clock(self) -> int:
        """The clock staleness is judged by: the wall clock live; in replay the event time being processed.

        Replay re-enacts what a live worker would have done at the time, and stays deterministic
        whatever the batching; a live worker catching up on a backlog sees how late it is.
        """
        return self.now_ms() if self.live else self.event_now

    def mark_dirty(self, c: CustomerState, cid: str, jidx: int) -> None:
        """Note that a journey state row must be written at the end of the batch."""
        t = self.event_now
        k = (cid, jidx)
        prev = self.dirty.get(k)
        if prev is not None and prev[1] > t:
            t = prev[1]
        self.dirty[k] = (c, t)

    def write_marked(self, cid: str) -> None:
        """Write now the customer's journey state rows marked for the batch's end (it leaves the shard).

        A marked row names the record it was marked on: left marked, the customer's next record (seen again in
        the same interval) found its own mark taken, and the row written was the old record's.
        """
        for jidx in range(len(self.journey_defs)):
            marked = self.dirty.pop((cid, jidx), None)
            if marked is not None:
                c, changed = marked
                a = c.attempts[jidx]
                if a is not None:
                    self.out.states.append(self.state_record(cid, jidx, a, changed))

    def state_row(self, c: CustomerState, cid: str, jidx: int, a: Attempt, ts: int) -> None:
        """Emit a journey state row now (attempt ended)."""
        self.dirty.pop((cid, jidx), None)
        self.out.states.append(self.state_record(cid, jidx, a, ts))

    def state_record(self, cid: str, jidx: int, a: Attempt, ts: int) -> dict[str, Any]:
        """The journey state row of an attempt, versioned by ``ts``."""
        jd = self.journey_defs[jidx]
        status = a.ended or ACTIVE
        # The names of the steps reached and of the rules fired, by bit mask: a journey has few distinct masks,
        # and a row is written for every journey's latest event.
        reached = self._reached_names[jidx].get(a.reached)
        if reached is None:
            reached = _names(self._reached_names[jidx], a.reached, [(s, 1 << i) for i, s in enumerate(jd.steps)])
        fired = self._fired_names[jidx].get(a.fired)
        if fired is None:
            fired = _names(self._fired_names[jidx], a.fired, self.fired_names[jidx])
        return {
            "schema": 1,
            "customer_id": cid,
            "journey": jd.id,
            "attempt_id": a.attempt_id,
            "status": status,
            "stage": STAGES[a.stage],
            "last_step": a.last_step or "",
            "last_ts": a.last_ts,
            "steps_reached": list(reached),
            "fired": list(fired),
            "version": max(ts, a.last_ts) * 4 + _STATUS_RANK[status],
        }

    def late(self, ev: Event, watermark: int, source: str, partition: int, offset: int) -> None:
        """Count and record an event that arrived behind the watermark (the shard applies it all the same).

        Args:
            ev: The event.
            watermark: The watermark it is behind (event time, epoch ms).
            source: Input name, e.g. ``kafka:cx.events``.
            partition: Source partition.
            offset: Position in the partition (-1: unknown).
        """
        out = self.out
        out.late += 1
        out.late_events.append(
            {
                "schema": 1,
                "event_id": ev.event_id,
                "customer_id": ev.customer_id,
                "channel": ev.channel,
                "type": ev.type,
                "ts": ev.ts_ms,
                "watermark": watermark,
                "late_ms": watermark - ev.ts_ms,
                "source": source,
                "partition": partition,
                "offset": offset,
                "received_at": self.now_ms(),
            }
        )

    def step_row(self, cid: str, journey: str, a: Attempt, step: str, idx: int, ev: Event) -> None:
        """Emit a journey step row (first arrival at a step in an attempt), noting it in the attempt's trail."""
        if journey in self.trails:
            add_trail(a, ev.ts_ms, step, ev.entry or "", None, "")
        # A tuple in ``STEP_FIELDS`` order: a dict only for a sink that writes step rows (``Outputs.records``).
        self.out.step_rows.append((cid, journey, a.attempt_id, step, idx, ev.entry or "", ev.channel, ev.event_id,
                               ev.ts_ms))


_Compiled = tuple[RulePack, list[JourneyPlan], dict[str, tuple[tuple[int, Detector], ...]], int, frozenset[str], int]


def _compile(pack: RulePack, kinds: dict[str, tuple[str, ...]],
             generic_all: dict[str, tuple[GenericRule | None, ...]]) -> _Compiled:
    """What the hot path reads of one version: its journeys compiled (with the state slots of every version's rules),
    the contact detectors, a few settings."""
    journey_defs = [
        JourneyPlan(jd, pack.by_journey[jd.id], pack.path,
                    tuple(r for r in pack.rules if r.generic is not None and r.journey == jd.id),
                    kinds.get(jd.id), generic_all.get(jd.id))
        for jd in pack.journeys.values()
    ]
    journey_index = {jd.id: i for i, jd in enumerate(journey_defs)}
    # Event type -> the customer-level detectors (hand-offs) a contact of that type may fire, in pack order.
    contacts: dict[str, list[tuple[int, Detector]]] = {}
    for r in pack.rules:
        if r.generic is not None:
            continue
        jidx = journey_index[r.journey]
        d = journey_defs[jidx].by_kind[r.kind]
        if d.CONTACT:
            contacts.setdefault(r.type, []).append((jidx, d))
    recent_steps = max((r.recent_steps for r in pack.rules if r.kind == "handoff"), default=5)
    # Where the kept part of an attempt's recent steps starts when a step is added (none kept for 1).
    recent_from = 1 - recent_steps if recent_steps > 1 else 1 << 30
    # Journeys whose attempts keep a trail (step times, failures) for a hand-off's agent context.
    trails = frozenset(r.journey for r in pack.rules if r.kind == "handoff")
    return (pack, journey_defs, {t: tuple(v) for t, v in contacts.items()}, pack.attempt_timeout_ms, trails,
            recent_from)


def _names(cache: dict[int, tuple[str, ...]], mask: int, bits: list[tuple[str, int]]) -> tuple[str, ...]:
    """The names whose bit is set in ``mask``, kept in ``cache`` (up to a bound)."""
    names = tuple(dict.fromkeys(name for name, bit in bits if mask & bit))  # a redefined rule: one name, two bits
    if len(cache) < _CANON_MAX:
        cache[mask] = names
    return names
