"""Hash every output record of a simulated run, to show a refactor leaves the outputs unchanged.

Writes the simulator's events (fixed seed) to a file with a few bad lines appended (not JSON, a missing field,
a duplicate, bytes that are not UTF-8, a bad time), runs ``moments run`` on that file with a JSONL sink and an
embedded ClickHouse sink, then prints one SHA-256 per JSONL file and per ClickHouse table over its records,
sorted, with the wall-clock fields (``detected_at``, ``received_at``) removed. Two trees that print the same hashes
wrote the same records.

``chdb/journey_states`` (read ``FINAL``: the latest row of each attempt) is the same for two runs of a tree
since every event of a journey marks its row (issue 14): journey-state rows are coalesced per shard at most once
a second of wall time (``state.shard.Shard.take_outputs``), and before that fix the latest row of a few attempts
depended on where those flushes fell. Trees before the fix still differ run to run there.

    python -m benchmarks.output_hash [--tree PATH] [--customers 5000] [--minutes 180] [--seed 11]

``--tree`` runs another checkout's code (e.g. a ``git archive`` of main; ``PYTHONPATH``) with this
interpreter; its chDB tables are read in a child process too.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
WALL_CLOCK = ("detected_at", "received_at")
NL = b"\n"
VARIES: frozenset[str] = frozenset()  # tables that differ between two runs of one tree: none
TABLES = ("moments", "actions", "customer_tags", "tag_history", "journey_states", "journey_steps", "dead_letters",
          "feedback")

# Read in a child: chDB holds one data path per process. FINAL: replacing tables collapse on merges,
# whose timing is not part of the output.
_READ_CHDB = """
import sys, orjson
from chdb.session import Session
s = Session(sys.argv[1])
out = {}
for table in sys.argv[2:]:
    text = s.query(f"SELECT * FROM {table} FINAL" if table != "dead_letters" else f"SELECT * FROM {table}",
                   "JSONEachRow").bytes()
    out[table] = [orjson.loads(line) for line in text.splitlines() if line.strip()]
sys.stdout.buffer.write(orjson.dumps(out))
"""


def digest(rows: list[dict[str, Any]]) -> str:
    """SHA-256 over the rows (wall-clock fields dropped, keys sorted), in sorted order; with the count."""
    lines = sorted(orjson.dumps({k: v for k, v in r.items() if k not in WALL_CLOCK}, option=orjson.OPT_SORT_KEYS)
                   for r in rows)
    return f"{len(lines):>7} {hashlib.sha256(NL.join(lines)).hexdigest()[:16]}"


# Dead letters of every common kind; the file source names them by the (relative, fixed) file name.
BAD_LINES = (b"not json", b'{"event_id": "bad-1", "ts": 1767225600000}', b"\xff\xfe not utf-8",
             b'{"event_id": "bad-2", "customer_id": "c-bad", "ts": "yesterday", "channel": "app", "type": "view"}')


def run(tree: Path, customers: int, minutes: int, seed: int) -> dict[str, str]:
    """Run the pipeline of ``tree`` and return a digest per JSONL file and per table."""
    work = Path(tempfile.mkdtemp(prefix="cx-hash-"))
    # The tree's own code, from a folder of its own (so relative paths, kept in dead letters, are fixed).
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cli = [sys.executable, "-m", "flows.cli"]
    try:
        subprocess.run([*cli, "simulate", "--customers", str(customers), "--minutes", str(minutes), "--seed",
                        str(seed), "-o", "events.jsonl"], cwd=work, env=env, check=True, capture_output=True)
        events = work / "events.jsonl"
        first = events.open("rb").readline().rstrip(b"\n")
        with events.open("ab") as f:
            f.write(NL.join((*BAD_LINES, first)) + NL)  # the first event again: a duplicate
        subprocess.run([*cli, "run", "--source", "file:events.jsonl", "--sink", "jsonl:jsonl", "--sink",
                        "chdb:///./cx.chdb", "--no-metrics", "--status", "off"], cwd=work, env=env, check=True,
                       capture_output=True)
        out: dict[str, str] = {}
        for path in sorted((work / "jsonl").glob("*.jsonl")):
            rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
            out[f"jsonl/{path.name}"] = digest(rows)
        proc = subprocess.run([sys.executable, "-c", _READ_CHDB, str(work / "cx.chdb"), *TABLES], cwd=work,
                              env=env, check=True, capture_output=True)
        for table, rows in orjson.loads(proc.stdout).items():
            out[f"chdb/{table}"] = digest(rows)
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", type=Path, default=ROOT)
    ap.add_argument("--customers", type=int, default=5000)
    ap.add_argument("--minutes", type=int, default=180)
    ap.add_argument("--seed", type=int, default=11)
    a = ap.parse_args()
    for name, value in run(a.tree.resolve(), a.customers, a.minutes, a.seed).items():
        note = "  (varies run to run: wall-clock coalescing)" if name in VARIES else ""
        print(f"{name:<28} {value}{note}")


if __name__ == "__main__":
    main()
