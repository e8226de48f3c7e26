"""Hot path alone (state/): parse + full detection with the default pack vs the reference loop.

Both run in the same process on the same simulated lines, alternating, several
times; the target (issue 3) is a ratio ≥ 0.5 of the reference loop's events/s.
"""

from __future__ import annotations

import argparse
import gc

from benchmarks.harness import Figure, machine, rate, table, write_section
from benchmarks.reference_loop import reference_loop
from benchmarks.traffic import events_file, lines
from state.batches import RawBatch, Tick
from state.routing import shard_of_raw
from state.rules import RulePack, load_rule_pack
from state.shard import Shard, process

BATCH = 4096


def run_hot_path(raw: list[bytes], shards: int = 64, pack: RulePack | None = None) -> int:
    """Route, parse and detect over all lines as the dataflow does (per-shard batches); return moments.

    ``pack`` defaults to the default pack.
    """
    pack = pack if pack is not None else load_rule_pack()
    # As flows/dataflow.py builds them: each shard knows its index, so it checks where each event was routed.
    shard_objs = [Shard(pack, key=str(s), shards=shards) for s in range(shards)]
    moments = 0
    max_ts = 0
    for start in range(0, len(raw), BATCH):
        chunk = raw[start : start + BATCH]
        groups: list[list[bytes]] = [[] for _ in range(shards)]
        for line in chunk:
            groups[shard_of_raw(line, shards)].append(line)
        for s, g in enumerate(groups):
            if g:
                out = process(shard_objs[s], [RawBatch("bench", 0, g, list(range(len(g))), s)])
                moments += len(out.moments)
                max_ts = max(max_ts, out.max_ts_ms)
    for sh in shard_objs:
        moments += len(process(sh, [Tick(max_ts, final=True)]).moments)
    return moments


def main() -> None:
    """Measure and write the ``hot-path`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=720)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    raw = lines(events_file(a.customers, a.minutes))
    n = len(raw)
    gc.set_threshold(100_000, 50, 1000)  # as the pipeline runs (flows/runner.py)
    ref: list[float] = []
    hot: list[float] = []
    found: list[int] = []  # moments counted by each run
    moments = 0
    for _ in range(a.runs):
        ref.append(rate(n, lambda: reference_loop(raw)))
        gc.collect()
        hot.append(rate(n, lambda: found.append(run_hot_path(raw))))
        moments = found[-1]
        gc.collect()
    ratios = [h / r for h, r in zip(hot, ref, strict=True)]
    figs = [Figure("reference loop (parse + small state update)", tuple(ref)),
            Figure("hot path: route + parse + validate + full detection", tuple(hot)),
            Figure("ratio hot path / reference (same run)", tuple(ratios), unit="×")]
    body = (f"## Hot path alone (state/, {n:,} simulated events, {a.customers:,} customers, {moments:,} moments)\n\n"
            f"{machine()}\n\n{table(figs)}\n\nTarget: ratio ≥ 0.5. Median ratio: {sorted(ratios)[len(ratios)//2]:.2f}.")
    print(body)
    write_section("hot-path", body)


if __name__ == "__main__":
    main()
