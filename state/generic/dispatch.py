"""The generic rules of one journey as the shard calls them: per event, per wake-up, at attempt end.

Built once per pack load: a dispatch table from event type to the rules that can react to it (a rule whose
predicates name no ``type`` reacts to every type), and the rules that have timers. The per-customer part is a
list with one slot per rule of the journey, holding that rule's ``RuleState`` or None: a state is created
when its rule first reacts and dropped at attempt end when it holds nothing (no ``unless`` look-back left).
"""

from __future__ import annotations

from collections.abc import Iterable

from state.events import Event
from state.generic.base import NO_TS, Firing, GenericRule, RuleState

States = list[RuleState | None]


class JourneyRules:
    """The compiled generic rules of one journey and their dispatch table by event type."""

    __slots__ = ("by_type", "every_type", "journey", "rules", "timed")

    def __init__(self, journey: str, rules: Iterable[GenericRule], types: Iterable[str] = ()) -> None:
        """Index ``rules`` (those of ``journey``) for the event types ``types`` (more are indexed on first sight)."""
        self.journey = journey
        self.rules: tuple[GenericRule, ...] = tuple(r for r in rules if r.journey == journey)
        self.every_type: tuple[int, ...] = tuple(i for i, r in enumerate(self.rules) if r.reacts_to is None)
        self.timed: tuple[int, ...] = tuple(i for i, r in enumerate(self.rules) if r.kind == "absence")
        self.by_type: dict[str, tuple[int, ...]] = {}
        for t in types:
            self._index(t)

    def _index(self, t: str) -> tuple[int, ...]:
        out = tuple(i for i, r in enumerate(self.rules) if r.reacts_to is None or t in r.reacts_to)
        self.by_type[t] = out
        return out

    def new_states(self) -> States:
        """Return the per-customer slots for a journey the customer has just entered (all empty)."""
        return [None] * len(self.rules)

    def on_event(self, states: States, ev: Event) -> tuple[Firing, ...]:
        """Apply an event of the journey (after ``wake`` up to its ts); return the firings, in rule order."""
        targets = self.by_type.get(ev.type)
        if targets is None:
            targets = self._index(ev.type)
        out: list[Firing] | None = None  # most events fire nothing: no list then
        rules = self.rules
        for i in targets:
            st = states[i]
            if st is None:
                st = states[i] = rules[i].new_state()
            f = rules[i].on_event(st, ev)
            if f is not None:
                if out is None:
                    out = [f]
                else:
                    out.append(f)
        return () if out is None else tuple(out)

    def next_due(self, states: States) -> int:
        """Return the earliest wake-up the customer's rules of this journey need, or ``NO_TS``."""
        due = NO_TS
        for i in self.timed:
            st = states[i]
            if st is not None:
                d = self.rules[i].due_ms(st)
                if d != NO_TS and (due == NO_TS or d < due):
                    due = d
        return due

    def wake(self, states: States, now_ms: int) -> tuple[Firing, ...]:
        """Fire every timer due at or before ``now_ms`` (call before applying events at ``now_ms``)."""
        out: list[Firing] = []
        for i in self.timed:
            st = states[i]
            if st is not None:
                f = self.rules[i].on_wake(st, now_ms)
                if f is not None:
                    out.append(f)
        return tuple(out)

    def take_dropped(self, into: dict[str, int]) -> None:
        """Add to ``into`` (rule -> count) the ``per`` groups each rule dropped at its cap since the last call.

        The counts live on the compiled rules, which the shards of a process share: whichever shard collects
        them first reports them, so each drop is counted once per process.
        """
        for r in self.rules:
            n = r.take_dropped()
            if n:
                into[r.name] = into.get(r.name, 0) + n

    def end_attempt(self, states: States, now_ms: int) -> bool:
        """End the attempt (after its completion event, or on timeout); return True when no state is left."""
        empty = True
        for i, st in enumerate(states):
            if st is not None:
                r = self.rules[i]
                r.end_attempt(st)
                if r.is_empty(st, now_ms):
                    states[i] = None
                else:
                    empty = False
        return empty
