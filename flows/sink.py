"""The pipeline's output step: every shard batch goes to every configured writer, then metrics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bytewax.outputs import DynamicSink, StatelessSinkPartition

from state.outputs import Outputs
from state.shard import wall_ms


class Writer(Protocol):
    """What a sink backend offers (JSONL, ClickHouse, Kafka)."""

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None: ...  # noqa: D102
    def flush(self) -> None: ...  # noqa: D102
    def close(self) -> None: ...  # noqa: D102


class _Partition(StatelessSinkPartition[tuple[str, Outputs]]):
    def __init__(self, writers: Sequence[Writer], on_written: Callable[[str, Outputs, int], None]) -> None:
        self._writers = writers
        self._on_written = on_written

    def write_batch(self, items: list[tuple[str, Outputs]]) -> None:
        for w in self._writers:
            for _key, out in items:
                for kind, rows in out.records():
                    w.add(kind, rows)
            # Raising here (after retries inside the writer) keeps the epoch open, so recovery replays it.
            w.flush()
        now = wall_ms()
        for key, out in items:
            self._on_written(key, out, now)

    def close(self) -> None:
        for w in self._writers:
            w.close()


class PipelineSink(DynamicSink[tuple[str, Outputs]]):
    """Write shard outputs to all writers; writers are built per worker.

    Args:
        make_writers: Builds this worker's writers.
        on_written: Called per shard batch after every writer has flushed (metrics, status).
    """

    def __init__(
        self,
        make_writers: Callable[[int], Sequence[Writer]],
        on_written: Callable[[str, Outputs, int], None],
    ) -> None:
        self._make = make_writers
        self._on_written = on_written

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self._make(worker_index), self._on_written)
