"""When each rule of a directory of versions is in force: the earlier runs' rules (a restart's eras) folded into the
versions, and each rule's gaps, which a timer must not span (a timer fires only when its rule was in force without a
gap from its arming to its due time; ``BatchContext.in_force_over``)."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import replace
from typing import Final, Protocol

from state.rule_model import MomentRule, RulePack

NEVER: Final = 1 << 62  # a switch time no event reaches
# From an event time on (to the next era's start), the places of the rules then running (``RuleLayout.eras``).
Era = tuple[int, tuple[int, ...]]


class Eras(Protocol):
    """What the eras need of a ``state.versions.RuleLayout`` (not imported: versions imports this module)."""

    @property
    def eras(self) -> tuple[Era, ...]: ...

    @property
    def since(self) -> int: ...

    def era_at(self, t: int) -> frozenset[int] | None: ...


def absences(starts: tuple[int, ...], in_force: tuple[frozenset[int], ...],
             places: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Per rule place, the (starts, ends) of the event-time intervals ``[start, end)`` in which it is not in force
    (``in_force``: the places in force from each of ``starts`` on): a timer fires only when no such interval lies
    between its arming and its due time."""
    out: list[tuple[list[int], list[int]]] = [([], []) for _ in range(places)]
    for k, have in enumerate(in_force):
        end = starts[k + 1] if k + 1 < len(starts) else NEVER
        for place, (s, e) in enumerate(out):
            if place in have:
                continue
            if e and e[-1] == starts[k]:
                e[-1] = end  # the gap goes on
            else:
                s.append(starts[k])
                e.append(end)
    return tuple((tuple(s), tuple(e)) for s, e in out)


def clip(timeline: tuple[Era, ...], lo: int, hi: int) -> tuple[Era, ...]:
    """The (start, places) of ``timeline`` in ``[lo, hi)``, the first from ``lo``, equal neighbours merged."""
    out: list[Era] = []
    for k, (s, places) in enumerate(timeline):
        end = timeline[k + 1][0] if k + 1 < len(timeline) else hi
        if end <= lo or s >= hi:
            continue
        if out and out[-1][1] == tuple(places):
            continue
        out.append((max(s, lo), tuple(places)))
    return tuple(out)


def spans(starts: list[int], in_force: list[RulePack],
           layout: Eras) -> tuple[tuple[int, ...], tuple[frozenset[int], ...]]:
    """When each rule place is in force: the eras' rules before ``layout.since``, then the versions'."""
    sets = [frozenset(r.index for r in p.rules) for p in in_force]
    if not layout.eras:
        return tuple(starts), tuple(sets)
    out_s: list[int] = []
    out_k: list[frozenset[int]] = []
    for b in sorted({*starts, *(s for s, _p in layout.eras), layout.since}):
        era = layout.era_at(b)
        k = era if era is not None else sets[bisect_right(starts, b) - 1]
        if not out_k or out_k[-1] != k:
            out_s.append(b)
            out_k.append(k)
    return tuple(out_s), tuple(out_k)


def with_eras(starts: list[int], in_force: list[RulePack],
               layout: Eras) -> tuple[list[int], list[RulePack]]:
    """``starts``/``in_force`` with each version, before ``layout.since``, keeping only the rules of its era."""
    bounds = sorted({*starts, *(s for s, _p in layout.eras), layout.since})
    out_s: list[int] = []
    out_p: list[RulePack] = []
    made: dict[tuple[int, frozenset[int]], RulePack] = {}
    at_since = in_force[bisect_right(starts, layout.since) - 1]
    for b in bounds:
        i = bisect_right(starts, b) - 1
        p = in_force[i]
        keep = layout.era_at(b)
        if keep is not None:
            q = made.get((i, keep))
            if q is None:
                # A rule of the era that this version lacks takes its definition from the version in force at the
                # boundary (the restart's rules): a timer the earlier run armed under it is kept, with the
                # parameters the restart gives the rule, as a changed parameter would be. Without it there, the
                # restart removed the rule: its timers do not fire, whatever another version's parameters say.
                q = made[(i, keep)] = era_rules(p, keep, at_since)
            p = q
        if out_p and out_p[-1] is p:
            continue
        out_s.append(b)
        out_p.append(p)
    return out_s, out_p


def era_rules(pack: RulePack, keep: frozenset[int], other: RulePack) -> RulePack:
    """``pack`` with the rules at the places ``keep``: its own, and for a place it lacks ``other``'s rule there (if
    ``other`` lacks it too, it stays out); itself when that is all of it."""
    rules = [r for r in pack.rules if r.index in keep]
    have = {r.index for r in rules}
    rules += [r for r in other.rules if r.index in keep and r.index not in have]
    if len(rules) == len(pack.rules) and all(a is b for a, b in zip(rules, pack.rules, strict=True)):
        return pack
    by_journey: dict[str, dict[str, MomentRule]] = {j: {} for j in pack.by_journey}
    for r in rules:
        if r.generic is None:
            by_journey[r.journey][r.kind] = r
    return replace(pack, rules=tuple(rules), by_journey=by_journey)
