"""Reading a rule's fields with every problem collected (not just the first), each naming file, rule and field."""

from __future__ import annotations

from typing import Final

from state.events import CHANNELS
from state.generic.predicates import ATTRS_PREFIX, KEY_STEPS, FieldRef
from state.rule_model import RulePackError, parse_duration

PREDICATE_FIELDS: Final[tuple[str, ...]] = ("channel", "type", "step", "entry")


class Checker:
    """Collects the problems of one ``[[moment]]`` table; ``where`` is e.g. ``moment[3] (5g_upgrade.retry_loop)``."""

    __slots__ = ("errors", "path", "table", "types", "where")

    def __init__(self, path: str, where: str, table: dict[str, object], types: frozenset[str] | None,
                 errors: list[RulePackError]) -> None:
        """Check ``table``; problems are appended to ``errors``; ``types`` (if given) are the pack's event types."""
        self.path = path
        self.where = where
        self.table = table
        self.types = types
        self.errors = errors

    def error(self, field: str, problem: str) -> None:
        """Record a problem with ``field`` (empty: the rule as a whole)."""
        self.errors.append(RulePackError(self.path, f"{self.where}.{field}" if field else self.where, problem))

    def duration(self, field: str, *, required: bool) -> int | None:
        """Return the field as milliseconds, or None when absent or invalid (a problem is recorded)."""
        if field not in self.table:
            if required:
                self.error(field, "is required (a duration like '10m')")
            return None
        try:
            return parse_duration(self.table[field])
        except ValueError as e:
            self.error(field, str(e))
            return None

    def integer(self, field: str, lo: int, hi: int, default: int | None = None) -> int | None:
        """Return the field as an integer in ``lo..hi``; required unless ``default`` is given."""
        if field not in self.table:
            if default is None:
                self.error(field, f"is required (an integer {lo}..{hi})")
            return default
        v = self.table[field]
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            self.error(field, f"must be an integer {lo}..{hi}, got {v!r}")
            return None
        return v

    def field_name(self, field: str, *, required: bool) -> FieldRef | None:
        """Return the field (``per``, ``field``) naming an event field, or None."""
        if field not in self.table:
            if required:
                self.error(field, "is required (channel, type, step, entry or attrs.<key>)")
            return None
        v = self.table[field]
        if not isinstance(v, str):
            self.error(field, f"must be a field name (channel, type, step, entry or attrs.<key>), got {v!r}")
            return None
        try:
            return FieldRef(v)
        except ValueError as e:
            self.error(field, str(e))
            return None

    def predicate(self, field: str, *, required: bool) -> dict[str, list[str]] | None:
        """Return a predicate table as field -> list of values, or None when absent or invalid."""
        if field not in self.table:
            if required:
                self.error(field, "is required (a table like {type = \"fail\"})")
            return None
        raw = self.table[field]
        if not isinstance(raw, dict):
            self.error(field, f"must be a table like {{type = \"fail\"}}, got {raw!r}")
            return None
        out: dict[str, list[str]] = {}
        ok = True
        for name, value in raw.items():
            where = f"{field}.{name}" if "." not in name else f"{field}.\"{name}\""
            if name not in PREDICATE_FIELDS and not (name.startswith(ATTRS_PREFIX) and len(name) > len(ATTRS_PREFIX)):
                self.error(where, "unknown predicate field (channel, type, step, entry or \"attrs.<key>\")")
                ok = False
                continue
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) and v for v in values):
                # A number attribute is a value of its own for `per`/`field` but never equals a predicate's string.
                hint = " (predicates compare strings; a number attribute never matches)" if name.startswith(
                    ATTRS_PREFIX) else ""
                self.error(where, f"must be a non-empty string or list of strings, got {value!r}{hint}")
                ok = False
                continue
            dollar = [v for v in values if v.startswith("$") and v != KEY_STEPS]
            if dollar:
                # "$key" is the only name a predicate knows; any other would silently match no event.
                self.error(where, f"unknown name {dollar[0]!r} (the only $-name is {KEY_STEPS!r}, the journey's "
                                  "key steps, for `step`)")
                ok = False
                continue
            if KEY_STEPS in values and name != "step":
                self.error(where, f"{KEY_STEPS!r} stands for the journey's key steps: only `step` may use it")
                ok = False
            if name == "channel":
                bad = [v for v in values if v not in CHANNELS]
                if bad:
                    self.error(where, f"unknown channel {bad[0]!r} (one of {', '.join(sorted(CHANNELS))})")
                    ok = False
            if name == "type" and self.types is not None:
                bad = [v for v in values if v not in self.types]
                if bad:
                    self.error(where, f"unknown event type {bad[0]!r} (add it to the pack's `types`)")
                    ok = False
            out[name] = [str(v) for v in values]
        return out if ok else None
