"""Generic kind ``count``: ``threshold`` events matching ``when`` within a span of ``within`` (DESIGN.md §8).

Fires on the event e that makes the ``threshold`` most recent matching events of e's ``per`` group span at most
``within`` (first to e). Without ``within`` the span is the whole attempt. An ``unless`` match in the journey in
the ``unless_within`` before e (this or an earlier attempt) drops that candidate; the window is kept, so a later
event can be a new candidate. Due = e.ts; anchor = e; evidence = the ``threshold`` events ending at e.
"""

from __future__ import annotations

from typing import Final, cast

from state.events import Event
from state.generic.base import NO_TS, Common, Firing, JourneyLike, RuleState, trim
from state.generic.checker import Checker
from state.generic.window import WindowRule, WindowSpec, WindowState, parse_window

KIND: Final[str] = "count"
PARAMS: Final[frozenset[str]] = frozenset({"when", "threshold", "within", "per", "unless", "unless_within",
                                                 "max_groups"})
MAX_THRESHOLD: Final[int] = 100


class CountSpec(WindowSpec):
    """Validated parameters of a ``count`` rule (journey-independent)."""

    __slots__ = ()


def parse(chk: Checker) -> CountSpec | None:
    """Validate the ``count`` parameters of ``chk.table``; None when any is invalid (problems recorded)."""
    w = parse_window(chk, 1, MAX_THRESHOLD)
    return None if w is None else CountSpec(*w)


class CountRule(WindowRule):
    """A compiled ``count`` rule for one journey; its records are flat (ts, event_id) pairs."""

    __slots__ = ("spec",)

    def __init__(self, common: Common, journey: JourneyLike, spec: CountSpec, source: dict[str, object]) -> None:
        """Compile the predicates for ``journey``."""
        super().__init__(KIND, common, journey, spec, source)
        self.spec = spec

    def on_event(self, st: RuleState, ev: Event) -> Firing | None:
        """Count ``ev`` in its group's window; return a firing when the threshold is reached and not blocked."""
        s: WindowState = st  # type: ignore[assignment]
        fired: Firing | None = None
        if not s.fired and self.when.matches(ev):
            recs = s.recs if self.per is None else None
            if recs is None:
                recs = self.records(s, ev)
            ts = ev.ts_ms
            recs.append(ts)
            recs.append(ev.event_id)
            n = self.threshold
            trim(recs, n, ts - self.within_ms if self.within_ms is not None else NO_TS)
            if len(recs) == 2 * n and not self.blocked(s, ts):
                fired = self.fire(s, ev, tuple(cast(str, recs[i]) for i in range(1, len(recs), 2)))
        if self.unless is not None:
            self.note_unless(s, ev)
        return fired
