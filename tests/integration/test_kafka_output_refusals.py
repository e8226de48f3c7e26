"""No output record can stop the Kafka writer: a record the producer refuses becomes a small dead letter.

Against the real Tansu broker of the fixtures. Tansu enforces no message size limit of its own (a 15 MB
record is accepted), so the refusal here is librdkafka's: ``produce()`` raises MSG_SIZE_TOO_LARGE for a
record above the producer's ``message.max.bytes`` (1,000,000 by default), as it did for the oversized dead
letters of the issue.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from connectors.kafka.writer import KafkaJsonWriter
from tests.kafka_helpers import create_topics, kcat, read_topic_to_end, unique
from tests.worker import Worker

pytestmark = pytest.mark.kafka


def _topics(addr: str) -> dict[str, str]:
    names = {k: unique(f"cx.{k}") for k in ("moment", "dead_letter")}
    create_topics(addr, names.values())
    return names


def test_a_record_larger_than_the_producer_accepts_becomes_an_output_refused_dead_letter(
        kafka: str, tmp_path: Path) -> None:
    names = _topics(kafka)
    refused: list[str] = []
    writer = KafkaJsonWriter({"bootstrap.servers": kafka}, names, on_refused=refused.append)
    huge = {"moment_id": "m-huge", "customer_id": "c1", "attrs": {"blob": "\u0000" * 200_000}}  # 1.2 MB encoded
    huge_bytes = orjson.dumps(huge)
    writer.add("moment", [{"moment_id": "m1", "customer_id": "c1"}, huge, {"moment_id": "m2", "customer_id": "c2"}])
    writer.flush()  # returns: the refused record is not retried forever, nor fatal
    writer.add("moment", [{"moment_id": "m3", "customer_id": "c3"}])
    writer.close()

    assert [orjson.loads(v)["moment_id"] for _, v in read_topic_to_end(kafka, names["moment"])] == ["m1", "m2", "m3"]
    assert refused == [names["moment"]]
    # kcat, an independent client, sees the notice: the topic, size and hash of the refused record, no content.
    out = kcat(tmp_path, "-b", kafka, "-C", "-t", names["dead_letter"], "-e", "-q", "-f", "%k\t%s\n")
    lines = out.strip().splitlines()
    assert len(lines) == 1
    key, value = lines[0].split("\t", 1)
    notice = orjson.loads(value)
    assert key == "c1"
    assert notice["reason"] == "output_refused"
    assert notice["source"] == f"output:{names['moment']}"
    assert notice["raw_len"] == len(huge_bytes)
    assert notice["raw_sha256"] == hashlib.sha256(huge_bytes).hexdigest()
    assert notice["raw"] == ""
    assert notice["truncated"] is True
    assert "size" in notice["detail"].lower() or "large" in notice["detail"].lower()


def test_a_refused_record_without_a_dead_letter_topic_is_counted_and_logged_not_fatal(
        kafka: str, caplog: pytest.LogCaptureFixture) -> None:
    topic = unique("cx.moments")
    create_topics(kafka, [topic])
    refused: list[str] = []
    writer = KafkaJsonWriter({"bootstrap.servers": kafka}, {"moment": topic}, on_refused=refused.append)
    secret_customer = "customer-4711"
    writer.add("moment", [{"moment_id": "big", "customer_id": secret_customer, "blob": "x" * 1_100_000},
                          {"moment_id": "ok", "customer_id": "c2"}])
    writer.flush()
    writer.close()
    assert [orjson.loads(v)["moment_id"] for _, v in read_topic_to_end(kafka, topic)] == ["ok"]
    assert refused == [topic]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("refused" in m and topic in m for m in errors), errors
    assert not any(secret_customer in r.getMessage() for r in caplog.records)


def test_a_worker_with_sink_kafka_survives_a_dead_letter_the_producer_refuses(kafka: str, tmp_path: Path) -> None:
    # The poison pill in a file run with --sink kafka. The bound is raised to its maximum and the
    # producer's limit lowered below the resulting record (6 bytes per NUL), so the dead letter itself is refused.
    kinds = {"moment": "MOMENT", "action": "ACTION", "tag": "TAG", "context": "CONTEXT", "dead_letter": "DEAD_LETTER"}
    names = {k: unique(f"cx.{k}") for k in kinds}
    create_topics(kafka, names.values())
    src = tmp_path / "events.jsonl"
    fail = orjson.dumps({"event_id": "e1", "customer_id": "c1", "ts": 1_700_000_000_000, "channel": "app",
                         "type": "fail", "journey": "cart", "step": "payment"})
    nuls = b"\x00" * (200 * 1024)
    src.write_bytes(nuls + b"\n" + fail + b"\n")
    env = {"CX_KAFKA_MESSAGE_MAX_BYTES": "300000", **{f"CX_TOPIC_{v}": names[k] for k, v in kinds.items()}}
    worker = Worker(["--source", f"file:{src}", "--sink", "kafka", "--kafka-bootstrap", kafka,
                     "--dead-letter-max-bytes", "131072", "--no-metrics", "--status", "off"],
                    tmp_path / "w.log", env=env)
    assert worker.wait(120) == 0, worker.log()[-3000:]
    assert [orjson.loads(v)["rule"] for _, v in read_topic_to_end(kafka, names["moment"])] == ["cart.failed"]
    (notice,) = [orjson.loads(v) for _, v in read_topic_to_end(kafka, names["dead_letter"])]
    assert notice["reason"] == "output_refused"
    assert notice["source"] == f"output:{names['dead_letter']}"
    assert notice["raw_len"] > 6 * 131072
    assert "refused" in worker.log()
