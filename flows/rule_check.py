"""``moments check-rules --simulate``: the simulator's traffic through a rule pack, and what each rule did with it.

A dead rule is found before production: one that never fires on the simulated traffic, or fires but never acts
under the pack's own contact policy (every moment suppressed: e.g. ``stuck`` behind the ``min_gap`` its ``failed``
action opened). The run is a replay through the real shard (state/), with no Bytewax and no outputs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import orjson

from flows.config import ConfigError, simulation_problem
from state.batches import RawBatch, Tick
from state.outputs import Outputs
from state.policy import CONTROL, SENT
from state.rules import STAGES, RulePack, describe_rule, load_rule_pack
from state.shard import Shard, process
from state.versions import identity, load_versions

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


def cmd_check_rules(a: argparse.Namespace) -> int:
    """``moments check-rules``: a pack file, or a directory of versions (each checked as ``moments run`` would)."""
    if a.strict and not a.simulate:
        raise ConfigError("--strict", "needs --simulate (it judges the rules by a simulated run)")
    if a.path is not None and Path(a.path).is_dir():
        return _check_directory(a)
    pack = load_rule_pack(a.path)
    print(f"{pack.path}: rule pack {pack.name!r} v{pack.version} is valid")
    _describe(pack)
    if not a.simulate:
        return 0
    flagged, total = _check_by_simulation(pack, a)
    if flagged and a.strict:
        print(f"check-rules --strict: {flagged} of {total} rules never fire or never act", file=sys.stderr)
        return 1
    return 0


def _check_directory(a: argparse.Namespace) -> int:
    """Every version of a ``--rules`` directory: validated together as at start-up (``load_versions`` raises, naming
    file, field and problem of each), described, and with ``--simulate`` each run through the simulator."""
    versions = load_versions(a.path)
    print(f"{versions.path}: {len(versions.packs)} version(s) valid together: {versions.describe()}")
    prev: RulePack | None = None
    for start, p in zip(versions.starts, versions.in_force, strict=True):
        # What a run does: the newest version whose effective_from has come, in the order they come into force.
        print(f"\n{p.path}: v{p.version}, in force from {_when(p, start)}"
              + (f"; against v{prev.version}: {rule_changes(prev, p)}" if prev is not None else ""))
        _describe(p)
        prev = p
    used = {p.version for p in versions.in_force}
    never = [p for p in versions.packs if p.version not in used]
    for p in never:
        print(f"\n{p.path}: v{p.version} is NEVER in force: at its own effective_from ({_when(p)}) a newer "
              f"version is already in force (each event is handled by the newest version whose effective_from has "
              f"come)")
    if never and a.strict:
        print(f"check-rules --strict: {len(never)} version(s) never in force", file=sys.stderr)
        return 1
    if not a.simulate:
        return 0
    flagged = total = 0
    for p in versions.packs:
        # Each version on the same traffic, as if in force throughout: versions compared on one sample.
        print(f"\nv{p.version} ({p.path}):")
        f, n = _check_by_simulation(p, a)
        flagged, total = flagged + f, total + n
    if flagged and a.strict:
        print(f"check-rules --strict: {flagged} of {total} rules (over all versions) never fire or never act",
              file=sys.stderr)
        return 1
    return 0


def _when(p: RulePack, start: int | None = None) -> str:
    t = p.effective_from_ms if start is None else start
    if t is None or t <= 0 or (start is not None and p.effective_from_ms is None):
        return "the start"
    when = datetime.fromtimestamp(t // 1000, UTC).replace(microsecond=t % 1000 * 1000)  # exact, no float rounding
    return when.isoformat(timespec="milliseconds" if t % 1000 else "seconds").replace("+00:00", "Z")


def rule_changes(old: RulePack, new: RulePack) -> str:
    """The rules ``new`` adds, removes and redefines against ``old`` (``state.versions.identity``), or "same rules"."""
    before, after = {identity(r) for r in old.rules}, {identity(r) for r in new.rules}
    names_before, names_after = {i[0] for i in before}, {i[0] for i in after}
    redefined = {i[0] for i in after - before} & names_before
    parts = [f"{what} {', '.join(sorted(names))}" for what, names in (
        ("adds", names_after - names_before), ("removes", names_before - names_after), ("redefines", redefined))
        if names]
    return "; ".join(parts) or "same rules (parameters may differ)"


def _describe(pack: RulePack) -> None:
    print(f"  attempt timeout {pack.attempt_timeout_ms // 60000} min; eviction horizon {pack.horizon_ms // 60000} min")
    for jd in pack.journeys.values():
        steps = " → ".join(f"[{s}]" if s in jd.key_steps else s for s in jd.steps)
        print(f"  journey {jd.id}: {steps}  (complete on '{jd.complete_type}'; [key steps])")
    for r in pack.rules:
        extra = []
        if r.within_ms:
            extra.append(f"window {r.within_ms // 1000}s")
        if r.threshold:
            extra.append(f"n={r.threshold}")
        print(f"  rule {r.name:<26} {r.urgency}  action={r.action:<16} ttl={r.ttl_ms // 3600000}h  {', '.join(extra)}")
        print(f"       {r.kind}: {describe_rule(r)}")
        how = "→".join(r.channels) or "(no channel)"
        print(f"       act via {how} within {r.act_within_ms // 60000} min; hold-out {r.holdout:.0%}"
              + (f"; only in {', '.join(STAGES[s] for s in sorted(r.stages))}" if r.stages else "")
              + ("" if r.contact else "; not a customer contact (no caps)")
              + ("; escalates past min_gap (caps still hold)" if r.escalate else ""))
    pol = pack.policy
    quiet = (f"{pol.quiet[0] // 60:02d}:{pol.quiet[0] % 60:02d}-{pol.quiet[1] // 60:02d}:{pol.quiet[1] % 60:02d} "
             f"({pol.timezone} unless events carry attrs.tz; {', '.join(sorted(pol.quiet_bypass)) or 'none'} "
             "may bypass)" if pol.quiet else "none")
    caps = ", ".join(f"{ch} {n}/24h" for ch, n in sorted(pol.channel_caps.items())) or "none"
    print(f"  contact policy: at most {pol.max_per_day or '∞'} per 24 h and {pol.max_per_week or '∞'} per 7 days, "
          f"{pol.min_gap_ms // 60000} min apart; quiet hours {quiet}")
    print(f"    channel caps {caps}; no actions for {pol.after_complete_ms // 3600000} h after a journey is completed")
    print(f"  effectiveness: verdict once sent and control have {pack.effect_min_sample} moments each, "
          f"at {pack.effect_confidence:.0%} confidence (valid at every look); retire below "
          f"{100 * pack.effect_min_uplift:g} points of uplift")


def _check_by_simulation(pack: RulePack, a: argparse.Namespace) -> tuple[int, int]:
    """Print the simulated run's table; return (rules flagged, rules)."""
    problem = simulation_problem(a.customers, a.minutes)
    if problem:
        raise ConfigError("--customers/--minutes", problem)
    events, runs = simulate_rules(pack, a.customers, a.minutes, a.seed)
    print(f"  simulated run: {a.customers} customers, {a.minutes:g} min (seed {a.seed}), {events} events; "
          "decisions under the pack's own policy:")
    print("\n".join(format_runs(runs)))
    flagged = [r for r in runs if r.flag]
    for r in flagged:
        print(f"  rule {r.rule} {r.flag} on this traffic"
              + (": check its parameters against the events it expects" if not r.fired
                 else f": every moment is suppressed ({', '.join(sorted(r.suppressed))})"))
    return len(flagged), len(runs)
