"""The ordered insert thread behind ``ClickHouseSink``: bounded, one batch at a time, a failed batch never dropped."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

Batch = tuple[str, list[dict[str, Any]]]


class InsertThread:
    """Insert handed-over batches on one thread, in the order they were handed over.

    Bounded: ``submit`` blocks while ``max_rows`` rows are pending, and every caller blocks while the current
    batch is being retried (``check``), so a slow or unavailable ClickHouse still holds the dataflow back.
    A failed batch is never dropped: it stays at the head of the queue, with everything behind it, and the
    error is raised on the caller's thread by ``check``, ``submit`` and ``drain`` until ``resume`` retries it.

    Args:
        write: Inserts one batch (with its own retries); raises when it gives up.
        max_rows: Rows that may wait in the queue (a larger batch is still taken when the queue is empty).
        name: Thread name.
    """

    def __init__(self, write: Callable[[str, list[dict[str, Any]]], None], max_rows: int, name: str) -> None:
        self._write = write
        self._max_rows = max_rows
        self._cv = threading.Condition()
        self._queue: deque[Batch] = deque()
        self._rows = 0
        self._error: BaseException | None = None
        self._retrying = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Block while the current batch is being retried; raise the error of a failed batch."""
        if not (self._retrying or self._error is not None):  # the common case, without taking the lock
            return
        with self._cv:
            while self._retrying and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error

    def submit(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Queue a batch; blocks while the queue is full or a batch is being retried.

        Raises:
            Exception: the error of a failed batch (this one is not queued then).
        """
        with self._cv:
            while True:
                if self._error is not None:
                    raise self._error
                if self._stopping:
                    raise RuntimeError("ClickHouseSink is closed")
                if not self._retrying and (not self._queue or self._rows + len(rows) <= self._max_rows):
                    break
                self._cv.wait()
            self._queue.append((kind, rows))
            self._rows += len(rows)
            self._cv.notify_all()

    def resume(self) -> None:
        """Retry a failed batch (and go on with the ones behind it)."""
        with self._cv:
            if self._error is not None:
                self._error = None
                self._cv.notify_all()

    def drain(self) -> None:
        """Wait until every queued batch is written.

        Raises:
            Exception: the error of a failed batch; it and the batches behind it stay queued.
        """
        with self._cv:
            while self._queue and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error

    def retrying(self) -> None:
        """Mark the current batch as being retried (called from ``write``'s retry hook)."""
        self._retrying = True

    def is_current(self) -> bool:
        """Tell whether the calling thread is this insert thread."""
        return threading.current_thread() is self._thread

    def pending(self) -> dict[str, int]:
        """Return queued rows per record kind."""
        counts: dict[str, int] = {}
        with self._cv:
            for kind, rows in self._queue:
                counts[kind] = counts.get(kind, 0) + len(rows)
        return counts

    def stop(self) -> None:
        """Finish the queue (unless a batch failed: those are given up) and end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._error is not None or not self._queue:
                    if self._stopping:
                        return
                    self._cv.wait()
                kind, rows = self._queue[0]  # dequeued only once written
            try:
                self._write(kind, rows)
            except BaseException as e:  # noqa: BLE001 - kept with its batch and raised on the caller's thread
                with self._cv:
                    self._error = e
                    self._retrying = False
                    self._cv.notify_all()
                continue
            with self._cv:
                self._queue.popleft()
                self._rows -= len(rows)
                self._retrying = False
                self._cv.notify_all()
