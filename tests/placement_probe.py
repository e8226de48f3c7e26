"""Find out on which worker Bytewax runs each shard key, for tests of ``connectors.placement``.

Run in-process with ``probe(workers)``, or as one process of a cluster with
``python -m tests.placement_probe PROCESS_ID ADDRESSES WORKERS OUT_JSON``.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import DynamicSource, StatelessSourcePartition
from bytewax.run import cli_main

KEYS = [str(s) for s in range(64)]

# Worker threads by identity: a source partition is built and polled on its worker's thread.
_THREAD_WORKER: dict[int, int] = {}


class _Part(StatelessSourcePartition[tuple[str, int]]):
    def __init__(self, worker: int) -> None:
        self._worker = worker
        self._sent = False
        _THREAD_WORKER[threading.get_ident()] = worker

    def next_batch(self) -> list[tuple[str, int]]:
        if self._sent:
            raise StopIteration
        self._sent = True
        return [(k, self._worker) for k in KEYS] if self._worker == 0 else []


class _KeysFromWorkerZero(DynamicSource[tuple[str, int]]):
    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Part:
        return _Part(worker_index)


def _flow(seen: dict[str, int]) -> Dataflow:
    flow = Dataflow("placement_probe")
    keys = op.input("keys", flow, _KeysFromWorkerZero())
    where = op.stateful_map("where", keys, lambda st, _v: (st, _THREAD_WORKER[threading.get_ident()]))
    op.inspect("record", where, lambda _sid, kv: seen.__setitem__(kv[0], kv[1]))
    return flow


def probe(workers: int, process_id: int | None = None, addresses: list[str] | None = None) -> dict[str, int]:
    """Run the probe; return the worker index each key ran on in this process."""
    seen: dict[str, int] = {}
    cli_main(_flow(seen), workers_per_process=workers, process_id=process_id, addresses=addresses)
    return seen


if __name__ == "__main__":
    pid, addrs, w, out = int(sys.argv[1]), sys.argv[2].split(";"), int(sys.argv[3]), Path(sys.argv[4])
    out.write_bytes(orjson.dumps(probe(w, pid, addrs)))
