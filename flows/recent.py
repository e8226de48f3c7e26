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
"""

from __future__ import annotations

import os
import sys
import threading
import zlib
from typing import Any, Final

import orjson

from flows.config import ConfigError
from state.outputs import STEP_FIELDS, Outputs

MAX_MOMENTS: Final = 20  # moments kept (and listed) per customer, newest first
MAX_ATTEMPTS: Final = 4  # attempts per customer whose entry points and channels are kept
DEFAULT_CUSTOMERS: Final = 100_000  # per process; CX_LOOKUP_CUSTOMERS changes it
CUSTOMERS_ENV: Final = "CX_LOOKUP_CUSTOMERS"
_MOMENT: Final = ("moment_id", "rule", "rule_version", "kind", "journey", "step", "urgency", "due_ts", "detected_at",
                  "evidence", "action")
_DROPPED_BITS: Final = 1 << 23  # 1 MiB: one bit per hashed id of a customer dropped by the bound
_CID, _JOURNEY, _ATTEMPT, _ENTRY, _CHANNEL = (STEP_FIELDS.index(f) for f in (
    "customer_id", "journey", "attempt_id", "entry", "channel"))
_DECISION: Final = ("status", "reason", "channel", "template", "control", "suppressed_channels", "send_ts")


# One customer's entry, a list (smaller than an object, and than a dict): [moments, context, attempts].
#   moments: tuple of (due_ts, moment_id, json), oldest first, at most MAX_MOMENTS; () when none
#   context: (contact_ts, moment_id, json) of the latest hand-off context, or None
#   attempts: tuple of (journey, attempt_id, entries, channels) (tuples, first use first), at most MAX_ATTEMPTS
_MOMENTS, _CONTEXT, _ATTEMPTS = 0, 1, 2


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
        # In order of last noting (re-inserted when noted): a dict is half the size of an OrderedDict.
        self._customers: dict[str, list[Any]] = {}

    def clear(self, enabled: bool = False, max_customers: int | None = None) -> None:
        """Forget everything (a new run in the same process); ``enabled``: note outputs from now on."""
        with self._lock:
            self._customers = {}
            self.dropped = 0
            self._dropped_bits = bytearray(_DROPPED_BITS // 8)
            self.enabled = enabled
            if max_customers is not None:
                self.max_customers = max_customers

    def __len__(self) -> int:
        return len(self._customers)

    def _entry(self, cid: str) -> list[Any]:
        d = self._customers
        e = d.pop(cid, None)
        if e is None:
            e = [(), None, ()]
            if len(d) >= self.max_customers:
                oldest = next(iter(d))
                del d[oldest]
                h = _bit(oldest)
                self._dropped_bits[h >> 3] |= 1 << (h & 7)
                self.dropped += 1
        d[cid] = e
        return e

    def note(self, out: Outputs) -> None:
        """Remember what a shard batch produced: its moments with their decisions, contexts and journey steps."""
        if not self.enabled or not (out.moments or out.context or out.step_rows):
            return
        # A moment's decision is made in the batch that fires it (state.firing.decide).
        decisions = {a["moment_id"]: a for a in out.actions} if out.actions else {}
        encoded = []
        for m in out.moments:
            a = decisions.get(m["moment_id"])
            rec = {k: m[k] for k in _MOMENT}
            rec["decision"] = {k: a[k] for k in _DECISION} if a is not None else None
            encoded.append((m["customer_id"], (m["due_ts"], m["moment_id"], orjson.dumps(rec))))
        contexts = [(c["customer_id"], (c["contact_ts"], c["moment_id"], orjson.dumps(c))) for c in out.context]
        intern = sys.intern  # journeys, entry points and channels: a few names, shared by every customer
        with self._lock:  # encoded above: the HTTP threads wait only for the inserts
            entry = self._entry
            for s in out.step_rows:  # the tuples as the shard made them: ``Outputs.steps`` would build dicts
                e = entry(s[_CID])
                journey, attempt, en, ch = s[_JOURNEY], s[_ATTEMPT], s[_ENTRY], s[_CHANNEL]
                atts = e[_ATTEMPTS]
                i = next((i for i, t in enumerate(atts) if t[1] == attempt and t[0] == journey), -1)
                old = atts[i] if i >= 0 else (intern(journey), attempt, (), ())
                entries = old[2] if not en or en in old[2] else (*old[2], intern(en))
                channels = old[3] if ch in old[3] else (*old[3], intern(ch))
                new = (old[0], attempt, entries, channels)
                e[_ATTEMPTS] = (atts[:i] + (new,) + atts[i + 1:] if i >= 0
                                else (*atts[len(atts) - MAX_ATTEMPTS + 1:], new) if len(atts) >= MAX_ATTEMPTS
                                else (*atts, new))
            for cid, moment in encoded:
                e = entry(cid)
                kept = e[_MOMENTS]
                if not any(m[1] == moment[1] for m in kept):  # a replayed batch fires the same moment id again
                    e[_MOMENTS] = (*kept[len(kept) - MAX_MOMENTS + 1:], moment) if len(kept) >= MAX_MOMENTS \
                        else (*kept, moment)
            for cid, ctx in contexts:
                e = entry(cid)
                if e[_CONTEXT] is None or ctx[:2] >= e[_CONTEXT][:2]:
                    e[_CONTEXT] = ctx

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
            moments, context, attempts = e[_MOMENTS], e[_CONTEXT], e[_ATTEMPTS]  # tuples: never changed in place
        return {"moments": [orjson.Fragment(m[2]) for m in sorted(moments, key=lambda m: (-m[0], m[1]))],
                "context": orjson.Fragment(context[2]) if context is not None else None,
                "attempts": {(t[0], t[1]): (t[2], t[3]) for t in attempts}}


def _bit(cid: str) -> int:
    return zlib.crc32(cid.encode("utf-8", "surrogatepass")) % _DROPPED_BITS


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
