"""Recovery snapshots of the previous format (4, named slots per kind) still restore, with the same outcome."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

import pytest

from state.batches import RawBatch, Tick
from state.rules import load_rule_pack
from state.shard import Shard, process
from state.snapshots import SNAPSHOT_FORMAT

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "snapshots"
PACK = load_rule_pack()
NOW = 1_900_000_000_000


def _shard() -> Shard:
    return Shard(PACK, clock=lambda: NOW)


def _records(sh: Shard, lines: list[bytes]) -> list[tuple[str, list[dict[str, Any]]]]:
    out = process(sh, [RawBatch("t", 0, lines, list(range(len(lines)))), Tick(0, final=True)])
    return list(out.records())


def test_a_format_4_snapshot_restores_and_detects_what_the_current_format_does() -> None:
    # The fixture: a simulated run's first half fed to the format-4 code (commit 26fd60e) and snapshotted.
    lines = gzip.decompress((FIXTURES / "format4-events.jsonl.gz").read_bytes()).splitlines()
    first, second = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    blob = gzip.decompress((FIXTURES / "format4-first-half.pickle.gz").read_bytes())
    assert pickle.loads(blob)[0] == 4  # noqa: S301

    current = _shard()
    process(current, [RawBatch("t", 0, first, list(range(len(first))))])
    via_current = _shard()
    via_current.restore(current.snapshot())
    upgraded = _shard()
    upgraded.restore(blob)
    # The attempts carry detector state of several kinds, so the upgrade had something to move.
    held = {s for c in upgraded.customers.values() for a in c.attempts if a is not None
            for s in (a.s0, a.s1, a.s2, a.s3) if s != ()}
    assert any(isinstance(s, str) for s in held)
    assert any(isinstance(s, tuple) for s in held)

    expected = _records(via_current, second)
    assert sum(len(rows) for kind, rows in expected if kind == "moment") > 10
    assert _untrailed(_records(upgraded, second)) == _untrailed(expected)


# What a hand-off context shows of the attempt's trail (issue 17): format 4 kept no trail, so an attempt restored
# from it shows only what happened after the restart; everything else is the same.
_TRAIL_FIELDS = ("entries", "step_times", "failures")


def _untrailed(records: list[tuple[str, list[dict[str, Any]]]]) -> list[tuple[str, list[dict[str, Any]]]]:
    return [(kind, [{k: v for k, v in r.items() if k not in _TRAIL_FIELDS} for r in rows] if kind == "context"
             else rows) for kind, rows in records]


def test_a_snapshot_of_an_unknown_format_is_refused_saying_what_to_do() -> None:
    sh = _shard()
    blob = pickle.dumps((3, PACK.fingerprint(), {}, [], [], 0, 0, 0, [], {}))
    with pytest.raises(ValueError, match=r"format 3 is not supported \(expected 6, or 4, 5 to upgrade\); start with a "
                                         "fresh recovery directory"):
        sh.restore(blob)
    assert SNAPSHOT_FORMAT == 6


def test_a_snapshot_whose_held_stragglers_have_no_origin_restores_in_arrival_order() -> None:
    from state.events import Event
    from state.shard import Shard as _Shard
    from tests.helpers import PACK, ev, raws

    sh = _Shard(PACK, lateness_ms=600_000)
    # The second copy sorts before the queue's last event: a straggler, held in the heap.
    sh.feed(RawBatch("file:x", 0, raws([ev("a", 5_000, "view"), ev("dup", 1_000, "fail"), ev("dup", 1_000)]),
                     [1, 2, 3]))
    assert [e[-1].type for e in sh.held.heap] == ["fail", "view"]
    fmt, fp, customers, queue, heap, *rest = pickle.loads(sh.snapshot())  # noqa: S301
    # As written before events carried their origin: (ts, event_id, seq, event) entries, 9-field events.
    old_heap = [(t, e, s, Event(*x[:9])) for t, e, _o, s, x in heap]
    again = _Shard(PACK, lateness_ms=600_000)
    again.restore(pickle.dumps((fmt, fp, customers, queue, old_heap, *rest), protocol=5))
    assert [(e[2], e[-1].type) for e in again.held.heap] == [(-1, "fail"), (-1, "view")]
    again.flush()
    out = again.take_outputs()
    assert out.invalid == {"duplicate": 1}  # the first to arrive (fail) was applied, the other a duplicate
    assert [m["rule"] for m in out.moments] == ["cart.failed"]


def test_a_format_5_snapshot_restores_as_the_current_format_does() -> None:
    # Format 6 only changed how generic rule states pickle (one layout for both builds), which they read in either
    # layout; the number moved so that a build from before refuses a format-6 snapshot rather than restoring its
    # rule states empty. A format-5 snapshot (the previous release's) restores and detects the same.
    lines = gzip.decompress((FIXTURES / "format4-events.jsonl.gz").read_bytes()).splitlines()
    first, second = lines[: len(lines) // 2], lines[len(lines) // 2 :]
    current = _shard()
    process(current, [RawBatch("t", 0, first, list(range(len(first))))])
    fmt, *rest = pickle.loads(current.snapshot())  # noqa: S301 - made here
    assert fmt == SNAPSHOT_FORMAT == 6
    via_current, via_5 = _shard(), _shard()
    via_current.restore(current.snapshot())
    via_5.restore(pickle.dumps((5, *rest)))
    assert _records(via_5, second) == _records(via_current, second)
