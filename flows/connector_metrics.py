"""Connector metrics: sink batches, retries and errors, Kafka lag and errors, snapshots, refused outputs,
offset resets; and the hooks the connectors call (they take callbacks, so connectors/ never imports flows/)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flows.metrics import (
    CONSUMER_LAG,
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


def kafka_error_hook() -> Callable[[str, Any], None]:
    """Return an ``on_error(client, error)`` callback counting Kafka client errors.

    Returns:
        The callback.
    """

    def on_error(client: str, _err: Any) -> None:
        record_kafka_error(client)

    return on_error
