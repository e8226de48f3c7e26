"""``J.browse_loop``: the same step viewed ``views`` times within ``within`` without progressing to a later step.

Useful for "stuck on a page": a customer who keeps coming back to the plan page but never moves on.
Views are counted per step, in a row: a view of another step of the journey restarts the count at
that step, and any event at a later step (progress) clears it; events at earlier steps or without a
step leave it. Fires once per attempt.
"""

from __future__ import annotations

from typing import ClassVar

from state.detectors.base import Detector, Evidence, Host, Param
from state.events import Event
from state.journey import Attempt
from state.record import CustomerState
from state.rule_model import JourneyDef, MomentRule


class BrowseLoop(Detector):
    """State: ``(step index, ts, event_id, ts, event_id, …)``: the looped step and its views in the window."""

    KIND: ClassVar[str] = "browse_loop"
    SUMMARY: ClassVar[str] = ("fires when the same step is viewed {threshold} times within {within} "
                              "without reaching a later step")
    PARAMS: ClassVar[tuple[Param, ...]] = (Param("views", "threshold", 3, "count"),
                                           Param("within", "within_ms", "10m", "duration"))
    STATE: ClassVar[tuple[object, ...]] = ((),)
    TYPES: ClassVar[frozenset[str] | None] = None

    def __init__(self, rule: MomentRule, journey: JourneyDef, slots: tuple[int, ...]) -> None:
        super().__init__(rule, journey, slots)
        self.index = {s: i for i, s in enumerate(journey.steps)}

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """Count views of one step; the evidence is the ``views`` views (oldest first) at the last of them."""
        idx = self.index.get(step) if step is not None else None
        if idx is None or a.fired & self.bit:
            return None
        st = getattr(a, self.slot0)
        if ev.type != "view":
            if st and idx > st[0]:
                setattr(a, self.slot0, ())  # progress: the loop is broken
            return None
        if not st or st[0] != idx:
            st = (idx,)  # a view of another step: the count restarts here
        t, w = ev.ts_ms, self.rule.within_ms
        kept = [(st[i], st[i + 1]) for i in range(1, len(st), 2) if abs(t - st[i]) <= w]
        kept.append((t, ev.event_id))
        kept.sort()
        need = self.rule.threshold
        if len(kept) >= need and kept[-1][0] - kept[-need][0] <= w:
            setattr(a, self.slot0, ())
            return tuple(e for _, e in kept[-need:])
        setattr(a, self.slot0, (idx, *(x for v in kept[-(need - 1) :] for x in v)) if need > 1 else ())
        return None
