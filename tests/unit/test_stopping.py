"""flows.stopping: a requested stop ends wrapped input partitions without calling them early."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows import stopping


class _Part(StatefulSourcePartition[int, int]):
    def __init__(self, awake: datetime | None) -> None:
        self.calls = 0
        self.awake = awake

    def next_batch(self) -> list[int]:
        self.calls += 1
        return [self.calls]

    def next_awake(self) -> datetime | None:
        return self.awake

    def snapshot(self) -> int:
        return self.calls


class _Source(FixedPartitionedSource[int, int]):
    def __init__(self, awake: datetime | None) -> None:
        self.awake = awake

    def list_parts(self) -> list[str]:
        return ["p0"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _Part:
        return _Part(self.awake)


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    stopping.reset()
    yield
    stopping.reset()


def test_a_requested_stop_ends_every_partition() -> None:
    src = stopping.stoppable(_Source(None))
    assert isinstance(src, stopping.StoppableSource)
    assert src.list_parts() == ["p0"]
    part = src.build_part("input", "p0", None)
    assert part.next_batch() == [1]
    assert part.snapshot() == 1
    stopping.request_stop()
    with pytest.raises(StopIteration):
        part.next_batch()


def test_a_far_wake_up_is_shortened_but_the_input_is_not_read_before_it_is_due() -> None:
    due = datetime.now(UTC) + timedelta(hours=1)
    part = stopping.stoppable(_Source(due)).build_part("input", "p0", None)  # type: ignore[attr-defined]
    awake = part.next_awake()
    assert awake is not None
    assert awake <= datetime.now(UTC) + stopping.POLL
    assert part.next_batch() == []  # woken only to look at the stop flag
    assert part._inner.calls == 0
    stopping.request_stop()
    with pytest.raises(StopIteration):
        part.next_batch()
