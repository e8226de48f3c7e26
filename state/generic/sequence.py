"""Generic kind ``sequence``: an event matching ``first`` followed by one matching ``then`` within ``within``.

Fires on a ``then`` event when an open ``first`` f has then.ts - f.ts <= within and no ``unless`` match lies
strictly between them in (ts, event_id) order. Only the latest open ``first`` is kept: if any qualifies, it
does, and an ``unless`` match closes them all. An event matching both ``then`` and ``first`` first closes the
earlier ``first`` (and may fire), then opens its own. Due = then.ts; anchor = the ``then`` event; evidence =
(first, then).
"""

from __future__ import annotations

from typing import Final

from state.events import Event
from state.generic.base import NO_TS, Common, Firing, GenericRule, JourneyLike, RuleState
from state.generic.checker import Checker
from state.generic.predicates import Predicate, types_of

KIND: Final[str] = "sequence"
PARAMS: Final[frozenset[str]] = frozenset({"first", "then", "within", "unless"})


class SequenceSpec:
    """Validated parameters of a ``sequence`` rule (journey-independent)."""

    __slots__ = ("first", "then", "unless", "within_ms")

    def __init__(self, first: dict[str, list[str]], then: dict[str, list[str]], within_ms: int,
                 unless: dict[str, list[str]] | None) -> None:
        """Hold the parameters."""
        self.first = first
        self.then = then
        self.within_ms = within_ms
        self.unless = unless


def parse(chk: Checker) -> SequenceSpec | None:
    """Validate the ``sequence`` parameters; None when any is invalid (problems recorded)."""
    first = chk.predicate("first", required=True)
    then = chk.predicate("then", required=True)
    within = chk.duration("within", required=True)
    unless = chk.predicate("unless", required=False)
    if first is None or then is None or within is None or (unless is None and "unless" in chk.table):
        return None
    return SequenceSpec(first, then, within, unless)


class SequenceState(RuleState):
    """Per attempt: the latest open ``first`` event (ts and id), if any."""

    __slots__ = ("first_id", "first_ms")

    def __init__(self) -> None:
        """Nothing open."""
        super().__init__()
        self.first_ms = NO_TS
        self.first_id = ""

    def fields(self) -> tuple[str, ...]:
        """The names a snapshot keeps, in order."""
        return ("fired", "unless_ms", "first_id", "first_ms")

    def end_attempt(self) -> None:
        """Close the open ``first`` and clear the fired flag."""
        self.fired = False
        self.first_ms = NO_TS
        self.first_id = ""


class SequenceRule(GenericRule):
    """A compiled ``sequence`` rule for one journey."""

    __slots__ = ("first", "spec", "then", "unless", "within_ms")

    def __init__(self, common: Common, journey: JourneyLike, spec: SequenceSpec, source: dict[str, object]) -> None:
        """Compile the predicates for ``journey``."""
        self.first = Predicate(spec.first, journey.key_steps)
        self.then = Predicate(spec.then, journey.key_steps)
        self.unless = None if spec.unless is None else Predicate(spec.unless, journey.key_steps)
        super().__init__(KIND, common, journey, source, types_of((self.first, self.then, self.unless)))
        self.spec = spec
        self.within_ms = spec.within_ms

    def new_state(self) -> RuleState:
        """Return a state with nothing open."""
        return SequenceState()

    def on_event(self, st: RuleState, ev: Event) -> Firing | None:
        """Close (and maybe fire) on ``then``, close on ``unless``, then open on ``first``."""
        s: SequenceState = st  # type: ignore[assignment]
        if s.fired:
            return None
        ts = ev.ts_ms
        if s.first_ms != NO_TS and self.then.matches(ev) and ts - s.first_ms <= self.within_ms:
            f = Firing(self.name, ts, ev.event_id, (s.first_id, ev.event_id))
            s.fired = True
            s.first_ms = NO_TS
            s.first_id = ""
            return f
        if self.unless is not None and self.unless.matches(ev):
            s.first_ms = NO_TS
            s.first_id = ""
        if self.first.matches(ev):
            s.first_ms = ts
            s.first_id = ev.event_id
        return None

    def is_empty(self, st: RuleState, now_ms: int) -> bool:
        """True when nothing is open and the rule has not fired."""
        s: SequenceState = st  # type: ignore[assignment]
        return not s.fired and s.first_ms == NO_TS
