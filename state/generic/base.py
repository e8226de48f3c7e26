"""What every generic rule shares: the firing it returns, its per-attempt state and its interface to the shard.

A rule is compiled once per pack load and journey (``<journey>.<name>``); its per-customer state lives in a
``RuleState`` the caller keeps with the customer's attempt of the journey. The caller feeds events of the
journey in (ts, event_id) order, wakes rules whose ``due_ms`` the watermark reached (before events at the same
ts), and calls ``end_attempt`` when the attempt ends (completion or attempt timeout).
"""

from __future__ import annotations

from typing import Any, Final, Protocol, cast

from state.events import Event

NO_TS: Final[int] = -1
# Flat window records: [ts, event_id, ts, event_id, ...], oldest first (one list, no tuple per event).
Records = list[int | float | str | tuple[str, int | float | bool]]


class JourneyLike(Protocol):
    """What a rule needs of its journey (``state.rules.JourneyDef`` has it)."""

    @property
    def id(self) -> str: ...  # noqa: D102

    @property
    def key_steps(self) -> frozenset[str]: ...  # noqa: D102

    @property
    def complete_type(self) -> str: ...  # noqa: D102


class Firing:
    """A rule that fired: its name, due time, anchoring event (the moment id's) and evidence ids in order."""

    __slots__ = ("anchor", "due_ms", "evidence", "rule")

    def __init__(self, rule: str, due_ms: int, anchor: str, evidence: tuple[str, ...]) -> None:
        """Build a firing."""
        self.rule = rule
        self.due_ms = due_ms
        self.anchor = anchor
        self.evidence = evidence

    def key(self) -> tuple[str, int, str]:
        """(rule, due_ms, anchor): what identifies the moment."""
        return (self.rule, self.due_ms, self.anchor)

    def __repr__(self) -> str:
        return f"Firing({self.rule!r}, {self.due_ms}, {self.anchor!r}, {self.evidence!r})"


class RuleState:
    """Per customer, journey and rule: the fired flag of the attempt and the latest ``unless`` match.

    ``unless_ms`` spans attempts (DESIGN.md §8: the look-back is not cleared at attempt end); everything
    else belongs to the attempt.
    """

    __slots__ = ("fired", "unless_ms")

    def __init__(self) -> None:
        """An empty state: nothing seen."""
        self.fired = False
        self.unless_ms = NO_TS

    def fields(self) -> tuple[str, ...]:
        """The names a snapshot keeps, in order (a subclass adds its own)."""
        return ("fired", "unless_ms")

    # Snapshots: one format for both builds. Without these, pickle kept pure Python's (None, {slot: value}) and
    # mypyc's {attribute: value}, and each build misread the other's: restoring a compiled build's snapshot in
    # pure Python failed, and a pure one's restored in the compiled build came back empty (timers disarmed).
    def __getstate__(self) -> tuple[object, ...]:
        return tuple(getattr(self, n) for n in self.fields())

    def __setstate__(self, st: Any) -> None:
        if isinstance(st, tuple) and len(st) == 2 and st[0] is None and isinstance(st[1], dict):
            st = st[1]  # pure Python's default, in a snapshot taken before the format was set
        if isinstance(st, dict):  # either build's default, by name
            for name, value in st.items():
                setattr(self, name, value)
            return
        for name, value in zip(self.fields(), st, strict=True):
            setattr(self, name, value)

    def end_attempt(self) -> None:
        """Forget the attempt (windows, timers, fired flag), keep the ``unless`` look-back."""
        self.fired = False


class Common:
    """The fields every rule has besides its kind's parameters (validated by ``state.generic.schema``)."""

    __slots__ = ("act_within_ms", "action", "channels", "contact", "holdout", "name", "stages", "ttl_ms", "urgency")

    def __init__(self, name: str, urgency: str, action: str, ttl_ms: int, channels: tuple[str, ...],
                 act_within_ms: int | None, holdout: float | None, stages: tuple[str, ...], contact: bool) -> None:
        """Hold validated common fields; None for act_within/holdout means the pack's policy default."""
        self.name = name
        self.urgency = urgency
        self.action = action
        self.ttl_ms = ttl_ms
        self.channels = channels
        self.act_within_ms = act_within_ms
        self.holdout = holdout
        self.stages = stages
        self.contact = contact


class GenericRule:
    """A compiled generic rule for one journey; subclasses implement one kind each."""

    __slots__ = ("common", "complete_type", "journey", "kind", "name", "reacts_to", "source")

    def __init__(self, kind: str, common: Common, journey: JourneyLike, source: dict[str, object],
                 reacts_to: frozenset[str] | None) -> None:
        """Set the shared fields; ``reacts_to`` is None when the rule reacts to every event type."""
        self.kind = kind
        self.common = common
        self.journey = journey.id
        self.complete_type = journey.complete_type
        self.name = f"{journey.id}.{common.name}"
        self.source = source
        self.reacts_to = reacts_to

    def new_state(self) -> RuleState:
        """Return an empty per-customer state for this rule."""
        return RuleState()

    def on_event(self, st: RuleState, ev: Event) -> Firing | None:
        """Apply one event of the journey (in (ts, event_id) order); return the firing it causes, if any."""
        raise NotImplementedError

    def due_ms(self, st: RuleState) -> int:
        """Return when the rule needs a wake-up (event time), or ``NO_TS``; only ``absence`` has timers."""
        return NO_TS

    def on_wake(self, st: RuleState, now_ms: int) -> Firing | None:
        """Fire a timer due at or before ``now_ms`` (the watermark)."""
        return None

    def armed_ms(self, due_ms: int) -> int:
        """When the timer of a firing due at ``due_ms`` was armed (its arming event's ts)."""
        return due_ms

    def end_attempt(self, st: RuleState) -> None:
        """Clear the attempt's windows, timers and fired flag (on completion, after the event, or timeout)."""
        st.end_attempt()

    def take_dropped(self) -> int:
        """Return how many ``per`` groups the rule dropped at its cap since the last call (only windows have any)."""
        return 0

    def lookback_ms(self) -> int:
        """How long an ``unless`` match matters after it happened (0 without ``unless_within``)."""
        return 0

    def is_empty(self, st: RuleState, now_ms: int) -> bool:
        """True when ``st`` holds nothing that matters at ``now_ms`` in a new attempt (safe to drop then)."""
        return st.unless_ms == NO_TS or st.unless_ms < now_ms - self.lookback_ms()


def trim(recs: Records, keep: int, oldest_ms: int) -> None:
    """Drop records older than ``oldest_ms`` and all but the newest ``keep`` records, in place."""
    n = len(recs) // 2
    drop = n - keep if n > keep else 0
    while drop < n and cast(int, recs[2 * drop]) < oldest_ms:
        drop += 1
    if drop:
        del recs[: 2 * drop]
