"""End to end through the CLI with a generic pack: simulate --rules → run --rules, against the ground truth."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.jsonl import read_jsonl
from state.moments import moment_id

pytestmark = pytest.mark.slow

PACK = Path(__file__).resolve().parents[1] / "fixtures" / "rulepacks" / "generic_sim.toml"


def _moments(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CX_LOG_LEVEL": "warning"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def test_pipeline_moments_of_a_generic_pack_equal_the_simulators_ground_truth(tmp_path: Path) -> None:
    sim = _moments("simulate", "--customers", "1500", "--minutes", "180", "--seed", "13", "--rules", str(PACK),
                   "-o", "events.jsonl", "--truth", "truth.jsonl", cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    run = _moments("run", "--source", "file:events.jsonl", "--sink", "jsonl:out", "--rules", str(PACK),
                   "--no-metrics", "--status", "off", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    truth = read_jsonl(tmp_path / "truth.jsonl")
    expected = {moment_id(str(t["customer_id"]), str(t["rule"]), str(t["anchor_event_id"])): t["due_ts"]
                for t in truth}
    got = {str(m["moment_id"]): m["due_ts"] for m in read_jsonl(tmp_path / "out" / "moments.jsonl")}
    assert got == expected
    kinds = {str(m["kind"]) for m in read_jsonl(tmp_path / "out" / "moments.jsonl")}
    assert {"count", "distinct", "absence", "sequence"} <= kinds
