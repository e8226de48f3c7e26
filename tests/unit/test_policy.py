"""Contact policy: each moment gets one action or one suppression, for the documented reasons."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import Any

import pytest

from state.batches import RawBatch, Tick
from state.policy import in_holdout, is_quiet, local_minute
from state.rules import DEFAULT_PACK, RulePack, RulePackError, rule_pack_from_dict
from state.shard import Shard, process
from tests.helpers import MIN, T0, ev, raws, run

HOUR = 60 * MIN
DAY = 24 * HOUR


def pack_with(policy: dict[str, Any] | None = None, **rule_overrides: dict[str, Any]) -> RulePack:
    """The default pack with its policy fields replaced and rules (by kind) changed; no hold-out unless asked."""
    data = tomllib.loads(DEFAULT_PACK.read_text())
    data["policy"] = {**data["policy"], "holdout": 0.0, **(policy or {})}
    for m in data["moment"]:
        m.pop("holdout", None)
        m.update(rule_overrides.get(m["kind"], {}))
    return rule_pack_from_dict(data, "test-pack.toml")


def decisions(out: Any) -> list[tuple[str, str, str, str]]:
    """(rule, status, reason, channel) per decision, in order."""
    return [(a["rule"], a["status"], a["reason"], a["channel"]) for a in out.actions]


def _later(ts: int) -> dict[str, Any]:
    """Another customer's event that moves the replay clock past pending timers."""
    return ev("later", ts, customer="someone-else", journey=None)


def _fail(eid: str, ts: int, **kw: Any) -> dict[str, Any]:
    return ev(eid, ts, "fail", step="payment", **kw)


# -- one decision per moment -------------------------------------------------------------------------
def test_a_failure_is_acted_on_through_the_first_channel_and_its_tag_becomes_actioned() -> None:
    out = run([_fail("f", 0)], pack=pack_with())
    assert decisions(out) == [("cart.failed", "sent", "", "outbound_call")]
    a = out.actions[0]
    assert a["moment_id"] == out.moments[0]["moment_id"]
    assert a["send_ts"] == a["due_ts"] == T0
    assert a["suppressed_channels"] == ["sms:not_chosen"]
    assert a["template"] == "outbound_call"
    assert a["control"] == 0
    assert [(t["state"], t["moment_id"]) for t in out.tags] == [("open", a["moment_id"]), ("actioned", a["moment_id"])]


def test_moments_of_one_instant_compete_and_the_most_urgent_wins() -> None:
    # The third channel arrives with a failure: channel_hop (P2) and failed (P1) fire on the same event.
    events = [ev("a", 0, "start", channel="app", step="product"), ev("b", MIN, "start", channel="web", step="cart"),
              _fail("f", 2 * MIN, channel="wechat")]
    out = run(events, pack=pack_with())
    assert sorted(decisions(out)) == [("cart.channel_hop", "suppressed", "outranked", ""),
                                      ("cart.failed", "sent", "", "outbound_call")]


def test_minimum_gap_daily_and_weekly_caps_suppress_with_their_reason() -> None:
    pack = pack_with({"max_per_day": 2, "max_per_week": 3, "min_gap": "1h", "channel_caps": {},
                      "after_complete": "1ms"})

    def fail(eid: str, ts: int, journey: str = "cart") -> dict[str, Any]:
        return ev(eid, ts, "fail", journey=journey)  # no step: no abandonment joins in

    # Each failure is in a new attempt (completions in between), so each fires `failed` once.
    events = [fail("f1", 0), fail("f2", 30 * MIN, "5g_upgrade"),  # 30 min after f1: gap
              ev("c1", 31 * MIN, "complete"), fail("f3", 2 * HOUR),  # 2nd today
              ev("c2", 2 * HOUR + MIN, "complete"), fail("f4", 5 * HOUR),  # would be the 3rd in 24 h
              ev("c3", 5 * HOUR + MIN, "complete"), fail("f5", 25 * HOUR),  # f1 left the day: 3rd this week
              ev("c4", 25 * HOUR + MIN, "complete"), fail("f6", 50 * HOUR)]  # would be the 4th this week
    assert [(d[1], d[2]) for d in decisions(run(events, pack=pack))] == [
        ("sent", ""), ("suppressed", "min_gap"), ("sent", ""), ("suppressed", "daily_cap"), ("sent", ""),
        ("suppressed", "weekly_cap"),
    ]


def test_a_capped_channel_falls_back_to_the_next_candidate_and_records_why() -> None:
    pack = pack_with({"min_gap": "1m", "channel_caps": {"outbound_call": 1}, "after_complete": "1ms"})
    out = run([_fail("f1", 0), ev("c", MIN, "complete"), _fail("f2", 2 * HOUR)], pack=pack)
    assert decisions(out) == [("cart.failed", "sent", "", "outbound_call"), ("cart.failed", "sent", "", "sms")]
    assert out.actions[1]["suppressed_channels"] == ["outbound_call:channel_cap"]


def test_quiet_hours_follow_the_customers_time_zone_and_p1_may_bypass_them() -> None:
    pack = pack_with()  # quiet 21:00-08:00, default zone Asia/Shanghai; P1 bypasses
    late = 15 * HOUR  # 23:00 in Shanghai
    assert local_minute(T0 + late, None, "Asia/Shanghai") == 23 * 60
    abandon = [ev("k", late, step="checkout"), _later(late + HOUR)]
    assert decisions(run(abandon, pack=pack)) == [("cart.abandoned", "suppressed", "quiet_hours", "")]
    # 23:00 in Shanghai is 10:00 in New York: not quiet there.
    ny = [ev("k", late, step="checkout", tz="America/New_York"), _later(late + HOUR)]
    assert [d[1] for d in decisions(run(ny, pack=pack))] == ["sent"]
    assert [d[1] for d in decisions(run([_fail("f", late)], pack=pack))] == ["sent"]
    strict = pack_with({"quiet_bypass": []})
    assert decisions(run([_fail("f", late)], pack=strict)) == [("cart.failed", "suppressed", "quiet_hours", "")]


def test_the_time_zone_of_an_earlier_event_is_remembered() -> None:
    ny = [ev("p", 14 * HOUR, "start", step="product", tz="America/New_York"), ev("k", 15 * HOUR, step="checkout"),
          _later(16 * HOUR)]
    assert decisions(run(ny, pack=pack_with())) == [("cart.abandoned", "sent", "", "app_push")]


def test_an_unknown_time_zone_on_an_event_falls_back_to_the_default() -> None:
    out = run([ev("k", 15 * HOUR, step="checkout", tz="Mars/Olympus"), _later(16 * HOUR)], pack=pack_with())
    assert decisions(out) == [("cart.abandoned", "suppressed", "quiet_hours", "")]


def test_quiet_hours_without_wrap_and_with_wrap() -> None:
    day = pack_with({"quiet_hours": "12:00-14:00", "timezone": "UTC"}).policy
    assert is_quiet(day, T0 + 13 * HOUR, None)
    assert not is_quiet(day, T0 + 14 * HOUR, None)
    night = pack_with({"quiet_hours": "22:00-06:00", "timezone": "UTC"}).policy
    assert is_quiet(night, T0 + 23 * HOUR, None)
    assert is_quiet(night, T0 + 5 * HOUR, None)
    assert not is_quiet(night, T0 + 6 * HOUR, None)


def test_no_action_about_a_journey_the_customer_just_completed() -> None:
    # A call-centre contact right after completing: the agent still gets context (not a contact),
    # but an interest moment for the completed journey is not acted on.
    pack = pack_with(interested={"stages": ["awareness", "knowledge", "intention", "use", "reuse"]})
    events = [ev("c", 0, "complete"), ev("v1", HOUR, "view"), ev("v2", 2 * HOUR, "view")]
    assert decisions(run(events, pack=pack)) == [("cart.interested", "suppressed", "journey_completed", "")]
    events = [ev("p", 0, step="product"), ev("c", MIN, "complete"),
              ev("call", 2 * MIN, "contact", channel="call_center", journey=None)]
    assert decisions(run(events, pack=pack)) == [("cart.handoff", "sent", "", "agent_screen")]


def test_stage_conditions_decide_whether_a_rule_acts() -> None:
    # Default pack: `interested` acts only in awareness/knowledge; a returning user is in `use`.
    views = [ev("v1", 2 * HOUR, "view"), ev("v2", 3 * HOUR, "view")]
    fresh = run(views, pack=pack_with())
    assert decisions(fresh) == [("cart.interested", "sent", "", "app_push")]
    returning = run([ev("c", 0, "complete"), *views], pack=pack_with({"after_complete": "1m"}))
    assert decisions(returning) == [("cart.interested", "suppressed", "stage", "")]


def test_stale_moments_are_stored_and_published_but_not_acted_on() -> None:
    # Live mode after an outage: a backlog of two-day-old events is processed now.
    now = T0 + 2 * DAY
    sh = Shard(pack_with(), live=True, clock=lambda: now, lateness_ms=1_000, max_future_ms=3 * DAY)
    sh.feed(RawBatch("test", 0, raws([ev("f", 0, "fail")]), [0]))
    sh.on_wall_clock()
    out = sh.take_outputs()
    assert [m["rule"] for m in out.moments] == ["cart.failed"]
    assert decisions(out) == [("cart.failed", "suppressed", "stale", "")]
    # Never actioned; the same catch-up also passes the tag's 24 h TTL.
    assert [t["state"] for t in out.tags] == ["open", "expired"]


def test_agent_context_is_exempt_from_caps_and_does_not_count_towards_them() -> None:
    events = [ev("p", 0, step="product"), _fail("f", MIN),
              ev("call", 2 * MIN, "contact", channel="call_center", journey=None)]
    out = run(events, pack=pack_with())
    assert decisions(out) == [("cart.failed", "sent", "", "outbound_call"),
                              ("cart.handoff", "sent", "", "agent_screen")]


# -- hold-out ------------------------------------------------------------------------------------------
def test_hold_out_customers_get_the_tag_but_no_action() -> None:
    pack = pack_with({"holdout": 0.5})
    controls = [c for c in (f"cust-{i}" for i in range(200)) if in_holdout(c, "cart.failed", 0.5)]
    cid = controls[0]
    out = run([_fail("f", 0, customer=cid)], pack=pack)
    assert decisions(out) == [("cart.failed", "control", "holdout", "outbound_call")]
    assert out.actions[0]["control"] == 1
    assert [t["state"] for t in out.tags] == ["open"]


def test_hold_out_share_is_within_tolerance_and_independent_per_rule() -> None:
    ids = [f"customer-{i}" for i in range(40_000)]
    a = [in_holdout(c, "cart.failed", 0.1) for c in ids]
    b = [in_holdout(c, "cart.abandoned", 0.1) for c in ids]
    # Binomial sd at n=40k, p=0.1 is 0.0015: ±0.006 is four sd.
    assert abs(sum(a) / len(ids) - 0.1) < 0.006
    assert abs(sum(b) / len(ids) - 0.1) < 0.006
    both = sum(x and y for x, y in zip(a, b, strict=True)) / len(ids)
    assert abs(both - 0.01) < 0.003  # assignments of different rules are independent
    assert not any(in_holdout(c, "cart.failed", 0.0) for c in ids[:1000])


def test_hold_out_assignment_is_stable_across_processes() -> None:
    ids = [f"customer-{i}" for i in range(2_000)]
    here = "".join("1" if in_holdout(c, "cart.failed", 0.1) else "0" for c in ids)
    code = ("from state.policy import in_holdout\n"
            "print(''.join('1' if in_holdout(f'customer-{i}', 'cart.failed', 0.1) else '0' for i in range(2000)))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "12345", "PATH": ""}, cwd=str(DEFAULT_PACK.parents[2]))
    assert other.stdout.strip() == here


# -- feedback and tags ---------------------------------------------------------------------------------
def test_tag_life_cycle_from_feedback_open_actioned_resolved() -> None:
    sh = Shard(pack_with({"max_per_day": 0, "max_per_week": 0, "min_gap": "1ms"}))
    out = run([_fail("f", 0)], shard=sh)
    mid = out.moments[0]["moment_id"]
    fb = [{"moment_id": mid, "customer_id": "c1", "outcome": o, "ts": T0 + i * MIN}
          for i, o in enumerate(("contacted", "accepted", "converted"), start=1)]
    sh.feedback_sources = frozenset({"fb"})
    out2 = process(sh, [RawBatch("fb", 0, raws(fb), [0, 1, 2])])
    assert [(t["state"], t["outcome"]) for t in out2.tags] == [("actioned", "contacted"), ("actioned", "accepted"),
                                                                 ("resolved", "converted")]
    versions = [t["version"] for t in (*out.tags, *out2.tags)]
    assert versions == sorted(versions)
    assert [f["outcome"] for f in out2.feedback] == ["contacted", "accepted", "converted"]


def test_feedback_older_than_the_moment_still_orders_after_the_opening() -> None:
    sh = Shard(pack_with())
    out = run([_fail("f", HOUR)], shard=sh)
    sh.feedback_sources = frozenset({"fb"})
    fb = {"moment_id": out.moments[0]["moment_id"], "customer_id": "c1", "outcome": "declined", "ts": T0}
    out2 = process(sh, [RawBatch("fb", 0, raws([fb]), [0]), Tick(0, final=True)])
    assert out2.tags[0]["state"] == "resolved"
    assert out2.tags[0]["version"] > out.tags[-1]["version"]


# -- pack validation -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("policy", "where", "problem"),
    [
        ({"quiet_hours": "9pm-8am"}, "policy.quiet_hours", "must be like"),
        ({"timezone": "Mars/Olympus"}, "policy.timezone", "unknown time zone"),
        ({"max_per_day": -1}, "policy.max_per_day", "0..1000"),
        ({"holdout": 1.5}, "policy.holdout", "[0, 1)"),
        ({"quiet_bypass": ["P9"]}, "policy.quiet_bypass", "urgencies"),
        ({"cap": 1}, "policy.cap", "unknown field"),
    ],
)
def test_invalid_policy_names_the_field(policy: dict[str, Any], where: str, problem: str) -> None:
    with pytest.raises(RulePackError) as info:
        pack_with(policy)
    assert info.value.where == where
    assert problem in info.value.problem


def test_invalid_rule_policy_fields_name_the_rule() -> None:
    with pytest.raises(RulePackError) as info:
        pack_with(interested={"stages": ["curious"]})
    assert info.value.where.endswith(".stages")
    assert "'curious' is not a stage" in info.value.problem
    with pytest.raises(RulePackError) as info:
        pack_with(failed={"channels": ["sms", "sms"]})
    assert "distinct" in info.value.problem


def test_policy_changes_keep_the_snapshot_fingerprint_but_rule_changes_do_not() -> None:
    base = pack_with()
    assert pack_with({"max_per_day": 9}).fingerprint() == base.fingerprint()
    assert pack_with(failed={"holdout": 0.3}).fingerprint() == base.fingerprint()
    assert pack_with(abandoned={"idle": "11m"}).fingerprint() != base.fingerprint()


# -- escalation ----------------------------------------------------------------------------------------
def _three_fails(customer: str = "c1") -> list[dict[str, Any]]:
    return [_fail("f1", 0, customer=customer), _fail("f2", 5 * MIN, customer=customer),
            _fail("f3", 10 * MIN, customer=customer)]


def test_stuck_escalates_past_min_gap_after_the_failed_action_in_the_default_pack() -> None:
    out = run(_three_fails(), pack=pack_with())
    assert decisions(out) == [("cart.failed", "sent", "", "outbound_call"),
                              ("cart.stuck", "sent", "escalated", "sms")]
    # Without escalation the callback is lost to the gap the failed message opened.
    plain = run(_three_fails(), pack=pack_with(stuck={"escalate": False}))
    assert decisions(plain)[1] == ("cart.stuck", "suppressed", "min_gap", "")


def test_an_escalation_still_keeps_the_daily_cap() -> None:
    out = run(_three_fails(), pack=pack_with({"max_per_day": 1}))
    assert decisions(out)[1] == ("cart.stuck", "suppressed", "daily_cap", "")


def test_a_held_out_customer_takes_the_same_escalation_path_without_contact() -> None:
    share = 0.5
    cid = next(f"h{i}" for i in range(1000)
               if in_holdout(f"h{i}", "cart.stuck", share) and not in_holdout(f"h{i}", "cart.failed", share))
    out = run(_three_fails(cid), pack=pack_with(stuck={"holdout": share}, failed={"holdout": share}))
    assert decisions(out) == [("cart.failed", "sent", "", "outbound_call"),
                              ("cart.stuck", "control", "holdout", "sms")]


@pytest.mark.parametrize(("rule", "problem"), [
    ({"escalate": "yes"}, "must be true or false, got 'yes'"),
    ({"escalate": True, "contact": False}, "only a rule that contacts the customer"),
])
def test_escalate_is_validated_naming_the_field(rule: dict[str, Any], problem: str) -> None:
    with pytest.raises(RulePackError) as info:
        pack_with(stuck=rule)
    assert "moment[" in str(info.value)
    assert ".escalate" in str(info.value)
    assert problem in str(info.value)
