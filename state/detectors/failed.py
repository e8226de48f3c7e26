"""``J.failed``: the first ``fail`` event of an attempt."""

from __future__ import annotations

from state.events import Event
from state.journey import Attempt


def on_fail(a: Attempt, ev: Event) -> tuple[str, ...] | None:
    """Return the evidence when this fail fires the rule (the caller checks once-per-attempt).

    Args:
        a: The attempt (unchanged).
        ev: A ``fail`` event in the attempt's journey.

    Returns:
        The evidence event ids, or None.
    """
    return (ev.event_id,)
