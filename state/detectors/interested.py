"""``J.interested``: repeated views or engagement without a start or submit."""

from __future__ import annotations

from typing import ClassVar, Final

from state.detectors.base import Detector, Evidence, Host, Param
from state.events import Event
from state.journey import Attempt
from state.record import CustomerState

INTEREST_TYPES: Final = frozenset({"view", "engage"})
INTENT_TYPES: Final = frozenset({"start", "submit"})


class Interested(Detector):
    """State: two slots, the views still in the window (their times) and the latest start/submit time.

    It looks back over the journey's views and intents in time, not per attempt (DESIGN.md §4): the
    state carries over to the next attempt, and an ended attempt is kept while it still matters.
    Views are recorded even once the rule fired, for the next attempt's window.
    """

    KIND: ClassVar[str] = "interested"
    SUMMARY: ClassVar[str] = ("fires when the journey is viewed {threshold} times within {within} "
                              "with no start or submit in the {no_intent} before")
    PARAMS: ClassVar[tuple[Param, ...]] = (Param("count", "threshold", 2, "count"),
                                           Param("within", "within_ms", "24h", "duration"),
                                           Param("no_intent_within", "no_intent_ms", "24h", "duration"))
    STATE: ClassVar[tuple[object, ...]] = ((), 0)
    TYPES: ClassVar[frozenset[str] | None] = INTEREST_TYPES | INTENT_TYPES
    STAMPS: ClassVar[frozenset[str]] = INTENT_TYPES  # the latest intent time, kept by the engine (slot 1)
    CARRY: ClassVar[bool] = True

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """Record a view/engage or an intent; the evidence is the view when it is the n-th without recent intent."""
        t = ev.ts_ms
        if ev.type in INTENT_TYPES:
            if t > getattr(a, self.slot1):
                setattr(a, self.slot1, t)
            return None
        r = self.rule
        views = (*(v for v in getattr(a, self.slot0) if abs(t - v) <= r.within_ms), t)
        need = r.threshold
        setattr(a, self.slot0, views[-(need - 1) :] if need > 1 else ())
        if len(views) < need or a.fired & self.bit:
            return None
        intent = getattr(a, self.slot1)
        return None if intent and 0 <= t - intent <= r.no_intent_ms else (ev.event_id,)

    def keep_until(self, a: Attempt) -> int:
        """Views and intents reach into the next attempt's windows."""
        keep = a.last_ts
        views, intent = getattr(a, self.slot0), getattr(a, self.slot1)
        if views:
            keep = max(keep, max(views) + self.rule.within_ms)
        if intent:
            keep = max(keep, intent + self.rule.no_intent_ms)
        return keep
