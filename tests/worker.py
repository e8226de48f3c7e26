"""Run ``moments run`` as a child process for integration tests, with its log kept for failures."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Stop a child process: SIGTERM, then SIGKILL if it has not exited within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Worker:
    """A ``moments run`` child process."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None, prelude: str = "") -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        # A prelude (Python run first, e.g. to shorten a grace period) needs -c; the CLI then runs as with -m.
        cmd = (["-c", f"{prelude}\nimport runpy; runpy.run_module('flows.cli', run_name='__main__', alter_sys=True)"]
               if prelude else ["-m", "flows.cli"])
        self.proc = subprocess.Popen(
            [sys.executable, *cmd, "run", *args],
            stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "CX_LOG_LEVEL": "info", **(env or {})},
        )

    def log(self) -> str:
        """The child's output so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """Whether the child still runs."""
        return self.proc.poll() is None

    def wait_log(self, text: str, timeout_s: float = 30) -> None:
        """Wait until the log contains ``text``."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if text in self.log():
                return
            if not self.alive():
                break
            time.sleep(0.2)
        raise AssertionError(f"worker log never showed {text!r}:\n{self.log()[-3000:]}")

    def wait(self, timeout_s: float = 120) -> int:
        """Wait for the child to exit; return its code."""
        return self.proc.wait(timeout=timeout_s)

    def stop(self) -> None:
        """Terminate the child (SIGTERM, then SIGKILL)."""
        stop_process(self.proc)
        self._log.close()
