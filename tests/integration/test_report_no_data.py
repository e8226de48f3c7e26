"""``moments report`` on a database nothing was written to yet: one line saying so, not an "Unknown table" traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _moments(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CX_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


@pytest.mark.parametrize("view", [[], ["rules"]])
def test_report_on_a_new_embedded_database_says_there_is_no_data_yet(tmp_path: Path, view: list[str]) -> None:
    dsn = f"chdb://{tmp_path / 'new.chdb'}"
    run = _moments("report", *view, "--clickhouse", dsn, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    lines = run.stdout.strip().splitlines()
    assert len(lines) == 1, run.stdout
    assert lines[0].startswith(f"no data yet: {dsn} has no moments"), lines[0]
    assert "moments run" in lines[0]


@pytest.mark.parametrize("view", [[], ["rules"], ["--html", "r.html"]])
def test_a_report_on_a_missing_embedded_path_creates_nothing(tmp_path: Path, view: list[str]) -> None:
    # A report only reads: a mistyped path must not leave new directories behind.
    path = tmp_path / "nonexistent" / "deeper" / "db"
    run = _moments("report", *view, "--clickhouse", f"chdb://{path}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "no data yet" in run.stdout, run.stdout
    assert not (tmp_path / "nonexistent").exists()


def test_report_rules_json_on_a_new_database_is_an_empty_report(tmp_path: Path) -> None:
    run = _moments("report", "rules", "--json", "--clickhouse", f"chdb://{tmp_path / 'new.chdb'}", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert orjson.loads(run.stdout)["rules"] == []  # still JSON for whatever reads stdout
    assert run.stderr.strip().startswith("no data yet:"), run.stderr[-3000:]


def test_report_rules_into_a_reader_that_went_away_ends_quietly(tmp_path: Path) -> None:
    # `moments report rules | head`: the reader may be gone before the report is written.
    sim = _moments("simulate", "--customers", "300", "--minutes", "60", "-o", "events.jsonl", cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    dsn = f"chdb://{tmp_path / 'ch'}"
    run = _moments("run", "--source", "file:events.jsonl", "--sink", dsn, "--no-metrics", "--status", "off",
                   cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    for view in (["rules"], []):
        read, write = os.pipe()
        os.close(read)
        try:
            p = subprocess.run([sys.executable, "-m", "flows.cli", "report", *view, "--clickhouse", dsn],
                               cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=write,
                               stderr=subprocess.PIPE, timeout=300, check=False)
        finally:
            os.close(write)
        err = p.stderr.decode()
        assert p.returncode == 141, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        assert "BrokenPipeError" not in err, err[-3000:]
