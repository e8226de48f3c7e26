"""Invariants of the generic kinds on random packs and random traffic (hypothesis), through tests/generic_driver.

At most one firing per rule and attempt; the due time within the rule's window; evidence ordered, of the same
customer, journey and attempt, and matching the rule's predicates.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from state.generic.predicates import FieldRef, Predicate
from state.rules import parse_duration
from tests.generic_driver import run, to_event
from tests.helpers import MIN, T0

STEPS = ["product", "cart", "checkout", "payment"]
KEY = frozenset({"checkout", "payment"})
TYPES = ["view", "start", "submit", "fail", "contact", "complete"]
CHANNELS = ["app", "web", "sms", "call_center"]
ENTRIES = ["banner", "search", "push"]
DURATIONS = ["1m", "5m", "10m", "30m"]
TIMEOUT = 60 * MIN


@st.composite
def predicates(draw: st.DrawFn) -> dict[str, Any]:
    """A predicate over one or two fields, values sometimes a list, `$key` sometimes for `step`."""
    out: dict[str, Any] = {}
    for f in draw(st.lists(st.sampled_from(["type", "channel", "step", "attrs.reason"]), max_size=2, unique=True)):
        pool = {"type": TYPES[:5], "channel": CHANNELS, "step": [*STEPS, "$key"], "attrs.reason": ["a", "b"]}[f]
        vals = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=2, unique=True))
        out[f] = vals[0] if len(vals) == 1 else vals
    return out


@st.composite
def rules(draw: st.DrawFn, i: int) -> dict[str, Any]:
    """One random generic rule named r<i>."""
    kind = draw(st.sampled_from(["count", "distinct", "absence", "sequence"]))
    r: dict[str, Any] = {"kind": kind, "name": f"r{i}"}
    if kind == "sequence":
        r.update(first=draw(predicates()), then=draw(predicates()), within=draw(st.sampled_from(DURATIONS)))
        if draw(st.booleans()):
            r["unless"] = draw(predicates())
        return r
    if draw(st.booleans()):
        r["when"] = draw(predicates())
    if kind == "absence":
        r["idle"] = draw(st.sampled_from(DURATIONS))
        if draw(st.booleans()):
            r["until"] = draw(predicates())
        return r
    if kind == "distinct":
        r["field"] = draw(st.sampled_from(["channel", "entry", "step", "attrs.reason"]))
    r["threshold"] = draw(st.integers(1 if kind == "count" else 2, 3))
    if draw(st.booleans()):
        r["within"] = draw(st.sampled_from(DURATIONS))
    if draw(st.booleans()):
        r["per"] = draw(st.sampled_from(["step", "channel", "attrs.reason"]))
    if draw(st.booleans()):
        r.update(unless=draw(predicates()), unless_within=draw(st.sampled_from(DURATIONS)))
    return r


@st.composite
def packs(draw: st.DrawFn) -> dict[str, Any]:
    """A pack with journeys cart and 5g (same steps) and 1-4 random rules."""
    n = draw(st.integers(1, 4))
    return {
        "pack": {"attempt_timeout": "60m"},
        "journey": [{"id": j, "steps": STEPS, "key_steps": sorted(KEY)} for j in ("cart", "5g")],
        "moment": [draw(rules(i)) for i in range(n)],
    }


@st.composite
def traffic(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events of two customers; gaps on rule boundaries (±1 ms), ties in ts, and some duplicate ids."""
    events: list[dict[str, Any]] = []
    t = T0
    for i in range(draw(st.integers(1, 40))):
        t += draw(st.sampled_from([0, 1, MIN - 1, MIN, 5 * MIN, 10 * MIN, 10 * MIN + 1, 30 * MIN, TIMEOUT]))
        eid = f"e{draw(st.integers(0, i)):02d}" if draw(st.integers(0, 9)) == 0 else f"e{i:02d}"
        e: dict[str, Any] = {"event_id": eid, "customer_id": draw(st.sampled_from(["c1", "c2"])), "ts": t,
                             "channel": draw(st.sampled_from(CHANNELS)), "type": draw(st.sampled_from(TYPES))}
        journey = draw(st.sampled_from(["cart", "cart", "5g", None]))
        if journey:
            e["journey"] = journey
        for f, pool in (("step", STEPS), ("entry", ENTRIES)):
            v = draw(st.sampled_from([None, *pool]))
            if v:
                e[f] = v
        reason = draw(st.sampled_from([None, "a", "b", 1]))
        if reason is not None:
            e["attrs"] = {"reason": reason}
        events.append(e)
    # Shuffle a little: input order is not time order.
    return draw(st.permutations(events)) if draw(st.booleans()) else events


def _kept(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        out.setdefault((e["customer_id"], e["event_id"]), e)
    return {f"{c}/{i}": e for (c, i), e in out.items()}


def _attempts(kept: dict[str, dict[str, Any]]) -> dict[str, int]:
    """customer/event id -> attempt number of its journey (DESIGN.md §8)."""
    out: dict[str, int] = {}
    last: dict[tuple[str, str], tuple[int, int, bool]] = {}
    for k, e in sorted(kept.items(), key=lambda kv: (kv[1]["ts"], kv[1]["event_id"])):
        if "journey" not in e:
            continue
        key = (e["customer_id"], e["journey"])
        prev = last.get(key)
        n = 0 if prev is None else prev[1] + (prev[2] or e["ts"] - prev[0] >= TIMEOUT)
        last[key] = (e["ts"], n, e["type"] == "complete")
        out[k] = n
    return out


@settings(max_examples=300, deadline=None)
@given(packs(), traffic())
def test_generic_firings_keep_their_invariants(pack: dict[str, Any], events: list[dict[str, Any]]) -> None:
    kept = _kept(events)
    attempt = _attempts(kept)
    rules = {m["name"]: m for m in pack["moment"]}
    seen: set[tuple[str, str, int]] = set()
    for cid, rname, due, anchor, evidence in run(pack, events):
        jid, name = rname.split(".")
        r = rules[name]
        evs = [kept[f"{cid}/{i}"] for i in evidence]
        a = kept[f"{cid}/{anchor}"]
        assert all(e["journey"] == jid for e in evs)
        assert len({attempt[f"{cid}/{i}"] for i in evidence}) == 1
        assert [(e["ts"], e["event_id"]) for e in evs] == sorted((e["ts"], e["event_id"]) for e in evs)
        key = (cid, rname, attempt[f"{cid}/{anchor}"])
        assert key not in seen, "a rule fired twice in one attempt"
        seen.add(key)
        typed = [to_event(e) for e in evs]

        def pred(field: str, r: dict[str, Any] = r) -> Predicate:
            raw = r.get(field, {})
            return Predicate({k: v if isinstance(v, list) else [v] for k, v in raw.items()}, KEY)

        if r["kind"] in ("count", "distinct"):
            assert anchor == evidence[-1]
            assert due == a["ts"]
            assert all(pred("when").matches(e) for e in typed)
            if "within" in r:
                assert due - evs[0]["ts"] <= parse_duration(r["within"])
            if r["kind"] == "count":
                assert len(evidence) == r["threshold"]
            else:
                values = [FieldRef(r["field"]).value(e) for e in typed]
                assert None not in values
                assert len(set(values)) == len(values) >= r["threshold"]
            if "per" in r:
                assert len({FieldRef(r["per"]).value(e) for e in typed}) == 1
            if "unless" in r:
                lo = (due - parse_duration(r["unless_within"]), "")
                assert not _unless_between(kept, cid, jid, pred("unless"), lo, (a["ts"], anchor))
        elif r["kind"] == "absence":
            assert evidence == (anchor,)
            assert a["type"] != "complete"
            assert pred("when").matches(typed[0])
            assert due == a["ts"] + parse_duration(r["idle"])
        else:
            assert len(evidence) == 2
            assert anchor == evidence[1]
            assert due == a["ts"]
            assert pred("first").matches(typed[0])
            assert pred("then").matches(typed[1])
            assert due - evs[0]["ts"] <= parse_duration(r["within"])
            if "unless" in r:
                first = (evs[0]["ts"], evidence[0] + "\x00")  # strictly after the first event
                assert not _unless_between(kept, cid, jid, pred("unless"), first, (a["ts"], anchor))


def _unless_between(kept: dict[str, dict[str, Any]], cid: str, jid: str, unless: Predicate,
                    lo: tuple[int, str], hi: tuple[int, str]) -> bool:
    """Whether an event of the customer in the journey matching ``unless`` lies in [lo, hi) by (ts, event_id)."""
    return any(e["customer_id"] == cid and e.get("journey") == jid and lo <= (e["ts"], e["event_id"]) < hi
               and unless.matches(to_event(e)) for e in kept.values())
