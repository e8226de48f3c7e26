"""``J.abandoned``: the latest event of an attempt is at a key step and nothing follows for ``idle``.

No timer object is kept per attempt: the abandonment's due time is derived from
the attempt (``last_ts + idle`` while its latest event is at a key step), and the
customer's single housekeeping wake-up (``state.customer.next_deadline``) covers
it. A later event moves or cancels it just by changing the attempt. Timers fire
before events of the same time, so an event exactly ``idle`` later does not
prevent the moment.
"""

from __future__ import annotations

from state.detectors import KIND_BITS
from state.journey import Attempt
from state.rules import MomentRule

_BIT = KIND_BITS["abandoned"]


def due_at(rule: MomentRule, a: Attempt) -> int | None:
    """Return when the attempt's abandonment is due, or None when none is pending.

    Args:
        rule: The abandonment rule (``within_ms`` is the idle time).
        a: The journey's current attempt.

    Returns:
        ``a.last_ts + idle`` while the attempt is active, its latest event is at a key step and the
        rule has not fired in it; else None.
    """
    if a.ended or not a.last_key or a.fired & _BIT:
        return None
    return a.last_ts + rule.within_ms
