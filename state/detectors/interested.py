"""``J.interested``: repeated views or engagement without a start or submit."""

from __future__ import annotations

from state.events import Event
from state.journey import Attempt
from state.rules import MomentRule

INTEREST_TYPES = frozenset({"view", "engage"})
INTENT_TYPES = frozenset({"start", "submit"})


def on_interest(rule: MomentRule, a: Attempt, ev: Event) -> bool:
    """Record a view/engage; return True when it is the n-th within the window without recent intent.

    Args:
        rule: The interested rule (``threshold`` count, ``within_ms``, ``no_intent_ms``).
        a: The attempt; its ``views`` window is updated.
        ev: A ``view`` or ``engage`` event.

    Returns:
        Whether the rule fires on this event.
    """
    t = ev.ts_ms
    views = (*(v for v in a.views if abs(t - v) <= rule.within_ms), t)
    need = rule.threshold
    a.views = views[-(need - 1) :] if need > 1 else ()
    if len(views) < need:
        return False
    return not (a.intent_ts and 0 <= t - a.intent_ts <= rule.no_intent_ms)
