"""``moments report --html``: one self-contained page (inline SVG charts) for analysts without Grafana."""

from __future__ import annotations

import html
import time
from typing import Any

from flows.report import funnel, moments_by_rule
from state.rules import RulePack


def _bars(title: str, rows: list[tuple[str, float]], *, unit: str = "", width: int = 640, css: str = "bar") -> str:
    """A horizontal bar chart as inline SVG; each bar carries its value as text and a data attribute."""
    if not rows:
        return (f'<section class="chart" data-chart="{html.escape(title)}"><h3>{html.escape(title)}</h3>'
                "<p>no data</p></section>")
    top = max(v for _l, v in rows) or 1.0
    h = 22
    parts = [f'<svg role="img" aria-label="{html.escape(title)}" width="{width}" height="{h * len(rows) + 4}">']
    for i, (label, value) in enumerate(rows):
        w = int((width - 260) * value / top)
        y = i * h + 2
        parts.append(
            f'<g class="{css}" data-label="{html.escape(label)}" data-value="{value:g}">'
            f'<text x="0" y="{y + 15}">{html.escape(label)}</text>'
            f'<rect x="180" y="{y}" width="{max(w, 1)}" height="{h - 6}"></rect>'
            f'<text x="{186 + w}" y="{y + 15}">{value:,.4g}{unit}</text></g>'
        )
    parts.append("</svg>")
    return (f'<section class="chart" data-chart="{html.escape(title)}"><h3>{html.escape(title)}</h3>'
            f'{"".join(parts)}</section>')


def _q(client: Any, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    return list(client.query(sql, parameters=params or {}).result_rows)


def html_report(client: Any, pack: RulePack, journey: str | None = None) -> str:
    """Render the report page from ClickHouse.

    Args:
        client: A clickhouse-connect client.
        pack: The rule pack (journeys and key steps).
        journey: Only this journey (default: all).

    Returns:
        The HTML document.
    """
    sections = [_bars("Moments by rule", [(r, float(n)) for r, _u, n in moments_by_rule(client)])]
    for jd in pack.journeys.values():
        if journey is not None and jd.id != journey:
            continue
        rows = funnel(client, jd.id, jd.steps)
        sections.append(_bars(f"{jd.id}: attempts reaching each step", [(s, float(n)) for s, n, _a in rows]))
        drops = []
        for i, (step, n, _a) in enumerate(rows[:-1]):
            if step in jd.key_steps and n:
                drops.append((step, 100.0 * (n - rows[i + 1][1]) / n))
        sections.append(_bars(f"{jd.id}: drop-off at key steps", drops, unit="%"))
        entry_rows = _q(
            client,
            "SELECT if(entry = '', '(none)', entry) AS e, count() FROM journey_steps FINAL "
            "WHERE journey = {j:String} AND step IN {ks:Array(String)} GROUP BY e ORDER BY count() DESC LIMIT 12",
            {"j": jd.id, "ks": sorted(jd.key_steps)},
        )
        aband = dict(_q(
            client,
            "SELECT if(s.entry = '', '(none)', s.entry) AS e, count() FROM moments AS m FINAL "
            "INNER JOIN (SELECT customer_id, event_id, entry FROM journey_steps FINAL WHERE journey = {j:String}) AS s "
            "ON s.customer_id = m.customer_id AND has(m.evidence, s.event_id) "
            "WHERE m.journey = {j:String} AND m.kind = 'abandoned' GROUP BY e",
            {"j": jd.id},
        ))
        sections.append(_bars(
            f"{jd.id}: abandonments per 100 key-step arrivals, by entry point",
            [(str(e), 100.0 * aband.get(e, 0) / n) for e, n in entry_rows if n], unit="",
        ))
    per_hour = _q(client, "SELECT toStartOfHour(fromUnixTimestamp64Milli(due_ts)) AS h, count() FROM moments FINAL "
                          "GROUP BY h ORDER BY h")
    sections.append(_bars("Moments per hour (due time, UTC)",
                          [(h.strftime("%Y-%m-%d %H:00"), float(n)) for h, n in per_hour]))
    generated = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cx-moments report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
h1 {{ font-size: 1.4rem; }} h3 {{ font-size: 1rem; margin: 1.5rem 0 .3rem; }}
svg text {{ font-size: 12px; fill: #222; }} .bar rect {{ fill: #3b7dd8; }}
</style></head><body>
<h1>cx-moments report</h1><p>Generated {generated} from ClickHouse. Rule pack: {html.escape(pack.name)}.</p>
{"".join(sections)}
</body></html>
"""
