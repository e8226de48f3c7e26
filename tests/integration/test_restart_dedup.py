"""A copy of an event read on either side of a restart from a snapshot counts once (same lines, same moments).

Found by a tester (session 12): the customer's ring of recent event ids held Python string hashes, salted per
process, so after a restart no remembered id matched again. A ``fail`` read before the restart and its copy read
after it were both applied: a second failure in a row fired ``cart.stuck``, and no duplicate was dead-lettered.
Each run here is its own process with its own hash seed, as a restarted worker is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

from connectors.jsonl import read_jsonl
from state.record import id_key
from tests.helpers import T0
from tests.worker import Worker

ROOT = Path(__file__).resolve().parents[2]


def _fail(eid: str, minute: int) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": "c1", "ts": T0 + minute * 60_000, "channel": "app",
                         "type": "fail", "journey": "cart", "step": "payment"}) + b"\n"


def _run(source: str, out: Path, log: Path, seed: str, *extra: str) -> None:
    w = Worker(["--source", source, "--sink", f"jsonl:{out}", "--no-metrics", "--status", "off", *extra], log,
               env={"PYTHONHASHSEED": seed})
    assert w.wait(120) == 0, w.log()[-3000:]


def _moments(out: Path) -> set[tuple[str, str]]:
    return {(m["rule"], m["moment_id"]) for m in read_jsonl(out / "moments.jsonl")}


def _duplicates(out: Path) -> int:
    path = out / "deadletter.jsonl"
    return sum(d["reason"].startswith("duplicate") for d in read_jsonl(path)) if path.exists() else 0


def test_a_copy_read_after_a_restart_is_the_duplicate_it_was_without_one(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_bytes(_fail("f1", 0))
    b.write_bytes(_fail("f1", 1) + _fail("f2", 2))  # f1 again (a redelivery), then a second failure
    source = f"file:{a},{b}"
    _run(source, tmp_path / "ref", tmp_path / "ref.log", "1")
    _run(f"file:{a}", tmp_path / "out", tmp_path / "first.log", "2", "--recovery-dir", str(tmp_path / "rec"))
    _run(source, tmp_path / "out", tmp_path / "second.log", "3", "--recovery-dir", str(tmp_path / "rec"))
    expected = _moments(tmp_path / "ref")
    assert {r for r, _ in expected} == {"cart.failed"}  # f2 is the second failure: f1's copy is no failure
    assert _moments(tmp_path / "out") == expected
    assert _duplicates(tmp_path / "ref") == _duplicates(tmp_path / "out") == 1


def test_an_event_id_is_remembered_by_the_same_key_in_every_process() -> None:
    # Snapshots carry the keys: a change of this function voids every stored customer's memory of its ids.
    assert id_key("f1") == bytes.fromhex("e4dea023ff00")
    keys = {subprocess.run([sys.executable, "-c", "from state.record import id_key; print(id_key('evt-42').hex())"],
                           cwd=ROOT, env={**os.environ, "PYTHONHASHSEED": seed}, capture_output=True, text=True,
                           check=True).stdout.strip() for seed in ("1", "2", "random")}
    assert keys == {id_key("evt-42").hex()}
