"""``moments check-rules --simulate``: the simulator's traffic through a rule pack, and what each rule did with it.

A dead rule is found before production: one that never fires on the simulated traffic, or fires but never acts
under the pack's own contact policy (every moment suppressed: e.g. ``stuck`` behind the ``min_gap`` its ``failed``
action opened). The run is a replay through the real shard (state/), with no Bytewax and no outputs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from state.batches import RawBatch, Tick
from state.outputs import Outputs
from state.policy import CONTROL, SENT
from state.rules import RulePack
from state.shard import Shard, process

BATCH = 4096
NEVER_FIRES = "never fires"
NEVER_ACTS = "never acts"


@dataclass(slots=True)
class RuleRun:
    """What one rule did in a simulated run."""

    rule: str
    urgency: str
    fired: int = 0
    sent: int = 0
    control: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)

    @property
    def flag(self) -> str:
        """``never fires``, ``never acts`` (fired, every moment suppressed) or empty."""
        if not self.fired:
            return NEVER_FIRES
        return "" if self.sent or self.control else NEVER_ACTS


def _lines(customers: int, minutes: float, seed: int) -> Iterator[bytes]:
    from connectors.simulator import simulate

    for e in simulate(customers, minutes, seed).events():
        yield orjson.dumps(e)


def simulate_rules(pack: RulePack, customers: int, minutes: float, seed: int,
                   lateness_ms: int = 30_000) -> tuple[int, list[RuleRun]]:
    """Replay the simulator's events through one shard of ``pack``; count moments and decisions per rule.

    Args:
        pack: The rule pack.
        customers: Simulated customers.
        minutes: Simulated event-time minutes.
        seed: Simulator seed.
        lateness_ms: The shard's lateness.

    Returns:
        The number of events and one ``RuleRun`` per rule of the pack, in pack order.
    """
    runs = {r.name: RuleRun(r.name, r.urgency) for r in pack.rules}
    shard = Shard(pack, lateness_ms=lateness_ms)
    events = 0

    def account(out: Outputs) -> None:
        for m in out.moments:
            runs[m["rule"]].fired += 1
        for a in out.actions:
            run = runs[a["rule"]]
            if a["status"] == SENT:
                run.sent += 1
            elif a["status"] == CONTROL:
                run.control += 1
            else:
                run.suppressed[a["reason"]] = run.suppressed.get(a["reason"], 0) + 1

    batch: list[bytes] = []
    for line in _lines(customers, minutes, seed):
        batch.append(line)
        if len(batch) >= BATCH:
            account(process(shard, [RawBatch("simulator", 0, batch, list(range(events, events + len(batch))))]))
            events += len(batch)
            batch = []
    items: list[RawBatch | Tick] = [RawBatch("simulator", 0, batch, list(range(events, events + len(batch))))]
    account(process(shard, [*items, Tick(0, final=True)]))
    return events + len(batch), list(runs.values())


def format_runs(runs: list[RuleRun]) -> list[str]:
    """Return the report's table: one line per rule, flagged rules marked."""
    width = max([len(r.rule) for r in runs] + [4])
    lines = [f"  {'rule':<{width}}  urg  {'fired':>6} {'sent':>6} {'control':>7}  suppressed (by reason)"]
    for r in runs:
        why = ", ".join(f"{k} {n}" for k, n in sorted(r.suppressed.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"
        flag = f"  <- {r.flag.upper()}" if r.flag else ""
        lines.append(f"  {r.rule:<{width}}  {r.urgency:<3}  {r.fired:>6} {r.sent:>6} {r.control:>7}  {why}{flag}")
    return lines
