"""Same lines, same moments, whatever the input's partitioning (issue 12): the real dataflow, files and broker.

A simulated day split into several files (each in time order, read round-robin at different paces), or produced
to a 3-partition topic keyed by customer or unkeyed, gives the moments of the single file, with no late event,
with one worker, two, or a cluster of two processes, at the default 30 s lateness.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from bytewax.run import cli_main

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate
from flows.config import DEFAULT_TOPICS, PipelineConfig
from flows.dataflow import build_dataflow
from state.outputs import Outputs
from tests.helpers import PACK
from tests.kafka_helpers import create_topics, free_port, produce, unique
from tests.worker import Worker

SHARDS = 64


def _lines() -> list[bytes]:
    return [orjson.dumps(e) for e in simulate(300, 60, seed=1).events()]


def _key(v: bytes) -> bytes:
    return str(orjson.loads(v)["customer_id"]).encode()


def _split(lines: list[bytes], tmp: Path, parts: int) -> list[Path]:
    """Contiguous pieces of the input (as ``split -l`` makes): each file covers its own stretch of time."""
    size = -(-len(lines) // parts)
    paths = []
    for i in range(parts):
        p = tmp / f"part{i}.jsonl"
        p.write_bytes(b"".join(line + b"\n" for line in lines[i * size:(i + 1) * size]))
        paths.append(p)
    return paths


def _run(cfg: PipelineConfig, out: Path) -> tuple[set[str], int]:
    """Run the dataflow in this process; return the moment ids and the late events counted."""
    late = [0]

    def written(_key: str, o: Outputs, _n: int) -> None:
        late[0] += o.late

    cli_main(build_dataflow(cfg.validate(), PACK, written), workers_per_process=cfg.workers,
             epoch_interval=timedelta(seconds=1))
    return {m["moment_id"] for m in read_jsonl(out / "moments.jsonl")}, late[0]


def _file_run(paths: list[Path], tmp: Path, name: str, workers: int = 1) -> tuple[set[str], int]:
    out = tmp / name
    # Small batches: the files are read round-robin, each at its own pace in event time.
    cfg = PipelineConfig(source="file:" + ",".join(map(str, paths)), sinks=(f"jsonl:{out}",), metrics_port=None,
                         shards=SHARDS, batch_lines=50, workers=workers)
    return _run(cfg, out)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], set[str]]:
    tmp = tmp_path_factory.mktemp("single")
    lines = _lines()
    ids, late = _file_run(_split(lines, tmp, 1), tmp, "out")
    assert late == 0
    assert len(ids) > 100
    return lines, ids


@pytest.mark.parametrize("workers", [1, 2])
def test_a_file_split_into_several_gives_the_moments_of_the_single_file(
        single: tuple[list[bytes], set[str]], tmp_path: Path, workers: int) -> None:
    lines, ids = single
    assert _file_run(_split(lines, tmp_path, 3), tmp_path, "split", workers) == (ids, 0)


def test_a_file_split_into_several_gives_the_moments_of_the_single_file_in_a_cluster(
        single: tuple[list[bytes], set[str]], tmp_path: Path) -> None:
    lines, ids = single
    paths = _split(lines, tmp_path, 4)
    out = tmp_path / "cluster"
    args = ["--source", "file:" + ",".join(map(str, paths)), "--shards", str(SHARDS), "--sink", f"jsonl:{out}",
            "--no-metrics", "--status", "off", "-w", "2"]
    ports = ";".join(f"127.0.0.1:{free_port()}" for _ in range(2))
    workers = [Worker([*args, "-i", str(i), "-a", ports], tmp_path / f"cluster-{i}.log") for i in range(2)]
    try:
        for w in workers:
            assert w.wait(240) == 0, w.log()[-3000:]
    finally:
        for w in workers:
            w.stop()
    late = [int(re.findall(r"done: .*late=(\d+)", w.log())[-1]) for w in workers]
    assert late == [0, 0]
    assert {m["moment_id"] for m in read_jsonl(out / "moments.jsonl")} == ids


@pytest.mark.kafka
@pytest.mark.parametrize("keyed", [True, False])
def test_a_kafka_replay_of_three_partitions_gives_the_moments_of_the_file(
        single: tuple[list[bytes], set[str]], kafka: str, tmp_path: Path, keyed: bool) -> None:
    lines, ids = single
    topics = {**DEFAULT_TOPICS, "events": unique("cx.events"), "feedback": unique("cx.feedback")}
    create_topics(kafka, [topics["events"], topics["feedback"]], partitions=3)
    # Unkeyed: the client spreads the lines over the partitions (a customer's events land in several).
    produce(kafka, topics["events"], lines, key_of=_key if keyed else None)
    out = tmp_path / "kafka"
    cfg = PipelineConfig(source="kafka", sinks=(f"jsonl:{out}",), metrics_port=None, shards=SHARDS,
                         kafka_bootstrap=kafka, kafka_topics=topics, kafka_stop_at_end=True, clock="replay")
    assert _run(cfg, out) == (ids, 0)


def test_split_files_stopped_mid_input_and_resumed_give_the_moments_of_the_single_file(
        single: tuple[list[bytes], set[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.test_resume_replay import _stopped_then_resumed

    lines, ids = single
    paths = _split(lines, tmp_path, 3)

    def cfg(name: str, batch_lines: int) -> PipelineConfig:
        return PipelineConfig(source="file:" + ",".join(map(str, paths)), sinks=(f"jsonl:{tmp_path / name}",),
                              metrics_port=None, shards=SHARDS, batch_lines=min(batch_lines, 50))

    # The first file stops after 300 of its lines (the others read about as far); the rest after the restart.
    got, _customers = _stopped_then_resumed(monkeypatch, cfg, "0", 300, tmp_path, first_batch=50)
    assert got == ids
