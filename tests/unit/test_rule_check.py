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


def _versions(d: Path) -> Path:
    """v1: the default pack from the start; v2 from 01:00Z: maze removed, a generic rule added."""
    text = DEFAULT_PACK.read_text()
    start = text.index('[[moment]]\nkind = "maze"')
    d.mkdir()
    (d / "v1.toml").write_text(text)
    (d / "v2.toml").write_text(
        text[:start].replace("version = 1\n", 'version = 2\neffective_from = "2026-01-01T01:00:00Z"\n', 1)
        + text[text.index("[[moment]]", start + 1):]
        + '\n[[moment]]\nkind = "count"\nname = "views"\njourneys = ["cart"]\nwhen = { type = "view" }\n'
          'threshold = 3\nwithin = "30m"\nurgency = "P3"\naction = "none"\n')
    return d


def test_a_directory_of_versions_is_checked_version_by_version(capsys: pytest.CaptureFixture[str],
                                                               tmp_path: Path) -> None:
    d = _versions(tmp_path / "packs")
    assert main(["check-rules", str(d)]) == 0
    out = capsys.readouterr().out
    assert f"{d}: 2 version(s) valid together: v1 from start, v2 from 1767229200000" in out
    assert f"{d / 'v2.toml'}: v2, in force from 2026-01-01T01:00:00Z; against v1: adds cart.views; removes " \
           "5g_upgrade.maze, cart.maze" in out
    assert "rule cart.views" in out


def test_a_directory_with_a_bad_version_exits_2_naming_file_and_field(capsys: pytest.CaptureFixture[str],
                                                                     tmp_path: Path) -> None:
    d = _versions(tmp_path / "packs")
    (d / "v3.toml").write_text((d / "v1.toml").read_text().replace("version = 1\n", "version = 3\n"
                                                                   'effective_from = "tomorrow"\n', 1))
    (d / "v4.toml").write_text((d / "v1.toml").read_text().replace('idle = "10m"', 'idle = "soon"'))
    assert main(["check-rules", str(d)]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'v3.toml'}: pack.effective_from: must be an RFC 3339 date-time" in err
    assert f"{d / 'v4.toml'}: moment[0].idle: must be a duration like '10m', got 'soon'" in err


def test_a_directory_is_simulated_per_version_and_rule(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    d = _versions(tmp_path / "packs")
    assert main(["check-rules", str(d), "--simulate", *ARGS]) == 0
    out = capsys.readouterr().out
    v1, v2 = out.split(f"\nv2 ({d / 'v2.toml'}):")
    assert f"\nv1 ({d / 'v1.toml'}):" in v1
    assert _row(v1, "cart.maze")[0] > 0
    assert "cart.views" not in v1.split("simulated run")[1]
    assert _row(v2, "cart.views")[0] > 0
    assert "cart.maze " not in v2


def test_a_version_that_is_never_in_force_is_said_so_and_strict_fails(capsys: pytest.CaptureFixture[str],
                                                                      tmp_path: Path) -> None:
    """An adversary's: v5 from the start shadows v2 from 00:40 (the newest version in force wins), yet check-rules
    described v2 as in force from 00:40, removing rules that went on firing with rule_version 5."""
    d = _versions(tmp_path / "packs")
    (d / "v1.toml").write_text((d / "v1.toml").read_text().replace("version = 1\n", "version = 5\n", 1))
    assert main(["check-rules", str(d)]) == 0
    out = capsys.readouterr().out
    assert f"{d / 'v1.toml'}: v5, in force from the start" in out
    assert (f"{d / 'v2.toml'}: v2 is NEVER in force: at its own effective_from (2026-01-01T01:00:00Z) a newer "
            "version is already in force") in out
    assert "v2, in force from" not in out
    assert main(["check-rules", "--simulate", "--strict", *ARGS, str(d)]) == 1
