"""The metrics registry and its endpoint: recorded values, health, readiness, labels without personal data."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows import accounting, connector_metrics, http_endpoint, metrics
from flows.config import DEFAULT_METRICS_PORT
from state.outputs import Outputs
from state.rules import load_rule_pack
from tests.helpers import MIN, ev, run

CUSTOMER = "cust-4711-secret"


def _value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback test server
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    server = http_endpoint.start_http(0, host="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture
def readiness_check() -> Iterator[dict[str, bool]]:
    state = {"ok": True}
    http_endpoint.register_readiness("test_sink", lambda: state["ok"])
    try:
        yield state
    finally:
        http_endpoint.unregister_readiness("test_sink")


def test_metrics_endpoint_serves_recorded_values(base_url: str) -> None:
    before = _value("cx_events_total", channel="wechat", type="submit")
    accounting.record_events({("wechat", "submit"): 7})
    accounting.record_invalid({"not_json": 2})
    status, body = _get(f"{base_url}/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(body.decode())
        for s in fam.samples
    }
    assert samples[("cx_events_total", (("channel", "wechat"), ("type", "submit")))] == before + 7
    assert samples[("cx_invalid_events_total", (("reason", "not_json"),))] >= 2
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)


def test_metrics_endpoint_serves_counters_recorded_from_a_detection_batch(base_url: str) -> None:
    metrics.configure(load_rule_pack())
    out = run([ev("f1", 0, "fail", customer="secret-customer-42"), b"garbage", ev("v", MIN, channel="web")])
    accounting.observe_outputs("s-test", out, out.moments[0]["due_ts"] + 1500)
    status, raw = _get(f"{base_url}/metrics")
    body = raw.decode()
    assert status == 200
    assert 'cx_moments_total{rule="cart.failed",urgency="P1"}' in body
    assert 'cx_invalid_events_total{reason="not_json"}' in body
    assert 'cx_detection_latency_seconds_bucket{le="2.0",rule="cart.failed",urgency="P1"}' in body
    assert "process_resident_memory_bytes" in body
    assert "secret-customer-42" not in body


def test_healthz_answers_ok_while_the_process_runs(base_url: str) -> None:
    assert _get(f"{base_url}/healthz") == (200, b"ok\n")


def test_unknown_path_is_not_found(base_url: str) -> None:
    assert _get(f"{base_url}/nope")[0] == 404


def test_readyz_flips_from_200_to_503_when_a_check_fails(base_url: str, readiness_check: dict[str, bool]) -> None:
    status, body = _get(f"{base_url}/readyz")
    assert status == 200
    assert orjson.loads(body)["ready"] is True
    readiness_check["ok"] = False
    status, body = _get(f"{base_url}/readyz")
    assert status == 503
    doc = orjson.loads(body)
    assert doc["ready"] is False
    assert doc["failing"] == ["test_sink"]
    assert doc["checks"]["test_sink"] is False
    readiness_check["ok"] = True
    assert _get(f"{base_url}/readyz")[0] == 200


def test_readyz_counts_a_raising_check_as_failing(base_url: str) -> None:
    def broken() -> bool:
        raise RuntimeError("connection refused")

    http_endpoint.register_readiness("broken", broken)
    try:
        status, body = _get(f"{base_url}/readyz")
    finally:
        http_endpoint.unregister_readiness("broken")
    assert status == 503
    assert "broken" in orjson.loads(body)["failing"]


def test_start_http_on_port_zero_picks_a_free_port() -> None:
    a = http_endpoint.start_http(0, host="127.0.0.1")
    b = http_endpoint.start_http(0, host="127.0.0.1")
    try:
        assert a.port > 0
        assert b.port > 0
        assert a.port != b.port
        assert a.port == a.server_address[1]
    finally:
        a.stop()
        b.stop()


def test_default_port_is_9464_as_in_the_cli() -> None:
    assert http_endpoint.DEFAULT_PORT == DEFAULT_METRICS_PORT == 9464


def test_unknown_channel_and_type_collapse_to_other() -> None:
    before = _value("cx_events_total", channel="other", type="other")
    accounting.record_events({(CUSTOMER, CUSTOMER): 3, ("fax", "view"): 1})
    assert _value("cx_events_total", channel="other", type="other") == before + 3
    assert _value("cx_events_total", channel="other", type="view") >= 1


def test_dead_letter_codes_are_counted_by_reason_without_the_field() -> None:
    before = _value("cx_invalid_events_total", reason="missing_field")
    accounting.record_invalid({"missing_field:customer_id": 2, "missing_field": 1})
    assert _value("cx_invalid_events_total", reason="missing_field") == before + 3


def test_no_label_value_is_a_customer_id_passed_through_the_api() -> None:
    accounting.record_events({(CUSTOMER, "view"): 1, ("app", CUSTOMER): 1})
    accounting.record_invalid({CUSTOMER: 1})
    accounting.record_moment(CUSTOMER, CUSTOMER, 1.0)
    accounting.record_actions({(CUSTOMER, CUSTOMER, CUSTOMER): 1})
    accounting.record_tag_transitions({CUSTOMER: 1})
    connector_metrics.record_sink_batch(CUSTOMER, 10, 0.1)
    connector_metrics.record_sink_retry(CUSTOMER)
    connector_metrics.set_consumer_lag(CUSTOMER, 3, 10)
    connector_metrics.record_kafka_error(CUSTOMER)
    metrics.set_detection_target(CUSTOMER, 5.0)
    accounting.set_customers(CUSTOMER, 0)
    accounting.observe_watermark(CUSTOMER, 0)
    values = {v for fam in metrics.REGISTRY.collect() for s in fam.samples for v in s.labels.values()}
    assert CUSTOMER not in values
    assert "other" in values


def test_a_rule_pack_admits_its_rule_names_and_exports_its_targets() -> None:
    pack = load_rule_pack()
    metrics.configure(pack)
    rule = next(r for r in pack.rules if r.kind == "failed")
    before = _value("cx_moments_total", rule=rule.name, urgency=rule.urgency)
    within = _value("cx_detection_within_target_total", urgency=rule.urgency)
    target = pack.latency_targets_ms[rule.urgency] / 1000
    assert _value("cx_detection_target_seconds", urgency=rule.urgency) == target
    accounting.record_moment(rule.name, rule.urgency, target / 2)
    accounting.record_moment(rule.name, rule.urgency, target * 2)
    assert _value("cx_moments_total", rule=rule.name, urgency=rule.urgency) == before + 2
    assert _value("cx_detection_within_target_total", urgency=rule.urgency) == within + 1


def test_detection_latency_buckets_resolve_a_tenth_of_a_second_to_two_minutes() -> None:
    assert metrics.LATENCY_BUCKETS[0] == 0.1
    assert metrics.LATENCY_BUCKETS[-1] == 120
    le_before = _value("cx_detection_latency_seconds_bucket", rule="other", urgency="P2", le="0.1")
    accounting.record_moment("not-a-rule", "P2", 0.05)
    assert _value("cx_detection_latency_seconds_bucket", rule="other", urgency="P2", le="0.1") == le_before + 1
    assert metrics.LAG_BUCKETS[-1] == 3600


def test_actions_are_counted_by_rule_status_and_reason() -> None:
    metrics.configure(load_rule_pack())
    before = _value("cx_actions_total", rule="cart.abandoned", status="suppressed", reason="quiet_hours")
    sent = _value("cx_actions_total", rule="cart.abandoned", status="sent", reason="none")
    accounting.record_actions({("cart.abandoned", "suppressed", "quiet_hours"): 2, ("cart.abandoned", "sent", ""): 1})
    assert _value("cx_actions_total", rule="cart.abandoned", status="suppressed", reason="quiet_hours") == before + 2
    assert _value("cx_actions_total", rule="cart.abandoned", status="sent", reason="none") == sent + 1


def test_customers_tracked_is_the_sum_over_shards() -> None:
    accounting.set_customers("shard-a", 10)
    accounting.set_customers("shard-b", 5)
    base = _value("cx_customers_tracked")
    accounting.set_customers("shard-b", 7)
    assert _value("cx_customers_tracked") == base + 2


def test_tags_open_counts_opened_minus_closed() -> None:
    base = _value("cx_tags_open")
    accounting.record_tag_transitions({"open": 3})
    accounting.record_tag_transitions({"actioned": 1, "resolved": 1})
    assert _value("cx_tags_open") == base + 2


def test_watermark_lag_is_wall_time_minus_the_newest_watermark() -> None:
    now_ms = int(time.time() * 1000)
    accounting.observe_watermark("wm-shard", now_ms - 20_000)
    assert 19 <= _value("cx_watermark_lag_seconds") <= 30


def test_sink_retry_marks_the_sink_down_until_a_write_succeeds() -> None:
    retries = _value("cx_sink_retries_total", sink="clickhouse")
    connector_metrics.sink_retry_hook("clickhouse")("moments", 1, OSError("refused"), 0.1)
    assert _value("cx_sink_up", sink="clickhouse") == 0
    assert _value("cx_sink_retries_total", sink="clickhouse") == retries + 1
    connector_metrics.sink_write_hook("clickhouse")("moments", 500, 0.02)
    assert _value("cx_sink_up", sink="clickhouse") == 1


def test_consumer_lag_reports_mark_the_input_up_and_consumer_errors_down() -> None:
    connector_metrics.consumer_lag_hook()("cx.events", 2, 42)
    assert _value("cx_kafka_consumer_lag", topic="cx.events", partition="2") == 42
    assert _value("cx_input_up") == 1
    connector_metrics.kafka_error_hook()("consumer", object())
    assert _value("cx_input_up") == 0


def test_observe_outputs_accounts_one_batch() -> None:
    pack = load_rule_pack()
    metrics.configure(pack)
    rule = next(r for r in pack.rules if r.kind == "abandoned")
    now_ms = int(time.time() * 1000)
    out = Outputs("batch-shard")
    out.events = {("app", "view"): 4}
    out.invalid = {"bad_ts": 1}
    out.late = 2
    out.customers = 3
    out.watermark_ms = now_ms - 1000
    out.max_ts_ms = now_ms - 500
    out.moments = [{"rule": rule.name, "urgency": rule.urgency, "kind": rule.kind, "due_ts": now_ms - 1500,
                    "customer_id": CUSTOMER}]
    before = {
        "events": _value("cx_events_total", channel="app", type="view"),
        "invalid": _value("cx_invalid_events_total", reason="bad_ts"),
        "late": _value("cx_late_events_total"),
        "moments": _value("cx_moments_total", rule=rule.name, urgency=rule.urgency),
        "latency": _value("cx_detection_latency_seconds_count", rule=rule.name, urgency=rule.urgency),
        "lag": _value("cx_event_lag_seconds_count"),
    }
    accounting.observe_outputs("batch-shard", out, now_ms, pack)
    assert _value("cx_events_total", channel="app", type="view") == before["events"] + 4
    assert _value("cx_invalid_events_total", reason="bad_ts") == before["invalid"] + 1
    assert _value("cx_late_events_total") == before["late"] + 2
    assert _value("cx_moments_total", rule=rule.name, urgency=rule.urgency) == before["moments"] + 1
    assert _value("cx_detection_latency_seconds_count", rule=rule.name, urgency=rule.urgency) == before["latency"] + 1
    assert _value("cx_event_lag_seconds_count") == before["lag"] + 1


def test_metric_names_cover_the_contract_in_the_forms_prometheus_stores() -> None:
    names = metrics.metric_names()
    contract = {
        "cx_events_total", "cx_invalid_events_total", "cx_late_events_total", "cx_moments_total",
        "cx_actions_total", "cx_tags_open", "cx_customers_tracked", "cx_customers_evicted_total",
        "cx_detection_latency_seconds_bucket", "cx_detection_latency_seconds_sum",
        "cx_detection_latency_seconds_count", "cx_detection_within_target_total", "cx_detection_target_seconds",
        "cx_event_lag_seconds_bucket", "cx_watermark_lag_seconds", "cx_sink_batch_seconds_bucket",
        "cx_sink_batch_rows_bucket", "cx_sink_retries_total", "cx_sink_errors_total", "cx_sink_up",
        "cx_kafka_consumer_lag", "cx_input_up", "cx_snapshot_seconds_bucket", "cx_snapshot_bytes",
        "process_cpu_seconds_total", "process_resident_memory_bytes",
    }
    assert contract <= names
    # A counter's family name without _total is not a series: dashboards must not use it.
    assert "cx_events" not in names


def test_a_configured_pack_exports_its_latency_series_at_zero_before_any_moment() -> None:
    # A fresh process (this one's registry already counted moments): the scrape right after start-up.
    script = ("from flows import metrics; from state.rules import load_rule_pack; "
              "from prometheus_client import generate_latest; metrics.configure(load_rule_pack()); "
              "print(generate_latest(metrics.REGISTRY).decode())")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True,
                          cwd=Path(__file__).resolve().parents[2])
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(proc.stdout) for s in fam.samples}
    pack = load_rule_pack()
    for urgency in {r.urgency for r in pack.rules} | set(pack.latency_targets_ms):
        assert samples[("cx_detection_within_target_total", (("urgency", urgency),))] == 0
    for r in pack.rules:
        assert samples[("cx_moments_total", (("rule", r.name), ("urgency", r.urgency)))] == 0
        assert samples[("cx_detection_latency_seconds_count", (("rule", r.name), ("urgency", r.urgency)))] == 0


def test_disorder_of_a_batch_lands_in_its_buckets_by_input_and_partition() -> None:
    def bucket(le: str) -> float:
        return _value("cx_event_disorder_seconds_bucket", input="cx.events", partition="2", le=le)

    before = {le: bucket(le) for le in ("0.0", "0.5", "3.0", "30.0", "+Inf")}
    count = _value("cx_event_disorder_seconds_count", input="cx.events", partition="2")
    connector_metrics.record_disorder("kafka:cx.events", 2, 5, [500, 2_500, 3_000, 45_000])
    assert bucket("0.0") == before["0.0"] + 5
    assert bucket("0.5") == before["0.5"] + 6  # 0.5 s is within le="0.5"
    assert bucket("3.0") == before["3.0"] + 8
    assert bucket("30.0") == before["30.0"] + 8
    assert bucket("+Inf") == before["+Inf"] + 9
    assert _value("cx_event_disorder_seconds_count", input="cx.events", partition="2") == count + 9
    # A topic or input not admitted, and a partition beyond the bound, are `other`.
    connector_metrics.record_disorder("kafka:" + CUSTOMER, 99_999, 1, [])
    assert _value("cx_event_disorder_seconds_count", input="other", partition="other") >= 1
