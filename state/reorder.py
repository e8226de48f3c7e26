"""The reorder buffer: events held until the watermark passes them, released in (ts, event_id, origin) order.

In-order arrivals (the common case) wait in a plain queue, already sorted; stragglers go to a heap. The origin
(``Event.origin``: place in the input, then position) only matters between copies of one event id at one time:
the copy first in input order is released first, and de-duplication keeps it, however the input's partitions
interleave on arrival.
"""

from __future__ import annotations

import heapq
from collections import deque

from state.events import Event

HeapEntry = tuple[int, str, int, int, Event]
"""(ts, event_id, origin, seq, event): ``seq`` breaks ties between equal keys, so events never compare."""


class ReorderBuffer:
    """Events not yet released: in-order arrivals in ``queue``, stragglers in the heap ``heap``."""

    __slots__ = ("queue", "heap", "seq")

    def __init__(self, queue: deque[Event] | None = None, heap: list[HeapEntry] | None = None,
                 seq: int = 0) -> None:
        self.queue: deque[Event] = queue if queue is not None else deque()
        self.heap: list[HeapEntry] = heap if heap is not None else []
        self.seq = seq

    def push(self, ev: Event) -> None:
        """Hold an event no later than the latest seen: at the queue's end if it sorts there, else in the heap."""
        queue = self.queue
        if queue:
            last = queue[-1]
            if ev.ts_ms > last.ts_ms or (ev.ts_ms == last.ts_ms and (
                    ev.event_id > last.event_id or (ev.event_id == last.event_id and ev.origin >= last.origin))):
                queue.append(ev)
                return
        self.seq += 1
        heapq.heappush(self.heap, (ev.ts_ms, ev.event_id, ev.origin, self.seq, ev))


def upgrade_heap(heap: list[tuple[object, ...]]) -> list[HeapEntry]:
    """Return a heap restored from a snapshot with (ts, event_id, origin, seq, event) entries.

    Snapshots taken before origins were kept hold (ts, event_id, seq, event): their events have origin -1,
    so arrival order (seq) still decides between them, as it did.
    """
    if not heap or len(heap[0]) == 5:
        return heap  # type: ignore[return-value]
    out: list[HeapEntry] = [(t, e, ev.origin, s, ev) for t, e, s, ev in heap]  # type: ignore[misc, attr-defined]
    heapq.heapify(out)
    return out
