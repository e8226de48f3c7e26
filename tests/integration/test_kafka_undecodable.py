"""A compressed message that unpacks beyond ``receive.message.max.bytes`` must not stall its partition.

Every fetch of such a message fails (``_BAD_COMPRESSION``), at every restart, so the partition stopped there for
good and a replay never ended. The worker now skips exactly that offset after a few failed fetches and writes an
``undecodable`` dead letter for it. The consumer's limits are lowered so that a 2 MB zstd "bomb" (a few KB on
the wire) reproduces the adversary's 100 MB one quickly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate
from tests.chdb_query import query
from tests.kafka_helpers import create_topics, unique
from tests.worker import Worker

pytestmark = pytest.mark.kafka

KINDS = {"events": "EVENTS", "feedback": "FEEDBACK", "moment": "MOMENT", "action": "ACTION", "tag": "TAG",
         "context": "CONTEXT", "dead_letter": "DEAD_LETTER"}
BOMB = b'{"event_id":"bomb","customer_id":"c","ts":0,"channel":"app","type":"view","attrs":{"x":"' + \
    b"A" * 2_000_000 + b'"}}'
# librdkafka wants fetch.max.bytes >= message.max.bytes and receive.message.max.bytes >= fetch.max.bytes + 512.
LIMITS = {"CX_KAFKA_RECEIVE_MESSAGE_MAX_BYTES": "1000000", "CX_KAFKA_FETCH_MAX_BYTES": "500000",
          "CX_KAFKA_MESSAGE_MAX_BYTES": "500000"}


def _produce(addr: str, topic: str, before: list[bytes], after: list[bytes]) -> int:
    """Produce ``before``, the bomb (zstd, a batch of its own) and ``after``; return the bomb's offset."""
    p = Producer({"bootstrap.servers": addr, "compression.type": "zstd", "message.max.bytes": 300_000_000,
                  "linger.ms": 5, "enable.idempotence": False})
    offsets: list[int] = []

    def delivered(err: object, msg: object) -> None:
        assert err is None, err
        offsets.append(msg.offset())  # type: ignore[attr-defined]

    for v in before:
        p.produce(topic, value=v)
    assert p.flush(30) == 0
    p.produce(topic, value=BOMB, on_delivery=delivered)
    assert p.flush(30) == 0
    for v in after:
        p.produce(topic, value=v)
    assert p.flush(30) == 0
    assert offsets == [len(before)]
    return offsets[0]


_workers: list[Worker] = []


@pytest.fixture(autouse=True)
def _stop_workers() -> Iterator[None]:
    """A worker stalled by the bomb never ends by itself: stop whatever a failed test left running."""
    yield
    while _workers:
        _workers.pop().stop()


def _run(addr: str, names: dict[str, str], source: str, out: Path, log: Path, *extra: str) -> Worker:
    args = ["--source", source, "--clock", "replay", "--lateness", "7d", "--kafka-bootstrap", addr,
            "--kafka-stop-at-end", "--sink", f"jsonl:{out}", "--no-metrics", "--status", "off", *extra]
    worker = Worker(args, log, env={"CX_LOG_LEVEL": "warning", **LIMITS,
                                    **{f"CX_TOPIC_{KINDS[k]}": v for k, v in names.items()}})
    _workers.append(worker)
    return worker


def _topics(addr: str) -> dict[str, str]:
    names = {k: unique(f"cx.{k}") for k in KINDS}
    create_topics(addr, names.values(), partitions=1)
    return names


def _check_dead_letter(out: Path, topic: str, offset: int) -> None:
    dead = list(read_jsonl(out / "deadletter.jsonl"))
    assert [(d["reason"], d["source"], d["partition"], d["offset"], d["raw"], d["raw_len"]) for d in dead] == [
        ("undecodable", f"kafka:{topic}", 0, offset, "", 0)]
    assert "Decompression" in dead[0]["detail"]


def test_a_decompression_bomb_on_the_events_topic_is_skipped_and_dead_lettered(kafka: str, tmp_path: Path) -> None:
    valid = [orjson.dumps(e) for e in simulate(300, 60, seed=4).events()]
    half = len(valid) // 2
    names = _topics(kafka)
    bomb_at = _produce(kafka, names["events"], valid[:half], valid[half:])

    worker = _run(kafka, names, "kafka", tmp_path / "kafka", tmp_path / "kafka.log")
    assert worker.wait(120) == 0, worker.log()[-3000:]
    log = worker.log()
    assert f"Kafka input {names['events']}[0]: message at offset {bomb_at} cannot be fetched or decoded" in log
    _check_dead_letter(tmp_path / "kafka", names["events"], bomb_at)

    # Every other event was processed: the moments are those of the same events replayed from a file.
    src = tmp_path / "clean.jsonl"
    src.write_bytes(b"".join(v + b"\n" for v in valid))
    clean = _run(kafka, _topics(kafka), f"file:{src}", tmp_path / "clean", tmp_path / "clean.log")
    assert clean.wait(120) == 0, clean.log()[-3000:]
    clean_ids = sorted(m["moment_id"] for m in read_jsonl(tmp_path / "clean" / "moments.jsonl"))
    assert len(clean_ids) > 10
    assert sorted(m["moment_id"] for m in read_jsonl(tmp_path / "kafka" / "moments.jsonl")) == clean_ids


def test_a_decompression_bomb_on_the_feedback_topic_is_skipped_and_dead_lettered(kafka: str,
                                                                                 tmp_path: Path) -> None:
    names = _topics(kafka)
    feedback = [orjson.dumps({"moment_id": f"m{i}", "customer_id": f"c{i}", "outcome": "converted",
                              "ts": 1_700_000_000_000 + i}) for i in range(6)]
    bomb_at = _produce(kafka, names["feedback"], feedback[:3], feedback[3:])

    ch = f"chdb://{tmp_path / 'ch'}"
    worker = _run(kafka, names, "kafka", tmp_path / "kafka", tmp_path / "kafka.log", "--sink", ch)
    assert worker.wait(120) == 0, worker.log()[-3000:]
    assert f"Kafka input {names['feedback']}[0]: message at offset {bomb_at} cannot be fetched" in worker.log()
    _check_dead_letter(tmp_path / "kafka", names["feedback"], bomb_at)
    # The records on both sides of the bomb were stored (feedback goes to ClickHouse only).
    stored = query(ch, "SELECT moment_id FROM feedback ORDER BY moment_id")
    assert stored == [[f"m{i}"] for i in range(6)]


def test_honest_messages_compressed_in_the_bombs_batch_are_dead_lettered_each_and_the_rest_is_read(
        kafka: str, tmp_path: Path) -> None:
    # A compressed batch fails as a whole: the client reports its first offset for every position inside it.
    valid = [orjson.dumps(e) for e in simulate(300, 60, seed=4).events()]
    names = _topics(kafka)
    p = Producer({"bootstrap.servers": kafka, "compression.type": "zstd", "message.max.bytes": 300_000_000,
                  "linger.ms": 500, "batch.size": 100_000_000, "enable.idempotence": False})
    offsets: list[int] = []
    for v in [*valid[:2], BOMB, *valid[2:4]]:
        p.produce(names["events"], value=v, on_delivery=lambda _e, m: offsets.append(m.offset()))
    assert p.flush(30) == 0
    assert offsets == list(range(5))
    p = Producer({"bootstrap.servers": kafka, "compression.type": "zstd", "linger.ms": 5, "batch.size": 100_000})
    for v in valid[4:]:
        p.produce(names["events"], value=v)
    assert p.flush(30) == 0

    worker = _run(kafka, names, "kafka", tmp_path / "kafka", tmp_path / "kafka.log")
    assert worker.wait(120) == 0, worker.log()[-3000:]
    dead = list(read_jsonl(tmp_path / "kafka" / "deadletter.jsonl"))
    assert [(d["reason"], d["offset"]) for d in dead] == [("undecodable", o) for o in range(5)]

    src = tmp_path / "clean.jsonl"
    src.write_bytes(b"".join(v + b"\n" for v in valid[4:]))
    clean = _run(kafka, _topics(kafka), f"file:{src}", tmp_path / "clean", tmp_path / "clean.log")
    assert clean.wait(120) == 0, clean.log()[-3000:]
    clean_ids = sorted(m["moment_id"] for m in read_jsonl(tmp_path / "clean" / "moments.jsonl"))
    assert sorted(m["moment_id"] for m in read_jsonl(tmp_path / "kafka" / "moments.jsonl")) == clean_ids
