"""``J.abandoned``: the latest event of an attempt is at a key step and nothing follows for ``idle``.

No timer object is kept per attempt: the abandonment's due time is derived from the attempt
(``last_ts + idle`` while its latest event is at a key step), and the customer's single wake-up
(``state.deadlines.next_deadline``) covers it. A later event moves or cancels it just by changing
the attempt. Timers fire before events of the same time, so an event exactly ``idle`` later does
not prevent the moment.
"""

from __future__ import annotations

from typing import ClassVar

from state.detectors.base import Detector, Evidence, Param
from state.journey import Attempt


class Abandoned(Detector):
    """Arms at every latest event at a key step; fires ``idle`` later unless the attempt moved on."""

    KIND: ClassVar[str] = "abandoned"
    SUMMARY: ClassVar[str] = ("fires {within} after the latest event of an attempt when it is at a "
                              "key step and no event of the journey follows")
    PARAMS: ClassVar[tuple[Param, ...]] = (Param("idle", "within_ms", "10m", "duration"),)
    WAKE_AT_KEY: ClassVar[bool] = True  # armed by the engine at each latest event at a key step: no on_event
    TIMED: ClassVar[bool] = True

    def due(self, a: Attempt) -> int | None:
        """``a.last_ts + idle`` while the attempt is active, its latest event is at a key step and the rule has
        not fired in it; else None."""
        if a.ended or not a.last_key or a.fired & self.bit:
            return None
        return a.last_ts + self.rule.within_ms

    def on_due(self, a: Attempt) -> tuple[Evidence, int, str, str | None]:
        """The moment: anchored on the event left at the key step, due ``idle`` after it."""
        return (a.last_eid,), a.last_ts + self.rule.within_ms, a.last_eid, a.last_step
