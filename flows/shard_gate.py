"""How an HTTP thread reads a shard the worker is changing, without waiting for the worker's whole batch.

The worker applies a Bytewax batch (thousands of events) inside the gate (``with gate``: its ``lock``). A reader
that finds the lock free reads at once, holding it. Otherwise it leaves its read with the gate and sets the
shard's ``on_boundary``, which the worker calls after the next event it applies (``checkpoint``): the reader sees
the state as one whole event left it, never half an event, and waits for one event rather than the batch. Nobody
waiting, ``on_boundary`` is None and an event costs the worker one test, no call. A batch also spends time outside
event boundaries (parsing lines, taking its outputs): whoever lets go of the lock runs the reads still waiting
(``release``), so a reader sleeps until its read is done rather than waking to poll for the lock (each wake-up
takes the GIL from the worker). It polls only every ``POLL_S``, for an owner that lets go of a bare lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Final, Generic, TypeVar

from state.shard import Shard

T = TypeVar("T")
POLL_S: Final = 0.02


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

    The worker holds it as a lock (``with gate:``) to apply a batch; it runs the reads left waiting when it lets go.

    Args:
        lock: The lock the worker holds while it applies a batch (a new one by default).
    """

    def __init__(self, lock: threading.Lock | None = None) -> None:
        self.lock = lock if lock is not None else threading.Lock()
        self._waiting: list[_Read[Any]] = []
        self._mutex = threading.Lock()  # guards _waiting only (held for a list operation)
        self._shard: Shard | None = None

    def attach(self, shard: Shard) -> None:
        """The shard the worker's batches change (whose reads ``with gate:`` runs when it lets go)."""
        self._shard = shard

    def __enter__(self) -> None:
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        if self._shard is None:
            self.lock.release()
        else:
            self.release(self._shard)

    def release(self, shard: Shard) -> None:
        """Let go of ``lock`` (held), running the reads waiting for it first, and those that came meanwhile."""
        while True:
            if self._waiting:
                self.checkpoint(shard)
            self.lock.release()
            # A read may have joined after the test above and found the lock still held: then it waits for us.
            if not self._waiting or not self.lock.acquire(blocking=False):
                return

    def checkpoint(self, shard: Shard) -> None:
        """Run the waiting reads (holding ``lock``: the worker between two events, through ``Shard.on_boundary``)."""
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
                self.release(shard)
        req: _Read[T] = _Read(fn)
        with self._mutex:
            self._waiting.append(req)
            shard.on_boundary = partial(self.checkpoint, shard)
        # Whoever holds the lock from now runs it when letting go; if nobody does, this thread runs it.
        while not req.done.is_set():
            if self.lock.acquire(blocking=False):
                self.release(shard)
            else:
                req.done.wait(POLL_S)
        if req.error is not None:
            raise req.error
        return req.value  # type: ignore[return-value]  # set by run() before done
