"""docs/rule-packs.md, section "Generic kinds": the parameter tables and the worked examples match the code."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from state.generic.schema import KINDS, PARAMS
from tests.generic_driver import run
from tests.helpers import MIN, T0, ev

RULES_MD = Path(__file__).resolve().parents[2] / "docs" / "rule-packs.md"
TEXT = RULES_MD.read_text(encoding="utf-8")
JOURNEYS = [{"id": "5g_upgrade", "steps": ["landing", "plan_select", "order_form", "payment"],
             "key_steps": ["order_form", "payment"]},
            {"id": "cart", "steps": ["product", "cart", "checkout", "payment"], "key_steps": ["checkout", "payment"]}]


@pytest.mark.parametrize("kind", KINDS)
def test_each_generic_kind_table_lists_exactly_its_parameters(kind: str) -> None:
    table = re.search(rf"<!-- keys: generic\.{kind} -->\n((?:\|.*\|\n)+)", TEXT)
    assert table is not None
    rows = [line.split("|")[1].strip().strip("`") for line in table.group(1).splitlines()[2:]]
    assert sorted(rows) == sorted(PARAMS[kind])


def example(kind: str) -> dict[str, Any]:
    """The pack of the section's worked example of ``kind`` (with the default pack's journeys)."""
    m = re.search(rf"### Example: {kind}\n\n```toml\n(.*?)```", TEXT, re.S)
    assert m is not None
    return {"pack": {"attempt_timeout": "24h"}, "journey": JOURNEYS, **tomllib.loads(m.group(1))}


def at(hhmm: str) -> int:
    """Offset from T0 (taken as 10:00) of a clock time like ``10:12``."""
    h, m = hhmm.split(":")
    return (int(h) - 10) * 60 * MIN + int(m) * MIN


def moments(pack: dict[str, Any], events: list[dict[str, Any]]) -> list[tuple[str, int, tuple[str, ...]]]:
    """(rule, due offset, evidence) of every moment."""
    return [(r, due - T0, e) for _, r, due, _, e in run(pack, events)]


def test_the_count_example_does_what_the_text_says() -> None:
    pack = example("count")
    fails = [ev("f1", at("10:00"), "fail", reason="card"), ev("f2", at("10:05"), "fail", reason="timeout"),
             ev("f3", at("10:12"), "fail", reason="limit")]
    assert moments(pack, fails) == [("cart.card_declined", at("10:12"), ("f1", "f3"))]
    called = [ev("k", -40 * MIN, channel="call_center"), *fails]
    assert moments(pack, called) == []
    later = [*called, ev("f4", at("10:21"), "fail", reason="card")]
    assert moments(pack, later) == [("cart.card_declined", at("10:21"), ("f3", "f4"))]


def test_the_distinct_example_does_what_the_text_says() -> None:
    codes = [("e1", "10:00", "E1"), ("e2", "10:03", "E2"), ("e3", "10:04", "E1"), ("e4", "10:11", "E3")]
    events = [ev(i, at(t), "fail", journey="5g_upgrade", step="order_form", error_code=c) for i, t, c in codes]
    assert moments(example("distinct"), events) == [("5g_upgrade.form_errors", at("10:11"), ("e2", "e3", "e4"))]


def test_the_absence_example_does_what_the_text_says() -> None:
    j = "5g_upgrade"
    events = [ev("s1", at("10:00"), "submit", journey=j, step="plan_select"),
              ev("v1", at("10:10"), journey=j, step="landing"),
              ev("s2", at("10:20"), "submit", journey=j, step="plan_select")]
    end = ev("x", at("11:00"), journey=None, customer="other")
    assert moments(example("absence"), [*events, end]) == [("5g_upgrade.plan_no_order", at("10:50"), ("s2",))]
    early = ev("o", at("10:50") - 1, journey=j, step="order_form")
    assert moments(example("absence"), [*events, early, end]) == []
    on_time = ev("o", at("10:50"), journey=j, step="order_form")
    assert moments(example("absence"), [*events, on_time, end]) == [
        ("5g_upgrade.plan_no_order", at("10:50"), ("s2",))
    ]


def test_the_sequence_example_does_what_the_text_says() -> None:
    events = [ev("f1", at("10:00"), "fail"), ev("f2", at("10:30"), "fail"),
              ev("c1", at("11:45"), "contact", channel="ivr")]
    assert moments(example("sequence"), events) == [("cart.fail_then_call", at("11:45"), ("f2", "c1"))]
    assert moments(example("sequence"), [*events, ev("s", at("11:00"), "start")]) == []
