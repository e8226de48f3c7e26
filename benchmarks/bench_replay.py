"""Replay through the whole pipeline (``moments run --source file:…``), one and two processes, ± ClickHouse.

Each figure is events/s of wall time for a fresh ``moments run`` subprocess
(start-up included), alternating variants within each round so ratios compare
runs made under the same conditions.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import WORK, Figure, machine, run_cli, table, write_section
from benchmarks.traffic import events_file

COMMON = ["--no-metrics", "--status", "off"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_process(path: Path, out: Path, clickhouse: bool = False) -> float:
    """Seconds for one process; JSONL sink (plus embedded ClickHouse when asked)."""
    shutil.rmtree(out, ignore_errors=True)
    sinks = ["--sink", f"jsonl:{out}"]
    if clickhouse:
        sinks += ["--sink", f"chdb://{out}/ch"]
    return run_cli(["--log-level", "warning", "run", "--source", f"file:{path}", *sinks, *COMMON])


def two_processes(path: Path, out: Path) -> float:
    """Seconds for a two-process Bytewax cluster on this machine; JSONL sink."""
    shutil.rmtree(out, ignore_errors=True)
    addrs = f"127.0.0.1:{_free_port()};127.0.0.1:{_free_port()}"
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, "-m", "flows.cli", "--log-level", "warning", "run", "--source",
                          f"file:{path}", "--sink", f"jsonl:{out}", *COMMON, "-i", str(i), "-a", addrs],
                         stdout=subprocess.DEVNULL)
        for i in range(2)
    ]
    for p in procs:
        if p.wait(timeout=1800) != 0:
            raise RuntimeError("a cluster process failed")
    return time.perf_counter() - t0


def main() -> None:
    """Measure and write the ``replay`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=115_000)
    ap.add_argument("--minutes", type=float, default=720)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    path = events_file(a.customers, a.minutes)
    n = sum(1 for _ in path.open("rb"))
    out = WORK / "replay-out"
    one, two, ch = [], [], []
    for _ in range(a.runs):
        one.append(n / one_process(path, out))
        two.append(n / two_processes(path, out))
        ch.append(n / one_process(path, out, clickhouse=True))
    figs = [
        Figure("replay, 1 process, JSONL sink", tuple(one)),
        Figure("replay, 2 processes (cluster), JSONL sink", tuple(two)),
        Figure("replay, 1 process, JSONL + embedded ClickHouse", tuple(ch)),
        Figure("ratio 2 processes / 1 process", tuple(t / o for t, o in zip(two, one, strict=True)), unit="×"),
        Figure("ratio with ClickHouse / without", tuple(c / o for c, o in zip(ch, one, strict=True)), unit="×"),
    ]
    secs = sorted(n / r for r in one)[len(one) // 2]
    body = (f"## Replay through `moments run` ({n:,} simulated events, {a.customers:,} customers)\n\n{machine()}\n\n"
            f"{table(figs)}\n\nReplaying {n:,} events takes {secs:.1f} s (median, one process, start-up included).")
    print(body)
    write_section("replay", body)


if __name__ == "__main__":
    main()
