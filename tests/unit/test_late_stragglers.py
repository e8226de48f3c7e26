"""A late event from an attempt that has ended since cannot open another attempt (rules would fire twice)."""

from __future__ import annotations

from pathlib import Path

from state.rules import load_rule_pack
from tests.helpers import MIN, PACK, ev, run

SEC = 1_000


def _moments(out: object, customer: str = "x") -> list[tuple[str, str]]:
    return sorted((m["rule"], m["evidence"][-1]) for m in out.moments if m["customer_id"] == customer)  # type: ignore[attr-defined]


def test_a_straggler_from_before_the_completion_changes_nothing() -> None:
    events = [ev("x0", -SEC, "start", customer="x", step="cart"),
              ev("x1", 0, "fail", customer="x", step="payment"),
              ev("x2", MIN, "complete", customer="x", step="payment"),
              ev("f", 11 * MIN, "view", customer="filler", step="product"),
              ev("x3", 30 * SEC, "fail", customer="x", step="payment")]  # late: the watermark is at 11m - 1s
    out = run(events, lateness_ms=SEC)
    assert out.late == 1
    assert _moments(out) == [("cart.failed", "x1")]  # not a second failed (nor an abandonment) for x3
    # In event-time order the straggler is part of the completed attempt: the same single moment.
    assert _moments(run(sorted(events, key=lambda e: e["ts"]), lateness_ms=SEC)) == [("cart.failed", "x1")]


def test_a_straggler_from_an_expired_attempt_changes_nothing(tmp_path: Path) -> None:
    pack = tmp_path / "short.toml"
    pack.write_text(Path(PACK.path).read_text().replace('attempt_timeout = "24h"', 'attempt_timeout = "5m"'))
    short = load_rule_pack(pack)
    events = [ev("x1", 0, "fail", customer="x", step="payment"),
              ev("f", 30 * MIN, "view", customer="filler", step="product"),
              ev("x3", 2 * MIN, "fail", customer="x", step="payment")]  # late, and within 5m of x1
    out = run(events, pack=short, lateness_ms=SEC)
    assert out.late == 1
    assert [r for r, _ in _moments(out)].count("cart.failed") == 1
    # A late event beyond the timeout of the ended attempt still opens the next attempt, as in order.
    events[2] = ev("x3", 6 * MIN, "fail", customer="x", step="payment")
    assert [r for r, _ in _moments(run(events, pack=short, lateness_ms=SEC))].count("cart.failed") == 2


def test_a_straggler_left_out_is_still_counted_once_as_a_valid_event() -> None:
    # Every valid message is counted (cx_events_total) whether it changes state or not; a copy of it is a duplicate.
    events = [ev("x0", -SEC, "start", customer="x", step="cart"),
              ev("x1", 0, "fail", customer="x", step="payment"),
              ev("x2", MIN, "complete", customer="x", step="payment"),
              ev("f", 11 * MIN, "view", customer="filler", step="product"),
              ev("x3", 30 * SEC, "fail", customer="x", step="payment"),
              ev("x3", 30 * SEC, "fail", customer="x", step="payment")]
    out = run(events, lateness_ms=SEC)
    assert out.late == 1  # the copy is a duplicate (a dead letter), not a second late event
    assert [r["event_id"] for r in out.late_events] == ["x3"]
    assert sum(out.events.values()) == 5
    assert out.invalid == {"duplicate": 1}
    assert [d["raw"] for d in out.dead] == ["x3"]
