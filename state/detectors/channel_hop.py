"""``J.channel_hop``: events of one journey on n distinct channels within a window."""

from __future__ import annotations

from typing import ClassVar

from state.detectors.base import Detector, Evidence, Host, Param
from state.events import Event
from state.journey import Attempt, Window
from state.record import CustomerState


class ChannelHop(Detector):
    """State: the latest sighting per channel within the window, (ts, channel, event_id) records.

    While it holds one record and that record is the attempt's latest event, it is stored as the
    bare channel name (the common case: a customer staying on one channel costs no tuple).
    """

    KIND: ClassVar[str] = "channel_hop"
    SUMMARY: ClassVar[str] = "fires when events of the journey come on {threshold} distinct channels within {within}"
    PARAMS: ClassVar[tuple[Param, ...]] = (Param("distinct_channels", "threshold", 3, "count"),
                                           Param("within", "within_ms", "60m", "duration"))
    STATE: ClassVar[tuple[object, ...]] = ((),)
    TYPES: ClassVar[frozenset[str] | None] = None

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """Record the event's channel; the evidence is the latest event per channel when the n-th arrives."""
        old = getattr(a, self.slot0)
        if type(old) is str and old == ev.channel or a.fired & self.bit:
            # The common case: the customer stays on one channel. The record stands for
            # (last_ts, channel, last_eid), which the engine has moved to this event if it is the latest.
            return None
        channel = host.canon(ev.channel)
        t = ev.ts_ms
        chans: Window
        if isinstance(old, str):
            chans = (prev_ts, old, prev_eid)
        else:
            chans = old
            if len(chans) == 3 and chans[1] == channel:
                if t >= chans[0]:
                    setattr(a, self.slot0, _single(a, t, channel, ev.event_id))
                return None
        w = self.rule.within_ms
        kept = [chans[i : i + 3] for i in range(0, len(chans), 3) if abs(t - chans[i]) <= w and chans[i + 1] != channel]
        kept.append((t, channel, ev.event_id))
        window = _single(a, t, channel, ev.event_id) if len(kept) == 1 else tuple(x for c in kept for x in c)
        setattr(a, self.slot0, window)
        if len(kept) >= self.rule.threshold:
            kept.sort()
            if kept[-1][0] - kept[0][0] <= w:
                return tuple(c[2] for c in kept)
        return None

    def records(self, a: Attempt) -> Window:
        """Return the window as flat (ts, channel, event_id) records, expanding the single-channel form."""
        ch = getattr(a, self.slot0)
        return (a.last_ts, ch, a.last_eid) if isinstance(ch, str) else ch


def _single(a: Attempt, t: int, channel: str, eid: str) -> str | Window:
    # The bare name only stands for the attempt's latest event; an older one keeps its record.
    return channel if t == a.last_ts and eid == a.last_eid else (t, channel, eid)
