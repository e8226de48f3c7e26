"""Hostile input: 100,000 bad messages mixed into valid traffic are all dead-lettered; valid moments are unchanged."""

from __future__ import annotations

import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate

pytestmark = pytest.mark.slow


def hostile(rng: random.Random, valid: list[dict[str, object]]) -> bytes:
    """One hostile message (no newline: it travels in a JSONL file)."""
    base = dict(rng.choice(valid))
    kind = rng.randrange(14)
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))).replace(b"\n", b"\x00") or b"\x00"
    if kind == 1:
        depth = rng.randrange(500, 3000)
        return b"[" * depth + b"]" * depth
    if kind == 2:
        return orjson.dumps({**base, "attrs": {"blob": "x" * 70_000}})
    if kind == 3:
        base["ts"] = rng.choice([-1, 0, 10**15, "1999-12-31T23:59:59Z", "not a time", 1.5, True, None])
    elif kind == 4:
        base["customer_id"] = rng.choice([None, 42, "", "   ", ["c"], {"id": 1}, "x" * 200])
    elif kind == 5:
        base["channel"] = rng.choice(["fax", "", "APP", "app\u0000", 7])
    elif kind == 6:
        base["type"] = rng.choice(["teleport", "", "VIEW", None])
    elif kind == 7:
        return orjson.dumps(base).replace(b'"ts":', b'"ts":NaN,"x":', 1)
    elif kind == 8:
        return orjson.dumps(base).replace(b'"ts":', b'"ts":Infinity,"y":', 1)
    elif kind == 9:
        base["attrs"] = {"nested": {"a": [1, 2]}} if rng.random() < 0.5 else {f"k{i}": i for i in range(40)}
    elif kind == 10:
        return ("\ud800" + str(rng.random())).encode("utf-8", "surrogatepass")
    elif kind == 11:
        base["event_id"] = rng.choice([None, "", 5])
    elif kind == 12:
        return orjson.dumps([base])
    else:
        return b'{"event_id": "' + b"\xff\xfe" * 10 + b'"}'
    return orjson.dumps(base)


def _run(src: Path, out: Path) -> None:
    subprocess.run([sys.executable, "-m", "flows.cli", "--log-level", "warning", "run", "--source", f"file:{src}",
                    "--sink", f"jsonl:{out}", "--no-metrics", "--status", "off"], check=True, timeout=600)


def test_hostile_messages_are_dead_lettered_and_valid_moments_unchanged(tmp_path: Path) -> None:
    valid = list(simulate(3_000, 240, seed=9).events())
    rng = random.Random(9)
    bad = [hostile(rng, valid) for _ in range(100_000)]
    # Duplicates of valid events (same id, same customer) are hostile too: redelivered shortly after the original,
    # as an at-least-once producer does.
    dup_of = {rng.randrange(len(valid)) for _ in range(2_000)}
    clean_src, mixed_src = tmp_path / "clean.jsonl", tmp_path / "mixed.jsonl"
    clean_src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in valid))
    # Hostile messages go in at random places; valid events keep their order.
    slots = sorted(rng.randrange(len(valid) + 1) for _ in bad)
    lines: list[bytes] = []
    j = 0
    for i, e in enumerate(valid):
        while j < len(slots) and slots[j] <= i:
            lines.append(bad[j])
            j += 1
        lines.append(orjson.dumps(e))
        if i in dup_of:
            lines.insert(len(lines) - rng.randrange(0, 3), orjson.dumps(valid[max(0, i - rng.randrange(3))]))
    lines += bad[j:]
    dups = [b""] * len(dup_of)
    mixed_src.write_bytes(b"".join(ln + b"\n" for ln in lines))
    _run(clean_src, tmp_path / "clean")
    _run(mixed_src, tmp_path / "mixed")

    dead = read_jsonl(tmp_path / "mixed" / "deadletter.jsonl")
    reasons = Counter(d["reason"].split(":")[0] for d in dead)
    assert len(dead) == len(bad) + len(dups), reasons
    assert reasons["duplicate"] == len(dups)
    assert all(d["reason"] and d["detail"] for d in dead)
    assert {"not_json", "too_large", "bad_ts", "bad_type", "unknown_channel", "unknown_type", "attrs_nested",
            "attrs_too_many", "missing_field", "empty_field", "not_object"} <= set(reasons)
    clean = sorted(m["moment_id"] for m in read_jsonl(tmp_path / "clean" / "moments.jsonl"))
    mixed = sorted(m["moment_id"] for m in read_jsonl(tmp_path / "mixed" / "moments.jsonl"))
    assert clean
    assert mixed == clean
