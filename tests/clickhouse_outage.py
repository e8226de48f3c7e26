"""Run the real pipeline into an embedded ClickHouse path and make its tables refuse inserts mid-run.

Meant to run as a child process (``python -m tests.clickhouse_outage DSN OUT_DIR HOLD_S CUSTOMERS MINUTES
REPORT``): chDB allows one
engine per process and one process per path, while clients in the same process share the engine. So this
process runs the pipeline (the runner, as ``moments run`` does, with a JSONL and a ClickHouse sink) in its main
thread, and from a second thread, on a second client of the same engine, takes the tables down with a real
ClickHouse refusal (TOO_MANY_PARTS: merges stopped and the part limit lowered under the parts present), holds
the outage, observes the pipeline, and lifts it. It writes a JSON report for the test to judge (stdout is the
runner's).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

# The tables the pipeline writes in bulk; each one refuses inserts during the outage.
BLOCKED = ("moments", "customer_tags", "actions", "journey_states", "journey_steps")
# Each table's row identity (its sorting key, plus the version where a key keeps several versions). With
# merges stopped, a row stored twice shows as count() > uniqExact(key). tag_history is filled from
# customer_tags by a materialized view. journey_states rows are whole: a moment fired by a timer changes a
# state's `fired` but not its version, so (customer_id, journey, version) is not unique there.
KEYS = {
    "moments": "moment_id",
    "customer_tags": "customer_id, tag, version",
    "actions": "moment_id",
    "journey_states": "*",
    "journey_steps": "journey, step, customer_id, event_id",
    "tag_history": "rule, moment_id, version",
}
# Rows returned for comparison with the run's JSONL sink. customer_tags collapses the transitions of a
# (customer, tag) in one insert to the latest (ReplacingMergeTree with optimize_on_insert), so its
# latest state per key is compared; tag_history keeps every transition.
ROWS = {
    "moments": "SELECT moment_id FROM moments",
    "actions": "SELECT moment_id, status, reason FROM actions",
    "tag_history": "SELECT customer_id, tag, moment_id, state, version FROM tag_history",
    "customer_tags": "SELECT customer_id, tag, argMax(state, version), max(version) FROM customer_tags "
                     "GROUP BY customer_id, tag",
}


def _scalar(client: Any, sql: str) -> int:
    return int(client.query(sql).result_rows[0][0])


def _counts(client: Any) -> dict[str, int]:
    return {t: _scalar(client, f"SELECT count() FROM {t}") for t in KEYS}


def _active_parts(client: Any) -> dict[str, int]:
    rows = client.query("SELECT table, count() FROM system.parts WHERE active AND database = currentDatabase() "
                        "GROUP BY table").result_rows
    return {str(t): int(n) for t, n in rows}


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


class Outage(threading.Thread):
    """Wait for the pipeline to store rows, make every ``BLOCKED`` table refuse inserts, hold, lift.

    Args:
        client: A second client on the pipeline's chDB path (same engine).
        jsonl: The moments file of the run's JSONL sink.
        hold_s: How long the tables stay unwritable after the pipeline first hit the refusal.
    """

    def __init__(self, client: Any, jsonl: Path, hold_s: float) -> None:
        super().__init__(name="outage", daemon=True)
        self._client = client
        self._jsonl = jsonl
        self._hold_s = hold_s
        self.report: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.pipeline_done = threading.Event()

    def run(self) -> None:  # noqa: D102
        try:
            self._run()
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            self.error = e

    def _observe(self) -> dict[str, Any]:
        from flows import http_endpoint, metrics
        from flows.stats import STATS

        return {
            "rows": _counts(self._client),
            "jsonl_moments": _lines(self._jsonl),
            "events_processed": STATS.events,
            "retries": metrics.REGISTRY.get_sample_value("cx_sink_retries_total", {"sink": "clickhouse"}) or 0.0,
            "sink_up": metrics.REGISTRY.get_sample_value("cx_sink_up", {"sink": "clickhouse"}),
            "ready": http_endpoint.readiness().get("clickhouse"),
            "t": time.monotonic(),
        }

    def _still(self) -> bool:
        a = self._observe()
        time.sleep(0.3)  # standing still has no signal of its own: no progress across one short interval
        b = self._observe()
        return (a["jsonl_moments"], a["events_processed"]) == (b["jsonl_moments"], b["events_processed"])

    def _wait(self, what: str, done: Any, timeout_s: float = 60) -> None:
        end = time.monotonic() + timeout_s
        while not done():
            if self.pipeline_done.is_set():
                raise AssertionError(f"the pipeline finished before {what}; make the input larger")
            if time.monotonic() > end:
                raise AssertionError(f"no {what} within {timeout_s}s")
            time.sleep(0.02)

    def _run(self) -> None:
        # Two parts in each table: TOO_MANY_PARTS needs more parts present than the lowered limit.
        self._wait("two parts in every table", lambda: all(
            _active_parts(self._client).get(t, 0) >= 2 for t in BLOCKED))
        before = self._observe()
        for t in BLOCKED:
            self._client.command(f"ALTER TABLE {t} MODIFY SETTING parts_to_throw_insert = 1")
        self.report["before"] = before
        # The pipeline's next insert is refused and retried: from then on it is blocked.
        self._wait("refused insert", lambda: self._observe()["retries"] > before["retries"])
        # The batch in hand when the insert was refused may still reach the JSONL sink (written through, ahead of
        # the bounded hand-over to ClickHouse): blocked means nothing moves any more.
        self._wait("the dataflow to stand still", self._still)
        self.report["blocked"] = self._observe()
        time.sleep(self._hold_s)  # the outage's length is the scenario: it lasts hold_s while the pipeline waits
        self.report["held"] = self._observe()
        for t in BLOCKED:
            self._client.command(f"ALTER TABLE {t} RESET SETTING parts_to_throw_insert")
        self.report["lifted_at"] = time.monotonic()


def main(dsn: str, out: Path, hold_s: float, customers: int, minutes: float) -> dict[str, Any]:
    """Run the pipeline through an outage and report what was seen during it and stored after it.

    Args:
        dsn: ``chdb:///path`` (a fresh path).
        out: Directory of the run's JSONL sink.
        hold_s: Length of the outage once the pipeline has hit it.
        customers: Simulated customers.
        minutes: Simulated minutes.

    Returns:
        The report: observations before the outage, at the first refused insert and at the end of the hold
        (times from the start of the run), the run's time, the final metrics, and per table the row count, the
        distinct keys and, for ``ROWS``, the rows to compare with the JSONL sink.
    """
    from connectors.clickhouse.client import open_client
    from connectors.clickhouse.schema import schema_statements
    from flows import http_endpoint, metrics
    from flows.config import PipelineConfig
    from flows.runner import run_pipeline
    from state.rules import load_rule_pack

    cfg = PipelineConfig(source="simulator", sinks=(f"jsonl:{out}", "clickhouse"), clickhouse_dsn=dsn,
                         sim_customers=customers, sim_minutes=minutes, metrics_port=None, status="off",
                         snapshot_interval_s=1.0).validate()
    client = open_client(dsn)
    try:
        # Merges stop before the first row: a merge would fold the parts the outage needs, and would
        # collapse doubled rows (ReplacingMergeTree) that the exactly-once check must see.
        for stmt in schema_statements():
            client.command(stmt)
        for t in KEYS:
            client.command(f"SYSTEM STOP MERGES {t}")
        outage = Outage(client, out / "moments.jsonl", hold_s)
        outage.start()
        started = time.monotonic()
        try:
            code = run_pipeline(cfg, load_rule_pack(None))
        finally:
            outage.pipeline_done.set()
            outage.join(timeout=120)
        if outage.error is not None:
            raise outage.error
        report: dict[str, Any] = {"exit_code": code, "run_s": time.monotonic() - started, **outage.report}
        report["lifted_at"] -= started
        for key in ("before", "blocked", "held"):
            report[key]["t"] -= started
        report["end"] = {
            "retries": metrics.REGISTRY.get_sample_value("cx_sink_retries_total", {"sink": "clickhouse"}),
            "errors": metrics.REGISTRY.get_sample_value("cx_sink_errors_total", {"sink": "clickhouse"}),
            "sink_up": metrics.REGISTRY.get_sample_value("cx_sink_up", {"sink": "clickhouse"}),
            "ready": http_endpoint.readiness().get("clickhouse"),
        }
        report["tables"] = {
            t: {"count": _scalar(client, f"SELECT count() FROM {t}"),
                "distinct_keys": _scalar(client, f"SELECT uniqExact({key}) FROM {t}")}
            for t, key in KEYS.items()
        }
        for t, sql in ROWS.items():
            report["tables"][t]["rows"] = [list(r) for r in client.query(sql).result_rows]
        return report
    finally:
        client.close()


if __name__ == "__main__":
    dsn_arg, out_arg, hold_arg, customers_arg, minutes_arg, report_arg = sys.argv[1:]
    result = main(dsn_arg, Path(out_arg), float(hold_arg), int(customers_arg), float(minutes_arg))
    Path(report_arg).write_bytes(orjson.dumps(result))
