"""Generic kind ``distinct``: events matching ``when`` carrying ``threshold`` distinct values of ``field``.

Fires on an event e (matching ``when`` and carrying the field) when the matching events of e's ``per`` group in
[e.ts - within, e] carry at least ``threshold`` distinct values (the whole attempt without ``within``). ``unless``
blocks as for ``count``. Due = e.ts; anchor = e; evidence = the ``threshold`` most recent distinct values, each by
its most recent event (oldest first). Only those are kept, so a blocked rule without ``within`` stays bounded.
"""

from __future__ import annotations

from typing import Final, cast

from state.events import Event
from state.generic.base import Common, Firing, JourneyLike, RuleState
from state.generic.checker import Checker
from state.generic.predicates import FieldRef, FieldValue
from state.generic.window import WindowRule, WindowSpec, WindowState, parse_window

KIND: Final[str] = "distinct"
PARAMS: Final[frozenset[str]] = frozenset({"when", "field", "threshold", "within", "per", "unless", "unless_within",
                                                 "max_groups"})
MAX_THRESHOLD: Final[int] = 100


class DistinctSpec(WindowSpec):
    """Validated parameters of a ``distinct`` rule (journey-independent)."""

    __slots__ = ("field",)

    def __init__(self, field: FieldRef, when: dict[str, list[str]], threshold: int, within_ms: int | None,
                 per: FieldRef | None, unless: dict[str, list[str]] | None, unless_within_ms: int | None,
                 max_groups: int) -> None:
        """Hold the parameters."""
        super().__init__(when, threshold, within_ms, per, unless, unless_within_ms, max_groups)
        self.field = field


def parse(chk: Checker) -> DistinctSpec | None:
    """Validate the ``distinct`` parameters of ``chk.table``; None when any is invalid (problems recorded)."""
    field = chk.field_name("field", required=True)
    w = parse_window(chk, 2, MAX_THRESHOLD)
    return None if w is None or field is None else DistinctSpec(field, *w)


class DistinctRule(WindowRule):
    """A compiled ``distinct`` rule; its records are flat (value, ts, event_id): each value's latest event."""

    __slots__ = ("field", "spec")

    def __init__(self, common: Common, journey: JourneyLike, spec: DistinctSpec, source: dict[str, object]) -> None:
        """Compile the predicates for ``journey``."""
        super().__init__(KIND, common, journey, spec, source)
        self.spec = spec
        self.field = spec.field

    def on_event(self, st: RuleState, ev: Event) -> Firing | None:
        """Record ``ev``'s value; return a firing when enough distinct values are in the window and not blocked."""
        s: WindowState = st  # type: ignore[assignment]
        fired: Firing | None = None
        if not s.fired and self.when.matches(ev):
            v = self.field.value(ev)
            if v is not None:
                fired = self._add(s, ev, v)
        if self.unless is not None:
            self.note_unless(s, ev)
        return fired

    def _add(self, s: WindowState, ev: Event, v: FieldValue) -> Firing | None:
        recs = s.recs if self.per is None else None
        if recs is None:
            recs = self.records(s, ev)
        ts = ev.ts_ms
        n = len(recs)
        if n and recs[n - 3] == v:
            # The common case (the same channel, entry, ... as the last event): refresh the newest record.
            recs[n - 2] = ts
            recs[n - 1] = ev.event_id
        else:
            # Records stay in (ts, event_id) order: a value seen again moves to the end.
            for i in range(0, n - 3, 3):
                if recs[i] == v:
                    del recs[i : i + 3]
                    break
            recs.append(v)
            recs.append(ts)
            recs.append(ev.event_id)
            if len(recs) > 3 * self.threshold:
                # The `threshold` most recent values decide (the window is a suffix in time) and are the
                # evidence: an older one can never count again unless it comes back, and then it is new.
                del recs[:3]
        if self.within_ms is not None:
            oldest = ts - self.within_ms
            drop = 0
            while recs[drop + 1] < oldest:  # type: ignore[operator]
                drop += 3
            if drop:
                del recs[:drop]
        if len(recs) < 3 * self.threshold:
            return None
        if self.blocked(s, ts):
            return None
        return self.fire(s, ev, tuple(cast(str, recs[i]) for i in range(2, len(recs), 3)))
