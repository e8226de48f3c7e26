"""Each moment kind of the default pack (DESIGN.md §4), boundaries included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from state.moments import moment_id
from state.rules import load_rule_pack
from state.shard import Shard
from tests.helpers import MIN, PACK, T0, ev, rules_fired, run

SEC = 1_000
HOUR = 60 * MIN
DAY = 24 * HOUR
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rulepacks"


def _checkout(eid: str = "k", ts: int = 0, **kw: Any) -> dict[str, Any]:
    return ev(eid, ts, "submit", step="checkout", **kw)


def _end(ts: int) -> dict[str, Any]:
    """An event of another customer that moves event time to ``ts``."""
    return ev(f"end{ts}", ts, customer="zz", journey=None)


def _call(eid: str, ts: int, **kw: Any) -> dict[str, Any]:
    return ev(eid, ts, "contact", channel="call_center", journey=kw.pop("journey", None), **kw)


def _only(out: Any, kind: str) -> dict[str, Any]:
    found = [m for m in out.moments if m["kind"] == kind]
    assert len(found) == 1, [m["rule"] for m in out.moments]
    return found[0]


# -- abandoned -------------------------------------------------------------------------------
def test_abandonment_fires_when_next_event_comes_exactly_ten_minutes_later() -> None:
    out = run([_checkout("k", 0), ev("n", 10 * MIN, "view", step="cart")])
    assert rules_fired(out) == ["cart.abandoned"]
    m = out.moments[0]
    assert m["due_ts"] == T0 + 10 * MIN
    assert m["evidence"] == ["k"]
    assert m["step"] == "checkout"
    assert (m["kind"], m["journey"], m["urgency"], m["action"]) == ("abandoned", "cart", "P2", "sms_reminder")
    assert m["moment_id"] == moment_id("c1", "cart.abandoned", "k")


def test_abandonment_does_not_fire_when_next_event_comes_at_nine_minutes_fifty_nine_point_nine_nine_nine() -> None:
    out = run([_checkout("k", 0), ev("n", 10 * MIN - 1, "view", step="cart"), _end(60 * MIN)])
    assert rules_fired(out) == []


def test_abandonment_without_next_event_fires_at_end_of_input_only_when_due() -> None:
    due = run([_checkout("k", 0), _end(10 * MIN)])
    assert rules_fired(due) == ["cart.abandoned"]
    not_due = run([_checkout("k", 0), _end(10 * MIN - 1)])
    assert rules_fired(not_due) == []
    alone = run([_checkout("k", 0)])
    assert rules_fired(alone) == []


def test_abandonment_is_anchored_on_the_latest_key_step_event() -> None:
    out = run([_checkout("k1", 0), ev("k2", 5 * MIN, "submit", step="payment"), _end(30 * MIN)])
    assert [m["evidence"] for m in out.moments] == [["k2"]]
    assert out.moments[0]["due_ts"] == T0 + 15 * MIN
    assert out.moments[0]["step"] == "payment"
    assert out.moments[0]["moment_id"] == moment_id("c1", "cart.abandoned", "k2")


def test_abandonment_needs_the_latest_event_at_a_key_step() -> None:
    out = run([_checkout("k", 0), ev("v", 1 * MIN, "view", step="cart"), _end(30 * MIN)])
    assert rules_fired(out) == []


def test_abandonment_of_the_other_journey_uses_its_own_key_steps() -> None:
    out = run([ev("o", 0, "start", journey="5g_upgrade", step="order_form"),
               ev("p", MIN, "view", journey="5g_upgrade", step="plan_select"),
               ev("q", 2 * MIN, "view", journey="5g_upgrade", step="payment"), _end(30 * MIN)])
    assert rules_fired(out) == ["5g_upgrade.abandoned"]
    assert out.moments[0]["evidence"] == ["q"]


def test_completion_prevents_abandonment() -> None:
    out = run([_checkout("k", 0), ev("c", 1 * MIN, "complete", step="payment"), _end(30 * MIN)])
    assert rules_fired(out) == []


def test_completion_ten_minutes_later_comes_too_late_and_recovers_the_abandonment() -> None:
    out = run([_checkout("k", 0), ev("c", 10 * MIN, "complete", step="payment")])
    assert rules_fired(out) == ["cart.abandoned"]
    # The abandonment is acted on at its due time (the contact policy lets it through), then recovered.
    assert [(t["state"], t["outcome"]) for t in out.tags] == [("open", ""), ("actioned", ""), ("resolved", "recovered")]


def test_events_of_other_journeys_do_not_prevent_abandonment() -> None:
    out = run([_checkout("k", 0), ev("o", 5 * MIN, "view", journey="5g_upgrade", step="landing"),
               ev("x", 6 * MIN, "view", journey=None), _end(30 * MIN)])
    assert rules_fired(out) == ["cart.abandoned"]


def test_abandonment_fires_once_per_attempt() -> None:
    out = run([_checkout("k1", 0), _checkout("k2", 15 * MIN), _checkout("k3", 40 * MIN), _end(2 * HOUR)])
    assert rules_fired(out) == ["cart.abandoned"]
    assert out.moments[0]["evidence"] == ["k1"]


# -- failed / stuck ----------------------------------------------------------------------------
def test_failure_fires_at_its_own_time_with_its_attributes() -> None:
    out = run([ev("f1", 0, "fail", step="payment", reason="card_declined", amount=49)])
    m = _only(out, "failed")
    assert (m["rule"], m["urgency"], m["due_ts"], m["evidence"], m["step"]) == (
        "cart.failed", "P1", T0, ["f1"], "payment")
    assert m["attrs"] == {"reason": "card_declined", "amount": 49}
    assert m["moment_id"] == moment_id("c1", "cart.failed", "f1")


def test_two_failures_in_one_attempt_give_one_failed_moment() -> None:
    out = run([ev("f1", 0, "fail", step="payment"), ev("f2", MIN, "fail", step="payment")])
    assert rules_fired(out) == ["cart.failed"]
    assert out.moments[0]["evidence"] == ["f1"]


def test_failures_in_each_journey_are_separate_moments() -> None:
    out = run([ev("f1", 0, "fail"), ev("f2", MIN, "fail", journey="5g_upgrade")])
    assert rules_fired(out) == ["cart.failed", "5g_upgrade.failed"]


def test_fail_without_a_journey_is_no_moment() -> None:
    assert rules_fired(run([ev("f", 0, "fail", journey=None)])) == []


def test_third_fail_at_exactly_thirty_minutes_after_the_first_is_stuck() -> None:
    out = run([ev("f1", 0, "fail", step="cart"), ev("f2", 10 * MIN, "fail"), ev("f3", 30 * MIN, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.stuck"]
    stuck = out.moments[1]
    assert stuck["evidence"] == ["f1", "f2", "f3"]
    assert stuck["due_ts"] == T0 + 30 * MIN
    assert stuck["urgency"] == "P1"
    assert stuck["moment_id"] == moment_id("c1", "cart.stuck", "f3")


def test_third_fail_at_thirty_minutes_and_one_millisecond_is_not_stuck() -> None:
    out = run([ev("f1", 0, "fail"), ev("f2", 10 * MIN, "fail"), ev("f3", 30 * MIN + 1, "fail")])
    assert rules_fired(out) == ["cart.failed"]


def test_stuck_window_slides_over_older_fails() -> None:
    out = run([ev("f1", 0, "fail"), ev("f2", 40 * MIN, "fail"), ev("f3", 50 * MIN, "fail"), ev("f4", 60 * MIN, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.stuck"]
    assert out.moments[1]["evidence"] == ["f2", "f3", "f4"]


def test_many_fails_give_one_stuck_per_attempt() -> None:
    out = run([ev(f"f{i}", i * MIN, "fail") for i in range(9)])
    assert rules_fired(out) == ["cart.failed", "cart.stuck"]


# -- maze ------------------------------------------------------------------------------------------
def test_three_entries_at_one_key_step_within_thirty_minutes_is_a_maze() -> None:
    out = run([_checkout("a", 0, entry="home_banner"), _checkout("b", 5 * MIN, entry="search"),
               _checkout("c", 30 * MIN, entry="sms_link")])
    maze = _only(out, "maze")
    assert maze["rule"] == "cart.maze"
    assert maze["evidence"] == ["a", "b", "c"]
    assert maze["due_ts"] == T0 + 30 * MIN
    assert maze["step"] == "checkout"
    assert maze["moment_id"] == moment_id("c1", "cart.maze", "c")


def test_entries_spread_over_more_than_thirty_minutes_are_no_maze() -> None:
    out = run([_checkout("a", 0, entry="home_banner"), _checkout("b", 5 * MIN, entry="search"),
               _checkout("c", 30 * MIN + 1, entry="sms_link")])
    assert "cart.maze" not in rules_fired(out)


def test_entries_at_different_key_steps_do_not_combine_into_a_maze() -> None:
    out = run([_checkout("a", 0, entry="home_banner"), _checkout("b", MIN, entry="search"),
               ev("c", 2 * MIN, "submit", step="payment", entry="sms_link")])
    assert "cart.maze" not in rules_fired(out)


def test_entries_at_steps_that_are_not_key_steps_do_not_count() -> None:
    out = run([ev("a", 0, step="cart", entry="home_banner"), ev("b", MIN, step="cart", entry="search"),
               ev("c", 2 * MIN, step="cart", entry="sms_link")])
    assert "cart.maze" not in rules_fired(out)


def test_repeated_entries_are_counted_once() -> None:
    out = run([_checkout("a", 0, entry="search"), _checkout("b", MIN, entry="search"),
               _checkout("c", 2 * MIN, entry="home_banner"), _checkout("d", 3 * MIN)])
    assert "cart.maze" not in rules_fired(out)


def test_a_refreshed_entry_keeps_the_maze_window_open() -> None:
    out = run([_checkout("a", 0, entry="search"), _checkout("b", 20 * MIN, entry="home_banner"),
               _checkout("a2", 25 * MIN, entry="search"), _checkout("c", 45 * MIN, entry="sms_link")])
    maze = _only(out, "maze")
    assert maze["evidence"] == ["b", "a2", "c"]


def test_a_fourth_entry_does_not_fire_a_second_maze() -> None:
    entries = ["home_banner", "search", "sms_link", "push", "email_link"]
    out = run([_checkout(f"k{i}", i * MIN, entry=e) for i, e in enumerate(entries)])
    assert rules_fired(out).count("cart.maze") == 1


# -- channel hop ----------------------------------------------------------------------------------
def test_three_channels_within_sixty_minutes_is_a_channel_hop() -> None:
    out = run([ev("a", 0, "submit", channel="app"), ev("b", 20 * MIN, "submit", channel="web"),
               ev("c", 60 * MIN, "submit", channel="wechat")])
    assert rules_fired(out) == ["cart.channel_hop"]
    m = out.moments[0]
    assert (m["evidence"], m["due_ts"], m["urgency"]) == (["a", "b", "c"], T0 + 60 * MIN, "P2")
    assert m["moment_id"] == moment_id("c1", "cart.channel_hop", "c")


def test_channels_spread_over_sixty_minutes_and_one_millisecond_are_no_hop() -> None:
    out = run([ev("a", 0, channel="app"), ev("b", 20 * MIN, channel="web"), ev("c", 60 * MIN + 1, channel="wechat")])
    assert "cart.channel_hop" not in rules_fired(out)


def test_returning_to_a_channel_refreshes_it() -> None:
    out = run([ev("a", 0, "submit", channel="app"), ev("b", 20 * MIN, "submit", channel="web"),
               ev("a2", 50 * MIN, "submit", channel="app"), ev("c", 75 * MIN, "submit", channel="wechat")])
    assert rules_fired(out) == ["cart.channel_hop"]
    assert out.moments[0]["evidence"] == ["b", "a2", "c"]


def test_channels_of_different_journeys_do_not_combine() -> None:
    out = run([ev("a", 0, "submit", channel="app"), ev("b", MIN, "submit", channel="web"),
               ev("c", 2 * MIN, "submit", channel="wechat", journey="5g_upgrade"),
               ev("d", 3 * MIN, "submit", channel="sms", journey=None)])
    assert rules_fired(out) == []


# -- interested ------------------------------------------------------------------------------------
def test_second_view_within_a_day_without_intent_is_interest() -> None:
    out = run([ev("v1", 0, "view", step="product"), ev("v2", DAY - 1, "engage", step="product")])
    assert rules_fired(out) == ["cart.interested"]
    m = out.moments[0]
    assert (m["urgency"], m["due_ts"], m["evidence"], m["action"]) == ("P3", T0 + DAY - 1, ["v2"], "marketing_offer")
    assert m["moment_id"] == moment_id("c1", "cart.interested", "v2")


def test_second_view_exactly_a_day_later_is_still_interest() -> None:
    out = run([ev("v1", 0, "view"), ev("v2", DAY, "view")])
    assert rules_fired(out) == ["cart.interested"]


def test_views_more_than_a_day_apart_are_not_interest() -> None:
    out = run([ev("v1", 0, "view"), ev("v2", DAY + 1, "view")])
    assert rules_fired(out) == []


def test_views_after_a_start_are_not_interest() -> None:
    out = run([ev("s", 0, "start", step="cart"), ev("v1", MIN, "view"), ev("v2", 2 * MIN, "view")])
    assert rules_fired(out) == []


def test_views_around_a_submit_are_not_interest() -> None:
    out = run([ev("v1", 0, "view"), ev("s", MIN, "submit", step="cart"), ev("v2", 2 * MIN, "engage")])
    assert rules_fired(out) == []


def test_a_start_more_than_a_day_before_no_longer_blocks_interest() -> None:
    out = run([ev("s", 0, "start", step="cart"), ev("v1", 20 * HOUR, "view"), ev("v2", DAY + 1, "view")])
    assert rules_fired(out) == ["cart.interested"]
    assert out.moments[0]["evidence"] == ["v2"]


def test_a_start_in_the_previous_completed_attempt_still_blocks_interest() -> None:
    # DESIGN.md §4: "no start or submit in J in the 24 h before it", whichever attempt it belonged to.
    out = run([ev("s", 0, "start", step="cart"), ev("c", MIN, "complete", step="payment"),
               ev("v1", 2 * MIN, "view"), ev("v2", 3 * MIN, "view")])
    assert rules_fired(out) == []


def test_interest_counts_views_across_a_completed_attempt() -> None:
    out = run([ev("v1", 0, "view"), ev("c", MIN, "complete"), ev("v2", 2 * HOUR, "view")])
    assert rules_fired(out) == ["cart.interested"]
    assert out.moments[0]["evidence"] == ["v2"]


def test_intent_in_the_other_journey_does_not_block_interest() -> None:
    out = run([ev("s", 0, "start", journey="5g_upgrade", step="plan_select"), ev("v1", MIN, "view"),
               ev("v2", 2 * MIN, "view")])
    assert rules_fired(out) == ["cart.interested"]


# -- handoff -----------------------------------------------------------------------------------------
def test_call_centre_contact_29_minutes_after_a_journey_event_hands_off_context() -> None:
    out = run([ev("p", 0, "view", step="product"), ev("k", 2 * MIN, "fail", step="cart", channel="web"),
               _call("call", 31 * MIN, reason="order")])
    assert rules_fired(out) == ["cart.failed", "cart.handoff"]
    m = _only(out, "handoff")
    assert (m["evidence"], m["due_ts"], m["urgency"], m["action"]) == (["call"], T0 + 31 * MIN, "P1", "agent_context")
    assert m["moment_id"] == moment_id("c1", "cart.handoff", "call")
    assert m["step"] == "cart"
    [ctx] = out.context
    assert ctx["moment_id"] == m["moment_id"]
    assert ctx["customer_id"] == "c1"
    assert ctx["journey"] == "cart"
    assert ctx["contact_event_id"] == "call"
    assert ctx["contact_ts"] == T0 + 31 * MIN
    assert ctx["recent_steps"] == ["product", "cart"]
    assert ctx["last_step"] == "cart"
    assert ctx["status"] == "active"
    assert ctx["fails"] == 1
    assert "cart.failed" in ctx["open_tags"]


def test_contact_exactly_thirty_minutes_after_is_a_handoff_and_one_millisecond_later_is_not() -> None:
    assert rules_fired(run([ev("p", 0, step="product"), _call("call", 30 * MIN)])) == ["cart.handoff"]
    assert rules_fired(run([ev("p", 0, step="product"), _call("call", 30 * MIN + 1)])) == []


def test_contact_31_minutes_after_the_journey_is_no_handoff() -> None:
    out = run([_checkout("k", 0), ev("n", 5 * MIN, "view", step="cart"), _call("call", 36 * MIN)])
    assert rules_fired(out) == []
    assert out.context == []


def test_recent_steps_keep_the_last_five_distinct_moves() -> None:
    steps = ["product", "cart", "product", "cart", "checkout", "checkout", "payment"]
    events = [ev(f"s{i}", i * MIN, "view", step=s) for i, s in enumerate(steps)]
    out = run([*events, _call("call", 10 * MIN)])
    assert out.context[0]["recent_steps"] == ["cart", "product", "cart", "checkout", "payment"]


def test_contact_in_the_journey_itself_hands_off_on_the_events_before_it() -> None:
    out = run([ev("p", 0, step="product"), _call("call", 5 * MIN, journey="cart", step="cart")])
    assert rules_fired(out) == ["cart.handoff"]
    assert rules_fired(run([_call("call", 0, journey="cart", step="cart")])) == []


def test_contact_on_other_channels_or_of_other_types_is_no_handoff() -> None:
    out = run([ev("p", 0, "view", step="product"), ev("call", MIN, "contact", channel="ivr", journey=None),
               ev("fb", 2 * MIN, "feedback", channel="call_center", journey=None)])
    assert rules_fired(out) == []


def test_handoff_fires_per_journey_the_customer_was_in() -> None:
    out = run([ev("a", 0, "view", step="product"), ev("b", MIN, "view", journey="5g_upgrade", step="landing"),
               _call("call", 2 * MIN)])
    assert sorted(rules_fired(out)) == ["5g_upgrade.handoff", "cart.handoff"]
    assert sorted(c["journey"] for c in out.context) == ["5g_upgrade", "cart"]


def test_handoff_fires_once_per_attempt() -> None:
    out = run([ev("a", 0, "start", step="product"), _call("call1", MIN), ev("b", 2 * MIN, "start", step="cart"),
               _call("call2", 3 * MIN)])
    assert rules_fired(out) == ["cart.handoff"]


def test_contact_soon_after_completing_a_long_attempt_is_a_handoff() -> None:
    out = run([ev("a", 0, step="product"), ev("b", 12 * HOUR, "start", step="cart"),
               ev("c", DAY - 5 * MIN, "complete", step="payment"), _call("call", DAY + 5 * MIN)])
    assert rules_fired(out) == ["cart.handoff"]
    assert out.context[0]["status"] == "completed"


def test_each_handoff_rule_uses_its_own_contact_channel() -> None:
    pack = load_rule_pack(FIXTURES / "handoff_per_journey.toml")
    events = [ev("a", 0, step="product"), ev("b", MIN, journey="5g_upgrade", step="landing")]
    store = run([*events, ev("visit", 2 * MIN, "contact", channel="store", journey=None)], pack=pack)
    assert rules_fired(store) == ["5g_upgrade.handoff"]
    call = run([*events, _call("call", 2 * MIN)], pack=pack)
    assert rules_fired(call) == ["cart.handoff"]


# -- attempts and tags --------------------------------------------------------------------------------
def test_completion_resolves_open_tags_of_the_journey_as_recovered() -> None:
    out = run([ev("f", 0, "fail", step="payment"), ev("g", MIN, "fail", journey="5g_upgrade"),
               ev("c", 5 * MIN, "complete", step="payment")])
    states = [(t["tag"], t["state"], t["outcome"]) for t in out.tags]
    # The second failure a minute later is not acted on (minimum gap), so its tag stays open.
    assert states == [("cart.failed", "open", ""), ("cart.failed", "actioned", ""), ("5g_upgrade.failed", "open", ""),
                      ("cart.failed", "resolved", "recovered")]
    assert out.tags[3]["version"] > out.tags[1]["version"] > out.tags[0]["version"]
    assert out.tags[3]["moment_id"] == out.moments[0]["moment_id"]
    assert out.tags[3]["ts"] == T0 + 5 * MIN


def test_completion_after_an_idle_day_still_recovers_the_older_tag() -> None:
    # The abandonment tag (TTL 48 h) outlives its attempt; the next attempt completes without a moment.
    out = run([_checkout("k", 0), ev("v", 30 * HOUR, "view", step="product"), ev("c", 30 * HOUR + MIN, "complete")])
    assert rules_fired(out) == ["cart.abandoned"]
    # Replay judges staleness in event time: the abandonment was acted on when it was due.
    assert [(a["status"], a["reason"]) for a in out.actions] == [("sent", "")]
    assert [(t["state"], t["outcome"]) for t in out.tags] == [("open", ""), ("actioned", ""), ("resolved", "recovered")]


def test_completion_without_moments_changes_no_tags() -> None:
    out = run([ev("v", 0, "view"), ev("c", MIN, "complete")])
    assert out.tags == []
    assert [s["status"] for s in out.states if s["journey"] == "cart"][-1] == "completed"


def test_a_new_attempt_after_completion_can_fire_again() -> None:
    out = run([ev("f1", 0, "fail"), ev("c", MIN, "complete"), ev("f2", 2 * MIN, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.failed"]
    assert len({m["moment_id"] for m in out.moments}) == 2


def test_a_new_attempt_after_a_day_idle_can_fire_again() -> None:
    out = run([ev("f1", 0, "fail"), ev("f2", DAY - 1, "fail"), ev("f3", 2 * DAY - 1, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.failed"]
    assert [m["evidence"] for m in out.moments] == [["f1"], ["f3"]]


def test_abandonment_can_fire_again_in_a_new_attempt() -> None:
    out = run([_checkout("k1", 0), ev("c", 20 * MIN, "complete"), _checkout("k2", 30 * MIN), _end(2 * HOUR)])
    assert [m["evidence"] for m in out.moments] == [["k1"], ["k2"]]


def test_each_rule_fires_at_most_once_in_a_busy_attempt() -> None:
    events = []
    channels = ["app", "web", "wechat", "store", "sms"]
    entries = ["home_banner", "search", "sms_link", "push", "qr"]
    for i in range(40):
        kind = ["fail", "view", "submit", "engage"][i % 4]
        events.append(ev(f"e{i}", i * 15 * SEC, kind, step="checkout", channel=channels[i % 5], entry=entries[i % 5]))
    events += [_call("call1", 11 * MIN), _call("call2", 12 * MIN), _end(3 * HOUR)]
    fired = rules_fired(run(events))
    assert sorted(fired) == sorted(set(fired))
    assert set(fired) == {"cart.failed", "cart.stuck", "cart.maze", "cart.channel_hop", "cart.handoff",
                          "cart.abandoned"}


def test_tags_expire_after_their_ttl() -> None:
    out = run([ev("f", 0, "fail"), ev("later", 25 * HOUR, journey=None, customer="c2")])
    assert [(t["state"], t["outcome"]) for t in out.tags] == [("open", ""), ("actioned", ""), ("expired", "expired")]
    assert out.tags[2]["ts"] == T0 + DAY


def test_journey_steps_record_first_arrival_per_step_and_completion() -> None:
    out = run([ev("a", 0, "view", step="product"), ev("b", MIN, "start", step="cart"),
               ev("b2", 2 * MIN, "view", step="cart"), ev("c", 3 * MIN, "complete", step="payment")])
    assert [(s["step"], s["step_index"]) for s in out.steps] == [("product", 0), ("cart", 1), ("payment", 3),
                                                                 ("(complete)", 4)]
    final = [s for s in out.states if s["status"] == "completed"]
    assert final
    assert final[-1]["steps_reached"] == ["product", "cart", "payment"]


def test_journey_stage_of_a_new_attempt_ignores_the_previous_attempts_intent() -> None:
    # The first attempt expires (a day idle) after an intent; the next one starts over.
    out = run([ev("s", 0, "start", step="cart"), ev("n", 25 * HOUR, "cancel")])
    latest = [s for s in out.states if s["attempt_id"] == "n"]
    assert latest
    assert latest[-1]["stage"] == "awareness"


def test_journey_stage_moves_forward_through_the_life_cycle_and_reuse_follows_a_second_completion() -> None:
    events = [ev("v", 0, "view"), ev("p", MIN, step="product"), ev("k", 2 * MIN, step="checkout"),
              ev("b", 3 * MIN, step="product"), ev("c", 4 * MIN, "complete"),
              ev("n", 5 * MIN, step="product"), ev("c2", 6 * MIN, "complete")]
    sh = Shard(PACK)
    stages = []
    for e in events:  # one batch per event, so each step's state row is seen
        stages += [s["stage"] for s in run([e], shard=sh).states]
    # "b" leaves the stage where it was (stages never go back); its row is written for its last_step.
    assert stages == ["knowledge", "knowledge", "intention", "intention", "use", "use", "reuse"]


# -- identity and record shape ---------------------------------------------------------------------
def test_moment_ids_are_deterministic_across_runs() -> None:
    events = [ev("f1", 0, "fail"), ev("f2", MIN, "fail"), ev("f3", 2 * MIN, "fail"), _checkout("k", 3 * MIN),
              _end(HOUR)]
    assert [m["moment_id"] for m in run(events).moments] == [m["moment_id"] for m in run(events).moments]


def test_moment_id_hashes_customer_rule_and_anchor() -> None:
    ids = {moment_id("c1", "cart.failed", "e1"), moment_id("c2", "cart.failed", "e1"),
           moment_id("c1", "cart.stuck", "e1"), moment_id("c1", "cart.failed", "e2"),
           moment_id("c1c", "art.failed", "e1"), moment_id("c1", "cart.failede", "1")}
    assert len(ids) == 6
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert moment_id("c1", "cart.failed", "e1") == moment_id("c1", "cart.failed", "e1")


def test_moment_records_have_the_schema_v1_fields() -> None:
    out = run([ev("f", 0, "fail", step="payment")])
    assert set(out.moments[0]) == {"schema", "moment_id", "customer_id", "rule", "rule_version", "kind", "journey",
                                   "step", "urgency",
                                   "due_ts", "detected_at", "evidence", "attrs", "action"}
    assert out.moments[0]["schema"] == 1
