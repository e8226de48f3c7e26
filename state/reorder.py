"""The reorder buffer: events held until the watermark passes them, released in (ts, event_id) order.

In-order arrivals (the common case) wait in a plain queue, already sorted; stragglers go to a heap.
"""

from __future__ import annotations

import heapq
from collections import deque

from state.events import Event


class ReorderBuffer:
    """Events not yet released: in-order arrivals in ``queue``, stragglers in the heap ``heap``.

    ``seq`` breaks ties in the heap between equal (ts, event_id) pairs, so events never compare.
    """

    __slots__ = ("queue", "heap", "seq")

    def __init__(self, queue: deque[Event] | None = None, heap: list[tuple[int, str, int, Event]] | None = None,
                 seq: int = 0) -> None:
        self.queue: deque[Event] = queue if queue is not None else deque()
        self.heap: list[tuple[int, str, int, Event]] = heap if heap is not None else []
        self.seq = seq

    def push(self, ev: Event) -> None:
        """Hold an event no later than the latest seen: at the queue's end if it sorts there, else in the heap."""
        queue = self.queue
        if queue:
            last = queue[-1]
            if ev.ts_ms > last.ts_ms or (ev.ts_ms == last.ts_ms and ev.event_id >= last.event_id):
                queue.append(ev)
                return
        self.seq += 1
        heapq.heappush(self.heap, (ev.ts_ms, ev.event_id, self.seq, ev))
