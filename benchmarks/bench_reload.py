"""Reload stall: how long a shard stops to install new rule-pack versions, with 100k tracked customers.

``flows.rule_reload`` loads and validates a changed ``--rules`` directory in its own thread; each shard then
installs the accepted versions at its next batch (``state.version_switch.install``), which is the only time
the dataflow stalls. Two cases: a version effective after the watermark (the live case: compile the versions,
nothing else), and one effective before it (a replay rewriting history: every customer's wake-up is
recomputed too). Measured over the 64 shards of one process (the sum is the stall of a 1-worker process).

    python -m benchmarks.bench_reload [--customers 100000] [--runs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure, machine, table, write_section
from state.batches import RawBatch
from state.routing import shard_of_raw
from state.rules import DEFAULT_PACK
from state.shard import Shard, process
from state.version_switch import install
from state.versions import PackVersions, load_versions

T0 = 1_767_225_600_000
SHARDS = 64


def _open_customers(n: int) -> list[list[bytes]]:
    """Every customer mid-journey at a key step (an abandonment pending), spread over the shards."""
    steps = (("landing", "app"), ("plan_select", "app"), ("order_form", "web"))
    groups: list[list[bytes]] = [[] for _ in range(SHARDS)]
    for k, (step, ch) in enumerate(steps):
        for i in range(n):
            raw = (b'{"event_id":"e%d-%d","customer_id":"c%07d","ts":%d,"channel":"%s","type":"view",'
                   b'"journey":"5g_upgrade","step":"%s"}' % (i, k, i, T0 + k * 120_000 + i * 100_000 // n,
                                                                ch.encode(), step.encode()))
            groups[shard_of_raw(raw, SHARDS)].append(raw)
    return groups


def _versions(d: Path, effective: int) -> PackVersions:
    text = DEFAULT_PACK.read_text()
    (d / "default.toml").write_text(text)
    (d / "v2.toml").write_text(text.replace("version = 1\n", f"version = 2\neffective_from = {effective}\n", 1)
                               .replace('idle = "10m"', 'idle = "15m"', 1))
    return load_versions(d)


def main() -> None:
    """Measure and write the ``reload`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    groups = _open_customers(a.customers)
    one = load_versions(DEFAULT_PACK)
    shards = [Shard(one.latest, versions=one) for _ in range(SHARDS)]
    for s, g in zip(shards, groups, strict=True):
        process(s, [RawBatch("bench", 0, g, list(range(len(g))))])
    tracked = sum(len(s.customers) for s in shards)
    wm = max(s.wm for s in shards)
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, effective in (("after the watermark (live)", wm + 3_600_000), ("before it (replay)", T0 - 1)):
            d = Path(tmp) / name.split()[0]
            d.mkdir()
            new = _versions(d, effective)
            times = []
            for _ in range(a.runs):
                t0 = time.perf_counter()
                for s in shards:
                    install(s, new)
                times.append((time.perf_counter() - t0) * 1000)
                for s in shards:
                    install(s, one)
            figures.append(Figure(f"install a version effective {name}, {SHARDS} shards", tuple(times), "ms"))
    body = (f"## Rule-pack reload stall\n\n{machine()}\n\n`python -m benchmarks.bench_reload --customers "
            f"{a.customers} --runs {a.runs}`: {tracked:,} customers tracked, each with an abandonment pending, in "
            f"{SHARDS} shards of one process; the time the shards stop to install a second version (loading and "
            f"validating the directory happens in the reloader's thread and is not counted).\n\n{table(figures)}\n")
    write_section("reload", body)
    print(body)


if __name__ == "__main__":
    main()
