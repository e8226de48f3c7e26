"""Per-customer, per-journey attempt state: small mutable ``__slots__`` objects on the hot path.

Measured against frozen dataclasses in benchmarks/RESULTS.md: the shard owns its
customers and snapshots by pickling, so in-place mutation is safe and cheaper.
Memory matters as much as speed here (a shard holds up to millions of attempts),
so rule windows are flat tuples of records rather than tuples of tuples, and
timers are not stored at all: they are derived from these fields (see
``state.customer.next_deadline``).
"""

from __future__ import annotations

from typing import Any

ACTIVE = "active"
COMPLETED = "completed"
EXPIRED = "expired"

# A rule window: records of a fixed number of fields laid end to end, e.g. (ts, event_id, ts, event_id, …);
# each field's comment in ``Attempt`` gives the record layout. One tuple instead of one per record saves
# about 50 bytes per record.
Window = tuple[Any, ...]


class Attempt:
    """One attempt of one journey by one customer.

    Window fields hold only what the rules need and are pruned to the rule
    windows, so an attempt stays a few hundred bytes.
    """

    __slots__ = (
        "attempt_id",
        "expiry_from",
        "last_ts",
        "last_eid",
        "last_step",
        "last_key",
        "ended",
        "fired",
        "reached",
        "fails",
        "entries",
        "channels",
        "views",
        "intent_ts",
        "recent",
        "stage",
    )

    def __init__(self, attempt_id: str, ts: int) -> None:
        self.attempt_id = attempt_id
        # The attempt's expiry check is due `attempt_timeout` after this time. The check moves it to
        # `last_ts` while events keep coming, and past the last moment an ended attempt still matters;
        # it is the stored form of what used to be a lazily re-armed timer, so attempts end and are
        # dropped at exactly the same event times.
        self.expiry_from = ts
        self.last_ts = ts
        self.last_eid = attempt_id
        self.last_step: str | None = None
        # The latest event was at a key step, so an abandonment is pending (due `idle` after `last_ts`).
        self.last_key = False
        self.ended = ""  # "" while active, else COMPLETED or EXPIRED
        self.fired = 0  # bit per moment kind fired in this attempt
        self.reached = 0  # bit per journey step reached in this attempt
        self.fails: Window = ()  # (ts, event_id) records, sorted
        self.entries: Window = ()  # (ts, step, entry, event_id) records
        # (ts, channel, event_id) records; or, in the common single-channel case, just the channel name,
        # standing for the one record (last_ts, channel, last_eid) (see state.detectors.channel_hop).
        self.channels: str | Window = ()
        self.views: tuple[int, ...] = ()
        self.intent_ts = 0
        self.recent: tuple[str, ...] = ()
        self.stage = 0  # life-cycle stage reached (index into state.rules.STAGES)

    @property
    def status(self) -> str:
        """``active``, ``completed`` or ``expired``."""
        return self.ended or ACTIVE

    def end(self, status: str) -> None:
        """End the attempt (``COMPLETED`` or ``EXPIRED``), dropping what only an active attempt needs.

        Events of the journey go to a new attempt from now on, so the maze window and the latest
        event id (the abandonment's anchor) are never read again; an ended attempt may be kept for
        up to a day (hand-off context, interest windows), so they are not kept with it.
        """
        self.ended = status
        self.entries = ()
        self.last_eid = self.attempt_id

    def channel_records(self) -> Window:
        """Return the channel window as flat (ts, channel, event_id) records, expanding the single-channel form."""
        ch = self.channels
        return (self.last_ts, ch, self.last_eid) if isinstance(ch, str) else ch

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, st: tuple[object, ...]) -> None:
        for s, v in zip(self.__slots__, st, strict=True):
            setattr(self, s, v)
