"""The mypyc-compiled and the pure-Python state/ emit the same records, and read each other's snapshots (issue 18).

Each half of a long shard run (tests/build_driver.py: simulated traffic with invalid, duplicate and late lines)
runs in a process of its own under one build; the second half restores the first half's snapshots. Every
pairing of builds must print the same digest of every record and counter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

import state
from state._build import PURE_ENV

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not state.BUILD.compiled, reason=f"nothing to compare: {state.BUILD.line}"),
]


def _half(half: str, snapdir: Path, pure: bool) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    if pure:
        env[PURE_ENV] = "1"
    proc = subprocess.run([sys.executable, "-m", "tests.build_driver", half, str(snapdir)], cwd=ROOT, env=env,
                          check=True, capture_output=True, timeout=300)
    got: dict[str, Any] = orjson.loads(proc.stdout.splitlines()[-1])
    assert got["compiled"] is not pure, got["build"]
    return got


def test_compiled_and_pure_builds_emit_the_same_records_and_restore_each_others_snapshots(tmp_path: Path) -> None:
    firsts: dict[bool, dict[str, Any]] = {}
    for pure in (False, True):
        (tmp_path / f"pure-{pure}").mkdir()
        firsts[pure] = _half("first", tmp_path / f"pure-{pure}", pure)
    assert firsts[False]["records"] > 10_000
    assert firsts[False]["records"] == firsts[True]["records"]
    assert firsts[False]["sha256"] == firsts[True]["sha256"]
    seconds = {(taken, restored): _half("second", tmp_path / f"pure-{taken}", restored)
               for taken in (False, True) for restored in (False, True)}
    assert seconds[False, False]["records"] > 10_000
    assert {(s["records"], s["sha256"]) for s in seconds.values()} == {
        (seconds[False, False]["records"], seconds[False, False]["sha256"])}, seconds
