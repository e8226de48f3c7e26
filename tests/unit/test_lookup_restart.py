"""Look-ups after a restart on an existing database (issue 17, adversary pass 2): the history from before the
restart is in ClickHouse only, and a customer active again must show it beside what memory noted since."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from flows.recent import Recent
from flows.serving import Service
from flows.shard_registry import ShardRegistry
from state.batches import RawBatch
from state.shard import Shard, process
from tests.helpers import MIN, PACK, ev, raws

DAY = 24 * 60 * MIN


class _Owner:
    """Holds a shard for the registry, as the dataflow's operator does."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard


@pytest.fixture
def restarted(tmp_path: Path, recent: Recent) -> Iterator[tuple[Service, Shard, Any]]:
    """A service on a database an earlier run wrote (cust-r, cust-t, cust-e), its state and memory started empty."""
    from connectors.clickhouse.client import resolve_dsn
    from connectors.clickhouse.sink import ClickHouseSink
    from flows.lookup_history import History

    dsn = resolve_dsn(f"chdb://{tmp_path / 'ch'}")
    sink = ClickHouseSink(dsn, background=False)
    sink.ensure_schema()
    history = History(dsn)

    def write(out: Any) -> None:
        for kind, rows in out.records():
            sink.add(kind, rows)
        sink.flush()

    # The earlier run: each customer's cart payment fails (a moment, its tag, its decision, a hand-off context).
    before = []
    for cid in ("cust-r", "cust-t", "cust-e"):
        before += [ev(f"{cid}-1", 0, "start", customer=cid, step="cart"),
                   ev(f"{cid}-2", 2, "fail", customer=cid, step="payment", reason="card_declined", error_code="E51")]
    # cust-t then calls the call centre: a hand-off (a moment, its tag, and the agent's context).
    before += [ev("cust-t-3", 3 * MIN, "contact", customer="cust-t", channel="call_center", journey=None),
               ev("z0", 3 * MIN + 5, "view", customer="cust-z", step="product")]
    write(process(Shard(PACK, lateness_ms=0), [RawBatch("file:t", 0, raws(before), list(range(len(before))))]))
    shard = Shard(PACK, lateness_ms=0)
    registry = ShardRegistry()
    owner = _Owner(shard)
    registry.add(owner, threading.Lock())
    service = Service(registry, history, recent=recent, resumed=True, pack=PACK)
    service.restarted = True
    service.running = True
    try:
        yield service, shard, write
    finally:
        history.close()
        sink.close()
        del owner


def _feed(shard: Shard, recent: Recent, write: Any, events: list[dict[str, Any]]) -> None:
    out = process(shard, [RawBatch("file:t", 0, raws(events), list(range(len(events))))])
    recent.note(out)
    write(out)


def _ids(moments: list[Any]) -> list[str]:
    return [orjson.loads(orjson.dumps(m))["moment_id"] for m in moments]


def test_a_customer_active_again_after_a_restart_shows_its_earlier_moments_context_and_tags(
        restarted: tuple[Service, Shard, Any], recent: Recent) -> None:
    service, shard, write = restarted
    _, earlier = service.customer("cust-r")  # held by no shard yet: all from ClickHouse
    [old] = _ids(earlier["moments"])
    # After the restart cust-r fails again (a new moment) and cust-t only looks at a product (none).
    _feed(shard, recent, write, [
        ev("r-3", 10 * MIN, "start", customer="cust-r", step="cart", journey="5g_upgrade"),
        ev("r-4", 10 * MIN + 2, "fail", customer="cust-r", step="payment", journey="5g_upgrade",
           reason="card_declined", error_code="E51"),
        ev("t-3", 10 * MIN + 3, "view", customer="cust-t", step="product"),
        ev("z1", 10 * MIN + 9, "view", customer="cust-z", step="product")])
    code, body = service.customer("cust-r")
    assert code == 200, body
    assert body["held"] is True
    ids = _ids(body["moments"])
    assert old in ids, body["moments"]
    assert ids.index(old) == len(ids) - 1  # newest first: the earlier run's moment last
    assert len(ids) == len(set(ids)) >= 2
    code, body = service.customer("cust-t")
    assert code == 200, body
    assert body["held"] is True
    assert len(_ids(body["moments"])) == 2, body["moments"]
    assert body["context"] is not None
    assert body["context"]["moment_id"] in _ids(body["moments"])
    tags = {t["tag"]: t for t in body["tags"]}
    assert sorted(tags) == ["cart.failed", "cart.handoff"], body["tags"]
    assert tags["cart.failed"]["expires_at"] == tags["cart.failed"]["opened_ts"] + DAY


def test_an_evicted_customer_shows_its_open_tags_until_they_expire(restarted: tuple[Service, Shard, Any],
                                                                   recent: Recent) -> None:
    service, shard, write = restarted
    _feed(shard, recent, write, [ev("z1", 10 * MIN, "view", customer="cust-z", step="product")])
    code, body = service.customer("cust-e")
    assert code == 200, body
    assert body["held"] is False
    assert [t["tag"] for t in body["tags"]] == ["cart.failed"], body
    assert body["tags"][0]["state"] in ("open", "actioned")
    # Two days later by the process's event time, its tag's day to live has passed.
    _feed(shard, recent, write, [ev("z2", 2 * DAY, "view", customer="cust-z", step="product")])
    code, body = service.customer("cust-e")
    assert code == 200, body
    assert body["tags"] == [], body["tags"]
