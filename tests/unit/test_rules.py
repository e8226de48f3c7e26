"""Rule packs: the default pack's content, and errors that name file, field and problem."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from state.rules import DEFAULT_PACK, KINDS, RulePackError, load_rule_pack, parse_duration, rule_pack_from_dict

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "rulepacks"
BASE = DEFAULT_PACK.read_text()
DAY_MS = 86_400_000


def test_default_pack_loads_with_two_journeys_and_fourteen_rules() -> None:
    pack = load_rule_pack()
    assert pack.name == "default"
    assert set(pack.journeys) == {"5g_upgrade", "cart"}
    assert pack.journeys["5g_upgrade"].steps == ("landing", "plan_select", "order_form", "payment")
    assert pack.journeys["cart"].steps == ("product", "cart", "checkout", "payment")
    assert pack.journeys["5g_upgrade"].key_steps == frozenset({"order_form", "payment"})
    assert pack.journeys["cart"].key_steps == frozenset({"checkout", "payment"})
    assert {j.complete_type for j in pack.journeys.values()} == {"complete"}
    assert len(pack.rules) == 14
    # Every kind but browse_loop, which the default pack leaves out.
    assert {r.name for r in pack.rules} == {f"{j}.{k}" for j in ("5g_upgrade", "cart") for k in KINDS
                                            if k != "browse_loop"}
    assert [r.index for r in pack.rules] == list(range(14))
    assert pack.attempt_timeout_ms == DAY_MS
    assert pack.horizon_ms == DAY_MS


def test_default_pack_parameters_are_those_of_the_design() -> None:
    cart = load_rule_pack().by_journey["cart"]
    assert cart["abandoned"].within_ms == 10 * 60_000
    assert (cart["stuck"].threshold, cart["stuck"].within_ms) == (3, 30 * 60_000)
    assert (cart["maze"].threshold, cart["maze"].within_ms) == (3, 30 * 60_000)
    assert (cart["channel_hop"].threshold, cart["channel_hop"].within_ms) == (3, 60 * 60_000)
    assert (cart["interested"].threshold, cart["interested"].within_ms, cart["interested"].no_intent_ms) == (
        2, DAY_MS, DAY_MS)
    h = cart["handoff"]
    assert (h.channel, h.type, h.within_ms) == ("call_center", "contact", 30 * 60_000)
    urgencies = {k: r.urgency for k, r in cart.items()}
    assert urgencies == {"abandoned": "P2", "failed": "P1", "stuck": "P1", "maze": "P2", "channel_hop": "P2",
                         "interested": "P3", "handoff": "P1"}


@pytest.mark.parametrize(("text", "ms"), [("30s", 30_000), ("10m", 600_000), ("1.5h", 5_400_000),
                                          ("7d", 604_800_000), ("250ms", 250), (" 2 m ", 120_000)])
def test_durations_parse(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("value", ["ten", "10", "10 minutes", "-5m", "0s", "0.0001ms", "", 10, None, "1e3s"])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(value)


# -- errors name file, field path and problem ----------------------------------------------------
@pytest.mark.parametrize(
    ("fixture", "where", "problem"),
    [
        ("bad_duration.toml", "moment[3].within", "must be a duration like '10m', got 'ten'"),
        ("unknown_kind.toml", "moment[1].kind", "must be one of abandoned, failed, stuck, maze, channel_hop, "
                                                "interested, handoff, browse_loop, count, distinct, absence, "
                                                "sequence, got 'labyrinth'"),
        ("unknown_field.toml", "moment[0].within", "unknown field (allowed: act_within, action, channels, contact, "
                                                      "escalate, holdout, journeys, kind, stages, ttl, urgency)"),
        ("unknown_journey.toml", "moment[0].journeys", "unknown journey 'loan'"),
        ("key_step_not_in_steps.toml", "journey[0].key_steps", "'basket' is not one of the journey's steps"),
        ("duplicate_journey.toml", "journey[1].id", "duplicate journey 'cart'"),
        ("syntax_error.toml", "(syntax)", "line 2"),
    ],
)
def test_bad_rule_pack_file_error_names_file_field_and_problem(fixture: str, where: str, problem: str) -> None:
    path = FIXTURES / fixture
    with pytest.raises(RulePackError) as info:
        load_rule_pack(path)
    err = info.value
    assert str(err).startswith(f"{path}: {where}: "), str(err)
    assert problem in str(err)
    assert (err.path, err.where) == (str(path), where)
    assert problem in err.problem


def _pack(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rules.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("mutate", "where", "problem"),
    [
        (lambda t: t.replace('within = "30m"', 'within = "ten"', 1), "moment[2].within", "duration like '10m'"),
        (lambda t: t.replace('idle = "10m"', 'idle = 10'), "moment[0].idle", "duration like '10m', got 10"),
        (lambda t: t.replace('ttl = "48h"', 'ttl = "0m"'), "moment[0].ttl", "positive duration"),
        (lambda t: t.replace('attempt_timeout = "24h"', 'attempt_timeout = "a day"'), "pack.attempt_timeout",
         "duration like '10m'"),
        (lambda t: t.replace('kind = "maze"', 'kind = "labyrinth"'), "moment[3].kind", "must be one of"),
        (lambda t: t.replace('kind = "failed"', 'kind = 7'), "moment[1].kind", "got 7"),
        (lambda t: t.replace('urgency = "P3"', 'urgency = "urgent"'), "moment[5].urgency", "must be one of"),
        (lambda t: t.replace('kind = "failed"', 'kind = "failed"\ncolour = "red"'), "moment[1].colour",
         "unknown field"),
        (lambda t: t.replace('complete_type = "complete"', 'complete_type = "complete"\ncolour = 1', 1),
         "journey[0].colour", "unknown field"),
        (lambda t: t.replace("[pack]", "[pack]\nowner = 'me'"), "pack.owner", "unknown field"),
        (lambda t: t + "\n[extras]\nx = 1\n", "(top).extras", "unknown field"),
        (lambda t: t + '\n[[moment]]\nkind = "failed"\njourneys = ["loan"]\n', "moment[7].journeys",
         "unknown journey 'loan'"),
        (lambda t: t.replace('key_steps = ["checkout", "payment"]', 'key_steps = ["basket"]'), "journey[1].key_steps",
         "'basket' is not one of the journey's steps"),
        (lambda t: t.replace('steps = ["product", "cart", "checkout", "payment"]',
                             'steps = ["product", "cart", "cart", "checkout", "payment"]'), "journey[1].steps",
         "distinct"),
        (lambda t: t.replace('id = "cart"', 'id = "5g_upgrade"'), "journey[1].id", "duplicate journey"),
        (lambda t: t.replace('id = "cart"', 'id = "my cart"'), "journey[1].id", "must be a name"),
        (lambda t: t.replace('complete_type = "complete"', 'complete_type = "paid"', 1), "journey[0].complete_type",
         "must be an event type"),
        (lambda t: t.replace("threshold = 3", "threshold = 0"), "moment[2].threshold", "integer 1..100"),
        (lambda t: t.replace("threshold = 3", "threshold = true"), "moment[2].threshold", "integer 1..100"),
        (lambda t: t.replace('channel = "call_center"', 'channel = "pigeon"'), "moment[6].channel", "unknown channel"),
        (lambda t: t.replace('type = "contact"', 'type = "visit"'), "moment[6].type", "unknown event type"),
        (lambda t: t + '\n[[moment]]\nkind = "failed"\n', "moment[7].kind", "defined twice"),
        (lambda t: t.replace("[pack]", "[pack\n"), "(syntax)", ""),
        (lambda t: t.replace('P1 = "10s"', 'P9 = "10s"'), "latency_targets.P9", "must be one of"),
        (lambda t: t.replace("version = 1", "version = 0"), "pack.version", "positive integer"),
        (lambda t: t.replace("min_uplift = 0.01", "min_uplift = 2"), "effectiveness.min_uplift", "fraction in [0, 1)"),
        (lambda t: t.replace("min_uplift = 0.01", 'min_uplift = "1%"'), "effectiveness.min_uplift", "got '1%'"),
        (lambda t: t.replace("min_uplift = 0.01", "min_uplift = -0.01"), "effectiveness.min_uplift", "fraction"),
    ],
)
def test_invalid_rule_pack_error_names_file_field_and_problem(
    tmp_path: Path, mutate: Callable[[str], str], where: str, problem: str
) -> None:
    text = mutate(BASE)
    assert text != BASE
    path = _pack(tmp_path, text)
    with pytest.raises(RulePackError) as info:
        load_rule_pack(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {where}: "), msg
    assert problem in msg


def test_missing_rule_pack_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(RulePackError) as info:
        load_rule_pack(path)
    assert str(info.value) == f"{path}: (file): file not found"


def test_unreadable_rule_pack_is_a_rule_pack_error(tmp_path: Path) -> None:
    with pytest.raises(RulePackError, match=r": \(file\): is not a regular file"):
        load_rule_pack(tmp_path)  # a directory
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"name = '\xff\xfe'\n")
    with pytest.raises(RulePackError, match=r"binary\.toml: \(file\): is not UTF-8 text"):
        load_rule_pack(binary)


def test_rule_pack_error_is_a_value_error() -> None:
    assert issubclass(RulePackError, ValueError)


def test_pack_without_journeys_is_refused() -> None:
    with pytest.raises(RulePackError, match=r"^<memory>: journey: at least one"):
        rule_pack_from_dict({"moment": []})


def test_rule_pack_may_add_event_types_and_restrict_journeys(tmp_path: Path) -> None:
    text = BASE.replace("[pack]", 'types = ["quote"]\n\n[pack]').replace(
        'kind = "interested"', 'kind = "interested"\njourneys = ["cart"]')
    pack = load_rule_pack(_pack(tmp_path, text))
    assert "quote" in pack.types
    assert "cart.interested" in {r.name for r in pack.rules}
    assert "5g_upgrade.interested" not in {r.name for r in pack.rules}
    assert "interested" not in pack.by_journey["5g_upgrade"]


def test_handoff_rules_may_name_their_own_channels_per_journey() -> None:
    pack = load_rule_pack(FIXTURES / "handoff_per_journey.toml")
    assert {r.name: r.channel for r in pack.rules} == {"cart.handoff": "call_center", "5g_upgrade.handoff": "store"}


def test_fingerprint_changes_with_rule_semantics(tmp_path: Path) -> None:
    changed = load_rule_pack(_pack(tmp_path, BASE.replace('idle = "10m"', 'idle = "15m"')))
    assert changed.fingerprint() != load_rule_pack().fingerprint()
    assert load_rule_pack().fingerprint() == load_rule_pack().fingerprint()


def test_fingerprint_is_the_same_in_processes_with_different_string_hashes() -> None:
    code = "from state.rules import load_rule_pack; print(load_rule_pack().fingerprint())"
    seen = set()
    for seed in ("1", "2", "3", "4", "5", "6"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        seen.add(out.stdout.strip())
    assert seen == {load_rule_pack().fingerprint()}


def test_every_problem_of_a_pack_is_reported_not_just_the_first() -> None:
    data = {
        "journey": [{"id": "cart", "steps": ["cart", "checkout"], "key_steps": ["basket"]},
                    {"id": "plan", "steps": ["a", "b"], "key_steps": ["b"]}],
        "moment": [{"kind": "stuck", "threshold": 0, "within": "soon", "urgency": "P9"},
                   {"kind": "labyrinth"},
                   {"kind": "maze", "journeys": ["plan"], "zz": 1}],
        "policy": {"max_per_day": -1},
    }
    with pytest.raises(RulePackError) as info:
        rule_pack_from_dict(data, "pack.toml")
    err = info.value
    assert [w for w, _ in err.problems] == [
        "journey[0].key_steps", "policy.max_per_day", "moment[0].urgency", "moment[0].threshold", "moment[0].within",
        "moment[1].kind", "moment[2].zz",
    ]
    assert (err.where, err.problem) == err.problems[0]
    lines = str(err).splitlines()
    assert len(lines) == 7
    assert all(line.startswith("pack.toml: ") for line in lines)
    assert "moment[0].threshold: must be an integer 1..100, got 0" in lines[3]


def test_durations_beyond_ten_years_are_refused_naming_the_field(tmp_path: Path) -> None:
    # "10000000d" was accepted and overflowed the 6-byte times on the first event (every restart again).
    text = (Path(__file__).parents[2] / "flows" / "rulepacks" / "default.toml").read_text()
    bad = tmp_path / "huge.toml"
    bad.write_text(text.replace('idle = "10m"', 'idle = "10000000d"', 1))
    with pytest.raises(RulePackError, match=r"huge\.toml.*idle.*at most 3650d"):
        load_rule_pack(bad)


def test_a_pack_nested_thousands_deep_is_refused_not_a_traceback(tmp_path: Path) -> None:
    # tomllib recursed until RecursionError: a traceback from check-rules and run.
    deep = tmp_path / "deep.toml"
    deep.write_text('[pack]\nname = "x"\n[[moment]]\nkind = "count"\nwhen = {type = ' + "[" * 3000 + '"x"'
                    + "]" * 3000 + "}\n")
    with pytest.raises(RulePackError, match=r"deep\.toml.*nested too deeply"):
        load_rule_pack(deep)


def test_min_uplift_is_read_from_the_pack_and_defaults_to_zero(tmp_path: Path) -> None:
    assert load_rule_pack(DEFAULT_PACK).effect_min_uplift == 0.01
    assert load_rule_pack(_pack(tmp_path, BASE.replace("min_uplift = 0.01\n", ""))).effect_min_uplift == 0.0



def test_a_pack_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    p = tmp_path / "bom.toml"
    p.write_bytes(b"\xef\xbb\xbf" + BASE.encode())
    assert load_rule_pack(p).fingerprint() == load_rule_pack().fingerprint()


def test_a_generic_rule_named_like_a_built_in_is_reported_with_the_other_problems() -> None:
    text = BASE + ('\n[[moment]]\nkind = "count"\nname = "failed"\nthreshold = 1\njourneys = ["cart"]\n'
                   '\n[[moment]]\nkind = "count"\nname = "other"\nthreshold = 0\njourneys = ["cart"]\n')
    with pytest.raises(RulePackError) as info:
        rule_pack_from_dict(__import__("tomllib").loads(text), "p.toml")
    msg = str(info.value)
    assert "(cart.failed).name: rule 'cart.failed' is already defined by a built-in rule" in msg
    assert "threshold" in msg  # the other rule's problem, in the same report
