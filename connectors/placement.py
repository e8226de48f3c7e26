"""Which cluster process Bytewax runs a shard on, so replay input can be read where its shards live.

Bytewax 0.21's ``stateful_batch`` sends key ``k`` to worker ``hash(k) % workers`` (src/operators.rs,
src/timely.rs), where ``hash`` is Rust's ``DefaultHasher`` (SipHash-1-3 with zero keys) over the key
string as ``str::hash`` feeds it: its UTF-8 bytes and a 0xFF terminator. Timely numbers workers process
by process, so process ``p`` of a cluster with ``w`` workers each runs workers ``p*w .. p*w+w-1``.
A wrong prediction (another Bytewax) only costs speed: the replay sources stay correct with any
placement, since each shard is still fed by exactly one source partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from state.batches import Hello

_M64 = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def _sip_round(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & _M64
    v1 = _rotl(v1, 13) ^ v0
    v0 = _rotl(v0, 32)
    v2 = (v2 + v3) & _M64
    v3 = _rotl(v3, 16) ^ v2
    v0 = (v0 + v3) & _M64
    v3 = _rotl(v3, 21) ^ v0
    v2 = (v2 + v1) & _M64
    v1 = _rotl(v1, 17) ^ v2
    v2 = _rotl(v2, 32)
    return v0, v1, v2, v3


def siphash13(data: bytes) -> int:
    """Return SipHash-1-3 of ``data`` with a zero key (Rust's ``DefaultHasher::new()``).

    Args:
        data: The bytes hashed.

    Returns:
        The 64-bit hash.
    """
    v0, v1, v2, v3 = 0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573
    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = _sip_round(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


@cache
def worker_of_key(key: str, workers: int) -> int:
    """Return the cluster-wide index of the worker Bytewax 0.21 runs a stateful key on.

    Args:
        key: The key of a ``stateful_batch`` item.
        workers: Workers in the whole cluster.

    Returns:
        An int in ``range(workers)``.
    """
    return siphash13(key.encode("utf-8") + b"\xff") % workers


@dataclass(frozen=True, slots=True)
class Placement:
    """This process's place in the cluster.

    Attributes:
        process: This process's index.
        processes: Processes in the cluster.
        workers_per_process: Worker threads per process (the same in every process).
    """

    process: int = 0
    processes: int = 1
    workers_per_process: int = 1

    def process_of(self, key: str) -> int:
        """Return the process whose worker runs the stateful key ``key``."""
        return worker_of_key(key, self.processes * self.workers_per_process) // self.workers_per_process

    def own_shards(self, shards: int, process: int | None = None) -> frozenset[int]:
        """Return the shards (keys ``"0"`` … ``str(shards - 1)``) run by ``process`` (default: this one)."""
        p = self.process if process is None else process
        return frozenset(s for s in range(shards) if self.process_of(str(s)) == p)


def hello_items(hello: Hello | None, placement: Placement | None, shards: int) -> list[tuple[str, Hello]]:
    """Return the handshake items a partition of this process sends: ``hello`` to one shard of each other process.

    The keys are those this process believes the others run: with the same ``-w`` Bytewax places a key by its
    name alone, so the hello reaches the other process whatever its ``--shards``. A process that runs no shard
    (fewer shards than workers) has no lines to lose and gets none.
    """
    if hello is None or placement is None or placement.processes == 1:
        return []
    items: list[tuple[str, Hello]] = []
    for p in range(placement.processes):
        if p != placement.process:
            theirs = placement.own_shards(shards, p)
            if theirs:
                items.append((str(min(theirs)), hello))
    return items
