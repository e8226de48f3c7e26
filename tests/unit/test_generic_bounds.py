"""Generic rules keep bounded state however long the attempt and however many values a field takes (issue 14)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from state.generic.window import WindowState
from state.journey import GenericAttempt
from state.rules import RulePackError, rule_pack_from_dict
from state.shard import Shard
from tests.helpers import MIN, ev, run
from tests.unit.test_generic_wiring import DEFAULT

SEC = 1_000


def _pack(**rule: Any) -> Any:
    table = {"name": "r", "journeys": ["cart"], **rule}
    return rule_pack_from_dict({**DEFAULT, "moment": [*DEFAULT["moment"], table]}, "bounds.toml")


def _window(sh: Shard) -> WindowState:
    [a] = [a for a in sh.customers["c1"].attempts if isinstance(a, GenericAttempt)]
    assert a.g is not None
    [st] = [s for s in a.g if isinstance(s, WindowState)]
    return st


def _fresh_skus(n: int, gap_ms: int = SEC) -> list[dict[str, Any]]:
    """``n`` views of one attempt, each with a sku never seen before."""
    return [ev(f"e{i:05d}", i * gap_ms, step="product", sku=f"s{i}") for i in range(n)]


def test_per_groups_beyond_max_groups_are_dropped_and_counted() -> None:
    pack = _pack(kind="count", when={"type": "view"}, threshold=2, per="attrs.sku", max_groups=50)
    sh = Shard(pack)
    out = run(_fresh_skus(2_000), shard=sh)
    st = _window(sh)
    assert st.groups is not None
    assert len(st.groups) == 50
    assert out.groups_dropped == {"cart.r": 2_000 - 50}
    # The most recently matched groups are the ones kept.
    assert set(st.groups) == {f"s{i}" for i in range(1_950, 2_000)}


def test_per_groups_whose_window_emptied_are_pruned_without_counting() -> None:
    pack = _pack(kind="distinct", field="channel", threshold=3, per="attrs.sku", within="10m")
    sh = Shard(pack)
    out = run(_fresh_skus(2_000, gap_ms=MIN), shard=sh)
    st = _window(sh)
    assert st.groups is not None
    assert len(st.groups) <= 11  # a view a minute: only the last 10 minutes' groups can still fire
    assert out.groups_dropped == {}


def test_a_group_that_comes_back_after_being_dropped_starts_afresh() -> None:
    pack = _pack(kind="count", when={"type": "view"}, threshold=2, per="attrs.sku", max_groups=2)
    events = [ev("a1", 0, sku="a"), ev("b1", SEC, sku="b"), ev("c1", 2 * SEC, sku="c"), ev("a2", 3 * SEC, sku="a"),
              ev("c2", 4 * SEC, sku="c")]
    out = run(events, pack=pack)
    # "a" was dropped when "c" came (least recently matched), so a2 opens a new group; c2 then fires.
    assert [m["evidence"] for m in out.moments if m["rule"] == "cart.r"] == [["c1", "c2"]]


def test_distinct_blocked_by_unless_without_within_keeps_threshold_values() -> None:
    pack = _pack(kind="distinct", field="attrs.sku", threshold=3, unless={"type": "view"}, unless_within="1h")
    sh = Shard(pack)
    run(_fresh_skus(3_000), shard=sh)  # every candidate is blocked by the view before it
    st = _window(sh)
    assert st.recs is not None
    assert len(st.recs) == 3 * 3  # (value, ts, event_id) for the 3 most recent values only
    assert st.recs[0::3] == ["s2997", "s2998", "s2999"]


def test_count_without_within_keeps_threshold_events_per_group() -> None:
    pack = _pack(kind="count", when={"type": "view"}, threshold=4, unless={"type": "view"}, unless_within="1h")
    sh = Shard(pack)
    run(_fresh_skus(3_000), shard=sh)
    st = _window(sh)
    assert st.recs is not None
    assert len(st.recs) == 2 * 4


@pytest.mark.parametrize(("bad", "problem"), [({"max_groups": 0, "per": "step"}, "must be an integer 1..100000"),
                                              ({"max_groups": 10}, "is only meaningful with `per`")])
def test_max_groups_is_validated_and_needs_per(bad: dict[str, Any], problem: str) -> None:
    where = f"moment[{len(DEFAULT['moment'])}] (cart.r).max_groups: {problem}"
    with pytest.raises(RulePackError, match=re.escape(where)):
        _pack(kind="count", threshold=2, **bad)


def test_groups_dropped_reach_the_metric_labelled_by_rule() -> None:
    import time

    from flows import accounting, metrics

    pack = _pack(kind="count", when={"type": "view"}, threshold=2, per="attrs.sku", max_groups=10)
    metrics.configure(pack)
    out = run(_fresh_skus(100), pack=pack)
    before = metrics.REGISTRY.get_sample_value("cx_generic_groups_dropped_total", {"rule": "cart.r"}) or 0.0
    accounting.observe_outputs("bounds-shard", out, int(time.time() * 1000), pack)
    after = metrics.REGISTRY.get_sample_value("cx_generic_groups_dropped_total", {"rule": "cart.r"})
    assert after == before + 90
