"""The look-ups' per-customer recent history, noted from each shard batch's outputs.

``flows.recent`` keeps, per customer, the last moments with their decisions, the latest hand-off context and the
entry points and channels of its last attempts, noted for every batch (journey step rows come at about 0.4 per
event). Noting is here, compiled with the rest of state/, because it runs on the worker's thread: interpreted, it
cost about a seventh of the hot path's instructions.

A customer's entry is a list ``[moments, context, attempts]`` (places ``MOMENTS``, ``CONTEXT``, ``ATTEMPTS``;
``flows.recent`` describes them and reads them for look-ups).
"""

from __future__ import annotations

import sys
import zlib
from typing import Any, Final

import orjson

from state.outputs import STEP_FIELDS, Outputs

DROPPED_BITS: Final = 1 << 23  # 1 MiB: one bit per hashed id of a customer dropped by the bound
_CID: Final = STEP_FIELDS.index("customer_id")
_JOURNEY: Final = STEP_FIELDS.index("journey")
_ATTEMPT: Final = STEP_FIELDS.index("attempt_id")
_ENTRY: Final = STEP_FIELDS.index("entry")
_CHANNEL: Final = STEP_FIELDS.index("channel")
MOMENTS: Final = 0  # places in a customer's entry
CONTEXT: Final = 1
ATTEMPTS: Final = 2
# What a look-up lists of a moment and of its contact decision.
MOMENT_FIELDS: Final = ("moment_id", "rule", "rule_version", "kind", "journey", "step", "urgency", "due_ts",
                        "detected_at", "evidence", "action")
DECISION_FIELDS: Final = ("status", "reason", "channel", "template", "control", "suppressed_channels", "send_ts")


def dropped_bit(cid: str) -> int:
    """The bit of the dropped-ids filter (and of the shed-ids filter) that stands for ``cid``."""
    return zlib.crc32(cid.encode("utf-8", "surrogatepass")) % DROPPED_BITS


def _set_bit(bits: bytearray, cid: str) -> None:
    h = dropped_bit(cid)
    bits[h >> 3] |= 1 << (h & 7)


def _has_bit(bits: bytearray, cid: str) -> bool:
    h = dropped_bit(cid)
    return bool(bits[h >> 3] & (1 << (h & 7)))


class Trail:
    """Customers' entries in order of last noting, bounded: a new customer beyond ``max_customers`` drops the least
    recently noted one (counted in ``dropped``, its id's bit set in ``dropped_bits``).

    Not thread-safe: ``flows.recent`` holds its lock around every call.
    """

    def __init__(self, max_customers: int) -> None:
        self.max_customers = max_customers
        self.dropped = 0
        # Which ids were dropped (a one-hash Bloom filter): an id never seen needs no ClickHouse query to be a 404.
        self.dropped_bits = bytearray(DROPPED_BITS // 8)
        # Which ids the state shed (``--max-customers``): a look-up of one seen again merges its stored tags and
        # journeys, which its new record lacks; a customer never shed costs no query (same one-hash filter).
        self.shed_bits = bytearray(DROPPED_BITS // 8)
        # In order of last noting (re-inserted when noted): a dict is half the size of an OrderedDict.
        self.customers: dict[str, list[Any]] = {}

    def entry(self, cid: str) -> list[Any]:
        """Return ``cid``'s entry, made the most recently noted (a new one may drop the least recently noted)."""
        customers = self.customers
        e = customers.pop(cid, None)
        if e is None:
            if len(customers) >= self.max_customers:
                oldest = next(iter(customers))
                del customers[oldest]
                _set_bit(self.dropped_bits, oldest)
                self.dropped += 1
            e = [(), None, ()]
        customers[cid] = e
        return e

    def maybe_dropped(self, cid: str) -> bool:
        """Whether the bound may have dropped the customer (False: it never was here, or still is)."""
        return _has_bit(self.dropped_bits, cid)

    def note_shed(self, ids: list[str]) -> None:
        """Note the ids a shard batch shed."""
        for cid in ids:
            _set_bit(self.shed_bits, cid)

    def maybe_shed(self, cid: str) -> bool:
        """Whether the state may have shed the customer (False: it never did)."""
        return _has_bit(self.shed_bits, cid)

    def note(self, out: Outputs, max_moments: int, max_attempts: int) -> None:
        """Note a shard batch's journey steps, moments (with their decisions) and hand-off contexts."""
        if out.step_rows:
            self.note_steps(out.step_rows, max_attempts)
        if out.moments:
            # A moment's decision is made in the batch that fires it (state.firing.decide).
            decisions = {a["moment_id"]: a for a in out.actions}
            for m in out.moments:
                mid = m["moment_id"]
                rec = {k: m[k] for k in MOMENT_FIELDS}
                a = decisions.get(mid)
                rec["decision"] = {k: a[k] for k in DECISION_FIELDS} if a is not None else None
                moment = (m["due_ts"], mid, orjson.dumps(rec))
                e = self.entry(m["customer_id"])
                kept: tuple[Any, ...] = e[MOMENTS]
                if any(k[1] == mid for k in kept):
                    continue  # a replayed batch fires the same moment id again
                n = len(kept)
                e[MOMENTS] = (*kept[n - max_moments + 1:], moment) if n >= max_moments else (*kept, moment)
        for c in out.context:
            ctx = (c["contact_ts"], c["moment_id"], orjson.dumps(c))
            e = self.entry(c["customer_id"])
            old = e[CONTEXT]
            if old is None or ctx[:2] >= old[:2]:
                e[CONTEXT] = ctx

    def note_steps(self, rows: list[tuple[Any, ...]], max_attempts: int) -> None:
        """Note each step row's entry point and channel under its customer's attempt, the customer's last
        ``max_attempts`` attempts kept (first noted first)."""
        intern = sys.intern  # journeys, entry points and channels: a few names, shared by every customer
        for s in rows:
            e = self.entry(s[_CID])
            journey, attempt, en, ch = s[_JOURNEY], s[_ATTEMPT], s[_ENTRY], s[_CHANNEL]
            atts: tuple[Any, ...] = e[ATTEMPTS]
            n = len(atts)
            i = n - 1
            while i >= 0:  # (journey, attempt) is in at most one place
                t = atts[i]
                if t[1] == attempt and t[0] == journey:
                    break
                i -= 1
            if i >= 0:
                old = atts[i]
                if ch in old[3] and (not en or en in old[2]):
                    continue  # most rows: another step of a known attempt in a known channel
            else:
                old = (intern(journey), attempt, (), ())
            entries = old[2] if not en or en in old[2] else (*old[2], intern(en))
            channels = old[3] if ch in old[3] else (*old[3], intern(ch))
            new = (old[0], attempt, entries, channels)
            if i >= 0:
                e[ATTEMPTS] = atts[:i] + (new,) + atts[i + 1:]
            elif n >= max_attempts:
                e[ATTEMPTS] = (*atts[n - max_attempts + 1:], new)
            else:
                e[ATTEMPTS] = (*atts, new)
