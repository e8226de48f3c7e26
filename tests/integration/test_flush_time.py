"""The end-of-input flush time is the largest time of a line the shards accept (adversary items 4 and 5).

A line the shards dead-letter (routed by a decoy id) must not set it; a valid event whose ts is an ISO-8601
string must count for it as an integer ts does. File replay and Kafka replay alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from state.routing import shard_of_id
from tests.helpers import MIN, T0
from tests.integration.test_replay_agreement import SHARDS, _abandoned, _ev, _file_run, _kafka_run

DAY = 1440 * MIN


def _iso(line: bytes) -> bytes:
    doc: dict[str, Any] = orjson.loads(line)
    doc["ts"] = datetime.fromtimestamp(doc["ts"] / 1000, UTC).isoformat(timespec="milliseconds")
    return orjson.dumps(doc)


def _evil_lines() -> list[bytes]:
    # c2 leaves a cart at 0; the input's last valid time is 2 min, too early for the abandonment to be due.
    assert shard_of_id("c2", SHARDS) != shard_of_id("zz1", SHARDS)
    evil = (b'{"event_id":"evil-1","customer\\u005fid":"c2","ts":%d,"channel":"app","type":"view",'
            b'"attrs":{"customer_id":"zz1"}}' % (T0 + 2 * MIN + DAY))
    return [_ev("k1", "c1", 0, "submit", journey="cart", step="checkout"),
            _ev("k2", "c2", 0, "submit", journey="cart", step="checkout"), evil, _ev("z", "z", 2 * MIN)]


def _check_evil(moments: list[dict[str, Any]], customers: int, dead: list[dict[str, Any]]) -> None:
    assert [d["reason"] for d in dead] == ["routing_mismatch:customer_id"]
    # Flushed to 2 min, not to a day later: nobody abandoned yet, nobody expired.
    assert _abandoned(moments) == []
    assert customers == 3


def test_a_dead_lettered_line_does_not_set_the_flush_time_of_a_file_replay(tmp_path: Path) -> None:
    _check_evil(*_file_run([_evil_lines()], tmp_path, "evil"))


def _iso_lines() -> list[bytes]:
    # c2 leaves a cart at 0 on its own shard; z's view 30 min later, on another shard, is the input's last time.
    assert shard_of_id("c2", SHARDS) != shard_of_id("z", SHARDS)
    return [_iso(line) for line in (_ev("k2", "c2", 0, "submit", journey="cart", step="checkout"),
                                    _ev("z", "z", 30 * MIN))]


def test_iso_timestamps_set_the_flush_time_of_a_file_replay(tmp_path: Path) -> None:
    moments, _customers, dead = _file_run([_iso_lines()], tmp_path, "iso")
    assert dead == []
    assert _abandoned(moments) == ["c2"]


@pytest.mark.kafka
def test_iso_timestamps_and_dead_lettered_lines_in_a_kafka_replay(kafka: str, tmp_path: Path) -> None:
    moments, _customers, dead = _kafka_run(kafka, _iso_lines(), tmp_path, "iso", partitions=2)
    assert dead == []
    assert _abandoned(moments) == ["c2"]
    _check_evil(*_kafka_run(kafka, _evil_lines(), tmp_path, "evil", partitions=2))


def _escaped_lines() -> list[bytes]:
    # c2 leaves a cart at 0 on its own shard; the input's last time, 30 min later on other shards, is carried
    # only by lines whose ts a JSON escape hides from slicing: the key spelled "t\u0073", and an ISO string
    # with its "+" escaped. Valid events: they count for the flush time as their plain spellings would.
    assert len({shard_of_id(c, SHARDS) for c in ("c2", "z", "y")}) == 3
    key = (b'{"event_id":"z1","customer_id":"z","t\\u0073":%d,"channel":"app","type":"view"}' % (T0 + 30 * MIN))
    iso = datetime.fromtimestamp((T0 + 25 * MIN) / 1000, UTC).isoformat(timespec="milliseconds")
    iso_line = (b'{"event_id":"y1","customer_id":"y","ts":"%s","channel":"app","type":"view"}'
                % iso.replace("+", "\\u002b").encode())
    return [_ev("k2", "c2", 0, "submit", journey="cart", step="checkout"), iso_line, key]


def test_escaped_timestamps_set_the_flush_time_of_a_file_replay(tmp_path: Path) -> None:
    moments, _customers, dead = _file_run([_escaped_lines()], tmp_path, "esc")
    assert dead == []
    assert _abandoned(moments) == ["c2"]


@pytest.mark.kafka
def test_escaped_timestamps_set_the_flush_time_of_a_kafka_replay(kafka: str, tmp_path: Path) -> None:
    moments, _customers, dead = _kafka_run(kafka, _escaped_lines(), tmp_path, "esc", partitions=2)
    assert dead == []
    assert _abandoned(moments) == ["c2"]


@pytest.mark.kafka
def test_feedback_messages_never_move_the_flush_time_of_a_kafka_replay(kafka: str, tmp_path: Path) -> None:
    # The events end at 2 min, too early for c2's abandonment. Two messages on the feedback topic carry a time
    # an hour later: an event-shaped one (dead-lettered: no moment_id) and a valid feedback record with spare
    # event fields. Feedback is not input time: neither may flush the shards to that hour.
    far = T0 + 60 * MIN
    fb_event = _ev("fb1", "c2", 60 * MIN, journey="cart", step="product")
    fb_record = orjson.dumps({"moment_id": "m-unknown", "customer_id": "c2", "outcome": "contacted", "ts": far,
                              "event_id": "fb2", "channel": "app", "type": "view"})
    moments, customers, dead = _kafka_run(
        kafka, [_ev("k2", "c2", 0, "submit", journey="cart", step="checkout"), _ev("z", "z", 2 * MIN)],
        tmp_path, "fb", partitions=2, feedback=[fb_event, fb_record])
    assert [d["reason"] for d in dead] == ["missing_field:moment_id"]
    assert _abandoned(moments) == []
    assert customers == 2
