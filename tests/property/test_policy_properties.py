"""Contact-policy invariants over random event sequences and time zones (hypothesis).

Whatever the customers do, the actions a strict policy lets through never exceed its caps,
never come closer than its gap (but for an escalating rule's), never fall in the customer's quiet hours, and
every moment has exactly one decision; the hold-out split follows the deterministic assignment.
"""

from __future__ import annotations

import tomllib
from collections import defaultdict
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from state.batches import RawBatch, Tick
from state.policy import in_holdout, is_quiet
from state.rules import DEFAULT_PACK, rule_pack_from_dict
from state.shard import Shard, process
from tests.helpers import MIN, raws
from tests.property.test_detection_properties import streams

HOUR = 60 * MIN
DAY = 24 * HOUR
ZONES = ["Asia/Shanghai", "America/New_York", "Europe/London", "Asia/Kolkata", "Pacific/Chatham", "UTC"]


def _strict_pack() -> Any:
    data = tomllib.loads(DEFAULT_PACK.read_text())
    data["policy"] = {
        "max_per_day": 2, "max_per_week": 3, "min_gap": "3h", "quiet_hours": "22:00-07:30", "timezone": "UTC",
        "quiet_bypass": [], "after_complete": "1d", "holdout": 0.3, "act_within": "1h",
        "channel_caps": {"sms": 1, "outbound_call": 1, "app_push": 1},
    }
    for m in data["moment"]:
        m.pop("holdout", None)
    return rule_pack_from_dict(data, "strict.toml")


PACK = _strict_pack()
POLICY = PACK.policy
CONTACT_RULES = {r.name for r in PACK.rules if r.contact}
ESCALATING = {r.name for r in PACK.rules if r.escalate}


@st.composite
def zoned_streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], dict[str, str], list[int]]:
    """A stream whose customers each live in one time zone: named on all their events, or on none (default zone)."""
    events = draw(streams(max_events=60))
    zones = {c: draw(st.sampled_from(ZONES)) for c in sorted({e["customer_id"] for e in events})}
    for e in events:
        if zones[e["customer_id"]] != "UTC":
            e["attrs"] = {"tz": zones[e["customer_id"]]}
    cuts = draw(st.lists(st.integers(1, 20), min_size=1, max_size=5))
    return events, zones, cuts


def _run(events: list[dict[str, Any]], cuts: list[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]],
                                                                  list[dict[str, Any]]]:
    sh = Shard(PACK, lateness_ms=30_000)
    data = raws(events)
    moments: list[dict[str, Any]] = []
    actions: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    i = k = 0
    while i < len(data):
        n = cuts[k % len(cuts)]
        out = process(sh, [RawBatch("t", 0, data[i:i + n], list(range(i, i + n)))])
        moments += out.moments
        actions += out.actions
        tags += out.tags
        i += n
        k += 1
    out = process(sh, [Tick(0, final=True)])
    return moments + out.moments, actions + out.actions, tags + out.tags


@settings(max_examples=300, deadline=None)
@given(zoned_streams())
def test_caps_gaps_and_quiet_hours_are_never_exceeded(case: tuple[list[dict[str, Any]], dict[str, str],
                                                                  list[int]]) -> None:
    events, zones, cuts = case
    moments, actions, _tags = _run(events, cuts)

    # Every moment has exactly one decision, and every decision belongs to a moment.
    assert sorted(a["moment_id"] for a in actions) == sorted(m["moment_id"] for m in moments)

    sends: dict[str, list[tuple[int, str]]] = defaultdict(list)
    escalating: dict[str, list[int]] = defaultdict(list)
    for a in actions:
        if a["status"] != "suppressed" and a["rule"] in CONTACT_RULES:
            # Hold-out decisions count as would-be sends: checking them too is stricter than checking sent ones.
            sends[a["customer_id"]].append((a["send_ts"], a["channel"]))
            if a["rule"] in ESCALATING:
                escalating[a["customer_id"]].append(a["send_ts"])
        assert a["reason"] != "escalated" or a["rule"] in ESCALATING, a
        if a["status"] == "sent" and a["rule"] in CONTACT_RULES:
            assert not is_quiet(POLICY, a["send_ts"], zones[a["customer_id"]]), a
    for cid, ss in sends.items():
        ts = sorted(t for t, _ in ss)
        # Only an escalating rule's send (stuck: the third failure) may come within the gap of another.
        close = [(a, b) for a, b in zip(ts, ts[1:], strict=False) if b - a < POLICY.min_gap_ms]
        assert all(a in escalating[cid] or b in escalating[cid] for a, b in close), (cid, ts, escalating[cid])
        for t in ts:
            assert sum(1 for u in ts if t <= u < t + DAY) <= POLICY.max_per_day
            assert sum(1 for u in ts if t <= u < t + 7 * DAY) <= POLICY.max_per_week
        for t, ch in ss:
            cap = POLICY.channel_caps.get(ch)
            if cap is not None:
                assert sum(1 for u, c in ss if c == ch and t <= u < t + DAY) <= cap


@settings(max_examples=200, deadline=None)
@given(zoned_streams())
def test_hold_out_follows_the_assignment_and_only_sent_actions_action_tags(
    case: tuple[list[dict[str, Any]], dict[str, str], list[int]],
) -> None:
    events, _zones, cuts = case
    _moments, actions, tags = _run(events, cuts)
    for a in actions:
        held = in_holdout(a["customer_id"], a["rule"], 0.3)
        assert a["control"] == int(held)
        if a["status"] != "suppressed":
            assert (a["status"] == "control") == held
            assert a["channel"]
        else:
            assert a["reason"]
            assert a["channel"] == ""
    sent = {a["moment_id"] for a in actions if a["status"] == "sent"}
    actioned_by_policy = {t["moment_id"] for t in tags if t["state"] == "actioned" and t["outcome"] == ""}
    assert actioned_by_policy == sent
