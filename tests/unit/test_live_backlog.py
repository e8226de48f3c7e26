"""Live with a backlog: the wall clock waits until every partition has caught up, so old input is read in event time.

Before, the wall clock moved a live watermark whatever was still unread: after an outage, or behind a consumer lag
longer than the lateness, every backlog event came late and customers' wake-ups fired before the events that
would have cancelled them (an abandonment for a customer who had come back).
"""

from __future__ import annotations

from typing import Any

import orjson

from state.batches import RawBatch, Tick
from state.outputs import Outputs
from state.shard import Shard
from tests.helpers import MIN, PACK, T0, ev

SEC = 1_000
P0, P1 = "kafka:cx.events[0]", "kafka:cx.events[1]"


def _shard(now: list[int], partitions: frozenset[str] = frozenset({P0, P1}), urgent_ms: int = 0) -> Shard:
    return Shard(PACK, live=True, clock=lambda: now[0], partitions=partitions, urgent_lateness_ms=urgent_ms)


def _feed(sh: Shard, events: list[dict[str, Any]], ticks: list[Tick]) -> Outputs:
    # As flows.operators does live: the batch's events and ticks, then the wall clock.
    items = [orjson.dumps(e) for e in events]
    if items:
        sh.feed(RawBatch(P0, 0, items, list(range(len(items)))))
    for t in ticks:
        sh.tick(t)
    sh.on_wall_clock()
    return sh.take_outputs()


def _rules(outs: list[Outputs]) -> list[str]:
    return [m["rule"] for o in outs for m in o.moments]


CHECKOUT = ev("c1-s", 0, "submit", customer="c1", step="checkout")
BACK = ev("c1-d", 5 * MIN, "complete", customer="c1", step="payment")  # came back and finished: no abandonment


def test_a_backlog_is_read_in_event_time_and_no_wake_up_fires_before_its_events() -> None:
    now = [T0 + 60 * MIN]  # the worker was down for an hour
    sh = _shard(now)
    outs = [_feed(sh, [CHECKOUT], [Tick(T0, partition=P0, behind=True), Tick(0, partition=P1)])]
    assert sh.wm == T0 - 30 * SEC  # event time only: partition 0 has more to read
    outs.append(_feed(sh, [BACK], [Tick(T0 + 5 * MIN, partition=P0)]))
    assert sh.wm == now[0] - 30 * SEC  # caught up: the wall clock again
    assert _rules(outs) == []
    assert sum(o.late for o in outs) == 0


def test_before_the_change_the_wall_clock_fired_the_abandonment_first() -> None:
    # The same input to a shard that expects no partitions (as every live shard did): a false abandonment.
    now = [T0 + 60 * MIN]
    sh = _shard(now, partitions=frozenset())
    outs = [_feed(sh, [CHECKOUT], []), _feed(sh, [BACK], [])]
    assert _rules(outs) == ["cart.abandoned"]
    assert sum(o.late for o in outs) == 1


def test_a_partition_not_heard_from_holds_the_wall_clock() -> None:
    now = [T0 + 60 * MIN]
    sh = _shard(now)
    outs = [_feed(sh, [CHECKOUT], [Tick(T0, partition=P0)])]  # partition 1 has not reported since the start
    assert sh.wm == 0  # nothing is known of partition 1's backlog yet, as a replay waits for every partition
    outs.append(_feed(sh, [], [Tick(0, partition=P1)]))  # an empty partition at its end reports too
    assert sh.wm == now[0] - 30 * SEC
    assert _rules(outs) == ["cart.abandoned"]  # nothing came back: the abandonment is right, once caught up


def test_a_partition_falling_behind_again_stops_the_wall_clock_until_it_catches_up() -> None:
    now = [T0 + 10 * SEC]
    sh = _shard(now)
    _feed(sh, [ev("c1-v", 0, customer="c1", step="product")], [Tick(T0, partition=P0), Tick(0, partition=P1)])
    assert sh.wm == now[0] - 30 * SEC
    now[0] += 5 * MIN
    _feed(sh, [], [Tick(T0 + SEC, partition=P1, behind=True)])
    assert sh.wm == T0 + 10 * SEC - 30 * SEC  # held where it was: partition 1's backlog comes first
    _feed(sh, [], [Tick(T0 + 2 * SEC, partition=P1)])
    assert sh.wm == now[0] - 30 * SEC


def test_the_urgent_lane_follows_event_time_during_a_backlog() -> None:
    # A failed payment read from a backlog waits for its customer's events up to 5 s of event time after it, not
    # for the wall clock (an hour ahead), which would apply it before them.
    now = [T0 + 60 * MIN]
    sh = _shard(now, urgent_ms=5 * SEC)
    fail = ev("c1-f", 10 * SEC, "fail", customer="c1", step="payment")
    out = _feed(sh, [ev("c1-s", 0, "start", customer="c1", step="cart"), fail],
                [Tick(T0 + 10 * SEC, partition=P0, behind=True), Tick(0, partition=P1)])
    assert out.moments == []
    out = _feed(sh, [ev("c1-c", 9 * SEC, "submit", customer="c1", step="checkout"),
                     ev("c2-v", 16 * SEC, customer="c2", step="product")],
                [Tick(T0 + 16 * SEC, partition=P0, behind=True)])
    assert [m["rule"] for m in out.moments] == ["cart.failed"]
    assert (out.urgent_reordered, out.late) == (0, 0)


def test_a_backlog_over_two_partitions_follows_the_slower_one_as_a_replay_does() -> None:
    # Partition 0 is read to its end before partition 1 starts (what a consumer does with a backlog on each): its
    # largest time must not make partition 1's earlier events late.
    now = [T0 + 60 * MIN]
    sh = _shard(now)
    outs = [_feed(sh, [CHECKOUT, ev("f", 9 * MIN, customer="f", step="product")],
                  [Tick(T0 + 9 * MIN, partition=P0), Tick(0, partition=P1, behind=True)])]
    assert sh.wm <= 0  # partition 1 is behind and has read nothing yet
    items = [orjson.dumps(BACK)]
    sh.feed(RawBatch(P1, 1, items, [0]))  # c1's payment, from the other partition
    sh.tick(Tick(T0 + 5 * MIN, partition=P1, behind=True))
    sh.on_wall_clock()
    outs.append(sh.take_outputs())
    assert sh.wm == T0 + 5 * MIN - 30 * SEC
    outs.append(_feed(sh, [], [Tick(T0 + 5 * MIN, partition=P1)]))  # caught up
    assert sh.wm == now[0] - 30 * SEC
    assert _rules(outs) == []
    assert sum(o.late for o in outs) == 0
