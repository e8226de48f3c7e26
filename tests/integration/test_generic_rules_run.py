"""A generic rule end to end: ``moments run`` on a JSONL file with the JSONL and the chDB sinks, then the reports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from state.moments import moment_id
from state.rules import DEFAULT_PACK

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_225_600_000
MIN = 60_000
RETRY = """
[[moment]]
kind = "sequence"
name = "retry_after_fail"
journeys = ["cart"]
first = { type = "fail" }
then = { type = "start" }
within = "30m"
urgency = "P1"
action = "call_back"
"""


def _moments(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CX_LOG_LEVEL": "warning", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)


def _setup(tmp_path: Path) -> None:
    (tmp_path / "pack.toml").write_text(DEFAULT_PACK.read_text(encoding="utf-8") + RETRY, encoding="utf-8")
    events = [
        {"event_id": "e1", "customer_id": "c1", "ts": T0, "channel": "app", "type": "view", "journey": "cart",
         "step": "cart"},
        {"event_id": "e2", "customer_id": "c1", "ts": T0 + MIN, "channel": "app", "type": "fail", "journey": "cart",
         "step": "checkout"},
        {"event_id": "e3", "customer_id": "c1", "ts": T0 + 5 * MIN, "channel": "web", "type": "start",
         "journey": "cart", "step": "checkout"},
        {"event_id": "e4", "customer_id": "c2", "ts": T0 + 90 * MIN, "channel": "app", "type": "view",
         "journey": "cart", "step": "product"},
    ]
    (tmp_path / "events.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))


def test_a_generic_rule_fires_through_moments_run_into_jsonl(tmp_path: Path) -> None:
    _setup(tmp_path)
    run = _moments("run", "--source", "file:events.jsonl", "--rules", "pack.toml", "--sink", "jsonl:out",
                   "--no-metrics", "--status", "off", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    moments = [orjson.loads(x) for x in (tmp_path / "out" / "moments.jsonl").read_bytes().splitlines()]
    [m] = [m for m in moments if m["rule"] == "cart.retry_after_fail"]
    assert (m["kind"], m["urgency"], m["action"], m["evidence"], m["due_ts"]) == (
        "sequence", "P1", "call_back", ["e2", "e3"], T0 + 5 * MIN)
    assert m["moment_id"] == moment_id("c1", "cart.retry_after_fail", "e3")
    actions = [orjson.loads(x) for x in (tmp_path / "out" / "actions.jsonl").read_bytes().splitlines()]
    assert [a["rule"] for a in actions if a["moment_id"] == m["moment_id"]] == ["cart.retry_after_fail"]
    assert "cart.failed" in {x["rule"] for x in moments}  # the built-ins run next to it


def test_a_generic_rule_reaches_chdb_and_the_reports(tmp_path: Path) -> None:
    _setup(tmp_path)
    dsn = f"chdb://{tmp_path / 'ch'}"
    run = _moments("run", "--source", "file:events.jsonl", "--rules", "pack.toml", "--sink", dsn, "--no-metrics",
                   "--status", "off", cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    report = _moments("report", "--clickhouse", dsn, cwd=tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "cart.retry_after_fail" in report.stdout, report.stdout
    rules = _moments("report", "rules", "--json", "--clickhouse", dsn, cwd=tmp_path)
    assert rules.returncode == 0, rules.stderr[-3000:]
    assert "cart.retry_after_fail" in {r["rule"] for r in orjson.loads(rules.stdout)["rules"]}, rules.stdout
