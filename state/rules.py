"""Rule packs: journeys and moment rules loaded from TOML, validated with exact error locations.

Every problem of a pack is reported (one line each, naming file, field and problem), not just the
first. A moment kind's parameters are validated by its detector (``Detector.PARAMS``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TypeVar

from state.detectors import KINDS, REGISTRY
from state.detectors.base import describe
from state.events import BASE_TYPES
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

__all__ = ["DEFAULT_PACK", "KINDS", "STAGES", "STAGE_REUSE", "STAGE_USE", "URGENCIES", "JourneyDef", "MomentRule",
           "Policy", "RulePack", "RulePackError", "describe_rule", "load_rule_pack", "parse_duration",
           "rule_pack_from_dict", "zone"]

_T = TypeVar("_T")
_TOP_KEYS: Final = {"pack", "journey", "moment", "latency_targets", "types", "policy", "effectiveness"}
_MAX_RULES: Final = 60


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
_POLICY_KEYS: Final = {"max_per_day", "max_per_week", "min_gap", "quiet_hours", "timezone", "quiet_bypass",
                       "after_complete", "holdout", "act_within", "channel_caps"}
_HHMM: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _check_keys(path: str, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise RulePackError(path, f"{where}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _str_list(path: str, where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and NAME.match(v) for v in value):
        raise RulePackError(path, where, f"must be a non-empty list of names, got {value!r}")
    return tuple(value)


def _duration(path: str, where: str, value: object) -> int:
    try:
        return parse_duration(value)
    except ValueError as e:
        raise RulePackError(path, where, str(e)) from None


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
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
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
    name, version, attempt_timeout = probs.run(_pack_meta, path, data.get("pack", {})) or (Path(path).stem, 1, 1)
    extra_types = data.get("types", [])
    types = set(BASE_TYPES) | set((probs.run(_str_list, path, "types", extra_types) or ()) if extra_types else ())
    journeys = _journeys(path, data.get("journey", []), types, probs)
    policy, defaults = probs.run(_policy, path, data.get("policy", {})) or (Policy(), _DEFAULTS)
    raw_moments = data.get("moment", [])
    rules = _moments(path, raw_moments, journeys, types, defaults, probs)
    if isinstance(raw_moments, list):
        rules += _generic_moments(path, raw_moments, journeys, types, attempt_timeout, defaults, rules, probs)
    targets_ms = probs.run(_latency_targets, path, data.get("latency_targets", {})) or {}
    by_journey: dict[str, dict[str, MomentRule]] = {jid: {} for jid in journeys}
    for r in rules:
        if r.generic is None:
            by_journey[r.journey][r.kind] = r
    if len(rules) > _MAX_RULES:
        probs.found.append(("moment", f"at most {_MAX_RULES} rules per pack"))
    min_sample, confidence = probs.run(_effectiveness, path, data.get("effectiveness", {})) or (200, 0.95)
    for jd in journeys.values():
        generic = tuple(r for r in rules if r.generic is not None and r.journey == jd.id)
        probs.run(JourneyPlan, jd, by_journey[jd.id], path, generic)  # what the engine compiles must compile
    probs.raise_any()
    return RulePack(
        name, version, path, attempt_timeout, journeys, tuple(rules), frozenset(types), by_journey, targets_ms,
        policy, min_sample, confidence,
    )


_DEFAULTS: Final[dict[str, Any]] = {"holdout": 0.0, "act_within_ms": 3_600_000}


def _pack_meta(path: str, meta: object) -> tuple[str, int, int]:
    if not isinstance(meta, dict):
        raise RulePackError(path, "pack", "must be a table")
    _check_keys(path, "pack", meta, {"name", "version", "attempt_timeout"})
    name = meta.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise RulePackError(path, "pack.name", f"must be a non-empty string, got {name!r}")
    version = meta.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RulePackError(path, "pack.version", f"must be a positive integer, got {version!r}")
    return name, version, _duration(path, "pack.attempt_timeout", meta.get("attempt_timeout", "24h"))


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
    if errors:
        for e in errors:
            probs.found += e.problems
        return []
    compiled = generic_schema.compile_rules(path, raw, journeys, attempt_timeout_ms, types=frozenset(types),
                                            builtin_kinds=KINDS)
    taken = {r.name for r in builtins}
    per_journey: dict[str, int] = {}
    out: list[MomentRule] = []
    for g in compiled:
        if g.name in taken:
            where = next((f"moment[{i}]" for i, m in enumerate(raw) if g.source is m), "moment")
            probs.found.append((f"{where}.name", f"rule {g.name!r} is already defined by a built-in rule"))
            continue
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


def _span_ms(g: GenericRule) -> int:
    """How far a generic rule looks back or ahead: its window, idle or ``unless_within`` (for eviction)."""
    spans = [getattr(g, a, None) for a in ("within_ms", "idle_ms", "unless_within_ms")]
    return max((s for s in spans if isinstance(s, int)), default=0)


def _latency_targets(path: str, raw: object) -> dict[str, int]:
    targets_ms = {"P1": 10_000, "P2": 60_000, "P3": 3_600_000, "P4": 86_400_000}
    if not isinstance(raw, dict):
        raise RulePackError(path, "latency_targets", "must be a table like {P1 = \"10s\"}")
    for urg, v in raw.items():
        if urg not in URGENCIES:
            raise RulePackError(path, f"latency_targets.{urg}", f"must be one of {', '.join(URGENCIES)}")
        targets_ms[urg] = _duration(path, f"latency_targets.{urg}", v)
    return targets_ms


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


def _fraction(path: str, where: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
        raise RulePackError(path, where, f"must be a number in [0, 1), got {v!r}")
    return float(v)


def _count(path: str, where: str, v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1000:
        raise RulePackError(path, where, f"must be an integer 0..1000 (0 = no cap), got {v!r}")
    return v


def _policy(path: str, raw: object) -> tuple[Policy, dict[str, Any]]:
    """Validate ``[policy]``; return it and the defaults its rules inherit (hold-out share, act_within)."""
    if not isinstance(raw, dict):
        raise RulePackError(path, "policy", "must be a table")
    _check_keys(path, "policy", raw, _POLICY_KEYS)
    base = Policy()
    quiet = None
    if "quiet_hours" in raw:
        q = raw["quiet_hours"]
        parts = q.split("-") if isinstance(q, str) else []
        marks = [_HHMM.match(x.strip()) for x in parts]
        if len(parts) != 2 or not all(marks):
            raise RulePackError(path, "policy.quiet_hours", f"must be like \"21:00-08:00\", got {q!r}")
        start, end = (int(m.group(1)) * 60 + int(m.group(2)) for m in marks if m)
        if start == end:
            raise RulePackError(path, "policy.quiet_hours", "start and end must differ")
        quiet = (start, end)
    tz = raw.get("timezone", base.timezone)
    if not isinstance(tz, str) or zone(tz) is None:
        raise RulePackError(path, "policy.timezone", f"unknown time zone {tz!r} (an IANA name like 'Asia/Shanghai')")
    bypass = raw.get("quiet_bypass", sorted(base.quiet_bypass))
    if not isinstance(bypass, list) or not all(u in URGENCIES for u in bypass):
        raise RulePackError(path, "policy.quiet_bypass", f"must be a list of urgencies ({', '.join(URGENCIES)})")
    caps_raw = raw.get("channel_caps", {})
    if not isinstance(caps_raw, dict):
        raise RulePackError(path, "policy.channel_caps", "must be a table like {sms = 1}")
    caps = {}
    for ch, v in caps_raw.items():
        if not NAME.match(ch):
            raise RulePackError(path, f"policy.channel_caps.{ch}", "must be a channel name")
        caps[ch] = _count(path, f"policy.channel_caps.{ch}", v)
    policy = Policy(
        max_per_day=_count(path, "policy.max_per_day", raw.get("max_per_day", base.max_per_day)),
        max_per_week=_count(path, "policy.max_per_week", raw.get("max_per_week", base.max_per_week)),
        min_gap_ms=_duration(path, "policy.min_gap", raw["min_gap"]) if "min_gap" in raw else base.min_gap_ms,
        quiet=quiet,
        timezone=tz,
        quiet_bypass=frozenset(bypass),
        after_complete_ms=(_duration(path, "policy.after_complete", raw["after_complete"])
                           if "after_complete" in raw else base.after_complete_ms),
        channel_caps=caps,
    )
    defaults = {
        "holdout": _fraction(path, "policy.holdout", raw.get("holdout", 0.0)),
        "act_within_ms": _duration(path, "policy.act_within", raw.get("act_within", "1h")),
    }
    return policy, defaults


def _rule_policy(path: str, where: str, m: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Validate a rule's contact-policy fields."""
    channels = _str_list(path, f"{where}.channels", m["channels"]) if "channels" in m else ()
    if len(set(channels)) != len(channels):
        raise RulePackError(path, f"{where}.channels", "channels must be distinct")
    stages: frozenset[int] = frozenset()
    if "stages" in m:
        names = _str_list(path, f"{where}.stages", m["stages"])
        for n in names:
            if n not in STAGES:
                raise RulePackError(path, f"{where}.stages", f"{n!r} is not a stage ({', '.join(STAGES)})")
        stages = frozenset(STAGES.index(n) for n in names)
    contact = m.get("contact", True)
    if not isinstance(contact, bool):
        raise RulePackError(path, f"{where}.contact", f"must be true or false, got {contact!r}")
    escalate = m.get("escalate", False)
    if not isinstance(escalate, bool):
        raise RulePackError(path, f"{where}.escalate", f"must be true or false, got {escalate!r}")
    if escalate and not contact:
        raise RulePackError(path, f"{where}.escalate", "only a rule that contacts the customer (contact = true) "
                            "can escalate past min_gap")
    return {
        "channels": channels,
        "act_within_ms": (_duration(path, f"{where}.act_within", m["act_within"]) if "act_within" in m
                          else defaults["act_within_ms"]),
        "holdout": _fraction(path, f"{where}.holdout", m["holdout"]) if "holdout" in m else defaults["holdout"],
        "stages": stages,
        "contact": contact,
        "escalate": escalate,
    }


def _effectiveness(path: str, raw: object) -> tuple[int, float]:
    if not isinstance(raw, dict):
        raise RulePackError(path, "effectiveness", "must be a table")
    _check_keys(path, "effectiveness", raw, {"min_sample", "confidence"})
    n = raw.get("min_sample", 200)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RulePackError(path, "effectiveness.min_sample", f"must be a positive integer, got {n!r}")
    c = raw.get("confidence", 0.95)
    if isinstance(c, bool) or not isinstance(c, int | float) or not 0.5 <= c < 1:
        raise RulePackError(path, "effectiveness.confidence", f"must be a number in [0.5, 1), got {c!r}")
    return n, float(c)
