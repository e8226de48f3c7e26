"""What a customer look-up answers from the worker's memory (issue 17): per customer, the last moments with their
contact decisions, the latest hand-off context, and the entry points and channels of its recent attempts.

Fed from each shard batch's outputs (``flows.operators.ShardLogic``), the records the sinks write: a look-up of a
customer the worker holds then asks ClickHouse nothing (before: three queries, 9-21 ms each, queued behind the
sink's inserts). A side store rather than fields of state/'s per-customer record: the record's memory (issue 18)
and snapshots stay as they were, and only customers with steps, moments or contexts take room here.

Bounded two ways: at most ``MAX_MOMENTS`` moments and ``MAX_ATTEMPTS`` attempts per customer, and at most
``max_customers`` customers, the least recently noted dropped first (an LRU, not eviction with the state: the
store does not see the state evict, and a customer dropped here is still answered, from ClickHouse). Moments and
contexts are kept JSON-encoded (about 430 and 720 bytes): smaller than their dicts, and a look-up splices the
bytes into its answer (``orjson.Fragment``) without encoding them again. What it costs per customer is in
benchmarks/RESULTS.md ("Look-ups' recent history in memory").

It also keeps a one-hash filter (1 MiB) of the ids the shards shed (``--max-customers``, ``Outputs.shed_ids``): a
customer shed and seen again has a new state record that knows nothing of before, and only such a customer's
look-up asks ClickHouse for its open tags and earlier journeys (``flows.serving``).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Final

import orjson

from flows.config import ConfigError
from state.outputs import Outputs
from state.recent_trail import ATTEMPTS, CONTEXT, MOMENTS, Trail

MAX_MOMENTS: Final = 20  # moments kept (and listed) per customer, newest first
MAX_ATTEMPTS: Final = 4  # attempts per customer whose entry points and channels are kept
DEFAULT_CUSTOMERS: Final = 100_000  # per process; CX_LOOKUP_CUSTOMERS changes it
CUSTOMERS_ENV: Final = "CX_LOOKUP_CUSTOMERS"


# One customer's entry, a list (smaller than an object, and than a dict): [moments, context, attempts].
#   moments: tuple of (due_ts, moment_id, json), oldest first, at most MAX_MOMENTS; () when none
#   context: (contact_ts, moment_id, json) of the latest hand-off context, or None
#   attempts: tuple of (journey, attempt_id, entries, channels) (tuples, first use first), at most MAX_ATTEMPTS


class Recent:
    """The recent history of customers, by customer id, for look-ups (thread-safe: workers note, HTTP reads).

    Args:
        max_customers: Customers kept; the least recently noted is dropped beyond it.
    """

    def __init__(self, max_customers: int = DEFAULT_CUSTOMERS) -> None:
        self.enabled = False  # a run that serves look-ups turns it on (flows.runner); off, note() does nothing
        self._lock = threading.Lock()
        self._trail = Trail(max_customers)  # the customers' entries, bounded (state.recent_trail: compiled)

    @property
    def max_customers(self) -> int:
        """Customers kept; the least recently noted is dropped beyond it."""
        return self._trail.max_customers

    @property
    def dropped(self) -> int:
        """Customers dropped by the bound: their history is then read from ClickHouse."""
        return self._trail.dropped

    def clear(self, enabled: bool = False, max_customers: int | None = None) -> None:
        """Forget everything (a new run in the same process); ``enabled``: note outputs from now on."""
        with self._lock:
            self._trail = Trail(max_customers if max_customers is not None else self._trail.max_customers)
            self.enabled = enabled

    def __len__(self) -> int:
        return len(self._trail.customers)

    def note(self, out: Outputs) -> None:
        """Remember what a shard batch produced: its moments with their decisions, contexts and journey steps."""
        if not self.enabled or not (out.moments or out.context or out.step_rows):
            return
        with self._lock:  # the HTTP threads wait for one batch's noting at most
            self._trail.note(out, MAX_MOMENTS, MAX_ATTEMPTS)

    def maybe_dropped(self, cid: str) -> bool:
        """Whether the bound may have dropped the customer (False: it never was here, or still is)."""
        return self._trail.maybe_dropped(cid)

    def note_shed(self, out: Outputs) -> None:
        """Remember the customers a shard batch shed (``--max-customers``): call it holding the shard's lock, so
        that a look-up never sees a customer's new record before its shed is noted (``flows.operators``)."""
        if self.enabled and out.shed_ids:  # rare: most batches shed nobody
            with self._lock:
                self._trail.note_shed(out.shed_ids)

    def maybe_shed(self, cid: str) -> bool:
        """Whether the state may have shed the customer (``--max-customers``) in this run (False: it never did)."""
        return self._trail.maybe_shed(cid)

    def get(self, cid: str) -> dict[str, Any] | None:
        """The customer's remembered parts, None if none are kept.

        Returns:
            ``{"moments": [Fragment, ...] newest first, "context": Fragment | None, "attempts": {(journey,
            attempt): (entries, channels)}}``; the fragments are encoded JSON (``orjson.Fragment``).
        """
        with self._lock:
            e = self._trail.customers.get(cid)
            if e is None:
                return None
            moments, context, attempts = e[MOMENTS], e[CONTEXT], e[ATTEMPTS]  # tuples: never changed in place
        return {"moments": [orjson.Fragment(m[2]) for m in sorted(moments, key=lambda m: (-m[0], m[1]))],
                "context": orjson.Fragment(context[2]) if context is not None else None,
                "attempts": {(t[0], t[1]): (t[2], t[3]) for t in attempts}}


def max_customers_setting() -> int:
    """``CX_LOOKUP_CUSTOMERS`` (customers whose recent history a process keeps for look-ups), or the default.

    Raises:
        ConfigError: naming the setting, when it is not a positive whole number.
    """
    raw = os.environ.get(CUSTOMERS_ENV, "").strip()
    if not raw:
        return DEFAULT_CUSTOMERS
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise ConfigError(CUSTOMERS_ENV, f"must be a whole number of customers, at least 1, got {raw!r}")
    return int(raw)


RECENT = Recent()
