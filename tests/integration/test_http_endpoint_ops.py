"""The worker's HTTP endpoint as an operator meets it: its bind address, a taken port, clients that hang up early."""

from __future__ import annotations

import os
import re
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.worker import Worker

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
LIVE = ["--source", "simulator", "--clock", "live", "--customers", "200", "--minutes", "5", "--sink", "none",
        "--status", "off", "--metrics-port", "0"]


def _endpoint(w: Worker) -> tuple[str, int]:
    """The host and port the worker's log says it serves metrics on."""
    w.wait_log("metrics on http://")
    m = re.search(r"metrics on http://([^ ]+):(\d+)/metrics", w.log())
    assert m, w.log()[-3000:]
    return m.group(1), int(m.group(2))


def _listening_address(port: int) -> str:
    """The local address of this machine's TCP listener on ``port``, from the kernel (``/proc/net/tcp``)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        addr_hex, port_hex = local.split(":")
        if state == "0A" and int(port_hex, 16) == port:  # 0A: LISTEN
            return socket.inet_ntoa(struct.pack("<I", int(addr_hex, 16)))
    raise AssertionError(f"nothing listens on port {port}")


def _get(port: int, path: str = "/healthz") -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:  # noqa: S310 - loopback
        return int(r.status)


@pytest.mark.parametrize(("args", "env", "expected"), [
    ([], {}, "0.0.0.0"),
    (["--http-host", "127.0.0.1"], {}, "127.0.0.1"),
    ([], {"CX_HTTP_HOST": "127.0.0.1"}, "127.0.0.1"),
])
def test_the_bind_address_is_a_setting_and_the_log_names_the_real_one(
    tmp_path: Path, args: list[str], env: dict[str, str], expected: str
) -> None:
    # Before: the endpoint always bound 0.0.0.0 while the log said 127.0.0.1, and there was no setting.
    w = Worker([*LIVE, *args], tmp_path / "w.log", env=env)
    try:
        host, port = _endpoint(w)
        assert host == expected, w.log()[-2000:]
        assert _listening_address(port) == expected
        assert _get(port) == 200
    finally:
        w.stop()


def test_clients_that_hang_up_early_leave_no_traceback(tmp_path: Path) -> None:
    # Before: each such client printed a 20-line "Exception occurred during processing of request" traceback.
    w = Worker(LIVE, tmp_path / "w.log", env={"CX_LOG_LEVEL": "debug"})
    noise = ("Traceback", "BrokenPipeError", "ConnectionResetError", "Exception occurred")
    try:
        _, port = _endpoint(w)
        for path in ("/metrics", "/readyz", "/healthz", "/nope") * 10:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                # Close with a reset (linger 0) without reading: the answer meets a connection that is gone.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        assert _get(port, "/metrics") == 200  # still serving
        # Wait until the server has met at least one of the hang-ups, however it reports it.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            log = w.log()
            if "client disconnected early" in log or any(n in log for n in noise):
                break
            time.sleep(0.1)
        log = w.log()
        assert "metrics client disconnected early" in log, log[-3000:]
        for n in noise:
            assert n not in log, log[-3000:]
    finally:
        w.stop()


def test_a_metrics_port_in_use_is_one_line_naming_the_setting_and_exit_2(tmp_path: Path) -> None:
    # Before: an OSError traceback that did not mention --metrics-port.
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - the worker binds every interface by default
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "flows.cli", "run", "--source", "simulator", "--customers", "10", "--minutes", "1",
             "--sink", "none", "--status", "off", "--metrics-port", str(port)],
            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "CX_LOG_LEVEL": "warning"},
            capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip() == (f"moments run: error: configuration: --metrics-port {port}: address already in use "
                                  "(set --metrics-port or CX_METRICS_PORT, or --no-metrics)"), run.stderr[-3000:]


def test_an_address_that_is_not_this_machines_names_http_host(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", "--source", "simulator", "--customers", "10", "--minutes", "1",
         "--sink", "none", "--status", "off", "--metrics-port", "0", "--http-host", "192.0.2.1"],  # TEST-NET-1
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "CX_LOG_LEVEL": "warning"},
        capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 2, run.stderr[-3000:]
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr[-3000:]
    assert lines[0].startswith("moments run: error: configuration: --http-host 192.0.2.1: cannot listen there"), lines
    assert "CX_HTTP_HOST" in lines[0]



def test_the_endpoint_binds_an_ipv6_address() -> None:
    # `--http-host ::1` was refused: "Address family for hostname not supported".
    from flows.http_endpoint import start_http

    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    server = start_http(0, "::1")
    try:
        assert server.host == "::1"
        with urllib.request.urlopen(f"http://[::1]:{server.port}/healthz", timeout=10) as r:
            assert r.status == 200
    finally:
        server.stop()
