"""The --max-customers cap: customers shed with pending moments are counted apart and warned about."""

from __future__ import annotations

import logging

import pytest

from flows import accounting, metrics
from state.batches import RawBatch, Tick
from state.outputs import Outputs
from state.shard import Shard, process
from tests.helpers import MIN, PACK, T0, ev, raws


def _feed(sh: Shard, events: list[dict[str, object]]) -> Outputs:
    return process(sh, [RawBatch("t", 0, raws(events), list(range(len(events)))), Tick(0, final=False)])


def test_shedding_a_customer_with_a_pending_abandonment_counts_the_dropped_moment() -> None:
    sh = Shard(PACK, lateness_ms=0, max_customers=1)
    # a: at a key step (checkout), its abandonment due 10 min later; b: browsing, nothing pending.
    # Each newcomer sheds the customer before it while nothing is due yet.
    out = _feed(sh, [ev("a1", 0, "submit", customer="a", step="checkout"),
                     ev("b1", MIN, "view", customer="b", step="product"),
                     ev("c1", 2 * MIN, "view", customer="c", step="product"),
                     ev("c2", 3 * MIN, "view", customer="c", step="product")])
    assert set(sh.customers) == {"c"}
    assert out.shed == 2
    assert out.evicted == 2
    assert out.shed_pending == 1
    assert out.shed_moments == 1
    # The dropped abandonment never fires.
    end = process(sh, [Tick(2**42, final=True)])
    assert [m["rule"] for m in out.moments + end.moments if m["customer_id"] == "a"] == []


def test_an_abandonment_due_before_the_newcomer_fires_and_is_not_counted_as_dropped() -> None:
    sh = Shard(PACK, lateness_ms=0, max_customers=1)
    out = _feed(sh, [ev("a1", 0, "submit", customer="a", step="checkout"),
                     ev("b1", 11 * MIN, "view", customer="b", step="product"),
                     ev("b2", 12 * MIN, "view", customer="b", step="product")])
    assert [m["rule"] for m in out.moments] == ["cart.abandoned"]
    assert out.shed == 1
    assert out.shed_pending == 0
    assert out.shed_moments == 0


def _value(name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_shed_metrics_and_a_rate_limited_warning_without_customer_ids(caplog: pytest.LogCaptureFixture) -> None:
    yes = _value("cx_customers_shed_total", {"pending": "yes"})
    no = _value("cx_customers_shed_total", {"pending": "no"})
    dropped = _value("cx_shed_pending_moments_total")
    sh = Shard(PACK, lateness_ms=0, max_customers=1)
    out = _feed(sh, [ev("a1", 0, "submit", customer="cust-secret-1", step="checkout"),
                     ev("b1", MIN, "view", customer="cust-secret-2", step="product"),
                     ev("c1", 2 * MIN, "view", customer="cust-secret-3", step="product"),
                     ev("c2", 3 * MIN, "view", customer="cust-secret-3", step="product")])  # releases c1
    accounting._shed_warned_at[0] = float("-inf")
    with caplog.at_level(logging.WARNING, logger="cx.metrics"):
        accounting.observe_outputs("s0", out, 0)
        accounting.observe_outputs("s0", out, 0)  # within the minute: counted, not warned again
    assert _value("cx_customers_shed_total", {"pending": "yes"}) == yes + 2
    assert _value("cx_customers_shed_total", {"pending": "no"}) == no + 2
    assert _value("cx_shed_pending_moments_total") == dropped + 2
    warnings = [r.getMessage() for r in caplog.records if "--max-customers" in r.getMessage()]
    assert len(warnings) == 1
    assert "1 customer(s) with pending moments were shed, dropping 1 pending moment(s)" in warnings[0]
    assert "cust-secret" not in warnings[0]


def test_a_customer_shed_and_back_within_a_state_interval_gets_the_state_rows_of_both_records() -> None:
    # The shed record's journey state row was still marked for the next write: the returning customer's own
    # mark was taken for it (setdefault), so the row written described the shed record's attempt, at its time,
    # and the new attempt had none (a helper's finding, issue 17).
    sh = Shard(PACK, lateness_ms=0, max_customers=1)
    first = _feed(sh, [ev("a1", 0, "view", customer="a", step="product"),
                       ev("b1", MIN, "view", customer="b", step="product"),  # sheds a
                       ev("a2", 2 * MIN, "submit", customer="a", step="checkout"),  # sheds b; a is new again
                       ev("a3", 3 * MIN, "view", customer="a", step="checkout")])  # releases a2
    rest = sh.take_outputs(states=True)
    rows = [(r["customer_id"], r["last_ts"] - T0, r["last_step"]) for r in first.states + rest.states]
    assert sorted(rows) == [("a", 0, "product"), ("a", 2 * MIN, "checkout"), ("b", MIN, "product")]
