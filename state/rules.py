"""Rule packs: journeys and moment rules loaded from TOML, validated with exact error locations."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state.events import BASE_TYPES, CHANNELS

KINDS = ("abandoned", "failed", "stuck", "maze", "channel_hop", "interested", "handoff")
URGENCIES = ("P1", "P2", "P3", "P4")
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
    """A business journey: ordered steps, key steps and the event type that completes it."""

    id: str
    steps: tuple[str, ...]
    key_steps: frozenset[str]
    complete_type: str = "complete"


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

    @property
    def horizon_ms(self) -> int:
        """The longest time any rule looks back or ahead: idle customers older than this are evicted."""
        spans = [self.attempt_timeout_ms, *(r.within_ms for r in self.rules), *(r.no_intent_ms for r in self.rules)]
        return max(spans)

    def fingerprint(self) -> str:
        """A short hash of the pack's rule semantics, to refuse restoring state built by another pack."""
        import hashlib

        # Canonical text: frozensets are sorted, since their repr order follows the per-process string hash.
        journeys = [(j.id, j.steps, sorted(j.key_steps), j.complete_type) for j in self.journeys.values()]
        text = repr((sorted(journeys), self.rules, self.attempt_timeout_ms))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


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
_COMMON = {"kind", "urgency", "action", "ttl", "journeys"}


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
    _check_keys(path, "(top)", data, {"pack", "journey", "moment", "latency_targets", "types"})
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
        _check_keys(path, where, j, {"id", "steps", "key_steps", "complete_type"})
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
        journeys[jid] = JourneyDef(jid, steps, frozenset(key_steps), complete)

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
        values: dict[str, Any] = {}
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
    return RulePack(
        name, version, path, attempt_timeout, journeys, tuple(rules), frozenset(types), by_journey, targets_ms
    )
