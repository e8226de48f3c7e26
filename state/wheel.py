"""The timer wheel: one wake-up per customer, filed by coarse bucket and heap-sorted only when near.

A filing costs one list slot rather than a heap tuple and its due time. Each customer carries its own
wake-up time (``CustomerState.wake``); a filing whose customer's wake-up has moved since is stale and
skipped when its bucket opens or its heap entry comes up.
"""

from __future__ import annotations

import heapq
from typing import Final

from state.record import CustomerState

# Buckets of 2**22 ms (about 70 minutes) of event time.
BUCKET_BITS: Final = 22


class TimerWheel:
    """Wake-ups of a shard's customers: far ones in ``buckets`` of customer ids, near ones in the heap ``near``.

    Buckets up to ``near_upto`` have been moved into ``near`` (entries ``(due, customer id)``).
    """

    __slots__ = ("filed", "buckets", "near", "near_upto")

    def __init__(self) -> None:
        self.filed: dict[int, list[str]] = {}
        self.buckets: list[int] = []  # heap of the bucket numbers in ``filed``
        self.near: list[tuple[int, str]] = []
        self.near_upto = -1

    def file(self, cid: str, due: int) -> None:
        """File a wake-up of customer ``cid`` at ``due`` (an earlier filing of it becomes stale)."""
        b = due >> BUCKET_BITS
        if b <= self.near_upto:
            heapq.heappush(self.near, (due, cid))
            return
        filed = self.filed.get(b)
        if filed is None:
            self.filed[b] = [cid]
            heapq.heappush(self.buckets, b)
        else:
            filed.append(cid)

    def open_bucket(self, b: int, customers: dict[str, CustomerState]) -> None:
        """Move the live wake-ups of bucket ``b`` into the near heap."""
        self.near_upto = b
        near = self.near
        for cid in self.filed.pop(b):
            c = customers.get(cid)
            if c is not None and c.wake >> BUCKET_BITS == b:
                heapq.heappush(near, (c.wake, cid))
