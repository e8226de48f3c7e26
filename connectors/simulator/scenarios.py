"""Scripted customer scenarios (happy path, abandonment, failures, maze, hops, handoffs…) and journey-less noise."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from connectors.simulator.pack import (
    ABANDON_IDLE_MS,
    CAMPAIGN_ENTRIES,
    CAMPAIGNS,
    CHANNELS,
    COMPLETE_TYPE,
    DIGITAL,
    ENTRIES,
    FAILS,
    HANDOFF_CHANNEL,
    HANDOFF_TYPE,
    HANDOFF_WITHIN_MS,
    HOP_WITHIN_MS,
    HOUR_MS,
    JOURNEYS,
    MAZE_ENTRIES,
    MAZE_WITHIN_MS,
    MIN_MS,
    NOISE_STEPS,
    SEC_MS,
    STUCK_THRESHOLD,
    STUCK_WITHIN_MS,
)

# (ts, channel, type, journey, step, entry, attrs as pairs): one scripted event before it gets its ids. Only
# atomic values, so the garbage collector stops tracking the tuples: scripts of 100k customers stay cheap.
_Attrs = tuple[tuple[str, Any], ...] | None
Raw = tuple[int, str, str, str | None, str | None, str | None, _Attrs]


def _pairs(attrs: dict[str, Any] | None) -> _Attrs:
    return tuple(attrs.items()) if attrs else None


class Script:
    """One customer's journey events, written on a moving clock."""

    def __init__(self, rng: random.Random, t0: int, journey: str) -> None:
        self.rng = rng
        self.t = t0
        self.journey = journey
        self.steps = JOURNEYS[journey]
        self.home = rng.choice(DIGITAL)
        self.entry = rng.choice(ENTRIES)
        self.events: list[Raw] = []
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


def _happy(s: Script) -> None:
    s.lead_in()
    s.wait(20, 240)
    s.j("submit", s.steps[2])
    if s.rng.random() < 0.3:
        s.wait(10, 120)
        s.j("view", s.steps[3])
    s.pay_and_complete()


def _abandon(s: Script) -> None:
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


def _fail_recover(s: Script) -> None:
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


def _stuck(s: Script) -> None:
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


def _maze(s: Script) -> None:
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


def _channel_hop(s: Script) -> None:
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


def _handoff(s: Script) -> None:
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


def _interested(s: Script) -> None:
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


def _browse(s: Script) -> None:
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


def _edge(s: Script) -> None:
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
SCENARIOS: dict[str, tuple[int, Callable[[Script], None]]] = {
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
NAMES = tuple(SCENARIOS)
CUM_WEIGHTS = tuple(sum(SCENARIOS[n][0] for n in NAMES[: i + 1]) for i in range(len(NAMES)))


def noise(rng: random.Random, first: int, last: int) -> list[Raw]:
    """Journey-less browsing, feedback and IVR calls around the scenario: no rule reacts to them."""
    out: list[Raw] = []
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
