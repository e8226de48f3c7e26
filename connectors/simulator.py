"""Seedable multi-channel traffic for the default rule pack, with its exact ground truth.

Each simulated customer follows one scripted scenario (happy completion,
abandonment, a failure then recovery, repeated failures, a maze of entry
points, a channel hop, a call-centre contact mid-journey, campaign interest,
plain browsing, or a deliberate rule-boundary case) plus journey-less noise.
Scenarios plant the moments they are about, but randomness (a second device, a
customer who gives up after an error) also causes incidental ones. The ground
truth is therefore not taken from the scripts: a small reference detector,
written from DESIGN.md §4 independently of ``state/``, runs over every
customer's events, so it lists exactly the moments a correct pipeline emits.

Pure standard library + orjson; no Bytewax import.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z

SEC_MS = 1_000
MIN_MS = 60 * SEC_MS
HOUR_MS = 60 * MIN_MS

# Parameters of the default rule pack (flows/rulepacks/default.toml); a unit test keeps them in step.
JOURNEYS: dict[str, tuple[str, str, str, str]] = {
    "5g_upgrade": ("landing", "plan_select", "order_form", "payment"),
    "cart": ("product", "cart", "checkout", "payment"),
}
KEY_STEPS: dict[str, frozenset[str]] = {
    "5g_upgrade": frozenset({"order_form", "payment"}),
    "cart": frozenset({"checkout", "payment"}),
}
COMPLETE_TYPE = "complete"
ATTEMPT_TIMEOUT_MS = 24 * HOUR_MS
ABANDON_IDLE_MS = 10 * MIN_MS
STUCK_THRESHOLD = 3
STUCK_WITHIN_MS = 30 * MIN_MS
MAZE_ENTRIES = 3
MAZE_WITHIN_MS = 30 * MIN_MS
HOP_CHANNELS = 3
HOP_WITHIN_MS = 60 * MIN_MS
INTEREST_WITHIN_MS = 24 * HOUR_MS
NO_INTENT_MS = 24 * HOUR_MS
HANDOFF_TYPE = "contact"
HANDOFF_CHANNEL = "call_center"
HANDOFF_WITHIN_MS = 30 * MIN_MS
KINDS = ("abandoned", "failed", "stuck", "maze", "channel_hop", "interested", "handoff")

CHANNELS = ("app", "web", "wechat", "ivr", "sms", "call_center", "store", "email")
DIGITAL = ("app", "web", "wechat")
ENTRIES = ("home_banner", "push_campaign", "search", "sms_link", "wechat_article", "email_offer")
# Entries that come from a campaign, so their first view carries the campaign's name.
CAMPAIGN_ENTRIES = frozenset({"push_campaign", "sms_link", "wechat_article", "email_offer"})
CAMPAIGNS = ("5g_spring", "family_plan", "cart_recovery", "loyalty_week")
FAILS: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {
    ("5g_upgrade", "order_form"): (("contract_lock", "E117"), ("credit_check", "E201"), ("device_unsupported", "E305")),
    ("5g_upgrade", "payment"): (("card_declined", "P402"), ("3ds_timeout", "P408")),
    ("cart", "checkout"): (("out_of_stock", "S409"), ("address_invalid", "A422")),
    ("cart", "payment"): (("card_declined", "P402"), ("insufficient_funds", "P451")),
}
NOISE_STEPS = ("home", "offers", "support", "account", "bill")

# (ts, channel, type, journey, step, entry, attrs as pairs): one scripted event before it gets its ids. Only
# atomic values, so the garbage collector stops tracking the tuples: scripts of 100k customers stay cheap.
_Attrs = tuple[tuple[str, Any], ...] | None
_Raw = tuple[int, str, str, str | None, str | None, str | None, _Attrs]


def _pairs(attrs: dict[str, Any] | None) -> _Attrs:
    return tuple(attrs.items()) if attrs else None


class _Script:
    """One customer's journey events, written on a moving clock."""

    def __init__(self, rng: random.Random, t0: int, journey: str) -> None:
        self.rng = rng
        self.t = t0
        self.journey = journey
        self.steps = JOURNEYS[journey]
        self.home = rng.choice(DIGITAL)
        self.entry = rng.choice(ENTRIES)
        self.events: list[_Raw] = []
        self.intended: set[str] = set()
        self.variant = ""
        self.last_channel = self.home
        self.last_entry: str | None = self.entry

    def wait(self, lo_s: float, hi_s: float) -> None:
        """Move the clock on by a random gap (whole ms) between ``lo_s`` and ``hi_s`` seconds."""
        self.t += self.rng.randint(int(lo_s * SEC_MS), int(hi_s * SEC_MS))

    def channel(self) -> str:
        """Mostly the customer's own device; sometimes another digital channel (incidental hops are realistic)."""
        return self.home if self.rng.random() < 0.85 else self.rng.choice(DIGITAL)

    def j(self, type_: str, step: str | None, *, channel: str | None = None, entry: str | None = None,
          attrs: dict[str, Any] | None = None, journey: str | None = None) -> None:
        """Add an event in the script's journey (or ``journey``) at the current time."""
        ch = channel or self.channel()
        en = entry or self.entry
        self.events.append((self.t, ch, type_, journey or self.journey, step, en, _pairs(attrs)))
        self.last_channel, self.last_entry = ch, en

    def contact(self, reason: str, *, journey: str | None = None, step: str | None = None) -> None:
        """Add a call-centre contact, journey-less unless ``journey`` is given."""
        self.events.append((self.t, HANDOFF_CHANNEL, HANDOFF_TYPE, journey, step, None, (("reason", reason),)))
        if journey is not None:
            self.last_channel, self.last_entry = HANDOFF_CHANNEL, None

    def complete(self) -> None:
        """Complete on the previous event's channel and entry, so the completion adds no channel or entry."""
        self.events.append((self.t, self.last_channel, COMPLETE_TYPE, self.journey, self.steps[3], self.last_entry,
                            (("order_id", f"o{self.rng.randrange(10**8):08d}"),)))

    def fail_attrs(self, step: str) -> dict[str, Any]:
        """A failure's reason and error code, as the journey's back end reports it."""
        reason, code = self.rng.choice(FAILS[(self.journey, step)])
        return {"reason": reason, "error_code": code}

    def lead_in(self, channel: str | None = None) -> None:
        """Land on the journey (one view, from the script's entry) and start it."""
        attrs = {"campaign": self.rng.choice(CAMPAIGNS)} if self.entry in CAMPAIGN_ENTRIES else None
        self.j("view", self.steps[0], channel=channel, attrs=attrs)
        self.wait(20, 240)
        self.j("start", self.steps[1], channel=channel)

    def pay_and_complete(self, channel: str | None = None) -> None:
        """Submit the payment step and complete, with gaps well under the abandonment idle time."""
        self.wait(20, 240)
        self.j("submit", self.steps[3], channel=channel, attrs={"amount": self.rng.randint(19, 899)})
        self.wait(5, 60)
        self.complete()


# Scenarios: each writes one customer's journey events and the moment kinds it always plants.


def _happy(s: _Script) -> None:
    s.lead_in()
    s.wait(20, 240)
    s.j("submit", s.steps[2])
    if s.rng.random() < 0.3:
        s.wait(10, 120)
        s.j("view", s.steps[3])
    s.pay_and_complete()


def _abandon(s: _Script) -> None:
    s.intended.add("abandoned")
    s.lead_in()
    s.wait(20, 240)
    s.j("submit", s.steps[2])
    last_key = s.steps[2]
    if s.rng.random() < 0.5:
        s.wait(20, 240)
        s.j("view", s.steps[3])
        last_key = s.steps[3]
    r = s.rng.random()
    if r < 0.15:
        s.variant = "cancel"
        s.wait(30, 300)
        # A cancel at a key step is still the latest event there: the abandonment anchors on it.
        s.j("cancel", last_key, attrs={"reason": "changed_mind"})
    elif r < 0.5:
        s.variant = "return"
        # Back from a reminder long after the idle time: abandoned, then recovered.
        s.wait(20 * 60, 180 * 60)
        s.entry = "sms_link"
        s.j("view", s.steps[2])
        s.pay_and_complete()


def _fail_recover(s: _Script) -> None:
    s.intended.add("failed")
    s.lead_in()
    s.wait(20, 240)
    fail_step = s.rng.choice(s.steps[2:])
    if fail_step == s.steps[3]:
        s.j("submit", s.steps[2])
        s.wait(20, 240)
    s.j("fail", fail_step, attrs=s.fail_attrs(fail_step))
    s.wait(60, 300)
    s.j("submit", fail_step)
    if fail_step == s.steps[2]:
        s.pay_and_complete()
    else:
        s.wait(5, 60)
        s.complete()


def _stuck(s: _Script) -> None:
    s.intended.update(("failed", "stuck"))
    s.lead_in()
    s.wait(20, 240)
    fail_step = s.rng.choice(s.steps[2:])
    if fail_step == s.steps[3]:
        s.j("submit", s.steps[2])
        s.wait(20, 240)
    attrs = s.fail_attrs(fail_step)
    for i in range(STUCK_THRESHOLD):
        if i:
            s.wait(20, 180)
        s.j("submit", fail_step)
        s.wait(2, 15)
        s.j("fail", fail_step, attrs=attrs)
    r = s.rng.random()
    if r < 0.4:
        s.variant = "give_up"  # the last fail is at a key step: abandoned too
    elif r < 0.7:
        s.variant = "call"
        s.intended.add("handoff")
        s.wait(120, 500)
        s.contact("payment_problem" if fail_step == "payment" else "order_problem")
        if s.rng.random() < 0.5:
            s.wait(60, 240)
            s.j("submit", fail_step, channel=HANDOFF_CHANNEL)
            s.wait(5, 60)
            s.complete()
    else:
        s.variant = "retry_ok"
        if fail_step == s.steps[2]:
            s.wait(20, 240)
            s.j("submit", s.steps[2])
        s.pay_and_complete()


def _maze(s: _Script) -> None:
    s.intended.add("maze")
    s.lead_in()
    key = s.steps[2] if s.rng.random() < 0.8 else s.steps[3]
    entries = [s.entry, *s.rng.sample([e for e in ENTRIES if e != s.entry], MAZE_ENTRIES - 1)]
    with_fail = s.rng.random() < 0.35
    if with_fail:
        # The textbook maze: every entry point leads to the same error.
        s.variant = "same_error"
        s.intended.update(("failed", "stuck"))
    attrs = s.fail_attrs(key)
    for i, entry in enumerate(entries):
        s.entry = entry
        if i == 0:
            s.wait(20, 240)
        else:
            s.wait(60, 300)
        s.j("view", key)
        if with_fail:
            s.wait(5, 40)
            s.j("fail", key, attrs=attrs)
    if s.rng.random() < 0.5:
        if key == s.steps[2]:
            s.wait(20, 240)
            s.j("submit", key)
        s.pay_and_complete()
    else:
        s.variant += "+give_up"


def _channel_hop(s: _Script) -> None:
    s.intended.add("channel_hop")
    second, third = s.rng.sample([c for c in ("app", "web", "wechat", "store", "ivr") if c != s.home], 2)
    s.lead_in(channel=s.home)
    s.wait(60, 500)
    s.j("submit", s.steps[2], channel=second)
    s.wait(60, 500)
    s.j("view", s.steps[3], channel=third)
    if s.rng.random() < 0.6:
        s.pay_and_complete(channel=third)
    else:
        s.variant = "give_up"


def _handoff(s: _Script) -> None:
    s.intended.add("handoff")
    s.lead_in()
    s.wait(20, 240)
    s.j("submit", s.steps[2])
    if s.rng.random() < 0.4:
        s.wait(20, 240)
        s.j("fail", s.steps[3], attrs=s.fail_attrs(s.steps[3]))
    s.wait(60, 900)
    r = s.rng.random()
    if r < 0.55:
        s.variant = "journeyless"
        s.contact("order_question")
        if s.rng.random() < 0.6:
            s.wait(60, 400)
            s.pay_and_complete(channel=s.rng.choice((HANDOFF_CHANNEL, s.home)))
    elif r < 0.8:
        # A contact in the journey but at no step: it is the latest event, so nothing is left pending.
        s.variant = "in_journey"
        s.contact("order_question", journey=s.journey)
        if s.rng.random() < 0.5:
            s.pay_and_complete(channel=HANDOFF_CHANNEL)
    else:
        # A contact at a key step that leads nowhere: abandoned, anchored on the contact.
        s.variant = "at_key_step"
        s.intended.add("abandoned")
        s.contact("order_question", journey=s.journey, step=s.steps[2])


def _interested(s: _Script) -> None:
    s.intended.add("interested")
    s.entry = s.rng.choice(sorted(CAMPAIGN_ENTRIES))
    attrs = {"campaign": s.rng.choice(CAMPAIGNS)}
    s.j("view", s.steps[0], channel=s.rng.choice(("email", "sms", "wechat", "app", "web")), attrs=attrs)
    s.wait(10 * 60, 20 * 3600)
    s.j(s.rng.choice(("engage", "view")), s.steps[0], attrs=attrs)
    if s.rng.random() < 0.3:
        s.variant = "converts"
        s.wait(5 * 60, 3 * 3600)
        s.j("start", s.steps[1])
        s.wait(20, 240)
        s.j("submit", s.steps[2])
        s.pay_and_complete()


def _browse(s: _Script) -> None:
    # At most one journey event per journey: nothing can fire.
    attrs = {"campaign": s.rng.choice(CAMPAIGNS)} if s.entry in CAMPAIGN_ENTRIES else None
    s.j("view", s.steps[0], attrs=attrs)
    if s.rng.random() < 0.3:
        other = next(j for j in JOURNEYS if j != s.journey)
        s.wait(60, 1200)
        s.j("view", JOURNEYS[other][0], journey=other)
    if s.rng.random() < 0.2:
        # A billing call long after browsing: too late for a handoff.
        s.variant = "billing_call"
        s.wait(45 * 60, 120 * 60)
        s.contact("billing")


def _edge(s: _Script) -> None:
    """Deliberate rule boundaries: exactly at each window's edge, and one millisecond past it."""
    s.variant = s.rng.choice(("abandon_at", "abandon_before", "stuck_at", "stuck_past", "handoff_at",
                              "handoff_past", "hop_at", "hop_past", "maze_at", "maze_past"))
    on_edge = s.variant.endswith("_at")
    s0, s1, s2, s3 = s.steps
    home = s.home
    if s.variant.startswith("abandon"):
        s.lead_in(channel=home)
        s.wait(20, 240)
        s.j("submit", s2, channel=home)
        # The next event exactly at the idle time does not prevent the abandonment; 1 ms earlier does.
        s.t += ABANDON_IDLE_MS - (0 if on_edge else 1)
        s.j("submit", s3, channel=home)
        s.wait(5, 60)
        s.complete()
        if on_edge:
            s.intended.add("abandoned")
    elif s.variant.startswith("stuck"):
        s.lead_in(channel=home)
        s.wait(20, 240)
        s.j("submit", s2, channel=home)
        s.wait(20, 240)
        t1 = s.t
        # Submits every 5 minutes keep the key step busy, so no abandonment between the fails.
        for k in range(6):
            s.t = t1 + k * 5 * MIN_MS
            s.j("fail" if k % 3 == 0 else "submit", s3, channel=home, attrs=s.fail_attrs(s3) if k % 3 == 0 else None)
        s.t = t1 + STUCK_WITHIN_MS + (0 if on_edge else 1)
        s.j("fail", s3, channel=home, attrs=s.fail_attrs(s3))
        s.pay_and_complete(channel=home)
        s.intended.update(("failed", "stuck") if on_edge else ("failed",))
    elif s.variant.startswith("handoff"):
        s.lead_in(channel=home)  # ends at a non-key step: no abandonment
        s.t += HANDOFF_WITHIN_MS + (0 if on_edge else 1)
        s.contact("order_question")
        if on_edge:
            s.intended.add("handoff")
    elif s.variant.startswith("hop"):
        others = [c for c in DIGITAL if c != home]
        t1 = s.t
        s.j("view", s0, channel=home)
        s.t = t1 + 30 * MIN_MS
        s.j("start", s1, channel=others[0])
        s.t = t1 + HOP_WITHIN_MS + (0 if on_edge else 1)
        s.j("view", s1, channel=others[1])  # after the start: no interest
        if on_edge:
            s.intended.add("channel_hop")
    else:
        s.lead_in(channel=home)
        s.wait(20, 240)
        t1 = s.t
        entries = [s.entry, *s.rng.sample([e for e in ENTRIES if e != s.entry], MAZE_ENTRIES - 1)]
        # Views of the previous step every 5 minutes keep the key step from being the latest for 10 minutes.
        for k in range(6):
            s.t = t1 + k * 5 * MIN_MS
            if k % 3 == 0:
                s.j("view", s2, channel=home, entry=entries[k // 3])
            else:
                s.j("view", s1, channel=home)
        s.t = t1 + MAZE_WITHIN_MS + (0 if on_edge else 1)
        s.j("view", s2, channel=home, entry=entries[2])
        s.entry = entries[2]
        s.wait(20, 240)
        s.j("submit", s2, channel=home)
        s.pay_and_complete(channel=home)
        if on_edge:
            s.intended.add("maze")


# name -> (weight in percent, script writer)
SCENARIOS: dict[str, tuple[int, Callable[[_Script], None]]] = {
    "happy": (18, _happy),
    "abandon": (14, _abandon),
    "fail_recover": (9, _fail_recover),
    "stuck": (6, _stuck),
    "maze": (6, _maze),
    "channel_hop": (7, _channel_hop),
    "handoff": (8, _handoff),
    "interested": (9, _interested),
    "browse": (18, _browse),
    "edge": (5, _edge),
}
_NAMES = tuple(SCENARIOS)
_CUM_WEIGHTS = tuple(sum(SCENARIOS[n][0] for n in _NAMES[: i + 1]) for i in range(len(_NAMES)))


def _noise(rng: random.Random, first: int, last: int) -> list[_Raw]:
    """Journey-less browsing, feedback and IVR calls around the scenario: no rule reacts to them."""
    out: list[_Raw] = []
    for _ in range(rng.randint(1, 9)):
        t = rng.randint(first + 1, last + HOUR_MS)
        r = rng.random()
        if r < 0.6:
            out.append((t, rng.choice(CHANNELS[:3] + CHANNELS[6:]), "view", None, rng.choice(NOISE_STEPS), None, None))
        elif r < 0.85:
            out.append((t, rng.choice(("app", "wechat", "email", "sms")), "engage", None, "offers", None,
                        (("campaign", rng.choice(CAMPAIGNS)),)))
        elif r < 0.95:
            out.append((t, rng.choice(DIGITAL), "feedback", None, None, None, (("score", rng.randint(1, 5)),)))
        else:
            # Contacts on the IVR are not call-centre contacts: no handoff.
            out.append((t, "ivr", "contact", None, "bill", None, (("reason", "balance_enquiry"),)))
    return out


@dataclass(frozen=True, slots=True)
class _Customer:
    index: int
    customer_id: str
    scenario: str
    variant: str
    intended: frozenset[str]
    raws: tuple[_Raw, ...]  # in time order, timestamps unique within the customer


@dataclass(frozen=True)
class Simulation:
    """A deterministic simulated stream; ``events()`` regenerates it on every call.

    Attributes:
        customers: Number of customers (each follows one scenario).
        minutes: Window of event time over which the customers' journeys start.
        seed: Random seed; equal arguments give byte-identical output.
        start_ms: Event time (epoch ms) of the window's start; no event is earlier.
    """

    customers: int
    minutes: float
    seed: int
    start_ms: int = DEFAULT_START_MS
    _window_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Fix the window's length in ms."""
        object.__setattr__(self, "_window_ms", max(1, int(self.minutes * MIN_MS)))

    def _customer(self, c: int) -> _Customer:
        """Write customer ``c``'s script from its own random stream (independent of every other customer)."""
        rng = random.Random(f"{self.seed}/{c}")
        n, w = self.customers, self._window_ms
        # Start times are stratified over the window, so they rise with the customer index and events() can
        # bring customers in lazily; within its stratum each start is uniform.
        lo, hi = self.start_ms + c * w // n, self.start_ms + (c + 1) * w // n
        t0 = lo + rng.randrange(hi - lo) if hi > lo else lo
        scenario = rng.choices(_NAMES, cum_weights=_CUM_WEIGHTS)[0]
        script = _Script(rng, t0, rng.choice(tuple(JOURNEYS)))
        SCENARIOS[scenario][1](script)
        raws = script.events
        used = {e[0] for e in raws}
        for e in _noise(rng, t0, raws[-1][0]):
            t = e[0]
            while t in used:  # unique times within a customer: its order never rests on event-id ties
                t += 1
            used.add(t)
            raws.append((t, *e[1:]))
        raws.sort(key=lambda e: e[0])
        return _Customer(c, f"c{c:07d}", scenario, script.variant, frozenset(script.intended), tuple(raws))

    def _customers(self) -> Iterator[tuple[_Customer, int]]:
        """Yield every customer in start order with the number of its first event."""
        offset = 0
        for c in range(self.customers):
            cust = self._customer(c)
            yield cust, offset
            offset += len(cust.raws)

    def _docs(self, cust: _Customer, offset: int) -> list[dict[str, Any]]:
        return [_doc(f"e{self.seed}-{offset + k}", cust.customer_id, raw) for k, raw in enumerate(cust.raws)]

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield every event as a schema-v1 dict (``ts`` in epoch ms), ordered by (ts, event_id).

        Customers are brought in lazily in start order and merged on a heap, so
        only the scripts of customers that have started are held in memory, as
        compact tuples; event dicts are built as they are yielded.

        Yields:
            Fresh event dicts (callers may mutate them).
        """
        seed = self.seed
        heap: list[tuple[int, str, int, int, _Customer, int]] = []  # (ts, event_id, index, k, customer, offset)
        pending = self._customers()
        nxt = next(pending, None)
        while True:
            # Every unstarted customer's events are at or after its start time, which rises with the index:
            # once the next start is after the heap's head, the head is the smallest remaining event.
            while nxt is not None and (not heap or nxt[0].raws[0][0] <= heap[0][0]):
                cust, offset = nxt
                heapq.heappush(heap, (cust.raws[0][0], f"e{seed}-{offset}", cust.index, 0, cust, offset))
                nxt = next(pending, None)
            if not heap:
                return
            _ts, eid, idx, k, cust, offset = heap[0]
            yield _doc(eid, cust.customer_id, cust.raws[k])
            k += 1
            if k < len(cust.raws):
                heapq.heapreplace(heap, (cust.raws[k][0], f"e{seed}-{offset + k}", idx, k, cust, offset))
            else:
                heapq.heappop(heap)

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return every moment the events cause under DESIGN.md §4 with the default pack.

        Found by ``reference_moments`` per customer; abandonments still pending
        at the end count only when due at or before the stream's largest event
        time, as replay fires timers at end of input.

        Returns:
            Dicts ``customer_id``, ``rule``, ``anchor_event_id``, ``due_ts``, sorted by (due_ts, customer_id, rule).
        """
        fired: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        max_ts = self.start_ms
        for cust, offset in self._customers():
            docs = self._docs(cust, offset)
            max_ts = max(max_ts, docs[-1]["ts"])
            f, p = _detect_customer(docs)
            fired.extend(f)
            pending.extend(p)
        fired.extend(m for m in pending if m["due_ts"] <= max_ts)
        fired.sort(key=lambda m: (m["due_ts"], m["customer_id"], m["rule"], m["anchor_event_id"]))
        return fired


def _doc(event_id: str, customer_id: str, raw: _Raw) -> dict[str, Any]:
    ts, channel, type_, journey, step, entry, attrs = raw
    doc: dict[str, Any] = {"event_id": event_id, "customer_id": customer_id, "ts": ts, "channel": channel,
                           "type": type_}
    if journey is not None:
        doc["journey"] = journey
    if step is not None:
        doc["step"] = step
    if entry is not None:
        doc["entry"] = entry
    if attrs:
        doc["attrs"] = dict(attrs)
    return doc


def simulate(customers: int, minutes: float, seed: int, start_ms: int = DEFAULT_START_MS) -> Simulation:
    """Return a simulation of ``customers`` customers whose journeys start over ``minutes`` of event time.

    Args:
        customers: Number of customers (each follows one scenario; about 10 events each).
        minutes: Window over which the customers' journeys start (events run on past it).
        seed: Random seed; the same arguments give byte-identical output.
        start_ms: Event time of the window's start (epoch ms).

    Returns:
        The simulation; events and ground truth are generated on demand.

    Raises:
        ValueError: ``customers`` or ``minutes`` is not positive.
    """
    if customers < 1 or minutes <= 0:
        raise ValueError(f"customers and minutes must be positive, got {customers} and {minutes}")
    return Simulation(customers, minutes, seed, start_ms)


def write_jsonl(
    sim: Simulation,
    events_path: Path | str,
    truth_path: Path | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the events (and optionally the ground truth) as JSONL, one orjson object per line.

    Args:
        sim: The simulation.
        events_path: Where the events go.
        truth_path: Where the ground truth goes, or None to skip it.
        progress: Called with the number of events written so far, every 8,192 events.

    Returns:
        The number of events written.
    """
    n = 0
    dumps = orjson.dumps
    with Path(events_path).open("wb") as f:
        buf: list[bytes] = []
        for ev in sim.events():
            buf.append(dumps(ev))
            if len(buf) >= 8192:
                n += len(buf)
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
                if progress is not None:
                    progress(n)
        if buf:
            n += len(buf)
            f.write(b"\n".join(buf) + b"\n")
    if truth_path is not None:
        with Path(truth_path).open("wb") as f:
            f.writelines(dumps(t) + b"\n" for t in sim.ground_truth())
    return n


# Reference detector: a plain, per-customer reading of DESIGN.md §4 for the default pack, used only to derive
# the ground truth. It is deliberately written apart from state/ (no shared code), so that agreement between
# the two is evidence rather than tautology.


@dataclass
class _Attempt:
    """What one attempt of one journey has seen so far."""

    last_ts: int
    last_eid: str
    times: list[int] = field(default_factory=list)  # every event in J of this attempt, for the handoff window
    at_key: bool = False  # the latest event is at a key step (and not a completion)
    ended: bool = False  # completed
    fired: set[str] = field(default_factory=set)
    fails: list[int] = field(default_factory=list)
    entries: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))  # step -> entry -> ts
    channels: dict[str, int] = field(default_factory=dict)  # channel -> latest ts


def reference_moments(events: Iterable[Mapping[str, Any]], end_ts: int | None = None) -> list[dict[str, Any]]:
    """Detect the default pack's moments in a set of events, as DESIGN.md §4 defines them.

    Each customer's events are taken in (ts, event_id) order. Abandonments
    still pending after the last event fire only when due at or before
    ``end_ts`` (replay fires timers up to the largest event time at end of input).

    Args:
        events: Event dicts (schema v1, ``ts`` in epoch ms), any order, any customers.
        end_ts: Event time at end of input; defaults to the largest ``ts`` among ``events``.

    Returns:
        Dicts ``customer_id``, ``rule``, ``anchor_event_id``, ``due_ts``, sorted by (due_ts, customer_id, rule).
    """
    by_customer: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for ev in events:
        by_customer[ev["customer_id"]].append(ev)
    if end_ts is None:
        end_ts = max((ev["ts"] for evs in by_customer.values() for ev in evs), default=0)
    out: list[dict[str, Any]] = []
    for evs in by_customer.values():
        fired, pending = _detect_customer(sorted(evs, key=lambda e: (e["ts"], e["event_id"])))
        out.extend(fired)
        out.extend(m for m in pending if m["due_ts"] <= end_ts)
    out.sort(key=lambda m: (m["due_ts"], m["customer_id"], m["rule"], m["anchor_event_id"]))
    return out


def _detect_customer(events: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return (moments fired, abandonments pending at the end) of one customer's events, given in order."""
    fired: list[dict[str, Any]] = []
    attempts: dict[str, _Attempt] = {}
    last_view: dict[str, int] = {}  # journey -> latest view/engage ts (a time window, not per attempt)
    last_intent: dict[str, int] = {}  # journey -> latest start/submit ts

    def fire(a: _Attempt, journey: str, kind: str, anchor: str, due: int) -> None:
        if kind not in a.fired:
            a.fired.add(kind)
            fired.append({"customer_id": cid, "rule": f"{journey}.{kind}", "anchor_event_id": anchor, "due_ts": due})

    cid = ""
    for ev in events:
        cid, t, eid, etype, channel = ev["customer_id"], ev["ts"], ev["event_id"], ev["type"], ev["channel"]
        journey = ev.get("journey")

        if etype == HANDOFF_TYPE and channel == HANDOFF_CHANNEL:
            # Evaluated before the contact joins its own journey: the contact itself never counts.
            for j, other in attempts.items():
                if any(t - HANDOFF_WITHIN_MS <= x < t for x in other.times):
                    fire(other, j, "handoff", eid, t)

        if journey not in JOURNEYS:
            continue
        a = attempts.get(journey)
        if a is not None and not a.ended and a.at_key and t - a.last_ts >= ABANDON_IDLE_MS:
            # The abandonment timer (due last + idle) fires before this event, even at exactly that time.
            fire(a, journey, "abandoned", a.last_eid, a.last_ts + ABANDON_IDLE_MS)
        if a is None or a.ended or t - a.last_ts >= ATTEMPT_TIMEOUT_MS:
            a = attempts[journey] = _Attempt(t, eid)
        a.times.append(t)
        a.last_ts, a.last_eid = t, eid
        if etype == COMPLETE_TYPE:
            a.ended, a.at_key = True, False
            continue

        step = ev.get("step")
        a.at_key = step in KEY_STEPS[journey]
        if etype == "fail":
            fire(a, journey, "failed", eid, t)
            a.fails.append(t)
            if sum(1 for f in a.fails if t - f <= STUCK_WITHIN_MS) >= STUCK_THRESHOLD:
                fire(a, journey, "stuck", eid, t)
        elif etype in ("view", "engage"):
            prev, intent = last_view.get(journey), last_intent.get(journey)
            if prev is not None and t - prev <= INTEREST_WITHIN_MS and (intent is None or t - intent > NO_INTENT_MS):
                fire(a, journey, "interested", eid, t)
            last_view[journey] = t
        elif etype in ("start", "submit"):
            last_intent[journey] = t

        a.channels[channel] = t
        if sum(1 for x in a.channels.values() if t - x <= HOP_WITHIN_MS) >= HOP_CHANNELS:
            fire(a, journey, "channel_hop", eid, t)

        entry = ev.get("entry")
        if a.at_key and entry:
            seen = a.entries[str(step)]
            seen[entry] = t
            if sum(1 for x in seen.values() if t - x <= MAZE_WITHIN_MS) >= MAZE_ENTRIES:
                fire(a, journey, "maze", eid, t)

    pending = [
        {"customer_id": cid, "rule": f"{j}.abandoned", "anchor_event_id": a.last_eid,
         "due_ts": a.last_ts + ABANDON_IDLE_MS}
        for j, a in attempts.items()
        if a.at_key and not a.ended and "abandoned" not in a.fired
    ]
    return fired, pending
