"""Rule packs: journeys and moment rules loaded from TOML, validated with exact error locations."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from datetime import tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from state.events import BASE_TYPES, CHANNELS

KINDS = ("abandoned", "failed", "stuck", "maze", "channel_hop", "interested", "handoff")
URGENCIES = ("P1", "P2", "P3", "P4")
# Journey life-cycle stages, in order (DESIGN.md §1, issue 6): an attempt only moves forward.
STAGES = ("awareness", "knowledge", "intention", "use", "reuse")
STAGE_USE = 3
STAGE_REUSE = 4
DEFAULT_PACK = Path(__file__).resolve().parent.parent / "flows" / "rulepacks" / "default.toml"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class RulePackError(ValueError):
    """An invalid rule pack; the message names file, field and problem."""

    def __init__(self, path: str | Path, where: str, problem: str) -> None:
        super().__init__(f"{path}: {where}: {problem}")
        self.path = str(path)
        self.where = where
        self.problem = problem


def parse_duration(value: object) -> int:
    """Return milliseconds from a duration like ``"10m"``.

    Args:
        value: A string ``<number><ms|s|m|h|d>``.

    Returns:
        Milliseconds (> 0).

    Raises:
        ValueError: when the value is not such a string.
    """
    if not isinstance(value, str) or not (m := _DURATION.match(value)):
        raise ValueError(f"must be a duration like '10m', got {value!r}")
    ms = int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    if ms <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return ms


@dataclass(frozen=True, slots=True)
class JourneyDef:
    """A business journey: ordered steps, key steps, the event type that completes it, and stage marks.

    ``stage_types`` and ``stage_steps`` map an event type or step to the life-cycle stage (index
    into ``STAGES``) an attempt reaches with it; completion gives ``use`` (``reuse`` for a customer
    who completed the journey before).
    """

    id: str
    steps: tuple[str, ...]
    key_steps: frozenset[str]
    complete_type: str = "complete"
    stage_types: dict[str, int] = field(default_factory=dict)
    stage_steps: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MomentRule:
    """One moment rule applied to one journey; ``name`` is ``<journey>.<kind>``."""

    name: str
    kind: str
    journey: str
    index: int
    urgency: str
    action: str
    ttl_ms: int
    within_ms: int = 0
    threshold: int = 0
    no_intent_ms: int = 0
    channel: str = ""
    type: str = ""
    recent_steps: int = 0
    # Contact policy (issue 6): candidate action channels in order of preference, how late an action
    # may still be taken, the hold-out share, the stages in which it acts, and whether the action
    # contacts the customer (caps, gaps and quiet hours apply) or only informs staff (agent screen).
    channels: tuple[str, ...] = ()
    act_within_ms: int = 3_600_000
    holdout: float = 0.0
    stages: frozenset[int] = frozenset()
    contact: bool = True


@dataclass(frozen=True, slots=True)
class Policy:
    """Per-customer contact policy: caps over rolling windows, gaps, quiet hours, suppression after completion.

    A cap of 0 means no cap. Quiet hours are minutes of the local day ``[start, end)`` (wrapping
    midnight when start > end), in the customer's time zone (``attrs.tz`` on events) or ``timezone``.
    """

    max_per_day: int = 2
    max_per_week: int = 5
    min_gap_ms: int = 4 * 3_600_000
    quiet: tuple[int, int] | None = None
    timezone: str = "UTC"
    quiet_bypass: frozenset[str] = frozenset({"P1"})
    after_complete_ms: int = 7 * 86_400_000
    channel_caps: dict[str, int] = field(default_factory=dict)

    @property
    def history_ms(self) -> int:
        """How long a customer's past actions matter to the caps and gap."""
        spans = [self.min_gap_ms, 86_400_000 if (self.max_per_day or self.channel_caps) else 0]
        if self.max_per_week:
            spans.append(7 * 86_400_000)
        return max(spans)


@dataclass(frozen=True, slots=True)
class RulePack:
    """A validated rule pack."""

    name: str
    version: int
    path: str
    attempt_timeout_ms: int
    journeys: dict[str, JourneyDef]
    rules: tuple[MomentRule, ...]
    types: frozenset[str]
    by_journey: dict[str, dict[str, MomentRule]] = field(default_factory=dict)
    latency_targets_ms: dict[str, int] = field(default_factory=dict)
    policy: Policy = field(default_factory=Policy)
    # Rule effectiveness: a rule is judged once both arms have this many moments, at this confidence.
    effect_min_sample: int = 200
    effect_confidence: float = 0.95

    @property
    def horizon_ms(self) -> int:
        """The longest time any rule looks back or ahead: idle customers older than this are evicted."""
        spans = [self.attempt_timeout_ms, *(r.within_ms for r in self.rules), *(r.no_intent_ms for r in self.rules)]
        return max(spans)

    def fingerprint(self) -> str:
        """A short hash of the pack's rule semantics, to refuse restoring state built by another pack."""
        import hashlib

        # Canonical text: frozensets are sorted, since their repr order follows the per-process string hash.
        # Only detection semantics count: contact policy, stage marks and effectiveness settings apply
        # cleanly to restored state, so changing them across a restart is allowed.
        journeys = [(j.id, j.steps, sorted(j.key_steps), j.complete_type) for j in self.journeys.values()]
        rules = [tuple(getattr(r, f) for f in _DETECTION_FIELDS) for r in self.rules]
        text = repr((sorted(journeys), rules, self.attempt_timeout_ms))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


_DETECTION_FIELDS = ("name", "kind", "journey", "index", "urgency", "action", "ttl_ms", "within_ms", "threshold",
                     "no_intent_ms", "channel", "type", "recent_steps")

_KIND_PARAMS: dict[str, dict[str, tuple[str, Any]]] = {
    # kind -> {toml key: (MomentRule field, default)}
    "abandoned": {"idle": ("within_ms", "10m")},
    "failed": {},
    "stuck": {"threshold": ("threshold", 3), "within": ("within_ms", "30m")},
    "maze": {"distinct_entries": ("threshold", 3), "within": ("within_ms", "30m")},
    "channel_hop": {"distinct_channels": ("threshold", 3), "within": ("within_ms", "60m")},
    "interested": {
        "count": ("threshold", 2),
        "within": ("within_ms", "24h"),
        "no_intent_within": ("no_intent_ms", "24h"),
    },
    "handoff": {
        "channel": ("channel", "call_center"),
        "type": ("type", "contact"),
        "within": ("within_ms", "30m"),
        "recent_steps": ("recent_steps", 5),
    },
}
_COMMON = {"kind", "urgency", "action", "ttl", "journeys", "channels", "act_within", "holdout", "stages", "contact"}
_POLICY_KEYS = {"max_per_day", "max_per_week", "min_gap", "quiet_hours", "timezone", "quiet_bypass", "after_complete",
                "holdout", "act_within", "channel_caps"}
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def _check_keys(path: str, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    for key in table:
        if key not in allowed:
            raise RulePackError(path, f"{where}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _str_list(path: str, where: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and _NAME.match(v) for v in value):
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
    return rule_pack_from_dict(data, str(p))


def rule_pack_from_dict(data: dict[str, Any], path: str = "<memory>") -> RulePack:
    """Validate a decoded rule pack (see ``load_rule_pack``)."""
    _check_keys(path, "(top)", data, {"pack", "journey", "moment", "latency_targets", "types", "policy",
                                      "effectiveness"})
    meta = data.get("pack", {})
    if not isinstance(meta, dict):
        raise RulePackError(path, "pack", "must be a table")
    _check_keys(path, "pack", meta, {"name", "version", "attempt_timeout"})
    name = meta.get("name", Path(path).stem)
    if not isinstance(name, str) or not name:
        raise RulePackError(path, "pack.name", f"must be a non-empty string, got {name!r}")
    version = meta.get("version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise RulePackError(path, "pack.version", f"must be a positive integer, got {version!r}")
    attempt_timeout = _duration(path, "pack.attempt_timeout", meta.get("attempt_timeout", "24h"))

    extra_types = data.get("types", [])
    types = set(BASE_TYPES) | set(_str_list(path, "types", extra_types) if extra_types else ())

    journeys: dict[str, JourneyDef] = {}
    raw_journeys = data.get("journey", [])
    if not isinstance(raw_journeys, list) or not raw_journeys:
        raise RulePackError(path, "journey", "at least one [[journey]] is required")
    for i, j in enumerate(raw_journeys):
        where = f"journey[{i}]"
        if not isinstance(j, dict):
            raise RulePackError(path, where, "must be a table")
        _check_keys(path, where, j, {"id", "steps", "key_steps", "complete_type", "stages"})
        jid = j.get("id")
        if not isinstance(jid, str) or not _NAME.match(jid):
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
        journeys[jid] = JourneyDef(jid, steps, frozenset(key_steps), complete, stage_types, stage_steps)

    policy, defaults = _policy(path, data.get("policy", {}))
    rules: list[MomentRule] = []
    raw_moments = data.get("moment", [])
    if not isinstance(raw_moments, list):
        raise RulePackError(path, "moment", "must be an array of tables [[moment]]")
    for i, m in enumerate(raw_moments):
        where = f"moment[{i}]"
        if not isinstance(m, dict):
            raise RulePackError(path, where, "must be a table")
        kind = m.get("kind")
        if kind not in _KIND_PARAMS:
            raise RulePackError(path, f"{where}.kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        params = _KIND_PARAMS[kind]
        _check_keys(path, where, m, _COMMON | set(params))
        urgency = m.get("urgency", "P2")
        if urgency not in URGENCIES:
            raise RulePackError(path, f"{where}.urgency", f"must be one of {', '.join(URGENCIES)}, got {urgency!r}")
        action = m.get("action", "none")
        if not isinstance(action, str) or not _NAME.match(action):
            raise RulePackError(path, f"{where}.action", f"must be a name, got {action!r}")
        ttl = _duration(path, f"{where}.ttl", m.get("ttl", "24h"))
        values: dict[str, Any] = _rule_policy(path, where, m, defaults)
        for key, (fname, default) in params.items():
            v = m.get(key, default)
            if fname.endswith("_ms"):
                values[fname] = _duration(path, f"{where}.{key}", v)
            elif fname in ("threshold", "recent_steps"):
                if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 100:
                    raise RulePackError(path, f"{where}.{key}", f"must be an integer 1..100, got {v!r}")
                values[fname] = v
            else:
                if not isinstance(v, str) or not v:
                    raise RulePackError(path, f"{where}.{key}", f"must be a non-empty string, got {v!r}")
                if fname == "channel" and v not in CHANNELS:
                    raise RulePackError(path, f"{where}.{key}", f"unknown channel {v!r}")
                if fname == "type" and v not in types:
                    raise RulePackError(path, f"{where}.{key}", f"unknown event type {v!r}")
                values[fname] = v
        targets = m.get("journeys", list(journeys))
        for jid in _str_list(path, f"{where}.journeys", targets):
            if jid not in journeys:
                raise RulePackError(path, f"{where}.journeys", f"unknown journey {jid!r}")
            rname = f"{jid}.{kind}"
            if any(r.name == rname for r in rules):
                raise RulePackError(path, f"{where}.kind", f"rule {rname!r} is defined twice")
            rules.append(MomentRule(rname, kind, jid, len(rules), urgency, action, ttl, **values))

    targets_ms = {"P1": 10_000, "P2": 60_000, "P3": 3_600_000, "P4": 86_400_000}
    raw_targets = data.get("latency_targets", {})
    if not isinstance(raw_targets, dict):
        raise RulePackError(path, "latency_targets", "must be a table like {P1 = \"10s\"}")
    for urg, v in raw_targets.items():
        if urg not in URGENCIES:
            raise RulePackError(path, f"latency_targets.{urg}", f"must be one of {', '.join(URGENCIES)}")
        targets_ms[urg] = _duration(path, f"latency_targets.{urg}", v)

    by_journey: dict[str, dict[str, MomentRule]] = {jid: {} for jid in journeys}
    for r in rules:
        by_journey[r.journey][r.kind] = r
    if len(rules) > 60:
        raise RulePackError(path, "moment", "at most 60 rules per pack")
    min_sample, confidence = _effectiveness(path, data.get("effectiveness", {}))
    return RulePack(
        name, version, path, attempt_timeout, journeys, tuple(rules), frozenset(types), by_journey, targets_ms,
        policy, min_sample, confidence,
    )


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
        if not _NAME.match(ch):
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
    return {
        "channels": channels,
        "act_within_ms": (_duration(path, f"{where}.act_within", m["act_within"]) if "act_within" in m
                          else defaults["act_within_ms"]),
        "holdout": _fraction(path, f"{where}.holdout", m["holdout"]) if "holdout" in m else defaults["holdout"],
        "stages": stages,
        "contact": contact,
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


@lru_cache(maxsize=1024)
def zone(name: str) -> tzinfo | None:
    """Return the time zone of an IANA name, or None when unknown.

    Cached, but bounded: event attrs repeat a few hundred real names at most, and a stream of made-up names
    (any string up to 64 characters is tried) must not grow the cache without end.
    """
    try:
        return ZoneInfo(name)
    except (ValueError, OSError, ZoneInfoNotFoundError):
        return None
