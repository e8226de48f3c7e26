"""The cyclic collector kept off customer state (flows.heap): frozen after each batch, swept once per interval."""

from __future__ import annotations

import gc
import subprocess
import sys
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from connectors.simulator import simulate, write_jsonl
from flows.heap import HEAP, Heap
from flows.operators import ShardLogic
from state.batches import RawBatch
from state.shard import Shard
from tests.helpers import PACK, ev, raws

ROOT = Path(__file__).resolve().parents[2]


class _Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    gc.unfreeze()
    yield
    HEAP.stop()  # unfreezes: nothing this test froze outlives it


def test_nothing_is_frozen_unless_a_run_started_it() -> None:
    heap = Heap()
    heap.settle()
    assert gc.get_freeze_count() == 0


def test_a_settled_heap_is_frozen_and_its_young_generation_is_empty() -> None:
    heap = Heap()
    heap.start()
    kept = [[i] for i in range(5_000)]  # tracked objects alive across the batch, as customer state is
    heap.settle()
    assert gc.get_freeze_count() >= len(kept)
    assert gc.get_count()[0] == 0  # a young collection now walks only objects made after this batch
    heap.stop()
    assert gc.get_freeze_count() == 0


def test_a_frozen_cycle_is_freed_by_the_sweep_once_it_is_due() -> None:
    now = [0.0]
    heap = Heap(sweep_s=60.0, clock=lambda: now[0])
    heap.start()
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    heap.settle()
    del cycle
    gc.collect()
    assert alive() is not None  # frozen: a collection does not see it
    now[0] = 59.0
    heap.settle()
    assert alive() is not None
    assert heap.sweeps == 0
    now[0] = 60.0
    heap.settle()
    assert alive() is None
    assert heap.sweeps == 1
    assert gc.get_freeze_count() > 0  # frozen again after the sweep
    now[0] = 100.0
    heap.settle()
    assert heap.sweeps == 1  # the next sweep is due 60 s after this one, not after the start


def test_a_shard_batch_settles_the_heap_during_a_run() -> None:
    logic = ShardLogic(Shard(PACK, lateness_ms=0), None, False, 1.0)
    HEAP.start()
    logic.on_batch([RawBatch("file:t", 0, raws([ev("e1", 0, "view", customer="c-1", step="product")]), [0])])
    assert gc.get_freeze_count() > 0
    assert gc.get_count()[0] == 0


def test_a_replay_ends_with_nothing_frozen_and_no_young_pause_over_state(tmp_path: Path) -> None:
    # In a child: the run's own collector. Its young collections must not walk the customer state (before, each
    # walked up to 100,000 state objects), and a run that ended leaves nothing frozen behind.
    child = """
import gc, runpy, sys
from state.customer import CustomerState
from state.journey import Attempt
from flows.heap import HEAP
sizes = []  # customer state objects the young generation held at each of its collections during the run
gc.callbacks.append(lambda phase, info: phase == "start" and info["generation"] == 0 and HEAP.enabled and sizes.append(
    sum(type(o) in (CustomerState, Attempt) for o in gc.get_objects(generation=0))))
import flows.runner
flows.runner.GC_THRESHOLDS = (10_000, 50, 1000)  # a young collection every 10,000 objects: several a run
sys.argv = ["moments", "run", "--source", "file:" + sys.argv[1] + "/in.jsonl", "--sink", "jsonl:" + sys.argv[1],
            "--no-metrics", "--status", "off"]
try:
    runpy.run_module("flows.cli", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("RESULT", gc.get_freeze_count(), len(sizes), max(sizes, default=0))
"""
    write_jsonl(simulate(3_000, 60, seed=5), tmp_path / "in.jsonl", None)
    out = subprocess.run([sys.executable, "-c", child, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    frozen, collections, most = map(int, out.stdout.split("RESULT")[1].split())
    assert frozen == 0
    assert "customers=3000" in out.stdout
    # Frozen after each batch, the young generation holds one batch's new customers at most (at 10,000 objects no
    # batch reaches a collection); without it, the 3,000 customers' state filled it: ≈1,400 state objects at each
    # of its collections.
    assert most < 100, (collections, most)
