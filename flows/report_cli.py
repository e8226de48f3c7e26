"""``moments report``: the overview and the rule-effectiveness report, or "no data yet" on an empty database."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flows.config import ConfigError
from state.rules import RulePack
from state.versions import load_versions


def cmd_report(a: argparse.Namespace) -> int:
    """``moments report [overview|rules]``."""
    from flows.report import OVERVIEW_TABLES, text_report

    pack = load_versions(a.rules).latest  # CX_RULES may name a directory of versions: the newest describes it
    if a.view == "rules":
        return _report_rules(a, pack)
    for flag, value in (("--from", a.from_), ("--to", a.to), ("--json", a.json or None),
                        ("--min-sample", a.min_sample), ("--confidence", a.confidence)):
        if value is not None:
            raise ConfigError(flag, "applies to `moments report rules` only")
    if _held_by_worker(a.clickhouse):
        return _via_worker(a, "overview", {"journey": a.journey, "html": "1" if a.html is not None else None})
    if _no_report_data(a, OVERVIEW_TABLES):
        return 0
    print(text_report(a.clickhouse, pack, a.journey))
    if a.html is not None:
        from connectors.clickhouse.client import open_client
        from flows.report_html import html_report

        a.html.write_text(html_report(open_client(a.clickhouse), pack, a.journey), encoding="utf-8")
        print(f"wrote {a.html}")
    return 0


def _report_rules(a: argparse.Namespace, pack: RulePack) -> int:
    """``moments report rules``: sent vs control uplift per rule."""
    from connectors.clickhouse.client import open_client
    from flows.report import RULES_TABLES
    from flows.rule_report import RuleReport, parse_time_ms, render_json, render_text, rule_report

    if a.html is not None or a.journey is not None:
        raise ConfigError("--html/--journey", "apply to `moments report overview` only")
    bounds: dict[str, int | None] = {}
    for flag, value in (("--from", a.from_), ("--to", a.to)):
        try:
            bounds[flag] = None if value is None else parse_time_ms(value)
        except ValueError as e:
            raise ConfigError(flag, str(e)) from None
    if bounds["--from"] is not None and bounds["--to"] is not None and bounds["--from"] >= bounds["--to"]:
        raise ConfigError("--from/--to", f"empty range: {a.from_} is not before {a.to}")
    # getattr: packs loaded by older code (or test doubles) may lack the effect settings.
    min_sample = a.min_sample if a.min_sample is not None else getattr(pack, "effect_min_sample", 200)
    confidence = a.confidence if a.confidence is not None else getattr(pack, "effect_confidence", 0.95)
    min_uplift = a.min_uplift if a.min_uplift is not None else getattr(pack, "effect_min_uplift", 0.0)
    if not 1 <= min_sample <= 1_000_000_000:
        raise ConfigError("--min-sample", f"must be 1..1000000000, got {min_sample}")
    if not 0.5 <= confidence < 1.0:  # as the rule pack's [effectiveness] confidence
        raise ConfigError("--confidence", f"must be a number in [0.5, 1), got {confidence}")
    if not 0.0 <= min_uplift < 1.0:
        raise ConfigError("--min-uplift", f"must be a fraction in [0, 1), e.g. 0.01 for one point, got {min_uplift}")
    if _held_by_worker(a.clickhouse):
        return _via_worker(a, "rules", {"from": bounds["--from"], "to": bounds["--to"], "confidence": confidence,
                                        "min_sample": min_sample, "min_uplift": min_uplift})
    if _no_report_data(a, RULES_TABLES, RuleReport(bounds["--from"], bounds["--to"], confidence, min_sample, (),
                                                         min_uplift)):
        return 0
    client = open_client(a.clickhouse)
    try:
        report = rule_report(client, bounds["--from"], bounds["--to"], confidence=confidence, min_sample=min_sample,
                             min_uplift=min_uplift)
    finally:
        client.close()  # releases the chDB path lock for the next process
    print(render_json(report) if a.json else render_text(report))
    return 0


def _held_by_worker(dsn: str) -> bool:
    """Whether the DSN is an embedded path another process (a running worker) holds: only it may read it."""
    from connectors.clickhouse.client import _path_locked_by_other_process, chdb_path

    path = chdb_path(dsn)
    return path is not None and Path(path).exists() and _path_locked_by_other_process(path)


def _via_worker(a: argparse.Namespace, view: str, params: dict[str, object]) -> int:
    """Ask the worker that holds the embedded path (``--url``) to run the report on it, and print its answer.

    The worker's own rule pack names the journeys and key steps then (``--rules`` is not sent).
    """
    from urllib.parse import urlencode

    from flows.lookup_cli import fetch
    from flows.report import no_data_message

    query = urlencode({k: v for k, v in params.items() if v is not None})
    answer = fetch(a.url, f"/v1/reports/{view}" + (f"?{query}" if query else ""))
    if answer.get("missing"):
        print(no_data_message(a.clickhouse, answer["missing"]))
        return 0
    if view == "rules":
        import orjson

        print(orjson.dumps(answer["json"], option=orjson.OPT_INDENT_2).decode() if a.json else answer["text"])
        return 0
    print(answer["text"])
    if a.html is not None:
        a.html.write_text(answer["html"], encoding="utf-8")
        print(f"wrote {a.html}")
    return 0


def _no_report_data(a: argparse.Namespace, tables: tuple[str, ...], empty: object = None) -> bool:
    """Say so and return True when the database lacks the report's tables (nothing was written there yet).

    With ``--json`` the empty report ``empty`` goes to stdout (still valid JSON) and the line to stderr.
    """
    from connectors.clickhouse.client import chdb_path, open_client
    from flows.report import missing_tables, no_data_message
    from flows.rule_report import RuleReport, render_json

    path = chdb_path(a.clickhouse)
    if path is not None and not Path(path).exists():
        # Opening the engine would create the directories: a report only reads.
        missing = list(tables)
    else:
        client = open_client(a.clickhouse)
        try:
            missing = missing_tables(client, tables)
        finally:
            client.close()  # releases the chDB path lock (the report opens its own client)
    if not missing:
        return False
    if getattr(a, "json", False) and isinstance(empty, RuleReport):
        print(render_json(empty))
        print(no_data_message(a.clickhouse, missing), file=sys.stderr)
    else:
        print(no_data_message(a.clickhouse, missing))
    return True
