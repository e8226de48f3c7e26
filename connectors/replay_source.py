"""Bytewax sources for replayed input (JSONL files, the simulator): raw lines routed to shards.

Lines are not parsed here: each is routed by a customer id sliced from its
bytes, so parsing happens after the exchange, on the worker that owns the shard.
After every batch the source sends the largest valid event time it has read to
its shards (a ``Tick`` naming the partition), so idle live shards' clocks follow the
input (DESIGN.md §7) and replay shards' watermarks follow the slowest partition, and
a final tick at the end: at end of input every shard fires what is due by the
largest time any partition reported.

In a cluster every process reads the whole input but keeps only the lines of the
shards its own workers run (``connectors.placement``): raw lines then never cross
between processes, where Bytewax would pickle them. Each source partition sees
every line, so its ticks carry the largest event time of the whole input read so
far, and each shard hears from exactly one partition per input, as with one process.

Since nothing crosses, processes started with different settings (``--shards``: each keeps other lines)
would lose or double lines without a word. So each partition of a cluster first sends a ``Hello`` with its
process's settings to one shard of every other process, which compares them with its own (``flows.operators``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from pathlib import Path

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from connectors.disorder import DisorderHook
from connectors.let_go import let_go
from connectors.placement import Placement, hello_items
from state.batches import Hello, RawBatch, Tick
from state.events import BASE_TYPES
from state.routing import split_lines, ts_of_raw, validated_max_ts
from state.shard import wall_ms

Item = tuple[str, RawBatch | Tick | Hello]
Position = (int | tuple[int, tuple[int, ...]] | tuple[int, tuple[int, ...] | None, int]
            | tuple[int, tuple[int, ...] | None, int, str])
"""A partition's resume state: the next line, the shards it feeds (None: all) and the largest valid event time
it has read. Older recovery state holds a bare line number, or the line and the shards."""
Snapshot = tuple[int, tuple[int, ...] | None, int, str]
"""The resume state partitions write now: (next line, shards fed or None for all, largest valid event time)."""

_log = logging.getLogger("cx.source")

class _RawPartition(StatefulSourcePartition[Item, Position]):
    """Reads raw lines from an iterator factory that can skip to a position.

    With ``own`` set, only lines of those shards are emitted, and ticks go to those shards only;
    every line still counts for the position and the largest event time.
    """

    def __init__(
        self,
        source: str,
        open_at: Callable[[int], Iterator[bytes]],
        start: int,
        shards: int,
        batch_lines: int,
        pace: Callable[[int], float | None] | None = None,
        types: Collection[str] = BASE_TYPES,
        own: frozenset[int] | None = None,
        realtime: bool = False,
        max_ts: int = 0,
        max_future_ms: int | None = None,
        name: str = "",
        tick_name: str = "",
        place: int = 0,
        greet: Sequence[Item] = (),
        on_disorder: DisorderHook | None = None,
    ) -> None:
        self._place = place  # the batches' partition: the file's index in the input list (orders equal events)
        self._greet = greet  # sent before the first lines (the cluster handshake), again after every restart
        self._tick_name = tick_name or source  # what its ticks call the partition (unique in the input)
        self._on_disorder = on_disorder  # called per batch with its disorder (labelled by the place)
        self._types = types
        self._name = name  # what the position counts lines of (a file's name), checked when it is resumed
        self._realtime = realtime
        self._max_future = max_future_ms
        self._held: bytes | None = None  # realtime: the next line, read but not yet due
        self._source = source
        self._lines = open_at(start)
        self._pos = start
        self._shards = shards
        self._batch = batch_lines
        self._max_ts = max_ts
        self._done = False
        self._pace = pace
        self._awake: datetime | None = None
        self._own = own
        kept = range(shards) if own is None else sorted(own)
        self._keep = [own is None or s in own for s in range(shards)]
        self._keys = [str(s) for s in range(shards)]
        self._tick_keys = [str(s) for s in kept]

    def next_batch(self) -> list[Item]:
        if self._done:
            raise StopIteration
        if self._greet:
            return self.take_greeting()
        shards = self._shards
        values: list[list[bytes]] = [[] for _ in range(shards)]
        offsets: list[list[int]] = [[] for _ in range(shards)]
        keep = self._keep
        max_ts = self._max_ts
        candidates: list[tuple[int, bytes]] = []
        pos = self._pos
        limit = self._batch
        if self._pace is not None:
            allowed = self._pace(pos)
            if allowed is not None:
                limit = min(limit, int(allowed))
            if limit <= 0:
                return []
        lines: Iterator[bytes] = self._lines
        if self._held is not None:
            lines = chain((self._held,), lines)
            self._held = None
        now = wall_ms() if self._realtime else None
        self._awake = None
        # Disorder against the newest time, from the validated one: a hostile future ts skews one batch at most.
        behind: list[int] | None = [] if self._on_disorder is not None else None
        pos, n, ended, held = split_lines(lines, limit, shards, keep, values, offsets, pos, max_ts, candidates, behind,
                                          now, let_go)
        if held is not None:
            self._held = held
            t = ts_of_raw(held) or 0  # split_lines held it back for its ts
            self._awake = datetime.now(UTC) + timedelta(milliseconds=min(t - (now or 0), 200))
        self._done = ended
        self._pos = pos
        # Only a valid event may move the clock: a hostile line carrying a future ts would otherwise make every
        # later event late. Usually the newest candidate is valid, so this parses about one line per batch.
        # The parsed ts must be the sliced one too: an escaped key would otherwise let a decoy move the clock.
        # It must also be routed to its own customer's shard, and (live) not too far ahead of the wall clock:
        # a line the shard dead-letters must not move the clock either.
        if candidates:
            live_now = None if self._max_future is None else wall_ms()
            max_ts = max(max_ts, validated_max_ts(candidates, self._types, shards=shards, now_ms=live_now,
                                                  max_future_ms=self._max_future))
        self._max_ts = max_ts
        if self._on_disorder is not None:
            kept = sum(map(len, values))  # the others are in order (a line without a ts too: a dead letter)
            assert behind is not None
            self._on_disorder(self._source.partition(":")[0], self._place, kept - len(behind), behind)
        keys = self._keys
        src = self._source
        items: list[Item] = [(keys[s], RawBatch(src, self._place, values[s], offsets[s], s)) for s in range(shards)
                             if values[s]]
        if n or self._done:
            tick = Tick(max_ts, final=self._done, partition=self._tick_name)
            items.extend((k, tick) for k in self._tick_keys)
        return items

    def take_greeting(self) -> list[Item]:
        """Return the handshake items not sent yet (once): a stopped input still sends them, see ``flows.stopping``."""
        greet, self._greet = list(self._greet), ()
        return greet

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> Snapshot:
        # The shards travel with the position: a restart with another -w moves shards between processes, and
        # a shard must go on hearing from the partition whose position matches its state. The largest time
        # too: after a restart the final tick must still cover what was read before it.
        # The file's name too: positions are kept per place in the input list, and another file in that place
        # (a different list, a directory that lost a file) must not be read from this one's position.
        return self._pos, None if self._own is None else tuple(sorted(self._own)), self._max_ts, self._name


class InputPositionError(ValueError):
    """Recovery state holds a position for another input file than the one in its place now."""


def _resume(
    resume_state: Position | None, own: frozenset[int] | None, part: str, name: str = ""
) -> tuple[int, frozenset[int] | None, int]:
    """Return the start line, the shards to feed and the largest event time read so far of a partition being built.

    Recovery state written before the time was stored resumes with 0: its final tick then covers only what is
    read after the restart, as it did then.

    Raises:
        InputPositionError: the position was saved for a file of another name (``name``) in this place.
    """
    if resume_state is None:
        return 0, own, 0
    if isinstance(resume_state, int):
        return resume_state, own, 0
    pos, recorded, *rest = resume_state
    max_ts = int(rest[0]) if rest else 0  # type: ignore[call-overload]
    saved = str(rest[1]) if len(rest) > 1 else ""
    if saved and name and saved != name and pos > 0:
        raise InputPositionError(
            f"input {part}: the recovery state holds line {pos} of {saved!r}, but that place in the input list "
            f"is now {name!r}; list the same files in the same order as before, or start over with an empty "
            f"--recovery-dir")
    if recorded is None:
        return pos, own, max_ts
    kept = frozenset(recorded)
    if kept != own:
        _log.warning("input partition %s resumes feeding the shards it fed before the restart (the cluster's "
                     "workers changed): their lines cross between processes until the recovery state is reset",
                     part)
    return pos, kept, max_ts


def _part_name(index: int, placement: Placement | None) -> str:
    if placement is None or placement.processes == 1:
        return str(index)  # as before clusters read by shard: one-process recovery state stays valid
    return f"{index}-p{placement.process}"


def _part_of(name: str, placement: Placement | None, shards: int) -> tuple[int, frozenset[int] | None]:
    """Return the input index and the shards a partition feeds (None: all)."""
    index, _, proc = name.partition("-p")
    if not proc or placement is None:
        return int(index), None
    return int(index), placement.own_shards(shards, int(proc))


_UTF8_BOM = b"\xef\xbb\xbf"


def _open_file_at(path: Path) -> Callable[[int], Iterator[bytes]]:
    def open_at(start: int) -> Iterator[bytes]:
        with path.open("rb", buffering=1 << 20) as f:
            first = f.readline()
            if start == 0 and first:
                # Editors on Windows write a UTF-8 byte-order mark: left on, it made the first event invalid JSON.
                yield first[3:] if first.startswith(_UTF8_BOM) else first
            # Delegated whole: the reader's loop then resumes this generator with no bytecode of its own per line.
            yield from islice(f, max(start - 1, 0), None)

    return open_at


class InputFileError(ValueError):
    """An input file that cannot be read as JSONL; the message names the file and what to do."""


def _wide_encoding(head: bytes) -> str | None:
    """Return "UTF-16" or "UTF-32" when a file's first bytes show one (a byte-order mark or NUL bytes), else None."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16"
    sample = head[:64]
    sample = sample[: len(sample) // 4 * 4]
    # JSON text is ASCII at the start ('{"event_id"…'): UTF-16 without a mark puts a NUL beside every character,
    # UTF-32 three. Only that layout counts: a line of NUL bytes is garbage to dead-letter, not an encoding.
    if len(sample) < 8:
        return None
    for name, width, at in (("UTF-32", 4, 0), ("UTF-32", 4, 3), ("UTF-16", 2, 0), ("UTF-16", 2, 1)):
        chars = sample[at::width]
        others = [b for i, b in enumerate(sample) if i % width != at]
        if not any(others) and all(32 <= c < 127 or c in (9, 10, 13) for c in chars):
            return name
    return None


def check_input_file(path: Path) -> bool:
    """Check that an input file can be read as UTF-8 JSONL before the dataflow starts.

    Returns:
        False (after a warning naming it) when the file is empty, else True.

    Raises:
        InputFileError: the file is UTF-16 or UTF-32, whose every line would be dead-lettered.
    """
    with path.open("rb") as f:
        head = f.read(256)
    if not head:
        _log.warning("input: %s is empty: nothing to read from it", path)
        return False
    wide = _wide_encoding(head)
    if wide is not None:
        raise InputFileError(f"{path} is {wide}-encoded, not UTF-8: every line would be dead-lettered; "
                             f"convert it to UTF-8 (e.g. with iconv -f {wide} -t UTF-8)")
    return True


def file_partition_names(paths: list[Path]) -> list[str]:
    """Return what the ticks of each file's partition call it: ``file:NAME``, with ``#INDEX`` when names repeat."""
    names = [f"file:{p.name}" for p in paths]
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


class JsonlFileSource(FixedPartitionedSource[Item, Position]):
    """Replay JSONL files, resuming at the next unread line.

    One partition per file; in a cluster, one per file and process, each reading the whole file for the
    shards of its own process.

    Args:
        paths: The files.
        shards: Number of shards to route to.
        batch_lines: Lines read per batch.
        types: Event types the rule pack knows (for the tick's validity check).
        placement: This process's place in the cluster (None: a single process).
        max_future_ms: Live clock: how far ahead of the wall clock a line's time may be to move the ticks
            (the shards' ``--max-future``); None in replay.
        hello: This process's settings, sent to the other processes of a cluster before the first lines.
        on_disorder: Called once per batch with the disorder of its lines (see ``DisorderHook``).
    """

    def __init__(
        self, paths: list[Path], shards: int, batch_lines: int = 4096, types: Collection[str] = BASE_TYPES,
        placement: Placement | None = None, max_future_ms: int | None = None, hello: Hello | None = None,
        on_disorder: DisorderHook | None = None,
    ) -> None:
        self._hello = hello
        self._types = types
        self._max_future = max_future_ms
        self._on_disorder = on_disorder
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"input file not found: {', '.join(missing)}")
        if not [p for p in paths if check_input_file(p)]:
            _log.warning("input: no events to read (%s)", ", ".join(map(str, paths)) or "no files")
        self._paths = paths
        self._tick_names = file_partition_names(paths)
        self._shards = shards
        self._batch = batch_lines
        self._placement = placement

    def list_parts(self) -> list[str]:
        # Bytewax takes each process's list as the partitions it can read: listing only our own keeps each
        # partition in the process that runs its shards.
        return [_part_name(i, self._placement) for i in range(len(self._paths))]

    def build_part(self, step_id: str, for_part: str, resume_state: Position | None) -> _RawPartition:
        index, own = _part_of(for_part, self._placement, self._shards)
        path = self._paths[index]
        start, own, max_ts = _resume(resume_state, own, for_part, path.name)
        return _RawPartition(f"file:{path.name}", _open_file_at(path), start, self._shards, self._batch,
                             types=self._types, own=own, max_ts=max_ts, max_future_ms=self._max_future,
                             name=path.name, tick_name=self._tick_names[index], place=index,
                             greet=hello_items(self._hello, self._placement, self._shards),
                             on_disorder=self._on_disorder)


def file_paths(spec: str) -> list[Path]:
    """Return the files of a ``file:PATH[,PATH…]`` source spec (a directory means its *.jsonl)."""
    paths: list[Path] = []
    for part in spec.split(","):
        p = Path(os.path.expanduser(part))
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                _log.warning("input: directory %s holds no *.jsonl files: nothing to read from it", p)
            paths.extend(found)
        else:
            paths.append(p)
    return paths

