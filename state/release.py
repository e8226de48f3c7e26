"""Releasing a shard's held events and wake-ups up to its watermark, in event-time order.

The shard (``state.shard``) holds events in its reorder buffer and its customers' wake-ups in the
timer wheel; ``release`` applies those before the new watermark in (ts, event_id, origin) order, a wake-up
before the events of its time. ``release_in_order`` is the common case's shortcut, which the general
loop must agree with (tests compare the two through ``Shard.shortcut``). ``slowest_partition`` says how far
a partitioned replay's watermark may move.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from state.context import BatchContext
from state.deadlines import on_wake
from state.events import Event
from state.let_go import LetGo
from state.record import CustomerState
from state.reorder import ReorderBuffer
from state.wheel import BUCKET_BITS


def release(held: ReorderBuffer, ctx: BatchContext, customers: dict[str, CustomerState],
            apply: Callable[[Event], None], wm: int, tlimit: int, shortcut: bool, let_go: LetGo | None = None) -> None:
    """Apply the held events before ``wm`` and fire the wake-ups due by ``tlimit``, in event-time order.

    Args:
        held: The shard's reorder buffer.
        ctx: The shard's batch context (its timer wheel, outputs and clock).
        customers: The shard's customers (an evicted one is removed).
        apply: Applies one event (``Shard._apply``).
        wm: The new watermark: events before it are released.
        tlimit: Wake-ups due at or before it fire.
        shortcut: Use ``release_in_order`` while only in-order arrivals wait.
        let_go: Counts each wake-up handled (``Shard.let_go``; events count where they are applied).
    """
    wheel = ctx.wheel
    buf, near, buckets, queue = held.heap, wheel.near, wheel.buckets, held.queue
    pop = heapq.heappop
    popleft = queue.popleft
    ev: Event | None
    while True:
        if not buf and shortcut and queue:
            release_in_order(held, ctx, apply, wm, tlimit)
        # The next event is the smaller of the queue's head and the heap's top, by (ts, event_id, origin).
        ev = None
        from_heap = False
        if queue:
            ev = queue[0]
        if buf and (ev is None or (buf[0][0], buf[0][1], buf[0][2]) < (ev.ts_ms, ev.event_id, ev.origin)):
            ev = buf[0][4]
            from_heap = True
        if buckets:
            # Wake-ups due before the next event (or by the limit) may sit in buckets not yet opened.
            h = tlimit if ev is None or ev.ts_ms > tlimit else ev.ts_ms
            while buckets and buckets[0] << BUCKET_BITS <= h:
                wheel.open_bucket(pop(buckets), customers)
        if near and near[0][0] <= tlimit and (ev is None or near[0][0] <= ev.ts_ms):
            due, cid = pop(near)
            c = customers.get(cid)
            if c is None or c.wake != due:
                continue  # a stale filing: the customer's wake-up moved, or it is gone
            ctx.event_now = due
            if let_go is not None:
                let_go.count()
            if on_wake(ctx, c, cid, due):
                del customers[cid]
                ctx.out.evicted += 1
                ctx.write_marked(cid)  # a mark left would take the place of its next record's
        elif ev is not None and ev.ts_ms < wm:
            if from_heap:
                pop(buf)
            else:
                popleft()
            apply(ev)
        else:
            break


def release_in_order(held: ReorderBuffer, ctx: BatchContext, apply: Callable[[Event], None], wm: int,
                     tlimit: int) -> None:
    """The common case of ``release``, only in-order arrivals waiting: apply them in a tight loop while
    no wake-up (in the near heap, or in a bucket not opened yet) is due by the next one.

    Anything else goes once round the general loop, which this shortcut agrees with.
    """
    queue, wheel = held.queue, ctx.wheel
    near, buckets = wheel.near, wheel.buckets
    popleft = queue.popleft
    while queue:
        ev = queue[0]
        t = ev.ts_ms
        if t >= wm:
            break
        h = t if t < tlimit else tlimit
        if (near and near[0][0] <= h) or (buckets and buckets[0] << BUCKET_BITS <= h):
            break
        popleft()
        apply(ev)


def slowest_partition(partitions: frozenset[str], heard: dict[str, int], finals: dict[str, int]) -> int | None:
    """The largest event time of the slowest input partition not yet ended (all ended: the largest of all).

    None while an expected partition has not reported: it may still send anything.
    """
    low: int | None = None
    for p in partitions:
        if p in finals:
            continue
        m = heard.get(p)
        if m is None:
            return None
        if low is None or m < low:
            low = m
    return max(heard.values(), default=0) if low is None else low
