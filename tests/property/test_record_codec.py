"""The packed customer record (state.record): what is written is what is read back, field by field."""

from __future__ import annotations

import pickle
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from state.events import Event
from state.policy import Contact, remember_completion
from state.record import DEDUP_SLOTS, RING_AT, TAG_BYTES, CustomerState, seen_before

_TS = st.integers(0, 2**47)  # event times as stored: 6 bytes
_MID = st.text("0123456789abcdef", min_size=32, max_size=32)
_TAGS = st.lists(st.tuples(st.integers(0, 59), _MID, _TS, st.integers(0, 1)), max_size=6,
                 unique_by=lambda t: t[0])
_ZONE = st.one_of(st.none(), st.sampled_from(["UTC", "Europe/Paris", "Asia/Shanghai", "America/Argentina/Salta"]))
_SENDS = st.lists(st.tuples(_TS, st.sampled_from(["sms", "email", "push", "agent_screen"])), max_size=5)
_DONE = st.lists(st.tuples(st.integers(0, 20), _TS), max_size=4, unique_by=lambda d: d[0])


@settings(max_examples=300, deadline=None)
@given(_TS, _TS, st.lists(st.text(min_size=1, max_size=20), max_size=12, unique=True), _TAGS,
       st.booleans(), _ZONE, _SENDS, _DONE, st.permutations(range(4)))
def test_every_field_reads_back_what_was_written_whatever_the_order_of_writes(
    last_seen: int, wake: int, ids: list[str], tags: list[tuple[int, str, int, int]], has_contact: bool,
    tz: str | None, sends: list[tuple[int, str]], done: list[tuple[int, int]], order: list[int],
) -> None:
    c = CustomerState(2, 0, "c")
    flat: tuple[Any, ...] | None = tuple(x for t in tags for x in t) or None
    contact = Contact.of(tz, sends, done) if has_contact else None
    writes = [
        lambda: setattr(c, "wake", wake),
        lambda: [seen_before(c, Event(i, "c", 0, "app", "view")) for i in ids],
        lambda: setattr(c, "tags", flat),
        lambda: setattr(c, "contact", contact),
    ]
    for k in order:
        writes[k]()
    c.last_seen = last_seen
    for got in (c, pickle.loads(pickle.dumps(c, protocol=5))):
        assert got.last_seen == last_seen
        assert got.wake == wake
        assert got.tags == flat
        assert got.contact == contact
        assert got.tz == (contact.tz if contact is not None else None)
        assert [got.completed_at(j) for j in range(22)] == [
            contact.completed_at(j) if contact is not None else None for j in range(22)]
        assert got.rec[RING_AT - 1] == min(len(ids), DEDUP_SLOTS)
        # The ring keeps exactly the latest ids.
        assert all(seen_before(got, Event(i, "c", 0, "app", "view")) for i in ids[-DEDUP_SLOTS:])


@settings(max_examples=100, deadline=None)
@given(_TAGS)
def test_a_tag_record_has_the_documented_size(tags: list[tuple[int, str, int, int]]) -> None:
    c = CustomerState(1, 0, "c")
    before = len(c.rec)
    c.tags = tuple(x for t in tags for x in t) or None
    assert len(c.rec) - before == TAG_BYTES * len(tags)


@settings(max_examples=300, deadline=None)
@given(_TAGS, st.booleans(), _ZONE, _SENDS, _DONE, st.integers(0, 20), _TS)
def test_a_completion_edited_in_the_record_is_the_policys_remember_completion(
    tags: list[tuple[int, str, int, int]], has_contact: bool, tz: str | None, sends: list[tuple[int, str]],
    done: list[tuple[int, int]], jidx: int, t: int,
) -> None:
    c = CustomerState(2, 0, "c")
    seen_before(c, Event("e", "c", 5, "app", "view"))
    flat: tuple[Any, ...] | None = tuple(x for tg in tags for x in tg) or None
    c.tags = flat
    contact = Contact.of(tz, sends, done) if has_contact else None
    c.contact = contact
    c.remember_completion(jidx, t)
    assert c.contact == remember_completion(contact, jidx, t)
    assert c.tags == flat
    assert c.last_event == 5
    assert seen_before(c, Event("e", "c", 5, "app", "view"))
