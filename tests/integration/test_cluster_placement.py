"""A cluster reads replay input where its shards live: Bytewax places keys as predicted, moments stay identical."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import read_jsonl
from connectors.placement import Placement, worker_of_key
from connectors.simulator import simulate, write_jsonl
from state.routing import shard_of_id
from tests.kafka_helpers import free_port
from tests.placement_probe import KEYS, probe
from tests.worker import Worker


def test_stateful_keys_run_on_the_worker_placement_predicts() -> None:
    seen = probe(workers=4)
    assert seen == {k: worker_of_key(k, 4) for k in KEYS}


@pytest.mark.slow
def test_stateful_keys_run_in_the_process_placement_predicts(tmp_path: Path) -> None:
    """Two processes of two workers: timely numbers workers process by process."""
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.placement_probe", str(i), addrs, "2", str(outs[i])])
             for i in range(2)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    for i, out in enumerate(outs):
        seen: dict[str, int] = orjson.loads(out.read_bytes())
        assert seen == {k: worker_of_key(k, 4) for k in KEYS if worker_of_key(k, 4) // 2 == i}
        assert set(seen) == {str(s) for s in Placement(i, 2, 2).own_shards(len(KEYS))}


def _events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    write_jsonl(simulate(4_000, 240, seed=21), path, None)
    lines = path.read_bytes().splitlines()
    # Invalid lines (one with a far-future time) must move neither process's clock.
    hostile = [b"not json", b'{"event_id":"x1","ts":4000000000000,"channel":"app","type":"view"}',
               b'{"customer_id":"c0000007","ts":4000000000000}']
    for i, raw in enumerate(hostile):
        lines.insert((i + 1) * len(lines) // 4, raw)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _moments(out: Path) -> dict[str, dict[str, object]]:
    path = out / "moments.jsonl"
    if not path.exists():
        return {}
    return {m["moment_id"]: {k: v for k, v in m.items() if k != "detected_at"} for m in read_jsonl(path)}


def _count(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path)) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_one_and_two_processes_detect_identical_moments_from_a_file(tmp_path: Path, workers: int) -> None:
    events = _events_file(tmp_path)
    args = ["--source", f"file:{events}", "--no-metrics", "--status", "off"]
    one = Worker([*args, "--sink", f"jsonl:{tmp_path / 'one'}"], tmp_path / "one.log")
    assert one.wait(300) == 0, one.log()[-3000:]
    expected = _moments(tmp_path / "one")
    assert len(expected) > 1000

    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    cluster = [Worker([*args, "--sink", f"jsonl:{tmp_path / f'p{i}'}", "-w", str(workers), "-i", str(i), "-a", addrs],
                      tmp_path / f"p{i}.log") for i in range(2)]
    for w in cluster:
        assert w.wait(300) == 0, w.log()[-3000:]
    got = [_moments(tmp_path / f"p{i}") for i in range(2)]
    assert {**got[0], **got[1]} == expected
    assert not set(got[0]) & set(got[1])
    # Each process writes the moments of the shards it runs: outputs did not cross between processes either.
    for i in range(2):
        own = Placement(i, 2, workers).own_shards(64)
        assert {shard_of_id(str(m["customer_id"]), 64) for m in got[i].values()} <= own
    dead = [_count(tmp_path / d / "deadletter.jsonl") for d in ("one", "p0", "p1")]
    assert dead[0] == dead[1] + dead[2] >= 3
