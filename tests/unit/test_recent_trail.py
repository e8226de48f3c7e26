"""The look-ups' per-customer trail (state.recent_trail): attempts' entry points and channels, and the bound."""

from __future__ import annotations

from typing import Any

from state.outputs import STEP_FIELDS
from state.recent_trail import ATTEMPTS, Trail


def row(cid: str, attempt: str, entry: str | None, channel: str, journey: str = "cart") -> tuple[Any, ...]:
    values = {"customer_id": cid, "journey": journey, "attempt_id": attempt, "step": "s", "step_index": 0,
              "entry": entry, "channel": channel, "event_id": "e", "ts": 0}
    return tuple(values[f] for f in STEP_FIELDS)


def test_each_attempt_keeps_its_entry_points_and_channels_in_first_use_order() -> None:
    t = Trail(10)
    t.note_steps([row("c", "a1", "banner", "app"), row("c", "a1", None, "app"), row("c", "a1", "search", "web"),
                  row("c", "a2", None, "ivr"), row("c", "a1", "banner", "store"), row("c", "a2", "sms", "ivr")], 4)
    assert t.customers["c"][ATTEMPTS] == (("cart", "a1", ("banner", "search"), ("app", "web", "store")),
                                          ("cart", "a2", ("sms",), ("ivr",)))


def test_an_attempt_is_its_journey_and_id_together() -> None:
    t = Trail(10)
    t.note_steps([row("c", "a1", None, "app", "cart"), row("c", "a1", None, "web", "5g")], 4)
    assert [(j, a, ch) for j, a, _, ch in t.customers["c"][ATTEMPTS]] == [("cart", "a1", ("app",)),
                                                                           ("5g", "a1", ("web",))]


def test_the_oldest_attempts_go_beyond_the_limit() -> None:
    t = Trail(10)
    t.note_steps([row("c", f"a{i}", None, "app") for i in range(6)], 4)
    assert [a for _, a, _, _ in t.customers["c"][ATTEMPTS]] == ["a2", "a3", "a4", "a5"]


def test_the_least_recently_noted_customer_is_dropped_and_remembered_as_maybe_dropped() -> None:
    t = Trail(2)
    t.note_steps([row("a", "1", None, "app"), row("b", "1", None, "app"), row("a", "1", None, "app"),
                  row("c", "1", None, "app")], 4)
    assert list(t.customers) == ["a", "c"]  # b was noted least recently
    assert t.dropped == 1
    assert t.maybe_dropped("b")
    assert not t.maybe_dropped("a")
