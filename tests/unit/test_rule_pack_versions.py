"""A ``--rules`` directory of versioned packs: which version is in force when, and what is refused at start-up."""

from __future__ import annotations

import calendar
import subprocess
import sys
from pathlib import Path

import pytest

import state
from state.rules import DEFAULT_PACK, RulePackError
from state.versions import load_versions
from tests.helpers import T0

_BASE = DEFAULT_PACK.read_text()


def _pack(d: Path, name: str, version: int, effective: str | int | None, idle: str = "10m", text: str = _BASE) -> Path:
    head = f"version = {version}\n" + (f"effective_from = {effective}\n" if effective is not None else "")
    body = text.replace("version = 1\n", head, 1).replace('idle = "10m"', f'idle = "{idle}"', 1)
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(body)
    return d / name


def test_the_newest_version_in_force_at_an_event_time_handles_it(tmp_path: Path) -> None:
    _pack(tmp_path, "a.toml", 1, T0)
    _pack(tmp_path, "b.toml", 3, '"2026-01-01T02:00:00Z"', idle="30m")
    _pack(tmp_path, "c.toml", 2, '"2026-01-01T01:00:00+00:00"', idle="20m")
    v = load_versions(tmp_path)
    assert [p.version for p in v.packs] == [1, 2, 3]
    hour = 3_600_000
    assert [v.pack_at(t).version for t in (T0 - 1, T0, T0 + hour - 1, T0 + hour, T0 + 2 * hour, T0 + 9 * hour)] == [
        1, 1, 1, 2, 3, 3]
    assert v.latest.version == 3
    assert v.pack_at(T0 + hour).rules[0].within_ms == 20 * 60_000
    assert v.pack_at(T0 + hour).rules[0].version == 2  # moments of that version carry rule_version 2


def test_an_older_version_effective_later_never_displaces_a_newer_one(tmp_path: Path) -> None:
    _pack(tmp_path, "a.toml", 2, T0)
    _pack(tmp_path, "b.toml", 1, T0 + 1000)
    v = load_versions(tmp_path)
    assert v.single
    assert v.pack_at(T0 + 5000).version == 2


def test_one_file_without_effective_from_is_in_force_from_the_start(tmp_path: Path) -> None:
    _pack(tmp_path, "default.toml", 1, None)
    _pack(tmp_path, "v2.toml", 2, T0, idle="20m")
    v = load_versions(tmp_path)
    assert [v.pack_at(t).version for t in (0, T0 - 1, T0)] == [1, 1, 2]


def test_a_single_file_is_one_version_in_force_always_with_the_packs_own_fingerprint() -> None:
    v = load_versions(DEFAULT_PACK)
    assert v.single
    assert v.fingerprint() == v.latest.fingerprint()  # the cluster handshake of a single file is unchanged


def test_every_bad_file_of_a_directory_is_named_with_its_field(tmp_path: Path) -> None:
    _pack(tmp_path, "a.toml", 1, T0)
    _pack(tmp_path, "b.toml", 1, '"2026-01-01T01:00:00Z"')  # the same version again
    _pack(tmp_path, "c.toml", 3, None)  # in force from the start
    _pack(tmp_path, "c2.toml", 6, None)  # a second one without effective_from
    _pack(tmp_path, "d.toml", 4, '"2026-01-01 01:00"')  # no offset
    _pack(tmp_path, "e.toml", 5, T0, idle="soon")  # an invalid parameter
    with pytest.raises(RulePackError) as e:
        load_versions(tmp_path)
    text = str(e.value)
    assert f"{tmp_path / 'b.toml'}: pack.version: version 1 is also the version of {tmp_path / 'a.toml'}" in text
    assert (f"{tmp_path / 'c2.toml'}: pack.effective_from: is required: only one file may leave it out (in force "
            f"from the start), and {tmp_path / 'c.toml'} does") in text
    assert f"{tmp_path / 'd.toml'}: pack.effective_from: needs a UTC offset" in text
    assert f"{tmp_path / 'e.toml'}: moment[0].idle" in text


def test_a_version_may_change_the_rules_but_not_the_journeys(tmp_path: Path) -> None:
    _pack(tmp_path, "a.toml", 1, T0)
    start = _BASE.index('[[moment]]\nkind = "maze"')
    _pack(tmp_path, "b.toml", 2, T0 + 1, text=_BASE[:start] + _BASE[_BASE.index("[[moment]]", start + 1):])
    v = load_versions(tmp_path)  # a version without maze: its place is kept, the rule is out of force in v2
    assert [r.name for r in v.pack_at(T0 + 1).rules if r.kind == "maze"] == []
    assert [r[0] for r in v.layout.rules] == [r.name for r in v.pack_at(T0).rules]  # v1's order, maze included
    _pack(tmp_path, "c.toml", 3, T0 + 2,
          text=_BASE.replace('"checkout", "payment"]', '"checkout", "review", "payment"]', 1))
    with pytest.raises(RulePackError) as e:
        load_versions(tmp_path)
    assert f"{tmp_path / 'c.toml'}: journey: changes the journeys of {tmp_path / 'a.toml'}" in str(e.value)


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RulePackError, match=r"\(directory\): holds no pack file"):
        load_versions(tmp_path)


def test_moments_run_exits_2_naming_the_file_and_field_of_a_bad_version(tmp_path: Path) -> None:
    _pack(tmp_path / "packs", "a.toml", 1, T0)
    _pack(tmp_path / "packs", "b.toml", 2, '"yesterday"')
    proc = subprocess.run([sys.executable, "-m", "flows.cli", "run", "--rules", str(tmp_path / "packs"), "--sink",
                           "none", "--no-metrics", "--status", "off"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"{tmp_path / 'packs' / 'b.toml'}: pack.effective_from: must be an RFC 3339 date-time" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(state.BUILD.compiled, reason="a compiled class keeps its attributes in slots, not a dict")
def test_the_batch_context_keeps_its_attributes_in_a_shared_key_dict() -> None:
    """With 30 attributes CPython 3.11 no longer shared the context's dict keys, and every ``ctx.*`` read on the hot
    path took a slower path (1.1 % more instructions per event, measured: benchmarks/RESULTS.md, s7-packs)."""
    from state.context import BatchContext

    ctx = BatchContext(load_versions(DEFAULT_PACK).latest, "k", lambda: 0, False)
    assert len(vars(ctx)) < 30, sorted(vars(ctx))


def test_versions_whose_kinds_together_need_more_state_slots_than_an_attempt_has_are_refused(tmp_path: Path) -> None:
    """v2 swaps cart's maze for browse_loop: each version fits an attempt's 5 slots, both together (maze keeps its
    slots for v1's state) do not."""
    _pack(tmp_path, "a.toml", 1, T0)
    start = _BASE.index('[[moment]]\nkind = "maze"')
    swapped = (_BASE[:start] + _BASE[_BASE.index("[[moment]]", start + 1):]
               + '\n[[moment]]\nkind = "browse_loop"\njourneys = ["cart"]\n')
    alone = _pack(tmp_path / "alone", "b.toml", 2, T0 + 1, text=swapped)
    assert load_versions(alone).single  # valid on its own
    _pack(tmp_path, "b.toml", 2, T0 + 1, text=swapped)
    with pytest.raises(RulePackError) as e:
        load_versions(tmp_path)
    assert "journey 'cart': the built-in kinds of every version" in str(e.value)
    assert "use fewer built-in kinds in that journey" in str(e.value)


@pytest.mark.parametrize("effective", ['"2039-03-08T19:46:13.411Z"', "2039-03-08T19:46:13.411Z",
                                       '"2039-03-08T20:46:13.411+01:00"'])
def test_an_effective_from_with_milliseconds_comes_into_force_at_that_very_ms(tmp_path: Path, effective: str) -> None:
    """An adversary's: the float timestamp made 19:46:13.411 come into force at .410."""
    _pack(tmp_path, "a.toml", 1, None)
    _pack(tmp_path, "b.toml", 2, effective)
    exact = calendar.timegm((2039, 3, 8, 19, 46, 13)) * 1000 + 411
    v = load_versions(tmp_path)
    assert v.packs[1].effective_from_ms == exact
    assert [v.pack_at(t).version for t in (exact - 1, exact)] == [1, 2]


@pytest.mark.parametrize("effective", ['"2039-03-08T19:46:13.4105Z"', "2039-03-08T19:46:13.410001Z",
                                       '"2039-03-08T19:46:13.4100001Z"', '"2039-03-08T19:46:13.410000000001Z"',
                                       '"2039-03-08T20:46:13.41000000000000000001+01:00"',
                                       '"2039-03-08T19:46:13.4109999999Z"'])
def test_a_sub_millisecond_effective_from_comes_into_force_at_the_next_ms(tmp_path: Path, effective: str) -> None:
    """Adversaries': .4105 was rounded down, so an event at .410 (before the instant) got the new version; then
    digits beyond the microsecond were cut before rounding up (.4100001)."""
    _pack(tmp_path, "a.toml", 1, None)
    _pack(tmp_path, "b.toml", 2, effective)
    first = calendar.timegm((2039, 3, 8, 19, 46, 13)) * 1000 + 411
    v = load_versions(tmp_path)
    assert [v.pack_at(t).version for t in (first - 1, first)] == [1, 2]


@pytest.mark.parametrize("effective", ['"20260101T000000Z"', '"2026-W01-4T00:00Z"', '"2026-01-01T00Z"',
                                       '"2026-01-01T00:00Z"', '"2026-01-01T00:00:00+0100"',
                                       '"2026-12-31T23:59:59+00:60"', '"2026-12-31T23:59:59+05:75"',
                                       '"2026-12-31T23:59:59-24:00"'])
def test_an_iso_8601_form_that_rfc_3339_lacks_is_refused_naming_file_and_field(tmp_path: Path, effective: str) -> None:
    """An adversary's: basic, week-date and hour-only forms were accepted as RFC 3339."""
    _pack(tmp_path, "a.toml", 1, None)
    _pack(tmp_path, "b.toml", 2, effective)
    with pytest.raises(RulePackError) as e:
        load_versions(tmp_path)
    assert f"{tmp_path / 'b.toml'}: pack.effective_from: must be an RFC 3339 date-time" in str(e.value)


def test_rfc_3339_forms_are_accepted_and_a_leap_second_is_refused_saying_why(tmp_path: Path) -> None:
    _pack(tmp_path, "a.toml", 1, None)
    for form in ['"2026-01-01t00:00:00z"', '"2026-01-01 00:00:00Z"', '"2026-01-01T05:30:00.000+05:30"']:
        _pack(tmp_path, "b.toml", 2, form)
        assert load_versions(tmp_path).packs[1].effective_from_ms == T0, form
    _pack(tmp_path, "b.toml", 2, '"2016-12-31T23:59:60Z"')
    with pytest.raises(RulePackError) as e:
        load_versions(tmp_path)
    assert f"{tmp_path / 'b.toml'}: pack.effective_from: is a leap second" in str(e.value)


def test_a_pack_file_named_in_upper_case_is_a_version_too(tmp_path: Path) -> None:
    """An adversary's: V2.TOML was ignored without a word."""
    _pack(tmp_path, "v1.toml", 1, None)
    _pack(tmp_path, "V2.TOML", 2, T0, idle="20m")
    assert [p.version for p in load_versions(tmp_path).packs] == [1, 2]
