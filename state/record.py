"""The packed customer record: ``CustomerState`` and its byte layout, decoded and edited in place.

A shard holds millions of customers (contacted ones for a week, for the contact policy's caps), so
a customer's small fields live in one ``bytes`` object rather than separate ints, tuples and
records, which cost several times as much. Only the attempts are kept apart (``state.journey``).
"""

from __future__ import annotations

import zlib
from typing import Any, Final

from state.events import Event
from state.journey import Attempt
from state.policy import Contact

DEDUP_SLOTS: Final = 8  # recent event ids remembered per customer
TAG_FIELDS: Final = 4  # fields per record in CustomerState.tags

# CustomerState.rec, little-endian:
#   last_seen:6  n:1  n × event-id key:6                              (rewritten by every event)
#   t:2  t × (rule index:2  state:1  opened_ts:6  moment id:16)       held tags
#   tz_len:1  tz  s:2  s × (ts:6  len:1  channel)  d:2  d × (journey index:2  ts:6)   contact history,
#                                                                     absent while there is none
TS_BYTES: Final = 6  # bytes of an event time (enough until the year 6000)
ID_BYTES: Final = 6  # bytes of a remembered event id's key (id_key)
LAST_SEEN_AT: Final = 0
IDS_AT: Final = 6  # LAST_SEEN_AT + TS_BYTES: the id count (one byte)
RING_AT: Final = 7  # the first id hash; the held tags' count follows the last one
# Snapshots carry the wake-up inside the record, after last_seen (``CustomerState.__getstate__``): the layout
# before the wake-up became an attribute of its own, which keeps snapshots of either layout interchangeable.
SNAPSHOT_WAKE_AT: Final = 6
# A held tag's record, at offsets within it:
TAG_RULE_AT: Final = 0  # rule index:1, then the version of a directory of versions:1 (0: none)
TAG_STATE_AT: Final = 2  # state:1 (0 open, 1 actioned)
TAG_OPENED_AT: Final = 3  # opened_ts:6
TAG_MID_AT: Final = 9  # moment id:16 (the 32 hex digits as bytes)
TAG_BYTES: Final = 25
_TS: Final = TS_BYTES
_ID: Final = ID_BYTES
# Final: compiled, a direct reference rather than a look-up in the module's globals at each event.
_CRC32: Final = zlib.crc32
_ADLER32: Final = zlib.adler32
_IDS: Final = IDS_AT
_RING: Final = RING_AT
_TAG_BYTES: Final = TAG_BYTES
_NO_TAGS: Final = bytes(2)
_STATE_BYTE: Final = (b"\0", b"\1")  # a tag record's state byte: open, actioned
_COUNTS: Final = tuple(bytes((k,)) for k in range(DEDUP_SLOTS + 1))  # id-count bytes, prebuilt
_OPENED_END: Final = TAG_OPENED_AT + TS_BYTES
_MID_END: Final = TAG_MID_AT + 16
# A contact history holding one completion only: time zone length 0, no sends, one completion record follows.
_FIRST_DONE: Final = b"\0" + (0).to_bytes(2, "little") + (1).to_bytes(2, "little")


def _u(b: bytes, i: int, n: int) -> int:
    return int.from_bytes(b[i : i + n], "little")


class CustomerState:
    """Everything kept about one customer: one attempt slot per journey, recent ids, open tags, contact history.

    No timer is stored: every pending deadline (abandonment, attempt expiry, tag TTL, eviction) is
    derived from the state by ``next_deadline``, and the shard keeps one wake-up per customer at
    the earliest of them (``wake``: event time of the wake-up, 0 while it is being handled). All but
    the attempts and the wake-up live packed in ``rec`` (layout above); the properties decode and
    re-encode it, which the hot path only does for ids and times. The wake-up is read and moved
    several times per event and wake-up: kept apart (compiled, 8 unboxed bytes) it costs no new record.
    """

    __slots__ = ("cid", "attempts", "rec", "wake", "idle_until")

    # Defaults: unpickling a compiled instance runs __init__ with no arguments before __setstate__.
    def __init__(self, journeys: tuple[Attempt | None, ...] | int = 0, ts: int = 0, cid: str = "") -> None:
        # The very string object the shard's dict is keyed by, so wake-ups do not pin copies of it.
        self.cid = cid
        # The current attempt per journey index; the shard's shared all-None tuple while there is none.
        self.attempts: tuple[Attempt | None, ...] = journeys if isinstance(journeys, tuple) else (None,) * journeys
        self.rec = ts.to_bytes(_TS, "little") + b"\0" + _NO_TAGS
        self.wake = 0
        # Where the wake-ups moved last_seen to keep an idle customer (open tags, contact history): apart from
        # the last event time in ``rec``, which look-ups report. 0 while not moved.
        self.idle_until = 0

    @property
    def last_seen(self) -> int:
        """Latest event time, moved further while open tags or contact history keep an idle customer.

        The customer is evicted ``evict_after_ms`` after it.
        """
        seen = int.from_bytes(self.rec[:_TS], "little")  # not via _u: read on every wake-up check
        return seen if seen >= self.idle_until else self.idle_until

    @last_seen.setter
    def last_seen(self, ts: int) -> None:
        self.idle_until = ts  # only the wake-ups move it (state.deadlines); events move last_event

    @property
    def last_event(self) -> int:
        """The customer's latest event time (``last_seen`` before the wake-ups moved it)."""
        return int.from_bytes(self.rec[:_TS], "little")

    def _tags_at(self) -> int:
        return _RING + _ID * self.rec[_IDS]

    @property
    def tags(self) -> tuple[Any, ...] | None:
        """Held tags: flat (rule index, moment_id, opened_ts, state: 0 open | 1 actioned) records.

        One per rule, in the order the rules first got one (a newer moment of a rule takes the older
        one's place); None while no tag is held.
        """
        r = self.rec
        i = _RING + _ID * r[_IDS]
        n = int.from_bytes(r[i : i + 2], "little")
        if not n:
            return None
        out: list[Any] = []
        for k in range(i + 2, i + 2 + n * _TAG_BYTES, _TAG_BYTES):
            out += (_u(r, k + TAG_RULE_AT, 2), r[k + TAG_MID_AT : k + _MID_END].hex(), _u(r, k + TAG_OPENED_AT, _TS),
                    r[k + TAG_STATE_AT])
        return tuple(out)

    @tags.setter
    def tags(self, tags: tuple[Any, ...] | None) -> None:
        r = self.rec
        i = self._tags_at()
        end = i + 2 + _u(r, i, 2) * _TAG_BYTES
        n = len(tags) // TAG_FIELDS if tags else 0
        body = b"".join(
            tags[k].to_bytes(2, "little") + bytes((tags[k + 3],)) + tags[k + 2].to_bytes(_TS, "little")
            + bytes.fromhex(tags[k + 1])
            for k in range(0, n * TAG_FIELDS, TAG_FIELDS)
        ) if tags else b""
        self.rec = r[:i] + n.to_bytes(2, "little") + body + r[end:]

    def put_tag(self, ridx: int, mid: str, opened: int, state: int) -> None:
        """Hold a tag of rule ``ridx`` (replacing that rule's record in place, else appending one).

        The same as setting ``tags`` to the decoded tuple so edited, without decoding it: this runs
        for every moment.
        """
        r = self.rec
        i = _RING + _ID * r[_IDS]
        n = int.from_bytes(r[i : i + 2], "little")
        end = i + 2 + n * _TAG_BYTES
        key = ridx.to_bytes(2, "little")
        new = b"".join((key, _STATE_BYTE[state], opened.to_bytes(_TS, "little"), bytes.fromhex(mid)))
        low = ridx & 0xFF  # the rule (the high byte is the version it fired under, see ``state.firing.fire``)
        for k in range(i + 2, end, _TAG_BYTES):
            if r[k] == low:
                self.rec = b"".join((r[:k], new, r[k + _TAG_BYTES :]))
                return
        self.rec = b"".join((r[:i], (n + 1).to_bytes(2, "little"), r[i + 2 : end], new, r[end:]))

    def mark_tag_actioned(self, ridx: int, mid: str) -> int | None:
        """Move rule ``ridx``'s tag to actioned if it is the open tag of moment ``mid``; return its opened_ts.

        Returns None (and changes nothing) when the rule holds no such open tag.
        """
        r = self.rec
        i = _RING + _ID * r[_IDS]
        end = i + 2 + int.from_bytes(r[i : i + 2], "little") * _TAG_BYTES
        for k in range(i + 2, end, _TAG_BYTES):
            if r[k] == ridx:
                if r[k + TAG_STATE_AT] != 0 or r[k + TAG_MID_AT : k + _MID_END].hex() != mid:
                    return None
                self.rec = b"".join((r[: k + TAG_STATE_AT], _STATE_BYTE[1], r[k + TAG_OPENED_AT :]))
                return int.from_bytes(r[k + TAG_OPENED_AT : k + _OPENED_END], "little")
        return None

    def _contact_at(self) -> int:
        r = self.rec
        i = _RING + _ID * r[_IDS]
        return i + 2 + int.from_bytes(r[i : i + 2], "little") * _TAG_BYTES

    @property
    def contact(self) -> Contact | None:
        """The contact policy's memory of the customer, None while there is none."""
        r = self.rec
        i = self._contact_at()
        if i == len(r):
            return None
        tz_len = r[i]
        tz = r[i + 1 : i + 1 + tz_len].decode() if tz_len else None
        i += 1 + tz_len
        sends: list[tuple[int, str]] = []
        for _ in range(_u(r, i, 2)):
            ch_len = r[i + 2 + _TS]
            sends.append((_u(r, i + 2, _TS), r[i + 3 + _TS : i + 3 + _TS + ch_len].decode()))
            i += _TS + 1 + ch_len
        i += 2
        done = [(_u(r, k, 2), _u(r, k + 2, _TS)) for k in range(i + 2, i + 2 + _u(r, i, 2) * 8, 8)]
        return Contact.of(tz, sends, done)

    @contact.setter
    def contact(self, contact: Contact | None) -> None:
        r = self.rec
        head = r[: self._contact_at()]
        if contact is None:
            self.rec = head
            return
        tz = contact.tz.encode() if contact.tz else b""
        sends = contact.send_records()
        done = contact.done_records()
        self.rec = b"".join((
            head, bytes((len(tz),)), tz, len(sends).to_bytes(2, "little"),
            *(t.to_bytes(_TS, "little") + bytes((len(ch),)) + ch.encode() for t, ch in sends),
            len(done).to_bytes(2, "little"),
            *(j.to_bytes(2, "little") + t.to_bytes(_TS, "little") for j, t in done),
        ))

    def completed_at(self, jidx: int) -> int | None:
        """When the customer last completed journey ``jidx``, if the contact history remembers it.

        The same as ``contact.completed_at(jidx)``, read from the packed record without decoding the
        history: this runs for every new attempt.
        """
        r = self.rec
        i = self._contact_at()
        if i == len(r):
            return None
        i += 1 + r[i]  # past the time zone: at the sends' count
        for _ in range(int.from_bytes(r[i : i + 2], "little")):
            i += _TS + 1 + r[i + 2 + _TS]
        key = jidx.to_bytes(2, "little")
        done = i + 4
        for k in range(done, done + int.from_bytes(r[i + 2 : done], "little") * 8, 8):
            if r[k : k + 2] == key:
                return int.from_bytes(r[k + 2 : k + 8], "little")
        return None

    def remember_completion(self, jidx: int, t: int) -> None:
        """Note that the customer completed journey ``jidx`` at ``t``: the latest per journey is kept.

        The same as setting ``contact`` to ``policy.remember_completion(contact, jidx, t)``, edited in the packed
        record without decoding the history (this runs for every completion): the completions are its last part,
        the other records keep their order and the new one goes last.
        """
        r = self.rec
        i = self._contact_at()
        new = jidx.to_bytes(2, "little") + t.to_bytes(_TS, "little")
        if i == len(r):
            self.rec = r + _FIRST_DONE + new  # no time zone, no sends, one completion
            return
        i += 1 + r[i]  # past the time zone: at the sends' count
        for _ in range(int.from_bytes(r[i : i + 2], "little")):
            i += _TS + 1 + r[i + 2 + _TS]
        done = i + 4
        key = new[:2]
        kept = [r[k : k + 8] for k in range(done, done + int.from_bytes(r[i + 2 : done], "little") * 8, 8)
                if r[k : k + 2] != key]
        self.rec = b"".join((r[: i + 2], (len(kept) + 1).to_bytes(2, "little"), *kept, new))

    @property
    def tz(self) -> str | None:
        """The customer's time zone, if known (without decoding the rest of the contact history)."""
        r = self.rec
        i = _RING + _ID * r[_IDS]  # where the contact history starts, as ``_contact_at`` (inlined: read per event)
        i += 2 + int.from_bytes(r[i : i + 2], "little") * _TAG_BYTES
        return r[i + 1 : i + 1 + r[i]].decode() if i < len(r) and r[i] else None

    def __getstate__(self) -> tuple[object, ...]:
        # last_seen as before (the layout is unchanged): a restored customer's last event is where it was moved.
        r = self.rec
        return (self.cid, self.attempts, self.last_seen.to_bytes(_TS, "little") + self.wake.to_bytes(_TS, "little")
                + r[_IDS:])

    def __setstate__(self, st: tuple[Any, ...]) -> None:
        self.cid, self.attempts, r = st
        self.wake = int.from_bytes(r[SNAPSHOT_WAKE_AT : SNAPSHOT_WAKE_AT + _TS], "little")
        self.idle_until = 0
        self.rec = r[:SNAPSHOT_WAKE_AT] + r[SNAPSHOT_WAKE_AT + _TS :]


def id_key(event_id: str) -> bytes:
    """The 6 bytes an event id is remembered by: the same in every process, build and run.

    CRC-32 of its UTF-8 bytes (ids that differ in one burst of up to 32 bits, such as one changed or two swapped
    characters, never share it) and the position-weighted half of Adler-32: 48 bits, ≈40 of them spread for short
    ids (a false match ~1 in 10^11 per event). Not secret: ids can be built to share a key (docs/events.md).
    Python's ``hash`` was used before: salted per process, so after a restart from a snapshot no remembered id
    matched again and a copy of an event read before the restart was applied a second time after it.
    """
    b = event_id.encode("utf-8", "surrogatepass")
    return (_CRC32(b) | (_ADLER32(b) >> 16) << 32).to_bytes(_ID, "little")


def seen_before(c: CustomerState, ev: Event) -> bool:
    """Return whether the event id is among the customer's recent ones; else remember it and its time.

    Ids are kept as 48-bit keys (``id_key``), the same after a restart: a copy delivered on either side of a
    restart from a snapshot counts once.
    """
    key = id_key(ev.event_id)
    r = c.rec
    n = r[_IDS]
    end = _RING + n * _ID
    # Most ids are new: one search of the whole record settles that, and only a hit (a copy, or the key's bytes
    # elsewhere in the record) looks for a whole entry of the ring. ``partition`` takes its one argument as is
    # (``find`` builds an argument tuple; ``in`` first tries the key as an int and raises inside), and finding
    # nothing it returns the record itself and two empty bytes: only the result tuple is allocated.
    if r.partition(key)[1]:
        i = r.find(key, _RING, end)
        while i >= 0:
            if (i - _RING) % _ID == 0:  # only whole entries count
                return True
            i = r.find(key, i + 1, end)
    # One join builds the new record (this runs for every event): last_seen (if later), the id count,
    # the ids with the oldest dropped when the ring is full, the new id, then the rest untouched.
    if n >= DEDUP_SLOTS:
        first, count = _RING + _ID, r[_IDS:_RING]
    else:
        first, count = _RING, _COUNTS[n + 1]
    ts = ev.ts_ms
    # last_seen (6 bytes, little-endian) read byte by byte: compiled, six indexed loads rather than a call of
    # int.from_bytes on a slice.
    if ts > (r[0] | r[1] << 8 | r[2] << 16 | r[3] << 24 | r[4] << 32 | r[5] << 40):
        c.rec = b"".join((ts.to_bytes(_TS, "little"), count, r[first:end], key, r[end:]))
    else:
        c.rec = b"".join((r[:_IDS], count, r[first:end], key, r[end:]))
    return False
