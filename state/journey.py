"""Per-customer, per-journey attempt state: small mutable ``__slots__`` objects on the hot path.

Measured against frozen dataclasses in benchmarks/RESULTS.md: the shard owns its
customers and snapshots by pickling, so in-place mutation is safe and cheaper.
"""

from __future__ import annotations

ACTIVE = "active"
COMPLETED = "completed"
EXPIRED = "expired"


class Attempt:
    """One attempt of one journey by one customer.

    Window fields hold only what the rules need and are pruned to the rule
    windows, so an attempt stays a few hundred bytes.
    """

    __slots__ = (
        "attempt_id",
        "start_ts",
        "last_ts",
        "last_eid",
        "last_step",
        "last_key",
        "armed",
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
        self.start_ts = ts
        self.last_ts = ts
        self.last_eid = attempt_id
        self.last_step: str | None = None
        # The latest event was at a key step, so an abandonment timer is pending.
        self.last_key = False
        # An abandonment timer is in the shard's heap (re-armed lazily when it pops early).
        self.armed = False
        self.ended = ""  # "" while active, else COMPLETED or EXPIRED
        self.fired = 0  # bit per moment kind fired in this attempt
        self.reached = 0  # bit per journey step reached in this attempt
        self.fails: tuple[tuple[int, str], ...] = ()
        self.entries: tuple[tuple[int, str, str, str], ...] = ()  # (ts, step, entry, event_id)
        self.channels: tuple[tuple[int, str, str], ...] = ()  # (ts, channel, event_id)
        self.views: tuple[int, ...] = ()
        self.intent_ts = 0
        self.recent: tuple[str, ...] = ()
        self.stage = 0  # life-cycle stage reached (index into state.rules.STAGES)

    @property
    def status(self) -> str:
        """``active``, ``completed`` or ``expired``."""
        return self.ended or ACTIVE

    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, s) for s in self.__slots__)

    def __setstate__(self, st: tuple[object, ...]) -> None:
        for s, v in zip(self.__slots__, st, strict=True):
            setattr(self, s, v)
