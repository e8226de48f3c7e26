"""Snapshot formats: the current one, and the upgrade of the previous one on restore.

Format 5 (issue 14) keeps the detectors' per-attempt state in the attempt's generic slots; format 4
had a named slot per kind. A format-4 snapshot still restores: its attempts are rearranged here.
"""

from __future__ import annotations

from typing import Final

from state.journey import Attempt
from state.plan import JourneyPlan
from state.record import CustomerState

SNAPSHOT_FORMAT: Final = 5
UPGRADABLE: Final = frozenset({4})


def check_format(fmt: object) -> None:
    """Raise ValueError, saying what to do, when a snapshot's format is neither current nor upgradable."""
    if fmt != SNAPSHOT_FORMAT and fmt not in UPGRADABLE:
        raise ValueError(f"snapshot format {fmt} is not supported (expected {SNAPSHOT_FORMAT}, or "
                         f"{', '.join(map(str, sorted(UPGRADABLE)))} to upgrade); start with a fresh recovery "
                         "directory and replay the input")


def upgrade(fmt: int, customers: dict[str, CustomerState], plans: list[JourneyPlan]) -> None:
    """Bring customers unpickled from a snapshot of (checked) format ``fmt`` to the current format, in place."""
    if fmt == SNAPSHOT_FORMAT:
        return
    for c in customers.values():
        for jidx, a in enumerate(c.attempts):
            if a is not None:
                _upgrade_attempt_v4(a, plans[jidx])


def _upgrade_attempt_v4(a: Attempt, plan: JourneyPlan) -> None:
    # Format 4 pickled Attempt's 16 slots in the order (…, reached, fails, entries, channels, views, intent_ts,
    # recent, stage); format 5's __setstate__ took them positionally as (…, reached, recent, stage, s0 … s4).
    fails, entries, channels, views, intent_ts, recent, stage = a.recent, a.stage, a.s0, a.s1, a.s2, a.s3, a.s4
    a.recent, a.stage = recent, stage
    a.s0, a.s1, a.s2, a.s3, a.s4 = plan.initial
    old = {"stuck": (fails,), "maze": (entries,), "channel_hop": (channels,), "interested": (views, intent_ts)}
    for kind, values in old.items():
        d = plan.by_kind.get(kind)
        if d is not None:
            for i, v in enumerate(values):
                d.put(a, v, i)
