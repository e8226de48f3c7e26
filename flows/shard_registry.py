"""The shards a process runs, for look-ups: a registry of them with their gates, and a customer's live view.

Each ``ShardLogic`` registers its shard with a gate (``SHARDS``, ``flows.shard_gate``); ``flows.serving`` reads a
customer's live state through it (see that module for how look-ups are answered).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import Any, Protocol

from flows.shard_gate import ShardGate
from state.detectors.channel_hop import ChannelHop
from state.record import TAG_FIELDS, CustomerState
from state.rule_model import STAGES
from state.rules import RulePack
from state.shard import Shard


class ShardOwner(Protocol):
    """What holds a shard for the registry (``flows.operators.ShardLogic``)."""

    shard: Shard


class ShardRegistry:
    """The shards this process runs, each with the gate its worker holds while applying a batch.

    Shards are held through their owners (the Bytewax operator logic), by weak reference: a dataflow that ended
    (tests run many in one process) takes its customers with it. Not the shard itself: a compiled (mypyc) class
    cannot be referenced weakly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._shards: list[tuple[weakref.ref[ShardOwner], ShardGate]] = []

    def add(self, owner: ShardOwner, gate: ShardGate | threading.Lock) -> None:
        """Register a shard, by the object that holds it (its ``shard``), and the gate (or bare lock) guarding it."""
        g = gate if isinstance(gate, ShardGate) else ShardGate(gate)
        with self._lock:
            self._shards = [(r, lk) for r, lk in self._shards if r() is not None]
            self._shards.append((weakref.ref(owner), g))

    def clear(self) -> None:
        """Forget every shard (a new dataflow in the same process)."""
        with self._lock:
            self._shards = []

    def __iter__(self) -> Iterator[tuple[Shard, ShardGate]]:
        with self._lock:
            entries = list(self._shards)
        return iter([(owner.shard, g) for r, g in entries if (owner := r()) is not None])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def customer(self, cid: str) -> dict[str, Any] | None:
        """Return the live view of a customer (``customer_view``), or None when no shard here holds it.

        ``"shed": True`` is added when the batch being applied shed the customer's earlier record (its outputs,
        which note it, are not taken yet).

        The shard holding it is found without its lock (a dict's ``in`` is atomic under the GIL); the view is read
        between two of its worker's events (``ShardGate.read``), so a look-up waits for one event, not a batch.
        """
        def view(shard: Shard) -> dict[str, Any] | None:
            c = shard.customers.get(cid)
            if c is None:
                return None
            found = customer_view(shard, c)
            if cid in shard.ctx.out.shed_ids:
                # Read mid-batch: the batch shed the customer's earlier record, not yet noted (flows.recent).
                found["shed"] = True
            return found

        for shard, gate in self:
            if cid in shard.customers:
                found = gate.read(shard, view)
                if found is not None:
                    return found
        return None

    def pack(self) -> RulePack | None:
        """The rule pack the shards run with (None before the first shard is built)."""
        for shard, _ in self:
            return shard.pack
        return None


SHARDS = ShardRegistry()


def customer_view(shard: Shard, c: CustomerState) -> dict[str, Any]:
    """Return what the live state knows of a customer: journeys, held tags, recent sends.

    Call it holding the shard's lock: it reads the attempts and the packed record as they are.

    Args:
        shard: The shard holding the customer.
        c: The customer.

    Returns:
        ``{"journeys": [...], "tags": [...], "sends": [...], "last_seen": ms}`` (JSON-ready).
    """
    ctx = shard.ctx
    journeys = []
    for jidx, a in enumerate(c.attempts):
        if a is None:
            continue
        jp = ctx.journey_defs[jidx]
        hop = jp.by_kind.get("channel_hop")
        channels: list[str] = []
        if isinstance(hop, ChannelHop) and not a.ended:
            recs = hop.records(a)
            for _, ch in sorted((recs[i], recs[i + 1]) for i in range(0, len(recs), 3)):
                if ch not in channels:
                    channels.append(ch)
        journeys.append({
            "journey": jp.id,
            "attempt": a.attempt_id,
            "stage": STAGES[a.stage],
            "status": a.status,
            "step": a.last_step or "",
            "entry": "",
            "channels": channels,
            "updated_at": a.last_ts,
        })
    tags = []
    held = c.tags or ()
    for i in range(0, len(held), TAG_FIELDS):
        # The key holds the rule's index, and with a directory of versions the version it fired under: its TTL.
        r = shard.ctx.tag_rule(held[i], held[i + 2])
        tags.append({"tag": r.name, "journey": r.journey, "moment_id": held[i + 1], "opened_ts": held[i + 2],
                     "state": "actioned" if held[i + 3] else "open", "expires_at": held[i + 2] + r.ttl_ms})
    contact = c.contact
    sends = [{"ts": t, "channel": ch} for t, ch in contact.send_records()] if contact is not None else []
    return {"journeys": journeys, "tags": tags, "sends": sends, "last_seen": c.last_event}
