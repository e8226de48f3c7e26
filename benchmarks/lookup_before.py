"""The look-up path's costs as they were before they were cut (issue 17), for same-run comparisons.

``bench_lookup --before STEPS`` runs a worker with ``install(STEPS)`` first; ``bench_lookup_cpu`` counts
instructions with and without it. Steps:

- ``parse``: request headers parsed by http.server (``email.feedparser``), not ``flows.http_request``;
- ``gate``: every applied event wrapped in a Python closure that checks for waiting reads, not ``on_boundary``;
- ``gc``: the cyclic GC's young generation at 10,000 objects (``gc.set_threshold(10_000, 500, 1000)``), not
  ``flows.runner.GC_THRESHOLDS`` (tried in session 11: shorter pauses, a slower replay);
- ``timeout``: the HTTP handlers' sockets with a 10 s timeout (CPython then polls before each read and write: two
  GIL hand-overs each instead of one), as before session 12;
- ``freeze``: the heap not frozen after each batch (``flows.heap``): the young generation's collections walk the
  customer state, as before session 12;
- ``letgo``: compiled loops not calling ``connectors.let_go`` (a thread wanting the GIL waits for a whole source
  batch's split or shard batch), as before session 13.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any, TypeVar

from state.events import Event
from state.shard import Shard

T = TypeVar("T")
STEPS = ("parse", "gate", "gc", "freeze", "timeout", "letgo")


def _attach(gate: Any, shard: Shard) -> None:
    inner: Callable[[Event], None] = shard._apply
    waiting = gate._waiting
    checkpoint = gate.checkpoint

    def apply(ev: Event) -> None:
        inner(ev)
        if waiting:
            checkpoint(shard)

    shard._apply = apply


def _read(gate: Any, shard: Shard, fn: Callable[[Shard], T]) -> T:
    from flows import shard_gate

    if gate.lock.acquire(blocking=False):
        try:
            return fn(shard)
        finally:
            gate.lock.release()
    req: shard_gate._Read[T] = shard_gate._Read(fn)
    with gate._mutex:
        gate._waiting.append(req)
    while not req.done.wait(0.001):  # polling the lock every millisecond
        if not gate.lock.acquire(blocking=False):
            continue
        try:
            with gate._mutex:
                mine = any(r is req for r in gate._waiting)
                if mine:
                    gate._waiting.remove(req)
            if mine:
                return fn(shard)
        finally:
            gate.lock.release()
    if req.error is not None:
        raise req.error
    return req.value  # type: ignore[return-value]


def _after_logic_init(then: Callable[[Any], None]) -> None:
    """Run ``then(logic)`` after each ``flows.operators.ShardLogic`` is built (its shard and gate exist)."""
    from flows import operators

    init = operators.ShardLogic.__init__

    def logic_init(self: Any, *a: Any, **k: Any) -> None:
        init(self, *a, **k)
        then(self)

    operators.ShardLogic.__init__ = logic_init  # type: ignore[method-assign]


def install(steps: Iterable[str]) -> None:
    """Put back the named costs in this process (before the dataflow is built)."""
    steps = set(steps)
    if "gc" in steps:
        from flows import runner

        runner.GC_THRESHOLDS = (10_000, 500, 1000)  # type: ignore[misc]  # the thresholds tried
    if "freeze" in steps:
        from flows.heap import Heap

        Heap.settle = lambda self: None  # type: ignore[method-assign]
    if "letgo" in steps:
        from connectors import replay_source

        replay_source.let_go = None  # type: ignore[attr-defined, assignment]
        _after_logic_init(lambda logic: setattr(logic.shard, "let_go", None))
    if "timeout" in steps:
        from flows import http_endpoint

        http_endpoint._Handler.timeout = 10.0  # type: ignore[assignment]
    if "parse" in steps:
        from flows import http_endpoint

        http_endpoint._Handler.parse_request = BaseHTTPRequestHandler.parse_request  # type: ignore[method-assign]
    if "gate" in steps:
        from flows import shard_gate

        _after_logic_init(lambda logic: _attach(logic._gate, logic.shard))
        shard_gate.ShardGate.read = _read  # type: ignore[method-assign, assignment]
