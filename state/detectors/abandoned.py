"""``J.abandoned``: the latest event of an attempt is at a key step and nothing follows for ``idle``.

The detector is a timer: ``due_ms`` is armed on each event that becomes the
attempt's latest, and ``still_due`` re-checks the attempt when the watermark
reaches it (timers fire before events of the same time, so an event at exactly
``idle`` later does not prevent the moment).
"""

from __future__ import annotations

from state.journey import Attempt
from state.rules import MomentRule


def due_ms(rule: MomentRule, a: Attempt) -> int | None:
    """Return when the attempt would be abandoned, or None if its latest event is not at a key step."""
    return a.last_ts + rule.within_ms if a.last_key and not a.ended else None


def still_due(rule: MomentRule, a: Attempt, attempt_id: str, armed_ts: int) -> bool:
    """Return whether a timer armed at ``armed_ts`` for ``attempt_id`` should fire now."""
    return a.attempt_id == attempt_id and a.last_key and not a.ended and a.last_ts == armed_ts
