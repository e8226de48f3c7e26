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
    """

    source: str
    partition: int
    values: list[bytes]
    offsets: list[int]


class Tick(NamedTuple):
    """The largest event time a source partition has seen, broadcast to every shard.

    A tick lets an idle shard's watermark follow the whole input (DESIGN.md §7).
    With ``final`` set the partition has ended: the shard releases every buffered
    event and fires every timer due at or before ``max_ts_ms``.
    """

    max_ts_ms: int
    final: bool = False


ShardItem = RawBatch | Tick
