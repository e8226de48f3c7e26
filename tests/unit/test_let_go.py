"""Compiled loops let other threads run (connectors.let_go): a shard's batch and a source's split of lines call
``let_go`` every few hundred events, so a thread that wants the GIL (a look-up, a scrape) gets it mid-batch."""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

import state
from connectors.let_go import let_go
from state.batches import RawBatch, Tick
from state.let_go import LET_GO_EVERY, LetGo
from state.outputs import Outputs
from state.routing import LET_GO_LINES, split_lines
from state.shard import Shard, process
from tests.helpers import PACK, ev, raws

N = 20_000


def _lines(n: int) -> list[bytes]:
    # Many customers, in order: every event is parsed, held and applied within the batch.
    return raws(ev(f"e{i}", 1_000 + i * 10, "view", customer=f"c{i % 997}") for i in range(n))


def _feed(shard: Shard, lines: list[bytes]) -> Outputs:
    return process(shard, [RawBatch("file:t", 0, lines, list(range(len(lines)))), Tick(10**12, final=True)])


def _records(out: Outputs) -> list[tuple[str, list[object]]]:
    """The batch's records without their wall-clock time (``detected_at``)."""
    return [(kind, [{k: v for k, v in r.items() if k != "detected_at"} if isinstance(r, dict) else r for r in rows])
            for kind, rows in out.records()]


def test_a_shard_calls_let_go_every_few_hundred_events_parsed_or_applied() -> None:
    calls: list[int] = []
    shard = Shard(PACK, lateness_ms=0)
    shard.let_go = LetGo(lambda: calls.append(1))
    _feed(shard, _lines(N))
    # Each event is counted when parsed and again when applied, each wake-up handled too.
    assert len(calls) >= (2 * N) // LET_GO_EVERY


def test_wake_ups_count_too() -> None:
    calls: list[int] = []
    shard = Shard(PACK, lateness_ms=0)
    lines = _lines(N)
    process(shard, [RawBatch("file:t", 0, lines, list(range(len(lines))))])
    shard.let_go = LetGo(lambda: calls.append(1))
    shard.advance(10**13)  # no event: every customer's wake-ups, up to its eviction
    assert not shard.customers  # 997 customers woke, at least once each (evicted)
    assert len(calls) >= 997 // LET_GO_EVERY


def test_let_go_changes_no_output() -> None:
    lines = _lines(3_000)
    plain, hooked = Shard(PACK, lateness_ms=0), Shard(PACK, lateness_ms=0)
    hooked.let_go = LetGo(let_go)
    assert _records(_feed(plain, lines)) == _records(_feed(hooked, lines))
    assert plain.snapshot() == hooked.snapshot()


def _split(lines: list[bytes], hook: Callable[[], None] | None) -> tuple[object, ...]:
    values: list[list[bytes]] = [[] for _ in range(4)]
    offsets: list[list[int]] = [[] for _ in range(4)]
    candidates: list[tuple[int, bytes]] = []
    behind: list[int] = []
    it: Iterator[bytes] = iter(lines)
    res = split_lines(it, len(lines) + 1, 4, [True] * 4, values, offsets, 0, 0, candidates, behind, None, hook)
    return res, values, offsets, candidates, behind


def test_blank_lines_count_towards_let_go_too() -> None:
    """A file with runs of blank lines held the GIL for all of them (an adversary's 200 ms per MiB)."""
    calls: list[int] = []
    lines = [b"\n"] * 5_000 + _lines(10)
    _split(lines, lambda: calls.append(1))
    assert len(calls) == len(lines) // LET_GO_LINES


def test_split_lines_calls_let_go_every_few_hundred_lines_and_splits_alike() -> None:
    calls: list[int] = []
    lines = _lines(5_000)
    assert _split(lines, lambda: calls.append(1)) == _split(lines, None)
    assert len(calls) == len(lines) // LET_GO_LINES


def _other_thread_during(call: Callable[[], object]) -> tuple[int, float, float]:
    """Run ``call`` while another thread asks for the GIL in a loop: (its turns during the call, the call's
    length, the longest stretch of the call without a turn)."""
    ran: list[float] = []
    stop = threading.Event()

    def other() -> None:
        while not stop.is_set():
            ran.append(time.perf_counter())
            time.sleep(0)  # lets go of the GIL, then asks for it back

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0001)
    t = threading.Thread(target=other, daemon=True)
    try:
        t.start()
        while not ran:
            time.sleep(0.001)
        # A collection of the test process's heap inside the call would hold the GIL too: not what is measured.
        gc.disable()
        start = time.perf_counter()
        call()
        end = time.perf_counter()
    finally:
        gc.enable()
        stop.set()
        t.join(10)
        sys.setswitchinterval(interval)
    inside = [x for x in ran if start < x < end]
    longest = max(b - a for a, b in zip([start, *inside], [*inside, end], strict=True))
    return len(inside), end - start, longest


@pytest.mark.skipif(not state.BUILD.compiled, reason=f"compiled loops only: {state.BUILD.line}")
def test_another_thread_runs_during_a_compiled_shard_batch() -> None:
    """Without ``let_go`` a compiled batch keeps the GIL from start to end: 2 turns, the longest stretch ≈ all."""
    lines = _lines(N)
    shard = Shard(PACK, lateness_ms=0)
    shard.let_go = LetGo(let_go)
    turns, length, longest = _other_thread_during(lambda: _feed(shard, lines))
    assert turns >= 20, (turns, length)
    assert longest < length / 2, (longest, length)


@pytest.mark.skipif(not state.BUILD.compiled, reason=f"compiled loops only: {state.BUILD.line}")
def test_another_thread_runs_during_a_compiled_split_of_lines() -> None:
    lines = _lines(N)
    turns, length, longest = _other_thread_during(lambda: _split(lines, let_go))
    assert turns >= 20, (turns, length)
    assert longest < length / 2, (longest, length)
