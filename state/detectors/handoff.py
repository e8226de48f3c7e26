"""``J.handoff``: a call-centre contact while the customer was mid-journey; carries agent context."""

from __future__ import annotations

from state.events import Event
from state.journey import Attempt
from state.rules import MomentRule


def is_contact(rule: MomentRule, ev: Event) -> bool:
    """Return whether the event is the kind of contact the rule hands off."""
    return ev.type == rule.type and ev.channel == rule.channel


def applies(rule: MomentRule, a: Attempt, ev: Event) -> bool:
    """Return whether the customer had an event in the attempt's journey in the window before the contact."""
    return 0 < ev.ts_ms - a.last_ts <= rule.within_ms


def context(a: Attempt) -> dict[str, object]:
    """Return what an agent's screen shows of the journey so far."""
    chans = a.channel_records()
    return {
        "attempt_id": a.attempt_id,
        "recent_steps": list(a.recent),
        "channels": [c[1] for c in sorted(chans[i : i + 3] for i in range(0, len(chans), 3))],
        "fails": len(a.fails) // 2,
        "last_step": a.last_step or "",
        "last_ts": a.last_ts,
        "status": a.status,
    }
