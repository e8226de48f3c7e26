"""Versions that add, remove and redefine rules (DESIGN.md §8): a rule's state belongs to its identity; a removed
rule's armed timer does not fire once the removal is in force; a redefined rule starts empty; a snapshot restores
under other rules."""

from __future__ import annotations

from pathlib import Path

from state.outputs import Outputs
from state.rules import DEFAULT_PACK, RulePack, load_rule_pack
from state.shard import Shard
from state.version_switch import install
from state.versions import PackVersions, RuleLayout, load_versions
from tests.helpers import MIN, T0, ev, run

_BASE = DEFAULT_PACK.read_text()
_ABSENCE = """
[[moment]]
kind = "absence"
name = "left_checkout"
journeys = ["cart"]
when = { step = "checkout" }
idle = "20m"
urgency = "P3"
action = "none"
"""
_COUNT = """
[[moment]]
kind = "count"
name = "views"
journeys = ["cart"]
when = {{ type = "view" }}
threshold = {n}
within = "60m"
urgency = "P3"
action = "none"
"""


def _pack(d: Path, name: str, version: int, effective: int, extra: str) -> RulePack:
    head = f"version = {version}\neffective_from = {effective}\n"
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(_BASE.replace("version = 1\n", head, 1) + extra)
    return load_rule_pack(d / name)


def _moments(shard: Shard, events: list[dict[str, object]]) -> list[tuple[str, str, int, int]]:
    out = run(events, shard=shard)
    return sorted((m["customer_id"], m["rule"], m["due_ts"] - T0, m["rule_version"]) for m in out.moments
                  if m["rule"] in ("cart.left_checkout", "cart.views"))


def test_a_removed_rules_timer_fires_only_when_due_before_the_removal(tmp_path: Path) -> None:
    v1 = _pack(tmp_path, "v1.toml", 1, T0, _ABSENCE)
    v2 = _pack(tmp_path, "v2.toml", 2, T0 + 30 * MIN, "")
    versions = PackVersions.of([v1, v2])
    shard = Shard(versions.latest, versions=versions)
    got = _moments(shard, [ev("a1", 5 * MIN, "submit", customer="a", step="checkout"),  # due at 25 min: fires
                           ev("b1", 15 * MIN, "submit", customer="b", step="checkout"),  # due at 35 min: removed
                           ev("end", 300 * MIN, customer="z", step="product")])
    assert got == [("a", "cart.left_checkout", 25 * MIN, 1)]


def test_an_added_rule_starts_empty_at_its_effective_time(tmp_path: Path) -> None:
    v1 = _pack(tmp_path, "v1.toml", 1, T0, "")
    v2 = _pack(tmp_path, "v2.toml", 2, T0 + 30 * MIN, _COUNT.format(n=2))
    versions = PackVersions.of([v1, v2])
    got = _moments(Shard(versions.latest, versions=versions),
                   [ev("a1", 20 * MIN, customer="a", step="product"), ev("a2", 31 * MIN, customer="a", step="product"),
                    ev("a3", 32 * MIN, customer="a", step="product"), ev("end", 300 * MIN, customer="z")])
    assert got == [("a", "cart.views", 32 * MIN, 2)]  # the view at 20 minutes came before the rule


def test_a_redefined_rule_is_a_new_rule_whose_state_starts_empty(tmp_path: Path) -> None:
    v1 = _pack(tmp_path, "v1.toml", 1, T0, _COUNT.format(n=3))
    v2 = _pack(tmp_path, "v2.toml", 2, T0 + 30 * MIN, _COUNT.format(n=2))
    versions = PackVersions.of([v1, v2])
    assert versions.layout.rules[-1] != versions.layout.rules[-2]  # two identities under one name
    got = _moments(Shard(versions.latest, versions=versions),
                   [ev("a1", 20 * MIN, customer="a", step="product"), ev("a2", 21 * MIN, customer="a", step="product"),
                    ev("a3", 31 * MIN, customer="a", step="product"), ev("a4", 32 * MIN, customer="a", step="product"),
                    ev("end", 300 * MIN, customer="z")])
    # Kept state would have fired at 31 minutes (three views, or two under v2); reset, v2 needs two views of its own.
    assert got == [("a", "cart.views", 32 * MIN, 2)]


def test_a_single_pack_keeps_its_own_layout() -> None:
    versions = load_versions(DEFAULT_PACK)
    assert versions.single
    assert versions.packs[0] is versions.in_force[0]
    assert [r.index for r in versions.latest.rules] == list(range(len(versions.latest.rules)))


def test_a_snapshot_restores_under_a_pack_with_other_rules(tmp_path: Path) -> None:
    old = load_rule_pack(DEFAULT_PACK)
    start = _BASE.index('[[moment]]\nkind = "maze"')
    (tmp_path / "new.toml").write_text(_BASE[:start] + _BASE[_BASE.index("[[moment]]", start + 1):]
                                       + _COUNT.format(n=2))
    new = load_rule_pack(tmp_path / "new.toml")
    first = Shard(old)
    run([ev("k1", 0, "submit", customer="k", step="checkout"), ev("n1", MIN, customer="n", step="product"),
         ev("f1", 2 * MIN, customer="f", step="product")], shard=first, end=False)  # f1: n1 is applied, not held
    second = Shard(new)
    second.restore(first.snapshot())
    out = run([ev("n2", 3 * MIN, customer="n", step="product"), ev("n3", 4 * MIN, customer="n", step="product"),
               ev("end", 300 * MIN, customer="z")], shard=second)
    got = sorted((m["customer_id"], m["rule"], m["due_ts"] - T0) for m in out.moments
                 if m["rule"] in ("cart.abandoned", "cart.views"))
    assert got == [("k", "cart.abandoned", 10 * MIN), ("n", "cart.views", 4 * MIN)]
    # And back: the newer snapshot restores under the old pack (the generic rule's place is kept, reacting to nothing).
    third = Shard(old)
    third.restore(second.snapshot())
    assert not third.ctx.single


def test_a_generic_rule_fires_under_every_version_that_keeps_it(tmp_path: Path) -> None:
    """An adversary's: v2, an identical copy in force from 60 min, silenced every generic rule from then on."""
    v1 = _pack(tmp_path, "v1.toml", 1, T0, _COUNT.format(n=3))
    v2 = _pack(tmp_path, "v2.toml", 2, T0 + 60 * MIN, _COUNT.format(n=3))
    versions = PackVersions.of([v1, v2])
    views = [ev(f"{c}{i}", t + i * MIN, customer=c, step="product") for c, t in (("a", 0), ("b", 61 * MIN))
             for i in range(3)]
    got = _moments(Shard(versions.latest, versions=versions), [*views, ev("end", 300 * MIN, customer="z")])
    assert got == [("a", "cart.views", 2 * MIN, 1), ("b", "cart.views", 63 * MIN, 2)]


def test_a_snapshot_restores_under_a_pack_that_adds_a_generic_rule_to_a_journey_that_has_one(tmp_path: Path) -> None:
    """An adversary's: the restored attempt's generic list had one place for two rules (IndexError, every restart)."""
    one = _pack(tmp_path / "a", "p.toml", 1, T0, _ABSENCE)
    two = _pack(tmp_path / "b", "p.toml", 1, T0, _ABSENCE + _COUNT.format(n=2))
    first = Shard(one)
    run([ev("k1", 0, "submit", customer="k", step="checkout"), ev("n1", MIN, customer="n", step="product"),
         ev("f1", 2 * MIN, customer="f", step="product")], shard=first, end=False)
    second = Shard(two)
    second.restore(first.snapshot())
    got = _moments(second, [ev("n2", 3 * MIN, customer="n", step="product"),
                            ev("n3", 4 * MIN, customer="n", step="product"), ev("end", 300 * MIN, customer="z")])
    assert got == [("k", "cart.left_checkout", 20 * MIN, 1), ("n", "cart.views", 4 * MIN, 1)]


def _without_abandoned(text: str) -> str:
    start = text.index('[[moment]]\nkind = "abandoned"')
    return text[:start] + text[text.index("[[moment]]", start + 1):]


def _three_packs(d: Path) -> tuple[RulePack, RulePack, RulePack]:
    """v1 with `abandoned`, `left_checkout` and `views`, v2 without them (from 7.5 min), v3 with them again (from
    29.5 min): the restored watermarks of the restarts below."""
    v1 = _pack(d, "v1.toml", 1, T0, _ABSENCE + _COUNT.format(n=3))
    _pack(d, "v2.toml", 2, T0 + 7 * MIN + 30_000, "")
    (d / "v2.toml").write_text(_without_abandoned((d / "v2.toml").read_text()))
    v3 = _pack(d, "v3.toml", 3, T0 + 29 * MIN + 30_000, _ABSENCE + _COUNT.format(n=3))
    return v1, load_rule_pack(d / "v2.toml"), v3


_SEGMENTS = [
    # a: key step before the removal, due (15 and 25 min) while removed; v: two views before it.
    [ev("a1", 5 * MIN, "submit", customer="a", step="checkout"), ev("v1", MIN, customer="v", step="product"),
     ev("v2", 2 * MIN, customer="v", step="product"), ev("f1", 8 * MIN, customer="f", step="product")],
    # b: key step while removed (due at 22 and 32 min: the rules are back at 29.5 min).
    [ev("b1", 12 * MIN, "submit", customer="b", step="checkout"), ev("g1", 30 * MIN, customer="g", step="product")],
    # c: key step after the rules came back; v: a third view within the hour (the window kept its first two).
    [ev("c1", 40 * MIN, "submit", customer="c", step="checkout"), ev("v3", 41 * MIN, customer="v", step="product"),
     ev("end", 300 * MIN, customer="z", step="product")],
]


def _all(outs: list[object]) -> list[tuple[str, str, int]]:
    return sorted((m["customer_id"], m["rule"], m["due_ts"] - T0) for o in outs for m in o.moments)  # type: ignore[attr-defined]


def test_a_rule_removed_at_a_restart_and_back_at_a_later_one_is_absent_between_as_with_versions(
        tmp_path: Path) -> None:
    """The restarts record the rule-set changes at their restored watermarks: the same moments as the directory of
    versions that writes the absence down (before, the rules fired for a and b after the second restart)."""
    v1, v2, v3 = _three_packs(tmp_path / "packs")
    versions = PackVersions.of([v1, v2, v3])
    want = _all([run([e for seg in _SEGMENTS for e in seg], shard=Shard(versions.latest, versions=versions))])
    outs = []
    shard = Shard(v1)
    for i, (pack, seg) in enumerate(zip((v1, v2, v3), _SEGMENTS, strict=True)):
        if i:
            restored = Shard(pack)
            restored.restore(shard.snapshot())
            shard = restored
        outs.append(run(seg, shard=shard, end=i == 2))
    got = _all(outs)
    assert got == want
    kept = [m for m in got if m[1] in ("cart.abandoned", "cart.left_checkout", "cart.views")]
    assert kept == [("c", "cart.abandoned", 50 * MIN), ("c", "cart.left_checkout", 60 * MIN),
                    ("v", "cart.views", 41 * MIN)]


def test_a_restart_records_a_rule_set_change_in_the_layout(tmp_path: Path) -> None:
    v1, v2, v3 = _three_packs(tmp_path / "packs")
    first = Shard(v1)
    run(_SEGMENTS[0], shard=first, end=False)
    saved = first.ctx.versions.layout
    assert saved.eras == ()
    assert saved.current == tuple(range(len(v1.rules)))
    second = Shard(v2)
    second.restore(first.snapshot())
    lay = second.ctx.versions.layout
    assert lay.eras == ((saved.since, saved.current),)
    assert lay.since == first.wm
    gone = {i for i, r in enumerate(lay.rules) if r[1] == "abandoned" or r[0] in ("cart.left_checkout", "cart.views")}
    assert set(lay.current) == set(saved.current) - gone
    assert lay.era_at(first.wm - 1) == frozenset(saved.current)
    assert lay.era_at(first.wm) is None
    assert RuleLayout.load(lay.dump()) == lay
    # The same rules again: no boundary, the layout is kept as it was.
    again = Shard(v2)
    again.restore(second.snapshot())
    assert again.ctx.versions.layout == lay
    assert again.rules_changed_at is None
    # A layout from before eras were recorded: every rule it holds counts as running.
    old = RuleLayout.load(lay.dump()[:4])
    assert old.eras == ()
    assert old.current == tuple(range(len(lay.rules)))


def test_restarts_in_a_row_and_a_redefined_rule_removed_and_re_added_keep_the_versions_equivalence(
        tmp_path: Path) -> None:
    """An adversary's: two changed restarts at one watermark (an era of no length), and `views` redefined (n=2), then
    removed, then back as redefined: the restarts still give the moments of the equivalent directory."""
    d = tmp_path / "packs"
    texts = [_COUNT.format(n=3), _COUNT.format(n=2), "", "", _COUNT.format(n=2)]
    segments = [
        [ev("v1", MIN, customer="v", step="product"), ev("v2", 2 * MIN, customer="v", step="product"),
         ev("f1", 8 * MIN, customer="f", step="product")],
        [],  # the next restart comes at the same watermark
        [ev("w1", 12 * MIN, customer="w", step="product"), ev("w2", 13 * MIN, customer="w", step="product"),
         ev("g1", 30 * MIN, customer="g", step="product")],
        [ev("v3", 31 * MIN, customer="v", step="product"), ev("g2", 40 * MIN, customer="g", step="product")],
        [ev("w3", 41 * MIN, customer="w", step="product"), ev("v4", 42 * MIN, customer="v", step="product"),
         ev("end", 300 * MIN, customer="z", step="product")],
    ]
    files = [_pack(d / f"p{i}", "p.toml", i + 1, T0, text) for i, text in enumerate(texts)]
    outs = []
    shard = Shard(files[0])
    bounds = []
    for i, (pack, seg) in enumerate(zip(files, segments, strict=True)):
        if i:
            restored = Shard(pack)
            restored.restore(shard.snapshot())
            bounds.append(shard.wm)
            shard = restored
        outs.append(run(seg, shard=shard, end=i == len(files) - 1))
    got = _all(outs)
    assert bounds[0] == bounds[1]  # no event between the first two restarts
    dirs = [_pack(d / "dir", f"v{i + 1}.toml", i + 1, bounds[i - 1] if i else T0, text)
            for i, text in enumerate(texts)]
    versions = PackVersions.of(dirs)
    want = _all([run([e for seg in segments for e in seg], shard=Shard(versions.latest, versions=versions))])
    assert got == want
    # The redefined rule (n=2) is in force for no time after the first restart, absent from the second, and back at
    # the fourth: it saw none of w1, w2 or v3 (the old definition's window, v1 and v2, is not its own).
    assert [m for m in got if m[1] == "cart.views"] == []


def test_a_timer_armed_before_its_rules_removal_does_not_fire_when_the_rule_is_back_by_its_due_time(
        tmp_path: Path) -> None:
    """An adversary's: v2 removed cart.abandoned and an absence rule, v3 brought them back; timers armed under v1 and
    due under v3 fired (the check looked at the version in force at the due time only)."""
    base = _BASE.replace('idle = "10m"', 'idle = "15m"', 1)  # the abandonment
    start = base.index('[[moment]]\nkind = "abandoned"')
    texts = [(1, T0, base + _ABSENCE), (2, T0 + 30 * MIN, base[:start] + base[base.index("[[moment]]", start + 1):]),
             (3, T0 + 40 * MIN, base + _ABSENCE)]
    for v, t, text in texts:
        (tmp_path / f"v{v}.toml").write_text(text.replace("version = 1\n", f"version = {v}\neffective_from = {t}\n", 1))
    versions = load_versions(tmp_path)
    out = run([ev("a1", 5 * MIN, "submit", customer="a", step="checkout"),  # due at 20 and 25 min: before v2
               ev("c1", 28 * MIN, "submit", customer="c", step="checkout"),  # due at 43 and 48 min: removed meanwhile
               ev("d1", 41 * MIN, "submit", customer="d", step="checkout"),  # armed under v3: fires
               ev("end", 300 * MIN, customer="z", step="product")], shard=Shard(versions.latest, versions=versions))
    got = sorted((m["customer_id"], m["rule"], m["due_ts"] - T0, m["rule_version"]) for m in out.moments
                 if m["rule"] in ("cart.abandoned", "cart.left_checkout"))
    assert got == [("a", "cart.abandoned", 20 * MIN, 1), ("a", "cart.left_checkout", 25 * MIN, 1),
                   ("d", "cart.abandoned", 56 * MIN, 3), ("d", "cart.left_checkout", 61 * MIN, 3)]


def test_an_absence_timer_keeps_the_version_of_its_arming_event_not_of_a_later_event(tmp_path: Path) -> None:
    """An adversary's: a view under v2 that did not disarm the timer gave its moment v2's version and urgency."""
    until = _ABSENCE.replace('idle = "20m"', 'idle = "20m"\nuntil = { type = "complete" }')
    v1 = _pack(tmp_path, "v1.toml", 1, T0, until)
    v2 = _pack(tmp_path, "v2.toml", 2, T0 + 40 * MIN, until.replace('urgency = "P3"', 'urgency = "P4"'))
    versions = PackVersions.of([v1, v2])
    out = run([ev("a1", 30 * MIN, "submit", customer="a", step="checkout"),  # arms under v1, due at 50 min
               ev("a2", 45 * MIN, customer="a", step="product"),  # under v2; does not disarm
               ev("end", 300 * MIN, customer="z", step="product")], shard=Shard(versions.latest, versions=versions))
    got = [(m["due_ts"] - T0, m["rule_version"], m["urgency"]) for m in out.moments
           if m["rule"] == "cart.left_checkout"]
    assert got == [(50 * MIN, 1, "P3")]


def test_a_versions_event_types_are_accepted_only_while_it_is_in_force(tmp_path: Path) -> None:
    """An adversary's: a type only a later version lists was accepted before that version (the shard took every
    version's types), so it re-armed an abandonment in January; installed while running, likewise."""
    v1 = _pack(tmp_path, "v1.toml", 1, T0, "")
    (tmp_path / "v2.toml").write_text('types = ["topup"]\n' + (tmp_path / "v1.toml").read_text().replace(
        "version = 1\n", "version = 2\n", 1).replace(f"effective_from = {T0}", f"effective_from = {T0 + 60 * MIN}"))
    versions = PackVersions.of([v1, load_rule_pack(tmp_path / "v2.toml")])
    events = [ev("a1", 10 * MIN, "topup", customer="a", step="checkout"),
              ev("a2", 70 * MIN, "topup", customer="a", step="checkout"), ev("end", 300 * MIN, customer="z")]
    started = Shard(versions.latest, versions=versions)
    reloaded = Shard(v1)
    install(reloaded, versions)
    for shard in (started, reloaded):
        out = run(events, shard=shard)
        assert [d["reason"] for d in out.dead] == ["unknown_type:type"]
        assert [m["due_ts"] - T0 for m in out.moments if m["rule"] == "cart.abandoned"] == [80 * MIN]



_SEG1 = [ev("w1", 0, "submit", customer="w", step="checkout"), ev("f1", 16 * MIN, customer="f", step="product")]
_SEG2 = [ev("g1", 25 * MIN, customer="g", step="product"), ev("end", 300 * MIN, customer="z", step="product")]


def _restarted(first: list[RulePack], then: list[RulePack]) -> tuple[list[tuple[str, str, int]], int]:
    """_SEG1 under the versions ``first``, a restart under ``then`` for _SEG2: the absence rule's moments and the
    restored watermark."""
    one, two = PackVersions.of(first), PackVersions.of(then)
    shard = Shard(one.latest, versions=one)
    out1 = run(_SEG1, shard=shard, end=False)
    restored = Shard(two.latest, versions=two)
    restored.restore(shard.snapshot())
    got = _all([out1, run(_SEG2, shard=restored)])
    return [m for m in got if m[1] == "cart.left_checkout"], shard.wm


def _in_one_go(packs: list[RulePack]) -> list[tuple[str, str, int]]:
    versions = PackVersions.of(packs)
    got = _all([run(_SEG1 + _SEG2, shard=Shard(versions.latest, versions=versions))])
    return [m for m in got if m[1] == "cart.left_checkout"]


def test_a_removal_by_a_version_of_the_run_before_a_restart_still_counts_when_the_restart_brings_the_rule_back(
        tmp_path: Path) -> None:
    """An adversary's: the snapshot recorded the earlier run's rules all together, not when each was in force, so a
    rule its v2 removed (at 10 min) and the restart's pack had again fired a timer armed before the removal."""
    first = [_pack(tmp_path / "d", "v1.toml", 1, T0, _ABSENCE), _pack(tmp_path / "d", "v2.toml", 2, T0 + 10 * MIN, "")]
    got, w = _restarted(first, [_pack(tmp_path / "p", "p.toml", 1, T0, _ABSENCE)])
    eq = tmp_path / "eq"
    want = _in_one_go([_pack(eq, "v1.toml", 1, T0, _ABSENCE), _pack(eq, "v2.toml", 2, T0 + 10 * MIN, ""),
                       _pack(eq, "v3.toml", 3, w, _ABSENCE)])
    assert got == want == []  # armed at 0, due at 20 min: the rule was absent from 10 min to the restart


def test_a_rule_the_earlier_run_had_keeps_its_timer_when_the_restarts_directory_adds_it_by_a_later_version(
        tmp_path: Path) -> None:
    """An adversary's: the earlier run had cart.abandoned and an absence rule throughout; the restart's directory
    lacks them in its v1 and adds them by v2 (before the restored watermark). Their timers armed at 0 were lost: the
    version in force at the arming had no such rule. They fire, with v2's parameters and version."""
    first = _pack(tmp_path / "p", "p.toml", 1, T0, _ABSENCE)
    d = tmp_path / "d"
    _pack(d, "v1.toml", 1, T0, "")
    (d / "v1.toml").write_text(_without_abandoned((d / "v1.toml").read_text()))
    v2 = _pack(d, "v2.toml", 2, T0 + MIN, _ABSENCE)
    got, w = _restarted([first], [load_rule_pack(d / "v1.toml"), v2])
    assert w > T0 + MIN  # the restart's v2 was in force from before the boundary on: no gap
    assert got == _in_one_go([first]) == [("w", "cart.left_checkout", 20 * MIN)]
    out = _w_then_restart(PackVersions.of([first]), PackVersions.of([load_rule_pack(d / "v1.toml"), v2]), 5 * MIN)
    fired = sorted((m["customer_id"], m["rule"], m["due_ts"] - T0, m["rule_version"]) for m in out.moments
                   if m["customer_id"] == "w")
    assert fired == [("w", "cart.abandoned", 10 * MIN, 2), ("w", "cart.left_checkout", 20 * MIN, 2)]


def _w_then_restart(one: PackVersions, two: PackVersions, until: int) -> Outputs:
    """w at checkout at 0 and another customer at ``until`` under ``one``; a restart under ``two`` to the end: the
    restarted run's outputs."""
    shard = Shard(one.latest, versions=one)
    run([ev("w1", 0, "submit", customer="w", step="checkout"), ev("f1", until, customer="f", step="product")],
        shard=shard, end=False)
    restored = Shard(two.latest, versions=two)
    restored.restore(shard.snapshot())
    return run([ev("end", 300 * MIN, customer="z", step="product")], shard=restored)


def _abandoned_idle(d: Path, name: str, version: int, effective: int, idle: str | None) -> RulePack:
    """The default pack with cart.abandoned's idle at ``idle`` (None: without cart.abandoned)."""
    _pack(d, name, version, effective, "")
    text = (d / name).read_text()
    text = _without_abandoned(text) if idle is None else text.replace('idle = "10m"', f'idle = "{idle}"', 1)
    (d / name).write_text(text)
    return load_rule_pack(d / name)


def test_a_rule_the_restart_removes_fires_no_timer_whatever_idle_another_version_gives_it(tmp_path: Path) -> None:
    """An adversary's: the earlier run had cart.abandoned (40 min); the restart's directory lacks it at the
    boundary. Its definition was taken from another version (5 min, before or after the boundary), so the timer
    armed at 0 fell due at 5 min and fired at the restore, with a version not in force then."""
    first = PackVersions.of([_abandoned_idle(tmp_path / "p", "p.toml", 1, T0, "40m")])
    cases = {"removed before the arming": (T0 - 60 * MIN, "5m", T0 - 30 * MIN, None),
             "added after the boundary": (T0 - 60 * MIN, None, T0 + 30 * MIN, "5m")}
    for case, (e1, idle1, e2, idle2) in cases.items():
        d = tmp_path / case.replace(" ", "_")
        two = PackVersions.of([_abandoned_idle(d, "v1.toml", 1, e1, idle1),
                               _abandoned_idle(d, "v2.toml", 2, e2, idle2)])
        out = _w_then_restart(first, two, 16 * MIN)
        assert [m for m in out.moments if m["customer_id"] == "w"] == [], case
