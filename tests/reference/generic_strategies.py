"""Hypothesis strategies: random generic rule packs and random traffic for them.

Packs have 1-4 rules of random generic kinds over the two journeys of the examples, with predicates over
type/channel/step/entry/attrs, and `per`, `unless`, `until` and `within` drawn from a few durations, under an
attempt_timeout of 2h so that attempt boundaries happen. Traffic is a few customers' events (all valid per
DESIGN.md §3: the production parser accepts every one) whose gaps often sit on the pack's durations (0, ±1 ms),
with ties, duplicates, completes, events without a journey and attrs holding strings and numbers; the last
event often sits on an absence timer's due time.

`per`/`field` may name `attrs.code`, which holds strings, numbers and booleans: true, 1, 1.0 and "1" are four
values (docs/rule-packs.md). Kept out on purpose (readings the contract does not fix; see docs/contributing.md):
one event_id for two customers, and duplicates whose ts is larger than every kept event's.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from tests.reference.generic_examples import HOUR, JOURNEYS, MIN, T0

ATTEMPT_TIMEOUT = "2h"
ATTEMPT_TIMEOUT_MS = 2 * HOUR
KINDS = ["count", "distinct", "absence", "sequence"]
TYPES = ["view", "view", "start", "submit", "fail", "fail", "cancel", "engage", "contact", "complete"]
CHANNELS = ["app", "web", "wechat", "sms", "call_center"]
ENTRIES = ["home_banner", "search", "sms_link"]
REASONS = ["card", "limit", "fraud"]
# A number attr must never match the string "42"; true, 1, 1.0 and "1" are four values for `per` and `field`.
CODES: list[Any] = ["42", 42, "7", 7, True, 1, 1.0, "1"]
STEPS = sorted({s for j in JOURNEYS for s in j["steps"]})
# Duration strings a pack draws from (all shorter than the attempt timeout, except the unless look-back).
WITHINS = ["1m", "5m", "10m", "30m"]
IDLES = ["1m", "5m", "10m", "30m"]
UNLESS_WITHINS = ["5m", "30m", "3h", "3h"]  # 3h > attempt_timeout: look-backs across attempts
DURATION_MS = {"1m": MIN, "5m": 5 * MIN, "10m": 10 * MIN, "30m": 30 * MIN, "3h": 3 * HOUR}
# `per` and distinct `field`: string fields, and `attrs.code` whose values are of mixed JSON types.
VALUE_FIELDS = ["channel", "type", "step", "entry", "attrs.reason", "attrs.code"]
PREDICATE_VALUES: dict[str, list[str]] = {
    "type": sorted(set(TYPES)),
    "channel": CHANNELS,
    "step": [*STEPS, "$key"],
    "entry": ENTRIES,
    "attrs.reason": REASONS,
    "attrs.code": ["42", "7"],
}
PREDICATE_FIELDS = sorted(PREDICATE_VALUES)


@st.composite
def predicates(draw: st.DrawFn, max_fields: int = 2) -> dict[str, Any]:
    """A predicate table: 1-``max_fields`` fields, each one value or a list of alternatives."""
    # Mostly on `type` and with one field, so that rules fire often enough to be compared.
    n = draw(st.sampled_from([1, 1, 1, max_fields]))
    fields = draw(st.lists(st.sampled_from([*PREDICATE_FIELDS, "type", "type", "type"]), min_size=n, max_size=n,
                           unique=True))
    pred: dict[str, Any] = {}
    for f in fields:
        values = draw(st.lists(st.sampled_from(PREDICATE_VALUES[f]), min_size=1, max_size=2, unique=True))
        pred[f] = values[0] if len(values) == 1 and draw(st.booleans()) else values
    return pred


@st.composite
def generic_rules(draw: st.DrawFn, name: str) -> dict[str, Any]:
    """One generic `[[moment]]` table of a random kind."""
    kind = draw(st.sampled_from(KINDS))
    rule: dict[str, Any] = {"kind": kind, "name": name}
    journeys = draw(st.sampled_from([None, ["cart"], ["5g_upgrade"], ["cart", "5g_upgrade"]]))
    if journeys is not None:
        rule["journeys"] = journeys
    if kind in ("count", "distinct", "absence") and draw(st.booleans()):
        rule["when"] = draw(predicates())
    if kind == "count":
        rule["threshold"] = draw(st.integers(1, 4))
    if kind == "distinct":
        rule["field"] = draw(st.sampled_from(VALUE_FIELDS))
        rule["threshold"] = draw(st.integers(2, 3))
    if kind in ("count", "distinct"):
        if draw(st.booleans()):
            rule["within"] = draw(st.sampled_from(WITHINS))
        if draw(st.booleans()):
            rule["per"] = draw(st.sampled_from(VALUE_FIELDS))
        if draw(st.booleans()):
            rule["unless"] = draw(predicates(max_fields=1))
            rule["unless_within"] = draw(st.sampled_from(UNLESS_WITHINS))
    if kind == "absence":
        rule["idle"] = draw(st.sampled_from(IDLES))
        if draw(st.booleans()):
            rule["until"] = draw(predicates(max_fields=1))
    if kind == "sequence":
        rule["first"] = draw(predicates(max_fields=1))
        rule["then"] = draw(predicates(max_fields=1))
        rule["within"] = draw(st.sampled_from(WITHINS))
        if draw(st.booleans()):
            rule["unless"] = draw(predicates(max_fields=1))
    return rule


@st.composite
def generic_packs(draw: st.DrawFn) -> dict[str, Any]:
    """A pack as ``tomllib.loads`` gives it: two journeys and 1-4 generic rules with distinct names."""
    n = draw(st.integers(1, 4))
    return {
        "pack": {"name": "random", "version": 1, "attempt_timeout": ATTEMPT_TIMEOUT},
        "journey": JOURNEYS,
        "moment": [draw(generic_rules(f"r{i}")) for i in range(n)],
    }


def boundaries(pack: dict[str, Any]) -> list[int]:
    """The pack's durations in ms (within, idle, unless_within) and the attempt timeout: gaps to aim at."""
    out = {ATTEMPT_TIMEOUT_MS}
    for rule in pack["moment"]:
        for key in ("within", "idle", "unless_within"):
            if key in rule:
                out.add(DURATION_MS[rule[key]])
    return sorted(out)


@st.composite
def gaps(draw: st.DrawFn, aims: list[int], sparse: bool = False) -> int:
    """Time to the next event: a tie, a short step, a boundary (0 or ±1 ms) or a long pause.

    ``sparse`` traffic has only ties and boundaries, so that the first window of an attempt to reach a
    threshold often spans exactly `within` (with short steps it is usually reached well inside it).
    """
    if sparse:
        return draw(st.sampled_from([0, *aims, *aims])) + draw(st.sampled_from([-1, 0, 0, 1]))
    how = draw(st.sampled_from(["tie", "short", "short", "boundary", "boundary", "boundary", "long"]))
    if how == "tie":
        return 0
    if how == "short":
        return draw(st.integers(1, 4 * MIN))
    if how == "boundary":
        return draw(st.sampled_from(aims)) + draw(st.sampled_from([-1, 0, 0, 1]))
    return draw(st.integers(ATTEMPT_TIMEOUT_MS - 10 * MIN, ATTEMPT_TIMEOUT_MS + 3 * HOUR))


@st.composite
def one_event(draw: st.DrawFn, eid: str, customer: str, ts: int, journey: str | None, type_: str) -> dict[str, Any]:
    """One valid schema-v1 event with random channel, step, entry and attrs."""
    d: dict[str, Any] = {"event_id": eid, "customer_id": customer, "ts": ts,
                         "channel": draw(st.sampled_from(CHANNELS)), "type": type_}
    if journey is not None:
        d["journey"] = journey
    steps = next((j["steps"] for j in JOURNEYS if j["id"] == journey), STEPS)
    step = draw(st.sampled_from([None, *steps, *[s for s in steps if s in ("checkout", "order_form", "payment")]]))
    if step is not None:
        d["step"] = step
    entry = draw(st.sampled_from([None, None, *ENTRIES]))
    if entry is not None:
        d["entry"] = entry
    attrs: dict[str, Any] = {}
    if draw(st.booleans()):
        attrs["reason"] = draw(st.sampled_from(REASONS))
    if draw(st.booleans()):
        attrs["code"] = draw(st.sampled_from(CODES))
    if draw(st.integers(0, 3)) == 0:
        attrs["amount"] = draw(st.integers(1, 500))
    if attrs:
        d["attrs"] = attrs
    return d


@st.composite
def traffic(draw: st.DrawFn, pack: dict[str, Any], max_events: int = 50) -> list[dict[str, Any]]:
    """Events of up to 3 customers for ``pack``, in input order (mostly by time, sometimes shuffled).

    Runs of events keep the same customer, journey and often type (or repeat the last event whole), so that
    thresholds are reached; event ids are random per customer (ties are then ordered by id, not by input
    order); some events are re-sent later in the input, as exact copies or with another payload at an earlier
    event's ts.
    """
    aims = boundaries(pack)
    sparse = draw(st.integers(0, 2)) == 0
    n = draw(st.integers(1, max_events))
    t = T0
    events: list[dict[str, Any]] = []
    used: set[str] = set()
    customer, type_ = "c1", "view"
    journey: str | None = "cart"
    for _ in range(n):
        if draw(st.integers(0, 3)) == 0:  # a new run
            customer = draw(st.sampled_from(["c1", "c2", "c3"]))
            journey = draw(st.sampled_from(["cart", "cart", "5g_upgrade", "5g_upgrade", None, "other"]))
        if draw(st.integers(0, 2)) == 0:
            type_ = draw(st.sampled_from(TYPES))
        if events and draw(st.integers(0, 3)) == 0:
            # On a boundary from an earlier event, not only the previous one (unless look-backs, wider windows).
            recent = [e for e in events if e["customer_id"] == customer][-5:] or events
            base = draw(st.sampled_from(recent))["ts"]
            t = max(t, base + draw(st.sampled_from(aims)) + draw(st.sampled_from([-1, 0, 1])))
        else:
            t = max(t, t + draw(gaps(aims, sparse)))
        eid = f"{customer}-{draw(st.integers(0, 999)):03d}"
        if eid in used:
            continue
        used.add(eid)
        last = next((e for e in reversed(events) if e["customer_id"] == customer), None)
        if last is not None and last.get("journey") == journey and draw(st.integers(0, 2)) == 0:
            # The same again (step, channel, entry, attrs): reaches thresholds of narrow `when` and `per`.
            events.append({**last, "event_id": eid, "ts": t})
        else:
            events.append(draw(one_event(eid, customer, t, journey, type_)))
        if type_ == "complete":  # a completion rarely repeats at once
            type_ = "view"
    for _ in range(draw(st.integers(0, 3)) if events else 0):
        original = draw(st.sampled_from(events))
        if draw(st.booleans()):
            events.append(dict(original))
        else:
            other = draw(st.sampled_from(events))
            changed = draw(one_event(original["event_id"], original["customer_id"], other["ts"],
                                     other.get("journey"), draw(st.sampled_from(TYPES))))
            events.append(changed)
    if draw(st.booleans()) and events:
        # The end of the input on a timer's due time (0 or ±1 ms): another customer's event without a journey.
        end = max(e["ts"] for e in events)
        last_of_each = {(e["customer_id"], e.get("journey")): e["ts"] for e in sorted(events, key=lambda e: e["ts"])}
        idles = [DURATION_MS[r["idle"]] for r in pack["moment"] if "idle" in r] or aims
        base = draw(st.sampled_from(sorted(set(last_of_each.values()))))
        at = base + draw(st.sampled_from(idles)) + draw(st.sampled_from([-1, 0, 0, 1]))
        events.append({"event_id": "end", "customer_id": "c9", "ts": max(at, end), "channel": "app",
                       "type": "view"})
    if draw(st.integers(0, 3)) == 0:
        events = draw(st.permutations(events))
    return events


@st.composite
def packs_and_traffic(draw: st.DrawFn, max_events: int = 50) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A random generic pack and random traffic aimed at its boundaries."""
    pack = draw(generic_packs())
    return pack, draw(traffic(pack, max_events))
