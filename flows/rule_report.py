"""``moments report rules``: does contacting customers at a moment beat leaving them alone, per rule?

Reads the ClickHouse view ``rule_outcomes`` (infra/clickhouse/004_rule_versions.sql): one row per
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
from typing import Any

import orjson

from flows.uplift_sequence import Verdict, still_needed, uplift, verdict

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DEFAULT_CONFIDENCE = 0.95
DEFAULT_MIN_SAMPLE = 200
DEFAULT_MIN_UPLIFT = 0.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class RuleEffect:
    """One rule's moments, decisions and effect over the report's due-time range.

    Attributes:
        rule: Rule name.
        rule_version: Version of the rule pack that fired these moments (0: written before versions).
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
        ci_low: Lower bound of the uplift's interval (a confidence sequence: valid at every look).
        ci_high: Upper bound of the uplift's interval.
        median_recovery_ms: Median time from due time to resolution over successful sent moments.
        verdict: ``keep`` | ``retire`` | ``continue``.
        retire: True when the verdict is ``retire``.
        needed_sent: With ``continue``: more sent moments a verdict needs if the rates hold (None: unknown).
        needed_control: The same for control moments.
    """

    rule: str
    rule_version: int
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
    needed_sent: int | None = None
    needed_control: int | None = None


@dataclass(frozen=True, slots=True)
class RuleReport:
    """The effectiveness of every rule with moments in a due-time range.

    Attributes:
        from_ms: Inclusive lower bound of ``due_ts`` (None: unbounded).
        to_ms: Exclusive upper bound of ``due_ts`` (None: unbounded).
        confidence: Confidence level of the intervals.
        min_sample: Moments each arm needs before a verdict.
        rules: One entry per rule and version, most moments first.
        min_uplift: The smallest uplift worth the contacts; a rule credibly below it is retired.
        method: How the intervals are computed.
    """

    from_ms: int | None
    to_ms: int | None
    confidence: float
    min_sample: int
    rules: tuple[RuleEffect, ...]
    min_uplift: float = DEFAULT_MIN_UPLIFT
    method: str = "confidence sequence (normal mixture), valid at every look"


def _rows(client: Any, sql: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    return list(client.query(sql, parameters=dict(params)).result_rows)


_RANGE = "due_ts >= {from_ms:Int64} AND due_ts < {to_ms:Int64}"

_MOMENTS_SQL = f"SELECT rule, rule_version, count() FROM moments FINAL WHERE {_RANGE} GROUP BY rule, rule_version"

_OUTCOMES_SQL = f"""
SELECT
    rule,
    rule_version,
    count(),
    countIf(status = 'sent'),
    countIf(status = 'control'),
    countIf(status = 'suppressed'),
    countIf(status = 'sent' AND success = 1),
    countIf(status = 'control' AND success = 1),
    quantileExactInclusiveIf(0.5)(resolved_ts - due_ts, status = 'sent' AND success = 1)
FROM rule_outcomes
WHERE {_RANGE}
GROUP BY rule, rule_version
"""

# Straight from actions: the suppression reasons need no tag outcome, so no join.
_SUPPRESSED_SQL = f"""
SELECT rule, rule_version, reason, count() FROM actions FINAL
WHERE status = 'suppressed' AND {_RANGE}
GROUP BY rule, rule_version, reason
"""


def rule_report(
    client: Any,
    from_ms: int | None = None,
    to_ms: int | None = None,
    *,
    confidence: float = DEFAULT_CONFIDENCE,
    min_sample: int = DEFAULT_MIN_SAMPLE,
    min_uplift: float = DEFAULT_MIN_UPLIFT,
) -> RuleReport:
    """Compute every rule's effectiveness over moments due in ``[from_ms, to_ms)``.

    Args:
        client: A clickhouse-connect client on a database with the schema of ``infra/clickhouse``.
        from_ms: Inclusive lower bound of the moments' due time (epoch ms; None: unbounded).
        to_ms: Exclusive upper bound (None: unbounded).
        confidence: Confidence level of the uplift intervals.
        min_sample: Moments each arm needs before a verdict.
        min_uplift: The smallest uplift worth the contacts (a fraction in [0, 1)).

    Returns:
        The report; rules with neither moments nor decisions in the range are absent.

    Raises:
        ValueError: for a confidence outside (0, 1), a negative ``min_sample`` or a ``min_uplift`` outside [0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    if min_sample < 0:
        raise ValueError(f"min_sample must not be negative, got {min_sample}")
    if not 0.0 <= min_uplift < 1.0:
        raise ValueError(f"min_uplift must be in [0, 1), got {min_uplift!r}")
    params = {"from_ms": INT64_MIN if from_ms is None else from_ms, "to_ms": INT64_MAX if to_ms is None else to_ms}
    fired = {(str(r), int(v)): int(n) for r, v, n in _rows(client, _MOMENTS_SQL, params)}
    outcomes = {(str(row[0]), int(row[1])): row[2:] for row in _rows(client, _OUTCOMES_SQL, params)}
    reasons: dict[tuple[str, int], dict[str, int]] = {}
    for rule, version, reason, n in _rows(client, _SUPPRESSED_SQL, params):
        reasons.setdefault((str(rule), int(version)), {})[str(reason)] = int(n)

    effects = []
    for rule, version in fired.keys() | outcomes.keys():
        key = (rule, version)
        decided, sent, control, suppressed, s_t, s_c, median = outcomes.get(key, (0, 0, 0, 0, 0, 0, math.nan))
        sent, control, s_t, s_c = int(sent), int(control), int(s_t), int(s_c)
        effect = uplift(sent, s_t, control, s_c, confidence, min_sample)
        v = verdict(sent, control, effect, min_sample, min_uplift)
        more = still_needed(sent, s_t, control, s_c, confidence, min_sample, min_uplift) if v == "continue" else None
        if more is None and v == "continue" and min(sent, control) < min_sample:
            # No rate to plan with (an empty arm, or no uplift yet): at least the minimum sample.
            more = (max(min_sample - sent, 0), max(min_sample - control, 0))
        effects.append(RuleEffect(
            rule=rule,
            rule_version=version,
            moments=fired.get(key, 0),
            decided=int(decided),
            sent=sent,
            control=control,
            suppressed=int(suppressed),
            suppressed_by_reason=dict(sorted(reasons.get(key, {}).items(), key=lambda kv: (-kv[1], kv[0]))),
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
            needed_sent=None if more is None else more[0],
            needed_control=None if more is None else more[1],
        ))
    effects.sort(key=lambda e: (-e.moments, e.rule, e.rule_version))
    return RuleReport(from_ms, to_ms, confidence, min_sample, tuple(effects), min_uplift)


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


def _verdict_text(e: RuleEffect) -> str:
    if e.verdict != "continue":
        return e.verdict
    if e.sent and not e.control:
        return "continue (no hold-out moments: give the rule a holdout to judge it)"
    if e.needed_sent is None or e.needed_control is None:
        return "continue (no sample within a million times today's would decide: the uplift is on the line)"
    return f"continue (~{e.needed_sent} more sent, {e.needed_control} more control)"


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
        f"  percentage points, with its {level} interval, valid however often this report is read (a confidence",
        f"  sequence). keep: credibly above 0. retire: credibly below {_pp(report.min_uplift)} points. continue:",
        f"  not yet known, with the moments still needed per arm. A verdict needs {report.min_sample} sent and "
        f"{report.min_sample} control moments.",
        "",
        f"  {'rule':<26}{'ver':>4}{'moments':>8}{'sent':>7}{'control':>8}{'suppr.':>7}{'succ. sent':>11}"
        f"{'succ. ctl':>10}"
        f"  {'uplift [' + level + ' CI]':<24}{'med. recovery':>14}  verdict",
    ]
    if not report.rules:
        lines.append("  (no moments in this range)")
    for e in report.rules:
        ci = "-"
        if e.uplift is not None and e.ci_low is not None and e.ci_high is not None:
            ci = f"{_pp(e.uplift)} [{_pp(e.ci_low)}, {_pp(e.ci_high)}]"
        lines.append(
            f"  {e.rule:<26}{e.rule_version:>4}{e.moments:>8}{e.sent:>7}{e.control:>8}{e.suppressed:>7}"
            f"{_pct(e.rate_sent):>11}"
            f"{_pct(e.rate_control):>10}  {ci:<24}{_duration(e.median_recovery_ms):>14}  "
            + _verdict_text(e)
        )
    suppressed = [e for e in report.rules if e.suppressed_by_reason]
    if suppressed:
        lines += ["", "Suppressed by reason"]
        for e in suppressed:
            reasons = ", ".join(f"{r or '(none)'} {n}" for r, n in e.suppressed_by_reason.items())
            lines.append(f"  {e.rule + ' v' + str(e.rule_version):<30}{reasons}")
    return "\n".join(lines)


def render_json(report: RuleReport) -> str:
    """Render the report as JSON (rates and uplift as fractions, times as epoch ms).

    Args:
        report: The report.

    Returns:
        A JSON object: ``from_ms``, ``to_ms``, ``confidence``, ``min_sample`` and ``rules`` (a list).
    """
    return orjson.dumps(asdict(report), option=orjson.OPT_INDENT_2).decode()
