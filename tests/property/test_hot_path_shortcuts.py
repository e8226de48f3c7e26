"""Shortcuts taken on the hot path agree with the plain reading they replace."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from state.batches import RawBatch, Tick
from state.events import Event
from state.policy import Contact
from state.record import DEDUP_SLOTS, CustomerState, seen_before
from state.rules import load_rule_pack
from state.shard import Shard, process
from tests.helpers import PACK, T0, ev, raws, run

_IDS = st.sampled_from([f"e{i}" for i in range(12)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(_IDS, st.integers(0, 10**6)), max_size=40), st.booleans(), st.booleans())
def test_seen_before_is_a_ring_of_the_last_ids_and_keeps_the_rest_of_the_record(
    events: list[tuple[str, int]], tags: bool, contact: bool
) -> None:
    c = CustomerState(1, T0, "c")
    c.wake = T0 + 12345
    if tags:
        c.tags = (3, "ab" * 16, T0 + 7, 1)
    if contact:
        c.contact = Contact.of("Europe/Paris", [(T0 + 5, "sms")], [(0, T0 + 9)])
    want_tags, want_contact = c.tags, c.contact
    ring: list[str] = []
    last = T0
    for eid, dt in events:
        e = Event(eid, "c", T0 + dt, "app", "view")
        expected = eid in ring
        assert seen_before(c, e) is expected
        if not expected:
            ring = (ring + [eid])[-DEDUP_SLOTS:]
            last = max(last, T0 + dt)
        assert c.last_seen == last
        assert c.wake == T0 + 12345
        assert c.tags == want_tags
        assert c.contact == want_contact


def _put_tag_plainly(tags: tuple[Any, ...] | None, ridx: int, mid: str, opened: int, state: int) -> tuple[Any, ...]:
    tags = tags or ()
    for i in range(0, len(tags), 4):
        if tags[i] == ridx:
            return (*tags[:i], ridx, mid, opened, state, *tags[i + 4 :])
    return (*tags, ridx, mid, opened, state)


_MIDS = st.sampled_from(["00" * 16, "ab" * 16, "0123456789abcdef" * 2])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.booleans(), st.integers(0, 5), _MIDS, st.integers(0, 10**7), st.integers(0, 1)), max_size=12),
    st.integers(0, 9),
    st.booleans(),
)
def test_tag_edits_on_the_packed_record_agree_with_editing_the_decoded_tuple(
    ops: list[tuple[bool, int, str, int, int]], ids: int, contact: bool
) -> None:
    c = CustomerState(1, T0, "c")
    for i in range(ids):
        seen_before(c, Event(f"e{i}", "c", T0 + i, "app", "view"))
    if contact:
        c.contact = Contact.of(None, [(T0 + 5, "sms")], [])
    want = c.tags
    rest = (c.last_seen, c.wake, c.contact)
    for put, ridx, mid, opened, state in ops:
        if put:
            c.put_tag(ridx, mid, T0 + opened, state)
            want = _put_tag_plainly(want, ridx, mid, T0 + opened, state)
        else:
            got = c.mark_tag_actioned(ridx, mid)
            tags = want or ()
            hit = [i for i in range(0, len(tags), 4) if tags[i] == ridx and tags[i + 1] == mid and tags[i + 3] == 0]
            assert got == (tags[hit[0] + 2] if hit else None)
            if hit:
                want = (*tags[: hit[0] + 3], 1, *tags[hit[0] + 4 :])
        assert c.tags == (want or None)
        assert (c.last_seen, c.wake, c.contact) == rest


@st.composite
def _streams(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(1, 30))
    out = []
    for i in range(n):
        t = draw(st.integers(0, 120)) * 5 * 60_000  # coarse times: timers often fall on an event's time
        kind = draw(st.sampled_from(["view", "submit", "fail", "complete"]))
        step = draw(st.sampled_from(["cart", "checkout", "payment", None]))
        cust = draw(st.sampled_from(["a", "b"]))
        out.append(ev(f"x{i}", t, kind, step=step, customer=cust))
    return out


@settings(max_examples=150, deadline=None)
@given(_streams(), st.integers(1, 7), st.integers(0, 3))
def test_in_order_shortcut_of_advance_gives_what_the_general_loop_gives(
    events: list[dict[str, Any]], k: int, lateness_min: int
) -> None:
    pack = load_rule_pack()

    def run(shortcut: bool) -> list[Any]:
        sh = Shard(pack, lateness_ms=lateness_min * 60_000, clock=lambda: 0)
        sh.shortcut = shortcut  # off: the production loop without the in-order release shortcut
        outs = []
        for i in range(0, len(events), k):
            part = events[i : i + k]
            outs.append(process(sh, [RawBatch("t", 0, raws(part), list(range(len(part))))]))
        outs.append(process(sh, [Tick(0, final=True)]))
        return [(kind, rows) for o in outs for kind, rows in o.records()] + [sh.snapshot()]

    assert run(True) == run(False)


def test_a_wake_up_due_exactly_at_an_in_order_event_comes_first() -> None:
    # Abandonment is due 10 min after the checkout view; the customer's next event comes at exactly that time.
    # Wake-ups go first on ties (DESIGN.md §4), so the customer had been idle for the whole window: abandoned.
    # Fed one event per batch, so the release shortcut for in-order arrivals handles the tie.
    events = [ev("a1", 0, "view", step="checkout"), ev("b1", 1_000, "view", customer="c2", step="cart"),
              ev("a2", 600_000, "view", step="cart"), ev("b2", 700_000, "view", customer="c2", step="cart")]
    sh = Shard(PACK, lateness_ms=1_000)
    outs = [run([e], shard=sh, end=False) for e in events]
    outs.append(run([], shard=sh))
    fired = [m for o in outs for m in o.moments if m["kind"] == "abandoned"]
    assert [(m["customer_id"], m["rule"]) for m in fired] == [("c1", "cart.abandoned")]
