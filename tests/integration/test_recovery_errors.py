"""Recovery directories: one process per partition, and damaged or unwritable stores named with what to do."""

from __future__ import annotations

import pickle
import resource
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from connectors.simulator import simulate
from tests.worker import Worker


def _events(tmp_path: Path) -> Path:
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in simulate(200, 60, seed=3).events()))
    return src


def _args(src: str, rec: Path) -> list[str]:
    return ["--source", src, "--sink", "none", "--no-metrics", "--status", "off", "--shards", "4",
            "--recovery-dir", str(rec)]


def _moments_run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    kw.setdefault("timeout", 300)
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", *args], capture_output=True, text=True,
                          **kw)  # type: ignore[call-overload, no-any-return]


def _error_line(p: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in p.stderr.splitlines() if line.startswith("moments run: error:")]
    assert len(lines) == 1, p.stderr[-3000:]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    return lines[0]


def test_a_second_process_on_the_same_recovery_dir_is_refused_naming_the_partition(tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    # A paced simulator keeps the first worker running while the second starts.
    first = Worker([*_args("simulator", rec), "--customers", "2000", "--minutes", "120", "--rate", "500"],
                   tmp_path / "first.log")
    try:
        first.wait_log("created recovery partition 0 of 1")
        second = _moments_run(_args("simulator", rec), timeout=120)
        assert second.returncode == 2, second.stderr[-3000:]
        line = _error_line(second)
        assert f"{rec / 'part-0.sqlite3'} is in use by another process (pid {first.proc.pid})" in line
        assert first.alive()
    finally:
        first.proc.kill()  # as a crash would: the kernel drops the lock with the process
        first.stop()
    again = _moments_run([*_args("simulator", rec), "--customers", "50", "--minutes", "30"])
    assert again.returncode == 0, again.stderr[-3000:]


def _first_run(tmp_path: Path) -> tuple[Path, Path]:
    src, rec = _events(tmp_path), tmp_path / "rec"
    p = _moments_run(_args(f"file:{src}", rec))
    assert p.returncode == 0, p.stderr[-3000:]
    return src, rec


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_a_damaged_recovery_partition_is_named_before_bytewax_opens_it(tmp_path: Path, damage: str) -> None:
    src, rec = _first_run(tmp_path)
    part = rec / "part-0.sqlite3"
    if damage == "truncated":
        data = part.read_bytes()
        part.write_bytes(data[: len(data) // 3])
    elif damage == "garbage":
        part.write_bytes(b"not a database at all\n" * 500)
    else:
        part.unlink()
        with closing(sqlite3.connect(part)) as db:
            db.execute("CREATE TABLE parts (part_index INTEGER, part_count INTEGER)")
            db.commit()
    p = _moments_run(_args(f"file:{src}", rec))
    assert p.returncode == 2, p.stderr[-3000:]
    line = _error_line(p)
    assert f"{part} is damaged" in line
    assert "restore it from a backup" in line


@pytest.mark.parametrize("stored", [pickle.dumps(b"not a shard"), b"\x80\x05truncated"], ids=["ours", "bytewax"])
def test_a_snapshot_that_cannot_be_restored_names_the_recovery_dir(tmp_path: Path, stored: bytes) -> None:
    # Bytewax unpickles the stored value (the second fails there), then Shard.restore unpickles ours (the first).
    src, rec = _first_run(tmp_path)
    with closing(sqlite3.connect(rec / "part-0.sqlite3")) as db:
        db.execute("UPDATE snaps SET ser_change = ? WHERE step_id LIKE '%shards' AND state_key = '0'", (stored,))
        db.commit()
    p = _moments_run(_args(f"file:{src}", rec))
    assert p.returncode == 2, p.stderr[-3000:]
    line = _error_line(p)
    assert f"--recovery-dir: {rec}: a shard snapshot cannot be restored (UnpicklingError" in line


def _small_files() -> None:
    # Snapshots hit the file-size limit as they would a full disk (Python ignores SIGXFSZ: writes fail with EFBIG).
    resource.setrlimit(resource.RLIMIT_FSIZE, (40_000, 40_000))


def test_a_recovery_store_that_cannot_be_written_names_the_directory(tmp_path: Path) -> None:
    src, rec = _events(tmp_path), tmp_path / "rec"
    p = _moments_run([*_args(f"file:{src}", rec), "--snapshot-interval", "0.05"], preexec_fn=_small_files)
    assert p.returncode == 1, p.stderr[-3000:]
    line = _error_line(p)
    assert f"recovery: writing snapshots to {rec} failed: disk I/O error" in line
    assert "disk full" in line


def _shards_args(src: str, rec: Path, shards: int) -> list[str]:
    args = _args(src, rec)
    args[args.index("--shards") + 1] = str(shards)
    return args


@pytest.mark.parametrize("shards", [5, 3])
def test_a_restart_with_other_shards_is_refused_before_it_mixes_state(tmp_path: Path, shards: int) -> None:
    # More shards: customers silently met other shards' state (more customers than exist); fewer: a Rust panic.
    src, rec = f"file:{_events(tmp_path)}", tmp_path / "rec"
    assert _moments_run(_args(src, rec)).returncode == 0
    again = _moments_run(_shards_args(src, rec, shards))
    assert again.returncode == 2, again.stderr[-3000:]
    line = _error_line(again)
    assert "--shards" in line
    assert "written with --shards 4" in line
    assert "panicked" not in again.stderr
    assert _moments_run(_args(src, rec)).returncode == 0  # the same --shards still resumes


def test_a_recovery_dir_from_before_the_layout_file_still_refuses_fewer_shards(tmp_path: Path) -> None:
    src, rec = f"file:{_events(tmp_path)}", tmp_path / "rec"
    assert _moments_run(_args(src, rec)).returncode == 0
    (rec / "cx-layout.json").unlink()  # as written by an older version
    again = _moments_run(_shards_args(src, rec, 2))
    assert again.returncode == 2, again.stderr[-3000:]
    assert "at least --shards" in _error_line(again)


def _two_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Two different input files and a recovery directory."""
    second = tmp_path / "later.jsonl"
    second.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in simulate(50, 30, seed=9).events()))
    return _events(tmp_path), second, tmp_path / "rec"


def _refused_after(first: str, then: str, rec: Path) -> tuple[str, str]:
    """Run ``first`` to its end with recovery, then ``then`` on the same state: it must exit 2; its line and stderr."""
    assert _moments_run(_args(first, rec)).returncode == 0
    again = _moments_run(_args(then, rec))
    assert again.returncode == 2, again.stderr[-3000:]
    return _error_line(again), again.stderr


def test_another_file_in_a_place_of_the_input_list_is_refused_not_skipped(tmp_path: Path) -> None:
    # The second file's lines were skipped up to the first file's position: events=0, exit 0.
    first, second, rec = _two_files(tmp_path)
    line, _stderr = _refused_after(f"file:{first}", f"file:{second}", rec)
    assert "events.jsonl" in line
    assert "later.jsonl" in line


def test_a_file_removed_from_the_input_list_is_refused_not_a_panic(tmp_path: Path) -> None:
    # Bytewax panicked on the partition it no longer had ("Key StateKey(\"1\") is not in this worker's routing map").
    first, second, rec = _two_files(tmp_path)
    line, stderr = _refused_after(f"file:{first},{second}", f"file:{first}", rec)
    assert "place 1" in line
    assert "later.jsonl" in line
    assert "panicked" not in stderr
