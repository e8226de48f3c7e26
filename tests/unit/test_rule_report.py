"""Rule effectiveness statistics and rendering, against numbers worked out by hand.

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
    Uplift,
    format_time_ms,
    parse_time_ms,
    render_json,
    render_text,
    rule_report,
    uplift,
    verdict,
)

Z95 = 1.959964  # two-sided 95%: the 0.975 normal quantile
Z90 = 1.644854  # two-sided 90%: the 0.95 normal quantile
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


# -- uplift ----------------------------------------------------------------------------------


def test_uplift_matches_the_wald_interval_worked_by_hand() -> None:
    # p_t = 30/100 = 0.3, p_c = 20/100 = 0.2, diff = 0.1
    # se = sqrt(0.3*0.7/100 + 0.2*0.8/100) = sqrt(0.0021 + 0.0016) = sqrt(0.0037) = 0.0608276
    # half width = 1.959964 * 0.0608276 = 0.1192200
    u = uplift(100, 30, 100, 20)
    assert u is not None
    assert (u.rate_t, u.rate_c) == pytest.approx((0.3, 0.2))
    assert u.diff == pytest.approx(0.1)
    assert u.low == pytest.approx(0.1 - 0.1192200, abs=1e-6)
    assert u.high == pytest.approx(0.1 + 0.1192200, abs=1e-6)


def test_uplift_with_unequal_arms_is_unpooled() -> None:
    # p_t = 200/400 = 0.5, p_c = 30/100 = 0.3, diff = 0.2
    # se = sqrt(0.25/400 + 0.21/100) = sqrt(0.000625 + 0.0021) = sqrt(0.002725) = 0.0522015
    # half width = 1.959964 * 0.0522015 = 0.1023131 (a pooled p = 230/500 would give 0.1089)
    u = uplift(400, 200, 100, 30)
    assert u is not None
    assert (u.low, u.high) == pytest.approx((0.0976869, 0.3023131), abs=1e-6)


def test_confidence_level_sets_the_z_value() -> None:
    # p_t = 60/200 = 0.30, p_c = 44/200 = 0.22, diff = 0.08
    # se = sqrt(0.21/200 + 0.1716/200) = sqrt(0.001908) = 0.0436807
    # 95%: half = 1.959964 * 0.0436807 = 0.0856125 -> [-0.0056125, 0.1656125] reaches 0
    # 90%: half = 1.644854 * 0.0436807 = 0.0718483 -> [ 0.0081517, 0.1518483] does not
    u95 = uplift(200, 60, 200, 44, 0.95)
    u90 = uplift(200, 60, 200, 44, 0.90)
    assert u95 is not None
    assert u90 is not None
    assert u95.low == pytest.approx(-0.0056125, abs=1e-6)
    assert u90.low == pytest.approx(0.0081517, abs=1e-6)
    assert (u95.high - u95.diff) / (u90.high - u90.diff) == pytest.approx(Z95 / Z90, rel=1e-6)
    assert verdict(200, 200, u95, 200) == "retire"
    assert verdict(200, 200, u90, 200) == "keep"


def test_uplift_is_none_when_an_arm_is_empty() -> None:
    assert uplift(0, 0, 10, 3) is None
    assert uplift(10, 3, 0, 0) is None
    assert uplift(0, 0, 0, 0) is None


def test_rates_of_zero_and_one_have_no_variance() -> None:
    # Every treated moment succeeds, no control one does: se = sqrt(1*0/10 + 0*1/10) = 0.
    u = uplift(10, 10, 10, 0)
    assert u == Uplift(rate_t=1.0, rate_c=0.0, diff=1.0, low=1.0, high=1.0)
    # Both arms at 0: the interval is the single point 0, which is not a positive uplift.
    none = uplift(10, 0, 10, 0)
    assert none == Uplift(0.0, 0.0, 0.0, 0.0, 0.0)
    assert verdict(10, 10, none, 10) == "retire"


def test_one_arm_at_one_keeps_the_other_arms_variance() -> None:
    # p_t = 1 contributes 0; p_c = 0.5: se = sqrt(0.25/50) = 0.0707107, half = 1.959964 * 0.0707107 = 0.1385904
    u = uplift(50, 50, 50, 25)
    assert u is not None
    assert (u.low, u.high) == pytest.approx((0.5 - 0.1385904, 0.5 + 0.1385904), abs=1e-6)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 11, 10, 1), "treated"),
        ((10, 1, 10, -1), "control"),
        ((-1, 0, 10, 1), "treated"),
        ((10, 1, 5, 6), "control"),
    ],
)
def test_impossible_counts_are_rejected_naming_the_arm(args: tuple[int, int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        uplift(*args)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5])
def test_confidence_outside_zero_one_is_rejected(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        uplift(10, 1, 10, 1, confidence)


# -- verdict ---------------------------------------------------------------------------------


def test_significantly_positive_uplift_is_kept() -> None:
    assert verdict(400, 100, uplift(400, 200, 100, 30), 100) == "keep"


def test_interval_including_zero_means_retire() -> None:
    assert verdict(100, 100, uplift(100, 30, 100, 20), 100) == "retire"


def test_interval_entirely_below_zero_means_retire() -> None:
    # p_t = 0.1, p_c = 0.3: diff -0.2, half = 1.959964 * sqrt(0.09/200 + 0.21/200) = 0.0759091
    u = uplift(200, 20, 200, 60)
    assert u is not None
    assert u.high == pytest.approx(-0.2 + 0.0759091, abs=1e-6)
    assert verdict(200, 200, u, 200) == "retire"


def test_lower_bound_exactly_zero_is_not_significant() -> None:
    assert verdict(50, 50, Uplift(0.5, 0.4, 0.1, 0.0, 0.2), 50) == "retire"
    assert verdict(50, 50, Uplift(0.5, 0.4, 0.1, 1e-9, 0.2), 50) == "keep"


def test_either_arm_below_the_minimum_sample_gives_no_verdict() -> None:
    strong = uplift(400, 200, 100, 30)  # clearly positive
    assert verdict(400, 99, strong, 100) == "insufficient_sample"
    assert verdict(99, 400, strong, 100) == "insufficient_sample"
    assert verdict(100, 100, strong, 100) == "keep"  # the minimum itself is enough
    assert verdict(0, 0, None, 0) == "insufficient_sample"


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
        moments=[("cart.abandoned", 520), ("cart.stuck", 3), ("cart.maze", 2)],
        # rule, decided, sent, control, suppressed, successes sent, successes control, median
        outcomes=[("cart.abandoned", 520, 400, 100, 20, 200, 30, 754_500.0),
                  ("cart.stuck", 3, 2, 1, 0, 0, 0, math.nan)],
        suppressed=[("cart.abandoned", "quiet_hours", 5), ("cart.abandoned", "stale", 15)],
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
    assert (cart.ci_low, cart.ci_high) == pytest.approx((0.0976869, 0.3023131), abs=1e-6)
    assert cart.median_recovery_ms == 754_500.0
    assert (cart.verdict, cart.retire) == ("keep", False)
    # No successful sent moment: ClickHouse's empty median is nan, reported as None.
    assert stuck.median_recovery_ms is None
    assert stuck.verdict == "insufficient_sample"
    assert not stuck.retire
    # Moments without decisions (e.g. fired before the policy existed) still show up.
    assert (maze.moments, maze.decided, maze.rate_sent, maze.uplift) == (2, 0, None, None)


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
        rule="cart.abandoned", moments=520, decided=520, sent=400, control=100, suppressed=20,
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
                ci_high=0.0, median_recovery_ms=None, verdict="insufficient_sample"),
    ))
    text = render_text(report)
    assert "moments due from 2026-01-01T00:00:00Z before 2026-01-02T00:00:00Z" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("cart.abandoned"))
    assert row.split() == ["cart.abandoned", "520", "400", "100", "20", "50.0%", "30.0%", "+20.0", "[+9.8,",
                           "+30.2]", "12m34s", "keep"]  # 754.5 s rounds to 12m34s
    stuck = next(line for line in text.splitlines() if line.strip().startswith("cart.stuck"))
    assert stuck.rstrip().endswith("-  insufficient sample")
    assert "cart.abandoned            stale 15, quiet_hours 5" in text
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
        (["report", "rules", "--confidence", "1.5"], "--confidence: must be between 0 and 1"),
        (["report", "rules", "--min-sample", "0"], "--min-sample: must be at least 1"),
    ],
)
def test_cli_rejects_misplaced_or_invalid_report_arguments(
        args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--log-level", "error", *args, "--clickhouse", "chdb:///nonexistent/never-opened"]) == 2
    assert message in capsys.readouterr().err
