"""Predicates of generic rules: compiled once per rule and journey, matched per event (DESIGN.md §8).

A predicate is a TOML table ``field -> value or [values]``: the fields must all match (AND), the values of one
field are alternatives (OR). An event lacking a field does not match it; an ``attrs.<key>`` value matches only a
string attribute. ``step = "$key"`` stands for the journey's key steps.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from state.events import Event

KEY_STEPS: Final[str] = "$key"
# Event fields a predicate, `per` or `field` may name; attributes are `attrs.<key>`.
PLAIN_FIELDS: Final[tuple[str, ...]] = ("channel", "type", "step", "entry")
ATTRS_PREFIX: Final[str] = "attrs."

F_CHANNEL: Final[int] = 0
F_TYPE: Final[int] = 1
F_STEP: Final[int] = 2
F_ENTRY: Final[int] = 3
F_ATTR: Final[int] = 4


FieldValue = str | tuple[str, int | float | bool]
"""What ``per`` and ``field`` read: a string field or string attribute as is; any other scalar attribute keyed by
its JSON type, so ``true``, ``1``, ``1.0`` and ``"1"`` are four values (Python alone has ``True == 1 == 1.0``)."""


class FieldRef:
    """One event field (``channel``, ``type``, ``step``, ``entry`` or ``attrs.<key>``), read per event."""

    __slots__ = ("code", "key", "name")

    def __init__(self, name: str) -> None:
        """Resolve a field name; raises ValueError for a name that is not an event field."""
        self.name = name
        self.key = ""
        if name in PLAIN_FIELDS:
            self.code = PLAIN_FIELDS.index(name)
        elif name.startswith(ATTRS_PREFIX) and len(name) > len(ATTRS_PREFIX):
            self.code = F_ATTR
            self.key = name[len(ATTRS_PREFIX):]
        else:
            raise ValueError(f"unknown event field {name!r} (channel, type, step, entry or attrs.<key>)")

    def value(self, ev: Event) -> FieldValue | None:
        """Return the field's value in ``ev``, or None when the event lacks it.

        An attribute holding a number or boolean is a value of its own (``5`` and ``"5"`` are two groups or
        values, and so are ``true``, ``1`` and ``1.0``): grouping by a numeric id is what an operator means by
        ``per = "attrs.plan_id"``. Predicates still match strings only.
        """
        code = self.code
        if code == F_CHANNEL:
            return ev.channel
        if code == F_TYPE:
            return ev.type
        if code == F_STEP:
            return ev.step
        if code == F_ENTRY:
            return ev.entry
        attrs = ev.attrs
        if attrs is None:
            return None
        v = attrs.get(self.key)
        if isinstance(v, str):
            return v
        if isinstance(v, bool):  # before int: bool is an int to Python, not to JSON
            return ("bool", v)
        if isinstance(v, int):
            return ("int", v)
        if isinstance(v, float):
            return ("float", v)
        return None  # null: no value (the parser refuses nested attrs)


class Predicate:
    """A compiled predicate: per field the allowed values as a frozenset (None = any)."""

    __slots__ = ("attrs", "channel", "entry", "source", "step", "type")

    def __init__(self, source: dict[str, list[str]], key_steps: Iterable[str]) -> None:
        """Compile a validated predicate (field -> list of strings) for a journey with these key steps."""
        self.source = source
        self.channel = _values(source.get("channel"))
        self.type = _values(source.get("type"))
        steps = source.get("step")
        if steps is not None and KEY_STEPS in steps:
            steps = [s for s in steps if s != KEY_STEPS] + sorted(key_steps)
        self.step = _values(steps)
        self.entry = _values(source.get("entry"))
        self.attrs: tuple[tuple[str, frozenset[str]], ...] = tuple(
            (f[len(ATTRS_PREFIX):], frozenset(v)) for f, v in sorted(source.items()) if f.startswith(ATTRS_PREFIX)
        )

    @property
    def matches_everything(self) -> bool:
        """True for the empty predicate (a missing ``when`` matches every event in the journey)."""
        return not self.source

    def matches(self, ev: Event) -> bool:
        """Return whether ``ev`` satisfies every field of the predicate."""
        if self.type is not None and ev.type not in self.type:
            return False
        if self.channel is not None and ev.channel not in self.channel:
            return False
        if self.step is not None and (ev.step is None or ev.step not in self.step):
            return False
        if self.entry is not None and (ev.entry is None or ev.entry not in self.entry):
            return False
        if self.attrs:
            attrs = ev.attrs
            if attrs is None:
                return False
            for key, allowed in self.attrs:
                v = attrs.get(key)
                if not isinstance(v, str) or v not in allowed:
                    return False
        return True


def _values(values: list[str] | None) -> frozenset[str] | None:
    return None if values is None else frozenset(values)


def types_of(preds: Iterable[Predicate | None]) -> frozenset[str] | None:
    """Return the event types the given predicates can match, or None when one of them matches any type.

    A None entry (an absent optional predicate) is skipped; callers pass an empty predicate for "every event".
    """
    out: set[str] = set()
    for p in preds:
        if p is None:
            continue
        if p.type is None:
            return None
        out |= p.type
    return frozenset(out)
