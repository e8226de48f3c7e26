"""Late events end to end: a file replay writes each one, with its id and how late, to JSONL and ClickHouse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from connectors.jsonl import read_jsonl
from tests.chdb_query import query
from tests.helpers import MIN, T0, ev

REPO = Path(__file__).resolve().parents[2]


def test_a_file_replay_records_its_late_event_in_jsonl_and_clickhouse(tmp_path: Path) -> None:
    # The view is 10 minutes behind the lines before it, in the file's next batch (4,096 lines a batch): more
    # than the 30 s lateness behind the watermark the file's progress moved there.
    filler = [ev(f"p{i}", 20 * MIN, journey=None, customer=f"x{i % 50}") for i in range(4100)]
    late = ev("late-1", 10 * MIN, "view", step="cart")
    events = [ev("a1", 0, "fail"), *filler, late, ev("a3", 21 * MIN, journey=None, customer="c3")]
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\n".join(orjson.dumps(e) for e in events) + b"\n")
    dsn = f"chdb://{tmp_path / 'ch'}"
    run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--source", f"file:{src}", "--sink",
                          f"jsonl:{tmp_path / 'out'}", "--sink", dsn, "--no-metrics", "--status", "off",
                          "--shards", "4"], cwd=REPO, env={**os.environ, "CX_LOG_LEVEL": "warning"},
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr
    wm = T0 + 20 * MIN - 30_000
    [late] = read_jsonl(tmp_path / "out" / "late.jsonl")
    assert (late["event_id"], late["customer_id"], late["ts"], late["watermark"], late["late_ms"], late["offset"]) \
        == ("late-1", "c1", T0 + 10 * MIN, wm, wm - (T0 + 10 * MIN), 4102)
    assert late["source"] == f"file:{src.name}"
    assert query(dsn, "SELECT event_id, late_ms, type FROM late_events") == [["late-1", 10 * MIN - 30_000, "view"]]
    # Applied all the same: the late view is the customer's step in the journey.
    assert query(dsn, "SELECT count() FROM journey_steps WHERE event_id = 'late-1'") == [[1]]
