"""Memory per tracked customer and snapshot cost, measured in a fresh child process per size.

Each child feeds simulated traffic through ``state.shard.Shard`` objects (64
shards, as the pipeline keys them) without firing end-of-input timers, so every
customer is still tracked as it was when its traffic stopped, then reports RSS
growth per tracked customer and the pickled snapshot size and time of all
shards (what one epoch costs with recovery on when every shard was touched).

The input is held as one bytes object per shard while RSS is measured, and each
shard's lines are split out only while it is processed: ten million small line
objects would otherwise share allocator arenas with the state and make RSS
depend on when they are freed. With ``--breakdown`` the child also sums the
live objects reachable from the shards by component (``sys.getsizeof`` rounded
up to the allocator's 16-byte size classes, shared objects counted once).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from benchmarks.harness import Figure, machine, table, write_section

_CHILD = r"""
import gc, json, sys, time, resource
from benchmarks.traffic import events_file, lines
from state.batches import RawBatch
from state.routing import shard_of_raw
from state.rules import load_rule_pack
from state.shard import Shard, process

customers, breakdown = int(sys.argv[1]), sys.argv[2] == "1"
scenario = sys.argv[3] if len(sys.argv) > 3 else "simulated"
store = None
if len(sys.argv) > 4 and sys.argv[4] == "1":  # also keep the look-ups' recent history (flows.recent), unbounded
    from flows.recent import Recent
    store = Recent(max_customers=1 << 40)
    store.clear(enabled=True)
if scenario == "open":
    # Every customer mid-journey: landing and plan choice in the app, then the order form on the web (a key
    # step: an abandonment is pending), all within six minutes, so nothing fires or expires.
    T0, STEPS = 1_767_225_600_000, (("landing", "app"), ("plan_select", "app"), ("order_form", "web"))
    raw = [b'{"event_id":"e%d-%d","customer_id":"c%07d","ts":%d,"channel":"%s","type":"view",'
           b'"journey":"5g_upgrade","step":"%s","entry":"home_banner"}'
           % (i, k, i, T0 + k * 120_000 + i * 100_000 // customers, ch.encode(), step.encode())
           for k, (step, ch) in enumerate(STEPS) for i in range(customers)]
else:
    raw = lines(events_file(customers, 720, seed=5))
S = 64
groups = [[] for _ in range(S)]
for r in raw:
    groups[shard_of_raw(r, S)].append(r)
del raw
blobs = [b"\n".join(g) for g in groups]
del groups
pack = load_rule_pack()
gc.collect()
gc.set_threshold(100_000, 50, 1000)  # as the pipeline runs (flows/runner.py)

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

before = rss()
shards = [Shard(pack, lateness_ms=30_000) for _ in range(S)]
t0 = time.perf_counter()
events = 0
for s, blob in enumerate(blobs):
    g = blob.split(b"\n")
    events += len(g)
    for i in range(0, len(g), 4096):
        chunk = g[i:i + 4096]
        out = process(shards[s], [RawBatch("m", 0, chunk, list(range(len(chunk))))])
        if store is not None:
            store.note(out)
        del out
    del g, chunk
process_s = time.perf_counter() - t0
gc.collect()
after = rss()
tracked = sum(len(s.customers) for s in shards)
open_attempts = sum(1 for s in shards for c in s.customers.values()
                    for a in c.attempts if a is not None and not a.ended)
t0 = time.perf_counter()
snaps = [s.snapshot() for s in shards]
snap_s = time.perf_counter() - t0
res = {"tracked": tracked, "open": open_attempts, "events": events, "process_s": process_s,
       "bytes_per_customer": (after - before) / tracked, "snapshot_bytes": sum(map(len, snaps)), "snapshot_s": snap_s}
del snaps
res["kept"] = len(store) if store is not None else 0
if breakdown:
    seen = set()
    acc, cnt = {}, {}
    for sh in shards:  # vocabularies and the pack are per process, not per customer
        ctx = sh.ctx
        seen.update(id(v) for v in ctx.vocab.values())
        seen.update(id(v) for v in ctx._paths.values())
        seen.add(id(ctx.no_attempts))
        seen.update(id(jp.initial) for jp in ctx.journey_defs)
    for r in pack.rules:
        seen.update(id(x) for x in (r.journey, *r.channels))

    def add(cat, o):
        if o is None or type(o) is bool or id(o) in seen or (type(o) is int and -5 <= o <= 256) or o == ():
            return False
        seen.add(id(o))
        acc[cat] = acc.get(cat, 0) + (sys.getsizeof(o) + 15) // 16 * 16
        cnt[cat] = cnt.get(cat, 0) + 1
        return True

    def deep(cat, o):
        if not add(cat, o):
            return
        if isinstance(o, (tuple, list)):
            for x in o:
                deep(cat, x)
        elif isinstance(o, dict):
            for k, v in o.items():
                deep(cat, k)
                deep(cat, v)
        elif hasattr(type(o), "__slots__"):
            for f in type(o).__slots__:
                deep(f"{cat}.{f}", getattr(o, f))

    for sh in shards:
        add("customers dict (table)", sh.customers)
        for cid, c in sh.customers.items():
            add("customer id string", cid)
            add("CustomerState object", c)
            for f in type(c).__slots__:
                v = getattr(c, f)
                if f == "attempts":
                    add("attempts container", v)
                    for a in v:
                        deep("Attempt", a)
                else:
                    deep(f"CustomerState.{f}", v)
        wheel = sh.ctx.wheel
        for part in (wheel.filed, wheel.buckets, wheel.near):
            deep("timers / wake-ups", part)
        deep("reorder buffer", list(sh.held.queue))
        deep("reorder buffer", sh.held.heap)
    res["breakdown"] = {k: (acc[k] / tracked, cnt[k] / tracked) for k in acc}
    n_attempts = sum(1 for s in shards for c in s.customers.values() for a in c.attempts if a is not None)
    res["attempts_per_customer"] = n_attempts / tracked
print(json.dumps(res))
"""


def measure(customers: int, breakdown: bool = False, scenario: str = "simulated",
            recent: bool = False) -> dict[str, float]:
    """Run one child and return its figures (``scenario``: simulated traffic, or ``open``: all mid-journey;
    ``recent``: the look-ups' recent history is kept as well)."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(customers), "1" if breakdown else "0", scenario,
                          "1" if recent else "0"], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _breakdown_table(res: dict[str, object]) -> str:
    rows = sorted(res["breakdown"].items(), key=lambda kv: -kv[1][0])  # type: ignore[attr-defined]
    total = sum(b for b, _n in (v for _k, v in rows))
    lines = ["| component | bytes per tracked customer | objects per tracked customer |", "|---|---:|---:|"]
    lines += [f"| {k} | {b:,.0f} | {n:.2f} |" for k, (b, n) in rows if b >= 0.5]
    lines.append(f"| **live objects, total** | **{total:,.0f}** | |")
    return "\n".join(lines)


def lookup_store(size: int, runs: int) -> None:
    """Measure RSS per tracked customer with and without the look-ups' recent history; write its section."""
    without = [measure(size) for _ in range(runs)]
    with_store = [measure(size, recent=True) for _ in range(runs)]
    figs = [Figure(f"RSS per tracked customer, state only, {size:,} simulated customers",
                   tuple(r["bytes_per_customer"] for r in without), unit="bytes"),
            Figure("the same with the look-ups' recent history (unbounded)",
                   tuple(r["bytes_per_customer"] for r in with_store), unit="bytes"),
            Figure("recent history: added per tracked customer",
                   tuple(w["bytes_per_customer"] - o["bytes_per_customer"] for w, o in zip(with_store, without,
                                                                                        strict=True)), unit="bytes"),
            Figure("state update and recent history per event",
                   tuple(r["process_s"] / r["events"] * 1e6 for r in with_store), unit="µs"),
            Figure("state update alone per event", tuple(r["process_s"] / r["events"] * 1e6 for r in without),
                   unit="µs")]
    r0 = with_store[0]
    body = (f"## Look-ups' recent history in memory (issue 17; flows.recent)\n\n{machine()}\n\n{table(figs)}\n\n"
            f"- {int(r0['events']):,} events; {int(r0['tracked']):,} customers tracked, {int(r0['kept']):,} of them "
            "in the recent history (customers with a journey step, a moment or a hand-off context)")
    print(body)
    write_section("lookup-memory", body)


def main() -> None:
    """Measure and write the ``memory`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-breakdown", action="store_true", help="skip the per-component breakdown at the largest size")
    ap.add_argument("--open-size", type=int, default=1_000_000,
                    help="customers in the all-mid-journey scenario (0 skips it)")
    ap.add_argument("--large-runs", type=int, default=1,
                    help="runs at 1M customers and more (RSS is deterministic for one input; each run takes minutes)")
    ap.add_argument("--lookup-store", type=int, default=0, metavar="CUSTOMERS",
                    help="only measure what the look-ups' recent history (flows.recent) adds, at this size")
    a = ap.parse_args()
    if a.lookup_store:
        lookup_store(a.lookup_store, a.runs)
        return
    sizes = [int(x) for x in a.sizes.split(",")]
    figs = []
    notes = []
    breakdown = ""
    for size in sizes:
        n_runs = a.runs if size < 1_000_000 else a.large_runs
        res = [measure(size) for _ in range(n_runs)]
        figs.append(Figure(f"RSS per tracked customer, {size:,} simulated customers",
                           tuple(r["bytes_per_customer"] for r in res), unit="bytes"))
        figs.append(Figure(f"snapshot bytes per tracked customer, {size:,}",
                           tuple(r["snapshot_bytes"] / r["tracked"] for r in res), unit="bytes"))
        figs.append(Figure(f"snapshot of all 64 shards (one epoch, every shard touched), {size:,}",
                           tuple(r["snapshot_s"] * 1000 for r in res), unit="ms"))
        figs.append(Figure(f"state update cost per event (events fed shard by shard), {size:,}",
                           tuple(r["process_s"] / r["events"] * 1e6 for r in res), unit="µs"))
        r0 = res[0]
        notes.append(f"{size:,}: {int(r0['events']):,} events; {int(r0['tracked']):,} customers tracked, "
                     f"{int(r0['open']):,} open attempts; snapshot {r0['snapshot_bytes'] / 1e6:,.0f} MB")
        if size == sizes[-1] and not a.no_breakdown:
            b = measure(size, breakdown=True)
            breakdown = (f"\n\nLive objects by component at {size:,} simulated customers "
                         f"({b['attempts_per_customer']:.2f} attempts per tracked customer):\n\n{_breakdown_table(b)}")
    if a.open_size:
        n_runs = a.runs if a.open_size < 1_000_000 else a.large_runs
        res = [measure(a.open_size, scenario="open") for _ in range(n_runs)]
        figs.append(Figure(f"RSS per customer with an open journey (all {a.open_size:,} mid-journey, at a key step)",
                           tuple(r["bytes_per_customer"] for r in res), unit="bytes"))
        figs.append(Figure(f"snapshot bytes per customer with an open journey, {a.open_size:,}",
                           tuple(r["snapshot_bytes"] / r["tracked"] for r in res), unit="bytes"))
        notes.append(f"open journeys: {int(res[0]['tracked']):,} customers tracked, {int(res[0]['open']):,} open "
                     "attempts (landing and plan choice in the app, order form on the web; an abandonment pending)")
    body = (f"## Memory per tracked customer and snapshot cost\n\n{machine()}\n\n{table(figs)}\n\n"
            + "\n".join(f"- {n}" for n in notes) + breakdown)
    print(body)
    write_section("memory", body)


if __name__ == "__main__":
    main()
