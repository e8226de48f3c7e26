"""Detection invariants over random event sequences (hypothesis).

Streams are a few customers' events over the default pack's two journeys, with
distinct timestamps whose gaps often sit exactly on the rules' boundaries
(10 min, 30 min, 60 min, 24 h and one millisecond either side).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.simulator import reference_moments
from state.batches import RawBatch, Tick
from state.moments import moment_id
from state.routing import shard_of_raw
from state.shard import Shard, process
from tests.helpers import MIN, PACK, T0, raws, run

STEPS = {jid: list(j.steps) for jid, j in PACK.journeys.items()}
TYPES = ["view", "view", "engage", "start", "submit", "fail", "fail", "contact", "complete", "cancel", "feedback"]
CHANNELS = ["app", "web", "wechat", "call_center", "call_center", "ivr", "store", "sms"]
ENTRIES = [None, None, "home_banner", "search", "sms_link", "push_campaign"]
CUSTOMERS = ["c1", "c2", "c3"]
HOUR = 60 * MIN
DAY = 24 * HOUR
BOUNDARIES = [10 * MIN, 30 * MIN, 60 * MIN, DAY]
LATENESS = 30_000
Moment = tuple[str, str, str, int, tuple[str, ...]]


@st.composite
def gaps(draw: st.DrawFn) -> int:
    """Time to the next event: short, long, or on a rule boundary (±1 ms); never 0 (distinct timestamps)."""
    how = draw(st.sampled_from(["burst", "short", "short", "boundary", "long"]))
    if how == "burst":
        return draw(st.integers(1, 3 * MIN))
    if how == "short":
        return draw(st.integers(1, 12 * MIN))
    if how == "boundary":
        return draw(st.sampled_from(BOUNDARIES)) + draw(st.sampled_from([-1, 0, 1]))
    return draw(st.integers(12 * MIN, 30 * HOUR))


@st.composite
def streams(draw: st.DrawFn, max_events: int = 50) -> list[dict[str, Any]]:
    """Events of a few customers over two journeys, sorted by (distinct) time.

    Consecutive events often stay with the same customer and journey, and some
    runs repeat a fail or a key step from changing entry points, so that
    stuck and maze (which need three such events within 30 minutes) occur too.
    """
    n = draw(st.integers(1, max_events))
    events: list[dict[str, Any]] = []
    t = T0
    run_left = 0
    run_kind = ""
    for i in range(n):
        if run_left:
            # Inside a run: 10..15 minutes apart, or on a boundary (the 3rd of three lands on 30 min ± 1 ms).
            t += draw(st.sampled_from([10 * MIN, 15 * MIN, 15 * MIN - 1, 15 * MIN + 1, MIN]))
            run_left -= 1
        else:
            t += draw(gaps())
            run_kind = draw(st.sampled_from(["", "", "", "", "fails", "entries"]))
            run_left = draw(st.integers(2, 4)) if run_kind else 0
        if events and (run_kind or draw(st.integers(0, 9)) < 6) and events[-1].get("journey"):
            customer, journey = events[-1]["customer_id"], events[-1].get("journey")
        else:
            customer = draw(st.sampled_from(CUSTOMERS))
            journey = draw(st.sampled_from(["cart", "5g_upgrade", None]))
        e: dict[str, Any] = {
            "event_id": f"e{i:03d}",
            "customer_id": customer,
            "ts": t,
            "channel": draw(st.sampled_from(CHANNELS)),
            "type": "fail" if run_kind == "fails" else draw(st.sampled_from(TYPES)),
        }
        if journey is not None:
            e["journey"] = journey
            key_steps = sorted(PACK.journeys[journey].key_steps)
            if run_kind == "entries":
                step: str | None = key_steps[0]
            else:
                step = draw(st.sampled_from([None, *STEPS[journey], *key_steps, *key_steps]))
            if step is not None:
                e["step"] = step
        entry = draw(st.sampled_from(ENTRIES[2:] if run_kind == "entries" else ENTRIES))
        if entry is not None:
            e["entry"] = entry
        events.append(e)
    return events


def _moments(moments: list[dict[str, Any]]) -> list[Moment]:
    return sorted((m["moment_id"], m["customer_id"], m["rule"], m["due_ts"], tuple(m["evidence"])) for m in moments)


def _key(e: dict[str, Any]) -> tuple[int, str]:
    return (e["ts"], e["event_id"])


def _attempts(events: list[dict[str, Any]]) -> dict[str, tuple[str, str, int]]:
    """Event id -> (customer, journey, attempt number), segmenting attempts as DESIGN.md §4 says."""
    out: dict[str, tuple[str, str, int]] = {}
    last: dict[tuple[str, str], tuple[int, int, bool]] = {}  # (customer, journey) -> (last ts, attempt, completed)
    for e in sorted(events, key=_key):
        j = e.get("journey")
        if j is None:
            continue
        k = (e["customer_id"], j)
        prev = last.get(k)
        n = 0 if prev is None else prev[1] + (prev[2] or e["ts"] - prev[0] >= PACK.attempt_timeout_ms)
        last[k] = (e["ts"], n, e["type"] == "complete")
        out[e["event_id"]] = (e["customer_id"], j, n)
    return out


def _process_in_pieces(events: list[dict[str, Any]], cuts: list[int], shards: int) -> list[dict[str, Any]]:
    """Feed the stream to ``shards`` shards in batches of the given sizes, broadcasting ticks like a replay source."""
    per_shard = [Shard(PACK, lateness_ms=LATENESS) for _ in range(shards)]
    data = raws(events)
    moments: list[dict[str, Any]] = []
    i = k = 0
    max_ts = 0
    while i < len(data):
        step = cuts[k % len(cuts)]
        chunk = list(range(i, min(i + step, len(data))))
        max_ts = max(max_ts, *(events[j]["ts"] for j in chunk))
        for s, sh in enumerate(per_shard):
            mine = [j for j in chunk if shard_of_raw(data[j], shards) == s]
            items: list[RawBatch | Tick] = [RawBatch("t", 0, [data[j] for j in mine], mine)] if mine else []
            items.append(Tick(max_ts))
            moments += process(sh, items).moments
        i += step
        k += 1
    for sh in per_shard:
        moments += process(sh, [Tick(max_ts, final=True)]).moments
    return moments


@settings(max_examples=150, deadline=None)
@given(streams())
def test_each_rule_fires_at_most_once_per_attempt(events: list[dict[str, Any]]) -> None:
    attempt_of = _attempts(events)
    by_id = {e["event_id"]: e for e in events}
    seen: set[tuple[str, str, int]] = set()
    for m in run(events).moments:
        evidence = [by_id[x] for x in m["evidence"]]
        anchor = max(evidence, key=_key)
        assert m["moment_id"] == moment_id(m["customer_id"], m["rule"], anchor["event_id"])
        if m["kind"] == "handoff":
            # The attempt is that of the customer's latest event in the journey before the contact.
            before = [e for e in events if e["customer_id"] == m["customer_id"] and e.get("journey") == m["journey"]
                      and _key(e) < _key(anchor)]
            _, _, n = attempt_of[max(before, key=_key)["event_id"]]
        else:
            cid, journey, n = attempt_of[anchor["event_id"]]
            assert (cid, journey) == (m["customer_id"], m["journey"])
        key = (m["customer_id"], m["rule"], n)
        assert key not in seen, f"{m['rule']} fired twice in attempt {n} of {m['customer_id']}"
        seen.add(key)


@settings(max_examples=100, deadline=None)
@given(streams())
def test_moment_ids_are_identical_across_two_runs(events: list[dict[str, Any]]) -> None:
    first, second = run(events).moments, run(events).moments
    assert [m["moment_id"] for m in first] == [m["moment_id"] for m in second]
    assert _moments(first) == _moments(second)


@settings(max_examples=150, deadline=None)
@given(streams(), st.data())
def test_shuffling_within_the_allowed_lateness_does_not_change_the_moments(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    delays = data.draw(st.lists(st.integers(0, LATENESS), min_size=len(events), max_size=len(events)))
    # Arrival order by ts + delay: no event arrives after one more than the lateness newer than it.
    order = sorted(range(len(events)), key=lambda i: (events[i]["ts"] + delays[i], i))
    shuffled = [events[i] for i in order]
    for i, e in enumerate(shuffled):
        assert all(e["ts"] >= earlier["ts"] - LATENESS for earlier in shuffled[:i])
    a, b = run(events, lateness_ms=LATENESS), run(shuffled, lateness_ms=LATENESS)
    assert b.late == 0
    assert _moments(a.moments) == _moments(b.moments)
    cuts = data.draw(st.lists(st.integers(1, 8), min_size=1, max_size=5))
    assert _moments(_process_in_pieces(shuffled, cuts, 1)) == _moments(a.moments)


@settings(max_examples=100, deadline=None)
@given(streams(), st.lists(st.integers(1, 10), min_size=1, max_size=10), st.integers(1, 3))
def test_batch_boundaries_ticks_and_shards_do_not_change_the_moments(
    events: list[dict[str, Any]], cuts: list[int], shards: int
) -> None:
    whole = run(events, lateness_ms=LATENESS)
    assert _moments(_process_in_pieces(events, cuts, shards)) == _moments(whole.moments)


@settings(max_examples=100, deadline=None)
@given(streams())
def test_every_moment_is_backed_by_input_events_of_its_customer(events: list[dict[str, Any]]) -> None:
    by_id = {e["event_id"]: e for e in events}
    last_ts = max(e["ts"] for e in events)
    for m in run(events).moments:
        assert m["evidence"]
        assert len(set(m["evidence"])) == len(m["evidence"])
        for eid in m["evidence"]:
            assert eid in by_id
            assert by_id[eid]["customer_id"] == m["customer_id"]
        anchor = max((by_id[x] for x in m["evidence"]), key=_key)
        if m["kind"] == "handoff":
            assert (anchor["type"], anchor["channel"]) == ("contact", "call_center")
        else:
            assert all(by_id[x].get("journey") == m["journey"] for x in m["evidence"])
        idle = PACK.by_journey[m["journey"]]["abandoned"].within_ms if m["kind"] == "abandoned" else 0
        assert m["due_ts"] == anchor["ts"] + idle
        assert m["due_ts"] <= last_ts


@settings(max_examples=100, deadline=None)
@given(streams(), st.data())
def test_snapshot_and_restore_at_any_point_give_the_same_moments(
    events: list[dict[str, Any]], data: st.DataObject
) -> None:
    cut = data.draw(st.integers(0, len(events)))
    data_raw = raws(events)
    sh = Shard(PACK, lateness_ms=LATENESS)
    before = process(sh, [RawBatch("t", 0, data_raw[:cut], list(range(cut)))]).moments
    restored = Shard(PACK, lateness_ms=LATENESS)
    restored.restore(sh.snapshot())
    after = process(restored, [RawBatch("t", 0, data_raw[cut:], list(range(cut, len(events)))),
                               Tick(0, final=True)]).moments
    assert _moments(before + after) == _moments(run(events, lateness_ms=LATENESS).moments)


@settings(max_examples=150, deadline=None)
@given(streams())
def test_moments_match_an_independent_reading_of_the_design(events: list[dict[str, Any]]) -> None:
    """The simulator's reference detector is written apart from state/; both must find the same moments."""
    expected = sorted(moment_id(m["customer_id"], m["rule"], m["anchor_event_id"]) for m in reference_moments(events))
    assert sorted(m["moment_id"] for m in run(events).moments) == expected
