"""``J.handoff``: a call-centre contact while the customer was mid-journey; carries agent context."""

from __future__ import annotations

from typing import ClassVar

from state.detectors.base import Detector, Evidence, Host, Param
from state.detectors.channel_hop import ChannelHop
from state.detectors.stuck import Stuck
from state.events import Event
from state.journey import TRAIL_FIELDS, Attempt, add_trail
from state.record import CustomerState
from state.rule_model import STAGES


class Handoff(Detector):
    """Fires on a contact of the rule's type and channel within ``within`` after an event of the journey.

    A customer-level kind (``CONTACT``): the contact need not belong to the journey. No state slot of its
    own: the agent context reads the attempt, its trail (step arrivals, noted by the engine, and failures,
    noted here: ``TYPES``) and the channel-hop and stuck windows when those rules exist.
    """

    KIND: ClassVar[str] = "handoff"
    SUMMARY: ClassVar[str] = ("fires when a {type} on {channel} comes within {within} of an event in "
                              "the journey (agent sees the last {recent_steps} steps)")
    PARAMS: ClassVar[tuple[Param, ...]] = (Param("channel", "channel", "call_center", "channel"),
                                           Param("type", "type", "contact", "type"),
                                           Param("within", "within_ms", "30m", "duration"),
                                           Param("recent_steps", "recent_steps", 5, "count"))
    CONTACT: ClassVar[bool] = True
    TYPES: ClassVar[frozenset[str] | None] = frozenset({"fail"})  # only to note failures in the trail; never fires

    def link(self, siblings: dict[str, Detector]) -> None:
        """Find the journey's channel-hop and stuck detectors, whose windows the agent context shows."""
        hop, stuck = siblings.get("channel_hop"), siblings.get("stuck")
        self.hop = hop if isinstance(hop, ChannelHop) else None
        self.stuck = stuck if isinstance(stuck, Stuck) else None

    def on_contact(self, a: Attempt, ev: Event) -> bool:
        """A contact of the rule's kind, the customer having had an event in the journey within the window."""
        r = self.rule
        return (not a.fired & self.bit and ev.type == r.type and ev.channel == r.channel
                and 0 < ev.ts_ms - a.last_ts <= r.within_ms)

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """Note a failure in the attempt's trail: its step, entry, and ``attrs.reason``/``attrs.error_code``."""
        attrs = ev.attrs or {}
        add_trail(a, ev.ts_ms, step or "", ev.entry or "", _text(attrs.get("reason")), _text(attrs.get("error_code")))
        return None

    def context(self, a: Attempt) -> dict[str, object]:
        """Return what an agent's screen shows of the journey so far."""
        chans = self.hop.records(a) if self.hop is not None else ()
        trail = [a.trail[i : i + TRAIL_FIELDS] for i in range(0, len(a.trail), TRAIL_FIELDS)]
        return {
            "attempt_id": a.attempt_id,
            "recent_steps": list(a.recent),
            "channels": [c[1] for c in sorted(chans[i : i + 3] for i in range(0, len(chans), 3))],
            "fails": self.stuck.count(a) if self.stuck is not None else 0,
            "last_step": a.last_step or "",
            "last_ts": a.last_ts,
            "status": a.status,
            "stage": STAGES[a.stage],
            "entries": list(dict.fromkeys(r[2] for r in trail if r[2])),
            "step_times": [{"step": r[1], "ts": r[0]} for r in trail if r[3] is None],
            "failures": [{"ts": r[0], "step": r[1], "reason": r[3], "error_code": r[4]} for r in trail
                         if r[3] is not None],
        }

    def keep_until(self, a: Attempt) -> int:
        """A contact may still hand the ended attempt off within the window."""
        return a.last_ts + self.rule.within_ms


def _text(v: object) -> str:
    """An attribute as the agent reads it: text as is, a number or flag as JSON would show it, nothing as ""."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else str(v)
