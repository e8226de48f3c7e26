"""The simulator's ground truth covers a pack's generic rules, and the pipeline agrees with it (issue 14).

The truth for generic rules comes from ``connectors.simulator.generic_reference``: a brute-force reading of
DESIGN.md §8 that imports nothing from ``state/`` (tests/unit/test_layering.py holds it to that), so agreement
with the production evaluator in ``state/generic`` is evidence, not a tautology.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.simulator import simulate
from state.moments import moment_id
from state.rules import load_rule_pack
from tests.helpers import run

PACK_PATH = Path(__file__).resolve().parents[1] / "fixtures" / "rulepacks" / "generic_sim.toml"
PACK = tomllib.loads(PACK_PATH.read_text(encoding="utf-8"))
GENERIC = {"count", "distinct", "absence", "sequence"}
GENERIC_RULES = {f"{j['id']}.{m['name']}" for m in PACK["moment"] if m["kind"] in GENERIC for j in PACK["journey"]}


def _ids(truth: list[dict[str, Any]]) -> dict[str, int]:
    return {moment_id(str(t["customer_id"]), str(t["rule"]), str(t["anchor_event_id"])): int(t["due_ts"])
            for t in truth}


@pytest.fixture(scope="module")
def simulated() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    sim = simulate(600, 120, 21, pack=PACK)
    return list(sim.events()), sim.ground_truth()


def test_ground_truth_lists_every_generic_rule_of_the_pack(
        simulated: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    _, truth = simulated
    assert GENERIC_RULES <= {t["rule"] for t in truth}


def test_pipeline_moments_equal_the_ground_truth_for_a_generic_pack(
        simulated: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    events, truth = simulated
    out = run(events, pack=load_rule_pack(PACK_PATH))
    got = {m["moment_id"]: m["due_ts"] for m in out.moments}
    expected = _ids(truth)
    missing = sorted((t["rule"], t["customer_id"]) for t in truth if moment_id(t["customer_id"], t["rule"],
                                                                                t["anchor_event_id"]) not in got)
    extra = sorted({m["rule"] for m in out.moments if m["moment_id"] not in expected})
    assert got == expected, (missing[:10], extra)


def test_without_a_pack_the_truth_is_the_default_packs(
        simulated: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    _, truth = simulated
    default = simulate(600, 120, 21).ground_truth()
    assert [t for t in truth if t["rule"] not in GENERIC_RULES] == default


def test_a_pack_without_a_builtin_rule_drops_it_from_the_truth() -> None:
    pack = {**PACK, "moment": [m for m in PACK["moment"] if m["kind"] != "maze"]}
    rules = {t["rule"] for t in simulate(600, 120, 21, pack=pack).ground_truth()}
    assert not {r for r in rules if r.endswith(".maze")}
    assert "cart.stuck" in rules


def test_simulate_cli_writes_the_truth_of_the_given_pack(tmp_path: Path) -> None:
    from flows.cli import main

    assert main(["simulate", "--customers", "50", "--minutes", "30", "--seed", "4", "--rules", str(PACK_PATH),
                 "-o", str(tmp_path / "ev.jsonl"), "--truth", str(tmp_path / "truth.jsonl")]) == 0
    truth = [orjson.loads(x) for x in (tmp_path / "truth.jsonl").read_bytes().splitlines()]
    assert truth == simulate(50, 30, 4, pack=PACK).ground_truth()
    assert {t["rule"] for t in truth} & GENERIC_RULES
