"""``J.stuck``: the n-th ``fail`` of an attempt within a window (first to n-th)."""

from __future__ import annotations

from state.events import Event
from state.journey import Attempt
from state.rules import MomentRule


def on_fail(rule: MomentRule, a: Attempt, ev: Event) -> tuple[str, ...] | None:
    """Record a fail; return the evidence when it is the n-th within the window.

    Args:
        rule: The stuck rule (``threshold``, ``within_ms``).
        a: The attempt; its ``fails`` window ((ts, event_id) records, sorted) is updated.
        ev: A ``fail`` event.

    Returns:
        The fail event ids (oldest first) when the rule fires, else None.
    """
    t = ev.ts_ms
    w = rule.within_ms
    old = a.fails
    fails = [(old[i], old[i + 1]) for i in range(0, len(old), 2) if abs(t - old[i]) <= w]
    fails.append((t, ev.event_id))
    fails.sort()
    need = rule.threshold
    if len(fails) >= need and fails[-1][0] - fails[-need][0] <= w:
        a.fails = ()
        return tuple(f[1] for f in fails[-need:])
    a.fails = tuple(x for f in fails[-(need - 1) :] for x in f) if need > 1 else ()
    return None
