"""What look-ups report and print (issue 17, the adversary's findings): last_seen, evicted answers, the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows import http_endpoint
from flows.http_endpoint import MetricsServer, start_http
from flows.operators import ShardLogic
from flows.recent import Recent
from flows.serving import Service
from flows.shard_registry import ShardRegistry, customer_view
from state.batches import RawBatch
from state.shard import Shard
from tests.helpers import PACK, T0, ev, raws

REPO = Path(__file__).resolve().parents[2]
HOUR = 3_600_000


def test_last_seen_is_the_last_event_when_contact_history_keeps_an_idle_customer(recent: Recent) -> None:
    # A sent contact keeps the customer past the pack's horizon: the wake-up moved last_seen days past the
    # customer's last event, and the look-up reported that made-up time.
    shard = Shard(PACK, lateness_ms=0)
    logic = ShardLogic(shard, None, False, 1.0)
    n = 0

    def feed(*events: dict[str, object]) -> None:
        nonlocal n
        logic.on_batch([RawBatch("file:t", 0, raws(list(events)), list(range(n, n + len(events))))])
        n += len(events)

    feed(ev("e1", 0, "view", customer="cust-a", step="product"),
         ev("e3", 2, "fail", customer="cust-a", step="payment", reason="card_declined", error_code="E51"),
         ev("z0", 5, "view", customer="cust-z", step="product"))  # the watermark passes the failure: it is sent
    c = shard.customers["cust-a"]
    assert c.contact is not None
    moved = False
    for k in range(1, 40):  # another customer's events move the shard's clock, six hours at a time
        feed(ev(f"z{k}", k * 6 * HOUR, "view", customer="cust-z", step="product"))
        c = shard.customers["cust-a"]
        if c.last_seen != T0 + 2:
            moved = True
            break
    assert moved, "the wake-ups never kept the customer past its horizon"
    assert customer_view(shard, c)["last_seen"] == T0 + 2
    feed(ev("e9", 7 * 24 * HOUR, "view", customer="cust-a", step="product"),  # a new event is the last one
         ev("z99", 7 * 24 * HOUR + 1, "view", customer="cust-z", step="product"))
    assert customer_view(shard, shard.customers["cust-a"])["last_seen"] == T0 + 7 * 24 * HOUR


class _Fixed(Service):
    """A service answering one customer and one moment whose event data hold terminal control characters."""

    def customer(self, cid: str, local: bool = False, token: str | None = None) -> tuple[int, dict[str, Any]]:
        j = {"journey": "cart", "attempt": "a\x1b]0;pwned\x07", "stage": "active", "status": "open",
             "step": "pay\x1b[2Jment", "entry": "home\x9b31m", "entries": [], "channels": ["app\x07"],
             "updated_at": T0}
        return 200, {"customer_id": cid, "process": 0, "held": True, "journeys": [j], "tags": [], "sends": [],
                     "last_seen": T0, "moments": [], "context": {"schema": 1, "customer_id": cid, "journey": "cart",
                                                                 "contact_ts": T0, "last_step": "x\x1bc"}}


@pytest.fixture
def served() -> Iterator[MetricsServer]:
    server = start_http(0, "127.0.0.1")
    service = _Fixed(ShardRegistry(), None, recent=Recent())
    service.running = True
    old = http_endpoint.set_service(service, token="tok")  # noqa: S106
    yield server
    http_endpoint.set_service(old)
    server.stop()


@pytest.mark.parametrize("json", [False, True])
def test_lookup_escapes_control_characters_from_event_data(served: MetricsServer, json: bool) -> None:
    out = subprocess.run([sys.executable, "-m", "flows.cli", "lookup", "c\x1b[31m", "--url",
                          f"http://127.0.0.1:{served.port}", *(["--json"] if json else [])],
                         capture_output=True, cwd=REPO, timeout=120, check=False,
                         env={**os.environ, "CX_HTTP_TOKEN": "tok"})
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    assert out.stdout, out.stderr.decode()[-2000:]
    for raw in ("\x1b", "\x07", "\x9b"):
        assert raw.encode() not in out.stdout
        assert raw.encode("utf-8") not in out.stdout
    assert b"pay" in out.stdout


def test_a_moment_whose_rows_are_not_written_yet_is_pending_not_unstored(tmp_path: Path, recent: Recent) -> None:
    from connectors.clickhouse.client import resolve_dsn
    from connectors.clickhouse.sink import ClickHouseSink
    from flows.lookup_history import History
    from state.shard import process

    dsn = resolve_dsn(f"chdb://{tmp_path / 'ch'}")
    sink = ClickHouseSink(dsn, background=False)
    sink.ensure_schema()
    history = History(dsn)
    try:
        out = process(Shard(PACK, lateness_ms=0, keep_events=True), [RawBatch("file:t", 0, raws([
            ev("e1", 0, "start", customer="cust-m", step="cart"),
            ev("e3", 2, "fail", customer="cust-m", step="payment", reason="card_declined", error_code="E51"),
            ev("z0", 5, "view", customer="cust-z", step="product")]), [0, 1, 2])])
        recent.note(out)
        records = out.records()
        # The sink wrote the moment's row, not yet its evidence events, steps and decision (another table each).
        for kind, rows in records:
            if kind == "moment":
                sink.add(kind, rows)
        sink.flush()
        service = Service(ShardRegistry(), history, recent=recent)
        [mid] = [r["moment_id"] for kind, rows in records if kind == "moment" for r in rows
                 if r["customer_id"] == "cust-m" and r["rule"] == "cart.failed"]
        code, body = service.moment(mid)
        assert code == 503, body
        assert body["error"].startswith("pending")
        for kind, rows in records:
            if kind != "moment":
                sink.add(kind, rows)
        sink.flush()
        code, body = service.moment(mid)
        assert code == 200, body
        assert all(e.get("stored") is not False for e in body["evidence"]), body["evidence"]
        assert body["decision"] is not None
    finally:
        history.close()
        sink.close()


def test_json_output_escapes_characters_beyond_the_bmp_as_surrogate_pairs() -> None:
    """An adversary's: U+E0041 came out as a backslash-u and five digits, which a JSON reader takes for U+E004 and
    a '1'."""
    import json as stdlib_json

    from flows.lookup_cli import printable

    doc = {"customer_id": "tag\U000e0041\U000e0042", "code": "E\x1b1"}
    escaped = printable(stdlib_json.dumps(doc, ensure_ascii=False), json=True)
    assert "\x1b" not in escaped
    assert stdlib_json.loads(escaped) == doc
