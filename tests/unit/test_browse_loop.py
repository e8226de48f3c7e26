"""``browse_loop``: the kind added through the detector interface alone (its module and one registry line)."""

from __future__ import annotations

from typing import Any

import pytest

from state.detectors import KINDS, REGISTRY
from state.detectors.browse_loop import BrowseLoop
from state.rules import RulePackError, rule_pack_from_dict
from state.shard import Shard
from tests.helpers import MIN, ev, rules_fired, run

_PACK = rule_pack_from_dict({
    "journey": [{"id": "cart", "steps": ["cart", "checkout", "payment"], "key_steps": ["checkout"]}],
    "moment": [{"kind": "browse_loop", "views": 3, "within": "10m", "urgency": "P3", "action": "plan_help"}],
})


def _view(eid: str, minute: float, step: str, **kw: Any) -> dict[str, Any]:
    return ev(eid, int(minute * MIN), "view", step=step, **kw)


def test_browse_loop_is_registered_after_the_older_kinds() -> None:
    assert REGISTRY["browse_loop"] is BrowseLoop
    assert KINDS[-1] == "browse_loop"  # its bit in Attempt.fired comes after theirs: old snapshots keep meaning


def test_the_same_step_viewed_three_times_within_ten_minutes_is_a_browse_loop() -> None:
    out = run([_view("v1", 0, "cart"), _view("v2", 4, "cart"), _view("v3", 9, "cart")], pack=_PACK)
    assert rules_fired(out) == ["cart.browse_loop"]
    m = out.moments[0]
    assert (m["kind"], m["step"], m["evidence"], m["urgency"]) == ("browse_loop", "cart", ["v1", "v2", "v3"], "P3")


def test_views_spread_over_more_than_the_window_are_no_browse_loop() -> None:
    out = run([_view("v1", 0, "cart"), _view("v2", 6, "cart"), _view("v3", 10.5, "cart")], pack=_PACK)
    assert rules_fired(out) == []


def test_progress_to_a_later_step_breaks_the_loop() -> None:
    events = [_view("v1", 0, "cart"), _view("v2", 1, "cart"), ev("s", 2 * MIN, "submit", step="checkout"),
              _view("v3", 3, "cart")]
    assert rules_fired(run(events, pack=_PACK)) == []


def test_a_view_of_another_step_restarts_the_count_there() -> None:
    events = [_view("v1", 0, "cart"), _view("v2", 1, "cart"), _view("p1", 2, "payment"), _view("p2", 3, "payment"),
              _view("p3", 4, "payment")]
    out = run(events, pack=_PACK)
    assert rules_fired(out) == ["cart.browse_loop"]
    assert out.moments[0]["evidence"] == ["p1", "p2", "p3"]


def test_events_at_earlier_steps_or_without_a_step_leave_the_count() -> None:
    events = [_view("v1", 0, "checkout"), ev("x", 1 * MIN, "engage"), _view("v2", 2, "checkout"),
              ev("y", 3 * MIN, "submit", step="cart"), _view("v3", 4, "checkout")]
    assert rules_fired(run(events, pack=_PACK)) == ["cart.browse_loop"]


def test_browse_loop_fires_once_per_attempt() -> None:
    events = [_view(f"v{i}", i, "cart") for i in range(7)]
    assert rules_fired(run(events, pack=_PACK)) == ["cart.browse_loop"]


def test_browse_loop_state_survives_a_snapshot() -> None:
    sh = Shard(_PACK)
    run([_view("v1", 0, "cart"), _view("v2", 1, "cart")], pack=_PACK, shard=sh, end=False)
    restored = Shard(_PACK)
    restored.restore(sh.snapshot())
    out = run([_view("v3", 2, "cart")], pack=_PACK, shard=restored)
    assert rules_fired(out) == ["cart.browse_loop"]


@pytest.mark.parametrize(("field", "value", "problem"), [
    ("views", 0, "must be an integer 1..100, got 0"),
    ("within", "soon", "must be a duration like '10m', got 'soon'"),
    ("visits", 3, "unknown field"),
])
def test_browse_loop_parameters_are_checked_by_its_module(field: str, value: object, problem: str) -> None:
    data = {"journey": [{"id": "j", "steps": ["a", "b"], "key_steps": ["b"]}],
            "moment": [{"kind": "browse_loop", field: value}]}
    with pytest.raises(RulePackError) as info:
        rule_pack_from_dict(data, "p.toml")
    assert info.value.where == f"moment[0].{field}"
    assert problem in info.value.problem


def test_a_journey_whose_rules_need_more_state_than_an_attempt_holds_is_refused_naming_it() -> None:
    kinds = ["stuck", "maze", "channel_hop", "interested", "browse_loop"]  # 1 + 1 + 1 + 2 + 1 state slots
    data = {"journey": [{"id": "plan", "steps": ["a", "b"], "key_steps": ["b"]}],
            "moment": [{"kind": k} for k in kinds]}
    with pytest.raises(RulePackError) as info:
        rule_pack_from_dict(data, "p.toml")
    assert info.value.where == "journey 'plan'"
    assert "more per-attempt state than an attempt holds (5 slots)" in info.value.problem
    rule_pack_from_dict({**data, "moment": [{"kind": k} for k in kinds[1:]]})  # one fewer fits
