"""Replay through the whole pipeline (``moments run --source file:…``), one and two processes, ± ClickHouse.

Each figure is events/s of wall time for fresh ``moments run`` subprocesses
(start-up included), alternating variants within each round so ratios compare
runs made under the same conditions. Two-process variants show what the
exchange between processes costs: the shipped flow reads the input where its
shards live; ``routed`` is the flow as it was before, one input partition whose
lines (and shard outputs) cross to the other process through Bytewax's exchange.
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import WORK, Figure, machine, run_cli, table, write_section
from benchmarks.traffic import events_file

COMMON = ["--no-metrics", "--status", "off"]
VARIANTS = ("shipped", "routed", "own-input", "one-input")


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


def two_processes(path: Path, out: Path, variant: str = "shipped") -> tuple[float, list[float]]:
    """Seconds for a two-process Bytewax cluster on this machine (JSONL sink), and each process's CPU seconds.

    Both processes start together, as a deployment would start them.
    """
    shutil.rmtree(out, ignore_errors=True)
    addrs = f"127.0.0.1:{_free_port()};127.0.0.1:{_free_port()}"
    entry = ["-m", "flows.cli"] if variant == "shipped" else ["-m", "benchmarks.bench_replay", "--child", variant]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, *entry, "--log-level", "warning", "run", "--source", f"file:{path}",
                          "--sink", f"jsonl:{out}", *COMMON, "-i", str(i), "-a", addrs], stdout=subprocess.DEVNULL)
        for i in range(2)
    ]
    cpu = []
    for p in procs:
        _pid, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise RuntimeError(f"a cluster process failed ({variant})")
        cpu.append(usage.ru_utime + usage.ru_stime)
    return time.perf_counter() - t0, cpu


def _child(variant: str, argv: list[str]) -> int:
    """Run ``moments`` with the exchange-heavy wiring of a benchmark variant."""
    import flows.dataflow as df
    from connectors.placement import Placement
    from flows.cli import main as cli
    from flows.sink import PipelineSink

    if variant == "routed":
        # One input partition for the cluster and every sink partition listed everywhere: the flow before
        # input was read by shard ownership.
        df.placement_of = lambda cfg: Placement(0, 1, cfg.workers)  # type: ignore[assignment]
    elif variant == "own-input":
        # Input read by shard ownership, but outputs still go to sink partitions spread over both processes.
        df._OwnShardsSink = lambda shards, _placement, *args: PipelineSink(shards, *args)  # type: ignore[assignment]
    elif variant == "one-input":
        # One input partition whose lines cross to the other process, outputs written where they are made.
        source = df.JsonlFileSource
        df.JsonlFileSource = lambda *a, placement=None, **k: source(*a, **k)  # type: ignore[assignment,misc]
    return cli(argv)


def exchange_micro(path: Path, limit: int = 300_000) -> tuple[float, float]:
    """Per line of input, in µs: pickling (dumps + loads) of what crosses with routed lines, and the source's scan
    of every line (read, route, event time) as each process of the cluster runs it."""
    from connectors.placement import Placement
    from connectors.replay_source import _RawPartition
    from state.batches import RawBatch

    gc.set_threshold(100_000, 50, 1000)  # as the pipeline runs (flows/runner.py)

    def lines(_start: int) -> object:
        with path.open("rb") as f:
            for i, line in enumerate(f):
                if i >= limit:
                    return
                yield line

    def drain(own: frozenset[int] | None) -> tuple[list[list[tuple[str, object]]], float]:
        part = _RawPartition("file:bench", lines, 0, 64, 4096, own=own)  # type: ignore[arg-type]
        batches = []
        t0 = time.perf_counter()
        while True:
            try:
                batches.append(part.next_batch())
            except StopIteration:
                return batches, time.perf_counter() - t0

    other = Placement(0, 2, 1).own_shards(64, 1)
    batches, _ = drain(None)
    crossing = [v for items in batches for k, v in items if int(k) in other]
    t0 = time.perf_counter()
    for v in crossing:
        pickle.loads(pickle.dumps(v))
    pickling = time.perf_counter() - t0
    _, scan = drain(Placement(0, 2, 1).own_shards(64))
    n = sum(len(v.values) for items in batches for _k, v in items if type(v) is RawBatch)
    return pickling / n * 1e6, scan / n * 1e6


def startup(out: Path) -> tuple[float, float]:
    """Wall seconds of one process and of a two-process cluster on a ten-line file (fixed costs)."""
    WORK.mkdir(parents=True, exist_ok=True)
    tiny = WORK / "tiny.jsonl"
    tiny.write_bytes(b"".join(
        b'{"event_id":"e%d","customer_id":"c%d","ts":%d,"channel":"app","type":"view"}\n'
        % (i, i, 1_767_225_600_000 + i) for i in range(10)))
    return one_process(tiny, out), two_processes(tiny, out)[0]


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    """Measure and write the ``replay`` section of RESULTS.md."""
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2], sys.argv[3:]))
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=115_000)
    ap.add_argument("--minutes", type=float, default=720)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-foreign-cpu", type=float, default=3.0,
                    help="CPU-seconds other processes may use during a round before it is run again")
    a = ap.parse_args()
    path = events_file(a.customers, a.minutes)
    n = sum(1 for _ in path.open("rb"))
    out = WORK / "replay-out"
    one, two, routed, own_in, ch, up1, up2 = [], [], [], [], [], [], []
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    discarded = 0
    while len(one) < a.runs:
        # The machine is shared: a round during which other processes used the CPUs is run again.
        busy0, mine0 = _busy_cpu_s(), _children_cpu_s()
        r1 = n / one_process(path, out)
        r2 = {}
        used2 = {}
        for variant in VARIANTS:
            secs, used = two_processes(path, out, variant)
            r2[variant], used2[variant] = n / secs, sum(used)
        rch = n / one_process(path, out, clickhouse=True)
        s1, s2 = startup(out)
        foreign = (_busy_cpu_s() - busy0) - (_children_cpu_s() - mine0)
        if foreign > a.max_foreign_cpu and discarded < 2 * a.runs:
            discarded += 1
            print(f"round discarded: other processes used {foreign:.1f} CPU-seconds", file=sys.stderr)
            continue
        one.append(r1)
        two.append(r2["shipped"])
        routed.append(r2["routed"])
        own_in.append(r2["own-input"])
        for variant in VARIANTS:
            cpu[variant].append(used2[variant])
        ch.append(rch)
        up1.append(s1)
        up2.append(s2)
    pickling, scan = exchange_micro(path)
    figs = [
        Figure("replay, 1 process, JSONL sink", tuple(one)),
        Figure("replay, 2 processes (cluster), JSONL sink", tuple(two)),
        Figure("2 processes, lines and outputs routed through the exchange (before)", tuple(routed)),
        Figure("2 processes, input by shard ownership, outputs through the exchange", tuple(own_in)),
        Figure("replay, 1 process, JSONL + embedded ClickHouse", tuple(ch)),
        Figure("ratio 2 processes / 1 process", tuple(t / o for t, o in zip(two, one, strict=True)), unit="×"),
        Figure("ratio 2 processes routed (before) / 1 process", tuple(r / o for r, o in zip(routed, one, strict=True)),
               unit="×"),
        Figure("ratio with ClickHouse / without", tuple(c / o for c, o in zip(ch, one, strict=True)), unit="×"),
        Figure("start-up, 1 process, 10-line file", tuple(x * 1000 for x in up1), unit="ms"),
        Figure("start-up, 2 processes, 10-line file", tuple(x * 1000 for x in up2), unit="ms"),
    ]
    secs = statistics.median(n / r for r in one)
    cpu_line = ", ".join(f"{v} {statistics.median(c):.1f}" for v, c in cpu.items())
    body = (f"## Replay through `moments run` ({n:,} simulated events, {a.customers:,} customers)\n\n{machine()}\n\n"
            f"{table(figs)}\n\nReplaying {n:,} events takes {secs:.1f} s (median, one process, start-up included). "
            f"CPU seconds of both cluster processes together (median): {cpu_line}. Per input line (first 300,000): "
            f"pickling what routed lines send across {pickling:.2f} µs; each process's scan of every line (read, "
            f"route, event time) {scan:.2f} µs. "
            f"Rounds run again because other processes used the CPUs meanwhile: {discarded}.")
    print(body)
    write_section("replay", body)


if __name__ == "__main__":
    main()
