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
