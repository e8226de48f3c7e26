"""``moments check-rules --simulate``: per-rule counts from a simulated run; dead rules flagged, --strict fails."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.cli import main
from flows.rule_check import NEVER_ACTS, NEVER_FIRES, simulate_rules
from state.rules import DEFAULT_PACK, load_rule_pack

ARGS = ["--customers", "600", "--minutes", "120", "--seed", "3"]


def _row(out: str, rule: str) -> tuple[int, int, int, str]:
    """(fired, sent, control, rest of the line) of a rule's row in the table."""
    m = re.search(rf"^  {re.escape(rule)} +P\d +(\d+) +(\d+) +(\d+)  (.*)$", out, re.M)
    assert m is not None, out
    return int(m[1]), int(m[2]), int(m[3]), m[4]


def _pack(tmp_path: Path, *edits: tuple[str, str]) -> Path:
    text = DEFAULT_PACK.read_text()
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "pack.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_default_pack_has_no_dead_rule_and_stuck_acts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-rules", "--simulate", "--strict", *ARGS]) == 0
    out = capsys.readouterr().out
    for rule in (r.name for r in load_rule_pack().rules):
        fired, sent, control, rest = _row(out, rule)
        assert fired > 0, rule
        assert sent + control > 0, rule
        assert "<-" not in rest
    assert _row(out, "cart.stuck")[1] > 0


def test_a_rule_that_can_never_fire_is_flagged_and_strict_fails(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    # Fifty failures within 30 minutes: no simulated customer gets there.
    path = _pack(tmp_path, ("threshold = 3", "threshold = 50"))
    assert main(["check-rules", str(path), "--simulate", *ARGS]) == 0  # a report, not a failure, without --strict
    out = capsys.readouterr().out
    assert _row(out, "cart.stuck")[:3] == (0, 0, 0)
    assert _row(out, "cart.stuck")[3].endswith(f"<- {NEVER_FIRES.upper()}")
    assert f"rule cart.stuck {NEVER_FIRES} on this traffic" in out
    assert main(["check-rules", str(path), "--simulate", "--strict", *ARGS]) == 1
    captured = capsys.readouterr()
    assert "check-rules --strict: 2 of 14 rules never fire or never act" in captured.err


def test_a_rule_whose_every_moment_the_policy_suppresses_is_flagged(tmp_path: Path) -> None:
    # Without escalation every stuck moment falls within the min_gap the `failed` action opened.
    pack = load_rule_pack(_pack(tmp_path, ("escalate = true", "escalate = false")))
    _events, runs = simulate_rules(pack, 600, 120, 3)
    stuck = {r.rule: r for r in runs}["cart.stuck"]
    assert stuck.fired > 0
    assert (stuck.sent, stuck.control) == (0, 0)
    assert set(stuck.suppressed) == {"min_gap"}
    assert stuck.flag == NEVER_ACTS


def test_strict_without_simulate_is_refused_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-rules", "--strict"]) == 2
    err = capsys.readouterr().err
    assert "--strict" in err
    assert "needs --simulate" in err
