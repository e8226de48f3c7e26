"""Detection invariants over random event sequences (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from state.batches import RawBatch, Tick
from state.shard import Shard, process
from tests.helpers import MIN, PACK, T0, raws, run

STEPS = {"cart": ["product", "cart", "checkout", "payment"], "5g_upgrade": ["landing", "plan_select", "order_form",
                                                                            "payment"]}
TYPES = ["view", "view", "start", "submit", "fail", "fail", "contact", "complete", "engage", "cancel"]
CHANNELS = ["app", "web", "wechat", "call_center", "ivr"]
ENTRIES = [None, "home_banner", "search", "sms_link", "push_campaign"]
DAY = 24 * 60 * MIN
LATENESS = 30_000


@st.composite
def streams(draw: st.DrawFn, max_events: int = 60) -> list[dict[str, Any]]:
    """Events of a few customers over two journeys, sorted by (distinct) time."""
    n = draw(st.integers(1, max_events))
    gaps = draw(st.lists(st.integers(1, 12 * MIN), min_size=n, max_size=n))
    events = []
    t = T0
    for i, gap in enumerate(gaps):
        t += gap if draw(st.booleans()) else gap * 20  # sometimes long gaps: attempts time out
        journey = draw(st.sampled_from(["cart", "5g_upgrade", None]))
        e: dict[str, Any] = {
            "event_id": f"e{i}",
            "customer_id": draw(st.sampled_from(["c1", "c2", "c3"])),
            "ts": t,
            "channel": draw(st.sampled_from(CHANNELS)),
            "type": draw(st.sampled_from(TYPES)),
        }
        if journey is not None:
            e["journey"] = journey
            e["step"] = draw(st.sampled_from(STEPS[journey]))
        entry = draw(st.sampled_from(ENTRIES))
        if entry is not None:
            e["entry"] = entry
        events.append(e)
    return events


def _ids(out: Any) -> list[str]:
    return sorted(m["moment_id"] for m in out.moments)


@settings(max_examples=150, deadline=None)
@given(streams())
def test_each_rule_fires_at_most_once_per_attempt(events: list[dict[str, Any]]) -> None:
    out = run(events)
    by_key: dict[tuple[str, str], list[int]] = {}
    for m in out.moments:
        by_key.setdefault((m["customer_id"], m["rule"]), []).append(m["due_ts"])
    for (cid, rule), dues in by_key.items():
        journey = rule.split(".")[0]
        mine = [e for e in events if e["customer_id"] == cid and e.get("journey") == journey]
        dues.sort()
        for a, b in zip(dues, dues[1:], strict=False):
            between = [e for e in mine if a <= e["ts"] <= b]
            completed = any(e["type"] == "complete" for e in between)
            ts = [e["ts"] for e in mine if e["ts"] <= b]
            timed_out = any(y - x >= DAY for x, y in zip(ts, ts[1:], strict=False) if y > a - DAY)
            assert completed or timed_out, f"{rule} fired twice in one attempt for {cid}"


@settings(max_examples=100, deadline=None)
@given(streams())
def test_moment_ids_are_identical_across_two_runs(events: list[dict[str, Any]]) -> None:
    assert _ids(run(events)) == _ids(run(events))


@settings(max_examples=150, deadline=None)
@given(streams(), st.data())
def test_shuffling_within_the_allowed_lateness_does_not_change_the_moments(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    delays = data.draw(st.lists(st.integers(0, LATENESS - 1), min_size=len(events), max_size=len(events)))
    # Arrival order by ts + delay: nothing arrives after an event more than the lateness newer than it.
    shuffled = [e for _, e in sorted(zip((e["ts"] + d for e, d in zip(events, delays, strict=True)), events,
                                         strict=True), key=lambda p: p[0])]
    a, b = run(events, lateness_ms=LATENESS), run(shuffled, lateness_ms=LATENESS)
    assert b.late == 0
    assert _ids(a) == _ids(b)


@settings(max_examples=100, deadline=None)
@given(streams(), st.lists(st.integers(1, 10), min_size=1, max_size=10))
def test_batch_boundaries_and_ticks_do_not_change_the_moments(events: list[dict[str, Any]], cuts: list[int]) -> None:
    whole = run(events)
    sh = Shard(PACK, lateness_ms=LATENESS)
    data = raws(events)
    moments: list[str] = []
    i = 0
    k = 0
    while i < len(data):
        step = cuts[k % len(cuts)]
        chunk = data[i : i + step]
        items: list[RawBatch | Tick] = [RawBatch("t", 0, chunk, list(range(i, i + len(chunk))))]
        items.append(Tick(max(e["ts"] for e in events[: i + step])))
        moments += [m["moment_id"] for m in process(sh, items).moments]
        i += step
        k += 1
    moments += [m["moment_id"] for m in process(sh, [Tick(0, final=True)]).moments]
    assert sorted(moments) == _ids(whole)


@settings(max_examples=100, deadline=None)
@given(streams())
def test_every_moment_is_backed_by_input_events(events: list[dict[str, Any]]) -> None:
    ids = {e["event_id"]: e for e in events}
    for m in run(events).moments:
        assert m["evidence"]
        for eid in m["evidence"]:
            assert ids[eid]["customer_id"] == m["customer_id"]
        assert m["due_ts"] >= T0
