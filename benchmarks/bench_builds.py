"""Compiled (mypyc) against pure-Python state/ in the same run: hot path, replay, memory (issue 18).

One installed tree, two builds: each measurement runs in a child process, with ``CX_PURE_PYTHON=1`` for the
pure one (state/_build.py loads the sources), the builds alternating within every round so each ratio compares
runs made under the same load. The hot-path child also times the reference loop (benchmarks/reference_loop.py)
on the same lines, so its ratio to the reference is a same-process figure too.

    python -m benchmarks.bench_builds [--customers 20000] [--minutes 240] [--runs 5] [--memory 100000] [--ratios]

``--ratios`` also measures, with the compiled build in the same rounds, bench_replay's two-process ratio (a
two-process cluster / one process) and its ClickHouse-sink ratio (JSONL + embedded ClickHouse / JSONL alone).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_memory import _CHILD as MEMORY_CHILD
from benchmarks.bench_replay import one_process, two_processes
from benchmarks.harness import WORK, Figure, machine, table, write_section
from benchmarks.traffic import events_file

ROOT = Path(__file__).resolve().parent.parent
BUILDS = ("compiled", "pure")

_HOT = """
import gc, json, sys, time
from pathlib import Path
import state
from benchmarks.bench_hot_path import run_hot_path
from benchmarks.reference_loop import reference_loop
raw = Path(sys.argv[1]).read_bytes().splitlines()
gc.set_threshold(100_000, 50, 1000)
t0 = time.perf_counter()
reference_loop(raw)
t1 = time.perf_counter()
gc.collect()
t2 = time.perf_counter()
moments = run_hot_path(raw)
t3 = time.perf_counter()
print(json.dumps({"build": state.BUILD.line, "ref": len(raw) / (t1 - t0), "hot": len(raw) / (t3 - t2),
                  "moments": moments}))
"""


def _env(build: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CX_PURE_PYTHON"}
    if build == "pure":
        env["CX_PURE_PYTHON"] = "1"
    return env


def _json_child(args: list[str], build: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(build), check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def hot_path(build: str, events: Path) -> dict[str, object]:
    """Events/s of the hot path and of the reference loop, in one child of ``build``."""
    got = _json_child(["-c", _HOT, str(events)], build)
    assert ("pure" in str(got["build"])) == (build == "pure"), got["build"]
    return got


def _run_seconds(build: str, events: Path, out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "--log-level", "warning", "run", "--source",
                    f"file:{events}", "--sink", f"jsonl:{out / build}", "--no-metrics", "--status", "off"],
                   cwd=ROOT, env=_env(build), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def replay(build: str, events: Path, out: Path) -> float:
    """Events/s of wall time of one ``moments run`` process (file in, JSONL out)."""
    n = sum(1 for _ in events.open("rb"))
    return n / _run_seconds(build, events, out)


def start_up(build: str, out: Path) -> float:
    """Wall seconds of one ``moments run`` over an empty file: imports, Bytewax, the rule pack; no events."""
    empty = WORK / "builds-empty.jsonl"
    empty.write_bytes(b"")
    return _run_seconds(build, empty, out)


def memory(build: str, customers: int) -> dict[str, float]:
    """bench_memory's child (RSS per tracked customer, update cost) run on ``build``."""
    return _json_child(["-c", MEMORY_CHILD, str(customers), "0", "simulated"], build)  # type: ignore[return-value]


def instructions_per_line(build: str, events: Path, n: int) -> float:
    """Instructions valgrind's callgrind counts per line of the hot path of ``build`` (start-up subtracted).

    Counts, unlike seconds, do not depend on what else the machine runs."""
    sample, empty = WORK / f"builds-{n}.jsonl", WORK / "builds-empty.jsonl"
    sample.write_bytes(b"".join(events.read_bytes().splitlines(keepends=True)[:n]))
    empty.write_bytes(b"")

    def count(path: Path) -> int:
        err = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                              _HOT, str(path)], cwd=ROOT, env=_env(build), check=True, capture_output=True,
                             text=True).stderr
        return int(re.search(r"Collected : (\d+)", err).group(1))  # type: ignore[union-attr]

    count(empty)  # bytecode compiled first: it would count in the first run
    return (count(sample) - count(empty)) / n


def main() -> None:
    """Measure both builds alternately and write the ``builds`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=240)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--memory", type=int, default=100_000, help="customers in the memory runs (0 skips them)")
    ap.add_argument("--no-replay", action="store_true")
    ap.add_argument("--callgrind", type=int, default=0, metavar="N", help="also count instructions over N lines")
    ap.add_argument("--ratios", action="store_true", help="also the 2-process and ClickHouse-sink ratios (compiled)")
    ap.add_argument("--section", default="builds", help="RESULTS.md section to write (another file, another name)")
    a = ap.parse_args()
    events = events_file(a.customers, a.minutes)
    n = sum(1 for _ in events.open("rb"))
    hot: dict[str, list[float]] = {b: [] for b in BUILDS}
    ref: dict[str, list[float]] = {b: [] for b in BUILDS}
    rep: dict[str, list[float]] = {b: [] for b in BUILDS}
    idle: dict[str, list[float]] = {b: [] for b in BUILDS}  # start-up: the same run over an empty file (s)
    mem: dict[str, list[dict[str, float]]] = {b: [] for b in BUILDS}
    one: list[float] = []  # --ratios, compiled: one process, two processes, one process with ClickHouse (s)
    two: list[float] = []
    chd: list[float] = []
    moments: set[object] = set()
    for i in range(a.runs):
        order = BUILDS if i % 2 == 0 else BUILDS[::-1]
        for b in order:
            got = hot_path(b, events)
            hot[b].append(float(got["hot"]))  # type: ignore[arg-type]
            ref[b].append(float(got["ref"]))  # type: ignore[arg-type]
            moments.add(got["moments"])
        if not a.no_replay:
            for b in order:
                rep[b].append(replay(b, events, WORK / "builds-out"))
                idle[b].append(start_up(b, WORK / "builds-out"))
        if a.ratios:  # the installed build is the compiled one (asserted by the hot-path children)
            one.append(one_process(events, WORK / "builds-ratios"))
            two.append(two_processes(events, WORK / "builds-ratios")[0])
            chd.append(one_process(events, WORK / "builds-ratios", clickhouse=True))
        if a.memory and i < 3:
            for b in order:
                mem[b].append(memory(b, a.memory))
        print(f"round {i + 1}: hot {hot['pure'][-1]:,.0f} → {hot['compiled'][-1]:,.0f}"
              + (f"; replay {rep['pure'][-1]:,.0f} → {rep['compiled'][-1]:,.0f}" if rep["pure"] else ""), flush=True)
    assert len(moments) == 1, f"the builds found different numbers of moments: {moments}"
    ratio = [c / p for c, p in zip(hot["compiled"], hot["pure"], strict=True)]
    figs = [
        Figure("hot path, pure Python", tuple(hot["pure"])),
        Figure("hot path, compiled", tuple(hot["compiled"])),
        Figure("hot path: compiled / pure (per round)", tuple(ratio), "×"),
        Figure("reference loop (in the compiled build's child)", tuple(ref["compiled"])),
        Figure("hot path / reference loop, pure (same process)",
               tuple(h / r for h, r in zip(hot["pure"], ref["pure"], strict=True)), "×"),
        Figure("hot path / reference loop, compiled (same process)",
               tuple(h / r for h, r in zip(hot["compiled"], ref["compiled"], strict=True)), "×"),
    ]
    summary = [f"hot path {statistics.median(ratio):.2f}×"]
    if rep["pure"]:
        rep_ratio = [c / p for c, p in zip(rep["compiled"], rep["pure"], strict=True)]
        figs += [Figure("replay (`moments run`, 1 process, JSONL), pure", tuple(rep["pure"])),
                 Figure("replay, compiled", tuple(rep["compiled"])),
                 Figure("replay: compiled / pure (per round)", tuple(rep_ratio), "×")]
        summary.append(f"replay {statistics.median(rep_ratio):.2f}×")
        # Steady state: the run's wall time less the same round's run over an empty file, so start-up (the
        # same work in both builds) is left out of both; the figure above keeps it in.
        steady = {b: [n / max(n / r - s, 1e-9) for r, s in zip(rep[b], idle[b], strict=True)] for b in BUILDS}
        steady_ratio = [c / p for c, p in zip(steady["compiled"], steady["pure"], strict=True)]
        figs += [Figure("start-up of `moments run` (empty file), pure", tuple(t * 1000 for t in idle["pure"]), "ms"),
                 Figure("start-up of `moments run` (empty file), compiled", tuple(t * 1000 for t in idle["compiled"]),
                        "ms"),
                 Figure("replay, steady state (start-up subtracted), pure", tuple(steady["pure"])),
                 Figure("replay, steady state (start-up subtracted), compiled", tuple(steady["compiled"])),
                 Figure("replay, steady state: compiled / pure (per round)", tuple(steady_ratio), "×")]
        summary.append(f"replay in steady state {statistics.median(steady_ratio):.2f}×")
    if mem["pure"]:
        for b in BUILDS:
            figs.append(Figure(f"RSS per tracked customer, {a.memory:,} customers, {b}",
                               tuple(m["bytes_per_customer"] for m in mem[b]), "bytes"))
        for b in BUILDS:
            figs.append(Figure(f"state update cost per event (bench_memory), {b}",
                               tuple(m["process_s"] / m["events"] * 1e6 for m in mem[b]), "µs"))
    if one:
        figs += [Figure("ratio 2 processes / 1 process, compiled (bench_replay's cluster)",
                        tuple(o / t for o, t in zip(one, two, strict=True)), "×"),
                 Figure("ratio with ClickHouse / without, compiled (JSONL + embedded ClickHouse / JSONL)",
                        tuple(o / c for o, c in zip(one, chd, strict=True)), "×")]
    body = (f"## Compiled (mypyc) against pure-Python state/, same run ({n:,} events)\n\n{machine()}\n\n"
            f"`python -m benchmarks.bench_builds {' '.join(sys.argv[1:])}`: {n:,} events "
            f"({a.customers:,} customers, "
            f"{a.minutes:g} simulated minutes), {moments.pop():,} moments in both builds; builds alternate within "
            f"each round, each measurement in a fresh child process.\n\n{table(figs)}\n\n"
            f"Median compiled / pure: {', '.join(summary)}.")
    if a.callgrind:
        per = {b: instructions_per_line(b, events, a.callgrind) for b in BUILDS}
        body += (f"\n\nInstructions per line of the hot path (callgrind, first {a.callgrind:,} lines, start-up "
                 f"subtracted): pure {per['pure']:,.0f}, compiled {per['compiled']:,.0f}: "
                 f"{per['pure'] / per['compiled']:.2f}× fewer.")
    print(body)
    write_section(a.section, body)


if __name__ == "__main__":
    main()
