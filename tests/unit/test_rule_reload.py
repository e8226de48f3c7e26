"""A ``--rules`` directory changed while running: what the reloader accepts, refuses, and how it reports it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from flows.rule_reload import APPLIED, INVALID, MARGIN_MS, REPLAY, TOO_LATE, UNCHANGED, RuleReloader, directory_state
from state.batches import RawBatch, Tick
from state.rule_model import RulePackError
from state.rules import DEFAULT_PACK, MAX_PACK_BYTES
from state.shard import Shard, process
from state.version_switch import install
from state.versions import load_versions
from tests.helpers import MIN, T0, ev, raws

_BASE = DEFAULT_PACK.read_text()


def _write(d: Path, name: str, version: int, effective: int | None, idle: str = "10m", text: str = _BASE) -> None:
    head = f"version = {version}\n" + (f"effective_from = {effective}\n" if effective is not None else "")
    (d / name).write_text(text.replace("version = 1\n", head, 1).replace('idle = "10m"', f'idle = "{idle}"', 1))


def _reloader(tmp_path: Path, live: bool = True, now: int = T0) -> tuple[RuleReloader, list[str]]:
    """A reloader whose wall clock stands at ``now``."""
    _write(tmp_path, "default.toml", 1, None)
    seen: list[str] = []
    return RuleReloader(tmp_path, load_versions(tmp_path), live, seen.append, clock=lambda: now), seen


def test_nothing_changed_is_no_reload(tmp_path: Path) -> None:
    r, seen = _reloader(tmp_path)
    assert r.check() is None
    assert (r.generation, seen) == (0, [])


def test_an_invalid_file_keeps_the_versions_in_force_and_is_logged_with_file_and_field(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r, seen = _reloader(tmp_path)
    before = r.current
    _write(tmp_path, "v2.toml", 2, T0, idle="ten")
    with caplog.at_level(logging.ERROR, "cx.rules"):
        assert r.check() == INVALID
    assert r.current is before
    assert r.generation == 0
    assert seen == [INVALID]
    assert f"{tmp_path / 'v2.toml'}: moment[0].idle: must be a duration" in caplog.text
    assert r.check() is None  # judged once per change, not at every poll


def test_removing_a_refused_file_is_counted_unchanged_not_applied(tmp_path: Path) -> None:
    r, seen = _reloader(tmp_path)
    before = r.current
    _write(tmp_path, "v2.toml", 2, T0, idle="ten")
    assert r.check() == INVALID
    (tmp_path / "v2.toml").unlink()
    assert r.check() == UNCHANGED
    (tmp_path / "default.toml").write_text((tmp_path / "default.toml").read_text() + "\n# touched\n")
    assert r.check() == UNCHANGED
    assert (r.current, r.generation, seen) == (before, 0, [INVALID, UNCHANGED, UNCHANGED])


@pytest.mark.parametrize("edit", [("max_per_day = 2", "max_per_day = 5"), ("[pack]", 'types = ["topup"]\n[pack]'),
                                  ("[[moment]]\nkind = \"failed\"", "[[moment]]\nkind = \"failed\"\nholdout = 0.5")])
def test_live_a_change_of_types_or_policy_in_the_version_in_force_is_too_late(tmp_path: Path,
                                                                              edit: tuple[str, str]) -> None:
    """An adversary's: a changed hold-out, policy or event type of the version in force was applied at once (the
    comparison left them out), rewriting what was in force; the same edit as a later version is applied."""
    r, seen = _reloader(tmp_path)
    r.note_watermark(T0 + 60 * MIN)
    assert edit[0] in _BASE
    _write(tmp_path, "default.toml", 1, None, text=_BASE.replace(*edit, 1))
    assert r.check() == TOO_LATE
    _write(tmp_path, "default.toml", 1, None)
    _write(tmp_path, "v2.toml", 2, T0 + 61 * MIN, text=_BASE.replace(*edit, 1))
    assert r.check() == APPLIED
    assert seen == [TOO_LATE, APPLIED]


def test_a_version_may_change_the_rules_and_one_that_changes_the_journeys_is_refused(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r, _seen = _reloader(tmp_path)
    start = _BASE.index('[[moment]]\nkind = "maze"')
    _write(tmp_path, "v2.toml", 2, T0 + MIN, text=_BASE[:start] + _BASE[_BASE.index("[[moment]]", start + 1):])
    assert r.check() == APPLIED
    assert not [x for x in r.current.pack_at(T0 + MIN).rules if x.kind == "maze"]
    _write(tmp_path, "v3.toml", 3, T0 + 2 * MIN, text=_BASE.replace('"checkout", "payment"]',
                                                              '"checkout", "review", "payment"]', 1))
    with caplog.at_level(logging.ERROR, "cx.rules"):
        assert r.check() == INVALID
    assert f"{tmp_path / 'v3.toml'}: journey: changes the journeys of" in caplog.text


def test_live_a_version_effective_behind_the_watermark_is_refused_and_one_ahead_applied(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r, seen = _reloader(tmp_path)
    r.note_watermark(T0 + 60 * MIN)
    _write(tmp_path, "v2.toml", 2, T0 + 59 * MIN, idle="20m")
    with caplog.at_level(logging.ERROR, "cx.rules"):
        assert r.check() == TOO_LATE
    assert f"{tmp_path / 'v2.toml'}: pack.effective_from: lies before the wall clock plus 10 s" in caplog.text
    _write(tmp_path, "v2.toml", 2, T0 + 61 * MIN, idle="20m")
    assert r.check() == APPLIED
    assert r.generation == 1
    assert r.current.pack_at(T0 + 61 * MIN).version == 2
    assert seen == [TOO_LATE, APPLIED]


def test_processes_at_different_watermarks_decide_alike_by_the_wall_clock(tmp_path: Path) -> None:
    """A process behind on a backlog (its watermark an hour back) and one up to date judge a change alike: by the
    wall clock and the margin, not each by its own watermark (which split the cluster into two rule sets)."""
    now = T0 + 120 * MIN
    for effective, want in ((now + MARGIN_MS // 2, TOO_LATE), (now + MARGIN_MS, APPLIED)):
        results = []
        for name, wm in (("behind", now - 60 * MIN), ("current", now - 1_000)):
            d = tmp_path / f"{name}{effective}"
            d.mkdir()
            r, _seen = _reloader(d, now=now)
            r.note_watermark(wm)
            _write(d, "v2.toml", 2, effective, idle="20m")
            results.append(r.check())
        assert results == [want, want], effective


def test_a_replay_refuses_every_change_of_the_directory(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    r, seen = _reloader(tmp_path, live=False)
    before = r.current
    _write(tmp_path, "v2.toml", 2, T0 + 600 * MIN, idle="20m")  # even one ahead of everything
    with caplog.at_level(logging.ERROR, "cx.rules"):
        assert r.check() == REPLAY
    assert r.current is before
    assert r.generation == 0
    assert seen == [REPLAY]
    assert f"{tmp_path}: a replay (--clock replay) reads the --rules directory once, at start" in caplog.text


def test_versions_that_rewrite_history_make_the_shard_recompute_its_wake_ups(tmp_path: Path) -> None:
    r, _seen = _reloader(tmp_path, live=True)
    shard = Shard(r.current.latest, versions=r.current)
    # k leaves checkout at 0 (idle 10m under v1); the watermark passes 0 but not 10m.
    process(shard, [RawBatch("t", 0, raws([ev("k1", 0, "submit", customer="k", step="checkout"),
                                             ev("f1", 2 * MIN, customer="f")]), [0, 1])])
    _write(tmp_path, "v2.toml", 2, T0 - MIN, idle="20m")  # in force before k1: its abandonment moves to 20m
    assert install(shard, load_versions(tmp_path))  # (the reloader refuses that; a shard handles it all the same)
    out = process(shard, [RawBatch("t", 0, raws([ev("f2", 60 * MIN, customer="f")]), [2]), Tick(0, final=True)])
    got = [(m["rule"], m["due_ts"], m["rule_version"]) for m in out.moments if m["kind"] == "abandoned"]
    assert got == [("cart.abandoned", T0 + 20 * MIN, 2)]


@pytest.mark.parametrize("kind", ["fifo", "broken link", "directory"])
def test_a_pack_name_that_is_not_a_regular_file_is_reported_at_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str) -> None:
    """An adversary's: added while running, it went unnoticed (no log, no count) until a later valid change was
    refused naming it; start-up refuses the same directory."""
    r, seen = _reloader(tmp_path)
    before = r.current
    bad = tmp_path / "v2.toml"
    if kind == "fifo":
        os.mkfifo(bad)
    elif kind == "broken link":
        bad.symlink_to(tmp_path / "missing.toml")
    else:
        bad.mkdir()
    with caplog.at_level(logging.ERROR, "cx.rules"):
        assert r.check() == INVALID
    assert seen == [INVALID]
    assert r.current is before
    assert f"{bad}: (file): is not a regular file" in caplog.text


def test_a_pack_file_named_in_upper_case_added_while_running_is_picked_up(tmp_path: Path) -> None:
    r, seen = _reloader(tmp_path)
    _write(tmp_path, "V2.TOML", 2, T0 + MIN, idle="20m")
    assert r.check() == APPLIED
    assert r.current.pack_at(T0 + MIN).version == 2


def test_hidden_names_are_not_versions_at_start_up_nor_while_running(tmp_path: Path) -> None:
    """An adversary's: an editor's lock file `.#v1.toml` (a broken link) made start-up refuse the directory, and a
    hidden `.v3.toml` was loaded as a version."""
    (tmp_path / ".#default.toml").symlink_to("user@host.1234:1700000000")
    _write(tmp_path, ".v3.toml", 3, T0, idle="20m")
    r, seen = _reloader(tmp_path)
    assert [p.version for p in r.current.packs] == [1]
    _write(tmp_path, ".v4.toml", 4, T0 + 61 * MIN, idle="30m")
    (tmp_path / ".#default.toml").unlink()
    assert r.check() is None
    assert seen == []


def test_a_pack_file_too_large_is_refused_naming_it_and_not_read_at_every_poll(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An adversary's: a 400 MB *.toml took 10 s and 860 MB to refuse at start-up, and while running was read and
    hashed in full every 2 s."""
    r, seen = _reloader(tmp_path)
    big = tmp_path / "zz.toml"
    with big.open("wb") as f:
        f.truncate(MAX_PACK_BYTES + 1)  # sparse: no disk used
    with caplog.at_level(logging.ERROR, "cx.rules"):
        assert r.check() == INVALID
    assert f"{big}: (file): is {MAX_PACK_BYTES + 1} bytes; a pack file may have at most {MAX_PACK_BYTES}" in caplog.text
    assert "(too large" in dict(directory_state(tmp_path))["zz.toml"]
    with pytest.raises(RulePackError, match="a pack file may have at most"):
        load_versions(tmp_path)
    assert seen == [INVALID]


def test_an_edit_of_the_version_in_force_is_refused_saying_so(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """An adversary's: an edited hold-out of a file without effective_from was refused naming that absent field."""
    r, _seen = _reloader(tmp_path)
    _write(tmp_path, "default.toml", 1, None, text=_BASE.replace("max_per_day = 2", "max_per_day = 3", 1))
    with caplog.at_level(logging.ERROR, "cx.rules"):
        assert r.check() == TOO_LATE
    assert f"{tmp_path / 'default.toml'}: (file): edits version 1, in force" in caplog.text
    assert "put the change in a new version" in caplog.text


def test_an_unreadable_directory_is_logged_once_until_it_is_readable_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tmp_path / "rules"
    d.mkdir()
    r, seen = _reloader(d)
    hidden = tmp_path / "elsewhere"
    with caplog.at_level(logging.INFO, "cx.rules"):
        d.rename(hidden)
        assert [r.check() for _ in range(3)] == [None, None, None]  # three polls
        assert caplog.text.count("cannot be read") == 1
        hidden.rename(d)
        assert r.check() is None  # the same files: nothing to judge
        assert "can be read again" in caplog.text
        d.rename(hidden)
        assert r.check() is None
        assert caplog.text.count("cannot be read") == 2  # a new spell of it is logged again
    assert (r.generation, seen) == (0, [])
