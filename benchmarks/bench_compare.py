"""Before/after in the same run: this tree against a git revision, hot path and file replay.

Each tree measures itself with its own code (its ``benchmarks.bench_hot_path.run_hot_path`` and its
``moments run``), on the same simulated lines, alternating trees within every round, so the ratio
compares runs made under the same conditions. The revision is exported with ``git archive`` into
``benchmarks/.work`` and imported by running from that folder (the current directory comes first
on ``sys.path``, ahead of the editable install).

    python -m benchmarks.bench_compare --base 76463b8 --runs 5 [--callgrind 30000] [--section NAME]

It writes its own section of RESULTS.md, ``compare-<base>`` unless ``--section`` names another, so a run
against one base never overwrites the figures of another that the analysis there refers to.

Wall-clock figures on a shared machine swing by tens of percent; ``--callgrind N`` adds a measure that
does not: instructions per line of each tree's hot path over the first N lines, counted by valgrind's
callgrind (the same input and start-up, run with an empty input, subtracted).
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import WORK, Figure, machine, table, write_section
from benchmarks.traffic import events_file

ROOT = Path(__file__).resolve().parent.parent

_HOT = """
import gc, sys, time
from pathlib import Path
from benchmarks.bench_hot_path import run_hot_path
raw = Path(sys.argv[1]).read_bytes().splitlines()
gc.set_threshold(100_000, 50, 1000)
t0 = time.perf_counter()
run_hot_path(raw)
print(len(raw) / (time.perf_counter() - t0))
"""


def export(rev: str) -> Path:
    """Return a folder holding the files of ``rev`` (exported once)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    dest = WORK / f"tree-{sha}"
    if not dest.exists():
        tmp = dest.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", sha], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
        tmp.rename(dest)
    return dest


def hot_path(tree: Path, events: Path) -> float:
    """Events/s of the tree's hot path (state/ alone) over the lines of ``events``."""
    out = subprocess.run([sys.executable, "-c", _HOT, str(events)], cwd=tree, check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def instructions(tree: Path, events: Path) -> int:
    """Instructions valgrind counts for the tree's hot path over ``events`` (start-up included)."""
    out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                          _HOT, str(events)], cwd=tree, check=True, capture_output=True, text=True).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))  # type: ignore[union-attr]


def per_line(tree: Path, events: Path, empty: Path, n: int) -> float:
    """Instructions per line of the tree's hot path (start-up subtracted)."""
    instructions(tree, empty)  # compile the tree's bytecode first: it would count in the first run
    return (instructions(tree, events) - instructions(tree, empty)) / n


def replay(tree: Path, events: Path, out: Path) -> float:
    """Events/s of wall time of one ``moments run`` process of the tree (file in, JSONL out)."""
    shutil.rmtree(out, ignore_errors=True)
    n = sum(1 for _ in events.open("rb"))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", "--log-level", "warning", "run", "--source",
                    f"file:{events}", "--sink", f"jsonl:{out}", "--no-metrics", "--status", "off"],
                   cwd=tree, check=True, stdout=subprocess.DEVNULL)
    return n / (time.perf_counter() - t0)


def section_name(base: str) -> str:
    """The RESULTS.md section a comparison against ``base`` writes by default: ``compare-<base>``."""
    return "compare-" + re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-")


def main() -> None:
    """Measure both trees alternately and write their section of RESULTS.md (``compare-<base>`` by default)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=240)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--callgrind", type=int, default=0, metavar="N", help="also count instructions over N lines")
    ap.add_argument("--section", help="RESULTS.md section to write (default: compare-<base>)")
    a = ap.parse_args()
    events = events_file(a.customers, a.minutes)
    base = export(a.base)
    trees = {"base": base, "this": ROOT}
    hot: dict[str, list[float]] = {k: [] for k in trees}
    rep: dict[str, list[float]] = {k: [] for k in trees}
    for i in range(a.runs):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for name in order:
            hot[name].append(hot_path(trees[name], events))
        for name in order:
            rep[name].append(replay(trees[name], events, WORK / f"compare-out-{name}"))
        print(f"round {i + 1}: hot {hot['base'][-1]:,.0f} → {hot['this'][-1]:,.0f}; "
              f"replay {rep['base'][-1]:,.0f} → {rep['this'][-1]:,.0f}", flush=True)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()
    hot_ratio = [t / b for t, b in zip(hot["this"], hot["base"], strict=True)]
    rep_ratio = [t / b for t, b in zip(rep["this"], rep["base"], strict=True)]
    figs = [
        Figure(f"hot path, base {a.base}", tuple(hot["base"])),
        Figure(f"hot path, this tree ({head})", tuple(hot["this"])),
        Figure("hot path: this / base (per round)", tuple(hot_ratio), "×"),
        Figure(f"replay, 1 process, base {a.base}", tuple(rep["base"])),
        Figure(f"replay, 1 process, this tree ({head})", tuple(rep["this"])),
        Figure("replay: this / base (per round)", tuple(rep_ratio), "×"),
    ]
    body = (f"## Before and after (same run), against {a.base}\n\n{machine()}\n\n"
            f"`python -m benchmarks.bench_compare --base {a.base} --runs {a.runs}`: {a.customers:,} customers, "
            f"{a.minutes:g} simulated minutes; trees alternate within each round.\n\n{table(figs)}\n\n"
            f"Median ratio: hot path {statistics.median(hot_ratio):.3f}×, replay {statistics.median(rep_ratio):.3f}×.")
    if a.callgrind:
        lines = events.read_bytes().splitlines(keepends=True)[: a.callgrind]
        sample, empty = WORK / f"compare-{len(lines)}.jsonl", WORK / "compare-empty.jsonl"
        sample.write_bytes(b"".join(lines))
        empty.write_bytes(b"")
        counts = {name: per_line(tree, sample, empty, len(lines)) for name, tree in trees.items()}
        body += (f"\n\nInstructions per line of the hot path (callgrind, first {len(lines):,} lines, start-up "
                 f"subtracted): base {counts['base']:,.0f}, this tree {counts['this']:,.0f}: "
                 f"{counts['this'] / counts['base']:.3f}×.")
    write_section(a.section or section_name(a.base), body)
    print(body)


if __name__ == "__main__":
    main()
