"""What ``count`` and ``distinct`` share: a window of matching events per ``per`` group and the ``unless`` look-back.

Records are flat lists in (ts, event_id) order, one list per group (events without the ``per`` field form one
group of their own). ``unless`` keeps only the latest matching ts: events arrive in (ts, event_id) order, so
every earlier match comes before the candidate, and the latest is the one that can still be within reach.

Memory is bounded per rule and attempt: a group holds at most ``threshold`` records; groups sit in a dict in
the order they last matched, so the groups whose newest record has left ``within`` are at its front and go
when a new group comes (they can no longer matter); beyond ``max_groups`` groups the least recently matched
one is dropped and counted (``dropped``, ``cx_generic_groups_dropped_total``).
"""

from __future__ import annotations

from typing import Final, cast

from state.events import Event
from state.generic.base import NO_TS, Common, Firing, GenericRule, JourneyLike, Records, RuleState
from state.generic.checker import Checker
from state.generic.predicates import FieldRef, FieldValue, Predicate, types_of

DEFAULT_MAX_GROUPS: Final[int] = 1_000
MAX_MAX_GROUPS: Final[int] = 100_000


class WindowSpec:
    """Validated parameters shared by ``count`` and ``distinct`` (journey-independent)."""

    __slots__ = ("max_groups", "per", "threshold", "unless", "unless_within_ms", "when", "within_ms")

    def __init__(self, when: dict[str, list[str]], threshold: int, within_ms: int | None, per: FieldRef | None,
                 unless: dict[str, list[str]] | None, unless_within_ms: int | None,
                 max_groups: int = DEFAULT_MAX_GROUPS) -> None:
        """Hold the parameters."""
        self.when = when
        self.threshold = threshold
        self.within_ms = within_ms
        self.per = per
        self.unless = unless
        self.unless_within_ms = unless_within_ms
        self.max_groups = max_groups


def parse_window(chk: Checker, min_threshold: int, max_threshold: int
                 ) -> tuple[dict[str, list[str]], int, int | None, FieldRef | None, dict[str, list[str]] | None,
                            int | None, int] | None:
    """Validate ``when``, ``threshold``, ``within``, ``per``, ``unless``, ``unless_within`` and ``max_groups``.

    Returns:
        The parameters in ``WindowSpec`` order, or None when any is invalid (problems recorded).
    """
    when = chk.predicate("when", required=False) if "when" in chk.table else {}
    threshold = chk.integer("threshold", min_threshold, max_threshold)
    within = chk.duration("within", required=False)
    per = chk.field_name("per", required=False)
    max_groups = chk.integer("max_groups", 1, MAX_MAX_GROUPS, DEFAULT_MAX_GROUPS)
    if "max_groups" in chk.table and "per" not in chk.table:
        chk.error("max_groups", "is only meaningful with `per` (without it there is one group)")
        max_groups = None
    has_u, has_w = "unless" in chk.table, "unless_within" in chk.table
    unless = chk.predicate("unless", required=False)
    unless_within = chk.duration("unless_within", required=False)
    ok = (unless is not None) == has_u and (unless_within is not None) == has_w
    if has_u and not has_w:
        chk.error("unless_within", "is required with `unless` (how far back an `unless` event blocks)")
        ok = False
    if has_w and not has_u:
        chk.error("unless", "is required with `unless_within`")
        ok = False
    if (when is None or threshold is None or (within is None and "within" in chk.table)
            or (per is None and "per" in chk.table) or max_groups is None or not ok):
        return None
    return when, threshold, within, per, unless, unless_within, max_groups


class WindowState(RuleState):
    """Per attempt: the window's flat records, one list without ``per``, else one per group."""

    __slots__ = ("groups", "recs")

    def __init__(self) -> None:
        """Empty windows."""
        super().__init__()
        self.recs: Records | None = None
        self.groups: dict[FieldValue | None, Records] | None = None

    def fields(self) -> tuple[str, ...]:
        """The names a snapshot keeps, in order."""
        return ("fired", "unless_ms", "groups", "recs")

    def end_attempt(self) -> None:
        """Clear the windows and the fired flag."""
        self.fired = False
        self.recs = None
        self.groups = None


class WindowRule(GenericRule):
    """A compiled ``count`` or ``distinct`` rule for one journey: windows, groups and ``unless``."""

    __slots__ = ("dropped", "max_groups", "per", "threshold", "unless", "unless_within_ms", "when", "within_ms")

    def __init__(self, kind: str, common: Common, journey: JourneyLike, spec: WindowSpec,
                 source: dict[str, object]) -> None:
        """Compile the predicates for ``journey``."""
        self.when = Predicate(spec.when, journey.key_steps)
        self.unless = None if spec.unless is None else Predicate(spec.unless, journey.key_steps)
        super().__init__(kind, common, journey, source, types_of((self.when, self.unless)))
        self.threshold = spec.threshold
        self.within_ms = spec.within_ms
        self.per = spec.per
        self.unless_within_ms = spec.unless_within_ms if spec.unless_within_ms is not None else 0
        self.max_groups = spec.max_groups
        # Groups dropped by the cap since the shard last collected them (``take_dropped``).
        self.dropped = 0

    def new_state(self) -> RuleState:
        """Return empty windows."""
        return WindowState()

    def lookback_ms(self) -> int:
        """The ``unless_within`` look-back."""
        return self.unless_within_ms

    def records(self, s: WindowState, ev: Event) -> Records:
        """Return the records of ``ev``'s group (created empty when new)."""
        if self.per is None:
            recs = s.recs
            if recs is None:
                recs = s.recs = []
            return recs
        groups = s.groups
        if groups is None:
            groups = s.groups = {}
        g = self.per.value(ev)
        # Popped and put back: the dict stays in the order the groups last matched (least recent first).
        recs = groups.pop(g, None)
        if recs is None:
            recs = []
            if groups:
                self._make_room(groups, ev.ts_ms)
        groups[g] = recs
        return recs

    def _make_room(self, groups: dict[FieldValue | None, Records], ts: int) -> None:
        """Before a new group: drop the groups whose window has emptied, then the least recent beyond the cap."""
        if self.within_ms is not None:
            oldest = ts - self.within_ms
            # Every record holds its ts second to last: the newest record of a group is its last one.
            while groups and cast(int, groups[next(iter(groups))][-2]) < oldest:
                del groups[next(iter(groups))]
        if len(groups) >= self.max_groups:
            del groups[next(iter(groups))]
            self.dropped += 1

    def take_dropped(self) -> int:
        """Return the groups dropped by the cap since the last call, and reset the count."""
        n = self.dropped
        self.dropped = 0
        return n

    def blocked(self, s: WindowState, ts: int) -> bool:
        """Whether an ``unless`` match before the candidate at ``ts`` lies within ``unless_within``."""
        return self.unless is not None and s.unless_ms != NO_TS and s.unless_ms >= ts - self.unless_within_ms

    def fire(self, s: WindowState, ev: Event, evidence: tuple[str, ...]) -> Firing:
        """Fire on ``ev``: the attempt's one firing; the windows are no longer needed."""
        s.fired = True
        s.recs = None
        s.groups = None
        return Firing(self.name, ev.ts_ms, ev.event_id, evidence)

    def note_unless(self, s: WindowState, ev: Event) -> None:
        """Remember ``ev`` if it matches ``unless`` (after the candidate check: an event never blocks itself)."""
        if self.unless is not None and ev.ts_ms > s.unless_ms and self.unless.matches(ev):
            s.unless_ms = ev.ts_ms

    def is_empty(self, st: RuleState, now_ms: int) -> bool:
        """True when no window and no live ``unless`` look-back is held."""
        s: WindowState = st  # type: ignore[assignment]
        return not s.fired and s.recs is None and s.groups is None and super().is_empty(st, now_ms)
