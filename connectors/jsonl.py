"""JSONL output: one file per output kind in a directory, appended in whole batches."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import orjson

FILE_NAMES = {
    "moment": "moments.jsonl",
    "action": "actions.jsonl",
    "tag": "tags.jsonl",
    "context": "context.jsonl",
    "dead_letter": "deadletter.jsonl",
    "journey_state": "journey_states.jsonl",
    "journey_step": "journey_steps.jsonl",
    "feedback": "feedback.jsonl",
}
DEFAULT_KINDS = ("moment", "action", "tag", "context", "dead_letter")


class JsonlWriter:
    """Append records to ``DIR/<kind>.jsonl``.

    Each batch is one ``write()`` on an ``O_APPEND`` descriptor, so several
    workers or processes can share a directory without interleaving lines.

    Args:
        directory: Output directory (created if missing).
        kinds: Which record kinds to write (journey states and steps are ClickHouse-only by default).
    """

    def __init__(self, directory: Path, kinds: tuple[str, ...] = DEFAULT_KINDS) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._kinds = set(kinds)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write rows of one kind (ignored when the kind is not selected)."""
        if kind not in self._kinds or not rows:
            return
        data = b"".join(orjson.dumps(r) + b"\n" for r in rows)
        with self._lock:
            fd = self._fds.get(kind)
            if fd is None:
                fd = os.open(self._dir / FILE_NAMES[kind], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._fds[kind] = fd
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]

    def flush(self) -> None:
        """Nothing is buffered in the process; kept for the sink interface."""

    def close(self) -> None:
        """Close the files."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by ``JsonlWriter`` (missing file → empty list)."""
    if not path.exists():
        return []
    with path.open("rb") as f:
        return [orjson.loads(line) for line in f if line.strip()]
