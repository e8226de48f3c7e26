"""Fuzz through Kafka: 100,000 messages, hostile ones mixed into valid traffic, with ``--sink kafka``.

The worker reads them from Tansu and publishes to Kafka (and JSONL). It must survive every message (the 200 KiB
NUL message of issue 12 made a dead letter the producer refused, and the worker died on it at every restart),
dead-letter every hostile message exactly once, with a bounded record, and publish the moments of a clean run.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import orjson
import pytest
from confluent_kafka import Producer

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate
from tests.integration.test_hostile_input import hostile
from tests.kafka_helpers import create_topics, kcat, unique
from tests.worker import Worker

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

KINDS = {"events": "EVENTS", "feedback": "FEEDBACK", "moment": "MOMENT", "action": "ACTION", "tag": "TAG",
         "context": "CONTEXT", "dead_letter": "DEAD_LETTER"}
TOTAL = 100_000


def _huge(rng: random.Random) -> bytes:
    """The largest hostile messages: NULs (each a 6-byte JSON escape in a dead letter) and multi-MB lines."""
    kind = rng.randrange(4)
    if kind == 0:
        return b"\x00" * (200 * 1024)
    if kind == 1:
        return b'{"event_id": "' + b"x" * 2_000_000 + b'"}'
    if kind == 2:
        return bytes(rng.randrange(256) for _ in range(300_000))
    return b"[" * 100_000 + b"]" * 100_000


def _produce(addr: str, topic: str, values: list[tuple[bytes | None, bytes]]) -> None:
    # A plain client that accepts the multi-MB test messages (Tansu has no size limit of its own).
    p = Producer({"bootstrap.servers": addr, "linger.ms": 5, "message.max.bytes": 10_000_000,
                  "enable.idempotence": False})
    for key, value in values:
        while True:
            try:
                p.produce(topic, value=value, key=key)
                break
            except BufferError:
                p.poll(0.1)
    assert p.flush(60) == 0, "messages left undelivered"


def _worker(addr: str, names: dict[str, str], source: str, out: Path, log: Path) -> Worker:
    # Replay clock, a lateness longer than the input and a stop at every partition's end: the moments depend on
    # the events only, not on how partitions interleave, so they can be compared with a file run.
    args = ["--source", source, "--clock", "replay", "--lateness", "7d", "--kafka-bootstrap", addr,
            "--kafka-stop-at-end", "--sink", "kafka", "--sink", f"jsonl:{out}", "--no-metrics", "--status", "off"]
    return Worker(args, log, env={"CX_LOG_LEVEL": "warning", **{f"CX_TOPIC_{KINDS[k]}": v for k, v in names.items()}})


def test_hostile_kafka_traffic_is_dead_lettered_and_moments_equal_a_clean_run(kafka: str, tmp_path: Path) -> None:
    rng = random.Random(12)
    valid = list(simulate(3_000, 240, seed=9).events())
    bad = [_huge(rng) if i % 5_000 == 0 else hostile(rng, valid) for i in range(TOTAL - len(valid))]
    messages: list[tuple[bytes | None, bytes]] = [(str(e["customer_id"]).encode(), orjson.dumps(e)) for e in valid]
    for b in bad:  # at random places, valid events keeping their order
        messages.insert(rng.randrange(len(messages) + 1), (None, b))
    assert len(messages) == TOTAL

    names = {k: unique(f"cx.{k}") for k in KINDS}
    create_topics(kafka, names.values(), partitions=2)
    _produce(kafka, names["events"], messages)
    mixed = _worker(kafka, names, "kafka", tmp_path / "mixed", tmp_path / "mixed.log")
    assert mixed.wait(600) == 0, mixed.log()[-3000:]

    clean_src = tmp_path / "clean.jsonl"
    clean_src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in valid))
    clean_names = {k: unique(f"cx.{k}") for k in KINDS}
    create_topics(kafka, clean_names.values(), partitions=2)
    clean = _worker(kafka, clean_names, f"file:{clean_src}", tmp_path / "clean", tmp_path / "clean.log")
    assert clean.wait(600) == 0, clean.log()[-3000:]

    # kcat, an independent client, counts the dead letters on the topic: one per hostile message.
    out = kcat(tmp_path, "-b", kafka, "-C", "-t", names["dead_letter"], "-e", "-q", "-f", "%s\n", timeout_s=120)
    dead = [orjson.loads(line) for line in out.splitlines() if line]
    assert len(dead) == len(bad), Counter(d["reason"].split(":")[0] for d in dead)
    assert Counter(d["raw_sha256"] for d in dead) == Counter(hashlib.sha256(b).hexdigest() for b in bad)
    assert all(len(orjson.dumps(d)) < 1_000_000 for d in dead)
    assert all(d["reason"] != "output_refused" for d in dead)
    huge = [d for d in dead if d["raw_len"] > 16 * 1024]
    assert huge
    assert all(d["truncated"] for d in huge)
    assert {d["raw_len"] for d in huge} >= {200 * 1024, 2_000_016}

    clean_ids = sorted(m["moment_id"] for m in read_jsonl(tmp_path / "clean" / "moments.jsonl"))
    mixed_ids = sorted(m["moment_id"] for m in read_jsonl(tmp_path / "mixed" / "moments.jsonl"))
    assert len(clean_ids) > 100
    assert mixed_ids == clean_ids
    # The moments published on Kafka are the same (read back with kcat).
    published = kcat(tmp_path, "-b", kafka, "-C", "-t", names["moment"], "-e", "-q", "-f", "%s\n", timeout_s=120)
    assert sorted(orjson.loads(line)["moment_id"] for line in published.splitlines() if line) == clean_ids
