"""``J.stuck``: the n-th ``fail`` of an attempt within a window (first to n-th)."""

from __future__ import annotations

from typing import ClassVar

from state.detectors.base import Detector, Evidence, Host, Param
from state.events import Event
from state.journey import Attempt
from state.record import CustomerState


class Stuck(Detector):
    """State: the fails window, (ts, event_id) records, sorted, at most n-1 of them."""

    KIND: ClassVar[str] = "stuck"
    SUMMARY: ClassVar[str] = "fires when {threshold} events of type fail fall within {within}"
    PARAMS: ClassVar[tuple[Param, ...]] = (Param("threshold", "threshold", 3, "count"),
                                           Param("within", "within_ms", "30m", "duration"))
    STATE: ClassVar[tuple[object, ...]] = ((),)
    TYPES: ClassVar[frozenset[str] | None] = frozenset({"fail"})

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """Record a fail; the evidence is the n fails (oldest first) when it is the n-th within the window."""
        if a.fired & self.bit:
            return None
        t = ev.ts_ms
        w = self.rule.within_ms
        old = getattr(a, self.slot0)
        fails = [(old[i], old[i + 1]) for i in range(0, len(old), 2) if abs(t - old[i]) <= w]
        fails.append((t, ev.event_id))
        fails.sort()
        need = self.rule.threshold
        if len(fails) >= need and fails[-1][0] - fails[-need][0] <= w:
            setattr(a, self.slot0, ())
            return tuple(f[1] for f in fails[-need:])
        setattr(a, self.slot0, tuple(x for f in fails[-(need - 1) :] for x in f) if need > 1 else ())
        return None

    def count(self, a: Attempt) -> int:
        """Fails held in the window (the agent's screen shows it)."""
        return len(getattr(a, self.slot0)) // 2
