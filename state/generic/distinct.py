"""Generic kind ``distinct``: events matching ``when`` carrying ``threshold`` distinct values of ``field``.

Fires on an event e (matching ``when`` and carrying the field) when the matching events of e's ``per`` group in
[e.ts - within, e] carry at least ``threshold`` distinct values (the whole attempt without ``within``). ``unless``
blocks as for ``count``. Due = e.ts; anchor = e; evidence = per distinct value its most recent event.
"""

from __future__ import annotations

from typing import Final, cast

from state.events import Event
from state.generic.base import NO_TS, Common, Firing, GenericRule, JourneyLike, RuleState
from state.generic.checker import Checker
from state.generic.count import check_unless
from state.generic.predicates import FieldRef, Predicate, types_of

KIND: Final[str] = "distinct"
PARAMS: Final[frozenset[str]] = frozenset({"when", "field", "threshold", "within", "per", "unless", "unless_within"})
MAX_THRESHOLD: Final[int] = 100
# Per group, flat: [value, ts, event_id, ...], the most recent event of each distinct value, oldest first.
Values = list[int | str]


class DistinctSpec:
    """Validated parameters of a ``distinct`` rule (journey-independent)."""

    __slots__ = ("field", "per", "threshold", "unless", "unless_within_ms", "when", "within_ms")

    def __init__(self, when: dict[str, list[str]], field: FieldRef, threshold: int, within_ms: int | None,
                 per: FieldRef | None, unless: dict[str, list[str]] | None, unless_within_ms: int | None) -> None:
        """Hold the parameters."""
        self.when = when
        self.field = field
        self.threshold = threshold
        self.within_ms = within_ms
        self.per = per
        self.unless = unless
        self.unless_within_ms = unless_within_ms


def parse(chk: Checker) -> DistinctSpec | None:
    """Validate the ``distinct`` parameters of ``chk.table``; None when any is invalid (problems recorded)."""
    when = chk.predicate("when", required=False) if "when" in chk.table else {}
    field = chk.field_name("field", required=True)
    threshold = chk.integer("threshold", 2, MAX_THRESHOLD)
    within = chk.duration("within", required=False)
    per = chk.field_name("per", required=False)
    unless, unless_within, ok = check_unless(chk)
    if (when is None or field is None or threshold is None or (within is None and "within" in chk.table)
            or (per is None and "per" in chk.table) or not ok):
        return None
    return DistinctSpec(when, field, threshold, within, per, unless, unless_within)


class DistinctState(RuleState):
    """Per attempt: per ``per`` group, each distinct value's most recent event (flat records)."""

    __slots__ = ("groups", "values")

    def __init__(self) -> None:
        """Empty windows."""
        super().__init__()
        self.values: Values | None = None
        self.groups: dict[str | None, Values] | None = None

    def end_attempt(self) -> None:
        """Clear the windows and the fired flag."""
        self.fired = False
        self.values = None
        self.groups = None


class DistinctRule(GenericRule):
    """A compiled ``distinct`` rule for one journey."""

    __slots__ = ("field", "per", "spec", "threshold", "unless", "unless_within_ms", "when", "within_ms")

    def __init__(self, common: Common, journey: JourneyLike, spec: DistinctSpec, source: dict[str, object]) -> None:
        """Compile the predicates for ``journey``."""
        self.when = Predicate(spec.when, journey.key_steps)
        self.unless = None if spec.unless is None else Predicate(spec.unless, journey.key_steps)
        super().__init__(KIND, common, journey, source, types_of((self.when, self.unless)))
        self.spec = spec
        self.field = spec.field
        self.threshold = spec.threshold
        self.within_ms = spec.within_ms
        self.per = spec.per
        self.unless_within_ms = spec.unless_within_ms if spec.unless_within_ms is not None else 0

    def new_state(self) -> RuleState:
        """Return empty windows."""
        return DistinctState()

    def lookback_ms(self) -> int:
        """The ``unless_within`` look-back."""
        return self.unless_within_ms

    def on_event(self, st: RuleState, ev: Event) -> Firing | None:
        """Record ``ev``'s value; return a firing when enough distinct values are in the window and not blocked."""
        s: DistinctState = st  # type: ignore[assignment]
        fired: Firing | None = None
        if not s.fired and self.when.matches(ev):
            v = self.field.value(ev)
            if v is not None:
                fired = self._add(s, ev, v)
        if self.unless is not None and self.unless.matches(ev) and ev.ts_ms > s.unless_ms:
            s.unless_ms = ev.ts_ms
        return fired

    def _add(self, s: DistinctState, ev: Event, v: str) -> Firing | None:
        if self.per is None:
            recs = s.values
            if recs is None:
                recs = s.values = []
        else:
            groups = s.groups
            if groups is None:
                groups = s.groups = {}
            g = self.per.value(ev)
            recs = groups.get(g)
            if recs is None:
                recs = groups[g] = []
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
        if self.within_ms is not None:
            oldest = ts - self.within_ms
            drop = 0
            while recs[drop + 1] < oldest:  # type: ignore[operator]
                drop += 3
            if drop:
                del recs[:drop]
        if len(recs) < 3 * self.threshold:
            return None
        if self.unless is not None and s.unless_ms != NO_TS and s.unless_ms >= ts - self.unless_within_ms:
            return None
        s.fired = True
        s.values = None
        s.groups = None
        return Firing(self.name, ts, ev.event_id, tuple(cast(str, recs[i]) for i in range(2, len(recs), 3)))

    def is_empty(self, st: RuleState, now_ms: int) -> bool:
        """True when no window and no live ``unless`` look-back is held."""
        s: DistinctState = st  # type: ignore[assignment]
        return not s.fired and s.values is None and s.groups is None and super().is_empty(st, now_ms)
