"""Per-customer, per-journey attempt state: small mutable ``__slots__`` objects on the hot path.

Measured against frozen dataclasses in benchmarks/RESULTS.md: the shard owns its
customers and snapshots by pickling, so in-place mutation is safe and cheaper.
Memory matters as much as speed here (a shard holds up to millions of attempts),
so rule windows are flat tuples of records rather than tuples of tuples, and
timers are not stored at all: they are derived from these fields (see
``state.deadlines.next_deadline``).
"""

from __future__ import annotations

from typing import Any, Final

ACTIVE: Final = "active"
COMPLETED: Final = "completed"
EXPIRED: Final = "expired"
NO_STATE: Final[tuple[Any, ...]] = ((), (), (), (), ())  # five empty state slots
# The agent's trail of an attempt (``Attempt.trail``): (ts, step, entry, reason, error_code) records, the last
# TRAIL_RECORDS of them; reason is None for a first arrival at a step, the failure's reason ("" if none) for a fail.
TRAIL_FIELDS: Final = 5
TRAIL_RECORDS: Final = 8

# A rule window: records of a fixed number of fields laid end to end, e.g. (ts, event_id, ts, event_id, …);
# each detector's docstring gives its record layout. One tuple instead of one per record saves
# about 50 bytes per record.
Window = tuple[Any, ...]


class Attempt:
    """One attempt of one journey by one customer.

    The detectors' per-attempt state (windows pruned to the rule windows, so an attempt stays a few
    hundred bytes) sits in five generic slots ``s0`` … ``s4``, given out to the journey's detectors when
    the pack is compiled (``state.plan``); which holds what depends on the journey's rules.
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
        "recent",
        "stage",
        "trail",
        "s0",
        "s1",
        "s2",
        "s3",
        "s4",
    )

    # Defaults: unpickling a compiled instance runs __init__ with no arguments before __setstate__.
    def __init__(self, attempt_id: str = "", ts: int = 0, state: tuple[Any, ...] = NO_STATE) -> None:
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
        self.recent: tuple[str, ...] = ()  # the latest steps, for the agent's screen
        self.stage = 0  # life-cycle stage reached (index into state.rules.STAGES)
        # Journeys with a hand-off rule: step arrivals and failures for the agent's screen (TRAIL_FIELDS records).
        self.trail: tuple[Any, ...] = ()
        # Detector state: the journey's initial values (see state.plan.JourneyPlan.initial).
        self.s0: Any
        self.s1: Any
        self.s2: Any
        self.s3: Any
        self.s4: Any
        self.s0, self.s1, self.s2, self.s3, self.s4 = state

    @property
    def status(self) -> str:
        """``active``, ``completed`` or ``expired``."""
        return self.ended or ACTIVE

    def end(self, status: str) -> None:
        """End the attempt (``COMPLETED`` or ``EXPIRED``), dropping the latest event id (the abandonment's anchor).

        Events of the journey go to a new attempt from now on; an ended attempt may be kept for up to a
        day (hand-off context, interest windows). Detectors drop their own state (``Detector.on_end``).
        """
        self.ended = status
        self.last_eid = self.attempt_id

    def __getstate__(self) -> tuple[object, ...]:
        return (self.attempt_id, self.expiry_from, self.last_ts, self.last_eid, self.last_step, self.last_key,
                self.ended, self.fired, self.reached, self.recent, self.stage, self.s0, self.s1, self.s2, self.s3,
                self.s4, self.trail)

    def __setstate__(self, st: tuple[Any, ...]) -> None:
        if not isinstance(st[10], int):
            # Format 4 (state.snapshots.upgrade): its five per-kind slots stood where recent, stage and s0 … s4
            # are; compiled, the typed slots refuse them, so they go to s0 … s4 (in order) for the upgrade.
            st = (*st[:9], st[14], st[15], *st[9:14])
        (self.attempt_id, self.expiry_from, self.last_ts, self.last_eid, self.last_step, self.last_key,
         self.ended, self.fired, self.reached, self.recent, self.stage, self.s0, self.s1, self.s2, self.s3,
         self.s4) = st[:16]
        self.trail = st[16] if len(st) > 16 else ()  # snapshots from before the trail (issue 17) have none


def add_trail(a: Attempt, ts: int, step: str, entry: str, reason: str | None, code: str) -> None:
    """Add a record to the attempt's trail (``Attempt.trail``), dropping the oldest beyond ``TRAIL_RECORDS``."""
    a.trail = (*a.trail[(1 - TRAIL_RECORDS) * TRAIL_FIELDS:], ts, step, entry, reason, code)


class GenericAttempt(Attempt):
    """An attempt of a journey with generic rules (DESIGN.md §8): ``g`` holds their per-rule states.

    Only such journeys pay for the extra slot; ``g`` is None while no generic rule holds anything. The
    ``unless`` look-backs in it span attempts, so a new attempt takes over the ended one's ``g``.
    """

    __slots__ = ("g",)

    def __init__(self, attempt_id: str = "", ts: int = 0, state: tuple[Any, ...] = NO_STATE,
                 g: list[Any] | None = None) -> None:
        super().__init__(attempt_id, ts, state)
        self.g = g

    def __getstate__(self) -> tuple[object, ...]:
        return (*super().__getstate__(), self.g)

    def __setstate__(self, st: tuple[Any, ...]) -> None:
        super().__setstate__(st[:-1])
        self.g = st[-1]
