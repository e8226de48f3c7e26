"""Route raw messages to shards by customer id without parsing them.

Keys are shards (``crc32(customer_id) % shards``), not customers: see
benchmarks/RESULTS.md for why. Routing happens before the exchange between
workers, so it must be cheap and must send a customer's events to the same
shard whatever encoding of the id a message uses.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Collection, Iterator
from typing import Final

import orjson

from state import BUILD
from state.events import MAX_TS_MS, MIN_TS_MS, Event, _RejectError, parse_event, parse_ts, unframed

_CUSTOMER_KEY: Final = b'"customer_id"'
# How many lines ``split_lines`` reads between two calls of its ``let_go``.
LET_GO_LINES: Final = 256
# Compiled, a loop over the bytes costs less than a regex match, which builds a match object (callgrind: a few
# hundred instructions a line each; the two ``find`` calls around it cost more); pure Python, the patterns are faster.
_BYTE_LOOPS: Final = BUILD.compiled
# The common spellings, as one C call each (measured ≈0.2 µs a line faster than slicing by hand); anything
# they do not match takes the general path below.
_ID_AT: Final = re.compile(rb'"customer_id"\s*:\s*"([^"\\]*)"').match
_TS_AT: Final = re.compile(rb'"ts"\s*:[ \t]*([0-9]{1,15})(?:[ \t\r\n,}]|\Z)').match


def shard_of_id(customer_id: str, shards: int) -> int:
    """Return the shard of a customer id.

    Args:
        customer_id: The customer key.
        shards: Number of shards (> 0).

    Returns:
        An int in ``range(shards)``; stable across processes and restarts.
    """
    return zlib.crc32(customer_id.encode("utf-8", "surrogatepass")) % shards


def shard_of_raw(raw: bytes, shards: int) -> int:
    """Return the shard of a raw JSON event, slicing the customer id from the bytes.

    Falls back to a full parse when the id is escaped or the slice is not
    obvious, so that the same customer always lands on the same shard.
    Messages without a usable id go to shard 0, where parsing dead-letters them.
    A crafted message (the top-level key spelled with escapes, a literal decoy
    key inside ``attrs``) can still be routed by the decoy: the shard checks each
    parsed id against the shard it was routed to and dead-letters a mismatch
    (``routing_mismatch``). Scanning every message for escapes instead would cost
    more than routing itself (measured: +0.3 µs on 1.1 µs a line).

    Args:
        raw: One message as received.
        shards: Number of shards (> 0).

    Returns:
        An int in ``range(shards)``.
    """
    i = raw.find(_CUSTOMER_KEY)
    if i >= 0 and raw.find(_CUSTOMER_KEY, i + 13) < 0:
        if _BYTE_LOOPS:
            value = id_value_at(raw, i + 13)
            if value is not None:
                return zlib.crc32(value) % shards
        else:
            m = _ID_AT(raw, i)
            if m is not None:
                return zlib.crc32(m.group(1)) % shards
    return _shard_by_slicing(raw, shards)


def _skip_space(raw: bytes, j: int) -> int:
    n = len(raw)
    while j < n:
        c = raw[j]
        if c != 32 and not 9 <= c <= 13:  # what ``\s`` matches in a bytes pattern
            break
        j += 1
    return j


def id_value_at(raw: bytes, j: int) -> bytes | None:
    """What ``_ID_AT`` captures after ``"customer_id"`` ends at ``j`` (None where it does not match), by bytes."""
    j = _skip_space(raw, j)
    if j >= len(raw) or raw[j] != 58:  # ':'
        return None
    j = _skip_space(raw, j + 1)
    if j >= len(raw) or raw[j] != 34:  # '"'
        return None
    # The id (a few bytes) by a loop too: compiled, two ``find`` calls cost more (their arguments are parsed).
    n = len(raw)
    end = j + 1
    while end < n:
        c = raw[end]
        if c == 34:
            return raw[j + 1 : end]
        if c == 92:  # an escape: only a parse reads the id
            return None
        end += 1
    return None


def _shard_by_slicing(raw: bytes, shards: int) -> int:
    # The general path, byte by byte; `shard_of_raw`'s pattern is a shortcut that must agree with it.
    i = raw.find(_CUSTOMER_KEY)
    if i >= 0 and raw.find(_CUSTOMER_KEY, i + 13) < 0:
        colon = raw.find(b":", i + 13)
        if colon >= 0 and raw[i + 13 : colon].strip() == b"":
            start = raw.find(b'"', colon)
            if start >= 0 and raw[colon + 1 : start].strip() == b"":
                end = raw.find(b'"', start + 1)
                if end > start:
                    value = raw[start + 1 : end]
                    if b"\\" not in value:
                        return zlib.crc32(value) % shards
    return _shard_by_parse(raw, shards)


def _shard_by_parse(raw: bytes, shards: int) -> int:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 0
    cid = doc.get("customer_id") if isinstance(doc, dict) else None
    if not isinstance(cid, str):
        return 0
    return shard_of_id(cid, shards)


_TS_KEY: Final = b'"ts"'


def ts_of_raw(raw: bytes) -> int | None:
    """Return the ``ts`` of a raw JSON event without parsing it, or None.

    Used to broadcast the input's progress to idle shards (``state.batches.Tick``) and to release a live
    simulation's events on time. Integer ts take a fast path; an ISO-8601 string is converted by the parser
    ``state.events`` uses (``parse_ts``), so the result equals the parsed event's ts. Messages whose ts is
    not found, unreadable or outside the valid range (2000..2100, which parsing rejects) give None. A crafted
    message may show a decoy (a key spelled ``"t\\u0073"`` next to an ``attrs.ts``):
    ``validated_max_ts`` takes a time only from a line whose parsed ts equals it.

    Args:
        raw: One message.

    Returns:
        Epoch ms, or None.
    """
    if _BYTE_LOOPS:
        return _ts_by_slicing(raw)  # the general path, which the pattern must agree with: compiled, the cheaper
    i = raw.find(_TS_KEY)
    if i >= 0 and raw.find(_TS_KEY, i + 4) < 0:
        m = _TS_AT(raw, i)
        if m is not None:
            ts = int(m.group(1))
            return ts if MIN_TS_MS <= ts < MAX_TS_MS else None
    return _ts_by_slicing(raw)


def _ts_by_slicing(raw: bytes) -> int | None:
    # The general path, byte by byte; `ts_of_raw`'s pattern is a shortcut that must agree with it.
    i = raw.find(_TS_KEY)
    if i < 0:
        return None
    if raw.find(_TS_KEY, i + 4) >= 0:
        # "ts" also names something else (an attrs key, a value): only a parse tells which is the event's.
        return _ts_by_parse(raw)
    if i + 4 < len(raw) and raw[i + 4] == 58:  # ':' right after the key, as encoders write it: no slice to strip
        colon = i + 4
    else:
        colon = raw.find(b":", i + 4)
        if colon < 0 or raw[i + 4 : colon].strip():
            return None
    j = colon + 1
    n = len(raw)
    while j < n and raw[j] in b" \t":
        j += 1
    if j < n and raw[j] == 34:  # '"': an ISO-8601 string (the rare path: only such lines pay for it)
        return _iso_ts(raw, j + 1)
    k = j
    while k < n and 48 <= raw[k] <= 57:
        k += 1
    if k == j or k - j > 15:
        return None
    if k < n and raw[k] not in b" \t\r\n,}":
        return None
    ts = int(raw[j:k])
    # An out-of-range ts is dead-lettered by parsing; it must not move every shard's watermark.
    return ts if MIN_TS_MS <= ts < MAX_TS_MS else None


def _iso_ts(raw: bytes, start: int) -> int | None:
    # The string's bytes up to its closing quote: without an escape they are what JSON decoding gives. An
    # escaped ISO time is left out (None): only a full parse could read it, and this runs before parsing.
    end = raw.find(b'"', start)
    if end < 0:
        return None
    value = raw[start:end]
    if b"\\" in value:
        return None
    try:
        return _ts_value(value.decode("utf-8"))
    except UnicodeDecodeError:
        return None


def _ts_value(value: object) -> int | None:
    if type(value) is int:
        return value if MIN_TS_MS <= value < MAX_TS_MS else None
    if type(value) is not str:
        return None
    try:
        return parse_ts(value)
    except _RejectError:
        return None


def tracked_ts(raw: bytes) -> int | None:
    """Return the ts a line offers to the input's clock (the end-of-input time), or None.

    Like ``ts_of_raw``, but a line holding a JSON escape is parsed: an escape may hide the event's ts from
    slicing (``"t\\u0073"``, an escaped ISO string) or leave a decoy in view, and a valid event must count
    with its parsed time whatever its spelling (``validated_max_ts`` still checks the line). Escapes are
    rare in real traffic, so the parse is too.
    """
    if b"\\" in raw:
        return parsed_ts(raw)
    return ts_of_raw(raw)


def parsed_ts(raw: bytes) -> int | None:
    """Return the ts of a line by a full JSON parse, or None (not an object, no valid ts)."""
    return _ts_by_parse(raw)


def _ts_by_parse(raw: bytes) -> int | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return _ts_value(doc.get("ts")) if isinstance(doc, dict) else None


def validated_max_ts(
    candidates: list[tuple[int, bytes]],
    types: Collection[str],
    *,
    shards: int = 0,
    now_ms: int | None = None,
    max_future_ms: int | None = None,
) -> int:
    """Return the largest sliced ts among ``(ts, raw)`` candidates that the shard would accept (0 if none):
    only such a line may move the input's clock.

    A candidate counts when its line parses as a valid event with exactly that ts (under the live clock's
    ``now_ms``/``max_future_ms`` limit when given) and, with ``shards`` > 0, is routed to the shard of its
    parsed customer id (else the shard dead-letters it as ``routing_mismatch``). A duplicate event id cannot
    be told here: see docs/detection.md. Usually the newest candidate is valid, so this parses about one line
    per batch.
    """
    best = max(candidates, key=_first)
    if _accepted(best, types, shards, now_ms, max_future_ms):
        return best[0]
    for c in sorted(candidates, key=_first, reverse=True):
        if _accepted(c, types, shards, now_ms, max_future_ms):
            return c[0]
    return 0


def _accepted(
    c: tuple[int, bytes], types: Collection[str], shards: int, now_ms: int | None, max_future_ms: int | None
) -> bool:
    t, raw = c
    ev = parse_event(raw, types=types, now_ms=now_ms, max_future_ms=max_future_ms)
    if type(ev) is not Event or ev.ts_ms != t:
        return False
    return shards <= 0 or shard_of_raw(raw, shards) == shard_of_id(ev.customer_id, shards)


def _first(c: tuple[int, bytes]) -> int:
    return c[0]


def split_lines(lines: Iterator[bytes], limit: int, shards: int, keep: list[bool], values: list[list[bytes]],
                offsets: list[list[int]], pos: int, max_ts: int, candidates: list[tuple[int, bytes]],
                behind: list[int] | None, now: int | None,
                let_go: Callable[[], None] | None = None) -> tuple[int, int, bool, bytes | None]:
    """Read up to ``limit`` lines into per-shard batches: a replay source's per-line work, here to be compiled.

    Each line, unframed, goes to ``values[s]`` and its position to ``offsets[s]`` when ``keep[s]`` (``s`` its
    shard, ``shard_of_raw``); a line whose ts (sliced, or parsed when it holds an escape) is above ``max_ts`` is a
    ``candidates`` entry (``validated_max_ts``). With ``behind``, how far each kept line's ts is behind the newest
    before it (disorder). With ``now`` (a live simulation), a line whose ts is later stops the batch unread.
    With ``let_go``, it is called every ``LET_GO_LINES`` lines read, blank ones too (``state.let_go``: other threads
    get the GIL).

    Returns:
        The position after the last line read, the non-empty lines read, whether the input ended, and the line
        held back for ``now`` (None if none).
    """
    n = 0
    newest = max_ts
    for line in lines:
        raw = unframed(line)
        t = ts_of_raw(raw)
        if now is not None and t is not None and t > now:
            return pos, n, False, raw  # not yet: a live simulation releases each event at its own time
        pos += 1
        if let_go is not None and pos % LET_GO_LINES == 0:  # every line read counts (blank ones too)
            let_go()
        if not raw:
            continue
        s = shard_of_raw(raw, shards)
        if keep[s]:
            values[s].append(raw)
            offsets[s].append(pos)
        if b"\\" in raw:
            # An escape may hide the event's ts from slicing or show a decoy: the tracked time is the parsed one.
            t = parsed_ts(raw)
        if t is not None:
            if t > max_ts:
                candidates.append((t, raw))
            if behind is not None:
                if t >= newest:
                    newest = t
                elif keep[s]:
                    behind.append(newest - t)
        n += 1
        if n >= limit:
            return pos, n, False, None
    return pos, n, True, None


class ShardCountMismatchError(ValueError):
    """A batch routed to a shard number this process does not have: the cluster's processes disagree on --shards."""

    def __init__(self, routed: int, shards: int) -> None:
        super().__init__(f"a batch was routed to shard {routed}, but this process runs {shards} shards: the "
                         f"processes of the cluster were started with different --shards; give every process the "
                         f"same --shards (and the same -w)")
