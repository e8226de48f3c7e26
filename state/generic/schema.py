"""Validation of generic ``[[moment]]`` tables, all problems at once, and one-line summaries of rules.

``validate`` returns every problem of a pack's generic rules (each naming the file, the rule as
``moment[3] (5g_upgrade.retry_loop)`` and the field); ``compile_rules`` builds the rules or raises
``InvalidRulesError`` listing them all; ``describe`` says what a rule does in plain words.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from typing import Any, Final

from state.generic import absence, count, distinct, sequence
from state.generic.base import Common, GenericRule, JourneyLike
from state.generic.checker import Checker
from state.generic.predicates import KEY_STEPS
from state.rule_model import RulePackError, parse_duration

KINDS: Final[tuple[str, ...]] = ("count", "distinct", "absence", "sequence")
URGENCIES: Final[tuple[str, ...]] = ("P1", "P2", "P3", "P4")
STAGES: Final[tuple[str, ...]] = ("awareness", "knowledge", "intention", "use", "reuse")
COMMON: Final[frozenset[str]] = frozenset({"kind", "name", "journeys", "urgency", "action", "ttl", "channels",
                                           "act_within", "holdout", "stages", "contact"})
PARAMS: Final[dict[str, frozenset[str]]] = {"count": count.PARAMS, "distinct": distinct.PARAMS,
                                            "absence": absence.PARAMS, "sequence": sequence.PARAMS}
_NAME: Final[re.Pattern[str]] = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
Spec = count.CountSpec | distinct.DistinctSpec | absence.AbsenceSpec | sequence.SequenceSpec


class InvalidRulesError(RulePackError):
    """Several problems of one pack; the message lists them one per line."""

    def __init__(self, errors: list[RulePackError]) -> None:
        """Wrap the problems (at least one)."""
        first = errors[0]
        super().__init__(first.path, first.where, first.problem)
        self.errors = tuple(errors)
        self.args = ("\n".join(str(e) for e in errors),)

    def __str__(self) -> str:
        return str(self.args[0])


def validate(path: str, moments: list[Any], journeys: Mapping[str, JourneyLike], attempt_timeout_ms: int, *,
             types: frozenset[str] | None = None, builtin_kinds: Collection[str] = ()) -> list[RulePackError]:
    """Return every problem of the generic rules in a pack's ``[[moment]]`` tables (empty when all are valid).

    Args:
        path: The pack file, for messages.
        moments: The ``[[moment]]`` tables in file order (their index names them).
        journeys: The pack's journeys by id.
        attempt_timeout_ms: The pack's attempt timeout (``idle`` must be shorter).
        types: The pack's event types, to check ``type`` values; None skips that check.
        builtin_kinds: Kinds validated elsewhere (their tables are skipped here).

    Returns:
        The problems, in file order.
    """
    errors: list[RulePackError] = []
    _check(path, moments, journeys, attempt_timeout_ms, types, builtin_kinds, errors)
    return errors


def compile_rules(path: str, moments: list[Any], journeys: Mapping[str, JourneyLike], attempt_timeout_ms: int, *,
                  types: frozenset[str] | None = None, builtin_kinds: Collection[str] = ()) -> list[GenericRule]:
    """Validate and compile the generic rules, one per (moment table, journey), in file then journey order.

    Raises:
        InvalidRulesError: listing every problem (see ``validate``).
    """
    errors: list[RulePackError] = []
    rules = _check(path, moments, journeys, attempt_timeout_ms, types, builtin_kinds, errors)
    if errors:
        raise InvalidRulesError(errors)
    return rules


def _label(i: int, table: dict[str, Any], journeys: Mapping[str, JourneyLike]) -> str:
    name = table.get("name", table.get("kind"))
    targets = table.get("journeys", list(journeys))
    js = [j for j in targets if isinstance(j, str)] if isinstance(targets, list) else []
    rule = f"{js[0]}.{name}" if len(js) == 1 else f"{{{','.join(js)}}}.{name}" if js else str(name)
    return f"moment[{i}] ({rule})"


def _check(path: str, moments: list[Any], journeys: Mapping[str, JourneyLike], attempt_timeout_ms: int,
           types: frozenset[str] | None, builtin_kinds: Collection[str], errors: list[RulePackError]
           ) -> list[GenericRule]:
    rules: list[GenericRule] = []
    seen: dict[str, str] = {}
    for i, table in enumerate(moments):
        if not isinstance(table, dict):
            errors.append(RulePackError(path, f"moment[{i}]", "must be a table"))
            continue
        kind = table.get("kind")
        if kind in builtin_kinds:
            continue
        chk = Checker(path, _label(i, table, journeys), table, types, errors)
        if kind not in PARAMS:
            known = (*builtin_kinds, *KINDS)
            chk.error("kind", f"unknown kind {kind!r} (one of {', '.join(known)})" if kind is not None
                      else f"is required (one of {', '.join(known)})")
            continue
        allowed = COMMON | PARAMS[kind]
        for key in table:
            if key not in allowed:
                chk.error(key, f"unknown field for kind {kind} (allowed: {', '.join(sorted(allowed))})")
        common = _common(chk, kind)
        targets = _journeys(chk, journeys)
        spec = _spec(chk, kind, attempt_timeout_ms)
        if common is None or targets is None or spec is None:
            continue
        for jid in targets:
            rname = f"{jid}.{common.name}"
            if rname in seen:
                chk.error("name", f"rule {rname!r} is already defined by {seen[rname]}")
                continue
            seen[rname] = chk.where
            rules.append(_build(kind, common, journeys[jid], spec, table))
    return rules


def _spec(chk: Checker, kind: str, attempt_timeout_ms: int) -> Spec | None:
    if kind == "count":
        return count.parse(chk)
    if kind == "distinct":
        return distinct.parse(chk)
    if kind == "absence":
        return absence.parse(chk, attempt_timeout_ms)
    return sequence.parse(chk)


def _build(kind: str, common: Common, journey: JourneyLike, spec: Spec, source: dict[str, object]) -> GenericRule:
    if isinstance(spec, count.CountSpec):
        return count.CountRule(common, journey, spec, source)
    if isinstance(spec, distinct.DistinctSpec):
        return distinct.DistinctRule(common, journey, spec, source)
    if isinstance(spec, absence.AbsenceSpec):
        return absence.AbsenceRule(common, journey, spec, source)
    return sequence.SequenceRule(common, journey, spec, source)


def _journeys(chk: Checker, journeys: Mapping[str, JourneyLike]) -> list[str] | None:
    raw = chk.table.get("journeys", list(journeys))
    if not isinstance(raw, list) or not raw or not all(isinstance(j, str) for j in raw):
        chk.error("journeys", f"must be a non-empty list of journey ids, got {raw!r}")
        return None
    unknown = [j for j in raw if j not in journeys]
    if unknown:
        chk.error("journeys", f"unknown journey {unknown[0]!r} (the pack has {', '.join(journeys)})")
        return None
    if len(set(raw)) != len(raw):
        chk.error("journeys", "journeys must be distinct")
        return None
    return [str(j) for j in raw]


def _common(chk: Checker, kind: str) -> Common | None:
    t: dict[str, Any] = chk.table
    n_errors = len(chk.errors)
    name = t.get("name", kind)
    if not isinstance(name, str) or not _NAME.match(name):
        chk.error("name", f"must be a name of letters, digits, '_' or '-', got {name!r}")
    urgency = t.get("urgency", "P2")
    if urgency not in URGENCIES:
        chk.error("urgency", f"must be one of {', '.join(URGENCIES)}, got {urgency!r}")
    action = t.get("action", "none")
    if not isinstance(action, str) or not _NAME.match(action):
        chk.error("action", f"must be a name, got {action!r}")
    ttl = chk.duration("ttl", required=False) if "ttl" in t else parse_duration("24h")
    act_within = chk.duration("act_within", required=False)
    channels = t.get("channels", [])
    if (not isinstance(channels, list) or not all(isinstance(c, str) and _NAME.match(c) for c in channels)
            or len(set(channels)) != len(channels)):
        chk.error("channels", f"must be a list of distinct names, got {channels!r}")
    holdout = t.get("holdout")
    if holdout is not None and (isinstance(holdout, bool) or not isinstance(holdout, int | float)
                                or not 0 <= holdout < 1):
        chk.error("holdout", f"must be a number in [0, 1), got {holdout!r}")
    stages = t.get("stages", [])
    if not isinstance(stages, list) or not all(s in STAGES for s in stages):
        chk.error("stages", f"must be a list of stages ({', '.join(STAGES)}), got {stages!r}")
    contact = t.get("contact", True)
    if not isinstance(contact, bool):
        chk.error("contact", f"must be true or false, got {contact!r}")
    if len(chk.errors) > n_errors or ttl is None:
        return None
    return Common(str(name), str(urgency), str(action), ttl, tuple(channels), act_within,
                  None if holdout is None else float(holdout), tuple(stages), bool(contact))


def _ms(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _pred(p: dict[str, list[str]] | None) -> str:
    """A predicate in words: ``of type fail at a key step``; empty: ``in the journey``."""
    if not p:
        return "in the journey"
    parts = []
    for field, values in p.items():
        shown = ["a key step" if v == KEY_STEPS else v for v in values]
        alts = " or ".join(shown)
        if field == "type":
            parts.append(f"of type {alts}")
        elif field == "channel":
            parts.append(f"on {alts}")
        elif field == "step":
            parts.append(f"at {alts}" if shown != ["a key step"] else "at a key step")
        elif field == "entry":
            parts.append(f"entered from {alts}")
        else:
            parts.append(f"with {field} {alts}")
    return " ".join(parts)


def describe(rule: GenericRule) -> str:
    """Return a one-line summary of a generic rule in plain words.

    Example: ``fires when 3 events of type fail fall within 30m, per step``.
    """
    if isinstance(rule, absence.AbsenceRule):
        a = rule.spec
        after = "any event in the journey" if a.until is None else f"an event {_pred(a.until)}"
        return f"fires {_ms(a.idle_ms)} after an event {_pred(a.when)} unless {after} comes first"
    if isinstance(rule, sequence.SequenceRule):
        q = rule.spec
        text = f"fires when an event {_pred(q.then)} follows one {_pred(q.first)} within {_ms(q.within_ms)}"
        return text + (f", with no event {_pred(q.unless)} in between" if q.unless is not None else "")
    if isinstance(rule, count.CountRule):
        c = rule.spec
        text = f"fires when {'an event' if c.threshold == 1 else f'{c.threshold} events'} {_pred(c.when)}"
        if c.threshold == 1:
            text += " occurs"
        else:
            text += f" fall within {_ms(c.within_ms)}" if c.within_ms is not None else " occur in one attempt"
        per, unless, unless_within = c.per, c.unless, c.unless_within_ms
    elif isinstance(rule, distinct.DistinctRule):
        d = rule.spec
        text = f"fires when events {_pred(d.when)} carry {d.threshold} distinct values of {d.field.name}"
        text += f" within {_ms(d.within_ms)}" if d.within_ms is not None else " in one attempt"
        per, unless, unless_within = d.per, d.unless, d.unless_within_ms
    else:
        raise TypeError(f"not a generic rule: {rule!r}")
    if per is not None:
        text += f", per {per.name}"
    if unless is not None and unless_within is not None:
        text += f", unless an event {_pred(unless)} came in the {_ms(unless_within)} before"
    return text
