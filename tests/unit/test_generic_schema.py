"""Validation of generic rules (every problem of a pack, each naming file, rule and field) and their summaries."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from state.generic.schema import InvalidRulesError, compile_rules, describe, validate
from state.rules import KINDS as BUILTIN_KINDS
from state.rules import load_rule_pack
from tests.generic_driver import compile_pack

DAY = 86_400_000
JOURNEYS = compile_pack({"journey": [{"id": "5g_upgrade", "steps": ["landing", "order_form", "payment"],
                                      "key_steps": ["order_form", "payment"]},
                                     {"id": "cart", "steps": ["cart", "checkout"], "key_steps": ["checkout"]}]})[0]


def problems(*moments: dict[str, Any], **kw: Any) -> list[str]:
    """The messages of every problem of these [[moment]] tables in ``rules/x.toml``."""
    return [str(e) for e in validate("rules/x.toml", list(moments), JOURNEYS, DAY, **kw)]


def test_every_problem_of_every_rule_is_reported_with_file_rule_and_field() -> None:
    out = problems(
        {"kind": "count", "name": "retry_loop", "journeys": ["5g_upgrade"], "threshold": 0, "within": "ten",
         "colour": "red"},
        {"kind": "sequence", "first": {"type": "fail"}},
        {"kind": "absence", "journeys": ["cart"], "idle": "24h", "when": {"entry": "$key"}},
        {"kind": "distinct", "journeys": ["cart"], "field": "colour", "threshold": 1, "unless": {"type": "contact"}},
        {"kind": "counter"},
    )
    assert out == [
        "rules/x.toml: moment[0] (5g_upgrade.retry_loop).colour: unknown field for kind count (allowed: act_within, "
        "action, channels, contact, holdout, journeys, kind, max_groups, name, per, stages, threshold, ttl, unless, "
        "unless_within, urgency, when, within)",
        "rules/x.toml: moment[0] (5g_upgrade.retry_loop).threshold: must be an integer 1..100, got 0",
        "rules/x.toml: moment[0] (5g_upgrade.retry_loop).within: must be a duration like '10m', got 'ten'",
        "rules/x.toml: moment[1] ({5g_upgrade,cart}.sequence).then: is required (a table like {type = \"fail\"})",
        "rules/x.toml: moment[1] ({5g_upgrade,cart}.sequence).within: is required (a duration like '10m')",
        "rules/x.toml: moment[2] (cart.absence).when.entry: '$key' stands for the journey's key steps: only `step` "
        "may use it",
        "rules/x.toml: moment[2] (cart.absence).idle: must be shorter than the pack's attempt_timeout (86400000 ms), "
        "got 86400000 ms",
        "rules/x.toml: moment[3] (cart.distinct).field: unknown event field 'colour' (channel, type, step, entry or "
        "attrs.<key>)",
        "rules/x.toml: moment[3] (cart.distinct).threshold: must be an integer 2..100, got 1",
        "rules/x.toml: moment[3] (cart.distinct).unless_within: is required with `unless` (how far back an `unless` "
        "event blocks)",
        "rules/x.toml: moment[4] ({5g_upgrade,cart}.counter).kind: unknown kind 'counter' (one of count, distinct, "
        "absence, sequence)",
    ]


@pytest.mark.parametrize(
    ("table", "field", "problem"),
    [
        ({"kind": "count", "threshold": 1, "when": {"colour": "red"}}, "when.colour", "unknown predicate field"),
        ({"kind": "count", "threshold": 1, "when": {"channel": "fax"}}, "when.channel", "unknown channel 'fax'"),
        ({"kind": "count", "threshold": 1, "when": {"type": []}}, "when.type", "must be a non-empty string or list"),
        ({"kind": "count", "threshold": 1, "when": "fail"}, "when", "must be a table"),
        ({"kind": "count", "threshold": 1, "unless_within": "1h"}, "unless", "is required with `unless_within`"),
        ({"kind": "count", "threshold": 1, "per": "attrs."}, "per", "unknown event field 'attrs.'"),
        ({"kind": "count"}, "threshold", "is required"),
        ({"kind": "distinct", "threshold": 2}, "field", "is required"),
        ({"kind": "absence"}, "idle", "is required"),
        ({"kind": "sequence", "first": {}, "then": {}, "within": "1m", "unless_within": "1m"}, "unless_within",
         "unknown field for kind sequence"),
        ({"kind": "count", "threshold": 1, "urgency": "P9"}, "urgency", "must be one of P1, P2, P3, P4"),
        ({"kind": "count", "threshold": 1, "journeys": ["nope"]}, "journeys", "unknown journey 'nope'"),
        ({"kind": "count", "threshold": 1, "name": "a.b"}, "name", "must be a name"),
        ({"kind": "count", "threshold": 1, "ttl": "0m"}, "ttl", "must be a positive duration"),
        # Strict predicates: a `$`-name other than `$key` would silently match nothing.
        ({"kind": "count", "threshold": 1, "when": {"step": "$nope"}}, "when.step", "unknown name '$nope'"),
        ({"kind": "count", "threshold": 1, "when": {"step": ["$key", "$KEY"]}}, "when.step", "unknown name '$KEY'"),
        ({"kind": "count", "threshold": 1, "when": {"type": "$any"}}, "when.type", "unknown name '$any'"),
        ({"kind": "count", "threshold": 1, "when": {"attrs.code": "$x"}}, 'when."attrs.code"', "unknown name '$x'"),
        ({"kind": "absence", "idle": "5m", "until": {"step": "$next"}}, "until.step", "unknown name '$next'"),
        ({"kind": "sequence", "first": {"step": "$key"}, "then": {"entry": "$entry"}, "within": "1m"},
         "then.entry", "unknown name '$entry'"),
        ({"kind": "count", "threshold": 1, "unless": {"step": "$prev"}, "unless_within": "1h"}, "unless.step",
         "unknown name '$prev'"),
        # Wrong value types, empty lists and unknown fields in every predicate of every kind.
        ({"kind": "count", "threshold": 1, "when": {"attrs.code": 5}}, 'when."attrs.code"',
         "a number attribute never matches"),
        ({"kind": "count", "threshold": 1, "when": {"type": True}}, "when.type", "got True"),
        ({"kind": "count", "threshold": 1, "when": {"step": ["cart", ""]}}, "when.step", "non-empty string"),
        ({"kind": "count", "threshold": 1, "when": {"type": {"is": "fail"}}}, "when.type", "non-empty string"),
        ({"kind": "distinct", "field": "entry", "threshold": 2, "when": {"entry": []}}, "when.entry",
         "non-empty string or list"),
        ({"kind": "absence", "idle": "5m", "until": {"stepp": "cart"}}, "until.stepp", "unknown predicate field"),
        ({"kind": "sequence", "first": {"type": "fail"}, "then": [], "within": "1m"}, "then", "must be a table"),
        ({"kind": "sequence", "first": {"type": "fail"}, "then": {"type": "start"}, "within": "1m",
          "unless": {"attrs.": "x"}}, 'unless."attrs."', "unknown predicate field"),
        ({"kind": "count", "threshold": 1, "within": 600}, "within", "must be a duration like '10m', got 600"),
        ({"kind": "count", "threshold": 2.0}, "threshold", "must be an integer 1..100, got 2.0"),
        ({"kind": "distinct", "field": 3, "threshold": 2}, "field", "must be a field name"),
        ({"kind": "count", "threshold": 1, "per": "$key"}, "per", "unknown event field '$key'"),
    ],
)
def test_each_bad_field_is_named(table: dict[str, Any], field: str, problem: str) -> None:
    out = problems({**table, "journeys": table.get("journeys", ["cart"])})
    assert len(out) == 1
    assert f").{field}: " in out[0]
    assert problem in out[0]


def test_unknown_event_types_are_refused_when_the_pack_types_are_given() -> None:
    table = {"kind": "count", "threshold": 1, "journeys": ["cart"], "when": {"type": ["fail", "topup"]}}
    assert problems(table) == []
    assert problems(table, types=frozenset({"fail"})) == [
        "rules/x.toml: moment[0] (cart.count).when.type: unknown event type 'topup' (add it to the pack's `types`)"
    ]


def test_a_rule_name_defined_twice_is_refused() -> None:
    table = {"kind": "count", "threshold": 1, "journeys": ["cart"]}
    other = {"kind": "sequence", "name": "count", "journeys": ["cart"], "first": {}, "then": {}, "within": "1m"}
    assert problems(table, other) == [
        "rules/x.toml: moment[1] (cart.count).name: rule 'cart.count' is already defined by moment[0] (cart.count)"
    ]


def test_builtin_kinds_are_left_to_the_builtin_loader() -> None:
    default = tomllib.loads(Path(load_rule_pack().path).read_text(encoding="utf-8"))
    assert validate("default.toml", default["moment"], JOURNEYS, DAY, builtin_kinds=BUILTIN_KINDS) == []
    assert compile_rules("default.toml", default["moment"], JOURNEYS, DAY, builtin_kinds=BUILTIN_KINDS) == []


def test_compile_raises_one_error_listing_all_problems() -> None:
    with pytest.raises(InvalidRulesError) as e:
        compile_rules("rules/x.toml", [{"kind": "count"}, {"kind": "absence"}], JOURNEYS, DAY)
    assert len(e.value.errors) == 2
    assert str(e.value).splitlines() == [str(x) for x in e.value.errors]
    assert e.value.where == "moment[0] ({5g_upgrade,cart}.count).threshold"


@pytest.mark.parametrize(
    ("table", "summary"),
    [
        ({"kind": "count", "when": {"type": "fail"}, "threshold": 3, "within": "30m", "per": "step"},
         "fires when 3 events of type fail fall within 30m, per step"),
        ({"kind": "count", "when": {"type": "fail"}, "threshold": 1},
         "fires when an event of type fail occurs"),
        ({"kind": "count", "when": {"type": "fail", "attrs.reason": ["card", "limit"]}, "threshold": 2,
          "unless": {"channel": "call_center"}, "unless_within": "1h"},
         "fires when 2 events of type fail with attrs.reason card or limit occur in one attempt, unless an event "
         "on call_center came in the 1h before"),
        ({"kind": "distinct", "when": {"step": "$key"}, "field": "entry", "threshold": 3, "within": "30m",
          "per": "step"},
         "fires when events at a key step carry 3 distinct values of entry within 30m, per step"),
        ({"kind": "absence", "when": {"step": "$key"}, "idle": "10m"},
         "fires 10m after an event at a key step unless any event in the journey comes first"),
        ({"kind": "absence", "idle": "90s", "until": {"type": ["submit", "complete"]}},
         "fires 90s after an event in the journey unless an event of type submit or complete comes first"),
        ({"kind": "sequence", "first": {"type": "fail"}, "then": {"type": "start", "step": "checkout"},
          "within": "2h", "unless": {"type": "contact"}},
         "fires when an event of type start at checkout follows one of type fail within 2h, with no event of "
         "type contact in between"),
    ],
)
def test_describe_says_what_a_rule_does_in_one_line(table: dict[str, Any], summary: str) -> None:
    (rule,) = compile_rules("x.toml", [{**table, "journeys": ["cart"]}], JOURNEYS, DAY)
    assert describe(rule) == summary


def test_check_rules_refuses_a_dollar_name_naming_file_rule_and_field_with_every_other_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flows.cli import main

    path = tmp_path / "pack.toml"
    path.write_text(
        '[[journey]]\nid = "cart"\nsteps = ["product", "cart", "checkout"]\nkey_steps = ["checkout"]\n\n'
        '[[moment]]\nkind = "count"\nname = "loop"\nthreshold = 2\nwhen = { step = "$nope" }\n\n'
        '[[moment]]\nkind = "sequence"\nfirst = { "attrs.code" = 5 }\nthen = { step = "$KEY" }\nwithin = "1m"\n',
        encoding="utf-8")
    assert main(["check-rules", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: moment[0] (cart.loop).when.step: unknown name '$nope'" in err
    assert f'{path}: moment[1] (cart.sequence).first."attrs.code": must be a non-empty string' in err
    assert f"{path}: moment[1] (cart.sequence).then.step: unknown name '$KEY'" in err
