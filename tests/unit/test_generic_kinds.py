"""The generic moment kinds (DESIGN.md §8 and the shared contract), clause by clause, through tests/generic_driver."""

from __future__ import annotations

import pickle
from typing import Any

from state.events import Event
from state.generic.base import RuleState
from state.generic.dispatch import JourneyRules
from state.generic.schema import compile_rules
from tests.generic_driver import compile_pack, run, to_event
from tests.helpers import MIN, T0, ev

HOUR = 60 * MIN
DAY = 24 * HOUR


def pack(*moments: dict[str, Any], attempt_timeout: str = "24h") -> dict[str, Any]:
    """A pack with the journey ``cart`` (key steps checkout, payment) and the given generic rules."""
    return {
        "pack": {"attempt_timeout": attempt_timeout},
        "journey": [{"id": "cart", "steps": ["product", "cart", "checkout", "payment"],
                     "key_steps": ["checkout", "payment"], "complete_type": "complete"}],
        "moment": list(moments),
    }


def fired(p: dict[str, Any], events: list[dict[str, Any]]) -> list[tuple[str, int, str, tuple[str, ...]]]:
    """(rule, due offset from T0, anchor, evidence) of every moment."""
    return [(r, due - T0, a, e) for _, r, due, a, e in run(p, events)]


COUNT3 = {"kind": "count", "name": "stuck", "when": {"type": "fail"}, "threshold": 3, "within": "30m"}


def test_count_fires_when_the_span_is_exactly_within() -> None:
    events = [ev("a", 0, "fail"), ev("b", 10 * MIN, "fail"), ev("c", 30 * MIN, "fail")]
    assert fired(pack(COUNT3), events) == [("cart.stuck", 30 * MIN, "c", ("a", "b", "c"))]


def test_count_does_not_fire_when_the_span_is_one_ms_over_within() -> None:
    events = [ev("a", 0, "fail"), ev("b", 10 * MIN, "fail"), ev("c", 30 * MIN + 1, "fail")]
    assert fired(pack(COUNT3), events) == []


def test_count_evidence_is_the_threshold_most_recent_events() -> None:
    events = [ev(f"e{i}", i * 20 * MIN, "fail") for i in range(3)] + [ev("e3", 41 * MIN, "fail")]
    # e0..e2 span 40 min; e1, e2, e3 span 21 min.
    assert fired(pack(COUNT3), events) == [("cart.stuck", 41 * MIN, "e3", ("e1", "e2", "e3"))]


def test_count_fires_at_most_once_per_attempt_and_again_in_the_next() -> None:
    rule = {"kind": "count", "name": "failed", "when": {"type": "fail"}, "threshold": 1}
    events = [ev("a", 0, "fail"), ev("b", MIN, "fail"), ev("c", 2 * MIN, "complete"), ev("d", 3 * MIN, "fail")]
    assert fired(pack(rule), events) == [("cart.failed", 0, "a", ("a",)), ("cart.failed", 3 * MIN, "d", ("d",))]


def test_events_at_the_same_ts_are_taken_in_event_id_order() -> None:
    rule = {"kind": "count", "when": {"type": "fail"}, "threshold": 2}
    events = [ev("z", 0, "fail"), ev("b", 0, "fail"), ev("a", 0, "fail")]
    assert fired(pack(rule), events) == [("cart.count", 0, "b", ("a", "b"))]


def test_a_duplicate_event_id_keeps_the_first_in_input_order() -> None:
    rule = {"kind": "count", "when": {"type": "fail"}, "threshold": 2}
    events = [ev("a", 0, "fail"), ev("a", MIN, "fail"), ev("b", 5 * MIN, "view")]
    assert fired(pack(rule), events) == []
    events = [ev("a", 0, "fail"), ev("a", MIN, "view"), ev("b", 5 * MIN, "fail")]
    assert fired(pack(rule), events) == [("cart.count", 5 * MIN, "b", ("a", "b"))]


def test_the_same_event_id_of_two_customers_is_not_a_duplicate() -> None:
    rule = {"kind": "count", "when": {"type": "fail"}, "threshold": 1}
    out = run(pack(rule), [ev("a", 0, "fail", customer="c1"), ev("a", 0, "fail", customer="c2")])
    assert [m[0] for m in out] == ["c1", "c2"]


UNLESS = {"kind": "count", "name": "stuck", "when": {"type": "fail"}, "threshold": 2, "within": "1h",
          "unless": {"type": "contact"}, "unless_within": "30m"}


def test_unless_blocks_from_exactly_unless_within_before() -> None:
    events = [ev("u", 0, "contact"), ev("a", 10 * MIN, "fail"), ev("b", 30 * MIN, "fail")]
    assert fired(pack(UNLESS), events) == []
    events = [ev("u", 0, "contact"), ev("a", 10 * MIN, "fail"), ev("b", 30 * MIN + 1, "fail")]
    assert fired(pack(UNLESS), events) == [("cart.stuck", 30 * MIN + 1, "b", ("a", "b"))]


def test_a_blocked_candidate_keeps_the_window_for_a_later_one() -> None:
    events = [ev("a", 0, "fail"), ev("u", 1 * MIN, "contact"), ev("b", 2 * MIN, "fail"),
              ev("c", 20 * MIN, "fail"), ev("d", 40 * MIN, "fail")]
    # b and c are blocked (u 1 and 19 min before); d (39 min after u) fires with c, d.
    assert fired(pack(UNLESS), events) == [("cart.stuck", 40 * MIN, "d", ("c", "d"))]


def test_unless_looks_back_across_attempts() -> None:
    events = [ev("u", 0, "contact"), ev("x", MIN, "complete"), ev("a", 2 * MIN, "fail"), ev("b", 3 * MIN, "fail")]
    assert fired(pack(UNLESS), events) == []


def test_unless_counts_only_events_before_the_candidate() -> None:
    both = {**UNLESS, "unless": {"channel": "call_center"}}
    events = [ev("a", 0, "fail"), ev("b", MIN, "fail", channel="call_center")]
    assert fired(pack(both), events) == [("cart.stuck", MIN, "b", ("a", "b"))]
    # At the same ts an unless event ordered before the candidate (by event id) blocks it.
    events = [ev("a", 0, "fail"), ev("b2", MIN, "fail"), ev("b1", MIN, "view", channel="call_center")]
    assert fired(pack(both), events) == []


def test_per_groups_share_one_firing_per_attempt() -> None:
    rule = {"kind": "count", "when": {"type": "fail"}, "threshold": 2, "per": "step"}
    events = [ev("a", 0, "fail", step="cart"), ev("b", MIN, "fail", step="checkout"),
              ev("c", 2 * MIN, "fail", step="cart"), ev("d", 3 * MIN, "fail", step="checkout")]
    assert fired(pack(rule), events) == [("cart.count", 2 * MIN, "c", ("a", "c"))]


def test_events_without_the_per_field_are_counted_together() -> None:
    rule = {"kind": "count", "when": {"type": "fail"}, "threshold": 2, "per": "attrs.reason"}
    events = [ev("a", 0, "fail"), ev("b", MIN, "fail", reason="card"), ev("c", 2 * MIN, "fail")]
    assert fired(pack(rule), events) == [("cart.count", 2 * MIN, "c", ("a", "c"))]


def test_an_attempt_timeout_clears_the_windows() -> None:
    rule = {"kind": "count", "when": {"type": "fail"}, "threshold": 3}  # no `within`: the whole attempt
    late = [ev("a", 0, "fail"), ev("b", HOUR, "fail"), ev("c", HOUR + DAY, "fail")]
    assert fired(pack(rule), late) == []
    just = [ev("a", 0, "fail"), ev("b", HOUR, "fail"), ev("c", HOUR + DAY - 1, "fail")]
    assert fired(pack(rule), just) == [("cart.count", HOUR + DAY - 1, "c", ("a", "b", "c"))]


def test_rules_see_the_completion_before_the_attempt_ends() -> None:
    rule = {"kind": "distinct", "field": "channel", "threshold": 3, "within": "1h"}
    events = [ev("a", 0, channel="app"), ev("b", MIN, channel="web"), ev("c", 2 * MIN, "complete", channel="sms"),
              ev("d", 3 * MIN, channel="app"), ev("e", 4 * MIN, channel="web")]
    assert fired(pack(rule), events) == [("cart.distinct", 2 * MIN, "c", ("a", "b", "c"))]


MAZE = {"kind": "distinct", "name": "maze", "when": {"step": "$key"}, "field": "entry", "per": "step",
        "threshold": 3, "within": "30m"}


def test_distinct_window_includes_exactly_within_before() -> None:
    events = [ev("a", 0, step="checkout", entry="x"), ev("b", 10 * MIN, step="checkout", entry="y"),
              ev("c", 30 * MIN, step="checkout", entry="z")]
    assert fired(pack(MAZE), events) == [("cart.maze", 30 * MIN, "c", ("a", "b", "c"))]
    events[2] = ev("c", 30 * MIN + 1, step="checkout", entry="z")
    assert fired(pack(MAZE), events) == []


def test_distinct_ignores_events_without_the_field_and_keeps_the_latest_per_value() -> None:
    events = [ev("a", 0, step="checkout", entry="x"), ev("b", MIN, step="checkout"),
              ev("c", 2 * MIN, step="checkout", entry="x"), ev("d", 3 * MIN, step="checkout", entry="y"),
              ev("e", 4 * MIN, step="payment", entry="z"), ev("f", 5 * MIN, step="checkout", entry="z")]
    assert fired(pack(MAZE), events) == [("cart.maze", 5 * MIN, "f", ("c", "d", "f"))]


def test_predicates_match_string_attributes_only_and_key_steps_with_others() -> None:
    rule = {"kind": "count", "when": {"step": ["$key", "cart"], "attrs.reason": ["card", "1"]}, "threshold": 1}
    assert fired(pack(rule), [ev("a", 0, step="checkout", reason=1)]) == []
    assert fired(pack(rule), [ev("a", 0, step="product", reason="card")]) == []
    assert fired(pack(rule), [ev("a", 0, step="cart", reason="1")]) == [("cart.count", 0, "a", ("a",))]
    assert fired(pack(rule), [ev("a", 0, step="payment", reason="card")]) == [("cart.count", 0, "a", ("a",))]


def test_events_of_other_journeys_are_not_considered() -> None:
    rule = {"kind": "count", "threshold": 2}  # no `when`: every event in the journey
    events = [ev("a", 0), ev("b", MIN, journey=None), ev("c", 2 * MIN, journey="other"), ev("d", 3 * MIN)]
    assert fired(pack(rule), events) == [("cart.count", 3 * MIN, "d", ("a", "d"))]


ABANDON = {"kind": "absence", "name": "abandoned", "when": {"step": "$key"}, "idle": "10m"}


def test_absence_an_event_at_idle_minus_one_disarms_and_one_at_idle_does_not() -> None:
    assert fired(pack(ABANDON), [ev("a", 0, step="checkout"), ev("b", 10 * MIN - 1)]) == []
    assert fired(pack(ABANDON), [ev("a", 0, step="checkout"), ev("b", 10 * MIN)]) == [
        ("cart.abandoned", 10 * MIN, "a", ("a",))
    ]


def test_absence_the_latest_arming_wins() -> None:
    events = [ev("a", 0, step="checkout"), ev("b", 5 * MIN, step="payment"), ev("c", HOUR)]
    assert fired(pack(ABANDON), events) == [("cart.abandoned", 15 * MIN, "b", ("b",))]


def test_absence_rearms_after_a_disarm_and_fires_once_per_attempt() -> None:
    events = [ev("a", 0, step="checkout"), ev("b", MIN, step="cart"), ev("c", 2 * MIN, step="checkout"),
              ev("d", HOUR, step="checkout"), ev("e", 2 * HOUR)]
    assert fired(pack(ABANDON), events) == [("cart.abandoned", 12 * MIN, "c", ("c",))]


def test_absence_with_until_only_matching_events_disarm_and_until_comes_before_when() -> None:
    rule = {"kind": "absence", "when": {"type": "start"}, "until": {"type": ["submit", "start"]}, "idle": "10m"}
    events = [ev("a", 0, "start"), ev("b", 5 * MIN, "view"), ev("c", 11 * MIN)]
    assert fired(pack(rule), events) == [("cart.absence", 10 * MIN, "a", ("a",))]
    events = [ev("a", 0, "start"), ev("b", 5 * MIN, "start"), ev("c", 11 * MIN), ev("d", 20 * MIN)]
    assert fired(pack(rule), events) == [("cart.absence", 15 * MIN, "b", ("b",))]


def test_absence_a_completion_never_arms_and_ends_the_attempt() -> None:
    rule = {"kind": "absence", "when": {}, "until": {"type": "submit"}, "idle": "10m"}
    events = [ev("a", 0, "view"), ev("b", MIN, "complete", step="checkout"), ev("c", HOUR),
              ev("z", 2 * HOUR, customer="other", journey=None)]
    assert fired(pack(rule), events) == [("cart.absence", HOUR + 10 * MIN, "c", ("c",))]


def test_absence_at_end_of_input_fires_timers_due_by_the_largest_ts_of_the_whole_input() -> None:
    events = [ev("a", 0, step="checkout"), ev("z", 10 * MIN, customer="other", journey=None)]
    assert fired(pack(ABANDON), events) == [("cart.abandoned", 10 * MIN, "a", ("a",))]
    events = [ev("a", 0, step="checkout"), ev("z", 10 * MIN - 1, customer="other", journey=None)]
    assert fired(pack(ABANDON), events) == []


SEQ = {"kind": "sequence", "name": "retry", "first": {"type": "fail"}, "then": {"type": "start"}, "within": "10m"}


def test_sequence_then_within_exactly_within_of_first_fires() -> None:
    assert fired(pack(SEQ), [ev("f", 0, "fail"), ev("t", 10 * MIN, "start")]) == [
        ("cart.retry", 10 * MIN, "t", ("f", "t"))
    ]
    assert fired(pack(SEQ), [ev("f", 0, "fail"), ev("t", 10 * MIN + 1, "start")]) == []


def test_sequence_uses_the_latest_open_first() -> None:
    events = [ev("f1", 0, "fail"), ev("f2", 5 * MIN, "fail"), ev("t", 12 * MIN, "start")]
    assert fired(pack(SEQ), events) == [("cart.retry", 12 * MIN, "t", ("f2", "t"))]


def test_sequence_unless_strictly_between_blocks() -> None:
    rule = {**SEQ, "unless": {"type": "contact"}}
    assert fired(pack(rule), [ev("f", 0, "fail"), ev("u", MIN, "contact"), ev("t", 2 * MIN, "start")]) == []
    # An event that is both `then` and `unless` is not between: it fires.
    both = {**SEQ, "unless": {"channel": "call_center"}}
    assert fired(pack(both), [ev("f", 0, "fail"), ev("t", MIN, "start", channel="call_center")]) == [
        ("cart.retry", MIN, "t", ("f", "t"))
    ]
    # A `first` after the unless event opens again.
    events = [ev("f", 0, "fail"), ev("u", MIN, "contact"), ev("g", 2 * MIN, "fail"), ev("t", 3 * MIN, "start")]
    assert fired(pack(rule), events) == [("cart.retry", 3 * MIN, "t", ("g", "t"))]


def test_sequence_an_event_matching_then_and_first_closes_the_earlier_first_then_opens_its_own() -> None:
    rule = {"kind": "sequence", "first": {"type": "fail"}, "then": {"type": "fail"}, "within": "10m"}
    assert fired(pack(rule), [ev("a", 0, "fail")]) == []
    assert fired(pack(rule), [ev("a", 0, "fail"), ev("b", 11 * MIN, "fail"), ev("c", 20 * MIN, "fail")]) == [
        ("cart.sequence", 20 * MIN, "c", ("b", "c"))
    ]


def test_sequence_first_and_then_at_the_same_ts_follow_event_id_order() -> None:
    assert fired(pack(SEQ), [ev("b", 0, "fail"), ev("a", 0, "start")]) == []
    assert fired(pack(SEQ), [ev("b", 0, "start"), ev("a", 0, "fail")]) == [("cart.retry", 0, "b", ("a", "b"))]


def test_sequence_windows_belong_to_the_attempt() -> None:
    events = [ev("f", 0, "fail"), ev("x", MIN, "complete"), ev("t", 2 * MIN, "start")]
    assert fired(pack(SEQ), events) == []


def test_rules_name_journey_and_name_for_each_journey() -> None:
    p = pack({**SEQ, "name": "r"})
    p["journey"].append({"id": "5g", "steps": ["a"], "key_steps": ["a"]})
    _, rules, _ = compile_pack(p)
    assert [r.name for r in rules] == ["cart.r", "5g.r"]


def test_a_rule_reacts_only_to_the_types_its_predicates_name() -> None:
    journeys = compile_pack(pack())[0]
    moments: list[Any] = [
        SEQ,
        {**UNLESS},
        {"kind": "count", "when": {"step": "cart"}, "threshold": 1},
        ABANDON,
        {"kind": "absence", "name": "a2", "when": {"type": "start"}, "until": {"type": "submit"}, "idle": "1m"},
    ]
    rules = compile_rules("p.toml", moments, journeys, DAY)
    assert [r.reacts_to for r in rules] == [
        frozenset({"fail", "start"}), frozenset({"fail", "contact"}), None, None, frozenset({"start", "submit"}),
    ]


def test_rule_states_survive_a_pickle_round_trip_mid_window() -> None:
    moments: list[Any] = [COUNT3, MAZE, ABANDON, SEQ, {**UNLESS, "name": "u", "per": "step"}]
    _, rules, _ = compile_pack(pack(*moments))
    events = [to_event(e) for e in [
        ev("a", 0, "fail", step="checkout", entry="x"), ev("u", MIN, "contact"),
        ev("b", 2 * MIN, "fail", step="checkout", entry="y"), ev("c", 3 * MIN, "start", step="checkout", entry="z"),
        ev("d", 4 * MIN, "fail", step="cart"),
    ]]

    def feed(states: list[RuleState], evs: list[Event]) -> list[tuple[str, int, str, tuple[str, ...]]]:
        out = []
        for e in evs:
            for r, s in zip(rules, states, strict=True):
                f = r.on_event(s, e)
                if f is not None:
                    out.append((f.rule, f.due_ms, f.anchor, f.evidence))
        return out

    straight = [r.new_state() for r in rules]
    expected = feed(straight, events)
    restored = [r.new_state() for r in rules]
    first = feed(restored, events[:2])
    restored = pickle.loads(pickle.dumps(restored))
    assert first + feed(restored, events[2:]) == expected
    assert [r.due_ms(s) for r, s in zip(rules, restored, strict=True)] == [
        r.due_ms(s) for r, s in zip(rules, straight, strict=True)
    ]
    assert len(expected) == 3


def test_journey_rules_create_states_lazily_and_drop_them_at_attempt_end() -> None:
    _, rules, _ = compile_pack(pack(COUNT3, SEQ, ABANDON, UNLESS | {"name": "u"}))
    jr = JourneyRules("cart", rules, ["view", "fail"])
    assert jr.by_type["fail"] == (0, 1, 2, 3)
    assert jr.by_type["view"] == (2,)  # only the absence without `until` reacts to every type
    sts = jr.new_states()
    assert jr.on_event(sts, to_event(ev("a", 0, "view", step="checkout"))) == ()
    assert [s is not None for s in sts] == [False, False, True, False]
    assert jr.next_due(sts) == T0 + 10 * MIN
    assert [f.key() for f in jr.wake(sts, T0 + 10 * MIN)] == [("cart.abandoned", T0 + 10 * MIN, "a")]
    jr.on_event(sts, to_event(ev("u", 11 * MIN, "contact")))
    assert sts[3] is not None
    # The `unless` look-back outlives the attempt until unless_within has passed.
    assert not jr.end_attempt(sts, T0 + 12 * MIN)
    assert [s is not None for s in sts] == [False, False, False, True]
    assert jr.end_attempt(sts, T0 + 41 * MIN + 1)
    assert sts == [None] * 4
