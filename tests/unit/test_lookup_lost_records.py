"""Look-ups of customers whose state record lost what came before (issue 17, adversary pass 3): one shed by
``--max-customers`` and seen again, and attempts restored from snapshots (or only stored) whose entry points and
channels memory never noted. ClickHouse fills in what memory lacks, and is not asked for anyone else."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.lookup_history import History
from flows.recent import Recent
from flows.serving import Service
from flows.shard_registry import ShardRegistry
from state.batches import RawBatch
from state.moments import moment_id
from state.shard import Shard, process
from tests.helpers import MIN, PACK, T0, ev, raws

DAY = 24 * 60 * MIN


class _Owner:
    """Holds a shard for the registry, as the dataflow's operator does."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard


class _World:
    """A shard of at most ``cap`` customers, its ClickHouse database (chDB) and a look-up service on both."""

    def __init__(self, tmp_path: Path, recent: Recent, cap: int | None) -> None:
        from connectors.clickhouse.client import resolve_dsn
        from connectors.clickhouse.sink import ClickHouseSink

        dsn = resolve_dsn(f"chdb://{tmp_path / 'ch'}")
        self.sink = ClickHouseSink(dsn, background=False)
        self.sink.ensure_schema()
        self.history = History(dsn)
        self.queries: list[str] = []
        query = self.history._query

        def counted(sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
            self.queries.append(sql.split(" FROM ")[1].split()[0])  # the table asked
            return query(sql, params)

        self.history._query = counted  # type: ignore[method-assign]
        self.recent = recent
        self.shard = Shard(PACK, lateness_ms=0, max_customers=cap)
        self.shard.state_interval_ms = 0  # journey state rows written with every batch, as a second apart live
        self.owner = _Owner(self.shard)
        registry = ShardRegistry()
        registry.add(self.owner, threading.Lock())
        self.service = Service(registry, self.history, recent=recent, pack=PACK)
        self.service.running = True
        self.n = 0

    def feed(self, events: list[dict[str, Any]], note: bool = True) -> None:
        """Apply events as one batch, note its outputs in memory (unless not ``note``) and write them.

        The batch's latest event waits for a later one (no lateness: the watermark is at its time): a batch ends
        with an event of no journey of its last customer, a second later.
        """
        last = events[-1]
        events = [*events, ev(f"{last['event_id']}-x", last["ts"] - T0 + 1_000, "view", customer=last["customer_id"],
                              journey=None)]
        out = process(self.shard, [RawBatch("file:t", 0, raws(events), list(range(self.n, self.n + len(events))))])
        self.n += len(events)
        if note:  # as flows.operators.ShardLogic does
            self.recent.note_shed(out)
            self.recent.note(out)
        for kind, rows in out.records():
            self.sink.add(kind, rows)
        self.sink.flush()

    def look(self, cid: str) -> dict[str, Any]:
        self.queries.clear()
        code, body = self.service.customer(cid)
        assert code == 200, body
        assert "history" not in body, body
        return body

    def close(self) -> None:
        self.history.close()
        self.sink.close()


@pytest.fixture
def capped(tmp_path: Path, recent: Recent) -> Iterator[_World]:
    """A shard holding one customer at most: a second sheds the first."""
    w = _World(tmp_path, recent, cap=1)
    yield w
    w.close()


@pytest.fixture
def world(tmp_path: Path, recent: Recent) -> Iterator[_World]:
    """A shard without a cap."""
    w = _World(tmp_path, recent, cap=None)
    yield w
    w.close()


def _journeys(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["journey"]: j for j in body["journeys"]}


def test_a_customer_shed_and_seen_again_shows_its_open_tags_and_earlier_journeys(capped: _World) -> None:
    # cust-a's card payment fails (the tag cart.failed, open for a day); cust-b sheds it; back, it only looks at a
    # 5G plan. Before, the look-up showed no tag and only the 5G journey.
    capped.feed([ev("a1", 0, "start", customer="cust-a", step="cart", entry="search"),
                 ev("a2", 2, "fail", customer="cust-a", step="payment", reason="card_declined", error_code="E51")])
    capped.feed([ev("b1", MIN, "view", customer="cust-b", step="product")])
    capped.feed([ev("a3", 2 * MIN, "view", customer="cust-a", journey="5g_upgrade", step="landing", entry="ad"),
                 ev("a4", 2 * MIN + 1, "view", customer="cust-a", journey="5g_upgrade", step="plan_select")])
    body = capped.look("cust-a")
    assert body["held"] is True
    # The tag its new record holds, then the one stored open from before the shed.
    tags = [(t["tag"], t["state"]) for t in body["tags"]]
    assert tags == [("5g_upgrade.interested", "actioned"), ("cart.failed", "actioned")], body["tags"]
    failed = body["tags"][1]
    assert (failed["moment_id"], failed["opened_ts"]) == (moment_id("cust-a", "cart.failed", "a2"), T0 + 2)
    assert failed["expires_at"] == failed["opened_ts"] + DAY  # the rule's ttl
    js = _journeys(body)
    assert sorted(js) == ["5g_upgrade", "cart"], body["journeys"]
    cart = js["cart"]
    assert (cart["attempt"], cart["step"], cart["status"]) == ("a1", "payment", "active")
    assert (cart["entry"], cart["entries"], cart["channels"]) == ("search", ["search"], ["app"])
    assert (js["5g_upgrade"]["attempt"], js["5g_upgrade"]["entries"]) == ("a3", ["ad"])


def test_a_shed_customer_back_with_an_event_of_no_journey_shows_its_journeys(capped: _World) -> None:
    capped.feed([ev("a1", 0, "start", customer="cust-a", step="cart", entry="search"),
                 ev("a2", 2, "fail", customer="cust-a", step="payment", reason="card_declined", error_code="E51")])
    capped.feed([ev("b1", MIN, "view", customer="cust-b", step="product")])
    capped.feed([ev("a3", 2 * MIN, "view", customer="cust-a", journey=None)])
    body = capped.look("cust-a")
    assert body["held"] is True
    assert [j["journey"] for j in body["journeys"]] == ["cart"], body
    assert body["journeys"][0]["entries"] == ["search"]
    assert [t["tag"] for t in body["tags"]] == ["cart.failed"]


def test_a_customer_shed_and_seen_again_within_the_batch_being_applied_shows_its_tags(capped: _World) -> None:
    # A look-up reads between two events of a batch: the shed is on the batch's outputs, not yet noted in memory.
    capped.feed([ev("a1", 0, "start", customer="cust-a", step="cart", entry="search"),
                 ev("a2", 2, "fail", customer="cust-a", step="payment", reason="card_declined", error_code="E51")])
    events = [ev("b1", MIN, "view", customer="cust-b", step="product"),
              ev("a3", 2 * MIN, "view", customer="cust-a", journey=None),
              ev("a4", 3 * MIN, "view", customer="cust-a", journey=None)]
    capped.shard.feed(RawBatch("file:t", 0, raws(events), [10, 11, 12]))  # its outputs not taken yet
    assert capped.shard.ctx.out.shed_ids == ["cust-a", "cust-b"]
    body = capped.look("cust-a")
    assert body["held"] is True
    assert [t["tag"] for t in body["tags"]] == ["cart.failed"], body
    assert [j["journey"] for j in body["journeys"]] == ["cart"]
    assert "shed" not in body


def test_a_customer_never_shed_is_answered_without_a_query(capped: _World) -> None:
    capped.feed([ev("a1", 0, "start", customer="cust-a", step="cart", entry="search")])
    capped.feed([ev("b1", MIN, "view", customer="cust-b", step="product", entry="home")])  # sheds cust-a
    body = capped.look("cust-b")
    assert body["held"] is True
    assert body["journeys"][0]["entries"] == ["home"]
    assert capped.queries == []


def test_a_customer_evicted_after_the_horizon_and_seen_again_costs_no_query(world: _World) -> None:
    # Eviction waits until its tags have expired and its attempts have ended: a record kept all along would show
    # nothing of them either, so nothing is merged (and nothing asked).
    world.feed([ev("a1", 0, "start", customer="cust-a", step="cart", entry="search"),
                ev("a2", 2, "fail", customer="cust-a", step="payment", reason="card_declined", error_code="E51")])
    world.feed([ev("z1", 10 * DAY, "view", customer="cust-z", step="product")])
    assert "cust-a" not in world.shard.customers
    world.feed([ev("a3", 10 * DAY + 5, "view", customer="cust-a", journey=None)])
    body = world.look("cust-a")
    assert (body["held"], body["tags"], body["journeys"]) == (True, [], [])
    assert world.queries == []


def test_restored_attempts_take_their_entries_and_channels_from_the_stored_steps_in_one_query(world: _World) -> None:
    # As after a resume from snapshots: the state holds the attempts, memory noted none of their steps. The 5G
    # attempt completed (its live state keeps no channels); the cart attempt is open.
    world.feed([ev("a1", 0, "view", customer="cust-a", step="product", entry="home_banner"),
                ev("a2", 1, "start", customer="cust-a", step="cart", entry="search"),
                ev("a3", 2, "view", customer="cust-a", journey="5g_upgrade", step="landing", entry="ad"),
                ev("a4", 3, "view", customer="cust-a", channel="web", journey="5g_upgrade", step="plan_select",
                   entry="ad"),
                ev("a5", 4, "complete", customer="cust-a", channel="store", journey="5g_upgrade", step="payment"),
                ev("a6", 5, "view", customer="cust-a", step="checkout", channel="web", entry="home_banner")],
               note=False)
    world.service.resumed = True
    body = world.look("cust-a")
    js = _journeys(body)
    g = js["5g_upgrade"]
    assert (g["status"], g["entry"], g["entries"]) == ("completed", "ad", ["ad"])
    assert g["channels"] == ["app", "web", "store"]
    cart = js["cart"]
    assert (cart["entry"], cart["entries"]) == ("search", ["home_banner", "search"])  # each once: as memory has it
    assert cart["channels"] == ["app", "web"]
    assert world.queries.count("journey_steps") == 1


def test_attempts_memory_holds_are_not_asked_of_clickhouse(world: _World) -> None:
    world.feed([ev("a1", 0, "view", customer="cust-a", step="product", entry="home_banner"),
                ev("a2", 1, "complete", customer="cust-a", channel="web", journey="cart", step="payment")])
    body = world.look("cust-a")
    [cart] = body["journeys"]
    assert (cart["status"], cart["entries"], cart["channels"]) == ("completed", ["home_banner"], ["app", "web"])
    assert world.queries == []


def test_a_stored_customer_shows_the_entries_and_channels_of_its_stored_attempts(capped: _World,
                                                                                   recent: Recent) -> None:
    capped.feed([ev("a1", 0, "view", customer="cust-a", step="product", entry="home_banner"),
                 ev("a2", 1, "start", customer="cust-a", channel="web", step="cart", entry="search")])
    capped.feed([ev("b1", MIN, "view", customer="cust-b", step="product")])  # sheds cust-a
    recent.clear(enabled=True)  # memory forgot it too (a restart)
    capped.service.resumed = True
    body = capped.look("cust-a")
    assert body["held"] is False
    [cart] = body["journeys"]
    assert (cart["attempt"], cart["entry"], cart["entries"]) == ("a1", "search", ["home_banner", "search"])
    assert cart["channels"] == ["app", "web"]
