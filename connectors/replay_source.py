"""Bytewax sources for replayed input (JSONL files, the simulator): raw lines routed to shards.

Lines are not parsed here: each is routed by a customer id sliced from its
bytes, so parsing happens after the exchange, on the worker that owns the shard.
After every batch the source broadcasts the largest event time it has seen to
every shard (a ``Tick``), and a final tick at the end, so idle shards' clocks
follow the input (DESIGN.md §7).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterator
from datetime import datetime
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from state.batches import RawBatch, Tick
from state.events import BASE_TYPES, Event, parse_event
from state.routing import shard_of_raw, ts_of_raw

Item = tuple[str, RawBatch | Tick]


class _RawPartition(StatefulSourcePartition[Item, int]):
    """Reads raw lines from an iterator factory that can skip to a position."""

    def __init__(
        self,
        source: str,
        open_at: Callable[[int], Iterator[bytes]],
        start: int,
        shards: int,
        batch_lines: int,
        pace: Callable[[int], float | None] | None = None,
        types: Collection[str] = BASE_TYPES,
    ) -> None:
        self._types = types
        self._source = source
        self._lines = open_at(start)
        self._pos = start
        self._shards = shards
        self._batch = batch_lines
        self._max_ts = 0
        self._done = False
        self._pace = pace
        self._awake: datetime | None = None
        self._keys = [str(s) for s in range(shards)]

    def next_batch(self) -> list[Item]:
        if self._done:
            raise StopIteration
        shards = self._shards
        values: list[list[bytes]] = [[] for _ in range(shards)]
        offsets: list[list[int]] = [[] for _ in range(shards)]
        max_ts = self._max_ts
        candidates: list[tuple[int, bytes]] = []
        pos = self._pos
        n = 0
        limit = self._batch
        if self._pace is not None:
            allowed = self._pace(pos)
            if allowed is not None:
                limit = min(limit, int(allowed))
            if limit <= 0:
                return []
        for raw in self._lines:
            raw = raw.rstrip(b"\r\n")
            pos += 1
            if not raw:
                continue
            s = shard_of_raw(raw, shards)
            values[s].append(raw)
            offsets[s].append(pos)
            t = ts_of_raw(raw)
            if t is not None and t > max_ts:
                candidates.append((t, raw))
            n += 1
            if n >= limit:
                break
        else:
            self._done = True
        self._pos = pos
        # Only a valid event may move the clock: a hostile line carrying a future ts would otherwise make every
        # later event late. Usually the newest candidate is valid, so this parses about one line per batch.
        for t, raw in sorted(candidates, reverse=True):
            if type(parse_event(raw, types=self._types)) is Event:
                max_ts = t
                break
        self._max_ts = max_ts
        keys = self._keys
        src = self._source
        items: list[Item] = [(keys[s], RawBatch(src, 0, values[s], offsets[s])) for s in range(shards) if values[s]]
        if n or self._done:
            tick = Tick(max_ts, final=self._done)
            items.extend((k, tick) for k in keys)
        return items

    def next_awake(self) -> datetime | None:
        return None

    def snapshot(self) -> int:
        return self._pos


def _open_file_at(path: Path) -> Callable[[int], Iterator[bytes]]:
    def open_at(start: int) -> Iterator[bytes]:
        with path.open("rb", buffering=1 << 20) as f:
            for i, line in enumerate(f):
                if i >= start:
                    yield line

    return open_at


class JsonlFileSource(FixedPartitionedSource[Item, int]):
    """Replay JSONL files (one partition per file), resuming at the next unread line.

    Args:
        paths: The files.
        shards: Number of shards to route to.
        batch_lines: Lines per batch.
    """

    def __init__(
        self, paths: list[Path], shards: int, batch_lines: int = 4096, types: Collection[str] = BASE_TYPES
    ) -> None:
        self._types = types
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"input file not found: {', '.join(missing)}")
        self._paths = paths
        self._shards = shards
        self._batch = batch_lines

    def list_parts(self) -> list[str]:
        return [str(i) for i in range(len(self._paths))]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RawPartition:
        path = self._paths[int(for_part)]
        return _RawPartition(f"file:{path.name}", _open_file_at(path), resume_state or 0, self._shards, self._batch,
                             types=self._types)


class SimulatorSource(FixedPartitionedSource[Item, int]):
    """The built-in traffic simulator as an input (one partition), optionally paced.

    Args:
        make_lines: Factory of the simulator's serialised events (deterministic).
        shards: Number of shards.
        rate: Events per second of wall time, or None for as fast as possible.
        batch_lines: Lines per batch.
    """

    def __init__(
        self, make_lines: Callable[[], Iterator[bytes]], shards: int, rate: float | None = None,
        batch_lines: int = 4096,
        types: Collection[str] = BASE_TYPES,
    ) -> None:
        self._types = types
        self._make = make_lines
        self._shards = shards
        self._rate = rate
        self._batch = batch_lines

    def list_parts(self) -> list[str]:
        return ["0"]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _RawPartition:
        def open_at(start: int) -> Iterator[bytes]:
            for i, line in enumerate(self._make()):
                if i >= start:
                    yield line

        pace = _Pacer(self._rate) if self._rate else None
        return _RawPartition("simulator", open_at, resume_state or 0, self._shards, self._batch, pace,
                             types=self._types)


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


def file_paths(spec: str) -> list[Path]:
    """Return the files of a ``file:PATH[,PATH…]`` source spec (a directory means its *.jsonl)."""
    paths: list[Path] = []
    for part in spec.split(","):
        p = Path(os.path.expanduser(part))
        paths.extend(sorted(p.glob("*.jsonl")) if p.is_dir() else [p])
    return paths

