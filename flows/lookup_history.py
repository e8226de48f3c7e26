"""The stored history a look-up reads from ClickHouse (``flows.serving``): only what the worker's memory cannot
answer (a customer evicted or dropped from memory) and a moment's explanation (its evidence events and steps).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Final, TypeVar

from flows.recent import MAX_MOMENTS

T = TypeVar("T")

STEPS_AROUND: Final = 10  # steps of the journey listed before and after an explained moment
_DECISION: Final = ("status", "reason", "channel", "template", "control", "suppressed_channels", "send_ts")


class History:
    """Reads the stored history of customers and moments from the ClickHouse database the sink writes.

    Without ``FINAL``: a replayed row is an exact copy (ids are deterministic), so ``LIMIT 1 BY`` its key
    drops copies at a fraction of the cost of merging every part at query time while the sink inserts.

    Args:
        dsn: The resolved DSN of the worker's ClickHouse sink.
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._shared: Any = None
        self._lock = threading.Lock()

    def with_client(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` holding the shared client's lock (the sink's inserts wait meanwhile)."""
        from connectors.clickhouse.client import acquire_client

        with self._lock:
            if self._shared is None:
                self._shared = acquire_client(self.dsn)
            shared = self._shared
        with shared.lock:
            return fn(shared.client)

    def _query(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        return self.with_client(lambda client: list(client.query(sql, parameters=params).named_results()))

    def close(self) -> None:
        """Release the ClickHouse client (the sink closes it, and with it the chDB path, once both let go)."""
        from connectors.clickhouse.client import release_client

        with self._lock:
            shared, self._shared = self._shared, None
        if shared is not None:
            release_client(self.dsn, shared)

    def moments(self, cid: str, limit: int = MAX_MOMENTS) -> list[dict[str, Any]]:
        """The customer's latest moments (newest first), each with its contact decision (None if not decided)."""
        rows = self._query(
            "SELECT m.moment_id AS moment_id, m.rule AS rule, m.rule_version AS rule_version, m.kind AS kind, "
            "m.journey AS journey, m.step AS step, m.urgency AS urgency, m.due_ts AS due_ts, "
            "m.detected_at AS detected_at, m.evidence AS evidence, m.action AS action, a.moment_id AS decided, "
            "a.status AS status, a.reason AS reason, a.channel AS channel, a.template AS template, "
            "a.control AS control, a.suppressed_channels AS suppressed_channels, a.send_ts AS send_ts "
            "FROM (SELECT * FROM moments WHERE customer_id = {cid:String} ORDER BY due_ts DESC, moment_id "
            "LIMIT 1 BY moment_id LIMIT {n:UInt32}) AS m LEFT JOIN (SELECT * FROM actions WHERE customer_id = "
            "{cid:String} LIMIT 1 BY moment_id) AS a ON m.moment_id = a.moment_id ORDER BY m.due_ts DESC, m.moment_id",
            {"cid": cid, "n": limit})
        out = []
        for r in rows:
            decided = r.pop("decided")
            decision = {k: r.pop(k) for k in _DECISION}
            out.append({**r, "decision": decision if decided else None})
        return out

    def decisions(self, cid: str, mids: list[str]) -> dict[str, dict[str, Any]]:
        """The contact decisions of the given moments of a customer, by moment id."""
        rows = self._query(
            "SELECT moment_id, status, reason, channel, template, control, suppressed_channels, send_ts "
            "FROM actions WHERE customer_id = {cid:String} AND moment_id IN {mids:Array(String)} LIMIT 1 BY moment_id",
            {"cid": cid, "mids": mids})
        return {r.pop("moment_id"): r for r in rows}

    def context(self, cid: str) -> dict[str, Any] | None:
        """The customer's latest hand-off context, None if none is stored."""
        rows = self._query(
            "SELECT * FROM handoff_contexts WHERE customer_id = {cid:String} ORDER BY contact_ts DESC, "
            "moment_id LIMIT 1", {"cid": cid})
        return rows[0] if rows else None

    def moment(self, mid: str) -> dict[str, Any] | None:
        """The stored moment record, None if this database does not hold it."""
        rows = self._query("SELECT * FROM moments WHERE moment_id = {mid:String} LIMIT 1", {"mid": mid})
        return rows[0] if rows else None

    def events(self, cid: str, ids: list[str]) -> list[dict[str, Any]]:
        """The stored input events of a customer with the given ids (one per id, oldest first)."""
        return self._query(
            "SELECT event_id, ts, channel, type, journey, step, entry, attrs FROM events "
            "WHERE customer_id = {cid:String} AND event_id IN {ids:Array(String)} "
            "ORDER BY ts, event_id LIMIT 1 BY event_id", {"cid": cid, "ids": ids})

    def steps(self, cid: str, journey: str, ts: int) -> list[dict[str, Any]]:
        """The customer's steps of a journey around a time: up to ``STEPS_AROUND`` before it and after it."""
        q = ("SELECT attempt_id, step, step_index, entry, channel, event_id, ts FROM journey_steps "
             "WHERE customer_id = {cid:String} AND journey = {j:String} AND ts {op} {ts:Int64} "
             "ORDER BY ts {order}, event_id LIMIT 1 BY event_id LIMIT {n:UInt32}")
        params = {"cid": cid, "j": journey, "ts": ts, "n": STEPS_AROUND}
        before = self._query(q.replace("{op}", "<=").replace("{order}", "DESC"), params)
        after = self._query(q.replace("{op}", ">").replace("{order}", "ASC"), params)
        return [*reversed(before), *after]

    def journeys(self, cid: str) -> list[dict[str, Any]]:
        """The customer's last stored journey states (one per journey): what remains of a customer evicted here."""
        return self._query(
            "SELECT journey, attempt_id AS attempt, stage, status, last_step AS step, last_ts AS updated_at "
            "FROM journey_states WHERE customer_id = {cid:String} ORDER BY version DESC LIMIT 1 BY journey",
            {"cid": cid})

    def tags(self, cid: str) -> list[dict[str, Any]]:
        """The customer's stored tags, each in its latest state (``open``, ``actioned``, ``resolved``, ``expired``)."""
        return self._query(
            "SELECT tag, rule, journey, state, moment_id, opened_ts FROM customer_tags WHERE customer_id = "
            "{cid:String} ORDER BY version DESC, moment_id LIMIT 1 BY tag", {"cid": cid})

    def attempt_steps(self, cid: str, attempts: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[list[str],
                                                                                                   list[str]]]:
        """The entry points and channels of the customer's given ``(journey, attempt)``s, from their step rows.

        One query for all of them. Each list is in the order of the steps and holds each name once (a replayed
        row, an exact copy, changes neither); an attempt without stored steps is left out.
        """
        rows = self._query(
            "SELECT journey, attempt_id, entry, channel FROM journey_steps WHERE customer_id = {cid:String} "
            "AND attempt_id IN {ids:Array(String)} ORDER BY ts, event_id",
            {"cid": cid, "ids": sorted({a for _, a in attempts})})
        wanted = set(attempts)
        out: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        for r in rows:
            key = (r["journey"], r["attempt_id"])
            if key not in wanted:
                continue  # the same attempt id in another journey
            entries, channels = out.setdefault(key, ([], []))
            if r["entry"] and r["entry"] not in entries:
                entries.append(r["entry"])
            if r["channel"] and r["channel"] not in channels:
                channels.append(r["channel"])
        return out
