"""Versioned rule packs: a directory of pack files, each in force from its ``[pack] effective_from``.

Each event is handled by the newest version (largest ``[pack] version``) whose ``effective_from`` is at or
before its event time; one file may leave ``effective_from`` out (in force from the start); before the earliest
``effective_from`` the earliest file's version applies. The
choice depends on event time only, so a replay is deterministic and every process switches at the same
event time. The versions of one directory share their rule set (journeys, rule names and kinds, generic
definitions) and differ in parameters: a file that changes the rule set is refused, naming what changed.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from state.rule_model import RulePack, RulePackError
from state.rules import load_rule_pack

NEVER: Final = 1 << 62  # a switch time no event reaches
MAX_VERSION: Final = 255
_EARLIEST: Final = -(1 << 62)


@dataclass(frozen=True, slots=True)
class PackVersions:
    """The versions of a rule pack and when each is in force.

    Attributes:
        packs: The versions, by ``effective_from`` (then version).
        path: The directory (or the single file) they came from.
        starts: Event times at which the version in force changes (the first is ``-2**62``).
        in_force: The version in force from each of ``starts`` on.
    """

    packs: tuple[RulePack, ...]
    path: str
    starts: tuple[int, ...]
    in_force: tuple[RulePack, ...]

    @classmethod
    def of(cls, packs: list[RulePack] | tuple[RulePack, ...], path: str = "") -> PackVersions:
        """Order ``packs`` by ``effective_from`` and work out which is in force when (see the module)."""
        ordered = tuple(sorted(packs, key=lambda p: (_start(p), p.version)))
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
        return cls(ordered, path or ordered[0].path, tuple(starts), tuple(in_force))

    @property
    def latest(self) -> RulePack:
        """The newest version (the largest ``[pack] version``): what reports and summaries describe."""
        return max(self.packs, key=lambda p: p.version)

    @property
    def single(self) -> bool:
        """Whether one version is in force at every event time."""
        return len(self.in_force) == 1

    def at(self, t: int) -> int:
        """The index (into ``starts``/``in_force``) of the version in force at event time ``t``."""
        return bisect_right(self.starts, t) - 1

    def pack_at(self, t: int) -> RulePack:
        """The version in force at event time ``t``."""
        return self.in_force[self.at(t)]

    def history(self, t: int) -> list[tuple[int, int, str]]:
        """(start, version, fingerprint) of each version in force at or before event time ``t``: what a change
        of the directory must leave alone once the watermark is at ``t``."""
        return [(s, p.version, p.fingerprint()) for s, p in zip(self.starts, self.in_force, strict=True) if s <= t]

    def fingerprint(self) -> str:
        """A short hash of every version's rules and when it comes into force (the cluster handshake's, the
        snapshot's); one version: the pack's own, so a single file's handshake and snapshots are unchanged."""
        if len(self.packs) == 1:
            return self.packs[0].fingerprint()
        text = repr([(p.version, p.effective_from_ms, p.fingerprint()) for p in self.packs])
        return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def describe(self) -> str:
        """One line: the versions and when each comes into force."""
        return ", ".join(f"v{p.version} from {p.effective_from_ms if p.effective_from_ms is not None else 'start'}"
                         for p in self.packs)


def _start(p: RulePack) -> int:
    """When a version comes into force: its ``effective_from``; without one, from the start."""
    return _EARLIEST if p.effective_from_ms is None else p.effective_from_ms


def load_versions(path: str | Path | None = None) -> PackVersions:
    """Load ``--rules``: a pack file (one version, in force always) or a directory of versioned pack files.

    Raises:
        RulePackError: naming file, field and problem for each invalid file (all files are checked), for two
            files with the same ``[pack] version``, a second file without ``effective_from``, or one whose rule set
            differs from the others' (parameters may differ, the rules may not).
    """
    p = Path(path) if path is not None else None
    if p is None or not p.is_dir():
        return PackVersions.of([load_rule_pack(p)])
    files = sorted(f for f in p.iterdir() if f.suffix == ".toml" and f.is_file())
    if not files:
        raise RulePackError(p, "(directory)", "holds no pack file (*.toml)")
    packs: list[RulePack] = []
    problems: list[tuple[str, str, str]] = []
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
        if base is not None and q.layout_fingerprint() != base.layout_fingerprint():
            changes = q.layout_changes([tuple(r) for r in base.layout_rules()])
            found.append((q, "moment", f"changes the rule set of {base.path} ({changes}): the versions of a "
                          "directory may change rule parameters, not which rules or journeys there are; keep the "
                          "rules of the other files, or start a separate deployment with a fresh --recovery-dir"))
    return found
