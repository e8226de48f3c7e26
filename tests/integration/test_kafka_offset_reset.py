"""Input positions beyond a partition's end (a broker that lost its log) are detected, logged, counted and moved.

Against the real Tansu broker of the fixtures (memory storage: a restart comes back empty).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
import pytest

from connectors.kafka import KafkaRawSource
from flows import metrics
from tests.kafka_helpers import Broker, create_topics, produce_lines, unique

pytestmark = pytest.mark.kafka


def _event(i: int) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "customer_id": f"c{i % 3}", "ts": 1_700_000_000_000 + i,
                         "channel": "app", "type": "view", "journey": "cart", "step": "product"})


def _read(part: Any, count: int, deadline_s: float = 60) -> list[int]:
    """Offsets read from a partition until ``count`` arrived, it stopped at its end, or the deadline passed."""
    got: list[int] = []
    end = time.monotonic() + deadline_s
    try:
        while len(got) < count and time.monotonic() < end:
            for _k, batch in part.next_batch():
                got.extend(batch.offsets)
            time.sleep(0.01)
    except StopIteration:
        pass
    return got


def _source(addr: str, topic: str, resets: list[str], *, stop: bool, **conf: str) -> KafkaRawSource:
    def on_reset(t: str) -> None:
        resets.append(t)
        metrics.record_offset_reset(t)

    return KafkaRawSource({"bootstrap.servers": addr, **conf}, topic, 2, create_topics=False, batch_size=100,
                          stop_at_end=stop, lag_interval_s=0.2, on_reset=on_reset)


def _resets_counted(topic: str) -> float:
    return metrics.REGISTRY.get_sample_value("cx_kafka_offset_resets_total", {"topic": topic}) or 0.0


def test_a_saved_position_beyond_the_end_replays_the_partition_by_default(
        kafka: str, caplog: pytest.LogCaptureFixture) -> None:
    topic = unique("cx.events")
    create_topics(kafka, [topic])
    produce_lines(kafka, topic, [_event(i) for i in range(10)])
    metrics.configure(topics=[topic])
    before = _resets_counted(topic)
    resets: list[str] = []
    with caplog.at_level(logging.ERROR, logger="cx.kafka"):
        part = _source(kafka, topic, resets, stop=True).build_part("inp", f"{topic}:0", 5_000)
    try:
        assert _read(part, 10) == list(range(10))
    finally:
        part.close()
    assert resets == [topic]
    assert _resets_counted(topic) == before + 1
    (msg,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert f"{topic}[0]" in msg
    assert "5000" in msg
    assert "offsets 0..10" in msg
    assert "earliest" in msg


def test_latest_skips_to_the_end_and_error_stops_naming_the_setting(kafka: str) -> None:
    topic = unique("cx.events")
    create_topics(kafka, [topic])
    produce_lines(kafka, topic, [_event(i) for i in range(10)])
    resets: list[str] = []
    part = _source(kafka, topic, resets, stop=False, **{"auto.offset.reset": "latest"}).build_part(
        "inp", f"{topic}:0", 5_000)
    try:
        assert part.snapshot() == 10
        produce_lines(kafka, topic, [_event(i) for i in range(10, 13)])
        assert _read(part, 3) == [10, 11, 12]
    finally:
        part.close()
    assert resets == [topic]
    for value in ("error", "none"):
        with pytest.raises(RuntimeError, match=rf"{topic}\[0\]: saved position 5000 is beyond the partition's end "
                                               r"\(offsets 0\.\.13.*CX_KAFKA_AUTO_OFFSET_RESET"):
            _source(kafka, topic, resets, stop=True, **{"auto.offset.reset": value}).build_part(
                "inp", f"{topic}:0", 5_000)


def test_a_broker_that_comes_back_empty_while_running_is_noticed_and_new_events_are_read(
        own_broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    own_broker.start()
    topic = unique("cx.events")
    create_topics(own_broker.addr, [topic])
    produce_lines(own_broker.addr, topic, [_event(i) for i in range(50)])
    resets: list[str] = []
    part = _source(own_broker.addr, topic, resets, stop=False).build_part("inp", f"{topic}:0", None)
    try:
        assert _read(part, 50) == list(range(50))
        own_broker.restart(0.2)  # memory storage: the topic and its 50 messages are gone
        create_topics(own_broker.addr, [topic])
        with caplog.at_level(logging.ERROR, logger="cx.kafka"):
            produce_lines(own_broker.addr, topic, [_event(i) for i in range(100, 110)])
            # Without the check the worker waits at offset 50 and later skips offsets 0..49 of the new log.
            assert _read(part, 10) == list(range(10))
    finally:
        part.close()
    assert resets == [topic]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any(f"{topic}[0]" in m and "position 50" in m and "offsets 0..10" in m for m in errors), errors
