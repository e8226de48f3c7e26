"""``J.maze``: one key step reached through n distinct entry points within a window."""

from __future__ import annotations

from typing import Any

from state.events import Event
from state.journey import Attempt
from state.rules import MomentRule


def on_key_step(rule: MomentRule, a: Attempt, ev: Event, step: str, entry: str) -> tuple[str, ...] | None:
    """Record an entry at a key step; return the evidence when the n-th distinct entry arrives.

    Args:
        rule: The maze rule (``threshold`` distinct entries, ``within_ms``).
        a: The attempt; its ``entries`` window ((ts, step, entry, event_id) records) is updated.
        ev: The event at the key step.
        step: The key step (canonical string).
        entry: The event's entry point.

    Returns:
        Event ids of the distinct entries (oldest first) when the rule fires, else None.
    """
    t = ev.ts_ms
    w = rule.within_ms
    old = a.entries
    # Keep the latest sighting of each (step, entry) inside the window.
    kept: list[Any] = []
    for i in range(0, len(old), 4):
        if abs(t - old[i]) <= w and not (old[i + 1] == step and old[i + 2] == entry):
            kept += old[i : i + 4]
    kept += (t, step, entry, ev.event_id)
    a.entries = tuple(kept)
    same = [a.entries[i : i + 4] for i in range(0, len(kept), 4) if kept[i + 1] == step]
    if len(same) >= rule.threshold:
        same.sort()
        if same[-1][0] - same[0][0] <= w:
            return tuple(e[3] for e in same)
    return None
