"""Rule packs, the contact policy's part: ``[policy]``, a rule's policy fields, ``[effectiveness]`` and
``[latency_targets]``, with the field checks the rest of the loader (``state.rules``) shares.

Each check raises ``RulePackError`` naming file, field and problem.
"""

from __future__ import annotations

import re
from typing import Any, Final

from state.rule_model import NAME, STAGES, URGENCIES, Policy, RulePackError, parse_duration, zone

_POLICY_KEYS: Final = {"max_per_day", "max_per_week", "min_gap", "quiet_hours", "timezone", "quiet_bypass",
                       "after_complete", "holdout", "act_within", "channel_caps"}
_HHMM: Final = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def check_keys(path: str, where: str, table: dict[str, Any], allowed: set[str]) -> None:
    """Refuse a key of ``table`` that is not in ``allowed``."""
    for key in table:
        if key not in allowed:
            raise RulePackError(path, f"{where}.{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def str_list(path: str, where: str, value: object) -> tuple[str, ...]:
    """Return ``value`` as a non-empty tuple of names, else refuse it."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and NAME.match(v) for v in value):
        raise RulePackError(path, where, f"must be a non-empty list of names, got {value!r}")
    return tuple(value)


def duration(path: str, where: str, value: object) -> int:
    """Return a duration (``"10m"``) in ms, else refuse it."""
    try:
        return parse_duration(value)
    except ValueError as e:
        raise RulePackError(path, where, str(e)) from None


def latency_targets(path: str, raw: object) -> dict[str, int]:
    """Validate ``[latency_targets]``: urgency → target in ms (defaults for those not given)."""
    targets_ms = {"P1": 10_000, "P2": 60_000, "P3": 3_600_000, "P4": 86_400_000}
    if not isinstance(raw, dict):
        raise RulePackError(path, "latency_targets", "must be a table like {P1 = \"10s\"}")
    for urg, v in raw.items():
        if urg not in URGENCIES:
            raise RulePackError(path, f"latency_targets.{urg}", f"must be one of {', '.join(URGENCIES)}")
        targets_ms[urg] = duration(path, f"latency_targets.{urg}", v)
    return targets_ms


def fraction(path: str, where: str, v: object) -> float:
    """Return a number in [0, 1), else refuse it."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
        raise RulePackError(path, where, f"must be a number in [0, 1), got {v!r}")
    return float(v)


def count(path: str, where: str, v: object) -> int:
    """Return a cap 0..1000, else refuse it."""
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1000:
        raise RulePackError(path, where, f"must be an integer 0..1000 (0 = no cap), got {v!r}")
    return v


def policy(path: str, raw: object) -> tuple[Policy, dict[str, Any]]:
    """Validate ``[policy]``; return it and the defaults its rules inherit (hold-out share, act_within)."""
    if not isinstance(raw, dict):
        raise RulePackError(path, "policy", "must be a table")
    check_keys(path, "policy", raw, _POLICY_KEYS)
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
        caps[ch] = count(path, f"policy.channel_caps.{ch}", v)
    policy = Policy(
        max_per_day=count(path, "policy.max_per_day", raw.get("max_per_day", base.max_per_day)),
        max_per_week=count(path, "policy.max_per_week", raw.get("max_per_week", base.max_per_week)),
        min_gap_ms=duration(path, "policy.min_gap", raw["min_gap"]) if "min_gap" in raw else base.min_gap_ms,
        quiet=quiet,
        timezone=tz,
        quiet_bypass=frozenset(bypass),
        after_complete_ms=(duration(path, "policy.after_complete", raw["after_complete"])
                           if "after_complete" in raw else base.after_complete_ms),
        channel_caps=caps,
    )
    defaults = {
        "holdout": fraction(path, "policy.holdout", raw.get("holdout", 0.0)),
        "act_within_ms": duration(path, "policy.act_within", raw.get("act_within", "1h")),
    }
    return policy, defaults


def rule_policy(path: str, where: str, m: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """Validate a rule's contact-policy fields."""
    channels = str_list(path, f"{where}.channels", m["channels"]) if "channels" in m else ()
    if len(set(channels)) != len(channels):
        raise RulePackError(path, f"{where}.channels", "channels must be distinct")
    stages: frozenset[int] = frozenset()
    if "stages" in m:
        names = str_list(path, f"{where}.stages", m["stages"])
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
        "act_within_ms": (duration(path, f"{where}.act_within", m["act_within"]) if "act_within" in m
                          else defaults["act_within_ms"]),
        "holdout": fraction(path, f"{where}.holdout", m["holdout"]) if "holdout" in m else defaults["holdout"],
        "stages": stages,
        "contact": contact,
        "escalate": escalate,
    }


def effectiveness(path: str, raw: object) -> tuple[int, float, float]:
    """Validate ``[effectiveness]``: (min_sample, confidence, min_uplift)."""
    if not isinstance(raw, dict):
        raise RulePackError(path, "effectiveness", "must be a table")
    check_keys(path, "effectiveness", raw, {"min_sample", "confidence", "min_uplift"})
    n = raw.get("min_sample", 200)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RulePackError(path, "effectiveness.min_sample", f"must be a positive integer, got {n!r}")
    c = raw.get("confidence", 0.95)
    if isinstance(c, bool) or not isinstance(c, int | float) or not 0.5 <= c < 1:
        raise RulePackError(path, "effectiveness.confidence", f"must be a number in [0.5, 1), got {c!r}")
    u = raw.get("min_uplift", 0.0)
    if isinstance(u, bool) or not isinstance(u, int | float) or not 0 <= u < 1:
        raise RulePackError(path, "effectiveness.min_uplift",
                            f"must be a fraction in [0, 1) (0.01 = one percentage point), got {u!r}")
    return n, float(c), float(u)
