"""The shard gate (flows.shard_gate): a look-up waiting for the worker is run by it after its next event."""

from __future__ import annotations

import threading

from flows.shard_gate import ShardGate
from state.batches import RawBatch
from state.shard import Shard, process
from tests.helpers import PACK, ev, raws, wait_until


def _waiting_read(gate: ShardGate, shard: Shard) -> tuple[threading.Thread, list[str]]:
    """A reader thread whose read notes the thread that ran it."""
    ran_on: list[str] = []

    def read() -> None:
        gate.read(shard, lambda s: ran_on.append(threading.current_thread().name))

    t = threading.Thread(target=read, name="reader")
    t.start()
    wait_until(lambda: shard.on_boundary is not None, 30, "the read to wait at the gate")
    return t, ran_on


def test_a_read_waiting_while_events_are_applied_is_run_after_the_next_one() -> None:
    shard = Shard(PACK, lateness_ms=0)
    gate = ShardGate()
    assert shard.on_boundary is None  # nobody waiting: no call per event
    with gate.lock:  # the worker's batch
        reader, ran_on = _waiting_read(gate, shard)
        # Two: an event is released once a later one moves the watermark past it.
        process(shard, [RawBatch("file:t", 0, raws([ev("e1", 1, "view"), ev("e2", 2, "view")]), [0, 1])])
        assert ran_on == [threading.current_thread().name]  # by the worker, before the batch ended
        assert shard.on_boundary is None  # the next events cost one test again
    reader.join(30)
