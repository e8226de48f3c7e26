"""Runs the production generic-rule evaluator (state/generic) over a list of events, as the shard will.

It does the bookkeeping the shard does for generic rules: drop duplicate event ids, order each customer's
events by (ts, event_id), wake timers due at or before an event's ts before the event, start a new attempt after
``attempt_timeout`` without events in the journey, end the attempt after the completion event, and at the end of
input fire every timer due at or before the largest ts of the whole input (replay).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from state.events import Event
from state.generic.base import NO_TS, Firing, GenericRule
from state.generic.dispatch import JourneyRules, States
from state.generic.schema import compile_rules
from state.rules import parse_duration

Moment = tuple[str, str, int, str, tuple[str, ...]]


class _Journey:
    def __init__(self, raw: dict[str, Any]) -> None:
        self.id: str = raw["id"]
        self.key_steps = frozenset(raw.get("key_steps", ()))
        self.complete_type: str = raw.get("complete_type", "complete")


def to_event(d: dict[str, Any]) -> Event:
    """A schema-v1 dict (ts as int epoch ms) as an Event."""
    return Event(d["event_id"], d["customer_id"], int(d["ts"]), d["channel"], d["type"], d.get("journey"),
                 d.get("step"), d.get("entry"), d.get("attrs"))


def compile_pack(pack: dict[str, Any]) -> tuple[dict[str, _Journey], list[GenericRule], int]:
    """The pack's journeys, compiled generic rules and attempt timeout (ms)."""
    journeys = {j["id"]: _Journey(j) for j in pack["journey"]}
    timeout = parse_duration(pack.get("pack", {}).get("attempt_timeout", "24h"))
    return journeys, compile_rules("<pack>", pack.get("moment", []), journeys, timeout), timeout


def run(pack: dict[str, Any], events: list[dict[str, Any]]) -> list[Moment]:
    """Every moment of the pack's generic rules over ``events`` (input order), sorted.

    Returns:
        (customer_id, rule, due_ts, anchor_event_id, evidence) tuples.
    """
    journeys, rules, timeout = compile_pack(pack)
    table = {jid: JourneyRules(jid, rules) for jid in journeys}

    seen: set[tuple[str, str]] = set()
    per_customer: dict[str, list[Event]] = defaultdict(list)
    max_ts = NO_TS
    for d in events:
        ev = to_event(d)
        # A duplicate is dropped but still moves the end of input, as in the shard (docs/detection.md).
        max_ts = max(max_ts, ev.ts_ms)
        if (ev.customer_id, ev.event_id) in seen:
            continue
        seen.add((ev.customer_id, ev.event_id))
        per_customer[ev.customer_id].append(ev)

    out: list[Moment] = []
    for cid, evs in per_customer.items():
        evs.sort(key=lambda e: (e.ts_ms, e.event_id))
        states: dict[str, States] = {}
        last: dict[str, int] = {}
        fired: list[Firing] = []
        for ev in evs:
            jid = ev.journey
            if jid is None or jid not in journeys:
                continue
            jr = table[jid]
            sts = states.get(jid)
            if sts is None:
                sts = states[jid] = jr.new_states()
            due = jr.next_due(sts)
            if due != NO_TS and due <= ev.ts_ms:
                fired += jr.wake(sts, ev.ts_ms)
            if jid in last and ev.ts_ms >= last[jid] + timeout:
                jr.end_attempt(sts, ev.ts_ms)
            last[jid] = ev.ts_ms
            fired += jr.on_event(sts, ev)
            if ev.type == journeys[jid].complete_type:
                jr.end_attempt(sts, ev.ts_ms)
        for jid, sts in states.items():
            fired += table[jid].wake(sts, max_ts)
        out += [(cid, f.rule, f.due_ms, f.anchor, f.evidence) for f in fired]
    return sorted(out)
