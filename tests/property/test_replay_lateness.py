"""Replay results do not depend on batch boundaries (issue 12 item 9): lateness is judged per event.

Random traffic with out-of-order, late and duplicate events and some invalid lines goes through the real
replay source partition with random batch sizes, into real shards, and ends as a dataflow ends (Bytewax's
``on_eof`` → ``Shard.end_of_input``). Every batching must give the same outputs as one line per batch.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.replay_source import _RawPartition
from state.batches import RawBatch, Tick
from state.outputs import Outputs
from state.shard import Shard, process
from tests.helpers import MIN, PACK
from tests.property.test_detection_properties import streams

SHARDS = 3


@st.composite
def traffic(draw: st.DrawFn) -> list[bytes]:
    """Lines in arrival order: most in time order, some delayed by a few places (late or not), duplicates, junk."""
    events = draw(streams(max_events=40))
    keyed: list[tuple[float, bytes]] = []
    for i, e in enumerate(events):
        delay = draw(st.sampled_from([0, 0, 0, 1, 2, 5, 12]))
        keyed.append((i + delay + 0.5, orjson.dumps(e)))
        if draw(st.integers(0, 9)) == 0:  # redelivered a little later, as an at-least-once producer does
            keyed.append((i + draw(st.integers(0, 4)) + 0.7, orjson.dumps(e)))
        if draw(st.integers(0, 19)) == 0:
            keyed.append((i + 0.6, b'{"event_id":"x","customer_id":"c1","ts":"soon"}'))
    return [raw for _k, raw in sorted(keyed, key=lambda k: k[0])]


def _replay(lines: list[bytes], batch_lines: int, lateness_ms: int) -> dict[str, Any]:
    part = _RawPartition("file:t", lambda start: iter(lines[start:]), 0, SHARDS, batch_lines)
    shards = [Shard(PACK, lateness_ms=lateness_ms, clock=lambda: 0, shards=SHARDS) for _ in range(SHARDS)]
    outs: list[Outputs] = []
    while True:
        try:
            items = part.next_batch()
        except StopIteration:
            break
        per_key: dict[str, list[RawBatch | Tick]] = defaultdict(list)
        for key, item in items:
            per_key[key].append(item)
        outs += [process(shards[int(k)], v) for k, v in per_key.items()]
    for sh in shards:
        sh.end_of_input()
        outs.append(sh.take_outputs(states=True))
    states: dict[tuple[str, str, str], dict[str, Any]] = {}
    for o in outs:
        for r in o.states:  # coalesced per batch: compare the latest version of each attempt
            k = (r["customer_id"], r["journey"], r["attempt_id"])
            if k not in states or r["version"] >= states[k]["version"]:
                states[k] = r

    def rows(name: str) -> list[bytes]:
        return sorted(orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for o in outs for r in getattr(o, name))

    return {"moments": rows("moments"), "actions": rows("actions"), "tags": rows("tags"), "dead": rows("dead"),
            "steps": rows("steps"), "late": sum(o.late for o in outs), "states": states,
            "customers": sum(len(sh.customers) for sh in shards)}


@settings(max_examples=150, deadline=None)
@given(traffic(), st.integers(2, 50), st.sampled_from([30_000, 5 * MIN, 20 * MIN]))
def test_replay_outputs_do_not_depend_on_batch_boundaries(lines: list[bytes], batch_lines: int,
                                                          lateness_ms: int) -> None:
    one_by_one = _replay(lines, 1, lateness_ms)
    batched = _replay(lines, batch_lines, lateness_ms)
    assert batched == one_by_one
