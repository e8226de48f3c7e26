"""Customer look-ups answered from the worker's memory (issue 17): the recent store and the shard gate."""

from __future__ import annotations

import threading

import orjson

from flows.operators import ShardLogic
from flows.recent import MAX_MOMENTS, Recent
from flows.serving import Service, dumps
from flows.shard_registry import SHARDS
from state.batches import RawBatch
from state.moments import moment_id
from state.outputs import STEP_FIELDS, Outputs
from state.shard import Shard
from tests.helpers import PACK, T0, ev, raws

STEPS = ("product", "cart", "checkout")


def _batch(events: list[dict[str, object]], first: int = 0) -> RawBatch:
    return RawBatch("file:t", 0, raws(events), list(range(first, first + len(events))))


def _answer(service: Service, cid: str) -> tuple[int, dict[str, object]]:
    code, body = service.customer(cid, local=True)
    return code, orjson.loads(dumps(body))  # as the HTTP endpoint encodes it (the kept parts are encoded JSON)


def test_a_lookup_answers_moments_decisions_and_context_from_memory_without_clickhouse(recent: Recent) -> None:
    logic = ShardLogic(Shard(PACK, lateness_ms=0), None, False, 1.0)
    logic.on_batch([_batch([
        ev("e1", 0, "view", customer="cust-a", step="product", entry="home_banner"),
        ev("e2", 1, "start", customer="cust-a", step="cart", entry="search"),
        ev("e3", 2, "fail", customer="cust-a", step="payment", reason="card_declined", error_code="E51"),
        ev("e4", 3, "contact", customer="cust-a", channel="call_center", journey=None),
        ev("z1", 10, "view", customer="cust-z", step="product"),  # moves the watermark past the contact
    ])])
    # No ClickHouse at all (history None): before, moments and context were only read from ClickHouse.
    service = Service(SHARDS, None)
    code, view = _answer(service, "cust-a")
    assert code == 200
    assert view["held"] is True
    [cart] = view["journeys"]  # type: ignore[misc]
    assert (cart["step"], cart["entry"], cart["entries"]) == ("payment", "search", ["home_banner", "search"])
    failed = moment_id("cust-a", "cart.failed", "e3")
    moments = view["moments"]
    assert isinstance(moments, list)
    assert [m["rule"] for m in moments] == ["cart.handoff", "cart.failed"]  # newest first
    assert (moments[1]["moment_id"], moments[1]["evidence"]) == (failed, ["e3"])
    assert moments[1]["decision"]["status"] == "sent"
    ctx = view["context"]
    assert isinstance(ctx, dict)
    assert ctx["moment_id"] == moment_id("cust-a", "cart.handoff", "e4")
    assert ctx["entries"] == ["home_banner", "search"]
    assert ctx["failures"] == [{"ts": T0 + 2, "step": "payment", "reason": "card_declined", "error_code": "E51"}]
    assert _answer(service, "nobody")[0] == 404  # never seen: 404 without asking anyone


def test_the_recent_store_is_bounded_per_customer_and_in_customers() -> None:
    store = Recent(max_customers=2)
    store.clear(enabled=True)
    out = Outputs()
    for k in range(MAX_MOMENTS + 5):
        mid = f"{k:032x}"
        out.moments.append({"moment_id": mid, "customer_id": "a", "rule": "r", "rule_version": 1, "kind": "k",
                            "journey": "j", "step": "", "urgency": "high", "due_ts": k, "detected_at": k,
                            "evidence": [], "action": ""})
    store.note(out)
    kept = store.get("a")
    assert kept is not None
    assert [m["due_ts"] for m in orjson.loads(orjson.dumps(kept["moments"]))] == list(range(MAX_MOMENTS + 4, 4, -1))
    for cid in ("b", "c"):
        o = Outputs()
        row = {"customer_id": cid, "journey": "j", "attempt_id": "x", "step": "s", "step_index": 0, "entry": "",
               "channel": "app", "event_id": "e", "ts": 1}
        o.step_rows.append(tuple(row[f] for f in STEP_FIELDS))  # as the shard makes them (``Outputs.steps``: dicts)
        store.note(o)
    assert (store.get("a"), len(store), store.dropped) == (None, 2, 1)  # the least recently noted went first
    assert store.maybe_dropped("a")
    assert not store.maybe_dropped("b")


def test_a_lookup_sees_whole_events_and_is_answered_in_the_middle_of_a_batch(recent: Recent) -> None:
    # One customer, batches of 500 events each moving it to the next step: a look-up must always see a step
    # and a time of the same event, and (read between two events by the worker) not only batches' ends.
    logic = ShardLogic(Shard(PACK, lateness_ms=0), None, False, 1.0)
    size, batches = 500, 12
    seen: list[tuple[int, str]] = []
    boundaries: set[int] = set()  # the customer's time after each batch: what a look-up waiting for batches sees
    errors: list[BaseException] = []
    started, done = threading.Event(), threading.Event()

    def worker() -> None:
        try:
            for b in range(batches):
                logic.on_batch([_batch([ev(f"e{k}", k, "view", step=STEPS[k % 3])
                                        for k in range(b * size, (b + 1) * size)], b * size)])
                [a] = [a for a in logic.shard.customers["c1"].attempts if a is not None]
                boundaries.add(a.last_ts - T0)
                started.set()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)
        finally:
            started.set()
            done.set()

    def reader() -> None:
        started.wait()
        try:
            while not done.is_set():
                view = SHARDS.customer("c1")
                if view is not None:
                    j = view["journeys"][0]
                    seen.append((j["updated_at"] - T0, j["step"]))
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=worker), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    assert seen, "the reader never found the customer"
    for k, step in seen:
        assert step == STEPS[k % 3], "a look-up saw half an event"
    # Before, a look-up waited for the whole batch (the lock): it only ever saw the last event of a batch.
    assert any(k not in boundaries for k, _ in seen), "every look-up waited for the end of a batch"
