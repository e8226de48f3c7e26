"""Runs generic rules through the production pipeline (``state.shard.process``), in the reference's contract.

``run(pack, events)`` loads the pack with the production loader, feeds the events to a shard in one batch (with
a lateness that holds all of them, so the shard orders them itself) and ends the input as a replay does; the
moments of the pack's generic rules come back as sorted (customer_id, rule, due_ts, anchor_event_id, evidence).
The anchor is recovered from the moment id (the evidence event whose id it derives from).

Duplicates are dropped here, first in input order (DESIGN.md §8): the shard drops them when it applies events,
after its reorder buffer, so of two copies with different ts it keeps the earlier ts. That is the input code's
contract (state/shard.py), not the rules', and is left to it. When a dropped copy was the input's latest line, an
event of its time (another customer, no rule's journey) keeps the end of input where production has it.
"""

from __future__ import annotations

from typing import Any

from connectors.simulator.generic_reference import ts_ms
from state.moments import moment_id
from state.rules import rule_pack_from_dict
from tests.helpers import run as run_shard

Moment = tuple[str, str, int, str, tuple[str, ...]]
# Large enough to hold any test input in the reorder buffer: the shard, not the feeder, puts it in order.
_LATENESS_MS = 10 * 365 * 86_400_000
_END = "zz-end-of-input"


def _anchor(m: dict[str, Any]) -> str:
    for eid in reversed(m["evidence"]):
        if moment_id(m["customer_id"], m["rule"], eid) == m["moment_id"]:
            return str(eid)
    raise AssertionError(f"moment {m['moment_id']} of {m['rule']}: no evidence event gives its id")


def run(pack: dict[str, Any], events: list[dict[str, Any]]) -> list[Moment]:
    """The generic rules' moments of ``pack`` on ``events`` through the production shard."""
    rp = rule_pack_from_dict(pack, "<pack>")
    generic = {r.name for r in rp.rules if r.generic is not None}
    kept: dict[tuple[str, str], dict[str, Any]] = {}
    for e in events:
        kept.setdefault((e["customer_id"], e["event_id"]), e)
    feed = list(kept.values())
    end = max((ts_ms(e["ts"]) for e in events), default=None)
    if end is not None and end > max(ts_ms(e["ts"]) for e in feed):
        # A dropped copy was the input's latest line: in production its time still moves the end of input (as the
        # reference's end_ts counts every line), so one event of a customer and journey no rule has stands for it.
        feed.append({"event_id": "end", "customer_id": _END, "ts": end, "channel": "app", "type": "view",
                     "journey": _END})
    out = run_shard(feed, pack=rp, lateness_ms=_LATENESS_MS)
    return sorted((m["customer_id"], m["rule"], m["due_ts"], _anchor(m), tuple(m["evidence"]))
                  for m in out.moments if m["rule"] in generic)
