"""A requested stop (SIGTERM) ends the input, and Bytewax then finishes the dataflow as at the end of its input.

Bytewax 0.21 stops a single-worker run on a signal only by panicking inside its Rust worker loop, which prints a
"thread panicked … Box<dyn Any>" backtrace on stderr; a cluster process interrupted while it resumes from recovery
state could abort ("non-unwinding panic"). Ending every input partition instead lets the dataflow
complete normally: each shard emits its pending rows (``ShardLogic.on_eof``), the sink's last epoch flushes them
(and, with recovery, commits the input positions), and ``cli_main`` returns.

A shard that finds the cluster's processes disagreeing on a setting stops the run the same way, and records why
(``stop_for``): its peer finds the same difference in this process's handshake and stops too, so every process
ends cleanly and names the setting. Raising in the worker instead let the first process to fail close its
connections, and its peer ended with Bytewax's "Send thread panic" before it could read the handshake.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

from bytewax.inputs import FixedPartitionedSource, Source, StatefulSourcePartition

# How long a partition may sleep before it looks at the stop flag again (its own next_awake may be far off).
POLL = timedelta(milliseconds=250)

_STOP = threading.Event()
_REASONS: list[Exception] = []
_ESCALATE: list[Callable[[], None]] = []


def request_stop() -> None:
    """Ask every wrapped input partition to end (thread-safe; from the SIGTERM watcher)."""
    _STOP.set()


def stop_requested() -> bool:
    """Whether a stop was requested since the last ``reset``."""
    return _STOP.is_set()


def note_failure(reason: Exception) -> None:
    """Record why the run is failing (the runner names it even when Bytewax reports a failure of its own)."""
    _REASONS.append(reason)


def stop_for(reason: Exception) -> None:
    """End the input because of ``reason`` (the runner then exits naming it), and escalate once.

    A peer that does not stop its own input (one that did not hear of the problem) would keep the cluster
    running: the escalation set by ``on_stop_for`` (the runner's) exits the process if it has not ended soon.
    """
    first = not _REASONS
    note_failure(reason)
    request_stop()
    if first:
        for escalate in _ESCALATE:
            escalate()


def on_stop_for(escalate: Callable[[], None] | None) -> None:
    """Set (or clear, with None) what ``stop_for`` does after ending the input."""
    _ESCALATE.clear()
    if escalate is not None:
        _ESCALATE.append(escalate)


def failure() -> Exception | None:
    """The first reason recorded by ``note_failure`` or ``stop_for`` since the last ``reset``, else None."""
    return _REASONS[0] if _REASONS else None


def reset() -> None:
    """Forget a stop request and its reasons (a new run in the same process)."""
    _STOP.clear()
    _REASONS.clear()


# How long a single step (a source batch, a shard batch, a sink write) may still run after a stop was requested
# before the dataflow counts as hung: a replay's shard can take many seconds to release what a slow partition held.
BUSY_GRACE_S = 600.0


def step_running(idle_code: CodeType) -> bool:
    """Whether some Bytewax worker is inside a Python step (a source, shard or sink call) right now.

    Worker threads are started by Bytewax (not ``threading``) and have Python frames only inside a step; with one
    worker the steps run on the main thread, called by Bytewax from ``idle_code`` (the function that runs the
    dataflow): a frame called from there in another file is a step (one in its own file, e.g. the set-up, is not).
    """
    ours = {t.ident for t in threading.enumerate() if type(t).__name__ != "_DummyThread"}
    main = threading.main_thread().ident
    for ident, frame in sys._current_frames().items():  # noqa: SLF001 - the one way to see another thread's frame
        if ident != main:
            if ident not in ours:
                return True
            continue
        f: FrameType | None = frame
        while f is not None and f.f_back is not None:
            if f.f_back.f_code is idle_code:
                if f.f_code.co_filename != idle_code.co_filename:
                    return True
                break
            f = f.f_back
    return False


def wait_for_end(ended: Callable[[], bool], idle_code: CodeType, idle_s: float, busy_s: float = BUSY_GRACE_S,
                 poll_s: float = 0.05) -> bool:
    """After ``request_stop``: wait until ``ended()``; return False once the dataflow looks hung.

    Hung means no step has run for ``idle_s`` in a row (the input did not end), or ``busy_s`` have passed. A step
    that is still running is waited for: interrupting it made Bytewax panic ("Box<dyn Any>", a 60-line backtrace)
    when a signal landed during a long batch.
    """
    start = idle_since = time.monotonic()
    while not ended():
        now = time.monotonic()
        if step_running(idle_code):
            idle_since = now
        elif now - idle_since >= idle_s:
            return False
        if now - start >= busy_s:
            return False
        time.sleep(poll_s)
    return True


class _StoppablePartition(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any]) -> None:
        self._inner = inner
        self._due: datetime | None = None

    def next_batch(self) -> list[Any]:
        if _STOP.is_set():
            # A cluster handshake still goes out: stopped by a peer's difference before its first batch, this
            # partition's hello is what tells the peer to stop too.
            take_greeting = getattr(self._inner, "take_greeting", None)
            greeting = take_greeting() if take_greeting is not None else []
            if greeting:
                return list(greeting)
            raise StopIteration
        if self._due is not None and datetime.now(UTC) < self._due:
            return []  # woken early only to look at the flag: the input itself is not due yet
        return list(self._inner.next_batch())

    def next_awake(self) -> datetime | None:
        self._due = self._inner.next_awake()
        if self._due is None:
            return None
        return min(self._due, datetime.now(UTC) + POLL)

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class StoppableSource(FixedPartitionedSource[Any, Any]):
    """A fixed-partition source whose partitions end (``StopIteration``) once ``request_stop`` was called.

    Args:
        inner: The real source; its partition names, resume states and snapshots are passed through.
    """

    def __init__(self, inner: FixedPartitionedSource[Any, Any]) -> None:
        self.inner = inner

    def list_parts(self) -> list[str]:
        """The inner source's partitions."""
        return self.inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _StoppablePartition:
        """Build the inner partition and wrap it."""
        return _StoppablePartition(self.inner.build_part(step_id, for_part, resume_state))


def stoppable(source: Source[Any]) -> Source[Any]:
    """Wrap a fixed-partition source so that a requested stop ends it; other sources are returned as they are."""
    return StoppableSource(source) if isinstance(source, FixedPartitionedSource) else source


_TASKS = Path("/proc/self/task")


def _worker_threads() -> int:
    """Count this process's Bytewax worker threads (Timely names them ``timely:work-N``); 0 where unknown."""
    count = 0
    try:
        for task in _TASKS.iterdir():
            try:
                if (task / "comm").read_text().startswith("timely:work"):
                    count += 1
            except OSError:
                continue  # the thread ended while listing
    except OSError:
        return 0
    return count


def await_workers_stopped(timeout_s: float) -> bool:
    """Wait until the worker threads have left the dataflow; return whether they have.

    On a signal Bytewax returns as soon as it has told the workers to stop; a worker may still be finishing
    the step it was in, and rows it writes after ``flush_all`` would be lost.
    """
    deadline = time.monotonic() + timeout_s
    while _worker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    return not _worker_threads()
