"""The whole pipeline through a ClickHouse outage: it blocks while the tables refuse inserts, then stores every row
once.

The pipeline runs in a child process (tests/clickhouse_outage.py) so that this process never opens a chDB engine:
chDB allows one data path per process, and one process per path.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.jsonl import read_jsonl

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
HOLD_S = 3.0


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """Run the pipeline (20,000 simulated customers, 10 hours) through a 3 s outage; return its report and JSONL dir."""
    tmp = tmp_path_factory.mktemp("ch-outage")
    out, report = tmp / "jsonl", tmp / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.clickhouse_outage", f"chdb://{tmp / 'ch'}", str(out), str(HOLD_S), "20000", "600",
         str(report)],
        cwd=REPO, capture_output=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return orjson.loads(report.read_bytes()), out


def test_pipeline_blocks_while_clickhouse_refuses_inserts(outage: tuple[dict[str, Any], Path]) -> None:
    r, _ = outage
    blocked, held = r["blocked"], r["held"]
    assert r["exit_code"] == 0
    # Mid-run: rows were stored before, and the run went on after the outage was lifted.
    assert blocked["rows"]["moments"] > 0
    assert r["run_s"] > r["lifted_at"] + 0.5
    # For the whole hold, not a row landed and the dataflow stood still (back-pressure, nothing dropped) ...
    assert held["t"] - blocked["t"] >= HOLD_S
    assert held["rows"] == blocked["rows"]
    assert held["jsonl_moments"] == blocked["jsonl_moments"]
    assert held["events_processed"] == blocked["events_processed"]
    # ... while the sink retried with backoff, and the metrics and /readyz said so.
    assert held["retries"] >= blocked["retries"] + 2
    assert blocked["sink_up"] == held["sink_up"] == 0
    assert blocked["ready"] is False
    assert held["ready"] is False
    # Afterwards the sink is up again and the retries stay counted.
    assert r["end"]["retries"] >= held["retries"] > 0
    assert r["end"]["sink_up"] == 1
    assert r["end"]["ready"] is True


def test_every_row_arrives_exactly_once_after_the_outage(outage: tuple[dict[str, Any], Path]) -> None:
    r, out = outage
    tables = r["tables"]
    for name, t in tables.items():
        assert t["count"] == t["distinct_keys"] > 0, f"{name}: {t['count']} rows, {t['distinct_keys']} keys"
        assert t["count"] > r["held"]["rows"][name], f"{name}: nothing stored after the outage"
    # The JSONL sink of the same run, which never failed, is the reference.
    moments = [m["moment_id"] for m in read_jsonl(out / "moments.jsonl")]
    assert len(moments) == len(set(moments)) == tables["moments"]["count"]
    assert sorted(m for (m,) in tables["moments"]["rows"]) == sorted(moments)
    actions = Counter((a["moment_id"], a["status"], a["reason"]) for a in read_jsonl(out / "actions.jsonl"))
    assert Counter(tuple(a) for a in tables["actions"]["rows"]) == actions
    tags = read_jsonl(out / "tags.jsonl")
    transitions = Counter((t["customer_id"], t["tag"], t["moment_id"], t["state"], t["version"]) for t in tags)
    assert Counter(tuple(t) for t in tables["tag_history"]["rows"]) == transitions
    latest: dict[tuple[str, str], tuple[int, str]] = {}
    for t in tags:
        key = (t["customer_id"], t["tag"])
        latest[key] = max(latest.get(key, (0, "")), (t["version"], t["state"]))
    assert {(c, tag): (v, s) for c, tag, s, v in tables["customer_tags"]["rows"]} == latest
