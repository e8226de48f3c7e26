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

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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
