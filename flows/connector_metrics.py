"""Connector metrics: sink batches, retries and errors, Kafka lag and errors, snapshots, refused outputs,
offset resets; and the hooks the connectors call (they take callbacks, so connectors/ never imports flows/)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from flows.metrics import (
    CONSUMER_LAG,
    DISORDER_BUCKETS,
    DISORDER_INPUTS,
    EVENT_DISORDER,
    INPUT_UP,
    KAFKA_CLIENTS,
    KAFKA_ERRORS,
    OFFSET_RESETS,
    OTHER,
    OUTPUT_REFUSED,
    SINK_ERRORS,
    SINK_RETRIES,
    SINK_ROWS,
    SINK_SECONDS,
    SINK_UP,
    SINKS,
    SNAPSHOT_BYTES,
    SNAPSHOT_SECONDS,
    TOPIC_LABELS,
    label,
)

_MAX_PARTITION = 4096
_DISORDER_BOUNDS_MS = [round(b * 1000) for b in DISORDER_BUCKETS]


def record_sink_batch(sink: str, rows: int, seconds: float) -> None:
    """Record one successful sink write and mark the sink up.

    Args:
        sink: ``clickhouse``, ``kafka`` or ``jsonl``.
        rows: Rows written.
        seconds: Write time.
    """
    s = label(sink, SINKS)
    SINK_SECONDS.labels(s).observe(seconds)
    SINK_ROWS.labels(s).observe(rows)
    SINK_UP.labels(s).set(1)


def record_sink_retry(sink: str) -> None:
    """Count a failed write attempt that will be retried, and mark the sink down until one succeeds.

    Args:
        sink: Sink name.
    """
    s = label(sink, SINKS)
    SINK_RETRIES.labels(s).inc()
    SINK_ERRORS.labels(s).inc()
    SINK_UP.labels(s).set(0)


def record_sink_error(sink: str) -> None:
    """Count a failed write attempt that is not retried, and mark the sink down.

    Args:
        sink: Sink name.
    """
    s = label(sink, SINKS)
    SINK_ERRORS.labels(s).inc()
    SINK_UP.labels(s).set(0)


def set_sink_up(sink: str, up: bool) -> None:
    """Set whether a sink is writable.

    Args:
        sink: Sink name.
        up: True when its last write succeeded.
    """
    SINK_UP.labels(label(sink, SINKS)).set(1 if up else 0)


def set_consumer_lag(topic: str, partition: int, lag: int) -> None:
    """Set the consumer lag of one input partition; a lag report means the input is connected.

    Args:
        topic: Topic name (configured topics only; others are ``other``).
        partition: Partition number.
        lag: Messages behind the high watermark.
    """
    p = str(partition) if isinstance(partition, int) and 0 <= partition < _MAX_PARTITION else OTHER
    CONSUMER_LAG.labels(label(topic, TOPIC_LABELS), p).set(max(0, lag))
    INPUT_UP.set(1)


def set_input_up(up: bool) -> None:
    """Set whether the input is connected.

    Args:
        up: True when connected.
    """
    INPUT_UP.set(1 if up else 0)


def record_kafka_error(client: str) -> None:
    """Count a Kafka client error; a consumer error marks the input down until lag is reported again.

    Args:
        client: ``consumer``, ``producer`` or ``admin``.
    """
    c = label(client, KAFKA_CLIENTS)
    KAFKA_ERRORS.labels(c).inc()
    if c == "consumer":
        INPUT_UP.set(0)


def record_snapshot(seconds: float, nbytes: int) -> None:
    """Record one shard snapshot.

    Args:
        seconds: Time to build it.
        nbytes: Its size.
    """
    SNAPSHOT_SECONDS.observe(seconds)
    SNAPSHOT_BYTES.set(nbytes)


def record_output_refused(topic: str) -> None:
    """Count one refused output record.

    Args:
        topic: Its topic (configured topics only; others are ``other``).
    """
    OUTPUT_REFUSED.labels(label(topic, TOPIC_LABELS)).inc()


def record_offset_reset(topic: str) -> None:
    """Count one input position reset because it lay outside its partition's offsets.

    Args:
        topic: The input topic (configured topics only; others are ``other``).
    """
    OFFSET_RESETS.labels(label(topic, TOPIC_LABELS)).inc()


# ---------------------------------------------------------------------------------------------- connector hooks


def sink_write_hook(sink: str) -> Callable[[str, int, float], None]:
    """Return an ``on_write(table, rows, seconds)`` callback for a sink.

    Args:
        sink: Sink name.

    Returns:
        The callback.
    """

    def on_write(_table: str, rows: int, seconds: float) -> None:
        record_sink_batch(sink, rows, seconds)

    return on_write


def sink_retry_hook(sink: str) -> Callable[[str, int, BaseException, float], None]:
    """Return an ``on_retry(table, attempt, error, delay)`` callback for a sink.

    Args:
        sink: Sink name.

    Returns:
        The callback.
    """

    def on_retry(_table: str, _attempt: int, _exc: BaseException, _delay: float) -> None:
        record_sink_retry(sink)

    return on_retry


def consumer_lag_hook() -> Callable[[str, int, int], None]:
    """Return an ``on_lag(topic, partition, lag)`` callback for the Kafka source.

    Returns:
        The callback.
    """
    return set_consumer_lag


def record_disorder(source: str, partition: int, in_order: int, behind_ms: list[int]) -> None:
    """Record how far behind its partition's newest event time each event of one source batch arrived.

    Args:
        source: ``kafka:<topic>``, ``file`` or ``simulator`` (others count as ``other``).
        partition: The Kafka partition or the input file's index.
        in_order: Events at or past the newest time seen (disorder 0).
        behind_ms: How far behind it each other event came, in ms.
    """
    if not in_order and not behind_ms:
        return
    kind, _, topic = source.partition(":")
    name = label(topic, TOPIC_LABELS) if kind == "kafka" else label(kind, DISORDER_INPUTS)
    child = EVENT_DISORDER.labels(name, str(partition) if 0 <= partition < _MAX_PARTITION else OTHER)
    counts = [0] * (len(_DISORDER_BOUNDS_MS) + 1)
    counts[0] = in_order
    for d in behind_ms:
        counts[bisect_left(_DISORDER_BOUNDS_MS, d)] += 1
    # prometheus_client observes one value at a time (a lock each): a batch adds its bucket counts at once to
    # the child's per-bucket values, as observe() itself does.
    for i, n in enumerate(counts):
        if n:
            child._buckets[i].inc(n)
    child._sum.inc(sum(behind_ms) / 1000)


def disorder_hook() -> Callable[[str, int, int, list[int]], None]:
    """Return an ``on_disorder(source, partition, in_order, behind_ms)`` callback for the sources.

    Returns:
        The callback.
    """
    return record_disorder


def kafka_error_hook() -> Callable[[str, Any], None]:
    """Return an ``on_error(client, error)`` callback counting Kafka client errors.

    Returns:
        The callback.
    """

    def on_error(client: str, _err: Any) -> None:
        record_kafka_error(client)

    return on_error
