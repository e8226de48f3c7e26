"""Late events and the generic rules (docs/detection.md, Late events): state is updated, rule windows are not."""

from __future__ import annotations

from typing import Any

from state.batches import RawBatch, Tick
from state.outputs import Outputs
from state.rules import rule_pack_from_dict
from state.shard import Shard, process
from tests.helpers import MIN, ev, raws
from tests.unit.test_generic_wiring import DEFAULT

TWICE: dict[str, Any] = {"kind": "count", "name": "declined_twice", "journeys": ["cart"], "when": {"type": "fail"},
                         "threshold": 2, "within": "3m"}
QUIET: dict[str, Any] = {"kind": "absence", "name": "quiet", "journeys": ["cart"], "when": {"step": "cart"},
                         "idle": "20m"}
PACK = rule_pack_from_dict({**DEFAULT, "moment": [*DEFAULT["moment"], TWICE, QUIET]}, "late.toml")


def _feed(*batches: list[dict[str, Any]]) -> tuple[Shard, list[Outputs]]:
    """Each list is one batch (lateness 30 s); a final tick ends the input."""
    sh = Shard(PACK)
    outs, offset = [], 0
    for b in batches:
        outs.append(process(sh, [RawBatch("t", 0, raws(b), list(range(offset, offset + len(b))))]))
        offset += len(b)
    outs.append(process(sh, [Tick(0, final=True)]))
    return sh, outs


def _rules(outs: list[Outputs]) -> list[str]:
    return [m["rule"] for o in outs for m in o.moments]


def test_a_late_event_older_than_the_attempts_latest_updates_state_but_not_generic_windows() -> None:
    sh, outs = _feed([ev("f1", 0, "fail", step="cart"), ev("f3", 4 * MIN, "fail", step="product")],
                     [ev("x", 30 * MIN, customer="c2")],  # moves the watermark past everything of c1
                     [ev("f2", 2 * MIN, "fail", step="checkout")])
    assert sum(o.late for o in outs) == 1
    # In (ts, event_id) order f1, f2 would make two fails within 3m: the straggler is not put back in order.
    assert "cart.declined_twice" not in _rules(outs)
    # It still updates the journey's state and meets the built-in rules (DESIGN.md §4): three fails in 30m.
    [stuck] = [m for o in outs for m in o.moments if m["rule"] == "cart.stuck"]
    assert stuck["evidence"] == ["f1", "f2", "f3"]
    [a] = [a for a in sh.customers["c1"].attempts if a is not None]
    assert a.last_ts == ev("f3", 4 * MIN)["ts"]  # the latest event stays the latest
    assert a.reached & (1 << PACK.journeys["cart"].steps.index("checkout"))


def test_a_late_event_that_is_the_attempts_latest_reaches_the_generic_rules() -> None:
    _, outs = _feed([ev("f1", 0, "fail", step="cart")],
                    [ev("x", 30 * MIN, customer="c2")],
                    [ev("f2", 2 * MIN, "fail", step="checkout")])
    assert sum(o.late for o in outs) == 1
    # Late for the shard, yet the latest of c1's attempt: the rules see it in order and fire.
    [m] = [m for o in outs for m in o.moments if m["rule"] == "cart.declined_twice"]
    assert (m["evidence"], m["due_ts"]) == (["f1", "f2"], ev("f2", 2 * MIN)["ts"])


def test_a_late_event_neither_disarms_nor_rearms_an_absence_timer() -> None:
    # q arms at 0 (step cart) and is due at 20m; c1's latest event is v at 1m (step product, disarms and
    # does not re-arm). A straggler at 30 s on step cart would, in order, have come before v: nothing changes.
    _, outs = _feed([ev("q", 0, step="cart"), ev("v", MIN, step="product"), ev("r", 3 * MIN, step="cart")],
                    [ev("x", 10 * MIN, customer="c2")],
                    [ev("s", MIN // 2, step="cart")],
                    [ev("y", 60 * MIN, customer="c2")])
    [m] = [m for o in outs for m in o.moments if m["rule"] == "cart.quiet"]
    assert (m["evidence"], m["due_ts"]) == (["r"], ev("r", 23 * MIN)["ts"])
