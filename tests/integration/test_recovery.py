"""Crash recovery: SIGKILL a worker mid-stream, restart it, and find every moment exactly as without the crash."""

from __future__ import annotations

import random
import signal
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate, write_jsonl
from tests.kafka_helpers import create_topics, free_port, produce, unique
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
            time.sleep(rng.uniform(2.5, 5.0))  # the scenario: a crash at a random moment of the run, not a wait
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
@pytest.mark.parametrize("seed", [5, 9])
def test_sigkill_mid_stream_loses_no_moment_from_kafka(kafka: str, tmp_path: Path, seed: int) -> None:
    topics = {"CX_TOPIC_EVENTS": unique("cx.events"), "CX_TOPIC_FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=1)
    values = [orjson.dumps(e) for e in simulate(30_000, 600, seed=seed).events()]
    produce(kafka, topics["CX_TOPIC_EVENTS"], values)
    args = ["--source", "kafka", "--kafka-bootstrap", kafka, "--clock", "replay", "--kafka-stop-at-end",
            "--no-metrics", "--status", "off"]
    clean = Worker([*args, "--sink", f"jsonl:{tmp_path / 'clean'}"], tmp_path / "clean.log", env=topics)
    assert clean.wait(300) == 0, clean.log()[-3000:]
    kills = _crash_and_resume(args, tmp_path / "crashed", tmp_path / "recovery", tmp_path, seed, topics)
    assert kills >= 1
    assert set(_ids(tmp_path / "crashed")) == set(_ids(tmp_path / "clean"))


def _lines(path: Path) -> int:
    """Complete lines in a JSONL file another process may be appending to."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _resume_epoch(dirs: list[Path]) -> int:
    """The epoch a restart would resume from (0 before any snapshot), computed as Bytewax 0.21 does.

    Bytewax's ``resume_from`` (src/recovery.rs) takes the latest execution in the partitions' ``exs`` table and the
    lowest of its workers' frontiers in ``fronts``. Read-only, while the cluster may be writing.
    """
    exs: list[tuple[int, int, int]] = []
    fronts: list[tuple[int, int, int]] = []
    for part in sorted(p for d in dirs for p in d.glob("part-*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1)) as db:
                exs += db.execute("SELECT ex_num, worker_count, resume_epoch FROM exs").fetchall()
                fronts += db.execute("SELECT ex_num, worker_index, worker_frontier FROM fronts").fetchall()
        except sqlite3.Error:
            return 0  # mid-write: the caller asks again
    if not exs:
        return 0
    ex, workers, resume = max(exs)
    frontier = dict.fromkeys(range(workers), resume)
    for e, w, f in fronts:
        if e == ex:
            frontier[w] = max(frontier.get(w, resume), f)
    return min(frontier.values())


def _kill_after_progress(cluster: list[Worker], victims: list[int], out: Path, lines: int, dirs: list[Path],
                         epoch: int, timeout_s: float = 120) -> None:
    """SIGKILL the victims once ``out`` has ``lines`` lines and a snapshot at ``epoch`` or later is committed.

    The survivors must then fail on the lost connection by themselves, as a pod's peers do.
    """
    end = time.monotonic() + timeout_s
    while _lines(out) < lines or _resume_epoch(dirs) < epoch:
        assert all(w.alive() for w in cluster), "the cluster finished before it could be killed; make the input larger"
        assert time.monotonic() < end, f"no progress to {lines} lines and epoch {epoch} in {timeout_s}s"
        time.sleep(0.05)
    for i in victims:
        cluster[i].proc.send_signal(signal.SIGKILL)
    for i, w in enumerate(cluster):
        assert w.wait(30) != 0, f"process {i} outlived its killed peer"
        w.stop()


def _start_cluster(args: list[str], tmp_path: Path, recovery: list[Path], attempt: int, workers: int,
                   env: dict[str, str] | None = None) -> list[Worker]:
    """Start a two-process cluster, each process with its own recovery directory.

    One output directory per run (``run-<attempt>``), to tell what each restart re-emitted.
    """
    ports = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    return [Worker([*args, "--sink", f"jsonl:{tmp_path / f'run-{attempt}'}", "--recovery-dir", str(recovery[i]),
                    "--snapshot-interval", "0.5", "-w", str(workers), "-i", str(i), "-a", ports],
                   tmp_path / f"run-{attempt}-{i}.log", env=env) for i in range(2)]


@pytest.mark.kafka
def test_two_process_cluster_with_a_recovery_dir_each_resumes_after_sigkill(kafka: str, tmp_path: Path) -> None:
    """As in a StatefulSet: each process has its own recovery volume, holding only its own partition."""
    topics = {"CX_TOPIC_EVENTS": unique("cx.events"), "CX_TOPIC_FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=4)
    values = [orjson.dumps(e) for e in simulate(45_000, 600, seed=9).events()]
    produce(kafka, topics["CX_TOPIC_EVENTS"], values, key_of=lambda v: orjson.loads(v)["customer_id"].encode())
    args = ["--source", "kafka", "--kafka-bootstrap", kafka, "--clock", "replay", "--kafka-stop-at-end",
            "--no-metrics", "--status", "off"]
    clean = Worker([*args, "--sink", f"jsonl:{tmp_path / 'clean'}"], tmp_path / "clean.log", env=topics)
    assert clean.wait(300) == 0, clean.log()[-3000:]
    expected = set(_ids(tmp_path / "clean"))
    recovery = [tmp_path / "recovery-0", tmp_path / "recovery-1"]

    def start(attempt: int, workers: int) -> list[Worker]:
        return _start_cluster(args, tmp_path, recovery, attempt, workers, env=topics)

    # Kill both processes, then only process 1 (process 0 must exit by itself), each once the run has committed
    # snapshots of its own so the restart has a point to resume from. The first run waits for two epochs and 40%
    # of the moments: its first epoch carries no output while the processes connect.
    resumed_at = []
    for attempt, (share, victims, epochs) in enumerate([(0.4, [0, 1], 2), (0.0, [1], 1)]):
        cluster = start(attempt, workers=1)
        _kill_after_progress(cluster, victims, tmp_path / f"run-{attempt}" / "moments.jsonl",
                             int(share * len(expected)), recovery, max(1, _resume_epoch(recovery)) + epochs)
        resumed_at.append(_resume_epoch(recovery))
    for i, d in enumerate(recovery):
        assert sorted(p.name for p in d.glob("part-*.sqlite3")) == [f"part-{i}.sqlite3"]
    # The last run also changes the threads per process: Bytewax re-assigns partitions to workers, and only the
    # written copy of each partition exists to be picked.
    final = start(2, workers=2)
    for w in final:
        assert w.wait(300) == 0, w.log()[-3000:]
    runs = [set(_ids(tmp_path / f"run-{a}")) for a in range(3)]
    assert set().union(*runs) == expected
    # Each restart resumed from its snapshot, not from the beginning: it re-emitted little of what came before.
    for a in (1, 2):
        before = set().union(*runs[:a])
        assert len(runs[a] & before) < len(before) / 2, (a, resumed_at, len(runs[a] & before), len(before))


def test_two_process_cluster_replaying_a_file_resumes_after_sigkill_with_other_workers(tmp_path: Path) -> None:
    """Each process reads the file for its own shards; a restart with another -w moves shards between processes,
    and each resumed input partition goes on feeding the shards whose state matches its position."""
    events = tmp_path / "events.jsonl"
    write_jsonl(simulate(45_000, 600, seed=4), events, None)
    args = ["--source", f"file:{events}", "--no-metrics", "--status", "off"]
    clean = Worker([*args, "--sink", f"jsonl:{tmp_path / 'clean'}"], tmp_path / "clean.log")
    assert clean.wait(300) == 0, clean.log()[-3000:]
    expected = set(_ids(tmp_path / "clean"))
    recovery = [tmp_path / "recovery-0", tmp_path / "recovery-1"]

    def start(attempt: int, workers: int) -> list[Worker]:
        return _start_cluster(args, tmp_path, recovery, attempt, workers)

    cluster = start(0, workers=1)
    # Both processes write to one directory, so 30% of the moments means both have made progress.
    _kill_after_progress(cluster, [0, 1], tmp_path / "run-0" / "moments.jsonl", int(0.3 * len(expected)), recovery,
                         2)
    final = start(1, workers=2)
    for w in final:
        assert w.wait(300) == 0, w.log()[-3000:]
    assert any("resumes feeding the shards it fed before" in w.log() for w in final)
    runs = [set(_ids(tmp_path / f"run-{a}")) for a in range(2)]
    assert runs[0] | runs[1] == expected
    assert len(runs[1] & runs[0]) < len(runs[0]) / 2, "the restart resumed from its snapshot, not the beginning"
