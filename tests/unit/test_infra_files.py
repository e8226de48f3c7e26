"""infra/ files parse, and name the same topics, tables and metrics as the code."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from connectors.clickhouse import TABLES, schema_statements
from flows.config import DEFAULT_TOPICS
from flows.metrics import metric_names

INFRA = Path(__file__).resolve().parents[2] / "infra"
TOPICS = {"cx.events", "cx.moments", "cx.actions", "cx.tags", "cx.context", "cx.deadletter", "cx.feedback"}
TABLE_NAMES = {"moments", "customer_tags", "journey_states", "actions", "journey_steps", "dead_letters", "feedback"}
_METRIC = re.compile(r"\b(cx_[a-z_]+|process_[a-z_]+)\b")


def _yaml_docs(path: Path) -> list[object]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_yaml_and_json_file_parses() -> None:
    files = [*INFRA.rglob("*.yml"), *INFRA.rglob("*.yaml")]
    assert len(files) >= 8
    for f in files:
        assert _yaml_docs(f), f
    for f in INFRA.rglob("*.json"):
        json.loads(f.read_text())


def test_code_uses_the_design_topic_and_table_names() -> None:
    assert set(DEFAULT_TOPICS.values()) == TOPICS
    assert {table for table, _cols in TABLES.values()} == TABLE_NAMES
    created = {re.search(r"CREATE TABLE IF NOT EXISTS (\w+)", s).group(1) for s in schema_statements()}  # type: ignore[union-attr]
    assert created == TABLE_NAMES


def test_compose_and_kubernetes_reference_the_same_topics() -> None:
    compose = (INFRA / "docker-compose.yml").read_text()
    k8s = (INFRA / "k8s" / "statefulset.yaml").read_text()
    for topic in TOPICS:
        assert topic in compose, topic
        assert topic in k8s, topic
    services = _yaml_docs(INFRA / "docker-compose.yml")[0]["services"]  # type: ignore[index]
    assert {"kafka", "clickhouse", "prometheus", "grafana", "worker"} <= set(services)
    env = services["worker"]["environment"]
    assert env["CX_CLICKHOUSE_PASSWORD"].startswith("${"), "secrets come from the environment"
    kinds = [d["kind"] for d in _yaml_docs(INFRA / "k8s" / "statefulset.yaml")]  # type: ignore[index]
    assert kinds == ["Service", "StatefulSet"]


def test_compose_loads_the_clickhouse_schema_files() -> None:
    services = _yaml_docs(INFRA / "docker-compose.yml")[0]["services"]  # type: ignore[index]
    assert "./clickhouse:/docker-entrypoint-initdb.d:ro" in services["clickhouse"]["volumes"]
    sql = "".join(p.read_text() for p in (INFRA / "clickhouse").glob("*.sql"))
    for table in TABLE_NAMES:
        assert f"CREATE TABLE IF NOT EXISTS {table}" in sql


def _queried_metrics() -> set[str]:
    exprs: list[str] = []
    dash = json.loads((INFRA / "grafana" / "dashboards" / "cx-moments.json").read_text())
    exprs += [t["expr"] for p in dash["panels"] for t in p["targets"]]
    alerts = _yaml_docs(INFRA / "prometheus" / "alerts.yml")[0]
    exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]  # type: ignore[index]
    return {m for e in exprs for m in _METRIC.findall(e)}


def test_dashboard_and_alerts_query_only_exported_metrics() -> None:
    queried = _queried_metrics()
    assert len(queried) >= 15
    missing = queried - metric_names()
    assert not missing, f"queried but not exported: {sorted(missing)}"


@pytest.mark.parametrize("args", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]])
def test_alert_rules_pass_promtool(args: list[str]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: the README's test command (infra/dev/test.sh) installs Debian's prometheus"
    proc = subprocess.run([promtool, *args], cwd=INFRA / "prometheus", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr
