"""Per-event cost of a 40-rule pack (20 built-in, 20 generic) next to the default pack, through the shard.

The 40-rule pack is the default pack's 14 rules, ``failed``, ``stuck`` and ``abandoned`` on two more journeys (no
simulated traffic goes there: they cost at load only; the simulated journeys' five state slots are taken, so
``browse_loop`` does not fit there) and the 10 generic tables of ``benchmarks.bench_generic`` (names prefixed
``g_``) on both simulated journeys (20 generic rules). Both packs run the same lines through
``benchmarks.bench_hot_path.run_hot_path`` (route, parse, detect, decide), alternating, several runs; times are CPU
time of the process per line.

    python -m benchmarks.bench_pack40 --runs 3
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
import tomllib
from typing import Any

from benchmarks.bench_generic import MOMENTS
from benchmarks.bench_hot_path import run_hot_path
from benchmarks.harness import Figure, machine, table, write_section
from benchmarks.traffic import events_file, lines
from state.rules import DEFAULT_PACK, RulePack, load_rule_pack, rule_pack_from_dict


def pack40() -> RulePack:
    """The 40-rule pack (see the module docstring)."""
    data: dict[str, Any] = tomllib.loads(DEFAULT_PACK.read_text(encoding="utf-8"))
    simulated = [j["id"] for j in data["journey"]]
    data["journey"] += [{"id": j, "steps": ["start", "form", "pay"], "key_steps": ["pay"]}
                        for j in ("broadband", "roaming")]
    # The default tables name no journeys (all of them): keep them on the simulated ones.
    data["moment"] = [{"journeys": simulated, **m} if "journeys" not in m else m for m in data["moment"]]
    data["moment"] += [{"kind": k, "journeys": ["broadband", "roaming"]} for k in ("failed", "stuck", "abandoned")]
    data["moment"] += [{**m, "journeys": simulated, "name": f"g_{m['name']}"} for m in MOMENTS]
    pack = rule_pack_from_dict(data, "pack40")
    generic = sum(1 for r in pack.rules if r.generic is not None)
    assert (len(pack.rules), generic) == (40, 20), (len(pack.rules), generic)
    return pack


def main() -> None:
    """Measure and write the ``pack40`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=240)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    raw = lines(events_file(a.customers, a.minutes))
    n = len(raw)
    packs = {"default pack (14 rules)": load_rule_pack(), "40 rules (20 generic)": pack40()}
    cost: dict[str, list[float]] = {k: [] for k in packs}
    moments: dict[str, int] = {}
    gc.set_threshold(100_000, 50, 1000)
    for i in range(a.runs):
        order = list(packs) if i % 2 == 0 else list(reversed(packs))
        for name in order:
            gc.collect()
            t0 = time.process_time()
            moments[name] = run_hot_path(raw, pack=packs[name])
            cost[name].append((time.process_time() - t0) / n * 1e6)
        print(f"round {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f} µs" for k, v in cost.items()), flush=True)
    names = list(packs)
    ratio = [b / d for d, b in zip(cost[names[0]], cost[names[1]], strict=True)]
    figs = [*(Figure(f"{k}: CPU per line ({moments[k]:,} moments)", tuple(v), "µs") for k, v in cost.items()),
            Figure("40 rules / default (per round)", tuple(ratio), "×")]
    body = (f"## A 40-rule pack (20 generic) next to the default pack (same run)\n\n{machine()}\n\n"
            f"`python -m benchmarks.bench_pack40 --runs {a.runs}`: {a.customers:,} customers, {a.minutes:g} simulated "
            f"minutes ({n:,} lines); route, parse, detect and decide through the shard (`run_hot_path`), CPU time "
            f"of the process, packs alternating.\n\n{table(figs)}\n\n"
            f"Median ratio 40 rules / default: {statistics.median(ratio):.2f}×.")
    write_section("pack40", body)
    print(body)


if __name__ == "__main__":
    main()
