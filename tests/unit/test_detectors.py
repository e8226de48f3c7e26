"""Each moment kind of the default pack (DESIGN.md §4), boundaries included."""

from __future__ import annotations

from state.moments import moment_id
from tests.helpers import MIN, T0, ev, rules_fired, run


def _checkout(eid: str = "k", ts: int = 0, **kw: object) -> dict[str, object]:
    return ev(eid, ts, "submit", step="checkout", **kw)  # type: ignore[arg-type]


# -- abandoned -------------------------------------------------------------------------------
def test_abandonment_fires_when_next_event_comes_exactly_ten_minutes_later() -> None:
    out = run([_checkout("k", 0), ev("n", 10 * MIN, "view", step="cart")])
    assert rules_fired(out) == ["cart.abandoned"]
    m = out.moments[0]
    assert m["due_ts"] == T0 + 10 * MIN
    assert m["evidence"] == ["k"]
    assert m["step"] == "checkout"
    assert m["moment_id"] == moment_id("c1", "cart.abandoned", "k")


def test_abandonment_does_not_fire_when_next_event_comes_at_nine_fifty_nine() -> None:
    out = run([_checkout("k", 0), ev("n", 10 * MIN - 1, "view", step="cart"), ev("x", 60 * MIN, journey=None)])
    assert rules_fired(out) == []


def test_abandonment_without_next_event_fires_at_end_of_input_only_when_due() -> None:
    due = run([_checkout("k", 0), ev("other", 10 * MIN, "view", customer="c2", journey=None)])
    assert rules_fired(due) == ["cart.abandoned"]
    not_due = run([_checkout("k", 0), ev("other", 10 * MIN - 1, "view", customer="c2", journey=None)])
    assert rules_fired(not_due) == []


def test_abandonment_is_anchored_on_the_latest_key_step_event() -> None:
    out = run([_checkout("k1", 0), ev("k2", 5 * MIN, "submit", step="payment"), ev("end", 30 * MIN, journey=None)])
    assert [m["evidence"] for m in out.moments] == [["k2"]]
    assert out.moments[0]["due_ts"] == T0 + 15 * MIN


def test_abandonment_needs_the_latest_event_at_a_key_step() -> None:
    out = run([_checkout("k", 0), ev("v", 1 * MIN, "view", step="cart"), ev("end", 30 * MIN, journey=None)])
    assert rules_fired(out) == []


def test_completion_prevents_abandonment() -> None:
    out = run([_checkout("k", 0), ev("c", 1 * MIN, "complete", step="payment"), ev("end", 30 * MIN, journey=None)])
    assert rules_fired(out) == []


def test_events_of_other_journeys_do_not_prevent_abandonment() -> None:
    out = run([_checkout("k", 0), ev("o", 5 * MIN, "view", journey="5g_upgrade", step="landing"),
               ev("end", 30 * MIN, journey=None)])
    assert rules_fired(out) == ["cart.abandoned"]


# -- failed / stuck ----------------------------------------------------------------------------
def test_failure_fires_once_per_attempt() -> None:
    out = run([ev("f1", 0, "fail", step="payment", reason="card_declined"), ev("f2", MIN, "fail", step="payment")])
    assert rules_fired(out) == ["cart.failed"]
    assert out.moments[0]["attrs"] == {"reason": "card_declined"}
    assert out.moments[0]["urgency"] == "P1"
    assert out.moments[0]["due_ts"] == T0


def test_third_fail_at_exactly_thirty_minutes_is_stuck() -> None:
    out = run([ev("f1", 0, "fail", step="plan"), ev("f2", 10 * MIN, "fail"), ev("f3", 30 * MIN, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.stuck"]
    stuck = out.moments[1]
    assert stuck["evidence"] == ["f1", "f2", "f3"]
    assert stuck["due_ts"] == T0 + 30 * MIN


def test_third_fail_just_after_thirty_minutes_is_not_stuck() -> None:
    out = run([ev("f1", 0, "fail"), ev("f2", 10 * MIN, "fail"), ev("f3", 30 * MIN + 1, "fail")])
    assert rules_fired(out) == ["cart.failed"]


def test_stuck_window_slides_over_older_fails() -> None:
    out = run([ev("f1", 0, "fail"), ev("f2", 40 * MIN, "fail"), ev("f3", 50 * MIN, "fail"), ev("f4", 60 * MIN, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.stuck"]
    assert out.moments[1]["evidence"] == ["f2", "f3", "f4"]


# -- maze ------------------------------------------------------------------------------------------
def test_three_entries_at_one_key_step_within_thirty_minutes_is_a_maze() -> None:
    out = run([_checkout("a", 0, entry="home_banner"), _checkout("b", 5 * MIN, entry="search"),
               _checkout("c", 30 * MIN, entry="sms_link")])
    assert "cart.maze" in rules_fired(out)
    maze = next(m for m in out.moments if m["kind"] == "maze")
    assert maze["evidence"] == ["a", "b", "c"]
    assert maze["due_ts"] == T0 + 30 * MIN


def test_entries_spread_over_more_than_thirty_minutes_are_no_maze() -> None:
    out = run([_checkout("a", 0, entry="home_banner"), _checkout("b", 5 * MIN, entry="search"),
               _checkout("c", 30 * MIN + 1, entry="sms_link")])
    assert "cart.maze" not in rules_fired(out)


def test_entries_at_different_key_steps_do_not_combine_into_a_maze() -> None:
    out = run([_checkout("a", 0, entry="home_banner"), _checkout("b", MIN, entry="search"),
               ev("c", 2 * MIN, "submit", step="payment", entry="sms_link")])
    assert "cart.maze" not in rules_fired(out)


def test_repeated_entries_are_counted_once() -> None:
    out = run([_checkout("a", 0, entry="search"), _checkout("b", MIN, entry="search"),
               _checkout("c", 2 * MIN, entry="home_banner")])
    assert "cart.maze" not in rules_fired(out)


# -- channel hop ----------------------------------------------------------------------------------
def test_three_channels_within_sixty_minutes_is_a_channel_hop() -> None:
    out = run([ev("a", 0, "submit", channel="app"), ev("b", 20 * MIN, "submit", channel="web"),
               ev("c", 60 * MIN, "submit", channel="wechat")])
    assert rules_fired(out) == ["cart.channel_hop"]
    assert out.moments[0]["evidence"] == ["a", "b", "c"]


def test_channels_spread_over_more_than_sixty_minutes_are_no_hop() -> None:
    out = run([ev("a", 0, channel="app"), ev("b", 20 * MIN, channel="web"), ev("c", 60 * MIN + 1, channel="wechat")])
    assert "cart.channel_hop" not in rules_fired(out)


def test_returning_to_a_channel_refreshes_it() -> None:
    out = run([ev("a", 0, "submit", channel="app"), ev("b", 20 * MIN, "submit", channel="web"),
               ev("a2", 50 * MIN, "submit", channel="app"), ev("c", 75 * MIN, "submit", channel="wechat")])
    assert rules_fired(out) == ["cart.channel_hop"]
    assert out.moments[0]["evidence"] == ["b", "a2", "c"]


# -- interested ------------------------------------------------------------------------------------
def test_second_view_within_a_day_without_intent_is_interest() -> None:
    out = run([ev("v1", 0, "view", step="product"), ev("v2", 23 * 60 * MIN, "engage", step="product")])
    assert rules_fired(out) == ["cart.interested"]
    assert out.moments[0]["urgency"] == "P3"


def test_views_after_a_start_are_not_interest() -> None:
    out = run([ev("s", 0, "start", step="cart"), ev("v1", MIN, "view"), ev("v2", 2 * MIN, "view")])
    assert rules_fired(out) == []


def test_views_more_than_a_day_apart_are_not_interest() -> None:
    out = run([ev("v1", 0, "view"), ev("v2", 24 * 60 * MIN + 1, "view")])
    assert rules_fired(out) == []


# -- handoff -----------------------------------------------------------------------------------------
def test_call_centre_contact_mid_journey_hands_off_context() -> None:
    out = run([ev("p", 0, "view", step="product"), ev("k", 2 * MIN, "start", step="cart"),
               ev("call", 31 * MIN, "contact", channel="call_center", journey=None, reason="order")])
    assert rules_fired(out) == ["cart.handoff"]
    m = out.moments[0]
    assert m["evidence"] == ["call"]
    assert m["due_ts"] == T0 + 31 * MIN
    ctx = out.context[0]
    assert ctx["moment_id"] == m["moment_id"]
    assert ctx["recent_steps"] == ["product", "cart"]
    assert ctx["journey"] == "cart"
    assert ctx["contact_event_id"] == "call"


def test_contact_more_than_thirty_minutes_after_the_journey_is_no_handoff() -> None:
    out = run([_checkout("k", 0), ev("n", 5 * MIN, "view", step="cart"),
               ev("call", 35 * MIN + 1, "contact", channel="call_center", journey=None)])
    assert rules_fired(out) == []


def test_contact_on_other_channels_is_no_handoff() -> None:
    out = run([ev("p", 0, "view", step="product"), ev("call", MIN, "contact", channel="ivr", journey=None)])
    assert rules_fired(out) == []


def test_handoff_fires_per_journey_the_customer_was_in() -> None:
    out = run([ev("a", 0, "view", step="product"), ev("b", MIN, "view", journey="5g_upgrade", step="landing"),
               ev("call", 2 * MIN, "contact", channel="call_center", journey=None)])
    assert sorted(rules_fired(out)) == ["5g_upgrade.handoff", "cart.handoff"]


# -- attempts and tags --------------------------------------------------------------------------------
def test_completion_resolves_open_tags_as_recovered() -> None:
    out = run([ev("f", 0, "fail", step="payment"), ev("c", 5 * MIN, "complete", step="payment")])
    states = [(t["tag"], t["state"], t["outcome"]) for t in out.tags]
    assert states == [("cart.failed", "open", ""), ("cart.failed", "resolved", "recovered")]
    assert out.tags[1]["version"] > out.tags[0]["version"]


def test_a_new_attempt_after_completion_can_fire_again() -> None:
    out = run([ev("f1", 0, "fail"), ev("c", MIN, "complete"), ev("f2", 2 * MIN, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.failed"]
    assert len({m["moment_id"] for m in out.moments}) == 2


def test_a_new_attempt_after_a_day_idle_can_fire_again() -> None:
    day = 24 * 60 * MIN
    out = run([ev("f1", 0, "fail"), ev("f2", day - 1, "fail"), ev("f3", 2 * day - 1, "fail")])
    assert rules_fired(out) == ["cart.failed", "cart.failed"]
    assert [m["evidence"] for m in out.moments] == [["f1"], ["f3"]]


def test_tags_expire_after_their_ttl() -> None:
    out = run([ev("f", 0, "fail"), ev("later", 25 * 60 * MIN, journey=None, customer="c2")])
    assert [(t["state"], t["outcome"]) for t in out.tags] == [("open", ""), ("expired", "expired")]
    assert out.tags[1]["ts"] == T0 + 24 * 60 * MIN


def test_journey_steps_record_first_arrival_per_step_and_completion() -> None:
    out = run([ev("a", 0, "view", step="product"), ev("b", MIN, "start", step="cart"),
               ev("b2", 2 * MIN, "view", step="cart"), ev("c", 3 * MIN, "complete", step="payment")])
    assert [(s["step"], s["step_index"]) for s in out.steps] == [("product", 0), ("cart", 1), ("payment", 3),
                                                                 ("(complete)", 4)]
    final = [s for s in out.states if s["status"] == "completed"]
    assert final
    assert final[-1]["steps_reached"] == ["product", "cart", "payment"]


def test_moment_ids_are_deterministic_across_runs() -> None:
    events = [ev("f1", 0, "fail"), ev("f2", MIN, "fail"), ev("f3", 2 * MIN, "fail"), _checkout("k", 3 * MIN)]
    assert [m["moment_id"] for m in run(events).moments] == [m["moment_id"] for m in run(events).moments]
