"""Copies of one event id at one time in several partitions: the copy first in input order is kept (issue 12).

DESIGN §8 keeps, of events sharing an event_id, the first in input order; across partitions input order is
(place in the input list, position). The copies here differ in content (type, step), so which one survives shows
in the moments: every interleaving of the partitions' batches, with a restart or without, must give the outputs
of one partition holding only the winning copies.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.property.test_detection_properties import streams
from tests.property.test_partitioned_replay import _run

Split = tuple[list[bytes], list[list[bytes]], list[int], list[int], int | None]


@st.composite
def duplicated_splits(draw: st.DrawFn) -> Split:
    """(the winning copies as one partition, the copies split over K partitions, read order, batch sizes, restart)."""
    events = draw(streams(max_events=30))
    k = draw(st.integers(2, 4))
    parts: list[list[bytes]] = [[] for _ in range(k)]
    winners: list[bytes] = []
    for e in events:
        copies: list[tuple[int, int, bytes]] = []  # (partition, position, line)
        for n in range(draw(st.integers(1, 3))):
            c: dict[str, Any] = e if n == 0 else {
                **e, "type": draw(st.sampled_from(["view", "fail", "submit", "complete", "cancel"])),
                "step": draw(st.sampled_from(["browse", "checkout", "pay", e.get("step")]))}
            p = draw(st.integers(0, k - 1))
            line = orjson.dumps({f: v for f, v in c.items() if v is not None})
            parts[p].append(line)  # each partition keeps the stream's (time) order
            copies.append((p, len(parts[p]), line))
        winners.append(min(copies)[2])
    order = draw(st.lists(st.integers(0, k - 1), max_size=60))
    sizes = [draw(st.integers(1, 12)) for _ in range(k)]
    restart = draw(st.one_of(st.none(), st.integers(0, max(0, len(order) - 1))))
    return winners, parts, order, sizes, restart


@settings(max_examples=80, deadline=None)
@given(duplicated_splits())
def test_the_copy_first_in_input_order_is_kept_whatever_the_interleaving(split: Split) -> None:
    winners, parts, order, sizes, restart = split
    expected = _run([winners], [], [1])
    assert _run(parts, order, sizes) == expected
    assert _run(parts, list(reversed(order)), list(reversed(sizes))) == expected
    if restart is not None:
        assert _run(parts, order, sizes, restart) == expected
