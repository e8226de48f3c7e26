"""The rule pack model: journeys, moment rules, contact policy and the errors that name where a pack is wrong.

Loaded and validated by ``state.rules``; kept apart so the detectors (which own their parameters) can
use it without importing the loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import tzinfo
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import state

URGENCIES: Final = ("P1", "P2", "P3", "P4")
# Journey life-cycle stages, in order (DESIGN.md §1, issue 6): an attempt only moves forward.
STAGES: Final = ("awareness", "knowledge", "intention", "use", "reuse")
STAGE_USE: Final = 3
STAGE_REUSE: Final = 4
# From the package's __init__, which is never compiled: a compiled module's __file__ is not its source's path.
DEFAULT_PACK: Final = Path(state.__file__).resolve().parent.parent / "flows" / "rulepacks" / "default.toml"
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
if TYPE_CHECKING:
    from state.generic.base import GenericRule

NAME: Final = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


class RulePackError(ValueError):
    """An invalid rule pack; the message names file, field and problem (one line per problem).

    ``where`` and ``problem`` are the first problem's; ``problems`` lists all of them as (where, problem).
    """

    def __init__(self, path: str | Path, where: str, problem: str,
                 more: tuple[tuple[str, str], ...] = ()) -> None:
        problems = ((where, problem), *more)
        super().__init__("\n".join(f"{path}: {w}: {p}" for w, p in problems))
        self.path = str(path)
        self.where = where
        self.problem = problem
        self.problems = problems


MAX_DURATION_MS: Final = 3650 * 86_400_000  # ten years


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
    ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
    if not ms < MAX_DURATION_MS + 1:
        # Times are kept in 6 bytes and added to event times: "10000000d" overflowed on the first event.
        raise ValueError(f"must be at most 3650d, got {value!r}")
    if int(ms) <= 0:
        raise ValueError(f"must be a positive duration, got {value!r}")
    return int(ms)


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
    """One moment rule applied to one journey; ``name`` is ``<journey>.<kind>`` (``<journey>.<name>`` for a
    generic kind, whose compiled rule is ``generic``)."""

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
    # Escalation (issue 13): the rule's moment is itself a more urgent or repeated problem (the third failure),
    # so it may be sent within min_gap of an earlier action; the daily, weekly and channel caps still hold.
    escalate: bool = False
    # A generic kind (count, distinct, absence, sequence; DESIGN.md §8): the compiled rule, its bit in
    # ``Attempt.fired`` and how far back or ahead it looks (windows, idle, unless_within).
    generic: GenericRule | None = field(default=None, compare=False)
    bit: int = 0
    span_ms: int = 0
    # The pack version the rule came from, carried by its moments, actions and tags as `rule_version`.
    version: int = 1


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
    # ... and retired when its uplift is credibly below this (a fraction; 0 = only when credibly negative).
    effect_min_uplift: float = 0.0
    # A directory of versions (``state.versions``): when this version comes into force (epoch ms).
    effective_from_ms: int | None = None

    @property
    def horizon_ms(self) -> int:
        """The longest time any rule looks back or ahead: idle customers older than this are evicted."""
        spans = [self.attempt_timeout_ms, *(r.within_ms for r in self.rules), *(r.no_intent_ms for r in self.rules),
                 *(r.span_ms for r in self.rules)]
        return max(spans)

    def fingerprint(self) -> str:
        """A short hash of the pack's rule semantics, to refuse restoring state built by another pack."""
        import hashlib
        import json

        # Canonical text: frozensets are sorted, since their repr order follows the per-process string hash.
        # Only detection semantics count: contact policy, stage marks and effectiveness settings apply
        # cleanly to restored state, so changing them across a restart is allowed.
        journeys = [(j.id, j.steps, sorted(j.key_steps), j.complete_type) for j in self.journeys.values()]
        rules = [tuple(getattr(r, f) for f in _DETECTION_FIELDS) for r in self.rules]
        rules += [(r.name, json.dumps(r.generic.source, sort_keys=True, default=str)) for r in self.rules if r.generic]
        text = repr((sorted(journeys), rules, self.attempt_timeout_ms))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


    def full_fingerprint(self) -> str:
        """A short hash of everything the pack decides: ``fingerprint``'s detection semantics plus event types,
        journey stages, every rule field (channels, hold-out, stages, contact, escalation, version), the contact
        policy, effectiveness settings and latency targets. What processes of a cluster and a running worker's
        reload compare: two processes whose packs differ only in a type or a hold-out give other moments."""
        import dataclasses
        import hashlib
        import json

        def canon(o: object) -> object:
            if isinstance(o, (set, frozenset)):
                return sorted(o, key=repr)
            if isinstance(o, tzinfo):
                return str(o)
            return repr(o)

        rules = [[getattr(r, f.name) for f in dataclasses.fields(r) if f.name != "generic"]
                 + [r.generic.source if r.generic is not None else None] for r in self.rules]
        journeys = [dataclasses.asdict(j) for j in self.journeys.values()]
        text = json.dumps([self.fingerprint(), sorted(self.types), journeys, rules, dataclasses.asdict(self.policy),
                           self.latency_targets_ms, self.effect_min_sample, self.effect_confidence,
                           self.effect_min_uplift, self.effective_from_ms, self.version],
                          sort_keys=True, default=canon)
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def layout_fingerprint(self) -> str:
        """A short hash of what the shape of the saved state depends on: the journeys, and which rules there are.

        Two packs with the same layout differ only in rule parameters (an idle time, a threshold, a window, an
        urgency), which apply to restored state as they are: a restart may change them. Adding, removing or
        reordering rules, changing a journey or any generic rule changes the layout.
        """
        import hashlib
        import json

        journeys = [(j.id, j.steps, sorted(j.key_steps), j.complete_type) for j in self.journeys.values()]
        rules = [(r.name, r.kind, r.journey, r.index, r.bit) for r in self.rules]
        generic = [(r.name, json.dumps(r.generic.source, sort_keys=True, default=str)) for r in self.rules if r.generic]
        text = repr(("layout", sorted(journeys), rules, generic))
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def layout_rules(self) -> list[tuple[str, str, str]]:
        """(name, kind, generic definition or "") per rule: what a snapshot records to name later changes."""
        import json

        return [(r.name, r.kind, json.dumps(r.generic.source, sort_keys=True, default=str) if r.generic else "")
                for r in self.rules]

    def layout_changes(self, other_rules: list[tuple[str, ...]]) -> str:
        """Name the rules added, removed or redefined against ``other_rules`` (``layout_rules`` of another pack)."""
        mine = {r[0]: r for r in self.layout_rules()}
        theirs = {r[0]: (*r, "")[:3] for r in other_rules}
        parts = []
        for what, names in (("added", mine.keys() - theirs.keys()), ("removed", theirs.keys() - mine.keys()),
                            ("redefined", {n for n in mine.keys() & theirs.keys() if mine[n][1:] != theirs[n][1:]})):
            if names:
                parts.append(f"{what} " + ", ".join(sorted(names)))
        return "; ".join(parts) or "journeys or rule order changed"


_DETECTION_FIELDS: Final = ("name", "kind", "journey", "index", "urgency", "action", "ttl_ms", "within_ms", "threshold",
                     "no_intent_ms", "channel", "type", "recent_steps")


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
