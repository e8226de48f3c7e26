"""A rule pack compiled for the hot path: per journey, its detectors sorted into a dispatch table.

Compiled once per shard at start. An event of journey J and type T meets exactly ``on_type[T]``
(or ``on_other`` for a type no typed detector wants), then, at a key step, ``on_key``: which rules
a journey has is settled here, not checked per event.
"""

from __future__ import annotations

from typing import Any

from state.detectors import KIND_BITS, REGISTRY
from state.detectors.base import STATE_SLOTS, Detector
from state.generic.base import GenericRule
from state.generic.dispatch import JourneyRules
from state.journey import NO_STATE
from state.rule_model import JourneyDef, MomentRule, RulePackError


class JourneyPlan:
    """A journey with its detectors compiled, for the hot path.

    Attributes:
        on_type: Event type → the detectors ``on_event`` is called for, in registry order: first those
            that want the type, then those that see every event.
        on_other: The detectors for a type no typed detector wants (those that see every event).
        on_key: Detectors called for every event at a key step.
        on_type_key, on_other_key: ``on_type`` and ``on_other`` for an event at a key step (``on_key`` appended).
        by_type, other_type: What ``apply_event`` reads per event, by type in one look-up: (stage, the slot whose
            latest time the type keeps (``Detector.STAMPS``) or "", ``on_type`` and ``on_type_key`` without that
            detector).
        timed: Detectors with a deadline (``due``/``on_due``).
        key_wake_bits, key_wake_ms: The ``WAKE_AT_KEY`` detectors' bits in ``Attempt.fired`` and their shortest
            ``within_ms``: a latest event at a key step wakes the customer that long after it, unless all fired.
        contact: Detectors fired by contacts (``on_contact``), whatever the contact's journey.
        carry: Detectors whose state carries over to the journey's next attempt; ``carry_slots`` their slots.
        enders: Detectors that drop state when an attempt ends.
        keepers: Detectors that keep an ended attempt for a while (``keep_until``).
        initial: The initial values of an attempt's state slots (shared by all new attempts).
        generic: The journey's generic rules (DESIGN.md §8) and their dispatch table, None when it has none
            (then its attempts carry no generic state and its events meet no generic rule).
        generic_rules: Rule name → its ``MomentRule``, for the generic rules' firings.
        generic_span_ms: The longest ``unless_within`` of its generic rules: how long an ended attempt's
            generic state may still matter to the next attempt.
    """

    def __init__(self, jd: JourneyDef, rules: dict[str, MomentRule], path: str = "<memory>",
                 generic: tuple[MomentRule, ...] = (), kinds: tuple[str, ...] | None = None,
                 generic_all: tuple[GenericRule | None, ...] | None = None) -> None:
        """``kinds``: the built-in kinds whose state slots the journey's attempts hold, in slot order (a directory of
        versions: every version's, ``state.versions.RuleLayout``); default: ``rules``'s. ``generic_all``: the
        generic rules whose states they hold (None where no version defines one); default: ``generic``'s."""
        self.id: str = jd.id
        self.steps: tuple[str, ...] = jd.steps
        self.key_steps: frozenset[str] = jd.key_steps
        self.complete_type: str = jd.complete_type
        self.step_index: dict[str, int] = {s: i for i, s in enumerate(jd.steps)}
        self.stage_types: dict[str, int] = jd.stage_types
        self.stage_steps: dict[str, int] = jd.stage_steps
        self.rules = rules
        initial: list[Any] = []
        detectors: list[Detector] = []
        for kind in (kinds if kinds is not None else tuple(k for k in REGISTRY if k in rules)):
            cls = REGISTRY[kind]
            slots = tuple(range(len(initial), len(initial) + len(cls.STATE)))
            initial += cls.STATE
            if len(initial) > len(STATE_SLOTS):
                raise RulePackError(path, f"journey {jd.id!r}", f"its rules keep more per-attempt state than an "
                                    f"attempt holds ({len(STATE_SLOTS)} slots); move some rules to other journeys"
                                    + ("" if kinds is None else " (the rules of every version count, and those "
                                       "of the recovery state: start with a fresh --recovery-dir)"))
            r = rules.get(kind)
            if r is None:
                continue  # a kind of another version: its slots stay, it reacts to nothing in this one
            d = cls(r, jd, slots)
            d.bit = KIND_BITS[kind]
            detectors.append(d)
        by_kind = {d.rule.kind: d for d in detectors}
        for d in detectors:
            d.link(by_kind)
        self.detectors = tuple(detectors)
        every = tuple(d for d in detectors if d.TYPES is None)
        typed = {t for d in detectors if d.TYPES for t in d.TYPES}
        self.on_type: dict[str, tuple[Detector, ...]] = {
            t: (*(d for d in detectors if d.TYPES and t in d.TYPES), *every) for t in sorted(typed)
        }
        self.on_other: tuple[Detector, ...] = every
        self.on_key = tuple(d for d in detectors if d.ON_KEY_STEP)
        # The same for an event at a key step: the key-step detectors come last.
        self.on_type_key: dict[str, tuple[Detector, ...]] = {t: (*ds, *self.on_key) for t, ds in self.on_type.items()}
        self.on_other_key: tuple[Detector, ...] = (*every, *self.on_key)
        # Per event type, all apply_event needs of it in one look-up: the stage it marks, the state slot whose
        # latest time it keeps (a ``STAMPS`` detector's, called no more for that type; "" for none), the detectors
        # to call, and those at a key step. ``other_type`` for any other type.
        stamps: dict[str, tuple[str, Detector]] = {}
        for d in detectors:
            for t in sorted(d.STAMPS & (d.TYPES or frozenset())):
                stamps.setdefault(t, (d.slot1, d))  # one per type; another one's on_event still does it
        self.by_type: dict[str, tuple[int, str, tuple[Detector, ...], tuple[Detector, ...]]] = {}
        for t in sorted({*self.stage_types, *self.on_type, *stamps}):
            slot, stamper = stamps.get(t, ("", None))
            ds = tuple(d for d in self.on_type.get(t, self.on_other) if d is not stamper)
            dks = tuple(d for d in self.on_type_key.get(t, self.on_other_key) if d is not stamper)
            self.by_type[t] = (self.stage_types.get(t, 0), slot, ds, dks)
        self.other_type: tuple[int, str, tuple[Detector, ...], tuple[Detector, ...]] = (
            0, "", self.on_other, self.on_other_key)
        self.timed = tuple(d for d in detectors if d.TIMED)
        # The key-step deadlines armed inline by ``apply_event`` (``WAKE_AT_KEY``): the customer wakes up by the
        # earliest of them while any has not fired (a wake-up that finds nothing due asks for the next one).
        # No such rule: no bits, and ``fired & 0 != 0`` never arms.
        wakers = [d for d in detectors if d.WAKE_AT_KEY]
        self.key_wake_bits: int = sum(d.bit for d in wakers)
        self.key_wake_ms: int = min((d.rule.within_ms for d in wakers), default=0)
        self.contact = tuple(d for d in detectors if d.CONTACT)
        self.carry = tuple(d for d in detectors if d.CARRY)
        self.carry_slots: tuple[str, ...] = tuple(n for d in self.carry for n in d.names)  # copied to a new attempt
        self.enders = tuple(d for d in detectors if type(d).on_end is not Detector.on_end)
        self.keepers = tuple(d for d in detectors if type(d).keep_until is not Detector.keep_until)
        self.initial: tuple[Any, ...] = (*initial, *NO_STATE[len(initial):])
        self.by_kind = by_kind
        compiled = [r.generic for r in generic if r.generic is not None]
        kept: tuple[GenericRule | None, ...] = tuple(compiled) if generic_all is None else generic_all
        self.generic: JourneyRules | None = (JourneyRules(jd.id, kept, active=frozenset(map(id, compiled)))
                                             if any(g is not None for g in kept) else None)
        self.generic_rules: dict[str, MomentRule] = {r.name: r for r in generic}
        # The bits (``Attempt.fired``) of the rules in force in this version: a timer armed under another version
        # fires only while its rule is (``BatchContext.in_force``).
        self.bits: int = sum(d.bit for d in detectors) | sum(r.bit for r in generic)
        self.generic_span_ms: int = max((g.lookback_ms() for g in compiled), default=0)

    def rule(self, kind: str) -> MomentRule | None:
        """Return the journey's rule of a kind, None when the pack has none."""
        return self.rules.get(kind)
