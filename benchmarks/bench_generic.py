"""Per-event cost and memory of the generic-rule evaluator (state/generic) with 20 generic rules.

The pack is ten ``[[moment]]`` tables of the four generic kinds over the default pack's two journeys (20
rules). Events are parsed and ordered per customer outside the timed part; the timed loop does what the shard
will do for generic rules (dispatch by journey and event type, wake-ups before events, attempt timeout and
completion), once with the 20 rules and once with none (the bookkeeping alone), alternating, several runs;
times are CPU time of the process.
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from collections import defaultdict
from typing import Any

from benchmarks.harness import Figure, machine, write_section
from benchmarks.traffic import events_file, lines
from state.events import Event, parse_event
from state.generic import dispatch
from state.generic.base import NO_TS
from state.generic.dispatch import JourneyRules, States
from state.generic.schema import compile_rules
from state.rules import load_rule_pack

MOMENTS: list[dict[str, Any]] = [
    {"kind": "count", "name": "failed", "when": {"type": "fail"}, "threshold": 1},
    {"kind": "count", "name": "stuck", "when": {"type": "fail"}, "threshold": 3, "within": "30m"},
    {"kind": "distinct", "name": "maze", "when": {"step": "$key"}, "field": "entry", "per": "step", "threshold": 3,
     "within": "30m"},
    {"kind": "distinct", "name": "channel_hop", "field": "channel", "threshold": 3, "within": "60m"},
    {"kind": "absence", "name": "abandoned", "when": {"step": "$key"}, "idle": "10m"},
    {"kind": "count", "name": "browse_loop", "when": {"type": "view"}, "threshold": 4, "within": "15m", "per": "step",
     "unless": {"type": ["start", "submit"]}, "unless_within": "1h"},
    {"kind": "sequence", "name": "retry_after_fail", "first": {"type": "fail"}, "then": {"type": "start"},
     "within": "30m", "unless": {"type": "contact"}},
    {"kind": "absence", "name": "no_submit", "when": {"type": "start"}, "until": {"type": ["submit", "cancel"]},
     "idle": "20m"},
    {"kind": "distinct", "name": "reasons", "when": {"type": "fail"}, "field": "attrs.reason", "threshold": 2},
    {"kind": "sequence", "name": "cancel_then_contact", "first": {"type": "cancel"},
     "then": {"type": "contact", "channel": ["call_center", "ivr"]}, "within": "2h"},
]


def evaluate(customers: list[list[Event]], table: dict[str, JourneyRules], complete: dict[str, str], timeout: int,
             keep: list[dict[str, States]] | None = None) -> int:
    """Run every customer's ordered events through the rules as the shard would; return the number of firings."""
    fired = 0
    for evs in customers:
        states: dict[str, States] = {}
        last: dict[str, int] = {}
        for ev in evs:
            j = ev.journey
            if j is None:
                continue
            jr = table.get(j)
            if jr is None:
                continue
            sts = states.get(j)
            if sts is None:
                sts = states[j] = jr.new_states()
            t = ev.ts_ms
            due = jr.next_due(sts)
            if due != NO_TS and due <= t:
                fired += len(jr.wake(sts, t))
            prev = last.get(j)
            if prev is not None and t >= prev + timeout:
                jr.end_attempt(sts, t)
            last[j] = t
            fired += len(jr.on_event(sts, ev))
            if ev.type == complete[j]:
                jr.end_attempt(sts, t)
        if keep is not None:
            keep.append(states)
    return fired


def retained_bytes(raw: list[list[bytes]], table: dict[str, JourneyRules], complete: dict[str, str],
                   timeout: int) -> tuple[int, list[dict[str, States]]]:
    """Bytes the rules' states keep after a run, event ids and values they refer to included.

    The events are parsed inside the traced span and dropped before measuring, as the shard drops them: what
    is left is the states, their containers and the strings they hold.
    """
    keep: list[dict[str, States]] = []
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    customers = [[e for e in map(parse_event, lines) if isinstance(e, Event)] for lines in raw]
    evaluate(customers, table, complete, timeout, keep)
    del customers
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return after - before, keep


# A long attempt with a fresh `per` value every event (docs/rule-packs.md, Memory): what must stay flat.
LONG_MOMENTS: list[dict[str, Any]] = [
    {"kind": "count", "name": "sku_twice", "when": {"type": "view"}, "threshold": 2, "per": "attrs.sku"},
    {"kind": "count", "name": "sku_twice_10m", "when": {"type": "view"}, "threshold": 2, "per": "attrs.sku",
     "within": "10m"},
    {"kind": "distinct", "name": "skus_blocked", "field": "attrs.sku", "threshold": 5, "unless": {"type": "view"},
     "unless_within": "1h"},
]


def long_attempt(n: int, slices: int) -> None:
    """Per-event CPU cost over one attempt of ``n`` events, each with a new sku, in ``slices`` equal slices."""
    pack = load_rule_pack()
    rules = compile_rules("bench-long", LONG_MOMENTS, pack.journeys, pack.attempt_timeout_ms)
    jr = JourneyRules("cart", rules, pack.types)
    t0_ms = 1_767_225_600_000
    events = [Event(f"e{i:07d}", "c1", t0_ms + i * 1_000, "app", "view", "cart", "product", None, {"sku": f"s{i}"})
              for i in range(n)]
    sts = jr.new_states()
    per_slice = n // slices
    costs: list[float] = []
    gc.collect()
    for k in range(slices):
        chunk = events[k * per_slice:(k + 1) * per_slice]
        t0 = time.process_time()
        for ev in chunk:
            jr.on_event(sts, ev)
        costs.append((time.process_time() - t0) / per_slice * 1e6)
    dropped: dict[str, int] = {}
    jr.take_dropped(dropped)
    sizes = ", ".join(f"{r.name}: {_held(st)}" for r, st in zip(jr.rules, sts, strict=True))
    rows = "\n".join(f"| events {k * per_slice:,}–{(k + 1) * per_slice:,} | {c:.2f} |" for k, c in enumerate(costs))
    body = (f"## Generic rules over one long attempt ({n:,} events, a new `per` value every event)\n\n{machine()}\n\n"
            f"Rules: `count` 2 per `attrs.sku` (no `within`: the `max_groups` cap of 1000 holds it), the same within "
            f"10m (emptied windows pruned), `distinct` of 5 skus blocked by `unless` on every event (no `within`: "
            f"the 5 most recent values kept).\n\n| slice | µs CPU/event |\n|---|---:|\n{rows}\n\n"
            f"Last slice / first slice: {costs[-1] / costs[0]:.2f}. Held at the end: {sizes}. "
            f"Groups dropped by the cap: {dropped}.")
    print(body)
    write_section("generic-long", body)


def _held(st: object) -> str:
    groups = getattr(st, "groups", None)
    recs = getattr(st, "recs", None)
    if groups is not None:
        return f"{len(groups)} groups"
    return f"{len(recs) if recs is not None else 0} record fields"


def main() -> None:
    """Measure and write the ``generic`` section of RESULTS.md (``--long``: the ``generic-long`` one)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=240)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--long", type=int, default=0, help="measure one attempt of this many events instead")
    a = ap.parse_args()
    if a.long:
        long_attempt(a.long, 10)
        return
    pack = load_rule_pack()
    journeys = list(pack.journeys)
    rules = compile_rules("bench", MOMENTS, pack.journeys, pack.attempt_timeout_ms)
    complete = {j: d.complete_type for j, d in pack.journeys.items()}
    per: dict[str, list[tuple[Event, bytes]]] = defaultdict(list)
    for line in lines(events_file(a.customers, a.minutes)):
        e = parse_event(line)
        if isinstance(e, Event):
            per[e.customer_id].append((e, line))
    ordered = [sorted(evs, key=lambda x: (x[0].ts_ms, x[0].event_id)) for evs in per.values()]
    customers = [[e for e, _ in evs] for evs in ordered]
    raw = [[line for _, line in evs] for evs in ordered]
    del per, ordered
    n = sum(len(evs) for evs in customers)
    gc.set_threshold(100_000, 50, 1000)
    with_rules = {j: JourneyRules(j, rules, pack.types) for j in journeys}
    bare = {j: JourneyRules(j, [], pack.types) for j in journeys}
    t_rules: list[float] = []
    t_bare: list[float] = []
    fired = 0
    for _ in range(a.runs):
        for c, out in ((bare, t_bare), (with_rules, t_rules)):
            gc.collect()
            # CPU time of this process: the 2 cores are shared, and waiting for them is not the evaluator's cost.
            t0 = time.process_time()
            f = evaluate(customers, c, complete, pack.attempt_timeout_ms)
            out.append((time.process_time() - t0) / n * 1e6)
            fired = max(fired, f)
    total, keep = retained_bytes(raw, with_rules, complete, pack.attempt_timeout_ms)
    bare_total, _ = retained_bytes(raw, bare, complete, pack.attempt_timeout_ms)
    pairs = [sts for states in keep for sts in states.values()]
    n_states = sum(1 for sts in pairs for x in sts if x is not None)
    per_pair = (total - bare_total) / max(1, len(pairs))
    per_state = (total - bare_total) / max(1, n_states)
    extra = [r - b for r, b in zip(t_rules, t_bare, strict=True)]
    figs = [Figure("bookkeeping alone (dispatch, wake-ups, attempts; no rules)", tuple(t_bare), unit="µs CPU/event"),
            Figure("with the 20 generic rules", tuple(t_rules), unit="µs CPU/event"),
            Figure("the 20 rules' own cost (difference, same run)", tuple(extra), unit="µs CPU/event")]
    rows = "\n".join(
        f"| {f.name} | {f.median:.2f} | {min(f.values):.2f}–{max(f.values):.2f} | {len(f.values)} | {f.unit} |"
        for f in figs)
    # Run with a mypyc-compiled state/generic first on the path, it writes its own section.
    compiled = (dispatch.__file__ or "").endswith((".so", ".pyd"))
    how = ", compiled with mypyc" if compiled else ""
    body = (f"## Generic rules (state/generic{how}, 20 rules: 10 tables × 2 journeys; {n:,} simulated events, "
            f"{len(customers):,} customers, {fired:,} firings)\n\n{machine()}\n\n"
            f"| what | median | min–max | runs | unit |\n|---|---:|---:|---:|---|\n{rows}\n\n"
            f"Memory kept by the generic rules at the end of the input (tracemalloc, events parsed in the traced "
            f"span and dropped, minus the same run without rules): {per_pair:,.0f} B per (customer, journey) pair "
            f"with state ({len(pairs):,} pairs; the list of the journey's 10 rule slots, each state created when "
            f"its rule first reacts and dropped at attempt end when empty; windows with their event ids "
            f"included), {per_state:,.0f} B per rule state held ({n_states / max(1, len(pairs)):.1f} per pair). "
            f"Times are per event over all events (a rule that cannot react to an event's type is skipped by the "
            f"dispatch table).")
    print(body)
    write_section("generic-mypyc" if compiled else "generic", body)


if __name__ == "__main__":
    main()
