"""Snapshot formats: the current one, and the upgrade of the previous one on restore.

A snapshot records where each rule's state lives (``state.versions.RuleLayout``): it restores under a pack or
directory with other rules (their places are kept; new rules are laid out after them). Format 5 (issue 14)
keeps the detectors' per-attempt state in the attempt's generic slots; format 4 had a named slot per kind. A
format-4 snapshot still restores: its attempts are rearranged here. Format 6 (issue 18) pickles generic rule
states in one layout for both builds (``RuleState.__getstate__``); format 5 wrote each build's own, which
``RuleState.__setstate__`` still reads. The number changed so that a build from before refuses a format-6
snapshot instead of restoring its rule states empty (a downgrade lost moments, exit 0).
"""

from __future__ import annotations

import pickle
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from state.journey import Attempt, GenericAttempt
from state.plan import JourneyPlan
from state.record import CustomerState
from state.reorder import ReorderBuffer, upgrade_heap
from state.rule_model import RulePack
from state.versions import PackVersions, RuleLayout

SNAPSHOT_FORMAT: Final = 6
UPGRADABLE: Final = frozenset({4, 5})


Dirty = dict[tuple[str, int], tuple[CustomerState, int]]


def dump(pack: RulePack, customers: dict[str, CustomerState], held: ReorderBuffer, max_ts: int, wm: int,
         dirty: Dirty, finals: dict[str, int], part_max: dict[str, int] | None = None, full: str = "",
         layout: RuleLayout | None = None) -> bytes:
    """Return a shard's state as bytes (wake-ups are not included: each customer carries its own).

    ``full`` is the fingerprint of every version in force (``PackVersions.fingerprint``; default: the pack's);
    ``layout`` where each rule's state lives (``state.versions.RuleLayout``; default: the pack's own).
    """
    layout = layout if layout is not None else PackVersions.of([pack]).layout
    # Slot 1 holds the layout fingerprint; the full one (rule parameters included) and the rules follow at the end,
    # so a restart may change parameters (see ``load``).
    state = (SNAPSHOT_FORMAT, pack.layout_fingerprint(), customers, list(held.queue), held.heap, max_ts, wm,
             held.seq, [(k, t) for k, (_c, t) in dirty.items()], finals, dict(part_max or {}),
             full or pack.fingerprint(), pack.layout_rules(), layout.dump())
    return pickle.dumps(state, protocol=5)


def load(blob: bytes, pack: RulePack, plans: list[JourneyPlan], full_now: str = "",
         rebase: Callable[[RuleLayout, int], tuple[list[JourneyPlan], bool]] | None = None) -> tuple[
        dict[str, CustomerState], ReorderBuffer, int, int, Dirty, dict[str, int], dict[str, int], bool]:
    """Return (customers, reorder buffer, max_ts, watermark, dirty rows, final ticks, partitions' largest times,
    whether the rules or their parameters changed) from ``dump``'s bytes.

    A snapshot that records its rule layout restores under any rules of the same journeys: ``rebase`` is given
    that layout and the snapshot's watermark, and lays the rules now in force out after it (returning the journeys
    compiled so, and whether anything moved). An older one restores under a pack whose rules differ only in their
    parameters.

    Raises:
        ValueError: when they were taken with other journeys (or, without a layout, another rule set), or in a
            format that cannot be upgraded.
    """
    fmt, fp, customers, queue, heap, max_ts, wm, seq, dirty, *rest = pickle.loads(blob)  # noqa: S301
    moved = False
    if len(rest) > 4 and rebase is not None:
        check_format(fmt)
        plans, moved = rebase(RuleLayout.load(rest[4]), wm)
    else:
        check_pack(fmt, fp, rest, pack)
    # Older snapshots carry the full fingerprint in slot 1: they restore under the very same pack only.
    full = rest[2] if len(rest) > 2 else fp
    upgrade(fmt, customers, plans)
    if moved:
        _generic_attempts(customers, plans)
    rows: Dirty = {k: (customers[k[0]], t) for k, t in dirty if k[0] in customers}
    # A partition that ended before the snapshot reports 0 after a restart: keep what it said then.
    finals: dict[str, Any] = dict(rest[0]) if rest else {}
    # Snapshots from before per-partition watermarks have no partitions' times: the watermark restored stays, and
    # moves again once every open partition has reported (each resumes with its largest time and sends it).
    part_max: dict[str, Any] = dict(rest[1]) if len(rest) > 1 else {}
    retuned = moved or full != (full_now or pack.fingerprint())
    return (customers, ReorderBuffer(deque(queue), upgrade_heap(heap), seq), max_ts, wm, rows, finals, part_max,
            retuned)


def check_pack(fmt: object, fp: object, rest: list[Any], pack: RulePack) -> None:
    """Raise ValueError, naming what changed, when a snapshot's format or rule-pack layout cannot be restored."""
    check_format(fmt)
    if fp not in (pack.layout_fingerprint(), pack.fingerprint()):
        changed = pack.layout_changes(rest[3]) if len(rest) > 3 else "a different rule pack"
        raise ValueError(
            f"recovery state was built with a different rule pack ({changed}; fingerprint {fp}, now "
            f"{pack.layout_fingerprint()} for {pack.path}): only rule parameters may change across a restart; "
            "restart once with the old rules (that writes a snapshot with its rule layout, which later restarts "
            "may change), or start with a fresh recovery directory"
        )


def check_blob(blob: bytes, versions: PackVersions) -> None:
    """What ``load`` would refuse of a whole snapshot (as ``dump`` wrote it), before anything is restored."""
    fmt, fp, *state = pickle.loads(blob)  # noqa: S301 - our own recovery store
    rest = state[7:]
    if len(rest) <= 4:
        check_pack(fmt, fp, rest, versions.latest)
        return
    check_format(fmt)
    check_layout(RuleLayout.load(rest[4]), versions)


def check_layout(saved: RuleLayout, versions: PackVersions) -> PackVersions:
    """Return ``versions`` laid out after a snapshot's ``saved`` layout.

    Raises:
        ValueError: naming what to do, when the journeys changed or the rules cannot all be kept.
    """
    if saved.journeys != versions.layout.journeys:
        raise ValueError(f"recovery state was built with other journeys than those of {versions.path} (their ids, "
                         "order, steps, key steps or completion type changed): rules may change across a restart, "
                         "journeys may not; keep the journeys until a fresh start, or start with a fresh recovery "
                         "directory")
    rebased = versions.rebased(saved)
    problems = rebased.layout.problems()
    if problems:
        raise ValueError(f"recovery state: {problems[0]}")
    return rebased


def check_format(fmt: object) -> None:
    """Raise ValueError, saying what to do, when a snapshot's format is neither current nor upgradable."""
    if fmt != SNAPSHOT_FORMAT and fmt not in UPGRADABLE:
        raise ValueError(f"snapshot format {fmt} is not supported (expected {SNAPSHOT_FORMAT}, or "
                         f"{', '.join(map(str, sorted(UPGRADABLE)))} to upgrade); start with a fresh recovery "
                         "directory and replay the input")


def upgrade(fmt: int, customers: dict[str, CustomerState], plans: list[JourneyPlan]) -> None:
    """Bring customers unpickled from a snapshot of (checked) format ``fmt`` to the current format, in place."""
    if fmt != 4:
        return  # format 5 differs only in how rule states pickled, which they read either way
    for c in customers.values():
        for jidx, a in enumerate(c.attempts):
            if a is not None:
                _upgrade_attempt_v4(a, plans[jidx])


def _generic_attempts(customers: dict[str, CustomerState], plans: list[JourneyPlan]) -> None:
    """Lay the attempts out for generic rules added since the snapshot: a journey's first one gives its attempts
    their generic slot; later ones a place each at the end of the slot's list (the layout appends new rules)."""
    sizes = {i: len(p.generic.rules) for i, p in enumerate(plans) if p.generic is not None}
    if not sizes:
        return
    for c in customers.values():
        if any(c.attempts[i] is not None and not isinstance(c.attempts[i], GenericAttempt) for i in sizes):
            c.attempts = tuple(_with_g(a) if i in sizes and a is not None else a for i, a in enumerate(c.attempts))
        for i, n in sizes.items():
            a = c.attempts[i]
            if isinstance(a, GenericAttempt) and a.g is not None and len(a.g) < n:
                a.g.extend([None] * (n - len(a.g)))


def _with_g(a: Attempt) -> Attempt:
    if isinstance(a, GenericAttempt):
        return a
    g = GenericAttempt()
    g.__setstate__((*a.__getstate__(), None))
    return g


def _upgrade_attempt_v4(a: Attempt, plan: JourneyPlan) -> None:
    # Format 4 pickled Attempt's 16 slots in the order (…, reached, fails, entries, channels, views, intent_ts,
    # recent, stage); Attempt.__setstate__ put recent and stage in place and the other five in s0 … s4.
    fails, entries, channels, views, intent_ts = a.s0, a.s1, a.s2, a.s3, a.s4
    a.s0, a.s1, a.s2, a.s3, a.s4 = plan.initial
    old = {"stuck": (fails,), "maze": (entries,), "channel_hop": (channels,), "interested": (views, intent_ts)}
    for kind, values in old.items():
        d = plan.by_kind.get(kind)
        if d is not None:
            for i, v in enumerate(values):
                d.put(a, v, i)
