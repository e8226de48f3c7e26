"""The shard: event-time order, lateness, live clock, ticks, eviction, customer cap, snapshots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from state.batches import RawBatch, Tick
from state.rules import load_rule_pack
from state.shard import Shard, process
from tests.helpers import MIN, PACK, T0, ev, raws, rules_fired, run

HOUR = 60 * MIN
DAY = 24 * HOUR
REPO = Path(__file__).resolve().parents[2]


def _feed(sh: Shard, events: list[dict[str, Any]], *, final: bool = False) -> Any:
    items: list[RawBatch | Tick] = [RawBatch("t", 0, raws(events), list(range(len(events))))]
    if final:
        items.append(Tick(0, final=True))
    return process(sh, items)


def _moments(out: Any) -> list[tuple[str, str, int, tuple[str, ...]]]:
    return sorted((m["moment_id"], m["rule"], m["due_ts"], tuple(m["evidence"])) for m in out.moments)


# -- event-time order ---------------------------------------------------------------------------------
def test_out_of_order_events_within_lateness_give_the_same_moments_as_sorted_input() -> None:
    events = [ev("k", 0, "submit", step="checkout"), ev("v", 10 * MIN - 1, "view", step="cart"),
              ev("k2", 4 * MIN, "submit", step="checkout", customer="c2"), ev("f1", MIN, "fail", customer="c2"),
              ev("f2", 2 * MIN, "fail", customer="c2"), ev("f3", 3 * MIN, "fail", customer="c2"),
              ev("z", 40 * MIN, journey=None, customer="c9")]
    in_order = run(sorted(events, key=lambda e: e["ts"]), lateness_ms=10 * MIN)
    # Newest first: every event arrives at most 10 minutes after a newer one.
    shuffled = run([events[1], events[5], events[4], events[0], events[3], events[2], events[6]], lateness_ms=10 * MIN)
    assert _moments(in_order) == _moments(shuffled)
    assert sorted(rules_fired(shuffled)) == ["cart.abandoned", "cart.failed", "cart.stuck"]
    assert shuffled.late == 0


def test_out_of_order_events_across_batches_within_lateness_are_put_back_in_order() -> None:
    sh = Shard(PACK, lateness_ms=10 * MIN)
    first = _feed(sh, [ev("k", 0, "submit", step="checkout"), ev("x", 9 * MIN, journey=None, customer="c2")])
    # The view that prevents the abandonment arrives in a later batch, 9 minutes "late" but within the lateness.
    second = _feed(sh, [ev("v", 5 * MIN, "view", step="cart"), ev("y", 30 * MIN, journey=None, customer="c2")],
                   final=True)
    assert first.moments == second.moments == []
    assert second.late == 0


def test_events_later_than_the_lateness_are_counted_and_still_update_state() -> None:
    sh = Shard(PACK, lateness_ms=30_000)
    assert rules_fired(_feed(sh, [ev("f1", 0, "fail"), ev("x", 10 * MIN, journey=None, customer="c2")])) == [
        "cart.failed"]
    out = process(sh, [RawBatch("t", 0, raws([ev("f0", -MIN, "fail"), ev("f2", 11 * MIN, "fail")]), [0, 1]),
                       Tick(0, final=True)])
    assert out.late == 1
    # The late fail still counts: f0, f1, f2 within 30 minutes make the customer stuck.
    assert rules_fired(out) == ["cart.stuck"]
    assert out.moments[0]["evidence"] == ["f0", "f1", "f2"]


def test_a_late_event_is_recorded_with_its_id_and_how_far_behind_the_watermark_it_came() -> None:
    sh = Shard(PACK, lateness_ms=30_000)
    _feed(sh, [ev("f1", 0, "fail"), ev("x", 10 * MIN, journey=None, customer="c2")])
    out = process(sh, [RawBatch("kafka:cx.events", 3, raws([ev("f0", -MIN, "fail", channel="web"),
                                                            ev("f2", 11 * MIN, "fail")]), [7, 8])])
    wm = T0 + 10 * MIN - 30_000
    assert out.late == 1
    [late] = out.late_events
    assert {k: v for k, v in late.items() if k != "received_at"} == {
        "schema": 1, "event_id": "f0", "customer_id": "c1", "channel": "web", "type": "fail", "ts": T0 - MIN,
        "watermark": wm, "late_ms": wm - (T0 - MIN), "source": "kafka:cx.events", "partition": 3, "offset": 7}
    assert ("late", out.late_events) in out.records()


def test_late_events_do_not_retract_moments_already_emitted() -> None:
    sh = Shard(PACK, lateness_ms=30_000)
    first = _feed(sh, [ev("k", 0, "submit", step="checkout"), ev("x", 20 * MIN, journey=None, customer="c2")])
    assert rules_fired(first) == ["cart.abandoned"]
    # A view 5 minutes after the checkout would have prevented it, but it comes 15 minutes late.
    late = _feed(sh, [ev("v", 5 * MIN, "view", step="cart")], final=True)
    assert late.late == 1
    assert late.moments == []
    assert [t["state"] for t in late.tags] == []
    # It did update the journey: its step is recorded.
    assert [(s["step"], s["event_id"]) for s in late.steps] == [("cart", "v")]


def test_event_exactly_at_the_watermark_is_on_time() -> None:
    sh = Shard(PACK, lateness_ms=MIN)
    _feed(sh, [ev("a", 10 * MIN, journey=None)])
    assert sh.wm == T0 + 9 * MIN
    on_time = _feed(sh, [ev("b", 9 * MIN, journey=None)])
    assert on_time.late == 0
    late = _feed(sh, [ev("c", 9 * MIN - 1, journey=None)])
    assert late.late == 1


# -- clocks ------------------------------------------------------------------------------------------
def test_live_clock_fires_an_abandonment_while_input_is_idle() -> None:
    now = [T0]
    sh = Shard(PACK, lateness_ms=1_000, live=True, clock=lambda: now[0])
    assert rules_fired(_feed(sh, [ev("k", 0, "submit", step="checkout")])) == []
    now[0] = T0 + 10 * MIN + 999
    sh.on_wall_clock()
    assert sh.take_outputs().moments == []
    now[0] = T0 + 10 * MIN + 1_000
    sh.on_wall_clock()
    out = sh.take_outputs()
    assert rules_fired(out) == ["cart.abandoned"]
    assert out.moments[0]["detected_at"] == now[0]
    assert out.moments[0]["due_ts"] == T0 + 10 * MIN


def test_live_clock_with_default_lateness_fires_within_a_minute_of_due() -> None:
    now = [T0]
    sh = Shard(PACK, live=True, clock=lambda: now[0])
    _feed(sh, [ev("k", 0, "submit", step="checkout")])
    now[0] = T0 + 10 * MIN + 30_000
    sh.on_wall_clock()
    out = sh.take_outputs()
    assert rules_fired(out) == ["cart.abandoned"]
    assert out.moments[0]["detected_at"] - out.moments[0]["due_ts"] <= 60_000


def test_replay_clock_ignores_the_wall_clock() -> None:
    sh = Shard(PACK, live=False, clock=lambda: T0 + DAY)
    _feed(sh, [ev("k", 0, "submit", step="checkout")])
    sh.on_wall_clock()
    assert sh.take_outputs().moments == []


def test_a_tick_moves_an_idle_live_shards_watermark_and_fires_due_timers() -> None:
    sh = Shard(PACK, lateness_ms=30_000, live=True, clock=lambda: T0)
    _feed(sh, [ev("k", 0, "submit", step="checkout")])
    assert process(sh, [Tick(T0 + 10 * MIN)]).moments == []  # watermark 30 s short of due
    out = process(sh, [Tick(T0 + 10 * MIN + 30_000)])
    assert rules_fired(out) == ["cart.abandoned"]
    assert out.watermark_ms == T0 + 10 * MIN


def test_final_tick_fires_timers_due_up_to_the_largest_time_seen() -> None:
    sh = Shard(PACK)
    _feed(sh, [ev("k", 0, "submit", step="checkout"), ev("k2", 0, "submit", step="checkout", customer="c2"),
               ev("v", 5 * MIN, "view", step="product", customer="c2")])
    assert process(sh, [Tick(T0 + 10 * MIN - 1, final=True)]).moments == []
    assert rules_fired(process(sh, [Tick(T0 + 10 * MIN, final=True)])) == ["cart.abandoned"]


# -- invalid input and duplicates ---------------------------------------------------------------------
def test_invalid_messages_go_to_dead_letters_with_their_offsets() -> None:
    out = run([b"garbage", ev("ok", 0), b'{"event_id": "x"}'])
    assert [(d["reason"], d["offset"]) for d in out.dead] == [("not_json", 0), ("missing_field:customer_id", 2)]
    assert out.invalid == {"not_json": 1, "missing_field": 1}
    assert sum(out.events.values()) == 1


def test_duplicate_event_ids_are_dead_lettered_and_not_counted_twice() -> None:
    out = run([ev("f1", 0, "fail"), ev("f1", 0, "fail"), ev("f2", MIN, "fail"), ev("f1", 0, "fail"),
               ev("f3", 2 * MIN, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.stuck"]
    assert out.invalid == {"duplicate": 2}
    assert [d["reason"] for d in out.dead] == ["duplicate:event_id", "duplicate:event_id"]
    assert sum(out.events.values()) == 3


def test_a_replayed_batch_is_dropped_as_duplicates() -> None:
    sh = Shard(PACK)
    events = [ev("f1", 0, "fail"), ev("f2", MIN, "fail")]
    first = _feed(sh, events)
    again = _feed(sh, events, final=True)
    assert rules_fired(first) + rules_fired(again) == ["cart.failed"]
    assert again.invalid == {"duplicate": 2}


# -- eviction and the customer cap ---------------------------------------------------------------------
def test_idle_customers_are_evicted_after_the_horizon() -> None:
    sh = Shard(PACK)
    _feed(sh, [ev("a", 0, "view", customer="gone"), ev("b", MIN, "view", customer="stays", journey=None)])
    out = process(sh, [RawBatch("t", 0, raws([ev("c", DAY + 2 * MIN, "view", customer="stays", journey=None)]), [0]),
                       Tick(T0 + DAY + 2 * MIN + 1, final=True)])
    assert "gone" not in sh.customers
    assert "stays" in sh.customers
    # "stays" was idle for more than a day too (MIN → DAY + 2·MIN): evicted, then tracked anew by its next event.
    assert out.evicted == 2
    assert out.customers == 1
    assert sh.customers["stays"].last_seen == T0 + DAY + 2 * MIN


def test_customer_idle_for_exactly_the_horizon_is_kept_and_one_millisecond_more_is_evicted() -> None:
    assert PACK.horizon_ms == DAY
    sh = Shard(PACK)
    _feed(sh, [ev("a", 0, "view", customer="idle")])
    assert process(sh, [Tick(T0 + DAY, final=True)]).evicted == 0
    assert "idle" in sh.customers
    assert process(sh, [Tick(T0 + DAY + 1, final=True)]).evicted == 1
    assert sh.customers == {}


def test_customers_with_open_tags_are_kept_until_the_tags_expire() -> None:
    sh = Shard(PACK)
    _feed(sh, [ev("i1", 0, "view"), ev("i2", MIN, "view")])  # cart.interested, TTL 72 h
    process(sh, [Tick(T0 + DAY + 2 * MIN, final=True)])
    assert "c1" in sh.customers
    out = process(sh, [Tick(T0 + 73 * HOUR, final=True)])
    assert [(t["state"], t["outcome"]) for t in out.tags] == [("expired", "expired")]
    # The offer was sent at T0 + 1 min: the weekly cap needs that send for 7 days more.
    assert "c1" in sh.customers
    assert process(sh, [Tick(T0 + MIN + 7 * DAY, final=True)]).evicted == 0
    out = process(sh, [Tick(T0 + MIN + 7 * DAY + 1, final=True)])
    assert "c1" not in sh.customers
    assert out.evicted == 1


def test_customer_cap_sheds_the_oldest_customers() -> None:
    sh = Shard(PACK, max_customers=2)
    out = process(sh, [RawBatch("t", 0, raws([ev(f"e{i}", i * MIN, customer=f"c{i}") for i in range(5)]),
                                list(range(5))), Tick(0, final=True)])
    assert len(sh.customers) == 2
    assert set(sh.customers) == {"c3", "c4"}
    assert out.evicted == 3


def test_customer_cap_sheds_the_least_recently_seen_customer() -> None:
    sh = Shard(PACK, max_customers=2)
    _feed(sh, [ev("a1", 0, customer="a"), ev("b1", MIN, customer="b"), ev("a2", 2 * MIN, customer="a"),
               ev("c1", 3 * MIN, customer="c")], final=True)
    assert set(sh.customers) == {"a", "c"}


# -- snapshots ---------------------------------------------------------------------------------------
FIRST = [ev("k", 0, "submit", step="checkout"), ev("f1", MIN, "fail", customer="c2"),
         ev("f2", 2 * MIN, "fail", customer="c2"), ev("v1", 3 * MIN, "view", customer="c3")]
SECOND = [ev("f3", 3 * MIN, "fail", customer="c2"), ev("v2", 4 * MIN, "view", customer="c3"),
          ev("z", 30 * MIN, journey=None, customer="c4")]


def test_snapshot_and_restore_continue_exactly_like_an_uninterrupted_run() -> None:
    whole = run(FIRST + SECOND)
    sh = Shard(PACK)
    part1 = _feed(sh, FIRST)
    restored = Shard(PACK)
    restored.restore(sh.snapshot())
    part2 = process(restored, [RawBatch("t", 0, raws(SECOND), [4, 5, 6]), Tick(0, final=True)])
    ids = sorted(m["moment_id"] for m in part1.moments + part2.moments)
    assert ids == sorted(m["moment_id"] for m in whole.moments)
    assert sorted(rules_fired(whole)) == ["cart.abandoned", "cart.failed", "cart.interested", "cart.stuck"]


def test_snapshot_at_any_batch_boundary_gives_the_moments_of_an_uninterrupted_run() -> None:
    events = FIRST + SECOND
    whole = _moments(run(events))
    for cut in range(len(events) + 1):
        sh = Shard(PACK)
        out1 = _feed(sh, events[:cut]) if cut else None
        restored = Shard(PACK)
        restored.restore(sh.snapshot())
        out2 = _feed(restored, events[cut:], final=True)
        got = sorted((out1.moments if out1 else []) + out2.moments, key=lambda m: m["moment_id"])
        assert [(m["moment_id"], m["rule"], m["due_ts"], tuple(m["evidence"])) for m in got] == whole, cut


def test_snapshot_restores_in_another_process_with_another_string_hash(tmp_path: Path) -> None:
    sh = Shard(PACK)
    part1 = _feed(sh, FIRST)
    blob = tmp_path / "shard.snapshot"
    blob.write_bytes(sh.snapshot())
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from state.batches import RawBatch, Tick\n"
        "from state.shard import Shard, process\n"
        "from tests.helpers import PACK\n"
        "sh = Shard(PACK)\n"
        "sh.restore(Path(sys.argv[1]).read_bytes())\n"
        "values = [line.encode() for line in sys.stdin.read().splitlines()]\n"
        "out = process(sh, [RawBatch('t', 0, values, list(range(len(values)))), Tick(0, final=True)])\n"
        "print(json.dumps([m['moment_id'] for m in out.moments]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    proc = subprocess.run([sys.executable, "-c", code, str(blob)], input="\n".join(r.decode() for r in raws(SECOND)),
                          capture_output=True, text=True, env=env, cwd=REPO, check=True)
    ids = [m["moment_id"] for m in part1.moments] + json.loads(proc.stdout)
    assert sorted(ids) == sorted(m["moment_id"] for m in run(FIRST + SECOND).moments)


def test_snapshot_is_a_copy_that_later_processing_does_not_change() -> None:
    sh = Shard(PACK)
    _feed(sh, FIRST)
    blob = sh.snapshot()
    _feed(sh, SECOND, final=True)
    assert sh.snapshot() != blob
    restored = Shard(PACK)
    restored.restore(blob)
    # At the snapshot, the view of c3 was still waiting for the watermark: it is part of the copy.
    assert set(restored.customers) == {"c1", "c2"}
    assert [e.event_id for e in [*restored.held.queue, *(b[-1] for b in restored.held.heap)]] == ["v1"]


def test_restoring_under_a_pack_that_adds_or_removes_rules_is_refused_naming_them(tmp_path: Path) -> None:
    sh = Shard(PACK)
    _feed(sh, [ev("a", 0)])
    text = Path(PACK.path).read_text()
    start = text.index('[[moment]]\nkind = "maze"')
    other = tmp_path / "other.toml"
    other.write_text(text[:start] + text[text.index("[[moment]]", start + 1):])  # no maze rule
    with pytest.raises(ValueError, match="different rule pack") as info:
        Shard(load_rule_pack(other)).restore(sh.snapshot())
    assert str(other) in str(info.value)
    assert "removed 5g_upgrade.maze, cart.maze" in str(info.value)
    assert "only rule parameters may change" in str(info.value)


def test_restoring_under_a_changed_generic_rule_is_refused_naming_it(tmp_path: Path) -> None:
    generic = ('\n[[moment]]\nkind = "count"\nname = "fails"\nwhen = { type = "fail" }\nthreshold = 2\n'
               'journeys = ["cart"]\n')
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text(Path(PACK.path).read_text() + generic)
    second.write_text(Path(PACK.path).read_text() + generic.replace("threshold = 2", "threshold = 3"))
    sh = Shard(load_rule_pack(first))
    _feed(sh, [ev("a", 0)])
    with pytest.raises(ValueError, match=r"redefined cart\.fails"):
        Shard(load_rule_pack(second)).restore(sh.snapshot())


def test_a_restart_may_change_rule_parameters_and_armed_deadlines_follow_them(tmp_path: Path) -> None:
    # An abandonment armed at 0 under idle 10m; the worker restarts with idle 15m, then with idle 5m.
    sh = Shard(PACK)
    _feed(sh, [ev("k", 0, "submit", step="checkout"), ev("o", 60_000, "view", step="product", customer="c2")])
    blob = sh.snapshot()
    for idle, due in (("15m", 15 * MIN), ("5m", 5 * MIN)):
        other = tmp_path / f"idle{idle}.toml"
        other.write_text(Path(PACK.path).read_text().replace('idle = "10m"', f'idle = "{idle}"'))
        pack = load_rule_pack(other)
        assert pack.fingerprint() != PACK.fingerprint()
        assert pack.layout_fingerprint() == PACK.layout_fingerprint()
        restored = Shard(pack)
        restored.restore(blob)
        assert set(restored.customers) == {"c1"}  # the open journey survived the restart (c2's view is held)
        assert [e.event_id for e in restored.held.queue] == ["o"]
        out = _feed(restored, [ev("later", 20 * MIN, "view", step="product", customer="c3")])
        assert [(m["rule"], m["due_ts"]) for m in out.moments] == [("cart.abandoned", T0 + due)]


def test_a_snapshot_of_the_previous_layout_restores_under_the_same_pack() -> None:
    import pickle

    sh = Shard(PACK)
    _feed(sh, [ev("a", 0), ev("b", MIN, customer="c2")])
    state = list(pickle.loads(sh.snapshot()))  # noqa: S301 - our own snapshot
    old = pickle.dumps((state[0], PACK.fingerprint(), *state[2:11]), protocol=5)  # as written before layouts
    restored = Shard(PACK)
    restored.restore(old)
    assert set(restored.customers) == {"c1"}
    assert [e.event_id for e in restored.held.queue] == ["b"]


def test_restoring_a_snapshot_of_an_unknown_format_is_refused() -> None:
    import pickle

    sh = Shard(PACK)
    state = list(pickle.loads(sh.snapshot()))  # noqa: S301 - our own snapshot
    state[0] = 999
    with pytest.raises(ValueError, match="snapshot format 999"):
        Shard(PACK).restore(pickle.dumps(tuple(state)))


def test_a_timer_that_changes_a_journey_state_gives_its_row_a_higher_version() -> None:
    # The abandonment fires from a timer, 10 min after the attempt's last event: its row must outrank
    # the row written before, or a ReplacingMergeTree could keep the older one.
    sh = Shard(PACK)
    before = run([ev("k", 0, step="checkout")], shard=sh).states
    after = process(sh, [Tick(T0 + 11 * MIN, final=True)]).states
    assert [s["fired"] for s in before] == [[]]
    assert [s["fired"] for s in after] == [["cart.abandoned"]]
    assert after[0]["version"] > before[0]["version"]
    assert after[0]["last_ts"] == before[0]["last_ts"]


def test_snapshot_keeps_pending_state_rows_with_their_change_time() -> None:
    sh = Shard(PACK)
    sh.state_interval_ms = 10**14  # hold the coalesced rows back
    _feed(sh, [ev("k", 0, step="checkout")])
    sh.tick(Tick(T0 + 11 * MIN, final=True))  # not through `process`, which writes the rows at the end
    restored = Shard(PACK)
    restored.restore(sh.snapshot())
    rows = restored.take_outputs(states=True).states
    assert [r["fired"] for r in rows] == [["cart.abandoned"]]
    assert rows[0]["version"] == sh.take_outputs(states=True).states[0]["version"]


# -- messages the Kafka client could not decode ---------------------------------------------------
@pytest.mark.parametrize("source", ["kafka:cx.events", "kafka:cx.feedback"])
def test_undecodable_messages_of_a_batch_become_dead_letters_without_bytes(source: str) -> None:
    sh = Shard(PACK, feedback_sources=frozenset({"kafka:cx.feedback"}))
    out = process(sh, [RawBatch(source, 3, [], [], 0, ((1000, "Decompression (codec 0x4) failed"),))])
    assert out.invalid == {"undecodable": 1}
    assert [(d["reason"], d["source"], d["partition"], d["offset"], d["raw"], d["raw_len"], d["detail"])
            for d in out.dead] == [("undecodable", source, 3, 1000, "", 0, "Decompression (codec 0x4) failed")]


def test_a_batch_routed_to_a_shard_number_beyond_this_process_is_refused() -> None:
    # A cluster whose processes run different --shards: a batch routed by a process with more shards names a
    # shard this one does not have. Its customers would be silently split; the shard stops with a clear error.
    from state.routing import ShardCountMismatchError

    shard = Shard(PACK, shards=32)
    with pytest.raises(ShardCountMismatchError, match="different --shards"):
        shard.feed(RawBatch("kafka:cx.events", 0, raws([ev("e1", 0)]), [0], shard=40))


def test_the_journey_state_row_follows_the_latest_event_whichever_writes_fall_between() -> None:
    # The third event reaches no new step and no new stage; it only moves last_ts and last_step. With a
    # write of the rows between it and the others, its row must still be written, as one batch writes it.
    first = [ev("a", 0, step="cart"), ev("b", MIN, step="product")]
    third = [ev("c", 2 * MIN, step="cart")]
    sh = Shard(PACK)
    run(first, shard=sh)  # ends with a forced write of the rows
    split = run(third, shard=sh).states
    whole = run([*first, *third]).states
    assert [(s["last_step"], s["last_ts"]) for s in whole] == [("cart", T0 + 2 * MIN)]
    assert split == whole
