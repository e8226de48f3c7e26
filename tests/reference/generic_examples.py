"""Hand-computed examples of the generic moment kinds, one per clause of DESIGN.md §8 and the issue-14 contract.

Each ``Case`` holds a pack (as ``tomllib.loads`` gives it), input events (schema-v1 dicts, in input order) and the
moments expected, worked out by hand from the text (``clause``), not by running any implementation. The table can
be run against any ``run(pack, events)`` of the contract: the reference (tests/unit/test_generic_reference.py) and
the production evaluator (tests/property/test_generic_kinds.py).

``settled=False`` marks a case whose expectation rests on a reading that neither §8 nor the contract fixes; its
``clause`` says what was decided, so that a disagreement there is a question to settle, not necessarily a bug.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN

Moment = tuple[str, str, int, str, tuple[str, ...]]

JOURNEYS: list[dict[str, Any]] = [
    {"id": "cart", "steps": ["product", "cart", "checkout", "payment"], "key_steps": ["checkout", "payment"],
     "complete_type": "complete"},
    {"id": "5g_upgrade", "steps": ["landing", "plan_select", "order_form", "payment"],
     "key_steps": ["order_form", "payment"], "complete_type": "complete"},
]


@dataclass(frozen=True)
class Case:
    """One hand-computed example: ``run(pack, events)`` must return exactly ``expected``."""

    name: str
    clause: str
    pack: dict[str, Any]
    events: list[dict[str, Any]]
    expected: list[Moment]
    settled: bool = field(default=True)


def pack(*moments: dict[str, Any], attempt_timeout: str = "2h",
         journeys: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A pack dict with the two standard journeys (or ``journeys``) and the given generic rules."""
    return {"pack": {"name": "examples", "version": 1, "attempt_timeout": attempt_timeout},
            "journey": JOURNEYS if journeys is None else journeys, "moment": list(moments)}


def ev(eid: str, t: int, type_: str = "view", *, c: str = "c1", j: str | None = "cart", ch: str = "app",
       step: str | None = None, entry: str | None = None, attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A schema-v1 event at ``T0 + t``."""
    d: dict[str, Any] = {"event_id": eid, "customer_id": c, "ts": T0 + t, "channel": ch, "type": type_}
    if j is not None:
        d["journey"] = j
    if step is not None:
        d["step"] = step
    if entry is not None:
        d["entry"] = entry
    if attrs is not None:
        d["attrs"] = attrs
    return d


def m(rule: str, due: int, anchor: str, *evidence: str, c: str = "c1") -> Moment:
    """An expected moment due at ``T0 + due``."""
    return (c, rule, T0 + due, anchor, tuple(evidence))


FAIL3 = {"kind": "count", "when": {"type": "fail"}, "threshold": 3, "within": "30m", "journeys": ["cart"]}
ABSENT = {"kind": "absence", "when": {"step": "$key"}, "idle": "10m", "journeys": ["cart"]}

CASES: list[Case] = [
    # ------------------------------------------------------------------------------------------------ count
    Case("count_span_exactly_within_fires",
         "within a span of `within`: last.ts - first.ts <= within",
         pack(FAIL3),
         [ev("f1", 0, "fail"), ev("f2", 10 * MIN, "fail"), ev("f3", 30 * MIN, "fail")],
         [m("cart.count", 30 * MIN, "f3", "f1", "f2", "f3")]),
    Case("count_span_one_ms_over_within_waits_for_a_later_window",
         "span 30m+1ms does not fire; the next fail's window (f2..f4) does; evidence = threshold most recent",
         pack(FAIL3),
         [ev("f1", 0, "fail"), ev("f2", 10 * MIN, "fail"), ev("f3", 30 * MIN + 1, "fail"),
          ev("f4", 31 * MIN, "fail")],
         [m("cart.count", 31 * MIN, "f4", "f2", "f3", "f4")]),
    Case("count_ts_tie_ordered_by_event_id",
         "events are taken in (ts, event_id) order: of two fails at one ts, 'b' reaches the threshold",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "within": "1m"}),
         [ev("b", 0, "fail"), ev("a", 0, "fail")],
         [m("cart.count", 0, "b", "a", "b")]),
    Case("count_without_within_spans_the_attempt",
         "`within` absent = the whole attempt",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "journeys": ["cart"]}),
         [ev("f1", 0, "fail"), ev("v", 90 * MIN), ev("f2", 170 * MIN, "fail")],
         [m("cart.count", 170 * MIN, "f2", "f1", "f2")]),
    Case("duplicate_event_id_first_in_input_order_is_kept",
         "of events sharing an event_id (same customer) the first in input order is kept, later ones dropped",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "journeys": ["cart"]}),
         [ev("f0", 0, "fail"), ev("d", MIN, "view"), ev("d", 2 * MIN, "fail"), ev("f0", 3 * MIN, "fail"),
          ev("f2", 4 * MIN, "fail")],
         [m("cart.count", 4 * MIN, "f2", "f0", "f2")]),
    Case("same_event_id_of_two_customers_is_not_a_duplicate",
         "decided: duplicates are per customer ('sharing an event_id (same customer)')",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "journeys": ["cart"]}),
         [ev("x1", 0, "fail"), ev("x1", 0, "fail", c="c2"), ev("x2", MIN, "fail", c="c2")],
         [m("cart.count", MIN, "x2", "x1", "x2", c="c2")]),
    Case("per_groups_count_separately_and_share_one_firing",
         "counted separately per value of `per`; `per` groups share the one firing of the attempt; "
         "events without the `per` field are counted together as one group",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "within": "1h", "per": "attrs.reason",
               "journeys": ["cart"]}),
         [ev("f1", 0, "fail", attrs={"reason": "card"}), ev("f2", MIN, "fail", attrs={"reason": "limit"}),
          ev("f3", 2 * MIN, "fail", attrs={"reason": "card"}), ev("f4", 3 * MIN, "fail", attrs={"reason": "limit"}),
          ev("g1", 0, "fail", c="c2"), ev("g2", MIN, "fail", c="c2", attrs={"other": "x"})],
         [m("cart.count", 2 * MIN, "f3", "f1", "f3"), m("cart.count", MIN, "g2", "g1", "g2", c="c2")]),
    Case("per_number_attr_is_its_own_group",
         "decided: a number attr is a `per` value of its own: 42, '42' and a missing code are three groups "
         "(were a number no value, f2 would fire; were it compared as a string, f3)",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "per": "attrs.code",
               "journeys": ["cart"]}),
         [ev("f1", 0, "fail", attrs={"code": 42}), ev("f2", MIN, "fail"),
          ev("f3", 2 * MIN, "fail", attrs={"code": "42"}), ev("f4", 3 * MIN, "fail", attrs={"code": 42})],
         [m("cart.count", 3 * MIN, "f4", "f1", "f4")]),
    Case("distinct_number_attr_is_a_value_of_its_own",
         "decided: a number attr is a `field` value of its own: 42 and '42' are two distinct values "
         "(were a number no value, or compared as a string, nothing would fire)",
         pack({"kind": "distinct", "field": "attrs.code", "threshold": 2, "journeys": ["cart"]}),
         [ev("g1", 0, attrs={"code": 42}), ev("g2", MIN, attrs={"code": "42"})],
         [m("cart.distinct", MIN, "g2", "g1", "g2")]),
    Case("distinct_values_keep_their_json_type",
         "a number attr is its own value: true, 1, 1.0 and '1' are four distinct values (Python's True == 1 == 1.0 "
         "would make them one; a repeated 1 brings nothing new)",
         pack({"kind": "distinct", "field": "attrs.code", "threshold": 4, "journeys": ["cart"]}),
         [ev("v1", 0, attrs={"code": True}), ev("v2", MIN, attrs={"code": 1}), ev("v3", 2 * MIN, attrs={"code": 1}),
          ev("v4", 3 * MIN, attrs={"code": 1.0}), ev("v5", 4 * MIN, attrs={"code": "1"})],
         [m("cart.distinct", 4 * MIN, "v5", "v1", "v3", "v4", "v5")]),
    Case("per_groups_keep_their_json_type",
         "`per` groups by value and JSON type: true, 1 and 1.0 are three groups; only the second 1 reaches 2",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "per": "attrs.code",
               "journeys": ["cart"]}),
         [ev("f1", 0, "fail", attrs={"code": True}), ev("f2", MIN, "fail", attrs={"code": 1}),
          ev("f3", 2 * MIN, "fail", attrs={"code": 1.0}), ev("f4", 3 * MIN, "fail", attrs={"code": 1})],
         [m("cart.count", 3 * MIN, "f4", "f2", "f4")]),
    # ------------------------------------------------------------------------------------------------ unless
    Case("unless_looks_back_across_attempts_and_blocked_candidate_is_followed_by_a_later_one",
         "unless: this or an earlier attempt; ts >= e.ts - unless_within (exactly 3h blocks); "
         "a blocked candidate is dropped and later events are new candidates",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 1, "unless": {"type": "cancel"},
               "unless_within": "3h", "journeys": ["cart"]}),
         [ev("u", 0, "cancel"), ev("f1", 3 * HOUR, "fail"), ev("f2", 3 * HOUR + 1, "fail")],
         [m("cart.count", 3 * HOUR + 1, "f2", "f2")]),
    Case("unless_at_the_same_ts_blocks_only_when_before_in_event_id_order",
         "unless: comes before e in (ts, event_id) order",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 1, "unless": {"type": "cancel"},
               "unless_within": "10m", "journeys": ["cart"]}),
         [ev("a", 0, "cancel"), ev("b", 0, "fail"), ev("z", 0, "cancel", c="c2"), ev("b", 0, "fail", c="c2")],
         [m("cart.count", 0, "b", "b", c="c2")]),
    Case("unless_firing_event_never_blocks_itself",
         "e itself never blocks itself; an earlier matching event does",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 1, "unless": {"type": "fail"},
               "unless_within": "10m", "journeys": ["cart"]}),
         [ev("f1", 0, "fail"), ev("c", MIN, "complete"), ev("f2", 2 * MIN, "fail"), ev("f3", 3 * HOUR, "fail")],
         [m("cart.count", 0, "f1", "f1"), m("cart.count", 3 * HOUR, "f3", "f3")]),
    Case("unless_blocked_firing_does_not_reset_the_window",
         "a later matching event whose window still reaches the threshold is a new candidate",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "within": "30m",
               "unless": {"type": "cancel"}, "unless_within": "5m", "journeys": ["cart"]}),
         [ev("f1", 0, "fail"), ev("u", 8 * MIN, "cancel"), ev("f2", 10 * MIN, "fail"), ev("f3", 14 * MIN, "fail")],
         [m("cart.count", 14 * MIN, "f3", "f2", "f3")]),
    # ------------------------------------------------------------------------------------------------ distinct
    Case("distinct_window_includes_exactly_within_and_ignores_events_without_the_field",
         "distinct in [e.ts - within, e]; `$key` steps; an event without `field` carries no value",
         pack({"kind": "distinct", "when": {"step": "$key"}, "field": "entry", "threshold": 3, "within": "30m",
               "journeys": ["cart"]}),
         [ev("v1", 0, step="checkout", entry="a"), ev("v2", 5 * MIN, step="payment", entry="b"),
          ev("v3", 10 * MIN, step="product", entry="c"), ev("v4", 20 * MIN, step="checkout"),
          ev("v5", 31 * MIN, step="checkout", entry="c"), ev("v6", 35 * MIN, step="checkout", entry="a")],
         [m("cart.distinct", 35 * MIN, "v6", "v2", "v5", "v6")]),
    Case("distinct_event_without_the_field_never_fires",
         "distinct fires on an event matching `when` carrying the field; evidence = latest event per value",
         pack({"kind": "distinct", "field": "entry", "threshold": 2, "journeys": ["cart"]}),
         [ev("x1", 0, entry="a"), ev("x2", MIN, entry="a"), ev("x3", 2 * MIN), ev("x4", 3 * MIN, entry="b")],
         [m("cart.distinct", 3 * MIN, "x4", "x2", "x4")]),
    Case("distinct_after_a_blocked_candidate_a_later_event_fires_without_a_new_value",
         "distinct: the event e for which the window carries >= threshold values (it need not bring a new one)",
         pack({"kind": "distinct", "when": {"type": "view"}, "field": "channel", "threshold": 2,
               "unless": {"type": "cancel"}, "unless_within": "5m", "journeys": ["cart"]}),
         [ev("d1", 0, ch="app"), ev("u", MIN, "cancel"), ev("d2", 2 * MIN, ch="web"), ev("d3", 7 * MIN, ch="app")],
         [m("cart.distinct", 7 * MIN, "d3", "d2", "d3")]),
    Case("distinct_per_group",
         "distinct values counted per value of `per`",
         pack({"kind": "distinct", "field": "channel", "threshold": 2, "per": "step", "journeys": ["cart"]}),
         [ev("p1", 0, ch="app", step="cart"), ev("p2", MIN, ch="web", step="checkout"),
          ev("p3", 2 * MIN, ch="web", step="cart")],
         [m("cart.distinct", 2 * MIN, "p3", "p1", "p3")]),
    # ------------------------------------------------------------------------------------------------ absence
    Case("absence_disarmed_at_idle_minus_1ms_fires_with_event_at_idle",
         "an event at +idle-1 ms disarms; one at +idle does not (wake-up before the event at that ts)",
         pack(ABSENT),
         [ev("a1", 0, step="checkout"), ev("b", 10 * MIN - 1, step="product"), ev("a2", 20 * MIN, step="payment"),
          ev("c", 30 * MIN, step="product")],
         [m("cart.absence", 30 * MIN, "a2", "a2")]),
    Case("absence_latest_arming_wins",
         "the latest arming event wins (with `until`, a non-disarming event still re-arms)",
         pack({**ABSENT, "until": {"type": "submit"}}),
         [ev("a1", 0, step="checkout"), ev("v", 5 * MIN, step="product"), ev("z", 10 * MIN),
          ev("a1", 0, step="checkout", c="c2"), ev("a2", 5 * MIN, step="checkout", c="c2"),
          ev("z", 12 * MIN, c="c2"), ev("y", 15 * MIN, c="c2")],
         [m("cart.absence", 10 * MIN, "a1", "a1"), m("cart.absence", 15 * MIN, "a2", "a2", c="c2")]),
    Case("absence_until_before_when",
         "an event matching both `when` and `until` first disarms any armed timer, then arms its own",
         pack({**ABSENT, "until": {"type": "submit"}}),
         [ev("a1", 0, step="checkout"), ev("s", 5 * MIN, "submit", step="checkout"), ev("z", 15 * MIN)],
         [m("cart.absence", 15 * MIN, "s", "s")]),
    Case("absence_complete_never_arms_and_ends_the_attempt",
         "a `complete` never arms; attempt end clears armed timers (even when `until` does not match it)",
         pack({"kind": "absence", "idle": "10m", "name": "any", "journeys": ["cart"]},
              {**ABSENT, "until": {"type": "submit"}}),
         [ev("v", 0, step="checkout"), ev("c", MIN, "complete", step="checkout"), ev("end", 30 * MIN, j=None)],
         []),
    Case("absence_fires_at_end_of_input_when_due_at_the_largest_ts",
         "at the end of the input every timer due <= the largest event ts of the whole input fires",
         pack(ABSENT),
         [ev("a", 0, step="checkout"), ev("late", 10 * MIN, c="c2", j=None)],
         [m("cart.absence", 10 * MIN, "a", "a")]),
    Case("absence_due_after_the_largest_ts_never_fires",
         "a timer due after the largest event ts of the input is not reached",
         pack(ABSENT),
         [ev("a", 0, step="checkout"), ev("late", 10 * MIN - 1, c="c2", j=None)],
         []),
    Case("absence_fires_once_per_attempt_and_again_after_complete",
         "at most once per attempt; `complete` clears the fired flag",
         pack(ABSENT),
         [ev("a1", 0, step="checkout"), ev("x", 10 * MIN), ev("a2", 20 * MIN, step="checkout"), ev("y", 30 * MIN),
          ev("done", 40 * MIN, "complete"), ev("a3", 50 * MIN, step="checkout"), ev("z", 60 * MIN)],
         [m("cart.absence", 10 * MIN, "a1", "a1"), m("cart.absence", 60 * MIN, "a3", "a3")]),
    # ------------------------------------------------------------------------------------------------ sequence
    Case("sequence_event_matching_then_and_first_never_pairs_with_itself",
         "an event matching both `then` and `first` first closes an earlier `first`, then opens its own",
         pack({"kind": "sequence", "first": {"type": "view"}, "then": {"type": "view"}, "within": "10m",
               "journeys": ["cart"]}),
         [ev("v1", 0), ev("w1", 0, c="c2"), ev("w2", 10 * MIN + 1, c="c2"), ev("w3", 20 * MIN + 1, c="c2")],
         [m("cart.sequence", 20 * MIN + 1, "w3", "w2", "w3", c="c2")]),
    Case("sequence_unless_strictly_between",
         "no event matching `unless` strictly after `first` and strictly before `then` in (ts, event_id) order; "
         "evidence = the latest qualifying first, then the then event",
         pack({"kind": "sequence", "first": {"type": "start"}, "then": {"type": "submit"},
               "unless": {"type": "cancel"}, "within": "30m", "journeys": ["cart"]}),
         [ev("b", 0, "start"), ev("a", 0, "cancel"), ev("c", 10 * MIN, "submit"),
          ev("a", 0, "start", c="c2"), ev("b", 0, "cancel", c="c2"), ev("c", 10 * MIN, "submit", c="c2"),
          ev("s", 0, "start", c="c3"), ev("m", 10 * MIN, "submit", c="c3"), ev("z", 10 * MIN, "cancel", c="c3"),
          ev("s1", 0, "start", c="c4"), ev("u", MIN, "cancel", c="c4"), ev("s2", 2 * MIN, "start", c="c4"),
          ev("t", 3 * MIN, "submit", c="c4")],
         [m("cart.sequence", 10 * MIN, "c", "b", "c"), m("cart.sequence", 10 * MIN, "m", "s", "m", c="c3"),
          m("cart.sequence", 3 * MIN, "t", "s2", "t", c="c4")]),
    Case("sequence_first_and_then_matching_unless_do_not_block",
         "in between is strictly after `first` and strictly before `then`: neither blocks itself",
         pack({"kind": "sequence", "first": {"type": "start"}, "then": {"type": "submit"},
               "unless": {"channel": "web"}, "within": "10m", "journeys": ["cart"]}),
         [ev("s", 0, "start", ch="web"), ev("t", MIN, "submit", ch="web"),
          ev("s", 0, "start", c="c2"), ev("w", 30 * SEC, c="c2", ch="web"), ev("t", MIN, "submit", c="c2")],
         [m("cart.sequence", MIN, "t", "s", "t")]),
    Case("sequence_within_is_inclusive_and_belongs_to_the_attempt",
         "then.ts - first.ts <= within; open firsts belong to the attempt (a new attempt clears them)",
         pack({"kind": "sequence", "first": {"type": "start"}, "then": {"type": "submit"}, "within": "3h",
               "journeys": ["cart"]}),
         [ev("s", 0, "start"), ev("v", 100 * MIN), ev("t", 3 * HOUR, "submit"),
          ev("s", 0, "start", c="c2"), ev("t", 2 * HOUR, "submit", c="c2")],
         [m("cart.sequence", 3 * HOUR, "t", "s", "t")]),
    # ------------------------------------------------------------------------------------------------ attempts
    Case("attempt_timeout_clears_windows",
         "an event at >= previous J-event ts + attempt_timeout starts a new attempt; its end clears windows",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2, "journeys": ["cart"]}),
         [ev("f1", 0, "fail"), ev("f2", 2 * HOUR, "fail"), ev("f3", 2 * HOUR + MIN, "fail"),
          ev("g1", 0, "fail", c="c2"), ev("g2", 2 * HOUR - 1, "fail", c="c2")],
         [m("cart.count", 2 * HOUR + MIN, "f3", "f2", "f3"), m("cart.count", 2 * HOUR - 1, "g2", "g1", "g2", c="c2")]),
    Case("complete_is_seen_by_rules_then_clears_windows_and_fired_flags",
         "the complete event belongs to the attempt it ends: rules see it first, then windows and fired flags clear",
         pack({"kind": "count", "threshold": 2, "journeys": ["cart"]},
              {"kind": "count", "name": "fail", "when": {"type": "fail"}, "threshold": 1, "journeys": ["cart"]}),
         [ev("v", 0, "fail"), ev("c", MIN, "complete"), ev("v2", 2 * MIN), ev("f", 3 * MIN, "fail"),
          ev("f2", 4 * MIN, "fail")],
         [m("cart.count", MIN, "c", "v", "c"), m("cart.count", 3 * MIN, "f", "v2", "f"),
          m("cart.fail", 0, "v", "v"), m("cart.fail", 3 * MIN, "f", "f")]),
    Case("complete_type_of_the_journey_ends_the_attempt",
         "an event of the journey's complete_type ends the attempt",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 2},
              journeys=[{"id": "loan", "steps": ["apply", "sign"], "key_steps": ["sign"], "complete_type": "submit"}]),
         [ev("f1", 0, "fail", j="loan"), ev("s", MIN, "submit", j="loan"), ev("f2", 2 * MIN, "fail", j="loan"),
          ev("f3", 3 * MIN, "fail", j="loan"), ev("c", 4 * MIN, "complete", j="loan"),
          ev("f4", 5 * MIN, "fail", j="loan")],
         [m("loan.count", 3 * MIN, "f3", "f2", "f3")]),
    # ------------------------------------------------------------------------------------------------ rules
    Case("rule_without_journeys_applies_to_every_journey_and_ignores_events_without_journey",
         "a rule without `journeys` applies to every journey; events considered are those with journey = J",
         pack({"kind": "count", "when": {"type": "fail"}, "threshold": 1},
              {"kind": "count", "name": "cart_only", "when": {"type": "fail"}, "threshold": 1, "journeys": ["cart"]}),
         [ev("n", 0, "fail", j=None), ev("o", 0, "fail", j="other"), ev("f1", MIN, "fail"),
          ev("f2", 2 * MIN, "fail", j="5g_upgrade")],
         [m("5g_upgrade.count", 2 * MIN, "f2", "f2"), m("cart.cart_only", MIN, "f1", "f1"),
          m("cart.count", MIN, "f1", "f1")]),
    Case("predicate_fields_and_values",
         "fields AND, values OR; `$key` may be listed with other steps; an event lacking the field does not match",
         pack({"kind": "count", "when": {"type": "fail", "channel": ["app", "web"], "step": ["$key", "cart"]},
               "threshold": 2, "journeys": ["cart"]}),
         [ev("e1", 0, "fail", ch="ivr", step="cart"), ev("e2", MIN, "view", step="cart"),
          ev("e3", 2 * MIN, "fail", ch="web"), ev("e4", 3 * MIN, "fail", step="product"),
          ev("e5", 4 * MIN, "fail", ch="web", step="cart"), ev("e6", 5 * MIN, "fail", step="payment")],
         [m("cart.count", 5 * MIN, "e6", "e5", "e6")]),
    Case("attrs_predicate_number_never_matches_a_string",
         "`attrs.<key>` predicates compare strings only: a number attr never matches a string value",
         pack({"kind": "count", "when": {"type": "fail", "attrs.code": ["42", "7"]}, "threshold": 1,
               "journeys": ["cart"]}),
         [ev("e1", 0, "fail", attrs={"code": 42}), ev("e2", MIN, "fail", attrs={"code": "8"}),
          ev("e3", 2 * MIN, "fail"), ev("e4", 3 * MIN, "fail", attrs={"code": "7"})],
         [m("cart.count", 3 * MIN, "e4", "e4")]),
    Case("wakeup_before_event_at_the_same_ts_across_customers",
         "wake-ups before events at the same ts; another customer's event moves the end-of-input ts",
         pack(ABSENT),
         [ev("a", 0, step="checkout"), ev("b", 10 * MIN, "complete"), ev("k", 0, step="payment", c="c2"),
          ev("z", 10 * MIN, j=None, c="c3")],
         [m("cart.absence", 10 * MIN, "a", "a"), m("cart.absence", 10 * MIN, "k", "k", c="c2")]),
]
