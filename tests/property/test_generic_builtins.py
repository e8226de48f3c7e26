"""The default pack's failed, stuck, maze, channel_hop and abandoned written as generic rules against the built-ins.

Both run on the same traffic: the built-ins through the production shard (``state.shard.process``), the generic
rules through the same shard (``tests/pipeline_driver.py``: the pack loaded by the production loader) and through
the standalone evaluator (``tests/generic_driver.py``); moments are compared as (customer, rule, due_ts, moment_id) and
evidence. The one difference: the built-ins do not let a ``complete`` event count for maze or channel_hop
(docs/detection.md: "no other detector sees it"), while DESIGN.md §8 has rules see the completion before the
attempt ends. Excluding ``complete`` in ``when`` makes the generic rules equal to the built-ins.
"""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

from hypothesis import given, settings

from connectors.simulator import simulate
from state.events import BASE_TYPES
from state.moments import moment_id
from tests.generic_driver import run as run_generic
from tests.helpers import run as run_builtin
from tests.pipeline_driver import run as run_pipeline
from tests.property.test_detection_properties import streams

PACK = tomllib.loads((Path(__file__).resolve().parents[1] / "fixtures" / "rulepacks" /
                      "default_as_generic.toml").read_text(encoding="utf-8"))
KINDS = {"failed", "stuck", "maze", "channel_hop", "abandoned"}
Key = tuple[str, str, int, str]


def _without_complete(pack: dict[str, Any]) -> dict[str, Any]:
    """The pack with every `when` limited to the types other than `complete`."""
    out = copy.deepcopy(pack)
    for m in out["moment"]:
        if "type" not in m.get("when", {}):
            m.setdefault("when", {})["type"] = sorted(BASE_TYPES - {"complete"})
    return out


EXACT = _without_complete(PACK)


def builtin(events: list[dict[str, Any]]) -> dict[Key, tuple[str, ...]]:
    """The built-in moments of those kinds: (customer, rule, due_ts, moment_id) -> evidence."""
    out = run_builtin(events).moments
    return {(m["customer_id"], m["rule"], m["due_ts"], m["moment_id"]): tuple(m["evidence"]) for m in out
            if m["rule"].split(".")[1] in KINDS}


def generic(pack: dict[str, Any], events: list[dict[str, Any]]) -> dict[Key, tuple[str, ...]]:
    """The generic rules' moments through the pipeline, keyed as ``builtin`` (the rule names are the built-ins');
    the standalone evaluator must give the same."""
    got = {(c, r, due, moment_id(c, r, anchor)): ev for c, r, due, anchor, ev in run_pipeline(pack, events)}
    alone = {(c, r, due, moment_id(c, r, anchor)): ev for c, r, due, anchor, ev in run_generic(pack, events)}
    assert got == alone
    return got


def test_generic_rules_give_the_builtins_moments_on_simulated_traffic() -> None:
    events = list(simulate(2_000, 120, seed=7).events())
    expected = builtin(events)
    assert len(expected) > 1_000
    assert generic(PACK, events) == expected
    assert generic(EXACT, events) == expected


@settings(max_examples=400, deadline=None)
@given(streams())
def test_generic_rules_differ_from_the_builtins_only_on_completions(events: list[dict[str, Any]]) -> None:
    expected = builtin(events)
    assert generic(EXACT, events) == expected
    got = generic(PACK, events)
    by_id = {e["event_id"]: e for e in events}
    extra = {k: v for k, v in got.items() if k not in expected}
    assert {k: v for k, v in got.items() if k in expected} == expected
    # Each extra moment is a maze or channel_hop brought about by the completion that ends the attempt.
    for (_, rule, due, _), evidence in extra.items():
        assert rule.split(".")[1] in ("maze", "channel_hop")
        assert by_id[evidence[-1]]["type"] == "complete"
        assert by_id[evidence[-1]]["ts"] == due
