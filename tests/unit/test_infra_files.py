"""infra/ files parse, agree with each other and with the code: topics, tables, metrics, ports, cluster wiring."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.clickhouse.schema import TABLES, schema_statements
from flows.cli import topics_from_env
from flows.config import DEFAULT_TOPICS
from flows.http_endpoint import DEFAULT_PORT
from flows.metrics import metric_names
from state.rules import DEFAULT_PACK, load_rule_pack

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
PROM = INFRA / "prometheus"
GRAFANA = INFRA / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "cx-moments.json"

# DESIGN.md §5: the canonical names.
TOPICS = {"cx.events", "cx.moments", "cx.actions", "cx.tags", "cx.context", "cx.deadletter", "cx.feedback"}
TABLE_NAMES = {"moments", "customer_tags", "journey_states", "actions", "journey_steps", "dead_letters", "feedback",
               "late_events", "handoff_contexts", "events"}
# Derived from those by the schema (materialized view target), never written by the sink.
DERIVED_TABLES = {"tag_history"}
CLUSTER_PORT = 7000

_METRIC = re.compile(r"\b((?:cx|process|python)_[a-z0-9_]+)\b")
_WANT_TABLES = re.compile(r"want = (\{[^}]*\})")
_PROMTOOL_MISSING = "promtool is not on PATH: `bash infra/dev/setup.sh --test` installs it (Debian package prometheus)"


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _compose() -> dict[str, Any]:
    return _docs(INFRA / "docker-compose.yml")[0]  # type: ignore[no-any-return]


def _k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for f in sorted(K8S.glob("*.yaml")) for d in _docs(f)
             if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''} in infra/k8s, found {len(found)}"
    return found[0]  # type: ignore[no-any-return]


def _statefulset_container() -> dict[str, Any]:
    return _k8s("StatefulSet")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def _env_list(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _k8s_env() -> dict[str, str]:
    return dict(_k8s("ConfigMap", "cx-moments-env")["data"])


def _topic_env(env: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("CX_TOPIC_")}


def _promtool() -> str:
    path = shutil.which("promtool")
    assert path, _PROMTOOL_MISSING
    return path


def _alerts() -> dict[str, Any]:
    return _docs(PROM / "alerts.yml")[0]  # type: ignore[no-any-return]


def _alert_exprs() -> list[str]:
    return [r["expr"] for g in _alerts()["groups"] for r in g["rules"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())  # type: ignore[no-any-return]


def _dashboard_targets() -> list[dict[str, Any]]:
    return [t for p in _dashboard()["panels"] for t in p.get("targets", [])]


def _dashboard_exprs(*, variables: bool = True) -> list[str]:
    exprs = [t["expr"] for t in _dashboard_targets()]
    if variables:  # Grafana's label_values(…) is not PromQL, but the metric it names must exist
        exprs += [v["definition"] for v in _dashboard()["templating"]["list"] if v.get("type") == "query"]
    return exprs


# ---------------------------------------------------------------------------------------------- parsing


def test_every_yaml_and_json_file_under_infra_parses() -> None:
    yamls = [*INFRA.rglob("*.yml"), *INFRA.rglob("*.yaml")]
    assert len(yamls) >= 14
    for f in yamls:
        assert _docs(f), f"{f} is empty"
    jsons = list(INFRA.rglob("*.json"))
    assert jsons
    for f in jsons:
        json.loads(f.read_text())


def test_code_uses_the_design_topic_and_table_names() -> None:
    assert set(DEFAULT_TOPICS.values()) == TOPICS
    assert {spec.table for spec in TABLES.values()} == TABLE_NAMES
    created = {m.group(1) for s in schema_statements() if (m := re.search(r"CREATE TABLE IF NOT EXISTS (\w+)", s))}
    assert created == TABLE_NAMES | DERIVED_TABLES


# ---------------------------------------------------------------------------------------------- topics and tables


def test_compose_and_kubernetes_configure_the_same_topics_the_cli_reads() -> None:
    compose_env = _topic_env(_compose()["services"]["worker"]["environment"])
    k8s_env = _topic_env(_k8s_env())
    assert compose_env == k8s_env
    assert set(compose_env.values()) == TOPICS
    # Every variable is one the CLI reads (CX_TOPIC_<KIND>), and names the default topic of that kind.
    expected = {f"CX_TOPIC_{kind.upper()}": topic for kind, topic in DEFAULT_TOPICS.items()}
    assert compose_env == expected
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CX_TOPIC_")}
    try:
        os.environ.update(compose_env)
        assert set(topics_from_env().values()) == TOPICS
    finally:
        for k in compose_env:
            os.environ.pop(k, None)
        os.environ.update(saved)


def test_compose_creates_every_topic() -> None:
    script = _compose()["services"]["kafka-init"]["command"][0]
    loop = re.search(r"for topic in ([^;]+);", script)
    assert loop, "kafka-init creates topics in a `for topic in …;` loop"
    assert set(loop.group(1).split()) == TOPICS
    assert "$${topic}" in script, "compose interpolates $: the loop variable must be written $${topic}"


def test_compose_and_kubernetes_check_the_same_clickhouse_tables() -> None:
    compose_script = _compose()["services"]["clickhouse-schema"]["command"][0]
    job = _k8s("Job", "cx-moments-clickhouse-schema")
    job_script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    sets = []
    for script in (compose_script, job_script):
        m = _WANT_TABLES.search(script)
        assert m, "the schema step lists the tables it expects as `want = {…}`"
        sets.append(ast.literal_eval(m.group(1)))
        compile(script, "<schema step>", "exec")  # the inline script is valid Python
    assert sets[0] == sets[1] == TABLE_NAMES


# ---------------------------------------------------------------------------------------------- compose


def test_compose_wires_the_worker_by_environment_without_secrets() -> None:
    services = _compose()["services"]
    wanted = {"kafka", "kafka-init", "clickhouse", "clickhouse-schema", "worker", "prometheus", "grafana"}
    assert wanted <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"], "KRaft, no ZooKeeper"
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    worker = services["worker"]
    assert worker["build"] == {"context": "..", "dockerfile": "infra/Dockerfile"}
    assert worker["command"][:3] == ["run", "--source", "kafka"]
    env = worker["environment"]
    assert env["CX_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["CX_CLICKHOUSE_DSN"].startswith("http://")
    assert env["CX_CLICKHOUSE_DSN"].endswith("@clickhouse:8123/cx")
    assert env["CX_METRICS_PORT"] == str(DEFAULT_PORT)
    for service in ("worker", "clickhouse"):
        password = services[service]["environment"].get("CX_CLICKHOUSE_PASSWORD") or \
            services[service]["environment"]["CLICKHOUSE_PASSWORD"]
        assert password.startswith("${CX_CLICKHOUSE_PASSWORD:?"), "the password comes from the environment"
    # librdkafka receives every CX_KAFKA_* variable: only real librdkafka settings may be set that way.
    assert set(k for k in env if k.startswith("CX_KAFKA_")) == {"CX_KAFKA_BOOTSTRAP_SERVERS"}


def test_compose_mounts_prometheus_and_grafana_provisioning() -> None:
    services = _compose()["services"]
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    grafana = services["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    provider = _docs(GRAFANA / "provisioning" / "dashboards" / "cx-moments.yml")[0]
    path = provider["providers"][0]["options"]["path"]
    assert f"./grafana/dashboards:{path}:ro" in grafana


def test_prometheus_scrapes_the_compose_worker_and_loads_the_alerts() -> None:
    cfg = _docs(PROM / "prometheus.yml")[0]
    assert [(PROM / f).is_file() for f in cfg["rule_files"]] == [True]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["cx-moments"]["static_configs"][0]["targets"] == [f"worker:{DEFAULT_PORT}"]
    assert 'job="cx-moments"' in " ".join(_alert_exprs()), "CxWorkerDown selects the scrape job by name"


# ---------------------------------------------------------------------------------------------- Dockerfile


def test_dockerfile_installs_the_package_and_runs_unprivileged() -> None:
    text = (INFRA / "Dockerfile").read_text()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any(ln.startswith("RUN pip install .") for ln in lines)
    user = [ln for ln in lines if ln.startswith("USER ")]
    assert user
    assert user[-1].split()[1].split(":")[0] not in ("root", "0")
    assert lines[-2] == 'ENTRYPOINT ["moments"]' or 'ENTRYPOINT ["moments"]' in lines
    assert re.search(rf"^EXPOSE .*\b{DEFAULT_PORT}\b.*\b{CLUSTER_PORT}\b", text, re.M)
    # Every package pyproject lists is copied into the build context.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    copied = set(re.findall(r"^COPY (\S+)", text, re.M))
    for pkg in packages:
        top = pkg.replace(".", "/")
        assert any(top == c or top.startswith(c + "/") or c.startswith(top + "/") for c in copied), pkg


def test_pyproject_lists_every_package_so_an_installed_wheel_has_them_all() -> None:
    packages = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {init.parent.relative_to(ROOT).as_posix().replace("/", ".")
             for top in ("state", "flows", "connectors", "infra") for init in (ROOT / top).rglob("__init__.py")}
    assert found - packages == set(), "packages missing from [tool.setuptools] packages in pyproject.toml"


# ---------------------------------------------------------------------------------------------- Kubernetes


def test_kustomization_lists_every_manifest() -> None:
    kustomization = _docs(K8S / "kustomization.yaml")[0]
    manifests = {f.name for f in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests
    for f in manifests:
        for doc in _docs(K8S / f):
            assert "namespace" not in doc["metadata"], f"{f}: manifests are namespace-free"


def test_statefulset_forms_one_cluster_through_the_headless_service() -> None:
    sts = _k8s("StatefulSet", "cx-moments")
    svc = _k8s("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    container = _statefulset_container()
    env = _env_list(container)
    assert int(env["CX_PROCESSES"]) == sts["spec"]["replicas"], "replicas and CX_PROCESSES change together"
    assert int(env["CX_CLUSTER_PORT"]) == CLUSTER_PORT
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"cluster": CLUSTER_PORT, "metrics": DEFAULT_PORT}
    assert {p["name"] for p in svc["spec"]["ports"]} == set(ports)


def test_statefulset_mounts_rules_secret_and_recovery_volume() -> None:
    sts = _k8s("StatefulSet", "cx-moments")
    pod = sts["spec"]["template"]["spec"]
    container = _statefulset_container()
    script = container["args"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    rules_volume = next(v for v in pod["volumes"] if v["name"] == "rules")
    assert rules_volume["configMap"]["name"] == "cx-moments-rules"
    assert f"--rules {mounts['rules']} " in script  # the ConfigMap as a directory of versions, updated in place
    assert "subPath" not in str(container["volumeMounts"])
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    assert "recovery" in claims
    assert f"--recovery-dir {mounts['recovery']}/" in script
    ref = _env_list(container)["CX_CLICKHOUSE_PASSWORD"]["secretKeyRef"]
    secret = _k8s("Secret", ref["name"])
    assert ref["key"] in secret["stringData"]
    assert {c["configMapRef"]["name"] for c in container["envFrom"] if "configMapRef" in c} == {"cx-moments-env"}
    annotations = sts["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == DEFAULT_PORT
    assert int(_k8s_env()["CX_METRICS_PORT"]) == DEFAULT_PORT
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_secrets_hold_placeholders_only() -> None:
    for value in _k8s("Secret", "cx-moments-credentials")["stringData"].values():
        assert value == "REPLACE_ME"
    assert "password" not in json.dumps(_k8s_env()).lower()


def _run_pod_script(hostname: str, processes: int, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    fake = tmp_path / "moments"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@"\necho "ENV $CX_PROCESS_ID $CX_ADDRESSES"\n')
    fake.chmod(0o755)
    # Kubernetes turns `$$` into `$` in args before the shell sees them.
    script = _statefulset_container()["args"][0].replace("$$", "$")
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "HOSTNAME": hostname, "CX_PROCESSES": str(processes),
           "CX_CLUSTER_PORT": str(CLUSTER_PORT)}
    return subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, timeout=10, check=False)


def test_each_pod_derives_its_process_id_and_the_cluster_addresses(tmp_path: Path) -> None:
    proc = _run_pod_script("cx-moments-2", 3, tmp_path)
    assert proc.returncode == 0, proc.stderr
    *args, env_line = proc.stdout.splitlines()
    addresses = ",".join(f"cx-moments-{i}.cx-moments:{CLUSTER_PORT}" for i in range(3))
    assert args[:3] == ["run", "--source", "kafka"]
    assert args[args.index("--processes") + 1] == "3"
    assert args[args.index("--process-id") + 1] == "2"
    assert args[args.index("--addresses") + 1] == addresses
    assert env_line == f"ENV 2 {addresses}"


def test_a_pod_beyond_the_configured_processes_refuses_to_start(tmp_path: Path) -> None:
    proc = _run_pod_script("cx-moments-3", 3, tmp_path)
    assert proc.returncode != 0
    assert "CX_PROCESSES" in proc.stderr


def test_rule_pack_configmap_is_the_default_pack(tmp_path: Path) -> None:
    text = _k8s("ConfigMap", "cx-moments-rules")["data"]["rules.toml"]
    assert text == DEFAULT_PACK.read_text(), "regenerate configmap-rules.yaml from flows/rulepacks/default.toml"
    path = tmp_path / "rules.toml"
    path.write_text(text)
    assert load_rule_pack(path).rules


def test_servicemonitor_scrapes_the_metrics_port_of_the_service() -> None:
    monitor = _k8s("ServiceMonitor")
    svc = _k8s("Service", "cx-moments")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in svc["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_prometheusrule_carries_the_same_alerts_as_alerts_yml() -> None:
    assert _k8s("PrometheusRule")["spec"]["groups"] == _alerts()["groups"]


# ---------------------------------------------------------------------------------------------- metrics


def test_dashboard_and_alerts_query_only_exported_metrics() -> None:
    queried = {m for e in [*_dashboard_exprs(), *_alert_exprs()] for m in _METRIC.findall(e)}
    assert len(queried) >= 20
    missing = queried - metric_names()
    assert not missing, f"queried but not exported by flows.metrics: {sorted(missing)}"


def test_dashboard_covers_the_pipeline_and_uses_the_provisioned_datasource() -> None:
    datasource = _docs(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")[0]["datasources"][0]
    assert datasource["url"] == "http://prometheus:9090"
    uids = {t["datasource"]["uid"] for t in _dashboard_targets()}
    assert uids == {datasource["uid"]}
    queried = {m for e in _dashboard_exprs() for m in _METRIC.findall(e)}
    for name in ("cx_events_total", "cx_invalid_events_total", "cx_moments_total",
                 "cx_detection_latency_seconds_bucket", "cx_detection_within_target_total",
                 "cx_event_lag_seconds_bucket", "cx_event_disorder_seconds_bucket", "cx_watermark_lag_seconds",
                 "cx_sink_batch_seconds_bucket",
                 "cx_sink_retries_total", "cx_sink_errors_total", "cx_kafka_consumer_lag", "cx_customers_tracked",
                 "process_cpu_seconds_total", "process_resident_memory_bytes"):
        assert name in queried, f"the dashboard shows {name}"
    ids = [p["id"] for p in _dashboard()["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = _promtool()
    rules = [{"record": f"cx_dashboard:query_{i}",
              "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*")}
             for i, e in enumerate(_dashboard_exprs(variables=False))]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ---------------------------------------------------------------------------------------------- promtool


@pytest.mark.parametrize(
    "args",
    [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"], ["check", "config", "prometheus.yml"]],
)
def test_prometheus_files_pass_promtool(args: list[str]) -> None:
    proc = subprocess.run([_promtool(), *args], cwd=PROM, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    alerts = {r["alert"] for g in _alerts()["groups"] for r in g["rules"]}
    tests = _docs(PROM / "alerts_test.yml")[0]["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    quiet = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert alerts == firing == quiet
    assert len(alerts) >= 6
