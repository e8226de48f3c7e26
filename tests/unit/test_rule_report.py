"""Rule effectiveness report: assembly and rendering, against numbers worked out by hand.

The ClickHouse side (view, materialized view, the report over real rows) is in
tests/integration/test_rule_report_chdb.py.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
import pytest

from flows.cli import main
from flows.rule_report import (
    RuleEffect,
    RuleReport,
    format_time_ms,
    parse_time_ms,
    render_json,
    render_text,
    rule_report,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


# -- time bounds -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1767225600000", T0),
        ("2026-01-01", T0),
        ("2026-01-01T00:00:00Z", T0),
        ("2026-01-01T00:00", T0),
        ("2026-01-01T02:00:00+02:00", T0),
        ("2026-01-01T00:00:00.123Z", T0 + 123),
        ("2026-01-02", T0 + 86_400_000),
        ("0", 0),
    ],
)
def test_time_bounds_read_as_utc_epoch_ms(text: str, ms: int) -> None:
    assert parse_time_ms(text) == ms


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "", "1.5e12"])
def test_unreadable_time_bound_is_rejected_quoting_it(text: str) -> None:
    with pytest.raises(ValueError, match="epoch ms or an ISO"):
        parse_time_ms(text)


def test_times_format_as_iso_utc() -> None:
    assert format_time_ms(T0) == "2026-01-01T00:00:00Z"
    assert format_time_ms(T0 + 123) == "2026-01-01T00:00:00.123Z"
    assert parse_time_ms(format_time_ms(T0 + 123)) == T0 + 123


# -- assembly and rendering ------------------------------------------------------------------


class CannedClient:
    """Answers the report's three queries from canned rows, and records their parameters."""

    def __init__(self, moments: list[tuple[Any, ...]], outcomes: list[tuple[Any, ...]],
                 suppressed: list[tuple[Any, ...]]) -> None:
        self._answers = {"FROM moments": moments, "FROM rule_outcomes": outcomes, "FROM actions": suppressed}
        self.params: list[dict[str, Any]] = []

    def query(self, sql: str, parameters: dict[str, Any]) -> Any:  # noqa: D102
        self.params.append(parameters)
        rows = next(rows for key, rows in self._answers.items() if key in sql)
        return type("Result", (), {"result_rows": rows})()


def _report(client: CannedClient, **kwargs: Any) -> RuleReport:
    return rule_report(client, T0, T0 + 86_400_000, **kwargs)


def test_report_combines_moments_outcomes_and_suppression_reasons() -> None:
    client = CannedClient(
        moments=[("cart.abandoned", 1, 520), ("cart.stuck", 1, 3), ("cart.maze", 1, 2)],
        # rule, version, decided, sent, control, suppressed, successes sent, successes control, median
        outcomes=[("cart.abandoned", 1, 520, 400, 100, 20, 200, 30, 754_500.0),
                  ("cart.stuck", 1, 3, 2, 1, 0, 0, 0, math.nan)],
        suppressed=[("cart.abandoned", 1, "quiet_hours", 5), ("cart.abandoned", 1, "stale", 15)],
    )
    report = _report(client, min_sample=100)
    assert client.params == [{"from_ms": T0, "to_ms": T0 + 86_400_000}] * 3
    cart, stuck, maze = report.rules
    assert [cart.rule, stuck.rule, maze.rule] == ["cart.abandoned", "cart.stuck", "cart.maze"]  # most moments first
    assert (cart.moments, cart.decided, cart.sent, cart.control, cart.suppressed) == (520, 520, 400, 100, 20)
    assert dict(cart.suppressed_by_reason) == {"stale": 15, "quiet_hours": 5}
    assert list(cart.suppressed_by_reason) == ["stale", "quiet_hours"]  # largest first
    assert (cart.rate_sent, cart.rate_control) == (0.5, 0.3)
    assert cart.uplift == pytest.approx(0.2)
    # The confidence sequence at 95 %, tuned for 100 per arm: half-width 0.1698302 (tests/helpers.uplift_half_width).
    assert (cart.ci_low, cart.ci_high) == pytest.approx((0.2 - 0.1698302, 0.2 + 0.1698302), abs=1e-6)
    assert cart.median_recovery_ms == 754_500.0
    assert (cart.verdict, cart.retire, cart.needed_sent) == ("keep", False, None)
    # No successful sent moment: ClickHouse's empty median is nan, reported as None.
    assert stuck.median_recovery_ms is None
    assert stuck.verdict == "continue"
    assert not stuck.retire
    assert (stuck.needed_sent, stuck.needed_control) == (98, 99)  # below min_sample: at least that many
    # Moments without decisions (e.g. fired before the policy existed) still show up.
    assert (maze.moments, maze.decided, maze.rate_sent, maze.uplift) == (2, 0, None, None)


def test_each_version_of_a_rule_is_judged_on_its_own_sample() -> None:
    client = CannedClient(
        moments=[("cart.abandoned", 1, 300), ("cart.abandoned", 2, 220)],
        outcomes=[("cart.abandoned", 1, 300, 250, 50, 0, 150, 10, 1000.0),
                  ("cart.abandoned", 2, 220, 150, 50, 20, 50, 20, 2000.0)],
        suppressed=[("cart.abandoned", 2, "stale", 20)],
    )
    v1, v2 = _report(client, min_sample=50).rules
    assert (v1.rule_version, v1.moments, v1.sent, v1.successes_sent, v1.verdict) == (1, 300, 250, 150, "keep")
    assert (v2.rule_version, v2.moments, v2.sent, v2.successes_sent) == (2, 220, 150, 50)
    assert dict(v2.suppressed_by_reason) == {"stale": 20}
    assert dict(v1.suppressed_by_reason) == {}


def test_unbounded_range_queries_the_whole_int64_range() -> None:
    client = CannedClient([], [], [])
    report = rule_report(client)
    assert report.rules == ()
    assert client.params[0] == {"from_ms": -(2**63), "to_ms": 2**63 - 1}
    assert "no moments" in render_text(report)


def test_report_rejects_a_negative_minimum_sample() -> None:
    with pytest.raises(ValueError, match="min_sample"):
        rule_report(CannedClient([], [], []), min_sample=-1)


def _effect(**kw: Any) -> RuleEffect:
    base: dict[str, Any] = dict(
        rule="cart.abandoned", rule_version=1, moments=520, decided=520, sent=400, control=100, suppressed=20,
        suppressed_by_reason={"stale": 15, "quiet_hours": 5}, successes_sent=200, successes_control=30,
        rate_sent=0.5, rate_control=0.3, uplift=0.2, ci_low=0.0976869, ci_high=0.3023131,
        median_recovery_ms=754_500.0, verdict="keep", retire=False,
    )
    return RuleEffect(**(base | kw))


def test_text_table_shows_rates_uplift_interval_and_verdict() -> None:
    report = RuleReport(T0, T0 + 86_400_000, 0.95, 100, (
        _effect(),
        _effect(rule="cart.stuck", moments=3, decided=3, sent=2, control=1, suppressed=0, suppressed_by_reason={},
                successes_sent=0, successes_control=0, rate_sent=0.0, rate_control=0.0, uplift=0.0, ci_low=0.0,
                ci_high=0.0, median_recovery_ms=None, verdict="continue", needed_sent=98,
                    needed_control=99),
    ))
    text = render_text(report)
    assert "moments due from 2026-01-01T00:00:00Z before 2026-01-02T00:00:00Z" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("cart.abandoned"))
    assert row.split() == ["cart.abandoned", "1", "520", "400", "100", "20", "50.0%", "30.0%", "+20.0", "[+9.8,",
                           "+30.2]", "12m34s", "keep"]  # 754.5 s rounds to 12m34s
    stuck = next(line for line in text.splitlines() if line.strip().startswith("cart.stuck"))
    handoff = render_text(RuleReport(T0, None, 0.95, 100, (_effect(rule="cart.handoff", control=0, verdict="continue",
                                                                    needed_sent=0, needed_control=100),)))
    assert "continue (no hold-out moments: give the rule a holdout to judge it)" in handoff
    assert stuck.rstrip().endswith("-  continue (~98 more sent, 99 more control)")
    assert "cart.abandoned v1             stale 15, quiet_hours 5" in text
    assert "95% CI" in text
    assert "needs 100 sent and 100 control" in text


def test_json_carries_every_field_with_fractions_and_nulls() -> None:
    report = RuleReport(None, T0, 0.9, 50, (_effect(median_recovery_ms=None, verdict="retire", retire=True),))
    doc = orjson.loads(render_json(report))
    assert {k: doc[k] for k in ("from_ms", "to_ms", "confidence", "min_sample")} == {
        "from_ms": None, "to_ms": T0, "confidence": 0.9, "min_sample": 50}
    (rule,) = doc["rules"]
    assert set(rule) == set(RuleEffect.__dataclass_fields__)
    assert rule["suppressed_by_reason"] == {"stale": 15, "quiet_hours": 5}
    assert (rule["uplift"], rule["median_recovery_ms"], rule["verdict"], rule["retire"]) == (0.2, None, "retire", True)


# -- CLI arguments (rejected before any ClickHouse connection) --------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "--json"], "--json: applies to `moments report rules` only"),
        (["report", "overview", "--from", "2026-01-01"], "--from: applies to `moments report rules` only"),
        (["report", "rules", "--html", "x.html"], "--html/--journey: apply to `moments report overview` only"),
        (["report", "rules", "--from", "yesterday"], "--from: expected epoch ms or an ISO date/datetime"),
        (["report", "rules", "--from", "2026-01-02", "--to", "2026-01-01"], "--from/--to: empty range"),
        (["report", "rules", "--confidence", "1.5"], "--confidence: must be a number in [0.5, 1)"),
        (["report", "rules", "--confidence", "1e-17"], "--confidence: must be a number in [0.5, 1)"),
        (["report", "rules", "--confidence", "0.49"], "--confidence: must be a number in [0.5, 1)"),
        (["report", "rules", "--min-sample", "0"], "--min-sample: must be 1..1000000000"),
        (["report", "rules", "--min-sample", "99999999999999999999"], "--min-sample: must be 1..1000000000"),
    ],
)
def test_cli_rejects_misplaced_or_invalid_report_arguments(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "error", *args, "--clickhouse", "chdb:///nonexistent/never-opened"]) == 2
    assert message in capsys.readouterr().err
