"""Thin Bytewax adapters around ``state.shard``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from flows.stopping import stop_requested
from state.batches import RawBatch, Tick
from state.outputs import Outputs
from state.shard import Shard, process

ShardItem = RawBatch | Tick


class SnapshotRestoreError(Exception):
    """A shard snapshot from the recovery store could not be loaded (corrupt, or from another rule pack)."""


class ShardLogic(StatefulBatchLogic[ShardItem, Outputs, bytes | None]):
    """One shard's state inside Bytewax's ``stateful_batch``.

    Snapshots pickle the shard only when recovery is on: Bytewax asks every
    touched key for a snapshot every epoch even without recovery.
    """

    _instances = itertools.count()

    def __init__(self, shard: Shard, resume: bytes | None, recovery: bool, tick_s: float) -> None:
        # Bytewax does not tell the builder its key; a process-unique name keeps per-shard gauges apart.
        shard.key = f"s{next(ShardLogic._instances)}"
        shard.out.shard = shard.key
        self.shard = shard
        if resume is not None:
            try:
                shard.restore(resume)
            except Exception as e:  # noqa: BLE001 - any failure here means the stored snapshot is unusable
                raise SnapshotRestoreError(f"{type(e).__name__}: {e}") from e
        self._recovery = recovery
        self._tick = timedelta(seconds=tick_s)
        self.snapshot_seconds = 0.0
        self.snapshot_bytes = 0

    def on_batch(self, values: list[ShardItem]) -> tuple[list[Outputs], bool]:
        if self.shard.live:
            # Bytewax postpones notify_at while batches keep coming; apply the wall clock here too, so a
            # shard whose own event times lag (a slow partition) still releases events on time.
            for item in values:
                if type(item) is RawBatch:
                    self.shard.feed(item)
                else:
                    self.shard.tick(item)  # type: ignore[arg-type]
            self.shard.on_wall_clock()
            out = self.shard.take_outputs()
            return ([out] if out else []), StatefulBatchLogic.RETAIN
        out = process(self.shard, values)
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def on_notify(self) -> tuple[list[Outputs], bool]:
        self.shard.on_wall_clock()
        out = self.shard.take_outputs()
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Outputs], bool]:
        # Bytewax calls this once every input partition of every process has ended; an input ended by
        # SIGTERM has not really ended, so nothing is released early.
        if not stop_requested():
            self.shard.end_of_input()
        out = self.shard.take_outputs(states=True)
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.shard.live:
            return None
        return datetime.now(UTC) + self._tick

    def snapshot(self) -> bytes | None:
        if not self._recovery:
            return None
        # Pending journey-state rows travel inside the snapshot (see Shard.take_outputs).
        t0 = time.perf_counter()
        blob = self.shard.snapshot()
        self.snapshot_seconds = time.perf_counter() - t0
        self.snapshot_bytes = len(blob)
        return blob


@operator
def detect(
    step_id: str,
    up: Stream[tuple[str, ShardItem]],
    make_shard: Callable[[], Shard],
    recovery: bool,
    tick_s: float = 1.0,
) -> Stream[tuple[str, Outputs]]:
    """Run the pure shard state machine per shard key.

    Args:
        step_id: Step id.
        up: ``(shard_key, RawBatch | Tick)`` items from a source.
        make_shard: Builds an empty shard.
        recovery: Whether snapshots are persisted.
        tick_s: Live mode: how often the wall clock advances idle shards.

    Returns:
        ``(shard_key, Outputs)`` per shard batch.
    """
    return op.stateful_batch("shards", up, lambda resume: ShardLogic(make_shard(), resume, recovery, tick_s))
