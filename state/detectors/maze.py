"""``J.maze``: one key step reached through n distinct entry points within a window."""

from __future__ import annotations

from typing import Any, ClassVar

from state.detectors.base import Detector, Evidence, Host, Param
from state.events import Event
from state.journey import Attempt
from state.record import CustomerState


class Maze(Detector):
    """State: the entries window, (ts, step, entry, event_id) records, the latest per (step, entry)."""

    KIND: ClassVar[str] = "maze"
    SUMMARY: ClassVar[str] = "fires when a key step is entered from {threshold} distinct entries within {within}"
    PARAMS: ClassVar[tuple[Param, ...]] = (Param("distinct_entries", "threshold", 3, "count"),
                                           Param("within", "within_ms", "30m", "duration"))
    STATE: ClassVar[tuple[object, ...]] = ((),)
    ON_KEY_STEP: ClassVar[bool] = True

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """Record an entry at a key step; the evidence is the distinct entries (oldest first) at the n-th."""
        if ev.entry is None or step is None or a.fired & self.bit:
            return None
        entry = host.canon(ev.entry)
        t = ev.ts_ms
        w = self.rule.within_ms
        old = getattr(a, self.slot0)
        # Keep the latest sighting of each (step, entry) inside the window.
        kept: list[Any] = []
        for i in range(0, len(old), 4):
            if abs(t - old[i]) <= w and not (old[i + 1] == step and old[i + 2] == entry):
                kept += old[i : i + 4]
        kept += (t, step, entry, ev.event_id)
        same = [tuple(kept[i : i + 4]) for i in range(0, len(kept), 4) if kept[i + 1] == step]
        if len(same) >= self.rule.threshold:
            same.sort()
            if same[-1][0] - same[0][0] <= w:
                setattr(a, self.slot0, ())  # the rule fires once per attempt: its window is not read again
                return tuple(e[3] for e in same)
        setattr(a, self.slot0, tuple(kept))
        return None

    def on_end(self, a: Attempt) -> None:
        """Events go to a new attempt now: the window is never read again."""
        setattr(a, self.slot0, ())
