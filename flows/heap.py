"""The cyclic garbage collector kept off customer state: what survives a batch is frozen (issue 17).

Customer state is long-lived and acyclic: the young generation's collections found nothing to free in a replay,
yet each one walked ≈100,000 new state objects for 70-150 ms with the GIL held, the look-ups' p99
(benchmarks/RESULTS.md). ``gc.freeze()`` after each batch moves everything alive to the permanent generation in
O(1) and resets the young count, so collections only see one batch's objects. Refcounting still frees state as it
goes; only garbage in reference cycles would stay, so a sweep (``gc.unfreeze()`` then a full collection) runs
once per ``SWEEP_S``: a replay of 594,355 events left ≈20 such objects, and the sweep's pause is one full
collection of the heap.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from typing import Final

SWEEP_S: Final = 3600.0

log = logging.getLogger("cx.heap")


class Heap:
    """Freezes the heap after each batch and sweeps frozen cycles once per ``sweep_s`` (monotonic seconds)."""

    def __init__(self, sweep_s: float = SWEEP_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = False  # a run turns it on (start): flows built by tests alone leave the collector as it is
        self.sweep_s = sweep_s
        self._clock = clock
        self._next_sweep = clock() + sweep_s
        self.sweeps = 0

    def start(self) -> None:
        """A run begins: freeze after each batch from now on."""
        self._next_sweep = self._clock() + self.sweep_s
        self.enabled = True

    def stop(self) -> None:
        """A run ended: hand everything frozen back to the collector (its shards' object graphs become garbage)."""
        self.enabled = False
        gc.unfreeze()

    def settle(self) -> None:
        """After a batch: freeze what is alive; sweep when one is due."""
        if not self.enabled:
            return
        if self._clock() >= self._next_sweep:
            self.sweep()
        gc.freeze()

    def sweep(self) -> int:
        """Unfreeze and collect everything (the one full pause per ``sweep_s``); return the objects freed."""
        t0 = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        self.sweeps += 1
        self._next_sweep = self._clock() + self.sweep_s
        log.info("heap sweep: %d unreachable objects freed in %.0f ms", found, (time.perf_counter() - t0) * 1000)
        return found


HEAP = Heap()
