"""The traffic simulator: determinism, schema, ordering, laziness, scenario coverage and its reference detector."""

from __future__ import annotations

import collections
import hashlib
import inspect
import itertools
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from connectors.simulator import (
    DEFAULT_START_MS,
    KINDS,
    SCENARIOS,
    Simulation,
    pack,
    reference_moments,
    simulate,
    write_jsonl,
)

ROOT = Path(__file__).resolve().parents[2]
MIN = 60_000
HOUR = 60 * MIN
T0 = DEFAULT_START_MS
DESIGN_CHANNELS = {"app", "web", "wechat", "ivr", "sms", "call_center", "store", "email", "other"}
DESIGN_TYPES = {"view", "start", "submit", "complete", "fail", "cancel", "contact", "engage", "feedback"}


@pytest.fixture(scope="module")
def sim() -> Simulation:
    """2,000 customers starting over two hours."""
    return simulate(2_000, 120, seed=7)


@pytest.fixture(scope="module")
def events(sim: Simulation) -> list[dict[str, Any]]:
    """The simulation's events, materialised once for the module."""
    return list(sim.events())


@pytest.fixture(scope="module")
def truth(sim: Simulation) -> list[dict[str, Any]]:
    """The simulation's ground truth."""
    return sim.ground_truth()


def ev(eid: str, offset_ms: int, type_: str = "view", *, customer: str = "c1", channel: str = "app",
       journey: str | None = "cart", step: str | None = None, entry: str | None = None) -> dict[str, Any]:
    """A hand-written event ``offset_ms`` after T0."""
    d: dict[str, Any] = {"event_id": eid, "customer_id": customer, "ts": T0 + offset_ms, "channel": channel,
                         "type": type_}
    for k, v in (("journey", journey), ("step", step), ("entry", entry)):
        if v is not None:
            d[k] = v
    return d


def rules(moments: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(rule, anchor event id) of each moment, sorted."""
    return sorted((m["rule"], m["anchor_event_id"]) for m in moments)


# Determinism


def test_same_arguments_give_byte_identical_files(tmp_path: Path) -> None:
    sims = [simulate(300, 30, seed=5) for _ in range(2)]
    for i, s in enumerate(sims):
        assert write_jsonl(s, tmp_path / f"ev{i}.jsonl", tmp_path / f"truth{i}.jsonl") > 0
    assert (tmp_path / "ev0.jsonl").read_bytes() == (tmp_path / "ev1.jsonl").read_bytes()
    assert (tmp_path / "truth0.jsonl").read_bytes() == (tmp_path / "truth1.jsonl").read_bytes()


def test_same_arguments_give_identical_output_in_another_process_with_another_hash_seed() -> None:
    code = ("import hashlib, orjson; from connectors.simulator import simulate; s = simulate(200, 20, 3); "
            "h = hashlib.sha256(); [h.update(orjson.dumps(e)) for e in s.events()]; "
            "h.update(orjson.dumps(s.ground_truth())); print(h.hexdigest())")

    def digest(hash_seed: str) -> str:
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60, check=True)
        return out.stdout.strip()

    import orjson

    here = hashlib.sha256()
    s = simulate(200, 20, 3)
    for e in s.events():
        here.update(orjson.dumps(e))
    here.update(orjson.dumps(s.ground_truth()))
    assert digest("1") == digest("987") == here.hexdigest()


def test_different_seeds_give_different_events() -> None:
    a = list(itertools.islice(simulate(300, 30, seed=1).events(), 200))
    b = list(itertools.islice(simulate(300, 30, seed=2).events(), 200))
    assert [(e["ts"], e["type"], e["channel"]) for e in a] != [(e["ts"], e["type"], e["channel"]) for e in b]


def test_events_are_regenerated_identically_on_each_call(sim: Simulation, events: list[dict[str, Any]]) -> None:
    assert list(itertools.islice(sim.events(), 500)) == events[:500]


# Shape of the stream


def test_events_are_sorted_by_time_then_event_id(events: list[dict[str, Any]]) -> None:
    keys = [(e["ts"], e["event_id"]) for e in events]
    assert keys == sorted(keys)


def test_event_ids_are_unique(events: list[dict[str, Any]]) -> None:
    assert len({e["event_id"] for e in events}) == len(events)


def test_events_follow_schema_v1(events: list[dict[str, Any]]) -> None:
    optional = {"journey", "step", "entry", "attrs"}
    for e in events:
        assert {"event_id", "customer_id", "ts", "channel", "type"} <= e.keys() <= {
            "event_id", "customer_id", "ts", "channel", "type", *optional}, e
        assert isinstance(e["event_id"], str)
        assert 0 < len(e["event_id"]) <= 128
        assert isinstance(e["customer_id"], str)
        assert e["customer_id"].startswith("c")
        assert type(e["ts"]) is int
        assert e["ts"] >= DEFAULT_START_MS
        assert e["channel"] in DESIGN_CHANNELS
        assert e["type"] in DESIGN_TYPES
        for k in ("journey", "step", "entry"):
            assert k not in e or (isinstance(e[k], str) and e[k]), e
        if "attrs" in e:
            assert isinstance(e["attrs"], dict)
            assert 0 < len(e["attrs"]) <= 32
            assert all(isinstance(v, str | int | float | bool) for v in e["attrs"].values())


def test_events_pass_the_pipelines_validation(events: list[dict[str, Any]]) -> None:
    import orjson

    from state.events import Event, parse_event

    bad = [e for e in events if not isinstance(parse_event(orjson.dumps(e)), Event)]
    assert bad == []


def test_all_channels_and_both_journeys_occur(events: list[dict[str, Any]]) -> None:
    assert {e["channel"] for e in events} == set(pack.CHANNELS)
    assert {e.get("journey") for e in events} == {None, "5g_upgrade", "cart"}


def test_customers_average_eight_to_fifteen_events(events: list[dict[str, Any]]) -> None:
    per_customer = collections.Counter(e["customer_id"] for e in events)
    assert len(per_customer) == 2_000
    assert 8 <= len(events) / len(per_customer) <= 15


def test_customers_start_spread_over_the_window(events: list[dict[str, Any]]) -> None:
    first: dict[str, int] = {}
    for e in events:
        first.setdefault(e["customer_id"], e["ts"])
    starts = sorted(first.values())
    assert T0 <= starts[0]
    assert starts[-1] < T0 + 120 * MIN
    # Each half-hour of the window gets about a quarter of the customers.
    quarters = collections.Counter((t - T0) // (30 * MIN) for t in starts)
    assert all(450 <= quarters[q] <= 550 for q in range(4)), quarters


def test_events_is_a_lazy_generator_for_a_million_events(monkeypatch: pytest.MonkeyPatch) -> None:
    big = simulate(100_000, 120, seed=1)  # about a million events
    made: list[int] = []
    original = Simulation._customer

    def counting(self: Simulation, c: int) -> Any:
        made.append(c)
        return original(self, c)

    monkeypatch.setattr(Simulation, "_customer", counting)
    stream = big.events()
    assert inspect.isgenerator(stream)
    head = list(itertools.islice(stream, 1_000))
    assert len(head) == 1_000
    # Only customers that have started by the 1,000th event were written, not the 100,000.
    assert len(made) < 5_000


def test_write_jsonl_returns_the_event_count_and_writes_the_truth(tmp_path: Path) -> None:
    import orjson

    s = simulate(200, 10, seed=4)
    n = write_jsonl(s, tmp_path / "ev.jsonl", tmp_path / "truth.jsonl")
    lines = (tmp_path / "ev.jsonl").read_bytes().splitlines()
    assert n == len(lines) == sum(1 for _ in s.events())
    assert [orjson.loads(x) for x in lines[:50]] == list(itertools.islice(s.events(), 50))
    truth = [orjson.loads(x) for x in (tmp_path / "truth.jsonl").read_bytes().splitlines()]
    assert truth == s.ground_truth()
    assert write_jsonl(s, tmp_path / "only.jsonl") == n
    assert not (tmp_path / "none.jsonl").exists()


def test_simulate_rejects_non_positive_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        simulate(0, 10, 1)
    with pytest.raises(ValueError, match="positive"):
        simulate(10, 0, 1)


# Scenarios and ground truth


def test_every_scenario_occurs_among_a_few_hundred_customers() -> None:
    s = simulate(300, 60, seed=8)
    assert {c.scenario for c, _ in s._customers()} == set(SCENARIOS)


def test_ground_truth_holds_every_moment_kind_of_both_journeys(truth: list[dict[str, Any]]) -> None:
    assert {m["rule"] for m in truth} == {f"{j}.{k}" for j in pack.JOURNEYS for k in KINDS}
    assert all(set(m) == {"customer_id", "rule", "anchor_event_id", "due_ts"} for m in truth)


def test_ground_truth_anchors_are_events_of_the_customer(events: list[dict[str, Any]],
                                                         truth: list[dict[str, Any]]) -> None:
    by_id = {e["event_id"]: e for e in events}
    for m in truth:
        anchor = by_id[m["anchor_event_id"]]
        assert anchor["customer_id"] == m["customer_id"]
        idle = pack.ABANDON_IDLE_MS if m["rule"].endswith(".abandoned") else 0
        assert m["due_ts"] == anchor["ts"] + idle


def test_ground_truth_is_the_reference_detector_over_the_whole_stream(events: list[dict[str, Any]],
                                                                      truth: list[dict[str, Any]]) -> None:
    assert reference_moments(events) == truth


def test_each_scenario_causes_the_moments_it_plants(sim: Simulation) -> None:
    kinds_by_scenario: dict[str, set[str]] = collections.defaultdict(set)
    for cust, offset in sim._customers():
        # An unbounded end of input: every pending abandonment counts.
        found = {m["rule"].split(".")[1] for m in reference_moments(sim._docs(cust, offset), end_ts=2**62)}
        assert cust.intended <= found, (cust.scenario, cust.variant, cust.intended, found)
        if cust.scenario in ("browse", "edge"):
            # Browsing triggers nothing; boundary cases trigger exactly their edge.
            assert found == cust.intended, (cust.scenario, cust.variant, found)
        kinds_by_scenario[cust.scenario] |= found
    assert kinds_by_scenario["browse"] == set()
    assert all(kinds_by_scenario[s] for s in SCENARIOS if s != "browse")


def test_incidental_moments_are_in_the_truth(sim: Simulation, truth: list[dict[str, Any]]) -> None:
    planted = {cust.customer_id: len(cust.intended) for cust, _ in sim._customers()}
    found = collections.Counter(m["customer_id"] for m in truth)
    # Some customers cause more than they were scripted for (a second device, giving up after an error).
    assert sum(1 for cid, n in found.items() if n > planted[cid]) > 100


def test_ground_truth_leaves_out_only_abandonments_due_after_the_last_event() -> None:
    truncated = 0
    for seed in range(1_000):
        s = simulate(1, 1, seed)
        evs = list(s.events())
        truth = s.ground_truth()
        unbounded = reference_moments(evs, end_ts=2**62)
        left_out = [m for m in unbounded if m not in truth]
        assert [m for m in truth if m not in unbounded] == []
        assert all(m["rule"].endswith(".abandoned") and m["due_ts"] > evs[-1]["ts"] for m in left_out)
        truncated += len(left_out)
    assert truncated > 0


def test_ground_truth_matches_the_pipeline_state_machine() -> None:
    from state.moments import moment_id
    from tests.helpers import run

    s = simulate(600, 45, seed=13)
    out = run(list(s.events()))
    got = {(m["moment_id"], m["due_ts"]) for m in out.moments}
    expected = {(moment_id(t["customer_id"], t["rule"], t["anchor_event_id"]), t["due_ts"]) for t in s.ground_truth()}
    assert got == expected


def test_default_pack_parameters_match_the_shipped_rule_pack() -> None:
    toml = tomllib.loads((ROOT / "flows" / "rulepacks" / "default.toml").read_text())
    assert {j["id"]: tuple(j["steps"]) for j in toml["journey"]} == pack.JOURNEYS
    assert {j["id"]: frozenset(j["key_steps"]) for j in toml["journey"]} == pack.KEY_STEPS
    assert {j["complete_type"] for j in toml["journey"]} == {pack.COMPLETE_TYPE}
    assert toml["pack"]["attempt_timeout"] == "24h"
    m = {r["kind"]: r for r in toml["moment"]}
    assert set(m) == set(KINDS)
    assert (m["abandoned"]["idle"], m["stuck"]["threshold"], m["stuck"]["within"]) == ("10m", 3, "30m")
    assert (m["maze"]["distinct_entries"], m["maze"]["within"]) == (3, "30m")
    assert (m["channel_hop"]["distinct_channels"], m["channel_hop"]["within"]) == (3, "60m")
    assert (m["interested"]["count"], m["interested"]["within"], m["interested"]["no_intent_within"]) == \
        (2, "24h", "24h")
    assert (m["handoff"]["channel"], m["handoff"]["type"], m["handoff"]["within"]) == ("call_center", "contact", "30m")


# The reference detector on hand-written events


def test_reference_abandonment_is_prevented_by_an_event_just_before_the_idle_time() -> None:
    evs = [ev("k", 0, "submit", step="checkout"), ev("n", 10 * MIN - 1, "submit", step="cart")]
    assert reference_moments(evs, end_ts=T0 + HOUR) == []


def test_reference_abandonment_fires_when_the_next_event_is_exactly_at_the_idle_time() -> None:
    evs = [ev("k", 0, "submit", step="checkout"), ev("n", 10 * MIN, "submit", step="cart")]
    assert reference_moments(evs, end_ts=T0 + HOUR) == [
        {"customer_id": "c1", "rule": "cart.abandoned", "anchor_event_id": "k", "due_ts": T0 + 10 * MIN}]


def test_reference_abandonment_at_end_of_input_needs_its_due_time_reached() -> None:
    evs = [ev("k", 0, "submit", step="payment"), ev("x", 10 * MIN - 1, customer="c2", journey=None)]
    assert reference_moments(evs) == []  # due 1 ms after the largest event time
    assert rules(reference_moments(evs, end_ts=T0 + 10 * MIN)) == [("cart.abandoned", "k")]


def test_reference_abandonment_anchors_on_the_latest_key_step_and_not_after_a_completion() -> None:
    evs = [ev("a", 0, "submit", step="checkout"), ev("b", MIN, "view", step="payment")]
    assert rules(reference_moments(evs, end_ts=T0 + HOUR)) == [("cart.abandoned", "b")]
    done = [*evs, ev("c", 2 * MIN, "complete", step="payment")]
    assert reference_moments(done, end_ts=T0 + HOUR) == []
    left = [*evs, ev("c", 2 * MIN, "view", step="cart")]
    assert reference_moments(left, end_ts=T0 + HOUR) == []


def test_reference_stuck_fires_when_the_third_fail_is_exactly_thirty_minutes_after_the_first() -> None:
    evs = [ev("f1", 0, "fail", step="cart"), ev("f2", 15 * MIN, "fail", step="cart"),
           ev("f3", 30 * MIN, "fail", step="cart")]
    assert rules(reference_moments(evs)) == [("cart.failed", "f1"), ("cart.stuck", "f3")]


def test_reference_stuck_does_not_fire_one_millisecond_past_thirty_minutes() -> None:
    evs = [ev("f1", 0, "fail", step="cart"), ev("f2", 15 * MIN, "fail", step="cart"),
           ev("f3", 30 * MIN + 1, "fail", step="cart")]
    assert rules(reference_moments(evs)) == [("cart.failed", "f1")]


def test_reference_stuck_slides_over_the_fails_of_the_attempt() -> None:
    evs = [ev(f"f{i}", t, "fail", step="cart") for i, t in enumerate((0, 20 * MIN, 40 * MIN, 45 * MIN))]
    assert rules(reference_moments(evs)) == [("cart.failed", "f0"), ("cart.stuck", "f3")]


def test_reference_rules_fire_once_per_attempt_and_again_in_the_next() -> None:
    evs = [ev("f1", 0, "fail"), ev("f2", MIN, "fail"), ev("c", 2 * MIN, "complete"), ev("f3", 3 * MIN, "fail"),
           ev("f4", 3 * MIN + 24 * HOUR, "fail"), ev("f5", 3 * MIN + 48 * HOUR - 1, "fail")]
    assert rules(reference_moments(evs)) == [("cart.failed", "f1"), ("cart.failed", "f3"), ("cart.failed", "f4")]


def test_reference_maze_needs_three_distinct_entries_at_one_key_step_within_thirty_minutes() -> None:
    def at(eid: str, t: int, step: str, entry: str | None = None) -> dict[str, Any]:
        return ev(eid, t, "submit", step=step, entry=entry)

    # The payment entry is another step's; the cart event keeps the key step from idling into an abandonment.
    base = [at("a", 0, "checkout", "search"), at("b", 5 * MIN, "checkout", "search"),
            at("c", 9 * MIN, "payment", "sms_link"), at("d", 15 * MIN, "checkout", "home_banner"),
            at("f", 20 * MIN, "cart")]
    assert reference_moments([*base, at("e", 30 * MIN, "checkout", "push_campaign")], end_ts=0) == [
        {"customer_id": "c1", "rule": "cart.maze", "anchor_event_id": "e", "due_ts": T0 + 30 * MIN}]
    # "search" keeps its latest sighting (5 min), so 35:00 still spans 30 minutes; 35:00.001 does not.
    assert rules(reference_moments([*base, at("e", 35 * MIN, "checkout", "push_campaign")], end_ts=0)) == [
        ("cart.maze", "e")]
    assert reference_moments([*base, at("e", 35 * MIN + 1, "checkout", "push_campaign")], end_ts=0) == []


def test_reference_channel_hop_window_is_sixty_minutes_inclusive() -> None:
    first = [ev("a", 0, channel="app"), ev("b", 30 * MIN, "start", channel="web")]
    assert rules(reference_moments([*first, ev("c", 60 * MIN, channel="store")])) == [("cart.channel_hop", "c")]
    assert reference_moments([*first, ev("c", 60 * MIN + 1, channel="store")]) == []


def test_reference_interest_needs_two_views_without_a_recent_start_or_submit() -> None:
    two_views = [ev("v1", 0), ev("v2", 24 * HOUR - 1, "engage")]
    assert rules(reference_moments(two_views)) == [("cart.interested", "v2")]
    assert reference_moments([ev("v1", 0), ev("v2", 24 * HOUR + 1)]) == []
    started = [ev("s", 0, "start"), ev("v1", HOUR), ev("v2", 24 * HOUR)]
    assert reference_moments(started) == []
    later = [ev("s", 0, "start"), ev("v1", HOUR), ev("v2", 24 * HOUR + 1)]
    assert rules(reference_moments(later)) == [("cart.interested", "v2")]


def test_reference_handoff_looks_back_thirty_minutes_and_not_at_the_contact_itself() -> None:
    at = [ev("a", 0, "start", step="cart"), ev("k", 30 * MIN, "contact", channel="call_center", journey=None)]
    assert rules(reference_moments(at)) == [("cart.handoff", "k")]
    past = [ev("a", 0, "start", step="cart"), ev("k", 30 * MIN + 1, "contact", channel="call_center", journey=None)]
    assert reference_moments(past) == []
    alone = [ev("k", 0, "contact", channel="call_center")]
    assert reference_moments(alone) == []
    ivr = [ev("a", 0, "start", step="cart"), ev("k", MIN, "contact", channel="ivr", journey=None)]
    assert reference_moments(ivr) == []


def test_reference_handoff_fires_once_per_journey_the_customer_was_in() -> None:
    evs = [ev("a", 0, "start", step="cart"), ev("b", MIN, "start", journey="5g_upgrade", step="plan_select"),
           ev("k", 2 * MIN, "contact", channel="call_center", journey=None),
           ev("k2", 3 * MIN, "contact", channel="call_center", journey=None)]
    assert rules(reference_moments(evs)) == [("5g_upgrade.handoff", "k"), ("cart.handoff", "k")]


def test_reference_contact_in_a_journey_counts_as_a_channel_and_can_be_abandoned() -> None:
    evs = [ev("a", 0, "start", step="cart", channel="app"), ev("b", MIN, "submit", step="checkout", channel="web"),
           ev("k", 2 * MIN, "contact", channel="call_center", step="checkout")]
    assert rules(reference_moments(evs, end_ts=T0 + HOUR)) == [
        ("cart.abandoned", "k"), ("cart.channel_hop", "k"), ("cart.handoff", "k")]
