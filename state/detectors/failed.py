"""``J.failed``: the first ``fail`` event of an attempt."""

from __future__ import annotations

from typing import ClassVar

from state.detectors.base import Detector, Evidence, Host, Param
from state.events import Event
from state.journey import Attempt
from state.record import CustomerState


class Failed(Detector):
    """Fires on the attempt's first ``fail``; no state."""

    KIND: ClassVar[str] = "failed"
    SUMMARY: ClassVar[str] = "fires on the first event of type fail in an attempt"
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    TYPES: ClassVar[frozenset[str] | None] = frozenset({"fail"})

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """Evidence: the fail itself."""
        return None if a.fired & self.bit else (ev.event_id,)
