"""``moments report rules``: does contacting customers at a moment beat leaving them alone, per rule?

Reads the ClickHouse view ``rule_outcomes`` (infra/clickhouse/002_effectiveness.sql): one row per
decided moment with its contact-policy status and the final state of its tag. The fair comparison is
``sent`` (treated) against ``control`` (hold-out): control moments passed every eligibility check as
sent ones did, only the contact was withheld. Suppressed moments are counted by reason but take no
part in the comparison.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from statistics import NormalDist
from typing import Any, Literal

import orjson

Verdict = Literal["keep", "retire", "insufficient_sample"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_SAMPLE = 200
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Uplift:
    """Success rates of both arms and the difference with its confidence interval.

    Attributes:
        rate_t: Success rate of the treated (sent) arm.
        rate_c: Success rate of the control arm.
        diff: ``rate_t - rate_c``.
        low: Lower bound of the interval.
        high: Upper bound of the interval.
    """

    rate_t: float
    rate_c: float
    diff: float
    low: float
    high: float


def uplift(n_t: int, s_t: int, n_c: int, s_c: int, confidence: float = DEFAULT_CONFIDENCE) -> Uplift | None:
    """Difference of two success rates with a two-sided Wald (unpooled normal-approximation) interval.

    ``diff ± z·sqrt(p_t(1-p_t)/n_t + p_c(1-p_c)/n_c)`` with ``z`` the ``(1+confidence)/2`` normal
    quantile. When both rates are 0 or 1 the standard error is 0 and the interval collapses to
    ``diff``: the Wald interval's known weakness at the edges, one reason for a minimum sample.

    Args:
        n_t: Treated (sent) moments.
        s_t: Successful treated moments.
        n_c: Control moments.
        s_c: Successful control moments.
        confidence: Two-sided confidence level, strictly between 0 and 1.

    Returns:
        The rates, difference and interval; None when either arm has no moments.

    Raises:
        ValueError: for negative counts, more successes than moments or a confidence outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    for arm, n, s in (("treated", n_t, s_t), ("control", n_c, s_c)):
        if n < 0 or not 0 <= s <= n:
            raise ValueError(f"{arm}: need 0 <= successes <= moments, got {s} of {n}")
    if n_t == 0 or n_c == 0:
        return None
    p_t, p_c = s_t / n_t, s_c / n_c
    diff = p_t - p_c
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    return Uplift(rate_t=p_t, rate_c=p_c, diff=diff, low=diff - half, high=diff + half)


def verdict(n_t: int, n_c: int, effect: Uplift | None, min_sample: int) -> Verdict:
    """Decide whether a rule earns its contacts.

    Args:
        n_t: Treated (sent) moments.
        n_c: Control moments.
        effect: The rule's uplift (None when an arm is empty).
        min_sample: Moments each arm needs before a verdict.

    Returns:
        ``insufficient_sample`` while either arm is below ``min_sample``; otherwise ``retire`` when
        the uplift is not significantly positive (the interval reaches 0 or lies below it), else ``keep``.
    """
    if effect is None or n_t < min_sample or n_c < min_sample:
        return "insufficient_sample"
    return "retire" if effect.low <= 0.0 else "keep"


@dataclass(frozen=True, slots=True)
class RuleEffect:
    """One rule's moments, decisions and effect over the report's due-time range.

    Attributes:
        rule: Rule name.
        moments: Moments fired (table ``moments``).
        decided: Moments with a contact-policy decision (table ``actions``).
        sent: Decided ``sent`` (the treated arm).
        control: Decided ``control`` (the hold-out arm).
        suppressed: Decided ``suppressed``.
        suppressed_by_reason: Suppressed moments per reason code.
        successes_sent: Sent moments whose tag was resolved as recovered or converted.
        successes_control: The same for control moments.
        rate_sent: ``successes_sent / sent`` (None without sent moments).
        rate_control: ``successes_control / control`` (None without control moments).
        uplift: ``rate_sent - rate_control`` (None when an arm is empty).
        ci_low: Lower bound of the uplift's interval.
        ci_high: Upper bound of the uplift's interval.
        median_recovery_ms: Median time from due time to resolution over successful sent moments.
        verdict: ``keep`` | ``retire`` | ``insufficient_sample``.
        retire: True when the verdict is ``retire``.
    """

    rule: str
    moments: int
    decided: int
    sent: int
    control: int
    suppressed: int
    suppressed_by_reason: Mapping[str, int]
    successes_sent: int
    successes_control: int
    rate_sent: float | None
    rate_control: float | None
    uplift: float | None
    ci_low: float | None
    ci_high: float | None
    median_recovery_ms: float | None
    verdict: Verdict
    retire: bool


@dataclass(frozen=True, slots=True)
class RuleReport:
    """The effectiveness of every rule with moments in a due-time range.

    Attributes:
        from_ms: Inclusive lower bound of ``due_ts`` (None: unbounded).
        to_ms: Exclusive upper bound of ``due_ts`` (None: unbounded).
        confidence: Confidence level of the intervals.
        min_sample: Moments each arm needs before a verdict.
        rules: One entry per rule, most moments first.
    """

    from_ms: int | None
    to_ms: int | None
    confidence: float
    min_sample: int
    rules: tuple[RuleEffect, ...]


def _rows(client: Any, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return list(client.query(sql, parameters=dict(params)).result_rows)


_RANGE = "due_ts >= {from_ms:Int64} AND due_ts < {to_ms:Int64}"

_MOMENTS_SQL = f"SELECT rule, count() FROM moments FINAL WHERE {_RANGE} GROUP BY rule"

_OUTCOMES_SQL = f"""
SELECT
    rule,
    count(),
    countIf(status = 'sent'),
    countIf(status = 'control'),
    countIf(status = 'suppressed'),
    countIf(status = 'sent' AND success = 1),
    countIf(status = 'control' AND success = 1),
    quantileExactInclusiveIf(0.5)(resolved_ts - due_ts, status = 'sent' AND success = 1)
FROM rule_outcomes
WHERE {_RANGE}
GROUP BY rule
"""

# Straight from actions: the suppression reasons need no tag outcome, so no join.
_SUPPRESSED_SQL = f"""
SELECT rule, reason, count() FROM actions FINAL
WHERE status = 'suppressed' AND {_RANGE}
GROUP BY rule, reason
"""


def rule_report(
    client: Any,
    from_ms: int | None = None,
    to_ms: int | None = None,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    min_sample: int = DEFAULT_MIN_SAMPLE,
) -> RuleReport:
    """Compute every rule's effectiveness over moments due in ``[from_ms, to_ms)``.

    Args:
        client: A clickhouse-connect client on a database with the schema of ``infra/clickhouse``.
        from_ms: Inclusive lower bound of the moments' due time (epoch ms; None: unbounded).
        to_ms: Exclusive upper bound (None: unbounded).
        confidence: Confidence level of the uplift intervals.
        min_sample: Moments each arm needs before a verdict.

    Returns:
        The report; rules with neither moments nor decisions in the range are absent.

    Raises:
        ValueError: for a confidence outside (0, 1) or a negative ``min_sample``.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    if min_sample < 0:
        raise ValueError(f"min_sample must not be negative, got {min_sample}")
    params = {"from_ms": INT64_MIN if from_ms is None else from_ms, "to_ms": INT64_MAX if to_ms is None else to_ms}
    fired = {str(r): int(n) for r, n in _rows(client, _MOMENTS_SQL, params)}
    outcomes = {str(row[0]): row[1:] for row in _rows(client, _OUTCOMES_SQL, params)}
    reasons: dict[str, dict[str, int]] = {}
    for rule, reason, n in _rows(client, _SUPPRESSED_SQL, params):
        reasons.setdefault(str(rule), {})[str(reason)] = int(n)

    effects = []
    for rule in fired.keys() | outcomes.keys():
        decided, sent, control, suppressed, s_t, s_c, median = outcomes.get(rule, (0, 0, 0, 0, 0, 0, math.nan))
        sent, control, s_t, s_c = int(sent), int(control), int(s_t), int(s_c)
        effect = uplift(sent, s_t, control, s_c, confidence)
        v = verdict(sent, control, effect, min_sample)
        effects.append(RuleEffect(
            rule=rule,
            moments=fired.get(rule, 0),
            decided=int(decided),
            sent=sent,
            control=control,
            suppressed=int(suppressed),
            suppressed_by_reason=dict(sorted(reasons.get(rule, {}).items(), key=lambda kv: (-kv[1], kv[0]))),
            successes_sent=s_t,
            successes_control=s_c,
            rate_sent=s_t / sent if sent else None,
            rate_control=s_c / control if control else None,
            uplift=None if effect is None else effect.diff,
            ci_low=None if effect is None else effect.low,
            ci_high=None if effect is None else effect.high,
            # An empty quantile is nan in ClickHouse: no successful sent moment.
            median_recovery_ms=None if math.isnan(median) else float(median),
            verdict=v,
            retire=v == "retire",
        ))
    effects.sort(key=lambda e: (-e.moments, e.rule))
    return RuleReport(from_ms, to_ms, confidence, min_sample, tuple(effects))


# -- time arguments --------------------------------------------------------------------------


def parse_time_ms(value: str) -> int:
    """Read a time bound: epoch milliseconds, an ISO date (midnight UTC) or an ISO datetime.

    Args:
        value: ``1767225600000``, ``2026-01-01``, ``2026-01-01T12:00``, ``2026-01-01T12:00:00Z`` or with
            an offset (``+02:00``); a datetime without an offset is UTC.

    Returns:
        Epoch milliseconds.

    Raises:
        ValueError: when the value is none of these.
    """
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        dt = datetime.fromisoformat(text)  # a date alone reads as its midnight
    except ValueError:
        raise ValueError(
            f"expected epoch ms or an ISO date/datetime (UTC unless an offset is given), got {value!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # Integer arithmetic: float timestamps would round some milliseconds away.
    return (dt - _EPOCH) // _MS


def format_time_ms(ms: int) -> str:
    """Render epoch milliseconds as ISO UTC.

    Args:
        ms: Epoch milliseconds.

    Returns:
        E.g. ``2026-01-01T00:00:00Z`` (milliseconds shown only when not zero).
    """
    dt = _EPOCH + ms * _MS
    return dt.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


# -- rendering -------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pp(x: float) -> str:
    return f"{100 * x:+.1f}"


def _duration(ms: float | None) -> str:
    if ms is None:
        return "-"
    s = round(ms / 1000)
    sign, s = ("-", -s) if s < 0 else ("", s)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{sign}{h}h{m:02d}m"
    return f"{sign}{m}m{sec:02d}s" if m else f"{sign}{sec}s"


def _range_text(from_ms: int | None, to_ms: int | None) -> str:
    if from_ms is None and to_ms is None:
        return "all moments"
    parts = ["moments due"]
    if from_ms is not None:
        parts.append(f"from {format_time_ms(from_ms)}")
    if to_ms is not None:
        parts.append(f"before {format_time_ms(to_ms)}")
    return " ".join(parts)


def render_text(report: RuleReport) -> str:
    """Render the report as a text table with a suppression breakdown.

    Args:
        report: The report.

    Returns:
        The text, without a trailing newline.
    """
    level = f"{100 * report.confidence:g}%"
    lines = [
        f"Rule effectiveness: {_range_text(report.from_ms, report.to_ms)}",
        "  success: tag resolved as recovered or converted. uplift: success rate of sent minus control, in",
        f"  percentage points, with its {level} interval. A verdict needs {report.min_sample} sent and "
        f"{report.min_sample} control moments.",
        "",
        f"  {'rule':<26}{'moments':>8}{'sent':>7}{'control':>8}{'suppr.':>7}{'succ. sent':>11}{'succ. ctl':>10}"
        f"  {'uplift [' + level + ' CI]':<24}{'med. recovery':>14}  verdict",
    ]
    if not report.rules:
        lines.append("  (no moments in this range)")
    for e in report.rules:
        ci = "-"
        if e.uplift is not None and e.ci_low is not None and e.ci_high is not None:
            ci = f"{_pp(e.uplift)} [{_pp(e.ci_low)}, {_pp(e.ci_high)}]"
        lines.append(
            f"  {e.rule:<26}{e.moments:>8}{e.sent:>7}{e.control:>8}{e.suppressed:>7}{_pct(e.rate_sent):>11}"
            f"{_pct(e.rate_control):>10}  {ci:<24}{_duration(e.median_recovery_ms):>14}  "
            + e.verdict.replace("_", " ")
        )
    suppressed = [e for e in report.rules if e.suppressed_by_reason]
    if suppressed:
        lines += ["", "Suppressed by reason"]
        for e in suppressed:
            reasons = ", ".join(f"{r or '(none)'} {n}" for r, n in e.suppressed_by_reason.items())
            lines.append(f"  {e.rule:<26}{reasons}")
    return "\n".join(lines)


def render_json(report: RuleReport) -> str:
    """Render the report as JSON (rates and uplift as fractions, times as epoch ms).

    Args:
        report: The report.

    Returns:
        A JSON object: ``from_ms``, ``to_ms``, ``confidence``, ``min_sample`` and ``rules`` (a list).
    """
    return orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2).decode()
