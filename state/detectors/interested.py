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
    """State: ``(intent_ts, view_ts, …)``: the latest start/submit time and the views still in the window.

    It looks back over the journey's views and intents in time, not per attempt (DESIGN.md §4): the
    state carries over to the next attempt, and an ended attempt is kept while it still matters.
    Views are recorded even once the rule fired, for the next attempt's window.
    """

    KIND: ClassVar[str] = "interested"
    PARAMS: ClassVar[tuple[Param, ...]] = (Param("count", "threshold", 2, "count"),
                                           Param("within", "within_ms", "24h", "duration"),
                                           Param("no_intent_within", "no_intent_ms", "24h", "duration"))
    STATE: ClassVar[tuple[object, ...]] = ((),)
    TYPES: ClassVar[frozenset[str] | None] = INTEREST_TYPES | INTENT_TYPES
    CARRY: ClassVar[bool] = True

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """Record a view/engage or an intent; the evidence is the view when it is the n-th without recent intent."""
        t = ev.ts_ms
        st = self.get0(a)
        intent = st[0] if st else 0
        if ev.type in INTENT_TYPES:
            if t > intent:
                setattr(a, self.slot0, (t, *st[1:]))
            return None
        r = self.rule
        views = (*(v for v in st[1:] if abs(t - v) <= r.within_ms), t)
        need = r.threshold
        kept = views[-(need - 1) :] if need > 1 else ()
        setattr(a, self.slot0, (intent, *kept) if intent or kept else ())
        if len(views) < need or a.fired & self.bit:
            return None
        return None if intent and 0 <= t - intent <= r.no_intent_ms else (ev.event_id,)

    def keep_until(self, a: Attempt) -> int:
        """Views and intents reach into the next attempt's windows."""
        keep = a.last_ts
        st = self.get0(a)
        if st:
            if len(st) > 1:
                keep = max(keep, max(st[1:]) + self.rule.within_ms)
            if st[0]:
                keep = max(keep, st[0] + self.rule.no_intent_ms)
        return keep
