"""Generic moment kinds wired into the pack loader and the shard (issue 14, DESIGN.md §8)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from state.batches import RawBatch, Tick
from state.journey import Attempt, GenericAttempt
from state.moments import moment_id
from state.rules import RulePackError, describe_rule, load_rule_pack, parse_duration, rule_pack_from_dict
from state.shard import Shard, process
from tests.helpers import MIN, PACK, ev, raws, run

DEFAULT = tomllib.loads((Path(__file__).resolve().parents[2] / "flows" / "rulepacks" / "default.toml")
                        .read_text(encoding="utf-8"))
DECLINED: dict[str, Any] = {"kind": "count", "name": "declined", "journeys": ["cart"], "when": {"type": "fail"},
                            "threshold": 2, "within": "5m", "urgency": "P1", "action": "call_back",
                            "channels": ["sms"], "ttl": "2h"}
QUIET: dict[str, Any] = {"kind": "absence", "name": "quiet", "journeys": ["cart"], "when": {"step": "cart"},
                         "idle": "20m", "action": "remind"}


def _pack(*moments: dict[str, Any]) -> Any:
    return rule_pack_from_dict({**DEFAULT, "moment": [*DEFAULT["moment"], *moments]}, "extra.toml")


def test_a_pack_loads_generic_rules_next_to_the_builtins() -> None:
    pack = _pack(DECLINED, QUIET)
    generic = [r for r in pack.rules if r.generic is not None]
    assert [(r.name, r.kind, r.index) for r in generic] == [
        ("cart.declined", "count", len(PACK.rules)), ("cart.quiet", "absence", len(PACK.rules) + 1)]
    declined = generic[0]
    assert (declined.urgency, declined.action, declined.channels, declined.ttl_ms) == ("P1", "call_back", ("sms",),
                                                                                        2 * 60 * MIN)
    # act_within and holdout not given: the pack's [policy] defaults.
    assert (declined.act_within_ms, declined.holdout) == (parse_duration(DEFAULT["policy"].get("act_within", "1h")),
                                                          DEFAULT["policy"].get("holdout", 0.0))
    assert pack.horizon_ms == PACK.horizon_ms  # 24 h attempt timeout covers 5m and 20m
    assert pack.fingerprint() != PACK.fingerprint()
    assert pack.fingerprint() != _pack({**DECLINED, "threshold": 3}, QUIET).fingerprint()


def test_every_problem_of_a_pack_is_reported_naming_file_rule_and_field() -> None:
    bad = [{**DECLINED, "threshold": 0}, {**QUIET, "idle": "25h"}, {"kind": "stuck", "within": "ten"},
           {"kind": "count", "name": "failed", "when": {"type": "fail"}, "threshold": 1, "journeys": ["cart"]}]
    with pytest.raises(RulePackError) as info:
        _pack(*bad)
    text = str(info.value)
    n = len(DEFAULT["moment"])
    assert f"extra.toml: moment[{n}] (cart.declined).threshold: must be an integer 1..100, got 0" in text
    assert f"extra.toml: moment[{n + 1}] (cart.quiet).idle: must be shorter than the pack's attempt_timeout" in text
    assert f"extra.toml: moment[{n + 2}].within: must be a duration" in text
    # The built-in pack already has cart.failed: a generic rule of that name would be a second one.
    clash = rf"moment\[{n}\] \(cart\.failed\)\.name: rule 'cart.failed' is already defined"
    with pytest.raises(RulePackError, match=clash):
        _pack(bad[3])


def test_a_generic_firing_is_a_moment_with_tag_and_decision_like_a_builtins() -> None:
    pack = _pack(DECLINED)
    out = run([ev("v", 0, step="cart"), ev("f1", MIN, "fail"), ev("f2", 3 * MIN, "fail"), ev("f3", 4 * MIN, "fail")],
              pack=pack)
    [m] = [m for m in out.moments if m["rule"] == "cart.declined"]
    assert (m["kind"], m["journey"], m["urgency"], m["action"], m["evidence"], m["step"]) == (
        "count", "cart", "P1", "call_back", ["f1", "f2"], "cart")
    assert m["moment_id"] == moment_id("c1", "cart.declined", "f2")
    assert m["due_ts"] == ev("f2", 3 * MIN)["ts"]
    [a] = [a for a in out.actions if a["moment_id"] == m["moment_id"]]
    assert a["rule"] == "cart.declined"
    assert [t["state"] for t in out.tags if t["moment_id"] == m["moment_id"]][:1] == ["open"]
    # The built-ins still fire as before, next to it.
    assert {"cart.failed", "cart.declined"} <= {x["rule"] for x in out.moments}


def test_absence_timers_are_part_of_the_customers_wake_up() -> None:
    pack = _pack(QUIET)
    sh = Shard(pack)
    first = process(sh, [RawBatch("t", 0, raws([ev("v", 0, step="cart")]), [0])])
    assert not [m for m in first.moments if m["rule"] == "cart.quiet"]
    # Another customer's event moves event time past v + 20m: the wake-up fires the timer.
    later = process(sh, [RawBatch("t", 0, raws([ev("x", 60 * MIN, customer="c2")]), [1]), Tick(0)])
    [m] = [m for m in later.moments if m["rule"] == "cart.quiet"]
    assert (m["due_ts"], m["evidence"], m["moment_id"]) == (ev("v", 20 * MIN)["ts"], ["v"],
                                                            moment_id("c1", "cart.quiet", "v"))


def test_generic_state_survives_a_snapshot() -> None:
    pack = _pack(DECLINED, QUIET)
    events = [ev("v", 0, step="cart"), ev("f1", MIN, "fail"), ev("f2", 3 * MIN, "fail"), ev("z", 40 * MIN,
                                                                                          customer="c2")]
    whole = sorted(m["moment_id"] for m in run(events, pack=pack).moments)
    for cut in range(len(events) + 1):
        sh = Shard(pack)
        part1 = process(sh, [RawBatch("t", 0, raws(events[:cut]), list(range(cut)))])
        restored = Shard(pack)
        restored.restore(sh.snapshot())
        part2 = process(restored, [RawBatch("t", 0, raws(events[cut:]), list(range(cut, len(events)))),
                                   Tick(0, final=True)])
        assert sorted(m["moment_id"] for m in part1.moments + part2.moments) == whole, cut


def test_journeys_without_generic_rules_keep_plain_attempts() -> None:
    pack = _pack(QUIET)  # on cart only
    sh = Shard(pack)
    process(sh, [RawBatch("t", 0, raws([ev("v", 0, step="cart"), ev("u", MIN, journey="5g_upgrade",
                                                                    step="landing")]), [0, 1]),
                 Tick(0, final=True)])
    kinds = {type(a) for c in sh.customers.values() for a in c.attempts if a is not None}
    assert kinds == {Attempt, GenericAttempt}
    default = Shard(load_rule_pack())
    process(default, [RawBatch("t", 0, raws([ev("v", 0, step="cart")]), [0]), Tick(0, final=True)])
    assert {type(a) for c in default.customers.values() for a in c.attempts if a is not None} == {Attempt}


def test_check_rules_prints_every_rule_in_plain_words(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    path = tmp_path / "pack.toml"
    path.write_text(
        '[[journey]]\nid = "cart"\nsteps = ["product", "cart", "checkout"]\nkey_steps = ["checkout"]\n\n'
        '[[moment]]\nkind = "stuck"\n\n'
        '[[moment]]\nkind = "sequence"\nname = "retry"\nfirst = { type = "fail" }\nthen = { type = "start" }\n'
        'within = "30m"\n', encoding="utf-8")
    assert main(["check-rules", str(path)]) == 0
    out = capsys.readouterr().out
    assert "stuck: fires when 3 events of type fail fall within 30m" in out
    assert "rule cart.retry" in out
    assert "sequence: fires when an event of type start follows one of type fail within 30m" in out
    assert all(f"{r.kind}: {describe_rule(r)}" in out for r in load_rule_pack(path).rules)
