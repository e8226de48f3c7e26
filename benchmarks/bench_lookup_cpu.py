"""What serving look-ups costs the worker in CPU, counted rather than timed (issue 17): per look-up and per event.

Wall-clock rates on a shared machine swing by tens of percent; valgrind's callgrind counts instructions, which
the load does not change. Each figure is taken with the costs as they are and with some put back as they were
(``benchmarks.lookup_before``), in the same run:

- per look-up: a process holding one shard (the first lines of the simulated events, fed through the flow's
  ``ShardLogic``) serves ``GET /v1/customers/{id}`` for held customers on one kept-alive connection while no
  batch runs (an idle worker); instructions of the serving process over N look-ups minus those over none, / N.
  The same look-ups without valgrind give CPU-seconds per look-up (``time.process_time``, median of rounds).
- per event: 64 shards, each through ``ShardLogic.on_batch`` with the look-ups' recent store on, as a run
  serving look-ups has them; instructions over N lines minus those over an empty input, / N.

    python -m benchmarks.bench_lookup_cpu [--lookups 400] [--lines 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import re
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import WORK, machine, write_section
from benchmarks.traffic import events_file

_SERVER = """
import json, sys, time
from benchmarks.lookup_before import install
install([s for s in sys.argv[2].split(",") if s])
from flows import http_endpoint
from flows.operators import ShardLogic
from flows.recent import RECENT
from flows.serving import Service
from flows.shard_registry import SHARDS
from state.batches import RawBatch
from state.rules import load_rule_pack
from state.shard import Shard
RECENT.clear(enabled=True, max_customers=100_000)
raw = open(sys.argv[1], "rb").read().splitlines()
logic = ShardLogic(Shard(load_rule_pack(), key="0"), None, False, 1.0)
for i in range(0, len(raw), 4096):
    logic.on_batch([RawBatch("bench", 0, raw[i:i + 4096], list(range(i, i + len(raw[i:i + 4096]))), 0)])
service = Service(SHARDS, None)
service.running = True
http_endpoint.set_service(service)
server = http_endpoint.start_http(0, "127.0.0.1")
print(json.dumps({"port": server.port, "ids": sorted(logic.shard.customers)[:50]}), flush=True)
for line in sys.stdin:
    print(time.process_time(), flush=True)
"""

_EVENTS = """
import sys
from benchmarks.lookup_before import install
install([s for s in sys.argv[2].split(",") if s])
from flows.operators import ShardLogic
from flows.recent import RECENT
from state.batches import RawBatch, Tick
from state.routing import shard_of_raw
from state.rules import load_rule_pack
from state.shard import Shard
RECENT.clear(enabled=True, max_customers=100_000)
raw = open(sys.argv[1], "rb").read().splitlines()
pack = load_rule_pack()
logics = [ShardLogic(Shard(pack, key=str(s), shards=64), None, False, 1.0) for s in range(64)]
for start in range(0, len(raw), 4096):
    groups = [[] for _ in range(64)]
    for line in raw[start:start + 4096]:
        groups[shard_of_raw(line, 64)].append(line)
    for s, g in enumerate(groups):
        if g:
            logics[s].on_batch([RawBatch("bench", 0, g, list(range(len(g))), s)])
"""


def _valgrind(code: str, *args: str) -> list[str]:
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", code, *args]


def _collected(stderr: str) -> int:
    return int(re.search(r"Collected : (\d+)", stderr).group(1))  # type: ignore[union-attr]


def lookups(sample: Path, before: str, n: int, counted: bool) -> float:
    """Instructions (``counted``) or CPU-seconds of a serving process over ``n`` look-ups of held customers."""
    cmd = _valgrind(_SERVER, str(sample), before) if counted else [sys.executable, "-c", _SERVER, str(sample), before]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    assert proc.stdout is not None
    hello = json.loads(proc.stdout.readline())
    conn = http.client.HTTPConnection("127.0.0.1", hello["port"], timeout=600)
    ids = hello["ids"]
    proc.stdin.write("cpu\n")
    proc.stdin.flush()
    cpu0 = float(proc.stdout.readline())
    for i in range(n):
        conn.request("GET", f"/v1/customers/{ids[i % len(ids)]}")
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
    proc.stdin.write("cpu\n")
    proc.stdin.flush()
    cpu1 = float(proc.stdout.readline())
    conn.close()
    _, err = proc.communicate(timeout=600)
    return float(_collected(err)) if counted else cpu1 - cpu0


def per_event(sample: Path, empty: Path, before: str, n: int) -> float:
    """Instructions per line through ``ShardLogic.on_batch`` (start-up subtracted)."""
    def count(path: Path) -> int:
        out = subprocess.run(_valgrind(_EVENTS, str(path), before), check=True, capture_output=True, text=True)
        return _collected(out.stderr)
    return (count(sample) - count(empty)) / n


def main() -> None:
    """Count, and write the ``lookup-cpu`` section of RESULTS.md."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--lookups", type=int, default=400)
    ap.add_argument("--lines", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the CPU-seconds measure (not valgrind's)")
    a = ap.parse_args()
    lines = events_file(60_000, 600).read_bytes().splitlines(keepends=True)[: a.lines]
    sample, empty = WORK / f"lookup-cpu-{len(lines)}.jsonl", WORK / "lookup-cpu-empty.jsonl"
    sample.write_bytes(b"".join(lines))
    empty.write_bytes(b"")
    shard_lines = WORK / "lookup-cpu-shard.jsonl"
    shard_lines.write_bytes(b"".join(lines[:5000]))
    variants = (("before (email.feedparser)", "parse"), ("after (flows.http_request)", ""))
    secs: dict[str, list[float]] = {before: [] for _, before in variants}
    for i in range(a.rounds):  # alternating: a trend of the load hits both
        for _, before in variants if i % 2 == 0 else variants[::-1]:
            secs[before].append(lookups(shard_lines, before, 2000, False) / 2000)
    rows = []
    for label, before in variants:
        ir = (lookups(shard_lines, before, a.lookups, True) - lookups(shard_lines, before, 0, True)) / a.lookups
        rows.append((label, ir, statistics.median(secs[before])))
        print(label, f"{ir:,.0f} instructions, {1e3 * rows[-1][2]:.3f} ms CPU per look-up", flush=True)
    events = {label: per_event(sample, empty, before, len(lines))
              for label, before in (("before (a closure per event)", "gate"), ("after (on_boundary)", ""))}
    for label, ir in events.items():
        print(label, f"{ir:,.0f} instructions per line", flush=True)
    (b_label, b_ir, b_s), (a_label, a_ir, a_s) = rows
    (e_b_label, e_b), (e_a_label, e_a) = events.items()
    body = (f"## Look-ups' CPU, counted (issue 17)\n\n{machine()}\n\n"
            f"`python -m benchmarks.bench_lookup_cpu --lookups {a.lookups} --lines {a.lines} --rounds {a.rounds}`\n\n"
            "| what | before | after | after / before |\n|---|---:|---:|---:|\n"
            f"| instructions per look-up of a held customer, idle worker (callgrind, {a.lookups} look-ups) "
            f"| {b_ir:,.0f} | {a_ir:,.0f} | {a_ir / b_ir:.3f} |\n"
            f"| CPU per look-up, idle worker (median of {a.rounds} alternating rounds of 2,000; load-dependent) "
            f"| {1e3 * b_s:.3f} ms | {1e3 * a_s:.3f} ms | {a_s / b_s:.3f} |\n"
            f"| instructions per line, 64 shards through `ShardLogic`, recent store on (callgrind, {len(lines):,} "
            f"lines) | {e_b:,.0f} | {e_a:,.0f} | {e_a / e_b:.3f} |\n\n"
            f"Before: look-ups {b_label}, events {e_b_label}; after: {a_label}, {e_a_label}.")
    write_section("lookup-cpu", body)
    print(body)


if __name__ == "__main__":
    main()
