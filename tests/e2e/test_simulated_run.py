"""End to end through the CLI: simulate → run (file input) → JSONL + embedded ClickHouse, against ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.jsonl import read_jsonl
from tests.chdb_query import query

pytestmark = pytest.mark.slow


def _moments(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CX_LOG_LEVEL": "warning"}
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def simulated_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    work = tmp_path_factory.mktemp("e2e")
    sim = _moments("simulate", "--customers", "3000", "--minutes", "240", "--seed", "11",
                   "-o", "events.jsonl", "--truth", "truth.jsonl", cwd=work)
    assert sim.returncode == 0, sim.stderr
    dsn = f"chdb://{work / 'ch'}"
    run = _moments("run", "--source", "file:events.jsonl", "--sink", "jsonl:out", "--sink", dsn,
                   "--no-metrics", "--status", "off", cwd=work)
    assert run.returncode == 0, run.stderr
    return {"work": work, "dsn": dsn, "stdout": run.stdout}


def test_detected_moments_match_ground_truth_with_precision_and_recall_one(simulated_run: dict[str, object]) -> None:
    work = simulated_run["work"]
    assert isinstance(work, Path)
    truth = read_jsonl(work / "truth.jsonl")
    found = read_jsonl(work / "out" / "moments.jsonl")
    assert truth, "the simulator planted no moments"
    from state.moments import moment_id

    expected = {moment_id(str(t["customer_id"]), str(t["rule"]), str(t["anchor_event_id"])) for t in truth}
    got = {str(m["moment_id"]) for m in found}
    true_pos = len(expected & got)
    precision = true_pos / len(got) if got else 0.0
    recall = true_pos / len(expected)
    print(f"planted={len(expected)} detected={len(got)} precision={precision:.4f} recall={recall:.4f}")
    assert (precision, recall) == (1.0, 1.0), sorted(expected ^ got)[:10]
    kinds = {str(m["kind"]) for m in found}
    assert kinds == {"abandoned", "failed", "stuck", "maze", "channel_hop", "interested", "handoff"}


def test_due_times_match_ground_truth(simulated_run: dict[str, object]) -> None:
    work = simulated_run["work"]
    assert isinstance(work, Path)
    from state.moments import moment_id

    due = {moment_id(str(t["customer_id"]), str(t["rule"]), str(t["anchor_event_id"])): t["due_ts"]
           for t in read_jsonl(work / "truth.jsonl")}
    for m in read_jsonl(work / "out" / "moments.jsonl"):
        assert m["due_ts"] == due[m["moment_id"]], m["rule"]


def test_clickhouse_holds_the_same_moments_as_the_jsonl_output(simulated_run: dict[str, object]) -> None:
    work, dsn = simulated_run["work"], simulated_run["dsn"]
    assert isinstance(work, Path)
    assert isinstance(dsn, str)
    jsonl = {(m["moment_id"], m["rule"], m["due_ts"]) for m in read_jsonl(work / "out" / "moments.jsonl")}
    rows = query(dsn, "SELECT moment_id, rule, due_ts FROM moments FINAL")
    table = {(str(a), str(b), int(c)) for a, b, c in rows}
    steps = query(dsn, "SELECT count() FROM journey_steps")[0][0]
    tags = query(dsn, "SELECT count() FROM customer_tags FINAL")[0][0]
    assert table == jsonl
    assert steps > 0
    assert tags > 0


def test_report_prints_moments_by_rule_and_funnel(simulated_run: dict[str, object]) -> None:
    work, dsn = simulated_run["work"], simulated_run["dsn"]
    assert isinstance(work, Path)
    assert isinstance(dsn, str)
    rep = _moments("report", "--clickhouse", dsn, cwd=work)
    assert rep.returncode == 0, rep.stderr
    assert "cart.abandoned" in rep.stdout
    assert "Journey 5g_upgrade: funnel" in rep.stdout
    assert "order_form" in rep.stdout


def test_html_report_renders_charts_with_the_stored_numbers(simulated_run: dict[str, object]) -> None:
    from html.parser import HTMLParser

    work, dsn = simulated_run["work"], simulated_run["dsn"]
    assert isinstance(work, Path)
    assert isinstance(dsn, str)
    page = work / "report.html"
    rep = _moments("report", "--clickhouse", dsn, "--html", str(page), cwd=work)
    assert rep.returncode == 0, rep.stderr

    class Charts(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.charts: dict[str, dict[str, float]] = {}
            self._current = ""

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            a = dict(attrs)
            if tag == "section" and a.get("class") == "chart":
                self._current = str(a["data-chart"])
                self.charts[self._current] = {}
            elif tag == "g" and "data-label" in a:
                self.charts[self._current][str(a["data-label"])] = float(str(a["data-value"]))

    parser = Charts()
    parser.feed(page.read_text())
    by_rule = parser.charts["Moments by rule"]
    stored = {r: n for r, n in query(dsn, "SELECT rule, count() FROM moments FINAL GROUP BY rule")}
    assert by_rule == {str(r): float(n) for r, n in stored.items()}
    assert parser.charts["cart: attempts reaching each step"]["product"] > 0
    assert set(parser.charts["cart: drop-off at key steps"]) == {"checkout", "payment"}
    assert parser.charts["cart: abandonments per 100 key-step arrivals, by entry point"]
    assert sum(parser.charts["Moments per hour (due time, UTC)"].values()) == sum(by_rule.values())


def test_stuck_acts_under_the_default_pack_by_escalating_past_min_gap(simulated_run: dict[str, object]) -> None:
    work, dsn = simulated_run["work"], simulated_run["dsn"]
    assert isinstance(work, Path)
    assert isinstance(dsn, str)
    report = _moments("report", "rules", "--clickhouse", dsn, "--json", cwd=work)
    assert report.returncode == 0, report.stderr
    stuck = {r["rule"]: r for r in json.loads(report.stdout)["rules"] if r["rule"].endswith(".stuck")}
    assert set(stuck) == {"cart.stuck", "5g_upgrade.stuck"}
    for r in stuck.values():
        # Before escalation every one of them was suppressed by the min_gap the `failed` action opened.
        assert r["sent"] > 0, r
        assert r["sent"] + r["control"] > r["suppressed"], r
    escalated = query(dsn, "SELECT count() FROM actions FINAL WHERE endsWith(rule, '.stuck') AND reason = 'escalated'")
    assert escalated[0][0] > 0
