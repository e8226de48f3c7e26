"""``J.abandoned``: the latest event of an attempt is at a key step and nothing follows for ``idle``.

The detector is a timer armed when an attempt's latest event is at a key step.
At most one timer per attempt is in the heap: when it pops before the latest
key-step event's due time (a later key-step event arrived meanwhile) it is
re-armed for that time. Timers fire before events of the same time, so an event
exactly ``idle`` later does not prevent the moment.
"""

from __future__ import annotations

from state.journey import Attempt
from state.rules import MomentRule

FIRE = 1
REARM = 2
DROP = 0


def on_timer(rule: MomentRule, a: Attempt, attempt_id: str, due: int) -> int:
    """Decide what a popped abandonment timer does.

    Args:
        rule: The abandonment rule (``within_ms`` is the idle time).
        a: The journey's current attempt.
        attempt_id: The attempt the timer was armed for.
        due: The timer's due time.

    Returns:
        ``FIRE``, ``REARM`` (at ``a.last_ts + idle``) or ``DROP``.
    """
    if a.attempt_id != attempt_id or a.ended or not a.last_key:
        return DROP
    return FIRE if a.last_ts + rule.within_ms <= due else REARM
