"""Live only: urgent moments within their latency target, though the watermark waits for the lateness.

DESIGN §4: in live mode a rule's latency target wins over the lateness. P1 targets are seconds (10 s in the
default pack), the lateness is 30 s. So an event that could fire an event-anchored urgent rule (a payment
``fail``, a call-centre ``contact``) does not wait for the watermark. Once the *urgent* watermark passes it,
the shard applies that customer's held events up to and including it, with the customer's wake-ups due
by then, in the usual (ts, event_id) order. The urgent watermark is the largest event time (or the wall
clock) minus the urgent lateness, by default half the smallest target below the lateness: 5 s.

Customers are independent, so this gives exactly the replay's result for that customer unless one of
its events arrives more than the urgent lateness out of order behind an early-applied one. Such an
event is applied at once as a late event (state updated, no retraction) and counted as ``reordered``:
the one case in which live and replay may differ. Replay never uses this lane.
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final, NoReturn

from state.context import BatchContext
from state.deadlines import on_wake
from state.events import ORIGIN_BITS, Event
from state.plan import JourneyPlan
from state.record import CustomerState
from state.reorder import ReorderBuffer
from state.rule_model import RulePack

_ANY: Final = "*"
_POSITION: Final = (1 << ORIGIN_BITS) - 1


def _nothing(_ev: Event) -> NoReturn:
    raise AssertionError("the urgent lane was not attached to its shard")


def urgent_urgencies(pack: RulePack, lateness_ms: int) -> frozenset[str]:
    """The urgencies whose latency target is shorter than the lateness (they cannot wait for the watermark)."""
    return frozenset(u for u, ms in pack.latency_targets_ms.items() if ms < lateness_ms)


def default_urgent_lateness(pack: RulePack, lateness_ms: int) -> int:
    """Half the smallest latency target below the lateness; 0 (no urgent lane) when there is none."""
    targets = [ms for ms in pack.latency_targets_ms.values() if ms < lateness_ms]
    return min(targets) // 2 if targets else 0


def trigger_types(plans: Iterable[JourneyPlan], urgencies: frozenset[str]) -> dict[str, frozenset[str]]:
    """Event type -> the journeys in which it may fire an event-anchored rule of these urgencies.

    ``*`` as a type stands for every type of that journey (a detector that sees every event or every
    key-step event, or a generic rule); ``*`` as a journey for contacts, which fire hand-offs in any journey.
    """
    out: dict[str, set[str]] = {}
    for jp in plans:
        for d in jp.detectors:
            r = d.rule
            if r.urgency not in urgencies or d.TIMED:
                continue
            if d.CONTACT:
                out.setdefault(r.type, set()).add(_ANY)
            if d.TYPES is None or d.ON_KEY_STEP:
                out.setdefault(_ANY, set()).add(jp.id)
            elif d.TYPES:
                for t in d.TYPES:
                    out.setdefault(t, set()).add(jp.id)
        if any(name for name, r in jp.generic_rules.items() if r.urgency in urgencies):
            out.setdefault(_ANY, set()).add(jp.id)
    return {t: frozenset(js) for t, js in out.items()}


def urgent_lane(pack: RulePack, ctx: BatchContext, lateness_ms: int, urgent_lateness_ms: int) -> UrgentLane | None:
    """The lane of a live shard, or None when no rule needs it (or it is off: 0, or not below the lateness)."""
    urgent = urgent_urgencies(pack, lateness_ms)
    if not urgent or not 0 < urgent_lateness_ms < lateness_ms:
        return None
    triggers = trigger_types(ctx.journey_defs, urgent)
    return UrgentLane(triggers, urgent_lateness_ms, ctx) if triggers else None


def _key(ev: Event) -> tuple[int, str, int]:
    return ev.ts_ms, ev.event_id, ev.origin  # the reorder buffer's order (state.reorder)


class UrgentLane:
    """The held events indexed by customer, the urgent candidates, and what was applied ahead of the watermark.

    It works on the shard's reorder buffer, customers and batch context (``attach``), in its place: the shard
    holds events through ``append``/``push`` and releases them through ``apply``.

    Args:
        triggers: See ``trigger_types``.
        lateness_ms: The urgent lateness.
        ctx: The shard's batch context.
    """

    def __init__(self, triggers: dict[str, frozenset[str]], lateness_ms: int, ctx: BatchContext) -> None:
        self.ctx = ctx
        self._held_buf = ReorderBuffer()
        self._customers: dict[str, CustomerState] = {}
        self._apply_now: Callable[[Event], None] = _nothing
        self._apply_late: Callable[[Event], bool] = _nothing
        self.triggers = triggers
        self._every = triggers.get(_ANY, frozenset())
        self.lateness_ms = lateness_ms
        self.held: dict[str, list[Event]] = {}  # customer -> held events in (ts, event_id) order
        self.candidates: list[tuple[int, str, int, int, Event]] = []  # heap by (ts, event_id, origin, arrival)
        self.applied: set[int] = set()  # ids of held events applied ahead of the watermark
        self.frontier: dict[str, tuple[int, str, int]] = {}  # customer -> the key applied up to, ahead of it
        self._seq = 0
        self.source = ""  # the input of the batch being fed (its late records name it)
        self.early = 0  # events applied ahead of the watermark (counters: the shard moves them to its outputs)
        self.reordered = 0

    def attach(self, held: ReorderBuffer, customers: dict[str, CustomerState],
               apply: Callable[[Event], None] | None = None, apply_late: Callable[[Event], bool] | None = None) -> None:
        """Work on the shard's (new, after a restore) buffer and customers; index the events it holds."""
        self._held_buf = held
        self._customers = customers
        if apply is not None:
            self._apply_now = apply  # the shard's own apply: dedup, detection, decisions
        if apply_late is not None:
            self._apply_late = apply_late  # the same for a straggler (one of an ended attempt is only counted)
        self.rebuild([*held.queue, *(h[-1] for h in held.heap)])

    def append(self, ev: Event) -> None:
        """Hold an in-order arrival (the shard's buffer, and this index)."""
        self.hold(ev)
        self._held_buf.queue.append(ev)

    def push(self, ev: Event) -> None:
        """Hold a straggler; one behind its customer's early application is applied at once, as late."""
        f = self.frontier.get(ev.customer_id)
        if f is not None and _key(ev) < f:
            # Never an in-order arrival: the customer's frontier is an event time seen already. Recorded as late
            # behind that frontier (its place in the input is in ``origin``), as one behind the watermark is.
            if self._apply_late(ev):  # a copy of an event already seen is a dead letter, neither late nor reordered
                origin = ev.origin
                self.ctx.late(ev, f[0], self.source, origin >> ORIGIN_BITS if origin >= 0 else -1,
                              origin & _POSITION if origin >= 0 else -1)
                self.reordered += 1
            return
        self.hold(ev)
        self._held_buf.push(ev)

    def apply(self, ev: Event) -> None:
        """The watermark released a held event: apply it unless the lane did already."""
        if not self.take(ev):
            self._apply_now(ev)

    def run(self, clock: int, wm: int) -> None:
        """Release what the urgent watermark (``clock`` minus the urgent lateness) passed; count it in the outputs.

        Args:
            clock: The largest event time seen, or the wall clock if later.
            wm: The shard's watermark.
        """
        self.release(clock - self.lateness_ms, wm, self._apply_now, self._wake_until)
        self.forget_before(wm)
        out = self.ctx.out
        out.urgent_early += self.early
        out.urgent_reordered += self.reordered
        self.early = self.reordered = 0

    def unapplied(self) -> ReorderBuffer:
        """The held events but those the lane applied (they are in the state: a snapshot leaves them out)."""
        held, skip = self._held_buf, self.applied
        if not skip:
            return held
        heap = [h for h in held.heap if id(h[-1]) not in skip]
        heapq.heapify(heap)
        return ReorderBuffer(deque(e for e in held.queue if id(e) not in skip), heap, held.seq)

    def _wake_until(self, cid: str, t: int) -> None:
        # One customer's wake-ups due at or before t, ahead of the other customers'.
        customers, ctx = self._customers, self.ctx
        c = customers.get(cid)
        while c is not None and 0 < c.wake <= t:
            due = c.wake
            ctx.event_now = due
            if on_wake(ctx, c, cid, due):
                del customers[cid]
                ctx.out.evicted += 1
                ctx.write_marked(cid)  # as state.release does
                return
            if c.wake == due:
                return  # nothing moved it: never spin

    def is_trigger(self, ev: Event) -> bool:
        """Whether the event may fire an urgent rule."""
        js = self.triggers.get(ev.type)
        if js is not None and (_ANY in js or ev.journey in js):
            return True
        return ev.journey in self._every

    def behind(self, ev: Event) -> bool:
        """Whether the event's customer was applied ahead of the watermark past this event's place."""
        f = self.frontier.get(ev.customer_id)
        return f is not None and _key(ev) < f

    def hold(self, ev: Event) -> None:
        """Index an event the shard holds for the watermark."""
        lst = self.held.get(ev.customer_id)
        if lst is None:
            self.held[ev.customer_id] = [ev]
        elif _key(ev) >= _key(lst[-1]):
            lst.append(ev)
        else:
            insort(lst, ev, key=_key)
        if self.is_trigger(ev):
            self._seq += 1
            heapq.heappush(self.candidates, (ev.ts_ms, ev.event_id, ev.origin, self._seq, ev))

    def take(self, ev: Event) -> bool:
        """The watermark reached a held event: True when it was applied already (skip it)."""
        i = id(ev)
        if i in self.applied:
            self.applied.discard(i)
            return True
        lst = self.held.get(ev.customer_id)
        if lst:
            if lst[0] is ev:
                del lst[0]
            else:  # not expected (the order is the same), but never leave a stale entry
                for k, e in enumerate(lst):
                    if e is ev:
                        del lst[k]
                        break
            if not lst:
                del self.held[ev.customer_id]
        return False

    def release(self, urgent_wm: int, wm: int, apply: Callable[[Event], None],
                wake_until: Callable[[str, int], None]) -> None:
        """Apply, customer by customer, the held events up to each urgent candidate the urgent watermark passed.

        Args:
            urgent_wm: The urgent watermark.
            wm: The shard's watermark (candidates below it were applied in order already).
            apply: Applies one event to its customer (dedup, detection, decisions).
            wake_until: Fires a customer's wake-ups due at or before a time.
        """
        cands = self.candidates
        while cands and cands[0][0] < urgent_wm:
            t = heapq.heappop(cands)[-1]
            if t.ts_ms < wm or id(t) in self.applied:
                continue
            cid = t.customer_id
            lst = self.held.get(cid)
            if not lst:
                continue
            upto = _key(t)
            n = 0
            while n < len(lst) and _key(lst[n]) <= upto:
                e = lst[n]
                wake_until(cid, e.ts_ms)
                self.applied.add(id(e))
                apply(e)
                n += 1
            del lst[:n]
            if not lst:
                del self.held[cid]
            self.early += n
            f = self.frontier.get(cid)
            if f is None or upto > f:
                self.frontier[cid] = upto

    def forget_before(self, wm: int) -> None:
        """Drop frontiers the watermark has passed: from there on the usual late rule covers those customers."""
        if self.frontier:
            for cid in [c for c, f in self.frontier.items() if f[0] < wm]:
                del self.frontier[cid]

    def rebuild(self, events: Iterable[Event]) -> None:
        """Index the held events of a restored shard (applied-ahead marks are not kept: see ``Shard.snapshot``)."""
        self.held.clear()
        self.candidates.clear()
        self.applied.clear()
        for ev in sorted(events, key=_key):
            self.hold(ev)
