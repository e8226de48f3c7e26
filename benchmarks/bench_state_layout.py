"""Where state lives (DESIGN.md §7): one Bytewax key per customer vs keys = shards of customers.

Both variants run the real detectors (``state.customer.apply_event``) in Bytewax
0.21 on the same simulated input, in the same process, alternating runs:

- ``per-customer``: raw lines keyed by customer id (sliced from the bytes),
  ``stateful_batch`` per customer holding its ``CustomerState``; events are
  applied in arrival order (a key has no shared clock, so there is no reorder
  buffer and no timer can fire for an idle customer in replay — a semantic
  gap, not only a speed one). Snapshots pickle the customer (mutable state).
- ``per-shard``: the pipeline as shipped (``flows.dataflow``): 64 shard keys,
  lists of raw lines per shard, reorder buffer and timers per shard, snapshot
  only when recovery is on.
- ``per-shard + snapshots``: the same with a pickled snapshot of every touched
  shard every epoch (what recovery costs at a 1 s epoch).
"""

from __future__ import annotations

import argparse
import gc
import pickle
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main

from benchmarks.harness import Figure, machine, table, write_section
from benchmarks.traffic import events_file
from connectors.replay_source import JsonlFileSource
from flows.config import PipelineConfig
from flows.dataflow import build_dataflow
from state.customer import apply_event
from state.events import Event, parse_event
from state.record import CustomerState, seen_before
from state.rules import RulePack, load_rule_pack
from state.shard import Shard


class _Discard(DynamicSink[Any]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> StatelessSinkPartition[Any]:
        class _P(StatelessSinkPartition[Any]):
            def write_batch(self, items: list[Any]) -> None:
                return None

        return _P()


def _customer_key(raw: bytes) -> str:
    i = raw.find(b'"customer_id":"')
    j = raw.find(b'"', i + 15)
    return raw[i + 15 : j].decode()


class _CustomerLogic(StatefulBatchLogic[bytes, int, bytes]):
    def __init__(self, ctx: Shard, resume: bytes | None) -> None:
        self.ctx = ctx
        self.c: CustomerState | None = pickle.loads(resume) if resume else None  # noqa: S301

    def on_batch(self, values: list[bytes]) -> tuple[list[int], bool]:
        ctx = self.ctx
        n = 0
        for raw in values:
            ev = parse_event(raw, types=ctx.pack.types)
            if type(ev) is not Event:
                continue
            if self.c is None:
                self.c = CustomerState(len(ctx.ctx.journey_defs), ev.ts_ms)
            if seen_before(self.c, ev):
                continue
            apply_event(ctx.ctx, self.c, ev)
        out = ctx.take_outputs()
        n = len(out.moments)
        return ([n] if n else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes:
        return pickle.dumps(self.c, protocol=5)


def per_customer_flow(path: str, pack: RulePack) -> Dataflow:
    """One key per customer; real detectors; pickled snapshot per touched key."""
    ctx = Shard(pack)
    flow = Dataflow("layout_per_customer")
    src = JsonlFileSource([Path(path)], shards=1)
    raw = op.input("in", flow, src)
    lines = op.flat_map("lines", raw, lambda item: item[1].values if hasattr(item[1], "values") else [])
    keyed = op.key_on("key", lines, _customer_key)
    counts = op.stateful_batch("customers", keyed, lambda resume: _CustomerLogic(ctx, resume))
    op.output("out", counts, _Discard())
    return flow


def per_shard_flow(path: str, pack: RulePack, snapshots: bool) -> Dataflow:
    """The shipped pipeline with no writers."""
    cfg = PipelineConfig(source=f"file:{path}", sinks=(), metrics_port=None).validate()
    return build_dataflow(cfg, pack, lambda *_: None, snapshots=snapshots)


def _timed(flow: Dataflow, n: int, epoch_s: float) -> float:
    gc.collect()
    t0 = time.perf_counter()
    cli_main(flow, epoch_interval=timedelta(seconds=epoch_s))
    return n / (time.perf_counter() - t0)


def main() -> None:
    """Measure and write the ``state-layout`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=50_000)
    ap.add_argument("--minutes", type=float, default=720)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    path = events_file(a.customers, a.minutes)
    n = sum(1 for _ in path.open("rb"))
    pack = load_rule_pack()
    gc.set_threshold(100_000, 50, 1000)
    per_customer, per_shard, per_shard_snap = [], [], []
    for _ in range(a.runs):
        per_customer.append(_timed(per_customer_flow(str(path), pack), n, 1.0))
        per_shard.append(_timed(per_shard_flow(str(path), pack, snapshots=False), n, 1.0))
        per_shard_snap.append(_timed(per_shard_flow(str(path), pack, snapshots=True), n, 1.0))
    figs = [Figure("per-customer keys (stateful_batch, pickled snapshot per touched key)", tuple(per_customer)),
            Figure("per-shard keys, 64 shards (shipped; no snapshot without recovery)", tuple(per_shard)),
            Figure("per-shard keys + pickled shard snapshot every 1 s epoch", tuple(per_shard_snap)),
            Figure("ratio per-shard / per-customer (same run)",
                   tuple(s / c for s, c in zip(per_shard, per_customer, strict=True)), unit="×")]
    body = (f"## Where state lives: per-customer keys vs shard keys ({n:,} events, {a.customers:,} customers, "
            f"Bytewax, 1 worker, 1 s epochs)\n\n{machine()}\n\n{table(figs)}\n")
    print(body)
    write_section("state-layout", body)


if __name__ == "__main__":
    main()
