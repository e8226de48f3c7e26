"""The metrics endpoint: /metrics, /healthz, /readyz, and labels without personal data."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from flows import metrics
from state.outputs import Outputs
from tests.helpers import MIN, ev, run


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def port() -> int:
    server = metrics.start_http(0, host="127.0.0.1")
    return int(server.server_address[1])


def test_metrics_endpoint_serves_counters_recorded_from_outputs(port: int) -> None:
    out = run([ev("f1", 0, "fail", customer="secret-customer-42"), b"garbage", ev("v", MIN, channel="web")])
    metrics.observe_outputs("s-test", out, out.moments[0]["due_ts"] + 1500)
    status, body = _get(port, "/metrics")
    assert status == 200
    assert 'cx_moments_total{rule="cart.failed",urgency="P1"}' in body
    assert 'cx_invalid_events_total{reason="not_json"}' in body
    assert 'cx_detection_latency_seconds_bucket{kind="failed",le="2.0"}' in body
    assert "process_resident_memory_bytes" in body
    assert "secret-customer-42" not in body


def test_unknown_label_values_collapse_to_other(port: int) -> None:
    out = Outputs()
    out.events[("carrier_pigeon", "teleport")] = 3
    metrics.observe_outputs("s-x", out, 0)
    _, body = _get(port, "/metrics")
    assert 'cx_events_total{channel="other",type="other"} 3.0' in body
    assert "carrier_pigeon" not in body


def test_health_is_ok_and_readiness_follows_the_checks(port: int) -> None:
    assert _get(port, "/healthz") == (200, "ok\n")
    ok = {"value": True}
    metrics.register_readiness("test-sink", lambda: ok["value"])
    assert _get(port, "/readyz")[0] == 200
    ok["value"] = False
    status, body = _get(port, "/readyz")
    assert status == 503
    assert '"test-sink":false' in body
    ok["value"] = True
    assert _get(port, "/readyz")[0] == 200
