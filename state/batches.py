"""What travels from sources to the per-shard state: raw message batches and clock ticks."""

from __future__ import annotations

from typing import NamedTuple


class RawBatch(NamedTuple):
    """Raw messages of one source partition that belong to one shard, in input order.

    Attributes:
        source: Where they came from, e.g. ``file:events.jsonl`` or ``kafka:cx.events``.
        partition: Source partition number.
        values: The raw message bytes.
        offsets: Position of each value in its partition (line number or Kafka offset).
        shard: The shard routing sent them to (-1: not said); the shard checks that each parsed
            ``customer_id`` belongs there (DESIGN.md §4, routing and parsing must agree).
        undecodable: ``(offset, error)`` of messages the client could not fetch or decode (a compressed
            message too large to unpack); the shard dead-letters them as ``undecodable``.
    """

    source: str
    partition: int
    values: list[bytes]
    offsets: list[int]
    shard: int = -1
    undecodable: tuple[tuple[int, str], ...] = ()


class Tick(NamedTuple):
    """The largest event time a source partition has seen, broadcast to every shard.

    A tick lets an idle live shard's watermark follow the whole input (DESIGN.md §7); a replay shard's
    watermark follows the slowest of the ``partition`` names it was built to wait for. With ``final`` set the
    partition has ended. A final tick naming its ``partition`` is one of several a shard may hear: the shard
    keeps the largest such time and, at end of input (once every partition of every process has ended),
    releases every buffered event and fires every timer due at or before it. A final tick without a
    partition flushes at once (one partition feeds the shard).

    Live, ``behind`` says the partition has input it has not read yet (a backlog): while a partition is behind,
    or one the shard expects has not reported yet, the wall clock does not move the watermark; event time does.
    """

    max_ts_ms: int
    final: bool = False
    partition: str = ""
    behind: bool = False


class Hello(NamedTuple):
    """A cluster handshake: the settings a source partition's process runs with, sent to another process's shard.

    A file or simulator partition of a cluster keeps only its own process's lines, so nothing else would cross
    between processes: the receiving shard compares these settings with its own process's and stops the run
    on a difference (processes that disagree would lose or double lines without a word).

    Attributes:
        process: The sending process's index.
        settings: ``(setting, value)`` pairs that must be equal in every process, e.g. ``("--shards", "64")``.
    """

    process: int
    settings: tuple[tuple[str, str], ...]


ShardItem = RawBatch | Tick
