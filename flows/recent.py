"""What a customer look-up answers from the worker's memory (issue 17): per customer, the last moments with their
contact decisions, the latest hand-off context, and the entry points and channels of its recent attempts.

Fed from each shard batch's outputs (``flows.operators.ShardLogic``), the records the sinks write: a look-up of a
customer the worker holds then asks ClickHouse nothing (before: three queries, 9-21 ms each, queued behind the
sink's inserts). A side store rather than fields of state/'s per-customer record: the record's memory (issue 18)
and snapshots stay as they were, and only customers with steps, moments or contexts take room here.

Bounded two ways: at most ``MAX_MOMENTS`` moments and ``MAX_ATTEMPTS`` attempts per customer, and at most
``max_customers`` customers, the least recently noted dropped first (an LRU, not eviction with the state: the
store does not see the state evict, and a customer dropped here is still answered, from ClickHouse). Moments and
contexts are kept JSON-encoded: a third of the memory of the dicts, and a look-up splices the bytes into its
answer (``orjson.Fragment``) without encoding them again.
"""

from __future__ import annotations

import os
import threading
import zlib
from collections import OrderedDict, deque
from typing import Any, Final

import orjson

from state.outputs import Outputs

MAX_MOMENTS: Final = 20  # moments kept (and listed) per customer, newest first
MAX_ATTEMPTS: Final = 4  # attempts per customer whose entry points and channels are kept
DEFAULT_CUSTOMERS: Final = 200_000  # per process; CX_LOOKUP_CUSTOMERS changes it
CUSTOMERS_ENV: Final = "CX_LOOKUP_CUSTOMERS"
_MOMENT: Final = ("moment_id", "rule", "rule_version", "kind", "journey", "step", "urgency", "due_ts", "detected_at",
                  "evidence", "action")
_DROPPED_BITS: Final = 1 << 23  # 1 MiB: one bit per hashed id of a customer dropped by the bound
_DECISION: Final = ("status", "reason", "channel", "template", "control", "suppressed_channels", "send_ts")


class Remembered:
    """One customer's entry: moments as ``(due_ts, moment_id, json)``, the latest context, attempts' entries."""

    __slots__ = ("attempts", "context", "context_key", "moments")

    def __init__(self) -> None:
        self.moments: deque[tuple[int, str, bytes]] = deque(maxlen=MAX_MOMENTS)
        self.context: bytes | None = None
        self.context_key: tuple[int, str] = (-1, "")
        # (journey, attempt id) -> (entry points in order of first use, channels in order of first use)
        self.attempts: dict[tuple[str, str], tuple[list[str], list[str]]] = {}


class Recent:
    """The recent history of customers, by customer id, for look-ups (thread-safe: workers note, HTTP reads).

    Args:
        max_customers: Customers kept; the least recently noted is dropped beyond it.
    """

    def __init__(self, max_customers: int = DEFAULT_CUSTOMERS) -> None:
        self.max_customers = max_customers
        self.enabled = False  # a run that serves look-ups turns it on (flows.runner); off, note() does nothing
        self.dropped = 0  # customers dropped by the bound: their history is then read from ClickHouse
        # Which ids were dropped (a one-hash Bloom filter): an id never seen needs no ClickHouse query to be a 404.
        self._dropped_bits = bytearray(_DROPPED_BITS // 8)
        self._lock = threading.Lock()
        self._customers: OrderedDict[str, Remembered] = OrderedDict()

    def clear(self, enabled: bool = False, max_customers: int | None = None) -> None:
        """Forget everything (a new run in the same process); ``enabled``: note outputs from now on."""
        with self._lock:
            self._customers = OrderedDict()
            self.dropped = 0
            self._dropped_bits = bytearray(_DROPPED_BITS // 8)
            self.enabled = enabled
            if max_customers is not None:
                self.max_customers = max_customers

    def __len__(self) -> int:
        return len(self._customers)

    def _entry(self, cid: str) -> Remembered:
        d = self._customers
        e = d.get(cid)
        if e is None:
            e = d[cid] = Remembered()
            if len(d) > self.max_customers:
                h = _bit(d.popitem(last=False)[0])
                self._dropped_bits[h >> 3] |= 1 << (h & 7)
                self.dropped += 1
        else:
            d.move_to_end(cid)
        return e

    def note(self, out: Outputs) -> None:
        """Remember what a shard batch produced: its moments with their decisions, contexts and journey steps."""
        if not self.enabled or not (out.moments or out.context or out.steps):
            return
        # A moment's decision is made in the batch that fires it (state.firing.decide).
        decisions = {a["moment_id"]: a for a in out.actions} if out.actions else {}
        encoded = []
        for m in out.moments:
            a = decisions.get(m["moment_id"])
            rec = {k: m[k] for k in _MOMENT}
            rec["decision"] = {k: a[k] for k in _DECISION} if a is not None else None
            encoded.append((m["customer_id"], m["due_ts"], m["moment_id"], orjson.dumps(rec)))
        contexts = [(c["customer_id"], (c["contact_ts"], c["moment_id"]), orjson.dumps(c)) for c in out.context]
        with self._lock:  # encoded above: the HTTP threads wait only for the inserts
            entry = self._entry
            for s in out.steps:
                e = entry(s["customer_id"])
                key = (s["journey"], s["attempt_id"])
                att = e.attempts.get(key)
                if att is None:
                    if len(e.attempts) >= MAX_ATTEMPTS:
                        del e.attempts[next(iter(e.attempts))]
                    att = e.attempts[key] = ([], [])
                if s["entry"] and s["entry"] not in att[0]:
                    att[0].append(s["entry"])
                if s["channel"] not in att[1]:
                    att[1].append(s["channel"])
            for cid, due, mid, data in encoded:
                e = entry(cid)
                if not any(m[1] == mid for m in e.moments):  # a replayed batch fires the same moment id again
                    e.moments.append((due, mid, data))
            for cid, key2, data in contexts:
                e = entry(cid)
                if key2 >= e.context_key:
                    e.context, e.context_key = data, key2

    def maybe_dropped(self, cid: str) -> bool:
        """Whether the bound may have dropped the customer (False: it never was here, or still is)."""
        h = _bit(cid)
        return bool(self._dropped_bits[h >> 3] & (1 << (h & 7)))

    def get(self, cid: str) -> dict[str, Any] | None:
        """The customer's remembered parts, None if none are kept.

        Returns:
            ``{"moments": [Fragment, ...] newest first, "context": Fragment | None, "attempts": {(journey,
            attempt): (entries, channels)}}``; the fragments are encoded JSON (``orjson.Fragment``).
        """
        with self._lock:
            e = self._customers.get(cid)
            if e is None:
                return None
            moments = sorted(e.moments, key=lambda m: (-m[0], m[1]))
            context = e.context
            attempts = {k: (list(v[0]), list(v[1])) for k, v in e.attempts.items()}
        return {"moments": [orjson.Fragment(m[2]) for m in moments],
                "context": orjson.Fragment(context) if context is not None else None, "attempts": attempts}


def _bit(cid: str) -> int:
    return zlib.crc32(cid.encode("utf-8", "surrogatepass")) % _DROPPED_BITS


def max_customers_setting() -> int:
    """``CX_LOOKUP_CUSTOMERS`` (customers whose recent history a process keeps for look-ups), or the default.

    Raises:
        ValueError: naming the setting, when it is not a positive whole number.
    """
    raw = os.environ.get(CUSTOMERS_ENV, "").strip()
    if not raw:
        return DEFAULT_CUSTOMERS
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{CUSTOMERS_ENV}={raw!r}: must be a whole number of customers, at least 1")
    return int(raw)


RECENT = Recent()
