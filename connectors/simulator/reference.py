"""The reference detector behind the ground truth: the default pack's moments per customer, apart from state/."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from connectors.simulator.pack import (
    ABANDON_IDLE_MS,
    ATTEMPT_TIMEOUT_MS,
    COMPLETE_TYPE,
    HANDOFF_CHANNEL,
    HANDOFF_TYPE,
    HANDOFF_WITHIN_MS,
    HOP_CHANNELS,
    HOP_WITHIN_MS,
    INTEREST_WITHIN_MS,
    JOURNEYS,
    KEY_STEPS,
    MAZE_ENTRIES,
    MAZE_WITHIN_MS,
    NO_INTENT_MS,
    STUCK_THRESHOLD,
    STUCK_WITHIN_MS,
)

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
        fired, pending = detect_customer(sorted(evs, key=lambda e: (e["ts"], e["event_id"])))
        out.extend(fired)
        out.extend(m for m in pending if m["due_ts"] <= end_ts)
    out.sort(key=lambda m: (m["due_ts"], m["customer_id"], m["rule"], m["anchor_event_id"]))
    return out


def detect_customer(events: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
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
