"""The built-in traffic simulator as an input: the replay source's partition fed by the simulator's lines."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

from bytewax.inputs import FixedPartitionedSource

from connectors.disorder import DisorderHook
from connectors.placement import Placement, hello_items
from connectors.replay_source import Item, Position, _part_name, _part_of, _RawPartition, _resume
from state.batches import Hello
from state.events import BASE_TYPES


class SimulatorSource(FixedPartitionedSource[Item, Position]):
    """The built-in traffic simulator as an input, optionally paced.

    One partition; in a cluster, one per process, each generating the whole (deterministic) stream and
    keeping the shards of its own process.

    Args:
        make_lines: Factory of the simulator's serialised events (deterministic).
        shards: Number of shards.
        rate: Events per second of wall time, or None for as fast as possible.
        realtime: Release each event only once the wall clock reaches its event time (live mode).
        batch_lines: Lines per batch.
        types: Event types the rule pack knows (for the tick's validity check).
        placement: This process's place in the cluster (None: a single partition for the whole cluster).
        max_future_ms: Live clock: how far ahead of the wall clock a line's time may be to move the ticks
            (the shards' ``--max-future``); None in replay.
        hello: This process's settings, sent to the other processes of a cluster before the first lines.
        cluster: The cluster the hello goes to (default: ``placement``; live, the one partition reads for all).
        on_disorder: Called once per batch with the disorder of its lines (see ``DisorderHook``).
    """

    def __init__(
        self, make_lines: Callable[[], Iterator[bytes]], shards: int, rate: float | None = None,
        batch_lines: int = 4096,
        types: Collection[str] = BASE_TYPES,
        placement: Placement | None = None,
        realtime: bool = False,
        max_ts: int = 0,
        max_future_ms: int | None = None,
        hello: Hello | None = None,
        cluster: Placement | None = None,
        on_disorder: DisorderHook | None = None,
    ) -> None:
        self._hello = hello
        self._cluster = cluster or placement
        self._types = types
        self._max_future = max_future_ms
        self._on_disorder = on_disorder
        self._realtime = realtime
        self._make = make_lines
        self._shards = shards
        self._rate = rate
        self._batch = batch_lines
        self._placement = placement

    def list_parts(self) -> list[str]:
        return [_part_name(0, self._placement)]

    def build_part(self, step_id: str, for_part: str, resume_state: Position | None) -> _RawPartition:
        def open_at(start: int) -> Iterator[bytes]:
            for i, line in enumerate(self._make()):
                if i >= start:
                    yield line

        _index, own = _part_of(for_part, self._placement, self._shards)
        start, own, max_ts = _resume(resume_state, own, for_part)
        pace = _Pacer(self._rate) if self._rate else None
        return _RawPartition("simulator", open_at, start, self._shards, self._batch, pace,
                             types=self._types, own=own, realtime=self._realtime, max_ts=max_ts,
                             max_future_ms=self._max_future, on_disorder=self._on_disorder,
                             greet=hello_items(self._hello, self._cluster, self._shards))


class _Pacer:
    """Allow ``rate`` lines per second of wall time since the partition started."""

    def __init__(self, rate: float) -> None:
        import time

        self._rate = rate
        self._clock = time.monotonic
        self._t0 = time.monotonic()
        self._sent0: int | None = None

    def __call__(self, pos: int) -> float | None:
        if self._sent0 is None:
            self._sent0 = pos
        allowed = (self._clock() - self._t0) * self._rate - (pos - self._sent0)
        if allowed < 1:
            import time

            time.sleep(min(0.05, (1 - allowed) / self._rate))
            return 0
        return allowed
