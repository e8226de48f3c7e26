"""Versioned rule packs: a directory of pack files, each in force from its ``[pack] effective_from``.

Each event is handled by the newest version (largest ``[pack] version``) whose ``effective_from`` is at or
before its event time; one file may leave ``effective_from`` out (in force from the start); before the earliest
``effective_from`` the earliest file's version applies. The
choice depends on event time only, so a replay is deterministic and every process switches at the same
event time. The versions of one directory share their journeys; their rules may differ. A rule's state belongs
to its identity (``RuleLayout``): its name, kind and, for a generic rule, its definition. The identities of
all versions (and of a restored snapshot) are laid out once, so every version compiles to the same per-attempt
state layout: a rule a version lacks keeps its place but reacts to nothing while that version is in force.

A restart with another rule set records the change in the layout as a boundary at the restored watermark
(``RuleLayout.eras``): before it, only the rules then running are in force, as if the change had been written as a
version. So a rule removed at one restart and added back at a later one is absent for the time between.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

from state.detectors import KINDS, REGISTRY
from state.detectors.base import STATE_SLOTS
from state.generic.schema import COMMON
from state.rule_model import MomentRule, RulePack, RulePackError
from state.rules import load_rule_pack
from state.version_gaps import Era, absences, clip, spans, with_eras

MAX_VERSION: Final = 255
MAX_RULES: Final = 255  # a held tag records its rule's place in one byte
_EARLIEST: Final = -(1 << 62)
# A rule's identity: (name, kind, journey, definition); the definition is "" for a built-in kind, else the generic
# rule's fields other than the common ones (urgency, action, ttl, channels, …, which are parameters).
Identity = tuple[str, str, str, str]
# What a held tag of a rule no version defines any more needs: (urgency, action, ttl_ms, version).
Ghost = tuple[str, str, int, int]


def identity(r: MomentRule) -> Identity:
    """The identity of a rule: what its state belongs to (a changed definition is a new rule under that name)."""
    if r.generic is None:
        return (r.name, r.kind, r.journey, "")
    spec = {k: v for k, v in r.generic.source.items() if k not in COMMON or k == "kind"}
    return (r.name, r.kind, r.journey, json.dumps(spec, sort_keys=True, default=str))


@dataclass(frozen=True, slots=True)
class RuleLayout:
    """Where each rule's state lives, the same for every version of a directory.

    Attributes:
        rules: The identities, by their place (``MomentRule.index``: a held tag's key); the first version's in its
            own order, then each rule as it first appears (in ``effective_from`` order).
        ghosts: Per place, what a tag of the rule needs when no version defines the rule any more.
        kinds: Per journey, its built-in kinds in the order their state slots are given out.
        journeys: A fingerprint of the journeys (which cannot change across versions).
        eras: The rule sets of earlier runs, each from its start to the next's (the last's to ``since``): a restart
            with other rules ends one (``PackVersions.restarted``). Before ``since`` a version keeps only the rules
            of the era.
        since: From this event time on, the rules of the versions running are in force as they say.
        current: The places of the rules of the versions running, all together.
        timeline: When each of those rules is in force: (start, places) per version in force, the last to the end of
            time (what the next restart compares and records as the eras up to its watermark).
    """

    rules: tuple[Identity, ...]
    ghosts: tuple[Ghost, ...]
    kinds: tuple[tuple[str, tuple[str, ...]], ...]
    journeys: str
    eras: tuple[Era, ...] = ()
    since: int = _EARLIEST
    current: tuple[int, ...] = ()
    timeline: tuple[Era, ...] = ()

    @classmethod
    def of(cls, packs: tuple[RulePack, ...], base: RuleLayout | None = None) -> RuleLayout:
        """Lay out the rules of ``packs`` (in force order) after those of ``base`` (e.g. a snapshot's)."""
        rules = list(base.rules) if base is not None else []
        ghosts = list(base.ghosts) if base is not None else []
        kinds = {j: list(ks) for j, ks in base.kinds} if base is not None else {}
        place = {r: i for i, r in enumerate(rules)}
        for p in packs:
            for r in p.rules:
                ident = identity(r)
                if ident not in place:
                    place[ident] = len(rules)
                    rules.append(ident)
                    ghosts.append((r.urgency, r.action, r.ttl_ms, r.version))
                else:
                    ghosts[place[ident]] = (r.urgency, r.action, r.ttl_ms, r.version)  # the newest definition
            for j in p.journeys:
                have = kinds.setdefault(j, [])
                have += [k for k in REGISTRY if k in p.by_journey.get(j, {}) and k not in have]
        current = tuple(sorted({place[identity(r)] for p in packs for r in p.rules}))
        return cls(tuple(rules), tuple(ghosts), tuple((j, tuple(ks)) for j, ks in kinds.items()),
                   journeys_fingerprint(packs[0]) if packs else (base.journeys if base is not None else ""),
                   base.eras if base is not None else (), base.since if base is not None else _EARLIEST, current)

    def era_at(self, t: int) -> frozenset[int] | None:
        """The places of the rules running at event time ``t`` by the restarts' record; None: all (from ``since``)."""
        if t >= self.since or not self.eras:
            return None
        keep = self.eras[0][1]
        for start, places in self.eras:
            if start > t:
                break
            keep = places
        return frozenset(keep)

    def generic_places(self, journey: str) -> list[int]:
        """The places of the journey's generic rules, in the order of their per-attempt states (and bits)."""
        return [i for i, r in enumerate(self.rules) if r[2] == journey and r[3]]

    def bit(self, i: int) -> int:
        """The rule's bit in ``Attempt.fired``: a built-in kind's own, a generic rule's by its journey's order."""
        name, kind, journey, definition = self.rules[i]
        if not definition:
            return 1 << KINDS.index(kind)
        return 1 << (len(KINDS) + self.generic_places(journey).index(i))

    def align(self, pack: RulePack) -> RulePack:
        """``pack`` with each rule's ``index`` and ``bit`` at its place in the layout (itself when they are)."""
        place = {r: i for i, r in enumerate(self.rules)}
        rules = tuple(replace(r, index=place[identity(r)], bit=self.bit(place[identity(r)]) if r.generic else 0)
                      for r in pack.rules)
        if all(a.index == b.index and a.bit == b.bit for a, b in zip(rules, pack.rules, strict=True)):
            return pack
        new = {r.name: r for r in rules}
        by_journey = {j: {k: new[r.name] for k, r in rs.items()} for j, rs in pack.by_journey.items()}
        return replace(pack, rules=rules, by_journey=by_journey)

    def ghost(self, i: int) -> MomentRule:
        """A stand-in for the rule at place ``i`` when no version defines it: its tags run to their TTL."""
        name, kind, journey, _d = self.rules[i]
        urgency, action, ttl_ms, version = self.ghosts[i]
        return MomentRule(name, kind, journey, i, urgency, action, ttl_ms, contact=False, version=version)

    def problems(self) -> list[str]:
        """What the layout cannot hold: more rules than a tag's byte can name, or built-in kinds of a journey whose
        state needs more than an attempt's slots (a removed kind keeps its slots)."""
        found = []
        if len(self.rules) > MAX_RULES:
            found.append(f"the versions (with the recovery state's rules) hold {len(self.rules)} distinct rules, at "
                         f"most {MAX_RULES} can be kept: use fewer distinct rules over the versions "
                         "(with --recovery-dir, a removed rule keeps its place until a fresh recovery directory)")
        for journey, kinds in self.kinds:
            if sum(len(REGISTRY[k].STATE) for k in kinds) > len(STATE_SLOTS):
                found.append(f"journey {journey!r}: the built-in kinds of every version (and of the recovery state) "
                             f"together, {', '.join(kinds)}, keep more per-attempt state than an attempt holds "
                             f"({len(STATE_SLOTS)} slots): use fewer built-in kinds in that journey "
                             "(with --recovery-dir, a removed kind keeps its slots until a fresh recovery directory)")
        return found

    def dump(self) -> tuple[object, ...]:
        """Plain tuples for a snapshot."""
        return (self.rules, self.ghosts, self.kinds, self.journeys, self.eras, self.since, self.current, self.timeline)

    @classmethod
    def load(cls, raw: tuple[Any, ...]) -> RuleLayout:
        """Back from ``dump``. A layout written before eras were recorded counts every rule it holds as running."""
        rules: list[Any] = list(raw[0])
        ghosts: list[Any] = list(raw[1])
        kinds: list[Any] = list(raw[2])
        eras: list[Any] = list(raw[4]) if len(raw) > 6 else []
        current: list[Any] = list(raw[6]) if len(raw) > 6 else list(range(len(rules)))
        since = int(raw[5]) if len(raw) > 6 else _EARLIEST
        # Written before timelines were recorded: the rules all together, from ``since`` on.
        timeline: list[Any] = list(raw[7]) if len(raw) > 7 else [(since, current)]
        return cls(tuple((str(a), str(b), str(c), str(d)) for a, b, c, d in rules),
                   tuple((str(u), str(x), int(t), int(v)) for u, x, t, v in ghosts),
                   tuple((str(j), tuple(ks)) for j, ks in kinds), str(raw[3]),
                   tuple((int(s), tuple(int(i) for i in ps)) for s, ps in eras),
                   since, tuple(int(i) for i in current),
                   tuple((int(s), tuple(int(i) for i in ps)) for s, ps in timeline))


def journeys_fingerprint(pack: RulePack) -> str:
    """A short hash of a pack's journeys (steps, key steps, completion): the versions must share them."""
    journeys = [(j.id, j.steps, sorted(j.key_steps), j.complete_type) for j in pack.journeys.values()]
    return hashlib.blake2b(repr(journeys).encode(), digest_size=8).hexdigest()


@dataclass(frozen=True, slots=True)
class PackVersions:
    """The versions of a rule pack and when each is in force.

    Attributes:
        packs: The versions, by ``effective_from`` (then version).
        path: The directory (or the single file) they came from.
        starts: Event times at which the version in force changes (the first is ``-2**62``).
        in_force: The version in force from each of ``starts`` on.
        absent: Per rule place, the event times it is not in force: (starts, ends) of half-open intervals.
    """

    packs: tuple[RulePack, ...]
    path: str
    starts: tuple[int, ...]
    in_force: tuple[RulePack, ...]
    layout: RuleLayout
    absent: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()

    @classmethod
    def of(cls, packs: list[RulePack] | tuple[RulePack, ...], path: str = "",
           base: RuleLayout | None = None) -> PackVersions:
        """Order ``packs`` by ``effective_from`` and work out which is in force when (see the module); their rules
        are laid out after ``base``'s (a restored snapshot's, or the running shard's)."""
        ordered = tuple(sorted(packs, key=lambda p: (_start(p), p.version)))
        layout = RuleLayout.of(ordered, base)
        ordered = tuple(layout.align(p) for p in ordered)
        starts: list[int] = [_EARLIEST]
        in_force: list[RulePack] = [ordered[0]]
        for p in ordered[1:]:
            t = _start(p)
            # The newest version of those in force at t.
            newest = max((q for q in ordered if _start(q) <= t), key=lambda q: q.version)
            if newest is in_force[-1]:
                continue
            if starts[-1] == t:
                in_force[-1] = newest
            else:
                starts.append(t)
                in_force.append(newest)
        layout = replace(layout, timeline=tuple((t, tuple(sorted(r.index for r in p.rules)))
                                                for t, p in zip(starts, in_force, strict=True)))
        # Before ``since`` a rule is in force as the earlier runs had it (their eras), whatever the versions say.
        gap_starts, gap_sets = spans(starts, in_force, layout)
        if layout.eras:
            starts, in_force = with_eras(starts, in_force, layout)
        return cls(ordered, path or ordered[0].path, tuple(starts), tuple(in_force), layout,
                   absences(gap_starts, gap_sets, len(layout.rules)))

    def restarted(self, saved: RuleLayout, at: int) -> PackVersions:
        """These versions (laid out after ``saved``) restored from a snapshot with layout ``saved`` whose watermark
        is ``at``: when they run other rules than the snapshot's run did, the change is recorded as a boundary at
        ``at`` (before it, only the rules the snapshot's run had are in force), as if written as a version."""
        before = clip(saved.timeline or ((saved.since, saved.current),), saved.since, at)
        if before == clip(self.layout.timeline, saved.since, at):
            return self
        layout = replace(self.layout, eras=(*saved.eras, *before), since=at)
        return PackVersions.of(self.packs, self.path, layout)

    def rebased(self, base: RuleLayout) -> PackVersions:
        """These versions with their rules laid out after ``base``'s (itself when ``base`` is its layout)."""
        if base == self.layout:
            return self
        return PackVersions.of(self.packs, self.path, base)

    @property
    def latest(self) -> RulePack:
        """The newest version (the largest ``[pack] version``): what reports and summaries describe."""
        return max(self.packs, key=lambda p: p.version)

    @property
    def single(self) -> bool:
        """Whether one version is in force at every event time and the layout holds its rules only."""
        return len(self.in_force) == 1 and len(self.layout.rules) == len(self.in_force[0].rules)

    def at(self, t: int) -> int:
        """The index (into ``starts``/``in_force``) of the version in force at event time ``t``."""
        return bisect_right(self.starts, t) - 1

    def pack_at(self, t: int) -> RulePack:
        """The version in force at event time ``t``."""
        return self.in_force[self.at(t)]

    def history(self, t: int) -> list[tuple[int, int, str]]:
        """(start, version, fingerprint) of each version in force at or before event time ``t``: what a change
        of the directory must leave alone once the watermark is at ``t``."""
        return [(s, p.version, p.full_fingerprint()) for s, p in zip(self.starts, self.in_force, strict=True)
                if s <= t]

    def fingerprint(self) -> str:
        """A short hash of every version's rules and when it comes into force (the cluster handshake's, the
        snapshot's); one version: the pack's own, so a single file's handshake and snapshots are unchanged."""
        if len(self.packs) == 1:
            return self.packs[0].fingerprint()
        text = repr([(p.version, p.effective_from_ms, p.fingerprint()) for p in self.packs])
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def full_fingerprint(self) -> str:
        """A short hash of everything every version decides and when each comes into force (``RulePack``'s
        ``full_fingerprint``: types and contact policy too): what the processes of a cluster compare."""
        text = repr([(p.version, p.effective_from_ms, p.full_fingerprint()) for p in self.packs])
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def describe(self) -> str:
        """One line: the versions and when each comes into force."""
        return ", ".join(f"v{p.version} from {p.effective_from_ms if p.effective_from_ms is not None else 'start'}"
                         for p in self.packs)


def _start(p: RulePack) -> int:
    """When a version comes into force: its ``effective_from``; without one, from the start."""
    return _EARLIEST if p.effective_from_ms is None else p.effective_from_ms


def is_pack_name(name: str) -> bool:
    """Whether a directory entry is a version: ``*.toml`` in any case (V2.TOML too), not hidden (an editor's lock
    file ``.#v1.toml`` or backup ``.v1.toml.swp``-like names are not versions)."""
    return name.lower().endswith(".toml") and not name.startswith(".")


def load_versions(path: str | Path | None = None) -> PackVersions:
    """Load ``--rules``: a pack file (one version, in force always) or a directory of versioned pack files.

    Raises:
        RulePackError: naming file, field and problem for each invalid file (all files are checked), for two
            files with the same ``[pack] version``, a second file without ``effective_from``, or one whose journeys
            differ from the others' (rules may differ: see ``RuleLayout``).
    """
    p = Path(path) if path is not None else None
    if p is None or not p.is_dir():
        return PackVersions.of([load_rule_pack(p)])
    entries = sorted(f for f in p.iterdir() if is_pack_name(f.name))
    files = [f for f in entries if f.is_file()]
    # Skipped without a word, a version meant to be in force would be missing: a broken link, a FIFO, a directory.
    problems: list[tuple[str, str, str]] = [(str(f), "(file)", "is not a regular file (a directory, FIFO, device "
                                             "or broken link): remove it or make it a pack file")
                                            for f in entries if not f.is_file()]
    if not files and not problems:
        raise RulePackError(p, "(directory)", "holds no pack file (*.toml; hidden names such as .v1.toml are not read)")
    packs: list[RulePack] = []
    for f in files:
        try:
            packs.append(load_rule_pack(f))
        except RulePackError as e:
            problems += [(e.path, w, pr) for w, pr in e.problems]
    problems += [(q.path, w, pr) for q, w, pr in version_problems(packs)]
    if problems:
        raise DirectoryError(problems)
    return PackVersions.of(packs, str(p))


class DirectoryError(RulePackError):
    """The problems of a directory of versions, each line naming its own file, field and problem."""

    def __init__(self, problems: list[tuple[str, str, str]]) -> None:
        (path, where, problem), *more = problems
        super().__init__(path, where, problem, tuple((f"{f}: {w}", pr) for f, w, pr in more))
        ValueError.__init__(self, "\n".join(f"{f}: {w}: {pr}" for f, w, pr in problems))


def version_problems(packs: list[RulePack], current: PackVersions | None = None) -> list[tuple[RulePack, str, str]]:
    """(pack, field, problem) for each way the versions ``packs`` (plus ``current``'s) cannot go together."""
    found: list[tuple[RulePack, str, str]] = []
    others = list(current.packs) if current is not None else []
    seen: dict[int, RulePack] = {q.version: q for q in others}
    base = others[0] if others else (packs[0] if packs else None)
    always: RulePack | None = None
    for q in packs:
        if q.effective_from_ms is None:
            if always is not None:
                found.append((q, "pack.effective_from", f"is required: only one file may leave it out (in force "
                              f"from the start), and {always.path} does; give a time (RFC 3339 with an offset, or "
                              "epoch ms)"))
            always = always or q
        if q.version in seen and seen[q.version].path != q.path:
            found.append((q, "pack.version", f"version {q.version} is also the version of {seen[q.version].path}; "
                          "give each file its own version"))
        seen.setdefault(q.version, q)
        if q.version > MAX_VERSION:
            found.append((q, "pack.version", f"must be at most {MAX_VERSION} in a directory of versions (a held tag "
                          f"records it in one byte), got {q.version}"))
        if base is not None and journeys_fingerprint(q) != journeys_fingerprint(base):
            found.append((q, "journey", f"changes the journeys of {base.path} (their ids, order, steps, key steps or "
                          "completion type): the versions of a directory may change rules, not journeys; keep the "
                          "journeys of the other files, or start a separate deployment with a fresh --recovery-dir"))
    if packs and not found:
        found += [(packs[0], "moment", pr) for pr in RuleLayout.of(tuple(packs), current.layout if current
                                                                     else None).problems()]
    return found
