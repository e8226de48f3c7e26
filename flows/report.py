"""``moments report``: moments by rule and drop-off per key step, read back from ClickHouse."""

from __future__ import annotations

from typing import Any

from state.rules import RulePack


def _rows(client: Any, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    return list(client.query(sql, parameters=params or {}).result_rows)


# What each view reads; `moments run` creates them (ClickHouseSink.ensure_schema) when it first writes.
OVERVIEW_TABLES = ("moments", "journey_steps")
RULES_TABLES = ("moments", "actions", "rule_outcomes")


def missing_tables(client: Any, names: tuple[str, ...]) -> list[str]:
    """Return those of ``names`` that the client's database lacks (tables or views), in the given order."""
    present = {str(r[0]) for r in _rows(
        client, "SELECT name FROM system.tables WHERE database = currentDatabase() AND name IN {names:Array(String)}",
        {"names": list(names)})}
    return [n for n in names if n not in present]


def no_data_message(dsn: str, missing: list[str]) -> str:
    """One line for a database the pipeline has not written to yet (no credentials in it)."""
    from flows.config import redacted_dsn

    what = ", ".join(missing) + (" tables" if len(missing) > 1 else " table")
    return (f"no data yet: {redacted_dsn(dsn)} has no {what} "
            "(`moments run` creates them when it first writes there)")


def moments_by_rule(client: Any) -> list[tuple[str, str, int]]:
    """Return (rule, urgency, moments) over the whole table, most first."""
    return [
        (str(r), str(u), int(n))
        for r, u, n in _rows(client, "SELECT rule, urgency, count() AS n FROM moments FINAL GROUP BY rule, urgency "
                                     "ORDER BY n DESC, rule")
    ]


def funnel(client: Any, journey: str, steps: tuple[str, ...]) -> list[tuple[str, int, int]]:
    """Return (step, attempts reaching it, abandonments at it) for a journey, in step order."""
    reached = dict(
        _rows(
            client,
            "SELECT step, uniqExact(customer_id, attempt_id) FROM journey_steps FINAL "
            "WHERE journey = {j:String} GROUP BY step",
            {"j": journey},
        )
    )
    abandoned = dict(
        _rows(
            client,
            "SELECT step, count() FROM moments FINAL WHERE journey = {j:String} AND kind = 'abandoned' GROUP BY step",
            {"j": journey},
        )
    )
    return [(s, int(reached.get(s, 0)), int(abandoned.get(s, 0))) for s in (*steps, "(complete)")]


def text_report(dsn: str, pack: RulePack, journey: str | None = None) -> str:
    """Render the report as text.

    Args:
        dsn: ClickHouse DSN.
        pack: Rule pack (journeys, key steps).
        journey: Only this journey's funnel (default: all).

    Returns:
        The report.
    """
    from connectors.clickhouse.client import open_client

    return text_report_of(open_client(dsn), pack, journey)


def text_report_of(client: Any, pack: RulePack, journey: str | None = None) -> str:
    """``text_report`` on an open client (a running worker answers ``moments report`` with its own)."""
    lines = ["Moments by rule", f"  {'rule':<28}{'urgency':<9}{'moments':>9}"]
    by_rule = moments_by_rule(client)
    lines += [f"  {r:<28}{u:<9}{n:>9}" for r, u, n in by_rule] or ["  (no moments yet)"]
    for jd in pack.journeys.values():
        if journey is not None and jd.id != journey:
            continue
        lines += ["", f"Journey {jd.id}: funnel and drop-off (attempts)",
                  f"  {'step':<16}{'reached':>9}{'→ next':>9}{'drop-off':>10}{'abandoned':>11}"]
        rows = funnel(client, jd.id, jd.steps)
        for i, (step, n, ab) in enumerate(rows):
            nxt = rows[i + 1][1] if i + 1 < len(rows) else None
            drop = "" if nxt is None or n == 0 else f"{100 * (n - nxt) / n:.1f}%"
            mark = "*" if step in jd.key_steps else " "
            lines.append(f" {mark}{step:<16}{n:>9}{'' if nxt is None else nxt:>9}{drop:>10}{ab:>11}")
        lines.append("  (* key step; drop-off counts attempts that did not reach the next step)")
    return "\n".join(lines)
