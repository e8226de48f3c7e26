"""How an HTTP thread reads a shard the worker is changing, without waiting for the worker's whole batch.

The worker applies a Bytewax batch (thousands of events) holding the gate's ``lock``. A reader that finds the
lock free reads at once, holding it. Otherwise it leaves its read with the gate and sets the shard's
``on_boundary``, which the worker calls after the next event it applies (``checkpoint``): the reader sees the
state as one whole event left it, never half an event, and waits for one event rather than the batch. Nobody
waiting, ``on_boundary`` is None and an event costs the worker one test, no call. A batch spends part of its
time outside event boundaries (parsing lines, taking its outputs), so the reader also polls the lock every
``POLL_S`` and reads itself once the worker let go.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Final, Generic, TypeVar

from state.shard import Shard

T = TypeVar("T")
POLL_S: Final = 0.001


class _Read(Generic[T]):
    __slots__ = ("done", "error", "fn", "value")

    def __init__(self, fn: Callable[[Shard], T]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None

    def run(self, shard: Shard) -> None:
        try:
            self.value = self.fn(shard)
        except Exception as e:  # noqa: BLE001 - handed to the reader, the worker goes on
            self.error = e
        self.done.set()


class ShardGate:
    """The lock a shard's batches hold, and the reads waiting for the worker's next event boundary.

    Args:
        lock: The lock the worker holds while it applies a batch (a new one by default).
    """

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.lock = lock if lock is not None else threading.Lock()
        self._waiting: list[_Read[Any]] = []
        self._mutex = threading.Lock()  # guards _waiting only (held for a list operation)

    def checkpoint(self, shard: Shard) -> None:
        """Run the waiting reads (the worker, holding ``lock``, between two events: ``Shard.on_boundary``)."""
        with self._mutex:
            reads = self._waiting[:]
            self._waiting.clear()
            shard.on_boundary = None
        for r in reads:
            r.run(shard)

    def read(self, shard: Shard, fn: Callable[[Shard], T]) -> T:
        """Return ``fn(shard)`` run while no event is half applied: now if no batch runs, else between two events.

        Raises:
            Exception: what ``fn`` raised.
        """
        if self.lock.acquire(blocking=False):
            try:
                return fn(shard)
            finally:
                self.lock.release()
        req: _Read[T] = _Read(fn)
        with self._mutex:
            self._waiting.append(req)
            shard.on_boundary = partial(self.checkpoint, shard)
        while not req.done.wait(POLL_S):
            if not self.lock.acquire(blocking=False):
                continue
            try:
                with self._mutex:
                    mine = any(r is req for r in self._waiting)
                    if mine:
                        self._waiting.remove(req)
                        if not self._waiting:
                            shard.on_boundary = None
                if mine:
                    return fn(shard)
            finally:
                self.lock.release()
            # Not waiting any more, and the lock was free: the worker ran it before letting go.
        if req.error is not None:
            raise req.error
        return req.value  # type: ignore[return-value]  # set by run() before done
