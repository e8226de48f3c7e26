"""One half of a long shard run, in a process of its own, so the compiled and the pure-Python state/ can be compared.

``python -m tests.build_driver first SNAPDIR``: the first half of the input, then a snapshot of every shard into
SNAPDIR. ``python -m tests.build_driver second SNAPDIR``: restore those snapshots, the second half, end of input.
Each prints one JSON line: which build ran (``state.BUILD``), how many records it emitted and a SHA-256 over every
record and counter, in emission order. The build is chosen by the environment (``CX_PURE_PYTHON=1``: pure).

The input: simulated traffic (fixed seed), with invalid lines, duplicates and lines late behind the watermark.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any

import orjson

import state
from connectors.simulator import simulate
from state.batches import RawBatch, Tick
from state.routing import shard_of_raw
from state.rules import load_rule_pack
from state.shard import Shard, process

SHARDS = 4
BATCH = 2048
CUSTOMERS = 8000
MINUTES = 90
BAD = (b"not json", b'{"event_id": "bad-1", "ts": 1767225600000}', b"\xff\xfe not utf-8",
       b'{"event_id": "bad-2", "customer_id": "c-bad", "ts": "yesterday", "channel": "app", "type": "view"}')
_FIELDS = ("moments", "actions", "tags", "states", "steps", "dead", "context", "feedback", "late_events")
_COUNTS = ("events", "invalid", "late", "evicted", "groups_dropped", "customers", "watermark_ms", "max_ts_ms")


def lines() -> list[bytes]:
    """The whole input: every 97th line repeated later (a duplicate), every 89th sent ten minutes behind its time
    as a new event (late), and a bad line every 1,000."""
    docs: list[dict[str, Any]] = list(simulate(CUSTOMERS, MINUTES, seed=29).events())
    out: list[bytes] = []
    for i, doc in enumerate(docs):
        out.append(orjson.dumps(doc))
        if i % 97 == 0 and i >= 200:
            out.append(orjson.dumps(docs[i - 150]))
        if i % 89 == 0 and i >= 2000:
            out.append(orjson.dumps({**doc, "event_id": f"late-{i}", "ts": doc["ts"] - 600_000}))
        if i % 1000 == 0:
            out.append(BAD[(i // 1000) % len(BAD)])
    return out


def feed(shards: list[Shard], raw: list[bytes], first_offset: int, digest: Any) -> int:
    """Feed ``raw`` in batches routed as the dataflow does; hash every output; return the records emitted."""
    records = 0
    for start in range(0, len(raw), BATCH):
        groups: list[tuple[list[bytes], list[int]]] = [([], []) for _ in shards]
        for i, line in enumerate(raw[start : start + BATCH], first_offset + start):
            values, offsets = groups[shard_of_raw(line, len(shards))]
            values.append(line)
            offsets.append(i)
        for s, (values, offsets) in enumerate(groups):
            if values:
                records += record(process(shards[s], [RawBatch("file:events.jsonl", 0, values, offsets, s)]), digest)
    return records


def record(out: Any, digest: Any) -> int:
    """Add one batch's records and counters to the digest; return how many records it held."""
    n = 0
    for name in _FIELDS:
        for rec in getattr(out, name):
            digest.update(name.encode() + orjson.dumps(rec, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS))
            n += 1
    counts = {name: getattr(out, name) for name in _COUNTS}
    # Keyed by tuples (events by channel and type): sorted (repr(key), value) pairs.
    digest.update(orjson.dumps({k: sorted((repr(i), n) for i, n in v.items()) if isinstance(v, dict) else v
                                for k, v in counts.items()}, option=orjson.OPT_SORT_KEYS))
    return n


def main(half: str, snapdir: Path) -> None:
    pack = load_rule_pack()
    shards = [Shard(pack, key=str(s), shards=SHARDS, clock=lambda: 1_767_225_600_000) for s in range(SHARDS)]
    raw = lines()
    cut = len(raw) // 2
    digest = hashlib.sha256()
    if half == "first":
        records = feed(shards, raw[:cut], 0, digest)
        for s, sh in enumerate(shards):
            (snapdir / f"{s}.snap").write_bytes(sh.snapshot())
    else:
        for s, sh in enumerate(shards):
            sh.restore((snapdir / f"{s}.snap").read_bytes())
        records = feed(shards, raw[cut:], cut, digest)
        for sh in shards:
            records += record(process(sh, [Tick(0, final=True)]), digest)
    print(orjson.dumps({"compiled": state.BUILD.compiled, "build": state.BUILD.line, "lines": len(raw),
                        "records": records, "sha256": digest.hexdigest()}).decode())


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
