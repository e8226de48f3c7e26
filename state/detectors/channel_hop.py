"""``J.channel_hop``: events of one journey on n distinct channels within a window."""

from __future__ import annotations

from state.events import Event
from state.journey import Attempt, Window
from state.rules import MomentRule


def on_event(
    rule: MomentRule, a: Attempt, ev: Event, channel: str, prev_ts: int, prev_eid: str
) -> tuple[str, ...] | None:
    """Record the event's channel; return the evidence when the n-th distinct channel arrives.

    The window keeps the latest sighting per channel within the rule window. While it holds one
    record and that record is the attempt's latest event, it is stored as the bare channel name.

    Args:
        rule: The channel-hop rule (``threshold`` channels, ``within_ms``).
        a: The attempt, ``last_ts``/``last_eid`` already moved to this event if it is the latest;
            its ``channels`` window is updated.
        ev: An event in the journey.
        channel: The event's channel (canonical string).
        prev_ts: The attempt's ``last_ts`` before this event.
        prev_eid: The attempt's ``last_eid`` before this event.

    Returns:
        Event ids of the latest event per channel (oldest first) when the rule fires, else None.
    """
    t = ev.ts_ms
    chans: Window
    if isinstance(a.channels, str):
        if a.channels == channel:
            # The common case: the customer stays on one channel. The record stands for
            # (last_ts, channel, last_eid), which the caller has moved to this event if it is the latest.
            return None
        chans = (prev_ts, a.channels, prev_eid)
    else:
        chans = a.channels
        if len(chans) == 3 and chans[1] == channel:
            if t >= chans[0]:
                a.channels = _single(a, t, channel, ev.event_id)
            return None
    w = rule.within_ms
    kept = [chans[i : i + 3] for i in range(0, len(chans), 3) if abs(t - chans[i]) <= w and chans[i + 1] != channel]
    kept.append((t, channel, ev.event_id))
    a.channels = _single(a, t, channel, ev.event_id) if len(kept) == 1 else tuple(x for c in kept for x in c)
    if len(kept) >= rule.threshold:
        kept.sort()
        if kept[-1][0] - kept[0][0] <= w:
            return tuple(c[2] for c in kept)
    return None


def _single(a: Attempt, t: int, channel: str, eid: str) -> str | Window:
    # The bare name only stands for the attempt's latest event; an older one keeps its record.
    return channel if t == a.last_ts and eid == a.last_eid else (t, channel, eid)
