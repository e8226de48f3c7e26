"""The ClickHouse sink against the real embedded engine (chDB): schema, round trips, batching, outages.

chDB runs one engine per process, on one path at a time: every test closes
what it opens (the ``no_leaked_clients`` fixture checks), so the next test
can open its own ``tmp_path``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError, ProgrammingError

from connectors.clickhouse.client import DEFAULT_DSN, open_client, resolve_dsn, shared_clients
from connectors.clickhouse.errors import TRANSIENT_CODES, ChdbPathInUseError, error_code, is_transient_clickhouse_error
from connectors.clickhouse.schema import TABLES, SchemaMismatchError
from connectors.clickhouse.sink import ClickHouseSink
from connectors.records import KINDS
from state.events import Event

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
REPO = Path(__file__).resolve().parents[2]
TOO_MANY_PARTS = 252

RECORDS: dict[str, dict[str, Any]] = {
    "moment": {"schema": 1, "moment_id": "m-1", "customer_id": "c1", "rule": "cart.abandoned", "rule_version": 2,
               "kind": "abandonment", "journey": "cart", "step": "checkout", "urgency": "P2", "due_ts": T0 + 600_000,
               "detected_at": T0 + 601_234, "evidence": ["e1", "e2"],
               "attrs": {"reason": "card_declined", "amount": 12.5, "note": "ünïcode"}, "action": "sms"},
    "tag": {"schema": 1, "customer_id": "c1", "tag": "cart.abandoned", "rule": "cart.abandoned", "rule_version": 2,
            "journey": "cart", "state": "open", "outcome": "", "moment_id": "m-1", "opened_ts": T0, "ts": T0 + 5,
            "version": 4 * T0 + 20},
    "journey_state": {"schema": 1, "customer_id": "c1", "journey": "cart", "attempt_id": "a-1", "status": "active",
                      "stage": "checkout", "last_step": "checkout", "last_ts": T0 + 9, "steps_reached":
                      ["product", "cart", "checkout"], "fired": ["cart.abandoned"], "version": 4 * T0 + 36},
    "journey_step": {"customer_id": "c1", "journey": "cart", "attempt_id": "a-1", "step": "cart", "step_index": 1,
                     "entry": "home_banner", "channel": "app", "event_id": "e7", "ts": T0 + 7},
    "dead_letter": {"schema": 1, "reason": "not_json", "detail": "line 3", "raw": "eyJ9", "raw_encoding": "base64",
                    "raw_len": 2_000_000, "raw_sha256": "ab" * 32, "truncated": True, "source": "kafka:cx.events",
                    "partition": 2, "offset": 12345678901, "received_at": T0 + 1},
    "action": {"schema": 1, "moment_id": "m-1", "customer_id": "c1", "rule": "cart.abandoned", "rule_version": 2,
               "kind": "abandonment", "journey": "cart", "urgency": "P2", "status": "suppressed",
               "reason": "quiet_hours", "channel": "",
               "template": "cart_reminder", "control": True,
               "suppressed_channels": ["sms:quiet_hours", "email:min_gap"], "due_ts": T0 + 600_000, "send_ts": 0,
               "detected_at": T0 + 600_100},
    "feedback": {"schema": 1, "moment_id": "m-1", "customer_id": "c1", "outcome": "converted", "ts": T0 + 900_000},
    "late": {"schema": 1, "event_id": "e9", "customer_id": "c1", "channel": "web", "type": "fail", "ts": T0 + 1_000,
             "watermark": T0 + 50_000, "late_ms": 49_000, "source": "kafka:cx.events", "partition": 3,
             "offset": 12345678901, "received_at": T0 + 80_000},
    "context": {"schema": 1, "moment_id": "m-2", "customer_id": "c1", "journey": "cart", "contact_event_id": "e10",
                "contact_ts": T0 + 2_000, "open_tags": ["cart.failed"], "attempt_id": "a-1",
                "recent_steps": ["cart", "payment"], "channels": ["app", "web"], "fails": 2, "last_step": "payment",
                "last_ts": T0 + 1_500, "status": "active", "stage": "intention", "entries": ["banner", "search"],
                "step_times": [{"step": "cart", "ts": T0 + 1_000}, {"step": "payment", "ts": T0 + 1_500}],
                "failures": [{"ts": T0 + 1_500, "step": "payment", "reason": "declined", "error_code": "51"}],
                "last_action_ts": T0 + 1_600, "last_action_channel": "sms"},
}
# ``event`` rows are the shard's Event tuples, not dicts.
EVENT = Event("e11", "c1", T0 + 3, "web", "fail", "cart", "payment", "banner", {"reason": "declined", "n": 2}, 7)


@pytest.fixture(autouse=True)
def no_leaked_clients() -> Iterator[None]:
    """Fail a test that leaves a shared client open (it would pin chDB to its path)."""
    assert shared_clients() == {}
    yield
    assert shared_clients() == {}, "a ClickHouseSink was not closed"


@pytest.fixture
def dsn(tmp_path: Path) -> str:
    """A fresh embedded ClickHouse path."""
    return f"chdb://{tmp_path / 'ch'}"


@pytest.fixture
def reader(dsn: str) -> Iterator[Any]:
    """A second client on the same path: same engine, independent of the sink's cached client."""
    client = open_client(dsn)
    try:
        yield client
    finally:
        client.close()


class Recorder:
    """Collects the sink's hook calls; its ``sleep`` can end an outage after some retries."""

    def __init__(self, recover_after: int | None = None, recover: Any = None, sink: Any = None) -> None:
        self.writes: list[tuple[str, int]] = []
        self.retries: list[tuple[str, int, int | None]] = []
        self.sleeps: list[float] = []
        self.writable_while_down: list[bool] = []
        self._recover_after = recover_after
        self._recover = recover
        self.sink: ClickHouseSink | None = sink

    def on_write(self, table: str, rows: int, seconds: float) -> None:  # noqa: D102
        assert seconds >= 0
        self.writes.append((table, rows))

    def on_retry(self, table: str, attempt: int, exc: BaseException, delay: float) -> None:  # noqa: D102
        self.retries.append((table, attempt, error_code(exc)))

    def sleep(self, seconds: float) -> None:  # noqa: D102
        self.sleeps.append(seconds)
        if self.sink is not None:
            self.writable_while_down.append(self.sink.writable())
        if self._recover_after is not None and len(self.sleeps) == self._recover_after:
            self._recover()


def make_sink(dsn: str, rec: Recorder | None = None, **kwargs: Any) -> ClickHouseSink:
    """A sink with hooks wired to a recorder."""
    rec = rec or Recorder()
    sink = ClickHouseSink(dsn, on_write=rec.on_write, on_retry=rec.on_retry, sleep=rec.sleep, **kwargs)
    rec.sink = sink
    return sink


def moments(n: int, prefix: str = "m") -> list[dict[str, Any]]:
    """``n`` distinct moment records."""
    return [dict(RECORDS["moment"], moment_id=f"{prefix}-{i}", customer_id=f"c{i % 97}") for i in range(n)]


def count(client: Any, sql: str) -> int:
    """The single integer a query returns."""
    return int(client.query(sql).result_rows[0][0])


def wait_until(done: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll until ``done()`` (the insert thread works on its own time)."""
    end = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


# -- schema ----------------------------------------------------------------------------------


def test_a_dropped_or_retyped_column_fails_the_schema_check_naming_table_and_column(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
    finally:
        sink.close()
    reader.command("ALTER TABLE moments DROP COLUMN step")
    reader.command("ALTER TABLE actions MODIFY COLUMN send_ts Int32")
    sink = make_sink(dsn)
    try:
        with pytest.raises(SchemaMismatchError) as info:
            sink.ensure_schema()
    finally:
        sink.close()
    message = str(info.value)
    assert "table moments: column step is missing (moment records need it as LowCardinality(String))" in message
    assert "table actions: column send_ts is Int32, action records need Int64" in message
    assert not is_transient_clickhouse_error(info.value)


def test_a_column_beyond_the_records_passes_the_schema_check(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        reader.command("ALTER TABLE moments ADD COLUMN note String DEFAULT ''")
        sink.ensure_schema()
        sink.add("moment", moments(3))
        sink.flush()
    finally:
        sink.close()
    assert count(reader, "SELECT count() FROM moments FINAL") == 3


def test_schema_is_created_idempotently_with_every_table(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.ensure_schema()
    finally:
        sink.close()
    again = make_sink(dsn)
    try:
        again.ensure_schema()
    finally:
        again.close()
    engines = dict(reader.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()")
                   .result_rows)
    assert engines == {
        "moments": "ReplacingMergeTree", "customer_tags": "ReplacingMergeTree", "journey_states": "ReplacingMergeTree",
        "journey_steps": "ReplacingMergeTree", "actions": "ReplacingMergeTree", "feedback": "ReplacingMergeTree",
        "dead_letters": "MergeTree", "late_events": "ReplacingMergeTree", "handoff_contexts": "ReplacingMergeTree",
        "events": "MergeTree",
        # Derived, for `moments report rules` (002_effectiveness.sql): not written by the sink.
        "tag_history": "ReplacingMergeTree", "tag_history_mv": "MaterializedView", "rule_outcomes": "View",
    }


def test_schema_columns_match_the_record_fields(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
    finally:
        sink.close()
    for spec in TABLES.values():
        # A column with a default (events.stored_at) is filled in by ClickHouse, not by the records.
        cols = tuple(r[0] for r in reader.query(f"DESCRIBE TABLE {spec.table}").result_rows if not r[2])
        assert cols == spec.columns, spec.table


def test_an_existing_dead_letters_table_gets_the_bounded_record_columns(dsn: str, reader: Any) -> None:
    # A table from before dead letters were bounded: the sink's schema step adds raw_len, raw_sha256, truncated.
    reader.command("CREATE TABLE dead_letters (schema UInt8, reason LowCardinality(String), detail String, "
                   "raw String, raw_encoding LowCardinality(String), source LowCardinality(String), "
                   "partition Int32, offset Int64, received_at Int64) ENGINE = MergeTree ORDER BY received_at")
    reader.command("INSERT INTO dead_letters VALUES (1, 'not_json', 'old', 'x', 'utf8', 'file:a', 0, 1, 5)")
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.add("dead_letter", [RECORDS["dead_letter"]])
        sink.flush()
    finally:
        sink.close()
    cols = tuple(r[0] for r in reader.query("DESCRIBE TABLE dead_letters").result_rows)
    assert cols == TABLES["dead_letter"].columns
    rows = reader.query("SELECT detail, raw_len, raw_sha256, truncated FROM dead_letters ORDER BY received_at")
    assert rows.result_rows == [("old", 0, "", 0), ("line 3", 2_000_000, "ab" * 32, 1)]


def test_times_are_int64_and_small_sets_low_cardinality(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
    finally:
        sink.close()
    types = {(t, c): ty for t, c, ty in reader.query(
        "SELECT table, name, type FROM system.columns WHERE database = currentDatabase()").result_rows}
    for key in [("moments", "due_ts"), ("moments", "detected_at"), ("customer_tags", "opened_ts"),
                ("journey_states", "last_ts"), ("journey_steps", "ts"), ("dead_letters", "received_at"),
                ("actions", "due_ts"), ("feedback", "ts")]:
        assert types[key] == "Int64", key
    assert types[("moments", "rule")] == "LowCardinality(String)"
    assert types[("moments", "evidence")] == "Array(String)"
    assert types[("moments", "attrs")] == "String"
    assert types[("actions", "control")] == "UInt8"


def test_schema_goes_into_the_dsn_database_which_is_created(tmp_path: Path, reader: Any) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}?database=cx_test"
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.add("moment", moments(2))
        sink.flush()
    finally:
        sink.close()
    assert count(reader, "SELECT count() FROM cx_test.moments FINAL") == 2
    assert count(reader, "SELECT count() FROM system.tables WHERE database = 'default' AND name = 'moments'") == 0


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_each_kind_round_trips(kind: str, dsn: str, reader: Any) -> None:
    spec = TABLES[kind]
    row: Any = EVENT if kind == "event" else RECORDS[kind]
    record = dict(zip(spec.columns, EVENT, strict=True)) if kind == "event" else RECORDS[kind]
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.add(kind, [row])
        sink.flush()
    finally:
        sink.close()
    final = "" if kind in ("dead_letter", "event") else "FINAL"  # a plain MergeTree has no FINAL
    result = reader.query(f"SELECT {', '.join(spec.columns)} FROM {spec.table} {final}")
    assert len(result.result_rows) == 1
    stored = dict(zip(spec.columns, result.result_rows[0], strict=True))
    for col in spec.json_fields:
        stored[col] = orjson.loads(stored[col])
    expected = dict(record)
    if kind == "action":
        expected["control"] = int(record["control"])  # bool stored as UInt8
    assert stored == expected


def test_attrs_are_stored_as_json_text(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    try:
        sink.add("moment", [dict(RECORDS["moment"], attrs={})])
        sink.ensure_schema()
        sink.flush()
    finally:
        sink.close()
    assert reader.query("SELECT attrs FROM moments").result_rows == [("{}",)]
    assert count(reader, "SELECT count() FROM moments WHERE isValidJSON(attrs)") == 1


def test_reinserted_moment_collapses_with_final(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.add("moment", [RECORDS["moment"]])
        sink.flush()
        # A replay re-emits the same moment id, detected a little later.
        sink.add("moment", [dict(RECORDS["moment"], detected_at=RECORDS["moment"]["detected_at"] + 5_000)])
        sink.flush()
    finally:
        sink.close()
    assert count(reader, "SELECT count() FROM moments") == 2  # two parts until a merge
    assert count(reader, "SELECT count() FROM moments FINAL") == 1


def test_identical_block_inserted_twice_is_stored_once(dsn: str, reader: Any) -> None:
    # What a retry after a partial failure does: the dedup window drops the repeated block,
    # which keeps even the plain MergeTree (dead_letters) free of duplicates.
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        for _ in range(2):
            sink.add("dead_letter", [RECORDS["dead_letter"]])
            sink.flush()
    finally:
        sink.close()
    assert count(reader, "SELECT count() FROM dead_letters") == 1


def test_customer_tags_final_returns_the_highest_version(dsn: str, reader: Any) -> None:
    tag = RECORDS["tag"]
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.add("tag", [dict(tag, state="actioned", ts=T0 + 60, version=4 * (T0 + 60) + 1)])
        sink.flush()
        # Out of order: the older "open" row arrives last and must not win.
        sink.add("tag", [dict(tag, state="open", ts=T0 + 5, version=4 * (T0 + 5))])
        sink.flush()
        sink.add("tag", [dict(tag, customer_id="c2", state="resolved", outcome="recovered", version=7)])
        sink.flush()
    finally:
        sink.close()
    rows = reader.query("SELECT customer_id, state, outcome, version FROM customer_tags FINAL ORDER BY customer_id")
    assert rows.result_rows == [("c1", "actioned", "", 4 * (T0 + 60) + 1), ("c2", "resolved", "recovered", 7)]


def test_journey_states_final_returns_the_highest_version(dsn: str, reader: Any) -> None:
    st = RECORDS["journey_state"]
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.add("journey_state", [dict(st, status="completed", version=st["version"] + 10)])
        sink.flush()
        sink.add("journey_state", [st])
        sink.flush()
    finally:
        sink.close()
    assert reader.query("SELECT status FROM journey_states FINAL").result_rows == [("completed",)]


# -- buffering -------------------------------------------------------------------------------


@pytest.mark.parametrize("background", [True, False], ids=["insert-thread", "caller-thread"])
def test_rows_are_written_when_a_buffer_reaches_batch_rows_and_on_flush(
    background: bool, dsn: str, reader: Any
) -> None:
    rec = Recorder()
    sink = make_sink(dsn, rec, batch_rows=3, background=background)
    try:
        sink.ensure_schema()
        batch = moments(4)
        sink.add("moment", batch[:2])
        sink.add("journey_step", [RECORDS["journey_step"]])
        assert rec.writes == []
        assert count(reader, "SELECT count() FROM moments") == 0
        sink.add("moment", batch[2:3])
        wait_until(lambda: rec.writes == [("moments", 3)])  # written without a flush
        assert count(reader, "SELECT count() FROM moments") == 3
        sink.add("moment", batch[3:])
        assert sink.buffered() == {"moment": 1, "journey_step": 1}
        sink.flush()
        assert sorted(rec.writes) == [("journey_steps", 1), ("moments", 1), ("moments", 3)]
        assert sink.buffered() == {}
        sink.flush()  # nothing buffered: no empty inserts
        assert len(rec.writes) == 3
    finally:
        sink.close()
    assert count(reader, "SELECT count() FROM moments") == 4


def test_close_writes_what_is_buffered(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    sink.ensure_schema()
    sink.add("feedback", [RECORDS["feedback"]])
    sink.close()
    sink.close()  # idempotent
    assert count(reader, "SELECT count() FROM feedback") == 1


def test_unknown_kind_raises_naming_the_kind(dsn: str) -> None:
    sink = make_sink(dsn)
    try:
        with pytest.raises(ValueError, match="'momnet'"):
            sink.add("momnet", [RECORDS["moment"]])
        with pytest.raises(ValueError, match="'momnet'"):
            sink.add("momnet", [])
    finally:
        sink.close()


def test_kafka_only_kinds_are_ignored(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Every kind is stored since contexts are (issue 17): a kind without a table is made up by taking one away.
    monkeypatch.delitem(TABLES, "context")  # type: ignore[arg-type]
    assert "context" in KINDS
    rec = Recorder()
    sink = make_sink(dsn, rec, batch_rows=1)
    try:
        sink.add("context", [{"schema": 1, "moment_id": "m-1"}])
        sink.flush()
    finally:
        sink.close()
    assert rec.writes == []


def test_record_without_a_field_raises_naming_it(dsn: str) -> None:
    rec = Recorder()
    sink = make_sink(dsn, rec)
    try:
        sink.ensure_schema()
        broken = dict(RECORDS["journey_step"])
        del broken["channel"]
        sink.add("journey_step", [broken])
        with pytest.raises(ValueError, match="journey_step record without field 'channel'"):
            sink.flush()
        assert rec.retries == []
    finally:
        with pytest.raises(ValueError, match="'channel'"):
            sink.close()  # the broken row is still buffered: close refuses to drop it silently


# -- errors and outages ----------------------------------------------------------------------


def test_permanent_error_raises_at_once_and_keeps_the_rows(dsn: str, reader: Any) -> None:
    rec = Recorder()
    sink = make_sink(dsn, rec)
    try:
        sink.ensure_schema()
        sink.add("journey_step", [dict(RECORDS["journey_step"], ts="not a number")])
        with pytest.raises(DatabaseError, match="not a number") as info:
            sink.flush()
        assert not is_transient_clickhouse_error(info.value)
        assert rec.retries == []
        assert rec.sleeps == []
        assert sink.buffered() == {"journey_step": 1}
        assert not sink.writable()
    finally:
        with pytest.raises(DatabaseError, match="not a number"):
            sink.close()
    assert count(reader, "SELECT count() FROM journey_steps") == 0


def test_dropped_table_is_recreated_and_rows_arrive_once(dsn: str, reader: Any) -> None:
    rec = Recorder()
    sink = make_sink(dsn, rec)
    try:
        sink.ensure_schema()
        sink.add("moment", moments(10, "before"))
        sink.flush()
        reader.command("DROP TABLE moments")
        sink.add("moment", moments(10, "after"))
        sink.flush()
    finally:
        sink.close()
    assert rec.retries == []  # re-created in the same attempt, no backoff
    assert count(reader, "SELECT count() FROM moments") == 10
    assert count(reader, "SELECT countIf(startsWith(moment_id, 'after')) FROM moments") == 10


def test_dropped_database_is_recreated_and_rows_arrive_once(tmp_path: Path, reader: Any) -> None:
    dsn = f"chdb://{tmp_path / 'ch'}?database=cx"
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        reader.command("DROP DATABASE cx")
        sink.add("tag", [RECORDS["tag"]])
        sink.flush()
    finally:
        sink.close()
    assert count(reader, "SELECT count() FROM cx.customer_tags") == 1


def _stop_merges(reader: Any, table: str) -> None:
    # Before the first inserts, so that a background merge cannot fold the parts the outage needs.
    reader.command(f"SYSTEM STOP MERGES {table}")


def _too_many_parts(reader: Any, table: str) -> None:
    # A real ClickHouse overload (TOO_MANY_PARTS): the part limit lowered under the parts present.
    reader.command(f"ALTER TABLE {table} MODIFY SETTING parts_to_throw_insert = 1")


def _recover(reader: Any, table: str) -> None:
    reader.command(f"ALTER TABLE {table} RESET SETTING parts_to_throw_insert")
    reader.command(f"SYSTEM START MERGES {table}")


def test_outage_blocks_with_backoff_then_rows_arrive_exactly_once(dsn: str, reader: Any) -> None:
    rec = Recorder(recover_after=4, recover=lambda: _recover(reader, "journey_steps"))
    sink = make_sink(dsn, rec, batch_rows=1_000)
    steps = [dict(RECORDS["journey_step"], event_id=f"e{i}", ts=T0 + i) for i in range(2_500)]
    try:
        sink.ensure_schema()
        _stop_merges(reader, "journey_steps")
        sink.add("journey_step", steps[:1_000])  # two parts on disk
        sink.add("journey_step", steps[1_000:2_000])
        sink.flush()  # both were handed over at batch_rows: wait until they are written
        _too_many_parts(reader, "journey_steps")
        sink.add("journey_step", steps[2_000:])
        sink.flush()  # blocks in backoff until the fake sleep ends the outage
        assert sink.writable()
    finally:
        sink.close()
    assert [(t, a, c) for t, a, c in rec.retries] == [("journey_steps", a, TOO_MANY_PARTS) for a in (1, 2, 3, 4)]
    assert rec.writable_while_down == [False] * 4
    assert len(rec.sleeps) == 4  # one backoff sleep per retry
    assert rec.writes == [("journey_steps", 1_000), ("journey_steps", 1_000), ("journey_steps", 500)]
    assert count(reader, "SELECT count() FROM journey_steps") == 2_500  # no FINAL: nothing doubled
    assert count(reader, "SELECT uniqExact(event_id) FROM journey_steps") == 2_500


def test_outage_with_max_attempts_raises_the_transient_error_and_keeps_rows(dsn: str, reader: Any) -> None:
    rec = Recorder()
    sink = make_sink(dsn, rec, max_attempts=3)
    try:
        sink.ensure_schema()
        _stop_merges(reader, "feedback")
        for i in range(2):
            sink.add("feedback", [dict(RECORDS["feedback"], ts=T0 + i)])
            sink.flush()
        _too_many_parts(reader, "feedback")
        sink.add("feedback", [dict(RECORDS["feedback"], ts=T0 + 2)])
        with pytest.raises(DatabaseError) as info:
            sink.flush()
        assert info.value.code == TOO_MANY_PARTS
        assert [a for _, a, _ in rec.retries] == [1, 2]
        assert sink.buffered() == {"feedback": 1}
        _recover(reader, "feedback")
        sink.flush()  # the kept row goes in once ClickHouse takes writes again
    finally:
        sink.close()
    assert count(reader, "SELECT count() FROM feedback") == 3


def test_concurrent_worker_threads_share_one_client_and_lose_nothing(dsn: str, reader: Any) -> None:
    sinks = [make_sink(dsn, batch_rows=500) for _ in range(4)]
    try:
        sinks[0].ensure_schema()
        errors: list[BaseException] = []

        def work(i: int, sink: ClickHouseSink) -> None:
            try:
                rows = moments(3_000, prefix=f"w{i}")
                for j in range(0, len(rows), 100):
                    sink.add("moment", rows[j : j + 100])
                sink.flush()
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i, s)) for i, s in enumerate(sinks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert list(shared_clients().values()) == [4]
    finally:
        for s in sinks:
            s.close()
    assert count(reader, "SELECT count() FROM moments") == 12_000


# -- the insert thread ---------------------------------------------------------------------------


def test_record_with_a_field_its_table_lacks_raises_naming_it(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.add("feedback", [dict(RECORDS["feedback"], note="not a column")])
        with pytest.raises(ValueError, match="feedback record with field 'note' that table feedback lacks"):
            sink.flush()
    finally:
        with pytest.raises(ValueError, match="'note'"):
            sink.close()
    assert count(reader, "SELECT count() FROM feedback") == 0


def test_inserts_run_on_the_sink_thread_in_hand_over_order(dsn: str, reader: Any) -> None:
    threads: list[str] = []
    rec = Recorder()

    def on_write(table: str, rows: int, seconds: float) -> None:
        threads.append(threading.current_thread().name)
        rec.on_write(table, rows, seconds)

    sink = ClickHouseSink(dsn, batch_rows=5, on_write=on_write)
    try:
        sink.ensure_schema()
        for i in range(6):
            sink.add("moment", moments(5, prefix=f"b{i}"))
            sink.add("feedback", [dict(RECORDS["feedback"], moment_id=f"b{i}", ts=T0 + i)])
        sink.flush()
    finally:
        sink.close()
    assert set(threads) == {"clickhouse-insert"}
    assert rec.writes == [("moments", 5)] * 5 + [("feedback", 5), ("moments", 5), ("feedback", 1)]
    assert count(reader, "SELECT count() FROM moments") == 30


class BlockedRetry:
    """A backoff sleep that holds the insert thread in its retry until released (an outage of any length)."""

    def __init__(self) -> None:
        self.sleeping = threading.Event()
        self.release = threading.Event()

    def __call__(self, seconds: float) -> None:
        self.sleeping.set()
        assert self.release.wait(30), "never released"


def _in_thread(fn: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported to the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, errors


def test_add_blocks_while_the_insert_thread_retries_then_every_row_arrives_once(dsn: str, reader: Any) -> None:
    blocked = BlockedRetry()
    rec = Recorder()
    sink = ClickHouseSink(dsn, batch_rows=10, on_write=rec.on_write, on_retry=rec.on_retry, sleep=blocked)
    try:
        sink.ensure_schema()
        _stop_merges(reader, "moments")
        for i in range(2):
            sink.add("moment", moments(10, prefix=f"before{i}"))
        sink.flush()
        _too_many_parts(reader, "moments")
        sink.add("moment", moments(10, prefix="refused"))  # handed over; its insert is refused and retried
        assert blocked.sleeping.wait(30)
        assert not sink.writable()
        # Back-pressure: while the batch is retried the caller stands still, as if it inserted itself.
        adder, errors = _in_thread(lambda: sink.add("moment", moments(3, prefix="after")))
        adder.join(0.5)
        assert adder.is_alive()
        _recover(reader, "moments")
        blocked.release.set()
        adder.join(30)
        assert not adder.is_alive()
        assert errors == []
        sink.flush()
        assert sink.writable()
    finally:
        blocked.release.set()
        sink.close()
    assert [(t, c) for t, _, c in rec.retries] == [("moments", TOO_MANY_PARTS)]
    assert count(reader, "SELECT count() FROM moments") == 33  # no FINAL: nothing doubled
    assert count(reader, "SELECT uniqExact(moment_id) FROM moments") == 33


def test_add_blocks_while_max_pending_rows_wait_to_be_written(dsn: str, reader: Any) -> None:
    go = threading.Event()
    written: list[int] = []

    def slow_write(table: str, rows: int, seconds: float) -> None:
        written.append(rows)
        assert go.wait(30), "never released"

    sink = ClickHouseSink(dsn, batch_rows=10, max_pending_rows=20, on_write=slow_write)
    try:
        sink.ensure_schema()
        sink.add("moment", moments(10, prefix="a"))  # taken by the insert thread, which then hangs in on_write
        wait_until(lambda: written == [10])
        sink.add("moment", moments(10, prefix="b"))  # 20 rows pending: the bound
        adder, errors = _in_thread(lambda: sink.add("moment", moments(10, prefix="c")))
        adder.join(0.5)
        assert adder.is_alive()
        go.set()
        adder.join(30)
        assert not adder.is_alive()
        assert errors == []
        sink.flush()
    finally:
        go.set()
        sink.close()
    assert count(reader, "SELECT count() FROM moments") == 30


def test_permanent_error_on_the_insert_thread_is_raised_to_the_caller_and_loses_nothing(
    dsn: str, reader: Any
) -> None:
    rec = Recorder()
    sink = make_sink(dsn, rec, batch_rows=5)
    try:
        sink.ensure_schema()
        # A real permanent refusal that can be lifted: a constraint the rows violate.
        reader.command(f"ALTER TABLE feedback ADD CONSTRAINT early CHECK ts < {T0 + 3}")
        sink.add("feedback", [dict(RECORDS["feedback"], moment_id=f"m-{i}", ts=T0 + i) for i in range(5)])
        wait_until(lambda: not sink.writable())  # the handed-over batch was refused on the insert thread
        # The next call on the caller's thread raises it: the worker stops instead of running on without a sink.
        with pytest.raises(DatabaseError) as info:
            sink.add("feedback", [dict(RECORDS["feedback"], moment_id="m-5", ts=T0 + 5)])
        assert not is_transient_clickhouse_error(info.value)
        assert rec.retries == []
        with pytest.raises(DatabaseError):
            sink.flush()  # tried again, refused again
        assert sink.buffered() == {"feedback": 6}
        reader.command("ALTER TABLE feedback DROP CONSTRAINT early")
        sink.flush()  # the kept batch, and what came after it
        assert sink.writable()
        assert sink.buffered() == {}
    finally:
        sink.close()
    assert count(reader, "SELECT count() FROM feedback") == 6
    assert count(reader, "SELECT uniqExact(moment_id) FROM feedback") == 6


def test_close_writes_rows_handed_over_but_not_yet_written(dsn: str, reader: Any) -> None:
    sink = make_sink(dsn, batch_rows=100)
    sink.ensure_schema()
    for i in range(10):
        sink.add("journey_step", [dict(RECORDS["journey_step"], event_id=f"e{i}-{j}") for j in range(100)])
    sink.close()
    assert count(reader, "SELECT count() FROM journey_steps") == 1_000


# -- chDB facts: one engine per process, one process per path ----------------------------------


def test_two_clients_on_the_same_path_share_the_engine(dsn: str, reader: Any) -> None:
    other = open_client(dsn)
    try:
        other.command("CREATE TABLE t (x Int64) ENGINE = MergeTree ORDER BY x")
        other.insert("t", [[1, 2, 3]], column_names=["x"], column_oriented=True)
        assert count(reader, "SELECT count() FROM t") == 3
    finally:
        other.close()


def test_a_second_path_opens_only_after_every_client_of_the_first_is_closed(tmp_path: Path) -> None:
    sink = make_sink(f"chdb://{tmp_path / 'a'}")
    sink.ensure_schema()
    try:
        with pytest.raises(ProgrammingError, match="already initialized"):
            open_client(f"chdb://{tmp_path / 'b'}")
    finally:
        sink.close()
    client = open_client(f"chdb://{tmp_path / 'b'}")
    client.close()


_OPEN_IN_CHILD = """
import sys
from connectors.clickhouse.client import open_client
from connectors.clickhouse.errors import ChdbPathInUseError
try:
    client = open_client(sys.argv[1])
except ChdbPathInUseError as e:
    print("in-use:", e)
    sys.exit(3)
print(client.query("SELECT count() FROM feedback").result_rows[0][0])
"""


def _open_in_child(dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", _OPEN_IN_CHILD, dsn], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)


def test_a_second_process_cannot_open_a_path_in_use_until_it_is_released(dsn: str) -> None:
    sink = make_sink(dsn)
    try:
        sink.ensure_schema()
        sink.add("feedback", [RECORDS["feedback"]])
        sink.flush()
        busy = _open_in_child(dsn)
        assert busy.returncode == 3, busy.stderr[-2000:]
        assert "in use by another process" in busy.stdout
    finally:
        sink.close()
    # Closing the last client released the engine and its lock.
    free = _open_in_child(dsn)
    assert free.returncode == 0, free.stderr[-2000:]
    assert free.stdout.strip() == "1"


# -- DSNs and error classification ---------------------------------------------------------------


def test_relative_chdb_path_resolves_against_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert DEFAULT_DSN == "chdb:///./data/cx.chdb"
    assert resolve_dsn(DEFAULT_DSN) == f"chdb://{tmp_path.resolve()}/data/cx.chdb"
    assert resolve_dsn("chdb:///./data/cx.chdb", process_id=1) == f"chdb://{tmp_path.resolve()}/data/cx.chdb-p1"
    assert resolve_dsn("chdb:///./x?database=cx") == f"chdb://{tmp_path.resolve()}/x?database=cx"
    assert resolve_dsn("http://ch:8123/cx", process_id=1) == "http://ch:8123/cx"
    sink = make_sink(DEFAULT_DSN)
    try:
        sink.ensure_schema()
    finally:
        sink.close()
    assert (tmp_path / "data" / "cx.chdb" / "metadata").is_dir()


def test_chdb_dsn_with_a_host_is_rejected() -> None:
    with pytest.raises(ValueError, match="chdb:///"):
        resolve_dsn("chdb://data/cx.chdb")
    assert resolve_dsn("chdb://memory") == "chdb://memory"


def test_real_engine_errors_are_classified(dsn: str, reader: Any) -> None:
    def error_of(sql: str) -> BaseException:
        with pytest.raises(Exception) as info:  # noqa: PT011 - classified below
            reader.command(sql)
        return info.value

    unknown_table = error_of("INSERT INTO nope VALUES (1)")
    syntax = error_of("SELEC 1")
    unknown_column = error_of("SELECT no_such_column FROM system.one")
    assert error_code(unknown_table) == 60
    assert not is_transient_clickhouse_error(unknown_table)
    assert error_code(syntax) == 62
    assert not is_transient_clickhouse_error(syntax)
    assert error_code(unknown_column) == 47
    assert not is_transient_clickhouse_error(unknown_column)
    reader.command("CREATE TABLE p (x Int64) ENGINE = MergeTree ORDER BY x")
    _stop_merges(reader, "p")
    reader.insert("p", [[1]], column_names=["x"], column_oriented=True)
    reader.insert("p", [[2]], column_names=["x"], column_oriented=True)
    _too_many_parts(reader, "p")
    with pytest.raises(DatabaseError) as parts:
        reader.insert("p", [[3]], column_names=["x"], column_oriented=True)
    assert parts.value.code == TOO_MANY_PARTS in TRANSIENT_CODES
    assert is_transient_clickhouse_error(parts.value)
    with pytest.raises(Exception) as none_value:  # noqa: PT011 - clickhouse-connect's own DataError
        reader.insert("p", [[None]], column_names=["x"], column_oriented=True)
    assert not is_transient_clickhouse_error(none_value.value)
    assert not is_transient_clickhouse_error(ValueError("bad literal"))
    assert not is_transient_clickhouse_error(ChdbPathInUseError("busy"))


def test_unreachable_server_is_transient_and_the_password_is_not_leaked(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CX_CLICKHOUSE_PASSWORD", "s3cret-Pa55")
    with pytest.raises(OperationalError) as info:
        open_client("http://default@127.0.0.1:9/cx")  # discard port: connection refused
    assert is_transient_clickhouse_error(info.value)
    assert "s3cret-Pa55" not in f"{info.value!r} {info.value.__cause__!r}"
    assert "s3cret-Pa55" not in caplog.text


def test_unreachable_server_makes_the_sink_retry_then_give_up_when_bounded() -> None:
    rec = Recorder()
    sink = make_sink("http://default@127.0.0.1:9/cx", rec, max_attempts=3)
    try:
        assert not sink.writable()
        with pytest.raises(OperationalError):
            sink.ensure_schema()
        assert [(t, a) for t, a, _ in rec.retries] == [("schema", 1), ("schema", 2)]
        assert not sink.writable()
    finally:
        sink.close()


def test_readyz_flips_to_not_ready_while_clickhouse_cannot_be_written(dsn: str, reader: Any) -> None:
    import urllib.error
    import urllib.request

    from flows import http_endpoint

    server = http_endpoint.start_http(0, host="127.0.0.1")

    def ready() -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)

    seen: list[int] = []

    def during_outage() -> None:
        seen.append(ready())
        _recover(reader, "moments")

    rec = Recorder(recover_after=2, recover=during_outage)
    sink = make_sink(dsn, rec)
    http_endpoint.register_readiness("clickhouse-test", sink.writable)
    try:
        sink.ensure_schema()
        _stop_merges(reader, "moments")
        for i in range(2):
            sink.add("moment", moments(10, prefix=f"p{i}"))
            sink.flush()
        assert ready() == 200
        _too_many_parts(reader, "moments")
        sink.add("moment", moments(10, prefix="during"))
        sink.flush()  # blocks in backoff; /readyz is asked while the writes fail
        assert ready() == 200
    finally:
        http_endpoint.register_readiness("clickhouse-test", lambda: True)
        sink.close()
        server.stop()
    assert seen == [503]
