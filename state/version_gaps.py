"""When each rule of a directory of versions is absent: the gaps a timer must not span (a timer fires only when its
rule was in force without a gap from its arming to its due time; ``BatchContext.in_force_over``)."""

from __future__ import annotations

from typing import Final

from state.rule_model import RulePack

NEVER: Final = 1 << 62  # a switch time no event reaches


def absences(starts: tuple[int, ...], in_force: tuple[RulePack, ...],
             places: int) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """Per rule place, the (starts, ends) of the event-time intervals ``[start, end)`` in which no version in force
    has the rule: a timer fires only when no such interval lies between its arming and its due time."""
    out: list[tuple[list[int], list[int]]] = [([], []) for _ in range(places)]
    for k, p in enumerate(in_force):
        end = starts[k + 1] if k + 1 < len(starts) else NEVER
        have = {r.index for r in p.rules}
        for place, (s, e) in enumerate(out):
            if place in have:
                continue
            if e and e[-1] == starts[k]:
                e[-1] = end  # the gap goes on
            else:
                s.append(starts[k])
                e.append(end)
    return tuple((tuple(s), tuple(e)) for s, e in out)
