"""Two copies of one event_id at one ts, with different content, in two input files (issue 12).

DESIGN §8 keeps the first of events sharing an event_id in input order; across files input order is (place in
the input list, line). The reproduction: a 500-customer hour of simulated traffic with a ``fail`` copy inserted
at line 2,500 of the first file and a ``view`` copy alone in the second. Which copy was kept depended on which
file's batch reached the shard first: 444 moments with one worker, 443 with two. Now the ``fail`` copy is kept
for any -w and across a restart, and listing the files the other way round keeps the ``view`` copy.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from connectors.simulator import simulate
from flows.config import PipelineConfig
from tests.integration.test_partitioned_replay import _run as _run_workers
from tests.integration.test_resume_replay import _stopped_then_resumed

AT = 2_500


def _files(tmp: Path) -> tuple[Path, Path]:
    lines = [orjson.dumps(e) for e in simulate(500, 60, seed=1).events()]
    copy = {"event_id": "dup2", "customer_id": "cdup", "ts": orjson.loads(lines[AT - 1])["ts"], "channel": "web",
            "type": "fail", "journey": "cart", "step": "checkout", "entry": "direct", "attrs": {}}
    e_b, e_a = tmp / "eB.jsonl", tmp / "eA.jsonl"
    e_b.write_bytes(b"".join(line + b"\n" for line in [*lines[:AT - 1], orjson.dumps(copy), *lines[AT - 1:]]))
    e_a.write_bytes(orjson.dumps({**copy, "type": "view"}) + b"\n")
    return e_b, e_a


def _cfg(paths: list[Path], out: Path, workers: int = 1, batch_lines: int = 4096) -> PipelineConfig:
    return PipelineConfig(source="file:" + ",".join(map(str, paths)), sinks=(f"jsonl:{out}",), metrics_port=None,
                          workers=workers, batch_lines=batch_lines)


def _cdup(ids: set[str], out: Path) -> list[str]:
    """The rules that fired for the duplicated customer."""
    return sorted(m["rule"] for m in map(orjson.loads, (out / "moments.jsonl").read_bytes().splitlines())
                  if m["customer_id"] == "cdup" and m["moment_id"] in ids)


def test_the_copy_in_the_first_file_is_kept_with_any_workers_and_across_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    e_b, e_a = _files(tmp_path)
    one, _ = _run_workers(_cfg([e_b, e_a], tmp_path / "w1"), tmp_path / "w1")
    two, _ = _run_workers(_cfg([e_b, e_a], tmp_path / "w2", workers=2), tmp_path / "w2")
    assert len(one) > 400
    assert _cdup(one, tmp_path / "w1") == ["cart.abandoned", "cart.failed"]  # the fail copy, from the first file
    assert two == one
    # A restart after the copy in the first file was read, before the second file's copy was applied.
    resumed, _customers = _stopped_then_resumed(
        monkeypatch, lambda name, batch: _cfg([e_b, e_a], tmp_path / name, batch_lines=batch), "0", AT + 100,
        tmp_path)
    assert resumed == one


def test_listing_the_files_the_other_way_round_keeps_the_other_copy(tmp_path: Path) -> None:
    e_b, e_a = _files(tmp_path)
    ids, _ = _run_workers(_cfg([e_a, e_b], tmp_path / "out", workers=2), tmp_path / "out")
    assert _cdup(ids, tmp_path / "out") == ["cart.abandoned"]  # the view copy: no failure
