"""Same lines, same moments over several days: customers come back after more than an attempt's timeout.

Three simulated bursts of the same 300 customers, two and five days apart, so every attempt expires and
starts anew, tags run to their TTL, customers are evicted and return, and the contact policy's weekly caps
count across bursts. A file replay is the reference; a Kafka replay, two processes of either, and a file
replay stopped mid-input and resumed from its snapshot must all give exactly its moments — with the default
30 s lateness (one topic partition: a single partition keeps the input's order, as a file does).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from connectors.simulator import DEFAULT_START_MS, simulate
from flows.config import DEFAULT_TOPICS, PipelineConfig
from tests.integration.test_replay_agreement import _cli_run, _key
from tests.integration.test_resume_replay import _run, _stopped_then_resumed
from tests.kafka_helpers import create_topics, produce, unique

DAY = 86_400_000
SHARDS = 512


def _lines() -> list[bytes]:
    lines: list[bytes] = []
    for seed, day in ((21, 0), (22, 2), (23, 5)):
        lines += [orjson.dumps(e) for e in simulate(300, 60, seed=seed, start_ms=DEFAULT_START_MS + day * DAY).events()]
    return lines


def _cli_args_default_lateness(tmp: Path, name: str, source: list[str], processes: int,
                               env: dict[str, str] | None = None) -> tuple[set[str], int]:
    return _cli_run(tmp, name, source, processes, env, lateness="30s")


@pytest.mark.kafka
def test_a_multi_day_input_gives_the_same_moments_from_every_input_path(kafka: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    lines = _lines()
    assert max(orjson.loads(x)["ts"] for x in lines) - min(orjson.loads(x)["ts"] for x in lines) > 5 * DAY
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(line + b"\n" for line in lines))
    topics = {"EVENTS": unique("cx.events"), "FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=1)
    produce(kafka, topics["EVENTS"], lines, key_of=_key)
    env = {f"CX_TOPIC_{k}": v for k, v in topics.items()}
    kafka_args = ["--source", "kafka", "--kafka-bootstrap", kafka, "--kafka-stop-at-end"]

    reference = _cli_args_default_lateness(tmp_path, "file1", ["--source", f"file:{src}"], 1)
    assert len(reference[0]) > 300
    assert _cli_args_default_lateness(tmp_path, "file2", ["--source", f"file:{src}"], 2) == reference
    assert _cli_args_default_lateness(tmp_path, "kafka1", kafka_args, 1, env) == reference
    assert _cli_args_default_lateness(tmp_path, "kafka2", kafka_args, 2, env) == reference

    # In-process (the stop needs a hook on the source): the uninterrupted run first, then stopped after the
    # second burst began and resumed from the snapshot.
    def cfg(name: str, batch_lines: int) -> PipelineConfig:
        return PipelineConfig(source=f"file:{src}", sinks=(f"jsonl:{tmp_path / name}",), metrics_port=None,
                              shards=SHARDS, batch_lines=batch_lines)

    clean = _run(cfg("clean", 4096), None)
    assert clean == reference
    at = len(lines) // 2
    assert _stopped_then_resumed(monkeypatch, cfg, "0", at, tmp_path) == clean
    assert DEFAULT_TOPICS["events"] != topics["EVENTS"]  # the run used its own topics, not leftovers
