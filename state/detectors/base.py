"""The detector interface: what a moment kind is to the engine (see docs/architecture.md, "Detectors").

A kind is one module defining a ``Detector`` subclass. The class owns the kind's parameters (``PARAMS``:
TOML key, ``MomentRule`` field, default, check), which the pack loader validates with it; an instance
is one rule compiled for one journey of one shard. At pack load each journey's detectors are sorted
into a dispatch table by event type (``state.plan``), so an event only meets the detectors that react
to its type, with no per-event "is this rule configured" checks.

Per-attempt state lives in the attempt's generic state slots (``Attempt.s0`` … ``s4``): a kind asks
for a number of them (``STATE``, with their initial values) and is given slot numbers when its
journey is compiled; ``get``/``put`` read and write them (on the hot path, ``getattr``/``setattr`` with
``slot0`` and ``slot1``, the first two slots' names).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol

from state.events import CHANNELS, Event
from state.journey import Attempt
from state.record import CustomerState
from state.rule_model import JourneyDef, MomentRule, parse_duration

Evidence = tuple[str, ...]
STATE_SLOTS: Final = ("s0", "s1", "s2", "s3", "s4")  # an attempt's generic state slots (see Attempt)


class Host(Protocol):
    """What the engine lends a detector: canonical strings and wake-up scheduling (``BatchContext``)."""

    def canon(self, s: str) -> str:
        """Return the shared string object for ``s``."""

    def schedule(self, c: CustomerState, due: int) -> None:
        """Make sure the customer wakes up by ``due``."""


@dataclass(frozen=True, slots=True)
class Param:
    """One rule parameter of a kind: its TOML key, the ``MomentRule`` field it sets, its default and check.

    ``check`` is one of ``duration`` (``"10m"`` → ms), ``count`` (integer 1..100), ``channel`` (a known
    channel), ``type`` (an event type of the pack).
    """

    key: str
    field: str
    default: Any
    check: str

    def value(self, raw: object, types: frozenset[str] | set[str]) -> object:
        """Return the validated value of ``raw``.

        Raises:
            ValueError: saying what is wrong with it (the caller adds file, rule and field).
        """
        if self.check == "duration":
            return parse_duration(raw)
        if self.check == "count":
            if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= 100:
                raise ValueError(f"must be an integer 1..100, got {raw!r}")
            return raw
        if not isinstance(raw, str) or not raw:
            raise ValueError(f"must be a non-empty string, got {raw!r}")
        if self.check == "channel" and raw not in CHANNELS:
            raise ValueError(f"unknown channel {raw!r}")
        if self.check == "type" and raw not in types:
            raise ValueError(f"unknown event type {raw!r}")
        return raw


class Detector:
    """One moment rule compiled for one journey. Subclasses set the class attributes and override the hooks.

    Class attributes:
        KIND: The kind's name (``rule.kind``).
        SUMMARY: A rule of the kind in plain words, a format string over the rule's fields (see ``describe``).
        PARAMS: Its parameters.
        STATE: Initial values of the per-attempt state slots it needs (one per slot).
        TYPES: Event types ``on_event`` is called for; None: every event of the journey.
        ON_KEY_STEP: ``on_event`` is (also) called for every event at one of the journey's key steps.
        STAMPS: Event types (of ``TYPES``) for which ``on_event`` would only keep the latest event time in the
            kind's second state slot: the engine keeps it inline instead of calling ``on_event``.
        WAKE_AT_KEY: The attempt's latest event at a key step arms the kind's deadline ``rule.within_ms`` later
            (until the rule fires): the engine makes sure the customer wakes up by then, with no call (it runs
            for every such event; ``due`` says what is really due when the customer wakes).
        CARRY: The state slots carry over from an attempt to the next one of the journey.
        TIMED: ``due``/``on_due`` are used (a deadline derived from the attempt).
        CONTACT: ``on_contact`` is called for the contacts of every customer (whatever their journey).

    Args:
        rule: The rule.
        journey: The journey it is compiled for.
        slots: Slot numbers given to the ``STATE`` values, in order.
    """

    KIND: ClassVar[str] = ""
    # What a rule of the kind does in plain words (``moments check-rules``); ``{field}`` names a ``MomentRule``
    # duration (``within``, ``no_intent``, as "30m") or value (``threshold``, ``channel``, ``type``, ``recent_steps``).
    SUMMARY: ClassVar[str] = ""
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    STATE: ClassVar[tuple[object, ...]] = ()
    TYPES: ClassVar[frozenset[str] | None] = frozenset()
    ON_KEY_STEP: ClassVar[bool] = False
    STAMPS: ClassVar[frozenset[str]] = frozenset()
    WAKE_AT_KEY: ClassVar[bool] = False
    CARRY: ClassVar[bool] = False
    TIMED: ClassVar[bool] = False
    CONTACT: ClassVar[bool] = False

    def __init__(self, rule: MomentRule, journey: JourneyDef, slots: tuple[int, ...]) -> None:
        self.rule = rule
        self.bit = 0  # set by the plan: the kind's bit in ``Attempt.fired``
        self.names: tuple[str, ...] = tuple(STATE_SLOTS[i] for i in slots)
        # The first two slots' names, for the hot path: ``getattr(a, self.slot0)`` and ``setattr(a, self.slot0, v)``
        # cost one builtin call each (an ``attrgetter`` call costs half as much again in CPython 3.11; ``get`` and
        # ``put`` add a Python call).
        self.slot0 = self.names[0] if self.names else ""
        self.slot1 = self.names[1] if len(self.names) > 1 else ""

    def link(self, siblings: dict[str, Detector]) -> None:
        """Called once the journey's detectors exist (some kinds read another kind's state)."""

    def get(self, a: Attempt, i: int = 0) -> Any:
        """Return the attempt's value of this detector's ``i``-th state slot."""
        return getattr(a, self.names[i])

    def put(self, a: Attempt, v: object, i: int = 0) -> None:
        """Set the attempt's value of this detector's ``i``-th state slot."""
        setattr(a, self.names[i], v)

    def on_event(self, host: Host, c: CustomerState, a: Attempt, ev: Event, step: str | None, prev_ts: int,
                 prev_eid: str) -> Evidence | None:
        """React to an event of the journey (of a type in ``TYPES`` or at a key step); return evidence to fire.

        Args:
            host: The engine's services.
            c: The customer.
            a: The journey's current attempt, already moved to this event (``last_ts``, ``last_step``,
                ``last_key`` when it is the latest).
            ev: The event.
            step: Its step, canonical (None when it has none).
            prev_ts: The attempt's ``last_ts`` before this event (the event is the latest if ``ev.ts_ms >= prev_ts``).
            prev_eid: The attempt's ``last_eid`` before this event.

        Returns:
            Event ids of the evidence (oldest first) when the rule fires on this event, else None. A rule
            fires at most once per attempt: the engine sets its bit in ``a.fired``; the detector checks it.
        """
        return None

    def due(self, a: Attempt) -> int | None:
        """Return when the attempt's pending deadline is due (``TIMED`` kinds), None when none is pending."""
        return None

    def on_due(self, a: Attempt) -> tuple[Evidence, int, str, str | None]:
        """The deadline came (``due(a)`` ≤ now): return evidence, due time, anchor event id and step of the moment."""
        raise NotImplementedError

    def on_contact(self, a: Attempt, ev: Event) -> bool:
        """Return whether a contact (``CONTACT`` kinds) fires the rule for this journey's attempt."""
        return False

    def context(self, a: Attempt) -> dict[str, object]:
        """Return extra context emitted with a ``CONTACT`` moment (the agent's screen)."""
        return {}

    def on_end(self, a: Attempt) -> None:
        """The attempt ended: drop state that only an active attempt needs."""

    def keep_until(self, a: Attempt) -> int:
        """Return the last event time at which an ended attempt still matters to this rule."""
        return a.last_ts


def ms_text(ms: int) -> str:
    """A duration in the largest unit that divides it: ``1800000`` → ``30m``."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def describe(cls: type[Detector], rule: MomentRule) -> str:
    """Return a built-in rule's one-line summary in plain words (its kind's ``SUMMARY`` filled in)."""
    return cls.SUMMARY.format(within=ms_text(rule.within_ms), no_intent=ms_text(rule.no_intent_ms),
                              threshold=rule.threshold, channel=rule.channel, type=rule.type,
                              recent_steps=rule.recent_steps)
