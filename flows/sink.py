"""The pipeline's output step: every shard batch goes to every configured writer, then metrics.

A ``FixedPartitionedSink`` with one partition per shard key, so that Bytewax
calls ``snapshot()`` on it at the end of every epoch: that is where buffered
rows are flushed (with retries, blocking while a sink is down). An epoch
therefore closes, and with recovery its input positions and state are
committed, only after its outputs are durable — at-least-once, never lossy.
Between epochs writers flush by size and every ``flush_interval_s``; a writer that
inserts on its own thread (ClickHouse: ``start_flush``) is only handed its rows
then, so that the dataflow waits for those inserts at the epoch's end alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from state.outputs import Outputs
from state.shard import wall_ms


class Writer(Protocol):
    """What a sink backend offers (JSONL, ClickHouse, Kafka).

    A writer may also offer ``start_flush()``: hand its buffered rows over to be written without waiting
    (``flush`` must then wait for everything handed over), and ``kinds``: the record kinds it writes (rows of
    other kinds it would ignore; journey step rows are then not made dicts for it).
    """

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None: ...  # noqa: D102
    def flush(self) -> None: ...  # noqa: D102
    def close(self) -> None: ...  # noqa: D102


_LIVE: list[_ProcessWriters] = []


def flush_all() -> None:
    """Flush every writer of this process (graceful shutdown)."""
    for pw in list(_LIVE):
        pw.flush()


class _ProcessWriters:
    """The writers of this process, shared by its workers' sink partitions.

    A background thread flushes rows that have waited ``flush_interval_s``, so an
    output arrives even when no further batch follows it (live traffic that stops).
    """

    def __init__(self, make: Callable[[int], Sequence[Writer]], flush_interval_s: float) -> None:
        self._make = make
        self._writers: Sequence[Writer] | None = None
        self._lock = threading.Lock()
        self._interval = flush_interval_s
        self._last_flush = time.monotonic()
        self._pending = False
        self._users = 0
        self._stop = threading.Event()
        self._kinds: frozenset[str] | None = None  # what the writers write (None: all, or not known)

    def acquire(self) -> Sequence[Writer]:
        with self._lock:
            if self._writers is None:
                self._writers = self._make(0)
                kinds = [getattr(w, "kinds", None) for w in self._writers]
                self._kinds = None if None in kinds else frozenset().union(*kinds)  # type: ignore[arg-type]
                _LIVE.append(self)
                threading.Thread(target=self._flusher, name="sink-flusher", daemon=True).start()
            self._users += 1
            return self._writers

    def _flusher(self) -> None:
        while not self._stop.wait(self._interval / 2):
            with self._lock:
                if self._pending and time.monotonic() - self._last_flush >= self._interval:
                    try:
                        self._flush_locked(wait=False)
                    except Exception:  # noqa: BLE001 - the dataflow's own flush raises and keeps the epoch open
                        logging.getLogger("cx.sink").exception("background flush failed; retried by the epoch")

    def write(self, outputs: list[Outputs]) -> None:
        writers = self._writers or ()
        with self._lock:
            for out in outputs:
                for kind, rows in out.records(self._kinds):
                    for w in writers:
                        w.add(kind, rows)
            self._pending = True
            if time.monotonic() - self._last_flush >= self._interval:
                self._flush_locked(wait=False)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self, wait: bool = True) -> None:
        for w in self._writers or ():
            # Raises after its own retries only on permanent errors: the epoch then stays open. Between epochs
            # nothing needs to be durable yet: waiting for another thread's inserts would only stall the flow.
            start = None if wait else getattr(w, "start_flush", None)
            (start or w.flush)()
        self._pending = False
        self._last_flush = time.monotonic()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._writers is not None:
                self._stop.set()
                for w in self._writers:
                    try:
                        w.close()
                    except Exception:  # noqa: BLE001 - see below
                        # Bytewax closes partitions from a destructor, where a raise is a panic during the unwinding
                        # of the error that stopped the worker, and the process hangs instead of exiting. Rows a
                        # writer cannot write by now were refused before (epochs end with a flush that raises).
                        logging.getLogger("cx.sink").exception("closing a writer failed")
                self._writers = None
                if self in _LIVE:
                    _LIVE.remove(self)


class _Partition(StatefulSinkPartition[Outputs, None]):
    def __init__(self, shared: _ProcessWriters, on_written: Callable[[str, Outputs, int], None]) -> None:
        self._shared = shared
        self._on_written = on_written
        shared.acquire()

    def write_batch(self, values: list[Outputs]) -> None:
        self._shared.write(values)
        now = wall_ms()
        for out in values:
            self._on_written(out.shard, out, now)

    def snapshot(self) -> None:
        self._shared.flush()
        return None

    def close(self) -> None:
        self._shared.release()


class PipelineSink(FixedPartitionedSink[Outputs, None]):
    """Write shard outputs to all writers of the process; flush at every epoch's end.

    Args:
        shards: Number of shard keys (one sink partition each).
        make_writers: Builds the process's writers (called once per process).
        on_written: Called per shard batch after it was handed to every writer (metrics, status).
        flush_interval_s: Flush buffered rows at least this often while input flows.
    """

    def __init__(
        self,
        shards: int,
        make_writers: Callable[[int], Sequence[Writer]],
        on_written: Callable[[str, Outputs, int], None],
        flush_interval_s: float = 1.0,
    ) -> None:
        self._parts = [str(i) for i in range(shards)]
        self._shared = _ProcessWriters(make_writers, flush_interval_s)
        self._on_written = on_written

    def list_parts(self) -> list[str]:
        return self._parts

    def part_fn(self, item_key: str) -> int:
        return int(item_key)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Partition:
        return _Partition(self._shared, self._on_written)
