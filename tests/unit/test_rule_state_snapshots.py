"""Generic rules' per-attempt states in snapshots: one pickle format for both builds (issue 18).

An adversary's: without their own ``__getstate__``, a compiled build's snapshot holding them failed to restore in
pure Python, and a pure one's restored in the compiled build came back empty (timers disarmed, moments lost).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import state
from state.generic.absence import AbsenceState
from state.generic.base import RuleState
from state.generic.sequence import SequenceState
from state.generic.window import WindowState

ROOT = Path(__file__).resolve().parents[2]

_MAKE = """
import pickle, sys, state
from state.generic.absence import AbsenceState
from state.generic.sequence import SequenceState
from state.generic.window import WindowState
a = AbsenceState(); a.fired = True; a.unless_ms = 123; a.arm_ms = 5; a.arm_id = "e1"
q = SequenceState(); q.unless_ms = 7; q.first_ms = 9; q.first_id = "f"
w = WindowState(); w.recs = [1, "x", 2]; w.groups = {"g": [3, "y"]}
sys.stdout.buffer.write(pickle.dumps((state.BUILD.compiled, [a, q, w]), protocol=pickle.HIGHEST_PROTOCOL))
"""


def _check(objs: list[RuleState]) -> None:
    a, q, w = objs
    assert isinstance(a, AbsenceState)
    assert (a.fired, a.unless_ms, a.arm_ms, a.arm_id) == (True, 123, 5, "e1")
    assert isinstance(q, SequenceState)
    assert (q.fired, q.unless_ms, q.first_ms, q.first_id) == (False, 7, 9, "f")
    assert isinstance(w, WindowState)
    assert (w.recs, w.groups) == ([1, "x", 2], {"g": [3, "y"]})


@pytest.mark.parametrize("pure", [False, True])
def test_rule_states_pickled_by_either_build_restore_in_this_one(pure: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CX_PURE_PYTHON"} | ({"CX_PURE_PYTHON": "1"} if pure else {})
    out = subprocess.run([sys.executable, "-c", _MAKE], cwd=ROOT, env=env, capture_output=True, check=True).stdout
    compiled, objs = pickle.loads(out)  # noqa: S301 - made by this test
    if not pure and not compiled:
        pytest.skip(f"no compiled build to pickle with: {state.BUILD.line}")
    _check(objs)


def test_rule_states_of_snapshots_taken_before_the_format_restore() -> None:
    # Pure Python's default state, (None, {slot: value}), and mypyc's, {attribute: value}: by name.
    a = AbsenceState()
    a.__setstate__((None, {"fired": True, "unless_ms": 123, "arm_ms": 5, "arm_id": "e1"}))
    q = SequenceState()
    q.__setstate__({"fired": False, "unless_ms": 7, "first_ms": 9, "first_id": "f"})
    w = WindowState()
    w.__setstate__({"fired": False, "unless_ms": -1, "recs": [1, "x", 2], "groups": {"g": [3, "y"]}})
    q2 = pickle.loads(pickle.dumps(q))  # noqa: S301 - made here
    _check([a, q2, w])
