"""Look-ups while a worker starts and after it restarts on an existing database (real worker processes)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import wait_until
from tests.kafka_helpers import free_port
from tests.worker import Worker

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"  # noqa: S105 - a test's token


def _get(port: int, path: str) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",  # noqa: S310 - loopback
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
            return int(r.status), orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), orjson.loads(e.read() or b"{}")
    except OSError:
        return 0, None  # not listening yet


def test_while_the_worker_starts_lookups_say_starting_and_readyz_is_not_ready(tmp_path: Path) -> None:
    # Process 0 of a two-process cluster whose process 1 never comes: it waits before its dataflow runs.
    http = free_port()
    args = ["--source", "simulator", "--customers", "100", "--sink", f"jsonl:{tmp_path / 'out'}", "--status", "off",
            "--metrics-port", str(http), "-a", f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}", "-i", "0",
            "--http-peers", f"127.0.0.1:{http};127.0.0.1:{free_port()}"]
    w = Worker(args, tmp_path / "w.log", env={"CX_HTTP_TOKEN": TOKEN})
    try:
        wait_until(lambda: _get(http, "/readyz")[0] != 0, 60, "the endpoint to listen",
                   detail=lambda: w.log()[-3000:])
        code, ready = _get(http, "/readyz")
        assert code == 503, ready
        assert "lookups" in ready["failing"]
        code, body = _get(http, "/v1/customers/cust-1")
        assert code == 503, body
        assert body["error"].startswith("starting")
        assert _get(http, "/v1/moments/" + "0" * 32)[0] == 503
    finally:
        w.stop()


def _events(cid: str, t0: int) -> bytes:
    lines = [{"event_id": f"{cid}-1", "customer_id": cid, "ts": t0, "channel": "app", "type": "start",
              "journey": "cart", "step": "cart", "entry": "search"},
             {"event_id": f"{cid}-2", "customer_id": cid, "ts": t0 + 100, "channel": "app", "type": "fail",
              "journey": "cart", "step": "payment", "reason": "card_declined", "error_code": "E51"}]
    return b"".join(orjson.dumps(x) + b"\n" for x in lines)


def test_a_restart_without_snapshots_answers_customers_the_database_holds(tmp_path: Path) -> None:
    ch = f"chdb://{tmp_path / 'ch'}"
    t0 = time.time_ns() // 1_000_000 - 3_600_000
    (tmp_path / "before.jsonl").write_bytes(_events("cust-old", t0))
    first = Worker(["--source", f"file:{tmp_path / 'before.jsonl'}", "--sink", ch, "--status", "off",
                    "--no-metrics"], tmp_path / "first.log")
    try:
        assert first.wait(300) == 0, first.log()[-3000:]
    finally:
        first.stop()
    # Restarted live on the same database, without --recovery-dir: memory knows nothing of cust-old.
    http = free_port()
    second = Worker(["--source", "simulator", "--clock", "live", "--customers", "50", "--minutes", "60", "--sink", ch,
                     "--status", "off", "--metrics-port", str(http)], tmp_path / "second.log",
                    env={"CX_HTTP_TOKEN": TOKEN})
    try:
        wait_until(lambda: _get(http, "/readyz")[0] == 200, 120, "the restarted worker to be ready",
                   detail=lambda: second.log()[-3000:])
        code, body = _get(http, "/v1/customers/cust-old")
        assert code == 200, body
        assert body["held"] is False
        assert body["moments"], body
        assert body["journeys"][0]["journey"] == "cart"
    finally:
        second.stop()
