"""Replay sources read by shard ownership: each process keeps its own shards' lines, ticks follow the whole input."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from connectors.placement import Placement, siphash13, worker_of_key
from connectors.replay_source import JsonlFileSource
from connectors.simulator_source import SimulatorSource
from state.batches import RawBatch, Tick
from state.routing import ts_of_raw
from tests.helpers import T0

SHARDS = 16


# -- where Bytewax runs a key -------------------------------------------------------------------------
def test_siphash_matches_rusts_default_hasher_on_shard_keys() -> None:
    # Values printed by Rust 1.95 for `#[derive(Hash)] struct StateKey(String)` through
    # `BuildHasherDefault::<DefaultHasher>`, as Bytewax 0.21's stateful_batch hashes its keys.
    assert siphash13(b"0\xff") == 18187302216140149989
    assert siphash13(b"1\xff") == 16569625464242099095
    assert siphash13(b"4\xff") == 17458395330688339326
    assert worker_of_key("2", 7) == 10421790385219844055 % 7


def test_every_shard_has_exactly_one_owner_process() -> None:
    for processes, workers in [(1, 1), (2, 1), (2, 2), (3, 2)]:
        owners = [Placement(p, processes, workers).own_shards(64) for p in range(processes)]
        assert frozenset().union(*owners) == frozenset(range(64))
        assert sum(map(len, owners)) == 64
        assert all(owners), "with 64 shards every process owns some"


# -- partitioned file source -----------------------------------------------------------------------
def _events(n: int) -> list[bytes]:
    # Event times rise but not strictly with the line, so the batch's largest time is not always its last line.
    return [orjson.dumps({"event_id": f"e{i}", "customer_id": f"c{i % 37}", "ts": T0 + 1000 * i + 700 * (i % 3),
                          "channel": "app", "type": "view"}) for i in range(n)]


def _drain(part: object) -> list[list[tuple[str, RawBatch | Tick]]]:
    batches = []
    while True:
        try:
            batches.append(part.next_batch())  # type: ignore[attr-defined]
        except StopIteration:
            return batches


def _file(tmp_path: Path, lines: list[bytes]) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def test_each_process_reads_every_line_but_keeps_only_its_own_shards(tmp_path: Path) -> None:
    lines = _events(500)
    path = _file(tmp_path, lines)
    kept: dict[int, list[tuple[int, bytes]]] = {}
    for p in range(2):
        placement = Placement(p, 2, 1)
        src = JsonlFileSource([path], SHARDS, batch_lines=64, placement=placement)
        (name,) = src.list_parts()
        assert name == f"0-p{p}"
        own = placement.own_shards(SHARDS)
        batches = _drain(src.build_part("input", name, None))
        for items in batches:
            ticks = [k for k, v in items if type(v) is Tick]
            assert sorted(ticks, key=int) == sorted(map(str, own), key=int), "ticks go to own shards only"
        for k, v in (kv for items in batches for kv in items):
            if type(v) is RawBatch:
                assert int(k) in own
                kept.setdefault(p, []).extend(zip(v.offsets, v.values, strict=True))
        # The last tick of either process carries the largest event time of the whole file.
        final = [v for k, v in batches[-1] if type(v) is Tick]
        assert final
        assert all(t.final and t.max_ts_ms == max(map(ts_of_raw, lines)) for t in final)  # type: ignore
    both = sorted(kept[0] + kept[1])
    assert both == [(i + 1, raw) for i, raw in enumerate(lines)], "every line is kept by exactly one process"


def test_ticks_follow_every_line_read_not_only_the_kept_ones(tmp_path: Path) -> None:
    lines = _events(300)
    path = _file(tmp_path, lines)
    one = _drain(JsonlFileSource([path], SHARDS, batch_lines=50).build_part("input", "0", None))
    split = _drain(JsonlFileSource([path], SHARDS, batch_lines=50, placement=Placement(1, 2, 1))
                   .build_part("input", "0-p1", None))

    def ticks(batches: list[list[tuple[str, RawBatch | Tick]]]) -> list[Tick]:
        return [next(v for _k, v in items if type(v) is Tick) for items in batches]  # type: ignore[misc]

    assert ticks(one) == ticks(split)


def test_a_single_process_keeps_the_plain_positions_and_partition_names(tmp_path: Path) -> None:
    path = _file(tmp_path, _events(10))
    src = JsonlFileSource([path, path], SHARDS, batch_lines=4, placement=Placement(0, 1, 2))
    assert src.list_parts() == ["0", "1"]
    part = src.build_part("input", "1", 3)
    items = part.next_batch()
    assert part.snapshot()[:2] == (7, None)
    assert sorted(o for _k, v in items if type(v) is RawBatch for o in v.offsets) == [4, 5, 6, 7]


def test_a_resumed_partition_feeds_the_shards_it_fed_before_the_restart(tmp_path: Path) -> None:
    """After a restart with other -w, shards move between processes; positions stay with the shards they fed."""
    path = _file(tmp_path, _events(200))
    before = JsonlFileSource([path], SHARDS, batch_lines=40, placement=Placement(0, 2, 1)).build_part(
        "input", "0-p0", None)
    before.next_batch()
    pos, shards, _max_ts, name = before.snapshot()  # type: ignore[misc]
    assert name == path.name
    assert pos == 40
    assert frozenset(shards) == Placement(0, 2, 1).own_shards(SHARDS)
    now = Placement(0, 2, 3)
    assert now.own_shards(SHARDS) != frozenset(shards), "the test needs a layout that moves shards"
    after = JsonlFileSource([path], SHARDS, batch_lines=40, placement=now).build_part("input", "0-p0", (pos, shards))
    items = after.next_batch()
    assert {int(k) for k, v in items if type(v) is RawBatch} <= set(shards)
    assert {int(k) for k, v in items if type(v) is Tick} == set(shards)
    assert min(o for _k, v in items if type(v) is RawBatch for o in v.offsets) > 40
    assert after.snapshot()[:2] == (80, shards)


def test_simulator_partitions_split_one_stream_between_processes() -> None:
    lines = _events(120)

    def make() -> Iterator[bytes]:
        return iter(lines)

    seen: list[bytes] = []
    for p in range(2):
        src = SimulatorSource(make, SHARDS, batch_lines=32, placement=Placement(p, 2, 1))
        (name,) = src.list_parts()
        for items in _drain(src.build_part("input", name, None)):
            seen += [raw for _k, v in items if type(v) is RawBatch for raw in v.values]
    assert sorted(seen) == sorted(lines)


# -- a live simulation releases events at their own time ---------------------------------------------------------
def test_realtime_partition_holds_each_event_until_the_wall_clock_reaches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from connectors import replay_source
    from connectors.replay_source import _RawPartition
    from state.shard import wall_ms

    now = wall_ms()
    clock = [now]  # the partition's wall clock, moved by the test
    monkeypatch.setattr(replay_source, "wall_ms", lambda: clock[0])
    times = [now - 1_000, now - 500, now + 400, now + 400, now + 60_000]
    lines = [b'{"event_id":"e%d","customer_id":"c%d","ts":%d,"channel":"app","type":"view"}' % (i, i, t)
             for i, t in enumerate(times)]

    def open_at(start: int) -> Iterator[bytes]:
        return iter(lines[start:])

    part = _RawPartition("simulator", open_at, 0, SHARDS, 100, realtime=True)

    def released(items: list[tuple[str, object]]) -> list[bytes]:
        return [raw for _k, v in items if isinstance(v, RawBatch) for raw in v.values]

    first = released(part.next_batch())
    assert sorted(first) == sorted(lines[:2])
    awake = part.next_awake()
    assert awake is not None  # asks Bytewax to come back rather than spin
    assert part.snapshot()[0] == 2  # the held line is not consumed: a restart reads it again
    assert released(part.next_batch()) == []
    clock[0] = now + 500
    assert sorted(released(part.next_batch())) == sorted(lines[2:4])
    assert part.snapshot()[0] == 4
    assert released(part.next_batch()) == []  # the last one is a minute ahead: held, the input not finished
    resumed = _RawPartition("simulator", open_at, part.snapshot()[0], SHARDS, 100, realtime=True)
    assert released(resumed.next_batch()) == []


def test_replay_partition_ignores_event_times_ahead_of_the_clock() -> None:
    from connectors.replay_source import _RawPartition
    from state.shard import wall_ms

    lines = [b'{"event_id":"e1","customer_id":"c1","ts":%d,"channel":"app","type":"view"}' % (wall_ms() + 3_600_000)]
    part = _RawPartition("file:x", lambda start: iter(lines[start:]), 0, SHARDS, 100)
    assert [raw for _k, v in part.next_batch() if isinstance(v, RawBatch) for raw in v.values] == lines
    assert part.next_awake() is None


# -- a resumed partition's final tick covers what was read before the restart -------------------------------------
def _final_tick(part: object) -> Tick:
    ticks = [v for items in _drain(part) for _k, v in items if type(v) is Tick and v.final]
    assert ticks
    assert len({t.max_ts_ms for t in ticks}) == 1
    return ticks[0]  # type: ignore[return-value]


def _late_peak(n: int) -> list[bytes]:
    # The largest time is the second line: everything read after it is older.
    return [orjson.dumps({"event_id": f"e{i}", "customer_id": f"c{i % 37}", "ts": T0 + (3_600_000 if i == 1 else i),
                          "channel": "app", "type": "view"}) for i in range(n)]


def test_a_resumed_file_partitions_final_tick_reports_the_largest_time_read_before_the_restart(tmp_path: Path
                                                                                              ) -> None:
    path = _file(tmp_path, _late_peak(100))
    for placement, name in [(None, "0"), (Placement(1, 2, 1), "0-p1")]:
        src = JsonlFileSource([path], SHARDS, batch_lines=10, placement=placement)
        before = src.build_part("input", name, None)
        before.next_batch()
        state = before.snapshot()
        after = JsonlFileSource([path], SHARDS, batch_lines=10, placement=placement).build_part("input", name, state)
        final = _final_tick(after)
        assert final.max_ts_ms == T0 + 3_600_000, placement
        assert after.snapshot() == (100, None if placement is None else tuple(sorted(placement.own_shards(SHARDS))),
                                    T0 + 3_600_000, path.name)


def test_a_simulator_partition_resumes_with_its_largest_time_too() -> None:
    lines = _late_peak(50)
    src = SimulatorSource(lambda: iter(lines), SHARDS, batch_lines=5)
    before = src.build_part("input", "0", None)
    before.next_batch()
    after = src.build_part("input", "0", before.snapshot())
    assert _final_tick(after).max_ts_ms == T0 + 3_600_000


def test_recovery_state_of_the_older_shapes_still_resumes_at_its_position(tmp_path: Path) -> None:
    """A bare line number (one process) and (line, shards) (a cluster), written before the time was stored."""
    path = _file(tmp_path, _late_peak(100))
    plain = JsonlFileSource([path], SHARDS, batch_lines=200).build_part("input", "0", 40)
    items = plain.next_batch()
    assert min(o for _k, v in items if type(v) is RawBatch for o in v.offsets) == 41
    # No time was stored: the final tick covers what was read after the restart, as before.
    assert [v.max_ts_ms for _k, v in items if type(v) is Tick][0] == T0 + 99
    placement = Placement(0, 2, 1)
    own = tuple(sorted(placement.own_shards(SHARDS)))
    cluster = JsonlFileSource([path], SHARDS, batch_lines=200, placement=placement).build_part("input", "0-p0",
                                                                                            (40, own))
    items = cluster.next_batch()
    assert {int(k) for k, v in items if type(v) is Tick} == set(own)
    assert min(o for _k, v in items if type(v) is RawBatch for o in v.offsets) > 40
    assert cluster.snapshot() == (100, own, T0 + 99, path.name)


def test_a_position_saved_for_another_file_in_the_same_place_is_refused(tmp_path: Path) -> None:
    """Positions are kept per place in the input list: another file there must not be read from the old one's."""
    from connectors.replay_source import InputPositionError

    a = _file(tmp_path, _events(100))
    b = a.with_name("other.jsonl")
    b.write_bytes(a.read_bytes())
    before = JsonlFileSource([a], SHARDS, batch_lines=40).build_part("input", "0", None)
    before.next_batch()
    with pytest.raises(InputPositionError, match="other.jsonl"):
        JsonlFileSource([b], SHARDS, batch_lines=40).build_part("input", "0", before.snapshot())
    # The same file resumes; so does a position that read nothing yet.
    JsonlFileSource([a], SHARDS, batch_lines=40).build_part("input", "0", before.snapshot())
    JsonlFileSource([b], SHARDS, batch_lines=40).build_part("input", "0", (0, None, 0, a.name))


# -- disorder ---------------------------------------------------------------------------------------------
def _at(eid: str, offset_ms: int) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": f"c-{eid}", "ts": T0 + offset_ms, "channel": "app",
                         "type": "view"})


def test_each_line_is_measured_against_its_partitions_newest_time_across_batches(tmp_path: Path) -> None:
    calls: list[tuple[str, int, int, list[int]]] = []
    lines = [_at("a", 0), _at("b", 10_000), _at("c", 4_000), _at("d", 10_000), _at("e", 20_000), _at("f", 19_500),
             _at("g", 2_000)]
    first = _file(tmp_path, lines[:2])
    second = tmp_path / "second.jsonl"
    second.write_bytes(b"".join(line + b"\n" for line in lines[2:]))
    source = JsonlFileSource([first, second], 4, batch_lines=3,
                             on_disorder=lambda *a: calls.append(a))  # type: ignore[arg-type]
    _drain(source.build_part("inp", "1", None))
    # File 1 (index 1), 3 lines a batch: c, d, e in order; then f 0.5 s and g 18 s behind e, the newest time of
    # the batch before (it carries over).
    assert [(s, p, n, b) for s, p, n, b in calls if n or b] == [("file", 1, 3, []), ("file", 1, 0, [500, 18_000])]
    calls.clear()
    _drain(source.build_part("inp", "0", None))
    assert [(s, p, n, b) for s, p, n, b in calls if n or b] == [("file", 0, 2, [])]
