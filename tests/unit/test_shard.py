"""The shard: event-time order, lateness, live clock, duplicates, eviction, snapshots."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from state.batches import RawBatch, Tick
from state.rules import load_rule_pack
from state.shard import Shard, process
from tests.helpers import MIN, PACK, T0, ev, raws, rules_fired, run

DAY = 24 * 60 * MIN


def _feed(sh: Shard, events: list[dict[str, object]]) -> list[str]:
    out = process(sh, [RawBatch("t", 0, raws(events), list(range(len(events))))])
    return rules_fired(out)


def test_out_of_order_events_within_lateness_give_the_same_moments_as_sorted_input() -> None:
    events = [ev("k", 0, "submit", step="checkout"), ev("v", 9 * MIN, "view", step="cart"),
              ev("z", 40 * MIN, journey=None, customer="c9")]
    in_order = run(events)
    # The view arrives before the checkout it follows, 9 minutes late, within a 10-minute lateness.
    shuffled = run([events[1], events[0], events[2]], lateness_ms=10 * MIN)
    assert rules_fired(in_order) == rules_fired(shuffled) == []
    assert shuffled.late == 0


def test_events_later_than_the_lateness_are_counted_and_still_update_state() -> None:
    sh = Shard(PACK, lateness_ms=30_000)
    assert _feed(sh, [ev("f1", 0, "fail"), ev("x", 10 * MIN, journey=None, customer="c2")]) == ["cart.failed"]
    out = process(sh, [RawBatch("t", 0, raws([ev("f0", -MIN, "fail"), ev("f2", 11 * MIN, "fail")]), [0, 1]),
                       Tick(0, final=True)])
    assert out.late == 1
    # The late fail still counts: f0, f1, f2 within 30 minutes make the customer stuck.
    assert rules_fired(out) == ["cart.stuck"]


def test_live_clock_fires_an_abandonment_while_input_is_idle() -> None:
    now = [T0]
    sh = Shard(PACK, lateness_ms=1_000, live=True, clock=lambda: now[0])
    assert _feed(sh, [ev("k", 0, "submit", step="checkout")]) == []
    now[0] = T0 + 10 * MIN + 999
    sh.on_wall_clock()
    assert sh.take_outputs().moments == []
    now[0] = T0 + 10 * MIN + 1_000
    sh.on_wall_clock()
    assert rules_fired(sh.take_outputs()) == ["cart.abandoned"]


def test_replay_clock_ignores_the_wall_clock() -> None:
    sh = Shard(PACK, live=False, clock=lambda: T0 + DAY)
    _feed(sh, [ev("k", 0, "submit", step="checkout")])
    sh.on_wall_clock()
    assert sh.take_outputs().moments == []


def test_duplicate_event_ids_are_dead_lettered_and_not_counted_twice() -> None:
    out = run([ev("f1", 0, "fail"), ev("f1", 0, "fail"), ev("f2", MIN, "fail"), ev("f1", 0, "fail"),
               ev("f3", 2 * MIN, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.stuck"]
    assert out.invalid == {"duplicate": 2}
    assert [d["reason"] for d in out.dead] == ["duplicate:event_id", "duplicate:event_id"]


def test_invalid_messages_go_to_dead_letters_with_their_offsets() -> None:
    out = run([b"garbage", ev("ok", 0), b'{"event_id": "x"}'])
    assert [(d["reason"], d["offset"]) for d in out.dead] == [("not_json", 0), ("missing_field:customer_id", 2)]
    assert out.invalid == {"not_json": 1, "missing_field": 1}
    assert sum(out.events.values()) == 1


def test_idle_customers_are_evicted_after_the_horizon() -> None:
    sh = Shard(PACK)
    _feed(sh, [ev("a", 0, "view", customer="gone"), ev("b", MIN, "view", customer="stays", journey=None)])
    out = process(sh, [RawBatch("t", 0, raws([ev("c", DAY + 2 * MIN, "view", customer="stays", journey=None)]), [0]),
                       Tick(T0 + DAY + 2 * MIN + 1, final=True)])
    assert "gone" not in sh.customers
    assert "stays" in sh.customers
    # "stays" was idle for a day too (MIN → DAY + 2·MIN): evicted, then tracked anew by its next event.
    assert out.evicted == 2
    assert sh.customers["stays"].last_seen == T0 + DAY + 2 * MIN


def test_customers_with_open_tags_are_kept_until_the_tags_expire() -> None:
    sh = Shard(PACK)
    _feed(sh, [ev("i1", 0, "view"), ev("i2", MIN, "view")])  # cart.interested, TTL 72 h
    process(sh, [Tick(T0 + DAY + 2 * MIN, final=True)])
    assert "c1" in sh.customers
    process(sh, [Tick(T0 + 73 * 60 * MIN, final=True)])
    assert "c1" not in sh.customers


def test_customer_cap_sheds_the_oldest_customers() -> None:
    sh = Shard(PACK, max_customers=2)
    out = process(sh, [RawBatch("t", 0, raws([ev(f"e{i}", i * MIN, customer=f"c{i}") for i in range(5)]),
                                list(range(5))), Tick(0, final=True)])
    assert len(sh.customers) == 2
    assert set(sh.customers) == {"c3", "c4"}
    assert out.evicted == 3


def test_snapshot_and_restore_continue_exactly_like_an_uninterrupted_run() -> None:
    first = [ev("k", 0, "submit", step="checkout"), ev("f1", MIN, "fail", customer="c2"),
             ev("f2", 2 * MIN, "fail", customer="c2")]
    second = [ev("f3", 3 * MIN, "fail", customer="c2"), ev("z", 30 * MIN, journey=None, customer="c3")]
    whole = run(first + second)
    sh = Shard(PACK)
    part1 = process(sh, [RawBatch("t", 0, raws(first), [0, 1, 2])])
    restored = Shard(PACK)
    restored.restore(sh.snapshot())
    part2 = process(restored, [RawBatch("t", 0, raws(second), [3, 4]), Tick(0, final=True)])
    ids = [m["moment_id"] for m in part1.moments + part2.moments]
    assert sorted(ids) == sorted(m["moment_id"] for m in whole.moments)
    assert len(ids) == 3


def test_restoring_state_of_another_rule_pack_is_refused(tmp_path: Path) -> None:
    sh = Shard(PACK)
    _feed(sh, [ev("a", 0)])
    text = Path(PACK.path).read_text().replace('idle = "10m"', 'idle = "20m"')
    other = tmp_path / "other.toml"
    other.write_text(text)
    with pytest.raises(ValueError, match="different rule pack"):
        Shard(load_rule_pack(other)).restore(sh.snapshot())


def test_state_package_is_pure() -> None:
    forbidden = {"bytewax", "confluent_kafka", "clickhouse_connect", "chdb", "flows", "connectors", "prometheus_client"}
    root = Path(__file__).resolve().parents[2] / "state"
    for path in root.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
