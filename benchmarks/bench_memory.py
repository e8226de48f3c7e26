"""Memory per tracked customer and snapshot cost, measured in a fresh child process per size.

Each child feeds simulated traffic through ``state.shard.Shard`` objects (64
shards, as the pipeline keys them) without firing end-of-input timers, so every
customer is still tracked with a typical open journey, then reports RSS growth
per customer and the pickled snapshot size and time of all shards.
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

customers = int(sys.argv[1])
raw = lines(events_file(customers, 720, seed=5))
S = 64
groups = [[] for _ in range(S)]
for r in raw:
    groups[shard_of_raw(r, S)].append(r)
del raw
pack = load_rule_pack()
gc.collect()

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()

before = rss()
shards = [Shard(pack, lateness_ms=30_000) for _ in range(S)]
for s, g in enumerate(groups):
    for i in range(0, len(g), 4096):
        chunk = g[i:i + 4096]
        process(shards[s], [RawBatch("m", 0, chunk, list(range(len(chunk))))])
groups = None
gc.collect()
after = rss()
tracked = sum(len(s.customers) for s in shards)
open_attempts = sum(1 for s in shards for c in s.customers.values()
                    for a in c.attempts if a is not None and not a.ended)
t0 = time.perf_counter()
blobs = [s.snapshot() for s in shards]
snap_s = time.perf_counter() - t0
print(json.dumps({"tracked": tracked, "open": open_attempts, "bytes_per_customer": (after - before) / tracked,
                  "snapshot_bytes": sum(map(len, blobs)), "snapshot_s": snap_s}))
"""


def measure(customers: int) -> dict[str, float]:
    """Run one child and return its figures."""
    out = subprocess.run([sys.executable, "-c", _CHILD, str(customers)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    """Measure and write the ``memory`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    figs = []
    notes = []
    for size in (int(x) for x in a.sizes.split(",")):
        res = [measure(size) for _ in range(a.runs)]
        figs.append(Figure(f"RSS per tracked customer, {size:,} simulated customers",
                           tuple(r["bytes_per_customer"] for r in res), unit="bytes"))
        figs.append(Figure(f"snapshot bytes per tracked customer, {size:,}",
                           tuple(r["snapshot_bytes"] / r["tracked"] for r in res), unit="bytes"))
        figs.append(Figure(f"snapshot time of all 64 shards, {size:,}",
                           tuple(r["snapshot_s"] * 1000 for r in res), unit="ms"))
        notes.append(f"{size:,}: {int(res[0]['tracked']):,} customers tracked, {int(res[0]['open']):,} open attempts")
    body = (f"## Memory per tracked customer and snapshot cost\n\n{machine()}\n\n{table(figs)}\n\n"
            + "\n".join(f"- {n}" for n in notes))
    print(body)
    write_section("memory", body)


if __name__ == "__main__":
    main()
