"""Rule packs: the default pack's content, and errors that name file, field and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from state.rules import DEFAULT_PACK, RulePackError, load_rule_pack, parse_duration


def test_default_pack_has_two_journeys_and_seven_kinds_each() -> None:
    pack = load_rule_pack()
    assert set(pack.journeys) == {"5g_upgrade", "cart"}
    assert pack.journeys["5g_upgrade"].steps == ("landing", "plan_select", "order_form", "payment")
    assert pack.journeys["cart"].key_steps == frozenset({"checkout", "payment"})
    assert len(pack.rules) == 14
    assert {r.kind for r in pack.rules} == {"abandoned", "failed", "stuck", "maze", "channel_hop", "interested",
                                            "handoff"}
    assert pack.by_journey["cart"]["abandoned"].within_ms == 600_000
    assert pack.by_journey["cart"]["stuck"].threshold == 3
    assert pack.horizon_ms == 86_400_000


@pytest.mark.parametrize(("text", "ms"), [("30s", 30_000), ("10m", 600_000), ("1.5h", 5_400_000), ("7d", 604_800_000),
                                          ("250ms", 250)])
def test_durations_parse(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


def _pack(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "rules.toml"
    p.write_text(text)
    return p


BASE = DEFAULT_PACK.read_text()


@pytest.mark.parametrize(
    ("mutate", "where", "problem"),
    [
        (lambda t: t.replace('within = "30m"', 'within = "ten"', 1), "moment[2].within", "duration like '10m'"),
        (lambda t: t.replace('kind = "maze"', 'kind = "labyrinth"'), "moment[3].kind", "must be one of"),
        (lambda t: t.replace('urgency = "P3"', 'urgency = "urgent"'), "moment[5].urgency", "must be one of"),
        (lambda t: t.replace('kind = "failed"', 'kind = "failed"\ncolour = "red"'), "moment[1].colour",
         "unknown field"),
        (lambda t: t + '\n[[moment]]\nkind = "failed"\njourneys = ["loan"]\n', "moment[7].journeys",
         "unknown journey 'loan'"),
        (lambda t: t.replace('key_steps = ["checkout", "payment"]', 'key_steps = ["basket"]'), "journey[1].key_steps",
         "'basket' is not one of the journey's steps"),
        (lambda t: t.replace('id = "cart"', 'id = "5g_upgrade"'), "journey[1].id", "duplicate journey"),
        (lambda t: t.replace("threshold = 3", "threshold = 0"), "moment[2].threshold", "integer 1..100"),
        (lambda t: t.replace('channel = "call_center"', 'channel = "pigeon"'), "moment[6].channel", "unknown channel"),
        (lambda t: t + '\n[[moment]]\nkind = "failed"\n', "moment[7].kind", "defined twice"),
        (lambda t: t.replace("[pack]", "[pack\n"), "(syntax)", ""),
        (lambda t: t.replace('P1 = "10s"', 'P9 = "10s"'), "latency_targets.P9", "must be one of"),
    ],
)
def test_invalid_rule_pack_error_names_file_field_and_problem(
    tmp_path: Path, mutate: object, where: str, problem: str
) -> None:
    path = _pack(tmp_path, mutate(BASE))  # type: ignore[operator]
    with pytest.raises(RulePackError) as info:
        load_rule_pack(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: {where}: "), msg
    assert problem in msg


def test_missing_rule_pack_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RulePackError, match=r"nope\.toml: \(file\): file not found"):
        load_rule_pack(tmp_path / "nope.toml")


def test_rule_pack_may_add_event_types_and_restrict_journeys(tmp_path: Path) -> None:
    text = BASE.replace("[pack]", 'types = ["quote"]\n\n[pack]').replace(
        'kind = "interested"', 'kind = "interested"\njourneys = ["cart"]')
    pack = load_rule_pack(_pack(tmp_path, text))
    assert "quote" in pack.types
    assert "cart.interested" in {r.name for r in pack.rules}
    assert "5g_upgrade.interested" not in {r.name for r in pack.rules}


def test_fingerprint_changes_with_rule_semantics(tmp_path: Path) -> None:
    changed = load_rule_pack(_pack(tmp_path, BASE.replace('idle = "10m"', 'idle = "15m"')))
    assert changed.fingerprint() != load_rule_pack().fingerprint()
    assert load_rule_pack().fingerprint() == load_rule_pack().fingerprint()
