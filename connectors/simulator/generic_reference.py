"""An independent, brute-force reference for the generic moment kinds (DESIGN.md §8).

Written from DESIGN.md §8 and §4 and the shared contract of issue 14 only, never
from the production evaluator (state/generic/), so that the two can be compared
(tests/property/test_generic_kinds.py). Clarity over speed: every candidate
firing is recomputed from the whole sorted history of the customer's journey,
and each clause carries the sentence of §8 or of the contract it implements.
Nothing is imported from state/: durations and timestamps are parsed here.

Entry point: ``run(pack, events)`` with the pack as ``tomllib.loads`` gives it
and the events as schema-v1 dicts in input order; it returns every moment as
``(customer_id, rule, due_ts, anchor_event_id, evidence)``, sorted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Moment = tuple[str, str, int, str, tuple[str, ...]]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
DEFAULT_ATTEMPT_TIMEOUT = "24h"  # DESIGN §4: "after 24 h without events in J"
DEFAULT_COMPLETE_TYPE = "complete"  # DESIGN §4: "a journey completes on an event of type `complete`"


def duration_ms(value: str | int) -> int:
    """Milliseconds of a rule-pack duration such as ``"10m"`` (an int is taken as ms already)."""
    if isinstance(value, int):
        return value
    m = _DURATION.match(value)
    if m is None:
        raise ValueError(f"not a duration: {value!r}")
    return int(float(m.group(1)) * _UNIT_MS[m.group(2)])


def ts_ms(value: int | str) -> int:
    """Epoch ms of an event's ``ts`` (epoch ms, or ISO-8601 with an offset; DESIGN §3)."""
    if isinstance(value, int):
        return value
    return int(datetime.fromisoformat(value).timestamp() * 1000 + 0.5)


@dataclass(frozen=True)
class Ev:
    """One kept event of one customer's journey, with its position in (ts, event_id) order and its attempt."""

    ts: int
    event_id: str
    raw: dict[str, Any]
    attempt: int

    @property
    def order(self) -> tuple[int, str]:
        """The (ts, event_id) sort key."""
        return (self.ts, self.event_id)


# ---------------------------------------------------------------------------------------------- predicates


def field_value(raw: dict[str, Any], field: str) -> Any:
    """The event's value of ``channel``/``type``/``step``/``entry``/``attrs.<key>``; None when it lacks it."""
    if field.startswith("attrs."):
        attrs = raw.get("attrs") or {}
        return attrs.get(field[len("attrs."):])
    value = raw.get(field)
    # DESIGN §3 via the parser: an empty optional string is the same as a missing field.
    return value if value != "" else None


def matches(pred: dict[str, Any] | None, raw: dict[str, Any], key_steps: list[str]) -> bool:
    """Whether the event matches a predicate table.

    Contract: "Several fields in one predicate must all match (AND); the values of one field are alternatives
    (OR)"; "An event lacking the field does not match"; "a number attr never matches a string value";
    "`step = "$key"` matches the journey's key steps"; "A missing `when` matches every event in J".
    """
    if pred is None:
        return True
    for field, allowed in pred.items():
        values = allowed if isinstance(allowed, list) else [allowed]
        have = field_value(raw, field)
        if not isinstance(have, str):  # missing, or a number/bool attr: never equal to a string value
            return False
        alternatives = set(values)
        if field == "step" and "$key" in alternatives:
            alternatives |= set(key_steps)
        if have not in alternatives:
            return False
    return True


def value_key(value: Any) -> str | None:
    """What makes two `per`/`field` values the same: their JSON text; None for no value.

    Decided where §8 is silent: an attribute holding a number is its own value (5 and "5" are two groups), and
    JSON's types are kept apart (true, 1, 1.0 and "1" are four values, though Python has True == 1 == 1.0).
    """
    return None if value is None else json.dumps(value)


def group_value(raw: dict[str, Any], field: str | None) -> str | None:
    """The `per` group of an event: its value of the field, or None ("counted together as one group")."""
    if field is None:
        return None
    return value_key(field_value(raw, field))


# ---------------------------------------------------------------------------------------------- input


def journey_histories(pack: dict[str, Any], events: list[dict[str, Any]]) -> dict[tuple[str, str], list[Ev]]:
    """Each (customer, journey) history: kept events in (ts, event_id) order, numbered by attempt."""
    timeout = duration_ms(pack.get("pack", {}).get("attempt_timeout", DEFAULT_ATTEMPT_TIMEOUT))
    journeys = {j["id"]: j for j in pack.get("journey", [])}
    # "of events sharing an event_id (same customer) the first in input order is kept, later ones dropped"
    seen: set[tuple[str, str]] = set()
    kept: list[dict[str, Any]] = []
    for raw in events:
        key = (raw["customer_id"], raw["event_id"])
        if key not in seen:
            seen.add(key)
            kept.append(raw)
    histories: dict[tuple[str, str], list[Ev]] = {}
    for raw in kept:
        # "Events considered by a rule of journey J: events whose `journey` is J."
        if raw.get("journey") in journeys:
            ev = Ev(ts_ms(raw["ts"]), raw["event_id"], raw, 0)
            histories.setdefault((raw["customer_id"], raw["journey"]), []).append(ev)
    for (_, jid), evs in histories.items():
        # "Order: (ts, event_id)"
        evs.sort(key=lambda e: e.order)
        complete_type = journeys[jid].get("complete_type", DEFAULT_COMPLETE_TYPE)
        attempt = 0
        for i, e in enumerate(evs):
            if i > 0:
                prev = evs[i - 1]
                # "an event in J at ts >= previous J-event ts + attempt_timeout starts a new one";
                # "an event of the journey's complete_type ends the attempt ... (the next event in J opens a new
                # attempt)"
                if e.ts >= prev.ts + timeout or prev.raw["type"] == complete_type:
                    attempt += 1
            evs[i] = Ev(e.ts, e.event_id, e.raw, attempt)
    return histories


def max_input_ts(events: list[dict[str, Any]]) -> int | None:
    """The largest ts of the whole input (every customer, with or without a journey)."""
    return max((ts_ms(raw["ts"]) for raw in events), default=None)


# ---------------------------------------------------------------------------------------------- kinds
# Each function returns every CANDIDATE firing of one rule in one history, in order, as
# (attempt, due_ts, anchor, evidence); `first_per_attempt` then keeps "at most once per attempt in total".


Candidate = tuple[int, int, str, tuple[str, ...]]


def _ids(evs: list[Ev]) -> tuple[str, ...]:
    return tuple(e.event_id for e in sorted(evs, key=lambda e: e.order))


def _blocked_by_unless(rule: dict[str, Any], hist: list[Ev], e: Ev, key_steps: list[str]) -> bool:
    """Contract: "blocks a firing at e if some event in J matching `unless` comes before e in (ts, event_id)
    order with ts >= e.ts - unless_within (this or an earlier attempt; e itself never blocks itself)"."""
    if "unless" not in rule:
        return False
    look_back = duration_ms(rule["unless_within"])
    return any(
        u.order < e.order and u.ts >= e.ts - look_back and matches(rule["unless"], u.raw, key_steps) for u in hist
    )


def count_candidates(rule: dict[str, Any], hist: list[Ev], key_steps: list[str]) -> list[Candidate]:
    """count: "fires on the event e that makes >= threshold matching events (of e's `per` group) have a span
    <= within ending at e"; `within` absent = the whole attempt; evidence = "the `threshold` most recent
    matching events of the group ending at e"; due = e.ts; anchor = e."""
    threshold = int(rule["threshold"])
    within = duration_ms(rule["within"]) if "within" in rule else None
    per = rule.get("per")
    out: list[Candidate] = []
    for e in hist:
        if not matches(rule.get("when"), e.raw, key_steps):
            continue
        # "Windows ... belong to the current attempt": only this attempt's events, up to and including e.
        window = [
            x
            for x in hist
            if x.attempt == e.attempt
            and x.order <= e.order
            and (within is None or e.ts - x.ts <= within)  # "last.ts - first.ts <= within"
            and matches(rule.get("when"), x.raw, key_steps)
            and group_value(x.raw, per) == group_value(e.raw, per)
        ]
        if len(window) < threshold:
            continue
        # "Blocked = that candidate is dropped; later events are new candidates (the window is not reset)."
        if _blocked_by_unless(rule, hist, e, key_steps):
            continue
        out.append((e.attempt, e.ts, e.event_id, _ids(window[-threshold:])))
    return out


def distinct_candidates(rule: dict[str, Any], hist: list[Ev], key_steps: list[str]) -> list[Candidate]:
    """distinct: "fires on the event e (matching `when`, carrying the field) for which the matching events in
    the window [e.ts - within, e] (same `per` group) carry >= threshold distinct values"; evidence = "the
    `threshold` most recent distinct values in the window, each by the most recent event carrying it (up to e)";
    due = e.ts; anchor = e."""
    threshold = int(rule["threshold"])
    within = duration_ms(rule["within"]) if "within" in rule else None
    per = rule.get("per")
    field = rule["field"]
    out: list[Candidate] = []
    for e in hist:
        # §8: "An event without a `distinct` rule's `field` carries no value" (so it cannot bring one).
        if not matches(rule.get("when"), e.raw, key_steps) or field_value(e.raw, field) is None:
            continue
        latest_by_value: dict[Any, Ev] = {}
        for x in hist:  # in (ts, event_id) order, so the last one written per value is the most recent
            if (
                x.attempt == e.attempt
                and x.order <= e.order
                and (within is None or x.ts >= e.ts - within)
                and matches(rule.get("when"), x.raw, key_steps)
                and group_value(x.raw, per) == group_value(e.raw, per)
                and field_value(x.raw, field) is not None
            ):
                latest_by_value[value_key(field_value(x.raw, field))] = x
        if len(latest_by_value) < threshold:
            continue
        if _blocked_by_unless(rule, hist, e, key_steps):
            continue
        # "evidence = the `threshold` most recent distinct values, each by its most recent event" (docs/rule-packs.md:
        # what made it fire, bounded however many values a blocked rule has seen).
        latest = sorted(latest_by_value.values(), key=lambda x: x.order)[-threshold:]
        out.append((e.attempt, e.ts, e.event_id, _ids(latest)))
    return out


def absence_candidates(
    rule: dict[str, Any], hist: list[Ev], key_steps: list[str], complete_type: str, end_ts: int
) -> list[Candidate]:
    """absence: each arming event a fires at a.ts + idle unless something ends its timer in [a, a.ts + idle).

    §8: "an event matching `when` arms a timer at its ts + `idle`; any later event in J (or, if `until` is given,
    any later event in J matching `until`) disarms it; the latest arming event wins"; "a `complete` never arms";
    "an event at +idle-1 ms disarms; one at +idle does not" (wake-ups run before events at the same ts);
    "Attempt end clears ... armed absence timers"; at the end of the input "every timer due <= the largest
    event ts of the whole input fires". Due = a.ts + idle; evidence and anchor = the arming event.
    """
    idle = duration_ms(rule["idle"])
    until = rule.get("until")
    out: list[Candidate] = []
    for a in hist:
        if a.raw["type"] == complete_type or not matches(rule.get("when"), a.raw, key_steps):
            continue
        due = a.ts + idle
        if due > end_ts:  # never reached by the watermark
            continue
        ended = False
        for b in hist:
            if not (a.order < b.order and b.ts < due):  # only later events before the wake-up can end the timer
                continue
            disarms = until is None or matches(until, b.raw, key_steps)
            re_arms = b.raw["type"] != complete_type and matches(rule.get("when"), b.raw, key_steps)
            ends_attempt = b.raw["type"] == complete_type or b.attempt != a.attempt
            if disarms or re_arms or ends_attempt:
                ended = True
                break
        if not ended:
            out.append((a.attempt, due, a.event_id, (a.event_id,)))
    return out


def sequence_candidates(rule: dict[str, Any], hist: list[Ev], key_steps: list[str]) -> list[Candidate]:
    """sequence: "fires on an event `then` if there is an open `first` f with then.ts - f.ts <= within and no
    event matching `unless` strictly between f and then"; open firsts belong to the attempt; an event matching
    both closes an earlier first before opening its own (so it never pairs with itself); evidence = "the latest
    open `first` that qualifies, then the `then` event"; due = then.ts; anchor = the then event."""
    within = duration_ms(rule["within"])
    out: list[Candidate] = []
    for t in hist:
        if not matches(rule["then"], t.raw, key_steps):
            continue
        qualifying = [
            f
            for f in hist
            if f.attempt == t.attempt
            and f.order < t.order
            and t.ts - f.ts <= within
            and matches(rule["first"], f.raw, key_steps)
            and not (
                "unless" in rule
                and any(f.order < u.order < t.order and matches(rule["unless"], u.raw, key_steps) for u in hist)
            )
        ]
        if qualifying:
            f = max(qualifying, key=lambda x: x.order)
            out.append((t.attempt, t.ts, t.event_id, (f.event_id, t.event_id)))
    return out


def first_per_attempt(candidates: list[Candidate]) -> list[Candidate]:
    """"A rule fires at most once per attempt in total (`per` groups share that one firing)": the earliest
    candidate of each attempt (by due, then anchor order within the history)."""
    fired: dict[int, Candidate] = {}
    for c in candidates:  # candidates come in history order, which is due order for every kind
        fired.setdefault(c[0], c)
    return list(fired.values())


# ---------------------------------------------------------------------------------------------- run


def rules_of(pack: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """Every (journey id, rule name, rule table): "the rule is named `<journey>.<name>` for each journey in
    `journeys` (default: every journey of the pack)"; `name` defaults to the kind."""
    all_journeys = [j["id"] for j in pack.get("journey", [])]
    out = []
    for rule in pack.get("moment", []):
        for jid in rule.get("journeys", all_journeys):
            out.append((jid, f"{jid}.{rule.get('name', rule['kind'])}", rule))
    return out


def run(pack: dict[str, Any], events: list[dict[str, Any]], end_ts: int | None = None) -> list[Moment]:
    """Every moment of the pack's generic rules over the input, as (customer, rule, due_ts, anchor, evidence).

    ``end_ts`` is the event time at the end of input (default: the largest ts of ``events``); the simulator
    passes a time past every event for one customer's events, then keeps what is due by the whole stream's end.
    """
    journeys = {j["id"]: j for j in pack.get("journey", [])}
    histories = journey_histories(pack, events)
    if end_ts is None:
        end_ts = max_input_ts(events)
    moments: list[Moment] = []
    for (customer, jid), hist in histories.items():
        key_steps = list(journeys[jid].get("key_steps", []))
        complete_type = journeys[jid].get("complete_type", DEFAULT_COMPLETE_TYPE)
        for rule_jid, rule_name, rule in rules_of(pack):
            if rule_jid != jid:
                continue
            kind = rule["kind"]
            if kind == "count":
                cands = count_candidates(rule, hist, key_steps)
            elif kind == "distinct":
                cands = distinct_candidates(rule, hist, key_steps)
            elif kind == "absence":
                assert end_ts is not None
                cands = absence_candidates(rule, hist, key_steps, complete_type, end_ts)
            elif kind == "sequence":
                cands = sequence_candidates(rule, hist, key_steps)
            else:
                raise ValueError(f"moment {rule_name}: kind: not a generic kind: {kind!r}")
            for _, due, anchor, evidence in first_per_attempt(cands):
                moments.append((customer, rule_name, due, anchor, evidence))
    return sorted(moments)
