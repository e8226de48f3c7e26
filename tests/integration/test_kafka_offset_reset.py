"""Input positions beyond a partition's end (a broker that lost its log) are detected, logged, counted and moved.

Against the real Tansu broker of the fixtures (memory storage: a restart comes back empty).
"""

from __future__ import annotations

import logging
import pickle
import sqlite3
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.jsonl import read_jsonl
from connectors.kafka.source import KafkaRawSource
from flows import connector_metrics, metrics
from tests.integration.test_recovery import _resume_epoch
from tests.kafka_helpers import Broker, create_topics, produce_lines, unique
from tests.worker import Worker

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
        connector_metrics.record_offset_reset(t)

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
        assert part.snapshot() == (10, 0)
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


def _saved_position(recovery: Path, part: str) -> int | None:
    """The input position of ``part`` in the latest snapshot a restart would resume from (None before one)."""
    resume = _resume_epoch([recovery])
    best: tuple[int, int | tuple[int, int]] | None = None
    for db_path in recovery.glob("part-*.sqlite3"):
        try:
            with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)) as db:
                rows = db.execute("SELECT snap_epoch, ser_change FROM snaps WHERE step_id LIKE '%input' AND "
                                  "state_key = ? AND snap_epoch < ?", (part, resume)).fetchall()
        except sqlite3.Error:
            return None  # mid-write: ask again
        for epoch, blob in rows:
            if blob is not None and (best is None or epoch > best[0]):
                best = (epoch, pickle.loads(blob))  # noqa: S301 - Bytewax's own snapshot
    if best is None:
        return None
    state = best[1]
    return state if isinstance(state, int) else state[0]  # (offset, largest event time read)


def test_a_worker_restarted_with_its_recovery_dir_after_the_broker_lost_its_log_reads_the_new_events(
        own_broker: Broker, tmp_path: Path) -> None:
    own_broker.start()
    env = {"CX_TOPIC_EVENTS": unique("cx.events"), "CX_TOPIC_FEEDBACK": unique("cx.feedback")}
    recovery = tmp_path / "recovery"
    args = ["--source", "kafka", "--kafka-bootstrap", own_broker.addr, "--kafka-partitions", "1", "--lateness", "1s",
            "--tick", "0.2", "--recovery-dir", str(recovery), "--snapshot-interval", "0.5", "--no-metrics",
            "--status", "off"]

    def fails(first: int, n: int) -> list[bytes]:
        now = time.time_ns() // 1_000_000
        return [orjson.dumps({"event_id": f"e{i}", "customer_id": f"c{i}", "ts": now + i, "channel": "app",
                              "type": "fail", "journey": "cart", "step": "payment"}) for i in range(first, first + n)]

    def wait_moments(out: Path, customers: set[str], worker: Worker) -> None:
        end = time.monotonic() + 60
        seen: set[str] = set()
        while time.monotonic() < end and not customers <= seen:
            time.sleep(0.2)
            seen = {r["customer_id"] for r in read_jsonl(out / "moments.jsonl")}
        assert customers <= seen, worker.log()[-3000:]

    create_topics(own_broker.addr, env.values(), partitions=1)
    first = Worker([*args, "--sink", f"jsonl:{tmp_path / 'out1'}"], tmp_path / "w1.log", env=env)
    try:
        produce_lines(own_broker.addr, env["CX_TOPIC_EVENTS"], fails(0, 40))
        wait_moments(tmp_path / "out1", {f"c{i}" for i in range(40)}, first)
        end = time.monotonic() + 60
        while _saved_position(recovery, f"{env['CX_TOPIC_EVENTS']}:0") != 40:
            assert time.monotonic() < end, "no snapshot at position 40"
            time.sleep(0.2)
    finally:
        first.stop()
    own_broker.restart(0.2)  # memory storage: topics and their 40 events are gone

    second = Worker([*args, "--sink", f"jsonl:{tmp_path / 'out2'}"], tmp_path / "w2.log", env=env)
    try:
        second.wait_log("saved position 40 is beyond the partition's end", timeout_s=60)
        produce_lines(own_broker.addr, env["CX_TOPIC_EVENTS"], fails(100, 10))
        # Without the check the worker would wait at offset 40 and never see these ten. (Moments of the first
        # run may come again: the restored state replays what followed its snapshot, with the same ids.)
        wait_moments(tmp_path / "out2", {f"c{i}" for i in range(100, 110)}, second)
        log_text = second.log()
        assert f"{env['CX_TOPIC_EVENTS']}[0]: saved position 40 is beyond the partition's end (offsets 0..0" \
            in log_text
        assert "auto.offset.reset=earliest" in log_text
    finally:
        second.stop()
