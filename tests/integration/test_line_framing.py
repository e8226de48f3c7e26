"""A trailing CR is line framing: it never counts towards the 64 KiB event limit, from any source (issue 12).

A valid event of exactly 65,536 bytes plus ``\\r`` was accepted from a file (its lines lose CR/LF) and
dead-lettered as ``too_large`` from Kafka, where a message produced from a CRLF file by another tool keeps the
``\\r``. The boundary (65,535 / 65,536 / 65,537 bytes, each with and without ``\\r``) must give the same
verdicts through a file, through the real broker with the ``\\r`` kept, and through ``moments produce``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from state.events import MAX_MESSAGE_BYTES
from tests.kafka_helpers import create_topics, produce, unique
from tests.worker import Worker

pytestmark = pytest.mark.slow

SIZES = (MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1)
T0 = 1_767_225_600_000


def _event(size: int, eid: str) -> bytes:
    """A valid event of exactly ``size`` bytes (padded in ``attrs``)."""
    doc = {"event_id": eid, "customer_id": "c1", "ts": T0, "channel": "app", "type": "view", "attrs": {"pad": ""}}
    bare = len(orjson.dumps(doc))
    doc["attrs"] = {"pad": "x" * (size - bare)}
    line = orjson.dumps(doc)
    assert len(line) == size
    return line


def _messages() -> list[tuple[str, bytes]]:
    """(event id, message) in input order: each size bare, then with a trailing CR."""
    out = []
    for size in SIZES:
        out.append((f"s{size}", _event(size, f"s{size}")))
        out.append((f"s{size}cr", _event(size, f"s{size}cr") + b"\r"))
    return out


def _refused(out: Path, first_position: int) -> set[str]:
    """The event ids dead-lettered as too_large, found by their position in the input."""
    names = [eid for eid, _ in _messages()]
    rows = [orjson.loads(line) for line in (out / "deadletter.jsonl").read_bytes().splitlines()]
    assert {r["reason"] for r in rows} <= {"too_large"}, rows
    return {names[r["offset"] - first_position] for r in rows}


def _run(args: list[str], out: Path, log: Path, env: dict[str, str] | None = None) -> str:
    w = Worker([*args, "--sink", f"jsonl:{out}", "--no-metrics", "--status", "off", "--clock", "replay"], log, env)
    try:
        assert w.wait(300) == 0, w.log()[-3000:]
    finally:
        w.stop()
    return w.log()


EXPECTED = {f"s{MAX_MESSAGE_BYTES + 1}", f"s{MAX_MESSAGE_BYTES + 1}cr"}


def test_a_crlf_file_at_the_limit(tmp_path: Path) -> None:
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(m + b"\n" for _, m in _messages()))  # the CR ones end in \r\n
    log = _run(["--source", f"file:{src}"], tmp_path / "out", tmp_path / "w.log")
    assert _refused(tmp_path / "out", 1) == EXPECTED  # file positions are line numbers from 1
    assert "events=4 " in log, log[-2000:]


@pytest.mark.kafka
def test_kafka_messages_keeping_their_cr_and_moments_produce_agree_with_the_file(kafka: str, tmp_path: Path) -> None:
    kept, produced = unique("cx.events"), unique("cx.events")
    create_topics(kafka, [kept, produced])
    produce(kafka, kept, (m for _, m in _messages()))  # the \r kept, as `kcat -l` sends a CRLF file's lines
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(m + b"\n" for _, m in _messages()))
    subprocess.run([sys.executable, "-m", "flows.cli", "produce", "--input", str(src), "--topic", produced,
                    "--kafka-bootstrap", kafka], check=True, capture_output=True, timeout=120)
    base = ["--source", "kafka", "--kafka-bootstrap", kafka, "--kafka-stop-at-end"]
    for topic in (kept, produced):
        out = tmp_path / topic
        log = _run(base, out, tmp_path / f"{topic}.log", {"CX_TOPIC_EVENTS": topic, "CX_TOPIC_FEEDBACK": topic + ".fb"})
        assert _refused(out, 0) == EXPECTED, log[-2000:]  # Kafka positions are offsets from 0
        assert "events=4 " in log, log[-2000:]
