"""A ClickHouse error that retrying cannot fix stops the pipeline with that error, not lost on the insert thread.

The pipeline runs as ``moments run`` in a child process, and the chDB path is prepared in another: this process
never opens a chDB engine (one data path per process, one process per path).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.chdb_query import query

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Every moment the run writes violates this constraint: a permanent refusal (VIOLATED_CONSTRAINT, code 469).
_REFUSE_MOMENTS = """
import sys
from connectors.clickhouse.client import open_client
from connectors.clickhouse.schema import schema_statements
client = open_client(sys.argv[1])
for stmt in schema_statements():
    client.command(stmt)
client.command("ALTER TABLE moments ADD CONSTRAINT refuse_all CHECK schema = 0")
client.close()
"""


_DROP_A_COLUMN = """
import sys
from connectors.clickhouse.client import open_client
from connectors.clickhouse.schema import schema_statements
client = open_client(sys.argv[1])
for stmt in schema_statements():
    client.command(stmt)
client.command("ALTER TABLE moments DROP COLUMN step")
client.close()
"""


def _moments(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CX_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def test_permanent_clickhouse_error_stops_the_run_with_that_error(tmp_path: Path) -> None:
    # Before: the error was raised by the epoch's flush, then again by close() from Bytewax's destructor, and the
    # panic during unwinding left the process hanging.
    sim = _moments("simulate", "--customers", "2000", "--minutes", "120", "--seed", "5", "-o", "events.jsonl",
                   cwd=tmp_path)
    assert sim.returncode == 0, sim.stderr
    dsn = f"chdb://{tmp_path / 'ch'}"
    prep = subprocess.run([sys.executable, "-c", _REFUSE_MOMENTS, dsn], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert prep.returncode == 0, prep.stderr[-2000:]
    run = _moments("run", "--source", "file:events.jsonl", "--sink", "jsonl:out", "--sink", dsn, "--no-metrics",
                   "--status", "off", cwd=tmp_path)
    assert run.returncode != 0, run.stdout[-2000:]
    assert "VIOLATED_CONSTRAINT" in run.stderr, run.stderr[-3000:]
    assert query(dsn, "SELECT count() FROM moments") == [[0]]


def test_a_dropped_column_stops_the_start_with_one_line_naming_table_and_column(tmp_path: Path) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}"
    prep = subprocess.run([sys.executable, "-c", _DROP_A_COLUMN, dsn], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert prep.returncode == 0, prep.stderr[-2000:]
    run = _moments("run", "--customers", "20", "--minutes", "10", "--sink", dsn, "--no-metrics", "--status", "off",
                   cwd=tmp_path)
    assert run.returncode == 1, run.stderr[-3000:]
    errors = [ln for ln in run.stderr.splitlines() if "error" in ln]
    assert errors == [f"moments run: error: ClickHouse schema in {tmp_path / 'ch'} does not match the record kinds "
                      "(connectors/records.py): table moments: column step is missing (moment records need it as "
                      "LowCardinality(String)). Add or fix the columns (infra/clickhouse/*.sql shows the expected "
                      "DDL) or write to a new database."], run.stderr[-3000:]
    assert "Traceback" not in run.stderr
