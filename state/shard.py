"""A shard of customers with one event-time clock: the unit of state the dataflow keys on.

Events are buffered until the watermark passes them, then applied in (ts, event_id) order with timers
interleaved (a timer fires before events of the same time). In a replay that knows its input partitions the
watermark is the smallest, over the partitions not yet ended, of each partition's largest valid event time minus
the allowed lateness; otherwise (live, or no partitions given) it is the largest event time seen minus the
lateness. That makes detection independent of arrival order within the lateness, of how the input is
partitioned and read, and of how many workers run. Events below the watermark are applied at once and counted
as late.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable

from state.batches import RawBatch, Tick
from state.context import BatchContext
from state.customer import apply_event, straggler_of_ended
from state.deadlines import next_deadline, shed_oldest
from state.events import ORIGIN_BITS, Event, Invalid, InvalidReason, parse_event
from state.feedback import Feedback, parse_feedback
from state.firing import decide
from state.let_go import LetGo
from state.outputs import DEFAULT_DEAD_LETTER_MAX_BYTES, Outputs
from state.plan import JourneyPlan
from state.record import CustomerState, seen_before
from state.reorder import ReorderBuffer
from state.routing import ShardCountMismatchError, shard_of_id
from state.rules import RulePack
from state.snapshots import check_layout, dump, load
from state.tags import feedback_row
from state.urgent import urgent_lane
from state.versions import PackVersions, RuleLayout
from state.watermark import Watermark
from state.wheel import TimerWheel


def wall_ms() -> int:
    """Wall-clock epoch milliseconds."""
    return time.time_ns() // 1_000_000


class Shard(Watermark):
    """Customers of one shard, their timers and the shard's watermark.

    Args:
        pack: The rule pack.
        lateness_ms: Allowed lateness.
        live: Live mode: the wall clock also advances the watermark and far-future events are rejected.
        max_future_ms: In live mode, how far ahead of the wall clock an event may be.
        clock: Wall clock in epoch ms (injectable for tests).
        max_customers: Cap on tracked customers; the least recently seen are shed first.
        dead_letter_max_bytes: Original bytes a dead letter keeps (see ``dead_letter_record``).
        shards: Number of shards routing divides customers into (0: unknown, no routing check); an event
            whose parsed customer does not belong to the shard its batch was routed to is dead-lettered.
        partitions: The names of the input partitions whose ticks reach this shard (``Tick.partition``). Replay:
            the watermark follows the slowest partition not yet ended (see ``tick``), not the shard's own events;
            empty, it follows the largest event time seen. Live: the wall clock moves the watermark only once each
            has reported and none is behind (``Tick.behind``); a backlog is read in event time.
        urgent_lateness_ms: Live: the lateness of the urgent lane (``state.urgent``) for the rules whose latency
            target is below ``lateness_ms``; 0 turns it off. Ignored in replay.
        versions: A ``--rules`` directory's versions (``state.versions``; ``pack`` is the newest); None: ``pack``.
        keep_events: Hand each valid event read to the outputs (``Outputs.inputs``): stored to explain moments.
    """

    def __init__(
        self,
        pack: RulePack,
        *,
        lateness_ms: int = 30_000,
        live: bool = False,
        max_future_ms: int = 3_600_000,
        clock: Callable[[], int] = wall_ms,
        max_customers: int | None = None,
        key: str = "",
        feedback_sources: frozenset[str] = frozenset(),
        dead_letter_max_bytes: int = DEFAULT_DEAD_LETTER_MAX_BYTES,
        shards: int = 0,
        partitions: frozenset[str] = frozenset(),
        urgent_lateness_ms: int = 0,
        versions: PackVersions | None = None,
        keep_events: bool = False,
    ) -> None:
        self.key, self.keep_events = key, keep_events
        self.partitions = frozenset() if live else partitions
        # Live: partitions that must report before the wall clock counts, and those with input not yet read.
        self.unheard = set(partitions) if live else set()
        self.behind: set[str] = set()
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self.shards = shards
        self.feedback_sources = feedback_sources
        self.pack = pack
        self.lateness_ms = lateness_ms
        self.live = live
        self.max_future_ms = max_future_ms
        self.now_ms = clock
        self.max_customers = max_customers
        self.ctx = BatchContext(pack, key, clock, live, versions)  # the version in force; outputs, wake-ups
        self.types, self.types_vary = event_types(self.ctx.versions)
        # State (what snapshots carry).
        self.customers: dict[str, CustomerState] = {}
        self.held = ReorderBuffer()
        self.max_ts = 0
        self.wm = 0
        # Final ticks heard so far (partition -> its largest valid event time): the end-of-input flush limit.
        self.finals: dict[str, int] = {}
        # Replay: the largest valid event time each partition has reported (its ticks), for the watermark.
        self.part_max: dict[str, int] = {}
        # The restored watermark when the restore found other rules than the snapshot's run had (a version boundary).
        self.rules_changed_at: int | None = None
        self._states_at = 0
        self.state_interval_ms = 1_000
        # The in-order shortcut of ``advance`` (off: only the general loop, which tests compare it with).
        self.shortcut = True
        self.lane = urgent_lane(pack, self.ctx, lateness_ms, urgent_lateness_ms) if live else None
        # How a released event is applied: at once, or through the urgent lane. An attribute, not a method
        # replaced on the instance, which compiled classes do not allow.
        self._apply = self._apply_one
        if self.lane is not None:
            self.lane.attach(self.held, self.customers, self._apply_one, self._apply_late)
            self._apply = self.lane.apply
        # Set while a look-up waits for an event boundary (flows.shard_gate): called after the next event applied.
        # None the rest of the time: a test per event, no call.
        self.on_boundary: Callable[[], None] | None = None
        # Counts events parsed and applied and wake-ups handled, calling an interpreted function every few hundred
        # (``state.let_go``; flows sets it): an HTTP thread then waits for the GIL that long, not a whole batch.
        # None: a test per event.
        self.let_go: LetGo | None = None

    @property
    def out(self) -> Outputs:
        """The current batch's outputs."""
        return self.ctx.out

    @property
    def timers(self) -> list[tuple[int, str]]:
        """Pending wake-ups as (event time, customer id), earliest first: one per tracked customer."""
        return sorted((c.wake, cid) for cid, c in self.customers.items())

    # -- input ------------------------------------------------------------------------
    def feed(self, batch: RawBatch) -> None:
        """Parse a batch of raw messages into the buffer (invalid ones to the dead letters)."""
        for offset, error in batch.undecodable:
            # No bytes to keep: the client never had the message (raw empty, raw_len 0).
            self._dead(Invalid(InvalidReason.UNDECODABLE, error[:500], b""), batch, offset)
        if batch.source in self.feedback_sources:
            self.feed_feedback(batch)
            return
        types = self.types
        vary = self.types_vary  # versions with other event types: each event is checked against its own
        now = self.now_ms() if self.live else None
        held = self.held
        append = held.queue.append
        # Partitioned replay, and live during a backlog: the ticks alone move the watermark, so an event never does
        # (an unreachable lateness).
        ticked = bool(self.partitions or self.behind or self.unheard)
        lateness = 1 << 62 if ticked else self.lateness_ms
        max_ts = self.max_ts
        # The watermark as one-event-at-a-time processing would have it: lateness is judged per event, so it
        # does not depend on where batches begin and end.
        wm = max(self.wm, max_ts - lateness)
        offsets = batch.offsets
        shards = self.shards
        routed = batch.shard if shards else -1
        if routed >= shards > 0:
            raise ShardCountMismatchError(routed, shards)
        crc32 = zlib.crc32
        customers = self.customers
        # Live with the urgent lane, holding an event also indexes it (no cost per event otherwise).
        push = held.push if self.lane is None else self.lane.push
        if self.lane is not None:
            append = self.lane.append
            self.lane.source = batch.source
        # Each event's place in the input (Event.origin): copies of one id at one time keep input order.
        place = batch.partition << ORIGIN_BITS
        known = len(offsets) == len(batch.values)
        keep = self.ctx.out.inputs.append if self.keep_events else None
        for i, raw in enumerate(batch.values):
            self._count()
            ev = parse_event(raw, types=types, now_ms=now, max_future_ms=self.max_future_ms,
                             origin=place + offsets[i] if known else -1)
            if type(ev) is not Event or (vary and ev.type not in self.ctx.pack_at(ev.ts_ms).types):
                if type(ev) is Event:  # a type of another version only: not accepted before (or after) that one
                    ev = Invalid(InvalidReason.UNKNOWN_TYPE, "type is not an event type of the rule pack version "
                                 "in force at its ts", raw, "type")
                assert isinstance(ev, Invalid)
                self._dead(ev, batch, offsets[i] if i < len(offsets) else -1)
                continue
            if routed >= 0:
                cid = ev.customer_id
                # A crafted message routed by a decoy id must not reach the state of the customer it names, which
                # lives on another shard. A customer this shard holds came from a checked event (same id, same
                # shard count), so only new ones need shard_of_id (inlined): a dict look-up is cheaper than a crc.
                if cid not in customers and crc32(cid.encode("utf-8", "surrogatepass")) % shards != routed:
                    self._misrouted(raw, batch, offsets[i] if i < len(offsets) else -1)
                    continue
            keep(ev) if keep is not None else None  # one append: the stored rows are the Event tuples themselves
            ts = ev.ts_ms
            if ts < wm:
                # Rare: bring the state to where per-event processing would have it, then apply the straggler.
                self.max_ts = max_ts
                self.advance(wm)
                if self._apply_late(ev):  # a copy of an event already seen is a dead letter, not late
                    self.ctx.late(ev, wm, batch.source, batch.partition, offsets[i] if i < len(offsets) else -1)
                continue
            if ts > max_ts:
                max_ts = ts
                if ts - lateness > wm:
                    wm = ts - lateness
                append(ev)
                continue
            push(ev)
        self.max_ts = max_ts
        if not ticked:
            self.advance(max_ts - lateness)

    def feed_feedback(self, batch: RawBatch) -> None:
        """Apply feedback records to the tags they name (at once: feedback is not event-time ordered).

        A record whose parsed customer does not belong to the shard routing chose is dead-lettered
        (``routing_mismatch``), as events are: here it would find no customer and silently do nothing.
        """
        routed = batch.shard if self.shards else -1
        for i, raw in enumerate(batch.values):
            fb = parse_feedback(raw)
            offset = batch.offsets[i] if i < len(batch.offsets) else -1
            if type(fb) is not Feedback:
                self._dead(fb, batch, offset)  # type: ignore[arg-type]
            elif routed >= 0 and shard_of_id(fb.customer_id, self.shards) != routed:
                self._misrouted(raw, batch, offset)
            else:
                feedback_row(self.ctx, self.customers.get(fb.customer_id), fb)

    def _misrouted(self, raw: bytes, batch: RawBatch, offset: int) -> None:
        inv = Invalid(InvalidReason.ROUTING_MISMATCH, f"customer_id parsed does not belong to shard {batch.shard} "
                      f"of {self.shards} that routing chose (escaped or duplicate keys?)", raw, "customer_id")
        self._dead(inv, batch, offset)

    def _dead(self, inv: Invalid, batch: RawBatch, offset: int) -> None:
        self.ctx.out.reject(inv, batch.source, batch.partition, offset, self.now_ms(), self.dead_letter_max_bytes)

    def _apply_one(self, ev: Event) -> None:
        # Events are counted when applied, after de-duplication, so counters only ever grow.
        ctx = self.ctx
        counts = ctx.out.events
        key = (ev.channel, ev.type)
        cid = ev.customer_id
        c = self.customers.get(cid)
        if c is None:
            if self.max_customers is not None and len(self.customers) >= self.max_customers:
                shed_oldest(ctx, self.customers)
            c = CustomerState(ctx.no_attempts, ev.ts_ms, cid)
            self.customers[cid] = c
            c.wake = due = ev.ts_ms + ctx.evict_after_ms
            ctx.wheel.file(cid, due)
            seen_before(c, ev)
        elif seen_before(c, ev):
            self._dup(ev)
            return
        elif self.max_customers is not None:
            # Keep the map in order of last sighting, so that shedding drops the least recently seen.
            del self.customers[cid]
            self.customers[c.cid] = c
        counts[key] = counts.get(key, 0) + 1
        if not ctx.switch_lo <= (t := ev.ts_ms) < ctx.switch_hi:
            ctx.use_at(t)  # each event is handled by the version in force at its time (``state.versions``)
        ctx.event_now = t
        apply_event(ctx, c, ev)
        if ctx.pending:
            decide(ctx, c, cid)
        if self.on_boundary is not None:
            self.on_boundary()
        self._count()

    def _count(self) -> None:
        let_go = self.let_go
        if let_go is not None:
            let_go.count()

    def _apply_late(self, ev: Event) -> bool:
        # A straggler of an attempt that ended since is left out (applied, it would open a new attempt whose rules
        # fire twice for one attempt), but it is a valid event that was read: de-duplicated and counted all the same.
        # Returns False when it was a copy of an event already seen (then a dead letter, not a late event).
        c = self.customers.get(ev.customer_id)
        if c is None or not straggler_of_ended(self.ctx, c, ev):
            dead = len(self.ctx.out.dead)
            self._apply(ev)
            return len(self.ctx.out.dead) == dead
        if seen_before(c, ev):
            self._dup(ev)
            return False
        counts = self.ctx.out.events
        key = (ev.channel, ev.type)
        counts[key] = counts.get(key, 0) + 1
        return True

    def _dup(self, ev: Event) -> None:
        # raw is the event id (≤128 characters), so raw_len and raw_sha256 describe what the record holds.
        inv = Invalid(InvalidReason.DUPLICATE, "event_id was already seen for this customer", ev.event_id.encode(),
                      "event_id")
        self.ctx.out.reject(inv, "dedup", -1, -1, self.now_ms(), self.dead_letter_max_bytes)

    # -- batch boundary ---------------------------------------------------------------
    def take_outputs(self, states: bool | None = None) -> Outputs:
        """Return this batch's outputs and start a new batch.

        Journey state rows are coalesced: changed attempts are written at most
        every ``state_interval_s`` of wall time (and whenever ``states`` is True,
        e.g. at the end of input), since only the latest version matters.

        Args:
            states: Force (True) or hold back (False) the coalesced journey state rows.
        """
        ctx = self.ctx
        out = ctx.out
        now = self.now_ms()
        if states is None:
            states = now - self._states_at >= self.state_interval_ms
        if states and ctx.dirty:
            for (cid, jidx), (c, changed) in ctx.dirty.items():
                a = c.attempts[jidx]
                if a is not None:
                    out.states.append(ctx.state_record(cid, jidx, a, changed))
            ctx.dirty = {}
            self._states_at = now
        out.customers = len(self.customers)
        ctx.take_groups_dropped(out)
        out.watermark_ms = self.wm
        out.max_ts_ms = self.max_ts
        ctx.out = Outputs(self.key)
        return out

    # -- snapshots --------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Return the shard's state as bytes (a consistent copy; safe to mutate the shard afterwards).

        Events the urgent lane applied ahead of the watermark are in the customers' state already, so they are
        left out of the held events (a restore must not apply them twice).
        """
        held = self.held if self.lane is None else self.lane.unapplied()
        return dump(self.pack, self.customers, held, self.max_ts, self.wm, self.ctx.dirty, self.finals,
                    self.part_max, self.ctx.versions.fingerprint(), self.ctx.versions.layout)

    def restore(self, blob: bytes) -> None:
        """Load a snapshot taken by ``snapshot`` (or by format 4, upgraded).

        Raises:
            ValueError: when it was taken with a rule pack of another layout (rules added, removed or reordered,
                journeys or generic rules changed; parameters may change), or in a format that cannot be upgraded.
        """
        ctx = self.ctx

        def rebase(saved: RuleLayout, wm: int) -> tuple[list[JourneyPlan], bool]:
            # The rules of the snapshot keep their places; rules added since are laid out after them. Other rules
            # than the snapshot's run had are a version boundary at its watermark (``PackVersions.restarted``).
            versions = check_layout(saved, ctx.versions).restarted(saved, wm)
            if versions.layout.since != saved.since:
                self.rules_changed_at = wm
            moved = versions is not ctx.versions
            if moved:
                ctx.set_versions(versions, 0)
            return ctx.journey_defs, moved

        (self.customers, self.held, self.max_ts, self.wm, dirty, self.finals,
         self.part_max, retuned) = load(blob, self.pack, ctx.journey_defs, self.ctx.versions.fingerprint(), rebase)
        ctx.dirty = dirty
        wheel = ctx.wheel = TimerWheel()
        for cid, c in self.customers.items():
            if retuned:
                # New parameters move deadlines (an idle time, a tag's TTL): each customer wakes at its new earliest.
                c.wake = next_deadline(ctx, c)
            wheel.file(cid, c.wake)
        if self.lane is not None:
            self.lane.attach(self.held, self.customers)


def process(shard: Shard, items: Iterable[RawBatch | Tick]) -> Outputs:
    """Feed a batch of shard items and return the outputs (the flow's single call per batch)."""
    final = False
    for item in items:
        if type(item) is RawBatch:
            shard.feed(item)
        else:
            shard.tick(item)  # type: ignore[arg-type]
            final = final or item.final  # type: ignore[union-attr]
    return shard.take_outputs(states=True if final else None)


def event_types(versions: PackVersions) -> tuple[frozenset[str], bool]:
    """The event types of every version in force, and whether those versions differ in them (then each event is
    checked against the types of the version in force at its ts)."""
    every: frozenset[str] = frozenset().union(*(p.types for p in versions.in_force))
    return every, any(p.types != every for p in versions.in_force)
