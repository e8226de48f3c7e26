"""Recovery partitions: each process of a cluster creates only its own, in whatever directory it is given."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from bytewax.recovery import init_db_dir

from flows.config import ConfigError, PipelineConfig
from flows.recovery import recovery_config

ADDRESSES = ("127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002")


def _cfg(process_id: int | None, processes: int) -> PipelineConfig:
    return PipelineConfig(process_id=process_id, addresses=ADDRESSES[:processes] if processes > 1 else ())


def _parts(directory: Path) -> dict[str, tuple[int, int]]:
    """File name -> (partition index, partition count), as Bytewax recorded them."""
    out = {}
    for p in sorted(directory.glob("part-*.sqlite3")):
        with closing(sqlite3.connect(p)) as db:
            out[p.name] = db.execute("SELECT part_index, part_count FROM parts").fetchone()
    return out


def test_each_process_creates_only_its_own_partition_in_its_own_directory(tmp_path: Path) -> None:
    for i in range(3):
        recovery_config(tmp_path / f"pod-{i}", _cfg(i, 3))
    for i in range(3):
        assert _parts(tmp_path / f"pod-{i}") == {f"part-{i}.sqlite3": (i, 3)}
    assert not [p for p in (tmp_path / "pod-0").iterdir() if p.name.startswith(".init-")], "staging left behind"


def test_processes_sharing_a_directory_complete_the_set(tmp_path: Path) -> None:
    for i in (1, 0):
        recovery_config(tmp_path, _cfg(i, 2))
    assert _parts(tmp_path) == {"part-0.sqlite3": (0, 2), "part-1.sqlite3": (1, 2)}


def test_a_single_process_creates_one_partition_once(tmp_path: Path) -> None:
    recovery_config(tmp_path, _cfg(None, 1))
    first = (tmp_path / "part-0.sqlite3").stat().st_mtime_ns
    recovery_config(tmp_path, _cfg(None, 1))
    assert _parts(tmp_path) == {"part-0.sqlite3": (0, 1)}
    assert (tmp_path / "part-0.sqlite3").stat().st_mtime_ns == first


def test_existing_partitions_are_left_as_they_are(tmp_path: Path) -> None:
    # The earlier layout (every partition in every process's directory) and partitions moved in by hand when
    # shrinking a cluster are Bytewax's to use; nothing is added or replaced.
    init_db_dir(tmp_path, 2)
    recovery_config(tmp_path, _cfg(None, 1))
    assert _parts(tmp_path) == {"part-0.sqlite3": (0, 2), "part-1.sqlite3": (1, 2)}


def test_partitions_of_a_smaller_cluster_are_refused_naming_the_file(tmp_path: Path) -> None:
    recovery_config(tmp_path, _cfg(0, 2))
    with pytest.raises(ConfigError, match=r"part-0\.sqlite3 belongs to a cluster of 2 process\(es\), this one has 3"):
        recovery_config(tmp_path, _cfg(0, 3))
