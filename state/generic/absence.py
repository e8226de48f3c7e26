"""Generic kind ``absence``: nothing (or nothing matching ``until``) for ``idle`` after an event matching ``when``.

An event matching ``until`` (any event of the journey without ``until``) disarms; then an event matching
``when`` arms at its ts (the latest arming wins; the journey's completion type never arms). The rule fires when
the watermark reaches arm.ts + idle; wake-ups run before events at the same ts, so an event at exactly +idle
does not disarm. Due = arm.ts + idle; anchor and evidence = the arming event.
"""

from __future__ import annotations

from typing import Final

from state.events import Event
from state.generic.base import NO_TS, Common, Firing, GenericRule, JourneyLike, RuleState
from state.generic.checker import Checker
from state.generic.predicates import Predicate, types_of

KIND: Final[str] = "absence"
PARAMS: Final[frozenset[str]] = frozenset({"when", "idle", "until"})


class AbsenceSpec:
    """Validated parameters of an ``absence`` rule (journey-independent)."""

    __slots__ = ("idle_ms", "until", "when")

    def __init__(self, when: dict[str, list[str]], idle_ms: int, until: dict[str, list[str]] | None) -> None:
        """Hold the parameters."""
        self.when = when
        self.idle_ms = idle_ms
        self.until = until


def parse(chk: Checker, attempt_timeout_ms: int) -> AbsenceSpec | None:
    """Validate the ``absence`` parameters; ``idle`` must be shorter than the pack's attempt timeout."""
    when = chk.predicate("when", required=False) if "when" in chk.table else {}
    idle = chk.duration("idle", required=True)
    until = chk.predicate("until", required=False)
    if idle is not None and idle >= attempt_timeout_ms:
        chk.error("idle", f"must be shorter than the pack's attempt_timeout ({attempt_timeout_ms} ms), "
                          f"got {idle} ms")
        idle = None
    if when is None or idle is None or (until is None and "until" in chk.table):
        return None
    return AbsenceSpec(when, idle, until)


class AbsenceState(RuleState):
    """Per attempt: the armed timer's event (ts and id), if any."""

    __slots__ = ("arm_id", "arm_ms")

    def __init__(self) -> None:
        """Not armed."""
        super().__init__()
        self.arm_ms = NO_TS
        self.arm_id = ""

    def fields(self) -> tuple[str, ...]:
        """The names a snapshot keeps, in order."""
        return ("fired", "unless_ms", "arm_id", "arm_ms")

    def end_attempt(self) -> None:
        """Disarm and clear the fired flag."""
        self.fired = False
        self.arm_ms = NO_TS
        self.arm_id = ""


class AbsenceRule(GenericRule):
    """A compiled ``absence`` rule for one journey."""

    __slots__ = ("idle_ms", "spec", "until", "when")

    def __init__(self, common: Common, journey: JourneyLike, spec: AbsenceSpec, source: dict[str, object]) -> None:
        """Compile the predicates for ``journey``."""
        self.when = Predicate(spec.when, journey.key_steps)
        self.until = None if spec.until is None else Predicate(spec.until, journey.key_steps)
        # Without `until` every event of the journey disarms, so the rule reacts to every type.
        reacts = types_of((self.when, self.until)) if self.until is not None else None
        super().__init__(KIND, common, journey, source, reacts)
        self.spec = spec
        self.idle_ms = spec.idle_ms

    def new_state(self) -> RuleState:
        """Return a disarmed state."""
        return AbsenceState()

    def on_event(self, st: RuleState, ev: Event) -> Firing | None:
        """Disarm on ``until`` (any event without it), then arm on ``when``; never fires here."""
        s: AbsenceState = st  # type: ignore[assignment]
        if s.fired:
            return None
        if self.until is None or self.until.matches(ev):
            s.arm_ms = NO_TS
            s.arm_id = ""
        if ev.type != self.complete_type and self.when.matches(ev):
            s.arm_ms = ev.ts_ms
            s.arm_id = ev.event_id
        return None

    def due_ms(self, st: RuleState) -> int:
        """Arm ts + idle while armed, else ``NO_TS``."""
        s: AbsenceState = st  # type: ignore[assignment]
        return s.arm_ms + self.idle_ms if s.arm_ms != NO_TS else NO_TS

    def on_wake(self, st: RuleState, now_ms: int) -> Firing | None:
        """Fire when the armed timer is due at or before ``now_ms``."""
        s: AbsenceState = st  # type: ignore[assignment]
        if s.arm_ms == NO_TS or s.arm_ms + self.idle_ms > now_ms:
            return None
        f = Firing(self.name, s.arm_ms + self.idle_ms, s.arm_id, (s.arm_id,))
        s.fired = True
        s.arm_ms = NO_TS
        s.arm_id = ""
        return f

    def armed_ms(self, due_ms: int) -> int:
        """The arming event's ts: ``idle`` before the due time."""
        return due_ms - self.idle_ms

    def is_empty(self, st: RuleState, now_ms: int) -> bool:
        """True when not armed and not fired."""
        s: AbsenceState = st  # type: ignore[assignment]
        return not s.fired and s.arm_ms == NO_TS
