"""A worker whose Kafka security settings the broker refuses says so in one line, instead of "not reachable"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SECRET = "s3cret-never-printed"


@pytest.mark.parametrize("command", [
    ["run", "--source", "kafka", "--sink", "none", "--no-metrics", "--status", "off"],
    ["produce", "--input", "simulator", "--customers", "5", "--minutes", "1"],
])
def test_a_refused_sasl_handshake_is_one_line_naming_the_security_settings(
    kafka: str, tmp_path: Path, command: list[str]
) -> None:
    # Tansu's plain listener refuses the SASL handshake of a client configured for SASL_PLAINTEXT.
    # Before: the worker retried forever, logging "Kafka at … not reachable yet".
    env = {**os.environ, "PYTHONPATH": str(REPO), "CX_LOG_LEVEL": "warning", "CX_KAFKA_BOOTSTRAP_SERVERS": kafka,
           "CX_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "CX_KAFKA_SASL_MECHANISM": "PLAIN",
           "CX_KAFKA_SASL_USERNAME": "cx", "CX_KAFKA_SASL_PASSWORD": SECRET}
    run = subprocess.run([sys.executable, "-m", "flows.cli", *command], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=90, check=False)
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith(f"moments {command[0]}: error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    line = errors[0]
    assert f"Kafka at {kafka}: authentication/handshake failed" in line
    assert "CX_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT" in line
    assert "CX_KAFKA_SASL_MECHANISM=PLAIN" in line
    assert "CX_KAFKA_SASL_PASSWORD (set)" in line
    assert SECRET not in run.stderr + run.stdout
    assert "not reachable" not in run.stderr
    assert "Traceback" not in run.stderr


def test_tls_at_a_plaintext_listener_is_reported_as_a_handshake_failure(kafka: str, tmp_path: Path) -> None:
    # librdkafka gives this no error code: the connection times out "in state SSL_HANDSHAKE" (after its 30 s
    # connection setup timeout) and only "all brokers down" is reported. Before: retried forever as "not reachable".
    env = {**os.environ, "PYTHONPATH": str(REPO), "CX_LOG_LEVEL": "warning", "CX_KAFKA_SECURITY_PROTOCOL": "SSL"}
    run = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--source", "kafka", "--kafka-bootstrap", kafka,
                          "--sink", "none", "--no-metrics", "--status", "off"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("moments run: error:")]
    assert len(errors) == 1, run.stderr[-3000:]
    assert f"Kafka at {kafka}: authentication/handshake failed with CX_KAFKA_SECURITY_PROTOCOL=SSL" in errors[0]
    assert "SSL_HANDSHAKE" in errors[0]
    assert "Traceback" not in run.stderr
