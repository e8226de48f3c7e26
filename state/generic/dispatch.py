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

    __slots__ = ("active", "by_type", "every_type", "gone", "journey", "rules", "timed")

    def __init__(self, journey: str, rules: Iterable[GenericRule | None], types: Iterable[str] = (),
                 active: frozenset[int] | None = None) -> None:
        """Index ``rules`` (those of ``journey``) for the event types ``types`` (more are indexed on first sight).

        ``active``: the ids of the rules in force (a directory of versions, ``state.versions.RuleLayout``); the
        others keep their place in the states but react to nothing; a None (a rule no version defines any more, from
        a restored snapshot) also keeps its place, and its state is dropped at attempt end. Default: all in force.
        """
        self.journey = journey
        given = [r for r in rules if r is None or r.journey == journey]
        defined = [r for r in given if r is not None]
        # A place no version defines holds another rule, never called: ``gone`` names those places.
        self.gone: frozenset[int] = frozenset(i for i, r in enumerate(given) if r is None)
        self.rules: tuple[GenericRule, ...] = tuple(r if r is not None else defined[0] for r in given)
        self.active: tuple[int, ...] = tuple(i for i, r in enumerate(given)
                                             if r is not None and (active is None or id(r) in active))
        self.every_type: tuple[int, ...] = tuple(i for i in self.active if self.rules[i].reacts_to is None)
        self.timed: tuple[int, ...] = tuple(i for i in self.active if self.rules[i].kind == "absence")
        self.by_type: dict[str, tuple[int, ...]] = {}
        for t in types:
            self._index(t)

    def _index(self, t: str) -> tuple[int, ...]:
        out = tuple(i for i in self.active if (rt := self.rules[i].reacts_to) is None or t in rt)
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
        for i in self.active:
            r = self.rules[i]
            n = r.take_dropped()
            if n:
                into[r.name] = into.get(r.name, 0) + n

    def end_attempt(self, states: States, now_ms: int) -> bool:
        """End the attempt (after its completion event, or on timeout); return True when no state is left."""
        empty = True
        for i, st in enumerate(states):
            if st is not None:
                if i in self.gone:
                    states[i] = None  # a rule no version defines any more: its state goes
                    continue
                r = self.rules[i]
                r.end_attempt(st)
                if r.is_empty(st, now_ms):
                    states[i] = None
                else:
                    empty = False
        return empty
