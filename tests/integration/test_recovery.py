"""Crash recovery: SIGKILL a worker mid-stream, restart it, and find every moment exactly as without the crash."""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate, write_jsonl
from tests.kafka_helpers import create_topics, produce, unique
from tests.worker import Worker

pytestmark = pytest.mark.slow


def _ids(path: Path) -> list[str]:
    return [m["moment_id"] for m in read_jsonl(path / "moments.jsonl")]


def _crash_and_resume(args: list[str], out: Path, recovery: Path, tmp: Path, seed: int, env: dict[str, str]) -> int:
    """Run with recovery, SIGKILL at a random point, restart until the run completes; return kills."""
    rng = random.Random(seed)
    kills = 0
    for attempt in range(6):
        w = Worker([*args, "--sink", f"jsonl:{out}", "--recovery-dir", str(recovery), "--snapshot-interval", "0.5"],
                   tmp / f"run-{seed}-{attempt}.log", env=env)
        if attempt < 2:
            time.sleep(rng.uniform(2.5, 5.0))
            if w.alive():
                w.proc.send_signal(signal.SIGKILL)
                w.proc.wait(timeout=10)
                kills += 1
                continue
        assert w.wait(300) == 0, w.log()[-3000:]
        return kills
    raise AssertionError("the run never completed")


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_mid_stream_loses_no_moment_from_a_file(tmp_path: Path, seed: int) -> None:
    events = tmp_path / "events.jsonl"
    write_jsonl(simulate(30_000, 600, seed=seed), events, None)
    args = ["--source", f"file:{events}", "--no-metrics", "--status", "off"]
    clean = Worker([*args, "--sink", f"jsonl:{tmp_path / 'clean'}"], tmp_path / "clean.log")
    assert clean.wait(300) == 0, clean.log()[-3000:]
    kills = _crash_and_resume(args, tmp_path / "crashed", tmp_path / "recovery", tmp_path, seed, {})
    assert kills >= 1, "the run finished before it could be killed; make the input larger"
    expected = _ids(tmp_path / "clean")
    got = _ids(tmp_path / "crashed")
    assert set(got) == set(expected)
    assert len(expected) == len(set(expected))


@pytest.mark.kafka
def test_sigkill_mid_stream_loses_no_moment_from_kafka(kafka: str, tmp_path: Path) -> None:
    topics = {"CX_TOPIC_EVENTS": unique("cx.events"), "CX_TOPIC_FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=1)
    values = [orjson.dumps(e) for e in simulate(30_000, 600, seed=5).events()]
    produce(kafka, topics["CX_TOPIC_EVENTS"], values)
    args = ["--source", "kafka", "--kafka-bootstrap", kafka, "--clock", "replay", "--kafka-stop-at-end",
            "--no-metrics", "--status", "off"]
    clean = Worker([*args, "--sink", f"jsonl:{tmp_path / 'clean'}"], tmp_path / "clean.log", env=topics)
    assert clean.wait(300) == 0, clean.log()[-3000:]
    kills = _crash_and_resume(args, tmp_path / "crashed", tmp_path / "recovery", tmp_path, 5, topics)
    assert kills >= 1
    assert set(_ids(tmp_path / "crashed")) == set(_ids(tmp_path / "clean"))
