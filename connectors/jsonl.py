"""JSONL output: one file per output kind in a directory, appended in whole batches of whole lines."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import Any

import orjson

from connectors.records import JSONL_DEFAULT, JSONL_FILES

FILE_NAMES = JSONL_FILES
DEFAULT_KINDS = JSONL_DEFAULT

log = logging.getLogger("cx.jsonl")


class JsonlError(ValueError):
    """A line of a JSONL file that is not a JSON object; the message names the file and the line number."""


# A record longer than this cannot be one the pipeline wrote (dead letters are bounded): never worth parsing.
_MAX_WHOLE_TAIL = 1 << 20


def repair_tail(fd: int, path: Path) -> int:
    """Cut a torn last line (one without its newline, e.g. after a full disk) off an open file.

    A last line that is a whole JSON object only lacks its newline, which is added instead.

    The caller holds the file's lock. Logs a warning naming the file and the bytes dropped.

    Returns:
        The number of bytes dropped (0 when the file ends with a whole line or is empty).
    """
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return 0
    # Search backwards for the last newline, a block at a time (a torn line may be long).
    end = size
    keep = 0
    while end > 0:
        start = max(0, end - 65536)
        i = os.pread(fd, end - start, start).rfind(b"\n")
        if i >= 0:
            keep = start + i + 1
            break
        end = start
    if size - keep <= _MAX_WHOLE_TAIL:
        tail = os.pread(fd, size - keep, keep)
        try:
            whole = isinstance(orjson.loads(tail), dict)
        except orjson.JSONDecodeError:
            whole = False
        if whole:
            # Cut off right after the record: it is whole and only its newline is missing. Keep it.
            os.write(fd, b"\n")
            log.warning("%s ended with a whole record but no newline: added the newline", path)
            return 0
    os.ftruncate(fd, keep)
    log.warning("%s ended with a torn line (no newline): dropped its last %d bytes", path, size - keep)
    return size - keep


class JsonlWriter:
    """Append records to ``DIR/<kind>.jsonl``.

    Each batch is one ``write()`` on an ``O_APPEND`` descriptor under an exclusive ``flock``, so several
    workers or processes can share a directory without interleaving lines. Files hold whole lines only: a
    torn last line found when a file is opened (a crash or full disk mid-write) is cut off with a warning,
    and a batch whose write fails midway (ENOSPC, EFBIG) is cut back to where it began before the error is
    raised, so a restart finds whole lines.

    Args:
        directory: Output directory (created if missing).
        kinds: Which record kinds to write (journey states and steps are ClickHouse-only by default).
    """

    def __init__(self, directory: Path, kinds: tuple[str, ...] = DEFAULT_KINDS) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._dir = directory
        self._kinds = set(kinds)
        self.kinds = frozenset(kinds)  # what it writes (``flows.sink.Writer``)
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Write rows of one kind (ignored when the kind is not selected).

        Raises:
            ValueError: naming a kind that is no record kind at all (a typo would otherwise lose its records).
        """
        if kind not in self._kinds or not rows:
            if kind not in FILE_NAMES:
                known = ", ".join(FILE_NAMES)
                raise ValueError(f"unknown record kind {kind!r} (connectors/records.py defines {known})")
            return
        dumps, nl = orjson.dumps, orjson.OPT_APPEND_NEWLINE  # the newline added by orjson: no second bytes per row
        data = b"".join([dumps(r, option=nl) for r in rows])
        with self._lock:
            fd = self._fds.get(kind)
            if fd is None:
                path = self._dir / FILE_NAMES[kind]
                # O_RDWR: the tail check reads the file.
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    repair_tail(fd, path)
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                self._fds[kind] = fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                start = os.fstat(fd).st_size
                view = memoryview(data)
                try:
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                except OSError as e:
                    # A part of the batch may be on disk: cut it off so the file ends with a whole line.
                    try:
                        os.ftruncate(fd, start)
                    except OSError as cut:
                        # The torn tail stays; the next open cuts it off (repair_tail).
                        log.error("%s: could not cut a failed write back to %d bytes: %s", self._dir / FILE_NAMES[kind],
                                  start, cut)
                    raise e from None
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def flush(self) -> None:
        """Nothing is buffered in the process; kept for the sink interface."""

    def close(self) -> None:
        """Close the files."""
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSONL file written by ``JsonlWriter`` (missing file → empty list).

    Raises:
        JsonlError: naming the file and the line number of a line that is not a JSON object.
    """
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = orjson.loads(line)
            except orjson.JSONDecodeError as e:
                torn = "" if line.endswith(b"\n") else " (a torn last line: no newline)"
                raise JsonlError(f"{path}: line {number} is not valid JSON{torn}: {e}") from None
            if not isinstance(row, dict):
                raise JsonlError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
    return rows
