"""Generic kind ``count``: ``threshold`` events matching ``when`` within a span of ``within`` (DESIGN.md §8).

Fires on the event e that makes the ``threshold`` most recent matching events of e's ``per`` group span at most
``within`` (first to e). Without ``within`` the span is the whole attempt. An ``unless`` match in the journey in
the ``unless_within`` before e (this or an earlier attempt) drops that candidate; the window is kept, so a later
event can be a new candidate. Due = e.ts; anchor = e; evidence = the ``threshold`` events ending at e.
"""

from __future__ import annotations

from typing import Final, cast

from state.events import Event
from state.generic.base import NO_TS, Common, Firing, GenericRule, JourneyLike, Records, RuleState, trim
from state.generic.checker import Checker
from state.generic.predicates import FieldRef, Predicate, types_of

KIND: Final[str] = "count"
PARAMS: Final[frozenset[str]] = frozenset({"when", "threshold", "within", "per", "unless", "unless_within"})
MAX_THRESHOLD: Final[int] = 100


class CountSpec:
    """Validated parameters of a ``count`` rule (journey-independent)."""

    __slots__ = ("per", "threshold", "unless", "unless_within_ms", "when", "within_ms")

    def __init__(self, when: dict[str, list[str]], threshold: int, within_ms: int | None, per: FieldRef | None,
                 unless: dict[str, list[str]] | None, unless_within_ms: int | None) -> None:
        """Hold the parameters."""
        self.when = when
        self.threshold = threshold
        self.within_ms = within_ms
        self.per = per
        self.unless = unless
        self.unless_within_ms = unless_within_ms


def check_unless(chk: Checker) -> tuple[dict[str, list[str]] | None, int | None, bool]:
    """Read ``unless`` + ``unless_within`` (both or neither); return them and whether they are valid."""
    has_u, has_w = "unless" in chk.table, "unless_within" in chk.table
    unless = chk.predicate("unless", required=False)
    within = chk.duration("unless_within", required=False)
    ok = (unless is not None) == has_u and (within is not None) == has_w
    if has_u and not has_w:
        chk.error("unless_within", "is required with `unless` (how far back an `unless` event blocks)")
        ok = False
    if has_w and not has_u:
        chk.error("unless", "is required with `unless_within`")
        ok = False
    return unless, within, ok


def parse(chk: Checker) -> CountSpec | None:
    """Validate the ``count`` parameters of ``chk.table``; None when any is invalid (problems recorded)."""
    when = chk.predicate("when", required=False) if "when" in chk.table else {}
    threshold = chk.integer("threshold", 1, MAX_THRESHOLD)
    within = chk.duration("within", required=False)
    per = chk.field_name("per", required=False)
    unless, unless_within, ok = check_unless(chk)
    if (when is None or threshold is None or (within is None and "within" in chk.table)
            or (per is None and "per" in chk.table) or not ok):
        return None
    return CountSpec(when, threshold, within, per, unless, unless_within)


class CountState(RuleState):
    """Per attempt: the newest matching events, as flat (ts, event_id) records; one window per ``per`` group."""

    __slots__ = ("groups", "recs")

    def __init__(self) -> None:
        """Empty windows."""
        super().__init__()
        self.recs: Records | None = None
        self.groups: dict[str | None, Records] | None = None

    def end_attempt(self) -> None:
        """Clear the windows and the fired flag."""
        self.fired = False
        self.recs = None
        self.groups = None


class CountRule(GenericRule):
    """A compiled ``count`` rule for one journey."""

    __slots__ = ("per", "spec", "threshold", "unless", "unless_within_ms", "when", "within_ms")

    def __init__(self, common: Common, journey: JourneyLike, spec: CountSpec, source: dict[str, object]) -> None:
        """Compile the predicates for ``journey``."""
        self.when = Predicate(spec.when, journey.key_steps)
        self.unless = None if spec.unless is None else Predicate(spec.unless, journey.key_steps)
        super().__init__(KIND, common, journey, source, types_of((self.when, self.unless)))
        self.spec = spec
        self.threshold = spec.threshold
        self.within_ms = spec.within_ms
        self.per = spec.per
        self.unless_within_ms = spec.unless_within_ms if spec.unless_within_ms is not None else 0

    def new_state(self) -> RuleState:
        """Return empty windows."""
        return CountState()

    def lookback_ms(self) -> int:
        """The ``unless_within`` look-back."""
        return self.unless_within_ms

    def on_event(self, st: RuleState, ev: Event) -> Firing | None:
        """Count ``ev`` in its group's window; return a firing when the threshold is reached and not blocked."""
        s: CountState = st  # type: ignore[assignment]
        fired: Firing | None = None
        if not s.fired and self.when.matches(ev):
            fired = self._count(s, ev)
        if self.unless is not None and self.unless.matches(ev) and ev.ts_ms > s.unless_ms:
            # After the candidate check: an event never blocks itself.
            s.unless_ms = ev.ts_ms
        return fired

    def _count(self, s: CountState, ev: Event) -> Firing | None:
        if self.per is None:
            recs = s.recs
            if recs is None:
                recs = s.recs = []
        else:
            groups = s.groups
            if groups is None:
                groups = s.groups = {}
            g = self.per.value(ev)
            recs = groups.get(g)
            if recs is None:
                recs = groups[g] = []
        ts = ev.ts_ms
        recs.append(ts)
        recs.append(ev.event_id)
        n = self.threshold
        trim(recs, n, ts - self.within_ms if self.within_ms is not None else NO_TS)
        if len(recs) < 2 * n:
            return None
        if self.unless is not None and s.unless_ms != NO_TS and s.unless_ms >= ts - self.unless_within_ms:
            return None
        s.fired = True
        s.recs = None
        s.groups = None
        return Firing(self.name, ts, ev.event_id, tuple(cast(str, recs[i]) for i in range(1, len(recs), 2)))

    def is_empty(self, st: RuleState, now_ms: int) -> bool:
        """True when no window and no live ``unless`` look-back is held."""
        s: CountState = st  # type: ignore[assignment]
        return not s.fired and s.recs is None and s.groups is None and super().is_empty(st, now_ms)
