"""Routing and parsing must agree (DESIGN.md §4): escaped keys, decoys in attrs and duplicate keys never let an
event reach a customer's state on a shard routing chose by another id, nor move a clock by a time parsing does
not read."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.replay_source import _RawPartition
from flows.config import PipelineConfig
from flows.dataflow import make_source
from state.batches import RawBatch, Tick
from state.events import Event, parse_event
from state.routing import shard_of_id, shard_of_raw, ts_of_raw, validated_max_ts
from state.shard import Shard, process, wall_ms
from tests.helpers import MIN, PACK, T0

SHARDS = 16
HOSTILE_TS = 4_102_444_000_000  # valid (before 2100), far in the future


def _str(s: str, rng: random.Random, p: float) -> str:
    """A JSON string literal of ``s`` with random characters written as \\u escapes."""
    out = []
    for c in s:
        if c in '"\\' or ord(c) >= 0x10000:
            out.append(json.dumps(c, ensure_ascii=True)[1:-1])
        elif rng.random() < p or ord(c) < 0x20:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _obj(pairs: list[tuple[str, Any]], rng: random.Random, p: float) -> str:
    return "{" + ",".join(f"{_str(k, rng, p)}:" + (_obj(v, rng, p) if isinstance(v, list) else
                                                  _str(v, rng, p) if isinstance(v, str) else json.dumps(v))
                          for k, v in pairs) + "}"


ids = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=12).filter(lambda s: not s.isspace())


@settings(max_examples=400, deadline=None)
@given(ids, ids, st.integers(T0, T0 + 10**9), st.integers(T0, HOSTILE_TS), st.randoms(use_true_random=False),
       st.sampled_from([0.0, 0.1, 0.5]), st.sampled_from(["none", "first", "last"]), st.booleans(),
       st.integers(1, 64))
def test_a_valid_event_reaches_its_parsed_customer_or_a_dead_letter_and_ticks_read_its_parsed_time(
        cid: str, decoy: str, ts: int, decoy_ts: int, rng: random.Random, p: float, attrs_at: str, dup: bool,
        shards: int) -> None:
    pairs: list[tuple[str, Any]] = [("event_id", "e1"), ("customer_id", cid), ("ts", ts), ("channel", "app"),
                                    ("type", "view")]
    if dup:  # a duplicate top-level key before the real one: parsing keeps the last
        pairs.insert(0, ("customer_id", decoy))
        pairs.insert(0, ("ts", decoy_ts))
    attrs = ("attrs", [("customer_id", decoy), ("ts", decoy_ts)])
    if attrs_at == "first":
        pairs.insert(0, attrs)
    elif attrs_at == "last":
        pairs.append(attrs)
    raw = _obj(pairs, rng, p).encode("utf-8", "surrogatepass")
    ev = parse_event(raw)
    assert type(ev) is Event, ev
    routed = shard_of_raw(raw, shards)
    sh = Shard(PACK, shards=shards, clock=lambda: 0)
    out = process(sh, [RawBatch("t", 0, [raw], [0], routed), Tick(0, final=True)])
    if routed == shard_of_id(ev.customer_id, shards):
        assert list(sh.customers) == [ev.customer_id]
        assert out.dead == []
    else:  # routed by a decoy: never applied, on any shard
        assert sh.customers == {}
        assert [d["reason"] for d in out.dead] == ["routing_mismatch:customer_id"]
        assert "\\" in raw.decode("utf-8", "surrogatepass")  # only a crafted message is routed by a decoy
    t = ts_of_raw(raw)
    assert t is None or validated_max_ts([(t, raw)], PACK.types) in (0, ev.ts_ms)
    # A line its shard dead-letters as routing_mismatch never moves a clock.
    if t is not None and routed != shard_of_id(ev.customer_id, shards):
        assert validated_max_ts([(t, raw)], PACK.types, shards=shards) == 0


def _line(eid: str, cid_key: str, cid: str, ts_key: str, ts: int, **extra: Any) -> bytes:
    # Built by hand: the keys' spelling is the point.
    rest = "".join(f',"{k}":{orjson.dumps(v).decode()}' for k, v in extra.items())
    return (f'{{"event_id":"{eid}","{cid_key}":"{cid}","{ts_key}":{ts},"channel":"app","type":"view"{rest}}}'
            ).encode()


def test_an_event_routed_by_another_id_is_dead_lettered_and_never_reaches_state() -> None:
    decoy = _line("d1", "customer\\u005fid", "c1", "ts", T0, attrs={"customer_id": "decoy"})
    wrong = shard_of_id("decoy", SHARDS)
    assert wrong != shard_of_id("c1", SHARDS)
    sh = Shard(PACK, shards=SHARDS)
    out = process(sh, [RawBatch("t", 0, [decoy], [7], wrong), Tick(0, final=True)])
    assert [(d["reason"], d["offset"]) for d in out.dead] == [("routing_mismatch:customer_id", 7)]
    assert "c1" not in out.dead[0]["detail"]  # never a customer id in a detail
    assert out.invalid == {"routing_mismatch": 1}
    assert sh.customers == {}
    assert out.events == {}
    # Routed to its own shard, the same line is simply an event of c1.
    sh = Shard(PACK, shards=SHARDS)
    out = process(sh, [RawBatch("t", 0, [decoy], [7], shard_of_id("c1", SHARDS)), Tick(0, final=True)])
    assert out.dead == []
    assert list(sh.customers) == ["c1"]


def test_a_replay_tick_never_carries_a_time_parsing_does_not_read() -> None:
    lines = [_line("a", "customer_id", "c1", "ts", T0, journey="cart"),
             _line("h1", "customer_id", "h", "t\\u0073", T0 + MIN, attrs={"ts": HOSTILE_TS}),
             _line("h2", "customer_id", "h", "ts", T0 + 2 * MIN, attrs={"t\\u0073": HOSTILE_TS})]
    part = _RawPartition("file:x", lambda start: iter(lines[start:]), 0, 4, 1)
    ticks: list[int] = []
    while True:
        try:
            items = part.next_batch()
        except StopIteration:
            break
        ticks += [t.max_ts_ms for _k, t in items if isinstance(t, Tick)]
    assert max(ticks) == T0 + 2 * MIN


def _ticks(part: _RawPartition) -> list[Tick]:
    ticks: list[Tick] = []
    while True:
        try:
            items = part.next_batch()
        except StopIteration:
            return ticks
        ticks += [t for _k, t in items if isinstance(t, Tick)]


def test_a_line_dead_lettered_as_routing_mismatch_never_moves_a_tick() -> None:
    """Adversary 4: the escaped top-level key and a literal decoy in attrs route the line to the decoy's shard,
    where it is dead-lettered; its future time must not become the end-of-input flush time."""
    cids = [f"c{i:07d}" for i in range(40)]
    cid = next(c for c in cids if shard_of_id(c, SHARDS) != shard_of_id("zz1", SHARDS))
    lines = [_line("a", "customer_id", cid, "ts", T0, journey="cart"),
             _line("evil-1", "customer\\u005fid", cid, "ts", T0 + 1440 * MIN, attrs={"customer_id": "zz1"}),
             _line("b", "customer_id", cid, "ts", T0 + MIN)]
    assert shard_of_raw(lines[1], SHARDS) != shard_of_id(cid, SHARDS)
    ticks = _ticks(_RawPartition("file:x", lambda start: iter(lines[start:]), 0, SHARDS, 1))
    assert ticks[-1].final
    assert max(t.max_ts_ms for t in ticks) == T0 + MIN


def test_a_live_line_too_far_in_the_future_never_moves_a_tick(tmp_path: Path) -> None:
    """Adversary 3: with the live clock the shard dead-letters a line beyond --max-future as bad_ts:ts; the
    source's ticks, which live shards follow, must not carry its time."""
    now = wall_ms()
    lines = [_line("a", "customer_id", "c1", "ts", now - 2 * MIN),
             _line("evil-f", "customer_id", "zz-evil", "ts", now + 10 * 1440 * MIN),
             _line("b", "customer_id", "c2", "ts", now - MIN)]
    assert parse_event(lines[1], now_ms=now, max_future_ms=3_600_000).code == "bad_ts:ts"  # type: ignore[union-attr]
    path = tmp_path / "live.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    # Built as the pipeline builds it: the live clock and --max-future must reach the source.
    src = make_source(PipelineConfig(source=f"file:{path}", clock="live", shards=4, batch_lines=1), PACK)
    (name,) = src.list_parts()  # type: ignore[attr-defined]
    ticks = _ticks(src.build_part("input", name, None))  # type: ignore[attr-defined]
    assert ticks
    assert max(t.max_ts_ms for t in ticks) == now - MIN


def test_feedback_routed_by_a_decoy_id_is_dead_lettered_not_applied_on_the_wrong_shard() -> None:
    # The top-level key spelled with an escape, a literal decoy key nested inside: routing slices the decoy.
    fb = (b'{"moment_id":"m1","customer\\u005fid":"c1","outcome":"declined","ts":%d,'
          b'"context":{"customer_id":"decoy"}}' % T0)
    wrong = shard_of_raw(fb, SHARDS)
    assert wrong == shard_of_id("decoy", SHARDS) != shard_of_id("c1", SHARDS)
    sh = Shard(PACK, shards=SHARDS, feedback_sources=frozenset({"kafka:fb"}))
    out = process(sh, [RawBatch("kafka:fb", 0, [fb], [3], wrong)])
    assert [(d["reason"], d["offset"], d["source"]) for d in out.dead] == [("routing_mismatch:customer_id", 3,
                                                                            "kafka:fb")]
    assert out.invalid == {"routing_mismatch": 1}
    assert out.feedback == []
    # On its own shard the same record is feedback about c1's moment.
    sh = Shard(PACK, shards=SHARDS, feedback_sources=frozenset({"kafka:fb"}))
    out = process(sh, [RawBatch("kafka:fb", 0, [fb], [3], shard_of_id("c1", SHARDS))])
    assert out.dead == []
    assert [(f["customer_id"], f["outcome"]) for f in out.feedback] == [("c1", "declined")]
