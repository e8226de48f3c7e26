"""Rule packs: journeys and moment rules loaded from TOML, validated with exact error locations.

Every problem of a pack is reported (one line each, naming file, field and problem), not just the
first. A moment kind's parameters are validated by its detector (``Detector.PARAMS``); the contact
policy's tables and fields by ``state.rules_policy``.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

from state.detectors import KINDS, REGISTRY
from state.detectors.base import describe
from state.events import BASE_TYPES, MAX_TS_MS
from state.generic import schema as generic_schema
from state.generic.base import GenericRule
from state.plan import JourneyPlan
from state.rule_model import (
    DEFAULT_PACK,
    NAME,
    STAGE_REUSE,
    STAGE_USE,
    STAGES,
    URGENCIES,
    JourneyDef,
    MomentRule,
    Policy,
    RulePack,
    RulePackError,
    parse_duration,
    zone,
)
from state.rules_policy import check_keys as _check_keys
from state.rules_policy import duration as _duration
from state.rules_policy import effectiveness as _effectiveness
from state.rules_policy import latency_targets as _latency_targets
from state.rules_policy import policy as _policy
from state.rules_policy import rule_policy as _rule_policy
from state.rules_policy import str_list as _str_list

__all__ = ["DEFAULT_PACK", "KINDS", "STAGES", "STAGE_REUSE", "STAGE_USE", "URGENCIES", "JourneyDef", "MomentRule",
           "Policy", "RulePack", "RulePackError", "describe_rule", "load_rule_pack", "parse_duration",
           "rule_pack_from_dict", "zone"]

_T = TypeVar("_T")
_TOP_KEYS: Final = {"pack", "journey", "moment", "latency_targets", "types", "policy", "effectiveness"}
_MAX_RULES: Final = 60
MAX_PACK_BYTES: Final = 4 << 20  # a pack of 60 rules is a few KB: more is a mistake, read (and hashed) every poll
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339: Final = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:(\d{2})(\.\d+)?([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)")


class _Problems:
    """Collects the problems of a pack while validation goes on."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.found: list[tuple[str, str]] = []

    def run(self, fn: Callable[..., _T], *args: Any) -> _T | None:
        """Return ``fn(*args)``; on a ``RulePackError`` note its problems and return None."""
        try:
            return fn(*args)
        except RulePackError as e:
            self.found += e.problems
            return None

    def raise_any(self) -> None:
        """Raise one ``RulePackError`` listing every problem noted, if any."""
        if self.found:
            (where, problem), *more = self.found
            raise RulePackError(self.path, where, problem, tuple(more))


_COMMON: Final = {"kind", "urgency", "action", "ttl", "journeys", "channels", "act_within", "holdout", "stages",
                   "contact", "escalate"}


def load_rule_pack(path: str | Path | None = None) -> RulePack:
    """Load and validate a rule pack.

    Args:
        path: TOML file; the default pack when None.

    Returns:
        The validated pack.

    Raises:
        RulePackError: naming file, field and problem.
    """
    p = Path(path) if path is not None else DEFAULT_PACK
    if p.exists() and not p.is_file():
        # A FIFO would block the read for ever and /dev/zero fill memory.
        raise RulePackError(p, "(file)", "is not a regular file (a directory, FIFO or device)")
    try:
        size = p.stat().st_size if p.exists() else 0
        if size > MAX_PACK_BYTES:
            raise RulePackError(p, "(file)", f"is {size} bytes; a pack file may have at most {MAX_PACK_BYTES} (a "
                                             f"pack holds at most {_MAX_RULES} rules)")
        data = tomllib.loads(p.read_text(encoding="utf-8-sig"))  # an editor's byte-order mark is not TOML
    except FileNotFoundError:
        raise RulePackError(p, "(file)", "file not found") from None
    except OSError as e:
        raise RulePackError(p, "(file)", f"cannot be read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise RulePackError(p, "(file)", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise RulePackError(p, "(syntax)", str(e)) from None
    except RecursionError:
        # tomllib parses nested tables and arrays recursively: a hostile pack nested thousands deep.
        raise RulePackError(p, "(syntax)", "tables or arrays nested too deeply") from None
    return rule_pack_from_dict(data, str(p))


def rule_pack_from_dict(data: dict[str, Any], path: str = "<memory>") -> RulePack:
    """Validate a decoded rule pack (see ``load_rule_pack``).

    Raises:
        RulePackError: listing every problem found (``where``/``problem`` are the first one's).
    """
    probs = _Problems(path)
    probs.run(_check_keys, path, "(top)", data, _TOP_KEYS)
    name, version, attempt_timeout, effective_from = (probs.run(_pack_meta, path, data.get("pack", {}))
                                                      or (Path(path).stem, 1, 1, None))
    extra_types = data.get("types", [])
    types = set(BASE_TYPES) | set((probs.run(_str_list, path, "types", extra_types) or ()) if extra_types else ())
    journeys = _journeys(path, data.get("journey", []), types, probs)
    policy, defaults = probs.run(_policy, path, data.get("policy", {})) or (Policy(), _DEFAULTS)
    raw_moments = data.get("moment", [])
    rules = _moments(path, raw_moments, journeys, types, defaults, probs)
    if isinstance(raw_moments, list):
        rules += _generic_moments(path, raw_moments, journeys, types, attempt_timeout, defaults, rules, probs)
    if version != 1:
        rules = [replace(r, version=version) for r in rules]
    targets_ms = probs.run(_latency_targets, path, data.get("latency_targets", {})) or {}
    by_journey: dict[str, dict[str, MomentRule]] = {jid: {} for jid in journeys}
    for r in rules:
        if r.generic is None:
            by_journey[r.journey][r.kind] = r
    if len(rules) > _MAX_RULES:
        probs.found.append(("moment", f"at most {_MAX_RULES} rules per pack"))
    min_sample, confidence, min_uplift = (probs.run(_effectiveness, path, data.get("effectiveness", {}))
                                          or (200, 0.95, 0.0))
    for jd in journeys.values():
        generic = tuple(r for r in rules if r.generic is not None and r.journey == jd.id)
        probs.run(JourneyPlan, jd, by_journey[jd.id], path, generic)  # what the engine compiles must compile
    probs.raise_any()
    return RulePack(
        name, version, path, attempt_timeout, journeys, tuple(rules), frozenset(types), by_journey, targets_ms,
        policy, min_sample, confidence, min_uplift, effective_from,
    )


_DEFAULTS: Final[dict[str, Any]] = {"holdout": 0.0, "act_within_ms": 3_600_000}


def _pack_meta(path: str, meta: object) -> tuple[str, int, int, int | None]:
    if not isinstance(meta, dict):
        raise RulePackError(path, "pack", "must be a table")
    _check_keys(path, "pack", meta, {"name", "version", "attempt_timeout", "effective_from"})
    name = meta.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise RulePackError(path, "pack.name", f"must be a non-empty string, got {name!r}")
    version = meta.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RulePackError(path, "pack.version", f"must be a positive integer, got {version!r}")
    effective = meta.get("effective_from")
    return (name, version, _duration(path, "pack.attempt_timeout", meta.get("attempt_timeout", "24h")),
            None if effective is None else _instant(path, "pack.effective_from", effective))


def _instant(path: str, where: str, value: object) -> int:
    """Epoch ms of an RFC 3339 date-time (a string or a TOML date-time, with an offset) or of epoch ms."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value < MAX_TS_MS:  # no event is valid at or after it: such a version could never be in force
            raise RulePackError(path, where, f"epoch ms must be 0..{MAX_TS_MS - 1} (before 2100), got {value}")
        return value
    when: object = value
    rfc = _RFC3339.fullmatch(value) if isinstance(value, str) else None
    if rfc is not None and rfc.group(1) == "60":
        raise RulePackError(path, where, f"is a leap second, which epoch ms (Unix time) cannot name: give the second "
                                         f"before or the next one, got {value!r}")
    if isinstance(value, str):
        try:
            when = datetime.fromisoformat(value.upper())  # RFC 3339 allows 't' and 'z'
        except ValueError:
            raise RulePackError(path, where, f"must be an RFC 3339 date-time or epoch ms, got {value!r}") from None
    if not isinstance(when, datetime):
        raise RulePackError(path, where, f"must be an RFC 3339 date-time or epoch ms, got {value!r}")
    if when.tzinfo is None:
        raise RulePackError(path, where, f"needs a UTC offset (e.g. 2026-01-05T09:00:00Z), got {value!r}")
    if isinstance(value, str) and rfc is None:  # ISO 8601 forms RFC 3339 lacks: basic, week dates, no seconds, …
        raise RulePackError(path, where, f"must be an RFC 3339 date-time (YYYY-MM-DDTHH:MM:SS, optional fraction, "
                                         f"then Z or +HH:MM) or epoch ms, got {value!r}")
    # Exact, and rounded up: the first event ms at or after the instant (a float timestamp, and rounding a
    # sub-millisecond instant down, made a version take force up to 1 ms early). datetime keeps microseconds:
    # digits beyond them that are not all 0 put the instant just after ``when``.
    if rfc is not None and rfc.group(2) and rfc.group(2)[7:].strip("0"):
        when += timedelta(microseconds=1)
    ms = -((_EPOCH - when) // timedelta(milliseconds=1))
    if not 0 <= ms < MAX_TS_MS:
        raise RulePackError(path, where, f"must lie in 1970..2099 (event times accepted), got {value!r}")
    return ms


def _journeys(path: str, raw: object, types: set[str], probs: _Problems) -> dict[str, JourneyDef]:
    journeys: dict[str, JourneyDef] = {}
    if not isinstance(raw, list) or not raw:
        probs.found.append(("journey", "at least one [[journey]] is required"))
        return journeys
    for i, j in enumerate(raw):
        jd = probs.run(_journey, path, f"journey[{i}]", j, types, journeys)
        if jd is not None:
            journeys[jd.id] = jd
    return journeys


def _journey(path: str, where: str, j: object, types: set[str], journeys: dict[str, JourneyDef]) -> JourneyDef:
    if not isinstance(j, dict):
        raise RulePackError(path, where, "must be a table")
    _check_keys(path, where, j, {"id", "steps", "key_steps", "complete_type", "stages"})
    jid = j.get("id")
    if not isinstance(jid, str) or not NAME.match(jid):
        raise RulePackError(path, f"{where}.id", f"must be a name of letters, digits, '_' or '-', got {jid!r}")
    if jid in journeys:
        raise RulePackError(path, f"{where}.id", f"duplicate journey {jid!r}")
    steps = _str_list(path, f"{where}.steps", j.get("steps"))
    if len(set(steps)) != len(steps):
        raise RulePackError(path, f"{where}.steps", "steps must be distinct")
    key_steps = _str_list(path, f"{where}.key_steps", j.get("key_steps"))
    for k in key_steps:
        if k not in steps:
            raise RulePackError(path, f"{where}.key_steps", f"{k!r} is not one of the journey's steps")
    complete = j.get("complete_type", "complete")
    if not isinstance(complete, str) or complete not in types:
        raise RulePackError(path, f"{where}.complete_type", f"must be an event type, got {complete!r}")
    stage_types, stage_steps = _journey_stages(path, where, j.get("stages"), steps, key_steps, types)
    return JourneyDef(jid, steps, frozenset(key_steps), complete, stage_types, stage_steps)


def _moments(path: str, raw: object, journeys: dict[str, JourneyDef], types: set[str], defaults: dict[str, Any],
             probs: _Problems) -> list[MomentRule]:
    rules: list[MomentRule] = []
    if not isinstance(raw, list):
        probs.found.append(("moment", "must be an array of tables [[moment]]"))
        return rules
    for i, m in enumerate(raw):
        probs.run(_moment, path, f"moment[{i}]", m, journeys, types, defaults, rules, probs)
    return rules


def _moment(path: str, where: str, m: object, journeys: dict[str, JourneyDef], types: set[str],
            defaults: dict[str, Any], rules: list[MomentRule], probs: _Problems) -> None:
    """Validate one [[moment]]; append its rules (one per journey) to ``rules``."""
    if not isinstance(m, dict):
        raise RulePackError(path, where, "must be a table")
    before = len(probs.found)
    kind = m.get("kind")
    if kind in generic_schema.KINDS:
        return  # validated with the pack's other generic rules (``_generic_moments``)
    cls = REGISTRY.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise RulePackError(path, f"{where}.kind",
                            f"must be one of {', '.join((*KINDS, *generic_schema.KINDS))}, got {kind!r}")
    params = {p.key: p for p in cls.PARAMS}
    probs.run(_check_keys, path, where, m, _COMMON | set(params))
    urgency = m.get("urgency", "P2")
    if urgency not in URGENCIES:
        probs.found.append((f"{where}.urgency", f"must be one of {', '.join(URGENCIES)}, got {urgency!r}"))
    action = m.get("action", "none")
    if not isinstance(action, str) or not NAME.match(action):
        probs.found.append((f"{where}.action", f"must be a name, got {action!r}"))
    ttl = probs.run(_duration, path, f"{where}.ttl", m.get("ttl", "24h"))
    values = probs.run(_rule_policy, path, where, m, defaults)
    for key, p in params.items():
        try:
            v = p.value(m.get(key, p.default), types)
        except ValueError as e:
            probs.found.append((f"{where}.{key}", str(e)))
            values = None
            continue
        if values is not None:
            values[p.field] = v
    targets = probs.run(_str_list, path, f"{where}.journeys", m.get("journeys", list(journeys))) or ()
    for jid in targets:
        if jid not in journeys:
            raise RulePackError(path, f"{where}.journeys", f"unknown journey {jid!r}")
        rname = f"{jid}.{kind}"
        if any(r.name == rname for r in rules):
            raise RulePackError(path, f"{where}.kind", f"rule {rname!r} is defined twice")
        if values is not None and ttl is not None and len(probs.found) == before:
            rules.append(MomentRule(rname, str(kind), jid, len(rules), str(urgency), str(action), ttl, **values))


def describe_rule(r: MomentRule) -> str:
    """Return what a rule of a pack (built-in or generic) does, in one line of plain words."""
    if r.generic is not None:
        return generic_schema.describe(r.generic)
    return describe(REGISTRY[r.kind], r)


def _generic_moments(path: str, raw: list[Any], journeys: dict[str, JourneyDef], types: set[str],
                     attempt_timeout_ms: int, defaults: dict[str, Any], builtins: list[MomentRule],
                     probs: _Problems) -> list[MomentRule]:
    """Validate and compile the generic ``[[moment]]`` tables (DESIGN.md §8) into rules indexed after ``builtins``.

    Every problem is noted in ``probs`` (naming file, ``moment[i] (<journey>.<name>)`` and field); a rule whose
    name another rule of the pack already has is refused.
    """
    # The built-in tables (and the non-tables, unknown kinds) are ``_moment``'s: the schema skips them, the
    # positions (``moment[i]``) stay.
    raw = [m if isinstance(m, dict) and m.get("kind") in generic_schema.KINDS else {"kind": KINDS[0]} for m in raw]
    errors = generic_schema.validate(path, raw, journeys, attempt_timeout_ms, types=frozenset(types),
                                     builtin_kinds=KINDS)
    taken = {r.name for r in builtins}
    _name_clashes(raw, journeys, taken, probs)  # reported with the schema's problems, not only without them
    if errors:
        for e in errors:
            probs.found += e.problems
        return []
    compiled = generic_schema.compile_rules(path, raw, journeys, attempt_timeout_ms, types=frozenset(types),
                                            builtin_kinds=KINDS)
    per_journey: dict[str, int] = {}
    out: list[MomentRule] = []
    for g in compiled:
        if g.name in taken:
            continue  # reported by _name_clashes
        k = per_journey.get(g.journey, 0)
        per_journey[g.journey] = k + 1
        c = g.common
        out.append(MomentRule(
            g.name, g.kind, g.journey, len(builtins) + len(out), c.urgency, c.action, c.ttl_ms,
            channels=c.channels,
            act_within_ms=c.act_within_ms if c.act_within_ms is not None else defaults["act_within_ms"],
            holdout=c.holdout if c.holdout is not None else defaults["holdout"],
            stages=frozenset(STAGES.index(s) for s in c.stages), contact=c.contact,
            generic=g, bit=1 << (len(KINDS) + k), span_ms=_span_ms(g),
        ))
    return out


def _name_clashes(raw: list[Any], journeys: dict[str, JourneyDef], taken: set[str], probs: _Problems) -> None:
    """Note each generic rule named like a built-in rule of the pack (``<journey>.<name>``, as compiled)."""
    for i, m in enumerate(raw):
        if m.get("kind") not in generic_schema.KINDS:
            continue
        name, js = m.get("name", m["kind"]), m.get("journeys", list(journeys))
        if not isinstance(name, str) or not isinstance(js, list):
            continue  # the schema reports those
        for j in js:
            if isinstance(j, str) and f"{j}.{name}" in taken:
                probs.found.append((f"moment[{i}] ({j}.{name}).name",
                                    f"rule '{j}.{name}' is already defined by a built-in rule"))


def _span_ms(g: GenericRule) -> int:
    """How far a generic rule looks back or ahead: its window, idle or ``unless_within`` (for eviction)."""
    spans = [getattr(g, a, None) for a in ("within_ms", "idle_ms", "unless_within_ms")]
    return max((s for s in spans if isinstance(s, int)), default=0)


def _journey_stages(
    path: str, where: str, raw: object, steps: tuple[str, ...], key_steps: tuple[str, ...], types: set[str]
) -> tuple[dict[str, int], dict[str, int]]:
    """Return (type → stage, step → stage); by default views and non-key steps mean knowledge, intents and
    key steps intention."""
    if raw is None:
        by_type = {"view": 1, "engage": 1, "start": 2, "submit": 2}
        by_step = {s: (2 if s in key_steps else 1) for s in steps}
        return {t: v for t, v in by_type.items() if t in types}, by_step
    if not isinstance(raw, dict):
        raise RulePackError(path, f"{where}.stages", "must be a table like {knowledge = [\"view\"], intention = [...]}")
    by_type, by_step = {}, {}
    for stage, names in raw.items():
        if stage not in ("knowledge", "intention"):
            raise RulePackError(path, f"{where}.stages.{stage}", "only knowledge and intention are marked by "
                                "events (use and reuse come from completion)")
        for n in _str_list(path, f"{where}.stages.{stage}", names):
            if n in steps:
                by_step[n] = STAGES.index(stage)
            elif n in types:
                by_type[n] = STAGES.index(stage)
            else:
                raise RulePackError(path, f"{where}.stages.{stage}",
                                    f"{n!r} is neither a step of the journey nor an event type")
    return by_type, by_step
