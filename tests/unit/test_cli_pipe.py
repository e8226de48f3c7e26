"""A reader that goes away early (``moments … | head``) ends the command quietly, without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_closed_stdout_ends_the_command_without_a_traceback() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "flows.cli", "simulate", "--customers", "3000", "--minutes", "60",
                          "-o", "/dev/stdout"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout is not None
    assert p.stderr is not None
    first = p.stdout.readline()
    p.stdout.close()  # as `head -1` does
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141, err
    assert first.startswith(b'{"event_id"')
    assert "Traceback" not in err, err
    assert "BrokenPipeError" not in err, err
