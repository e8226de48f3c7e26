"""``J.channel_hop``: events of one journey on n distinct channels within a window."""

from __future__ import annotations

from state.events import Event
from state.journey import Attempt
from state.rules import MomentRule


def on_event(rule: MomentRule, a: Attempt, ev: Event, channel: str) -> tuple[str, ...] | None:
    """Record the event's channel; return the evidence when the n-th distinct channel arrives.

    Args:
        rule: The channel-hop rule (``threshold`` channels, ``within_ms``).
        a: The attempt; its ``channels`` window is updated.
        ev: An event in the journey.
        channel: The event's channel (canonical string).

    Returns:
        Event ids of the latest event per channel (oldest first) when the rule fires, else None.
    """
    t = ev.ts_ms
    w = rule.within_ms
    chans = a.channels
    if len(chans) == 1 and chans[0][1] == channel:
        # The common case: the customer stays on one channel.
        a.channels = ((t, channel, ev.event_id),) if t >= chans[0][0] else chans
        return None
    kept = [c for c in chans if abs(t - c[0]) <= w and c[1] != channel]
    kept.append((t, channel, ev.event_id))
    a.channels = tuple(kept)
    if len(kept) >= rule.threshold:
        kept.sort()
        if kept[-1][0] - kept[0][0] <= w:
            return tuple(c[2] for c in kept)
    return None
