"""Records kept compact until a sink needs them (issue 18): step rows as tuples, the wake-up outside the record."""

from __future__ import annotations

import pickle
from pathlib import Path

from connectors.jsonl import JsonlWriter
from flows.sink import _ProcessWriters
from state.outputs import STEP_FIELDS
from state.record import SNAPSHOT_WAKE_AT, TS_BYTES, CustomerState
from tests.helpers import MIN, ev, run


def _steps_run() -> object:
    return run([ev("a", 0, "view", step="product"), ev("b", MIN, "start", step="cart"),
                ev("c", 2 * MIN, "complete", step="payment")])


def test_step_rows_become_dicts_with_the_documented_fields_only_for_a_sink_that_takes_them() -> None:
    out = _steps_run()
    rows = dict(out.records())["journey_step"]  # type: ignore[attr-defined]
    assert [list(r) for r in rows] == [list(STEP_FIELDS)] * 4
    assert [(r["step"], r["step_index"], r["event_id"]) for r in rows] == [
        ("product", 0, "a"), ("cart", 1, "b"), ("payment", 3, "c"), ("(complete)", 4, "c")]
    assert "journey_step" not in dict(out.records({"moment", "tag"}))  # type: ignore[attr-defined]
    assert dict(out.records({"journey_step"}))["journey_step"] == rows  # type: ignore[attr-defined]
    assert out.steps == rows  # type: ignore[attr-defined]  # what reads Outputs.steps (look-ups) gets the dicts


class _Every:
    """A writer without ``kinds``: it is handed every kind, step rows as dicts."""

    def __init__(self) -> None:
        self.got: dict[str, list[dict[str, object]]] = {}

    def add(self, kind: str, rows: list[dict[str, object]]) -> None:
        self.got.setdefault(kind, []).extend(rows)

    def flush(self) -> None: ...

    def close(self) -> None: ...


def test_the_pipeline_hands_step_dicts_to_a_writer_that_takes_every_kind_and_none_to_jsonl_alone(
        tmp_path: Path) -> None:
    jsonl_only = _ProcessWriters(lambda _i: [JsonlWriter(tmp_path / "a")], 3600)
    jsonl_only.acquire()
    every = _Every()
    both = _ProcessWriters(lambda _i: [JsonlWriter(tmp_path / "b"), every], 3600)
    both.acquire()
    try:
        assert jsonl_only._kinds is not None
        assert "journey_step" not in jsonl_only._kinds
        assert both._kinds is None
        out = _steps_run()
        jsonl_only.write([out])  # type: ignore[list-item]
        both.write([out])  # type: ignore[list-item]
        assert [r["step"] for r in every.got["journey_step"]] == ["product", "cart", "payment", "(complete)"]
        # JSONL wrote the same files either way.
        files = sorted(p.name for p in (tmp_path / "a").iterdir())
        assert files == sorted(p.name for p in (tmp_path / "b").iterdir())
        assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    finally:
        jsonl_only.release()
        both.release()


def test_a_snapshot_carries_the_wake_up_inside_the_record_as_before() -> None:
    c = CustomerState(2, 1_767_225_600_000, "c1")
    c.wake = 1_767_225_900_123
    cid, _attempts, rec = c.__getstate__()
    assert cid == "c1"
    assert isinstance(rec, bytes)
    # The layout snapshots had when the wake-up lived in the record: last_seen, then the wake-up.
    assert int.from_bytes(rec[:TS_BYTES], "little") == 1_767_225_600_000
    assert int.from_bytes(rec[SNAPSHOT_WAKE_AT:SNAPSHOT_WAKE_AT + TS_BYTES], "little") == 1_767_225_900_123
    back = pickle.loads(pickle.dumps(c))
    assert (back.wake, back.last_seen, back.rec) == (c.wake, c.last_seen, c.rec)
