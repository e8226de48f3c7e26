"""docs/ stays in step with the code: record fields, ClickHouse columns, input schema, rule-pack keys, settings,
metrics, alerts, links."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from connectors.records import DEFAULT_OUTPUT_TOPICS, JSONL_DEFAULT, JSONL_FILES, PUBLISHED, STORED
from connectors.records import KINDS as RECORDS
from flows import metrics
from flows.cli import build_parser
from state.batches import RawBatch, Tick
from state.events import Event, InvalidReason
from state.feedback import Feedback
from state.outputs import Outputs
from state.rules import KINDS, RulePackError, load_rule_pack, rule_pack_from_dict
from state.shard import Shard, process
from tests.helpers import MIN, PACK, T0, ev, raws

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
OUTPUTS_MD = DOCS / "moments-and-outputs.md"
EVENTS_MD = DOCS / "events.md"
RULES_MD = DOCS / "rule-packs.md"
OPERATIONS_MD = DOCS / "operations.md"
ALERTS_YML = ROOT / "infra" / "prometheus" / "alerts.yml"
SCHEMA_SQL = ROOT / "infra" / "clickhouse" / "001_schema.sql"
SCHEMA_FILES = sorted((ROOT / "infra" / "clickhouse").glob("*.sql"))
NOT_STORED = "—"

_MARKED_TABLE = re.compile(r"<!-- (record|keys|reasons|metrics|alerts|settings): ([\w.]+) -->\n((?:\|.*\|\n?)+)")
_CREATE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+)\s*\((.*?)\)\s*ENGINE", re.S)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _rows(table: str) -> list[list[str]]:
    """Body rows of a markdown table (header and separator dropped), cells stripped of spaces and backticks."""
    lines = [ln for ln in table.strip().splitlines() if ln.startswith("|")][2:]
    return [[c.strip().strip("`") for c in ln.strip().strip("|").split("|")] for ln in lines]


def _marked(path: Path, what: str) -> dict[str, list[list[str]]]:
    found: dict[str, list[list[str]]] = {}
    for m in _MARKED_TABLE.finditer(path.read_text()):
        if m.group(1) == what:
            assert m.group(2) not in found, f"{path.name}: two tables marked {what}: {m.group(2)}"
            found[m.group(2)] = _rows(m.group(3))
    assert found, f"{path.name}: no tables marked <!-- {what}: … -->"
    return found


def _diff(documented: list[str], actual: list[str]) -> str:
    missing = [f for f in actual if f not in documented]
    extra = [f for f in documented if f not in actual]
    return f"not documented: {missing}; documented but not in the code: {extra}; code order: {actual}"


# -- records the code really emits ------------------------------------------------------------------
@pytest.fixture(scope="module")
def emitted() -> dict[str, list[dict[str, Any]]]:
    """Run a shard of the default pack over a journey that produces every record kind."""
    sh = Shard(PACK, feedback_sources=frozenset({"kafka:cx.feedback"}), keep_events=True)
    events = [
        ev("v1", 0, "view", step="product"),
        ev("s1", MIN, "submit", step="checkout", entry="banner"),
        ev("f1", 2 * MIN, "fail", step="payment"),
        ev("k1", 3 * MIN, "contact", channel="call_center", journey=None),
        ev("v1", 4 * MIN, "view", step="product"),  # a duplicate id
        ev("x", 60 * MIN, journey=None, customer="c2"),  # time passes
        ev("l1", 10 * MIN, journey=None, customer="c3"),  # behind the watermark: late
    ]
    lines = [*raws(events), b"not json"]
    first = process(sh, [RawBatch("file:t.jsonl", 0, lines, list(range(len(lines))))])
    failed = next(m for m in first.moments if m["kind"] == "failed")
    fb = orjson.dumps({"moment_id": failed["moment_id"], "customer_id": "c1", "outcome": "converted",
                       "ts": T0 + 5 * MIN})
    second = process(sh, [RawBatch("kafka:cx.feedback", 0, [fb], [0]), Tick(0, final=True)])
    records: dict[str, list[dict[str, Any]]] = {}
    for out in (first, second):
        assert isinstance(out, Outputs)
        for kind, rows in out.records():
            if RECORDS[kind].compact:  # tuples in field order: named here by the definition, position by position
                rows = [dict(zip(RECORDS[kind].names, r, strict=True)) for r in rows]
            records.setdefault(kind, []).extend(rows)
    return records


def test_the_fixture_journey_emits_every_record_kind(emitted: dict[str, list[dict[str, Any]]]) -> None:
    assert set(emitted) == set(RECORDS)
    for kind, rows in emitted.items():
        assert len({tuple(r) for r in rows}) == 1, f"{kind} records differ in their fields: {rows}"


def test_every_record_kind_emits_the_fields_and_schema_version_of_its_definition(
        emitted: dict[str, list[dict[str, Any]]]) -> None:
    for kind, rows in emitted.items():
        defined = RECORDS[kind]
        actual = list(rows[0])
        assert actual == list(defined.names), f"connectors.records, {kind}: {_diff(list(defined.names), actual)}"
        assert rows[0].get("schema") == defined.schema_version, kind


def test_every_record_table_lists_the_fields_and_columns_of_its_definition() -> None:
    documented = _marked(OUTPUTS_MD, "record")
    assert set(documented) == set(RECORDS), "record tables in moments-and-outputs.md vs connectors.records.KINDS"
    for kind, rows in documented.items():
        doc = [(r[0], None if r[2] == NOT_STORED else r[2]) for r in rows]
        actual = list(RECORDS[kind].fields)
        assert doc == actual, f"moments-and-outputs.md, {kind} record vs connectors.records: {actual}"


def _ddl() -> dict[str, list[tuple[str, str]]]:
    tables: dict[str, list[tuple[str, str]]] = {}
    for path in SCHEMA_FILES:
        for name, body in _CREATE.findall(path.read_text()):
            cols = [ln.strip().rstrip(",").split(None, 1) for ln in body.splitlines() if ln.strip()]
            # A column with a DEFAULT is filled in by ClickHouse (e.g. when a row was stored), not by records.
            tables[name] = [(c[0], c[1]) for c in cols if " DEFAULT " not in c[1]]
    return tables


def test_the_schema_creates_every_table_with_the_columns_of_its_record_kind() -> None:
    ddl = _ddl()
    for kind, spec in RECORDS.items():
        if not spec.table:
            assert spec.column_types == {}, kind
            continue
        assert ddl[spec.table] == list(spec.column_types.items()), f"{kind} vs infra/clickhouse table {spec.table}"


def test_the_table_of_kinds_names_each_kinds_file_table_and_topic() -> None:
    text = OUTPUTS_MD.read_text()
    table = text[text.index("| kind |"):]
    rows = {r[0]: r for r in _rows(table.split("\n\n")[0])}
    assert set(rows) == set(RECORDS)
    for kind, (_, _builder, jsonl, ch, topic) in rows.items():
        assert jsonl == (JSONL_FILES[kind] if kind in JSONL_DEFAULT else NOT_STORED), kind
        assert ch.split("`")[0] == (STORED[kind].table if kind in STORED else NOT_STORED), kind
        if kind in PUBLISHED:
            assert topic.startswith(DEFAULT_OUTPUT_TOPICS[kind]), kind
        else:
            assert topic.startswith(NOT_STORED), kind


# -- inputs -----------------------------------------------------------------------------------------
def _input_fields(fields: tuple[str, ...]) -> list[str]:
    # Records hold times as `*_ms`; the JSON input field is `ts`. `origin` is where an event was read, not a field.
    return ["ts" if f == "ts_ms" else f for f in fields if f != "origin"]


def test_the_event_table_lists_the_fields_of_event() -> None:
    documented = [r[0] for r in _marked(EVENTS_MD, "record")["event"]]
    assert documented == _input_fields(Event._fields), _diff(documented, _input_fields(Event._fields))


def test_the_feedback_input_table_lists_the_fields_of_feedback() -> None:
    documented = [r[0] for r in _marked(EVENTS_MD, "record")["feedback_input"]]
    assert documented == _input_fields(Feedback._fields)


def test_every_dead_letter_reason_is_documented() -> None:
    documented = [r[0] for r in _marked(EVENTS_MD, "reasons")["dead_letter"]]
    actual = [r.value for r in InvalidReason]
    assert sorted(documented) == sorted(actual), _diff(documented, actual)


# -- rule packs -------------------------------------------------------------------------------------
_JOURNEY = {"id": "j", "steps": ["a", "b"], "key_steps": ["b"]}


def _allowed(data: dict[str, Any]) -> set[str]:
    """The keys the loader accepts where ``data`` has the unknown key ``zz_unknown`` (from its error)."""
    with pytest.raises(RulePackError, match="unknown field") as err:
        rule_pack_from_dict(data)
    allowed = re.search(r"\(allowed: ([^)]*)\)", err.value.problem)
    assert allowed is not None, err.value
    return set(allowed.group(1).split(", "))


@pytest.mark.parametrize(("section", "data"), [
    ("top", {"zz_unknown": 1}),
    ("pack", {"pack": {"zz_unknown": 1}}),
    ("journey", {"journey": [{**_JOURNEY, "zz_unknown": 1}]}),
    ("policy", {"journey": [_JOURNEY], "policy": {"zz_unknown": 1}}),
    ("effectiveness", {"journey": [_JOURNEY], "effectiveness": {"zz_unknown": 1}}),
])
def test_rule_pack_reference_lists_every_key_the_loader_accepts(section: str, data: dict[str, Any]) -> None:
    documented = {r[0] for r in _marked(RULES_MD, "keys")[section]}
    actual = _allowed(data)
    assert documented == actual, f"rule-packs.md, {section}: {_diff(sorted(documented), sorted(actual))}"


@pytest.mark.parametrize("kind", KINDS)
def test_rule_pack_reference_lists_every_key_of_each_moment_kind(kind: str) -> None:
    tables = _marked(RULES_MD, "keys")
    assert {k for k in tables if k.startswith("moment.")} == {f"moment.{k}" for k in KINDS}
    documented = {r[0] for r in tables["moment"]} | {r[0] for r in tables[f"moment.{kind}"]}
    actual = _allowed({"journey": [_JOURNEY], "moment": [{"kind": kind, "zz_unknown": 1}]})
    assert documented == actual, f"rule-packs.md, moment kind {kind}: {_diff(sorted(documented), sorted(actual))}"


def test_the_worked_example_pack_loads_and_does_what_the_text_says(tmp_path: Path) -> None:
    toml = re.search(r"## A worked example.*?```toml\n(.*?)```", RULES_MD.read_text(), re.S)
    assert toml is not None
    path = tmp_path / "telecom.toml"
    path.write_text(toml.group(1))
    pack = load_rule_pack(path)
    assert [r.name for r in pack.rules] == ["roaming.abandoned", "roaming.stuck"]
    events = [
        ev("c", 0, "submit", journey="roaming", step="confirm"),
        ev("f1", 20 * MIN, "fail", journey="roaming", step="select"),
        ev("f2", 29 * MIN, "fail", journey="roaming", step="select"),
        ev("x", 60 * MIN, journey=None, customer="c2"),
    ]
    out = process(Shard(pack), [RawBatch("t", 0, raws(events), list(range(len(events)))), Tick(0, final=True)])
    moments = {m["rule"]: m for m in out.moments}
    assert set(moments) == {"roaming.abandoned", "roaming.stuck"}
    assert moments["roaming.abandoned"]["due_ts"] == T0 + 5 * MIN
    assert moments["roaming.stuck"]["evidence"] == ["f1", "f2"]


# -- operations: settings, metrics, alerts ----------------------------------------------------------
def _exported_metrics() -> dict[str, str]:
    """Every cx_* metric registered in flows/metrics.py, by the name Prometheus stores (counters with _total)."""
    found: dict[str, str] = {}
    for family in metrics.REGISTRY.collect():
        if family.name.startswith("cx_"):
            found[f"{family.name}_total" if family.type == "counter" else family.name] = family.type
    return found


def _alerts() -> list[str]:
    rules = yaml.safe_load(ALERTS_YML.read_text())["groups"]
    return [r["alert"] for g in rules for r in g["rules"] if "alert" in r]


def test_operations_lists_every_metric_with_its_type() -> None:
    documented = {r[0]: r[1] for r in _marked(OPERATIONS_MD, "metrics")["cx"]}
    actual = _exported_metrics()
    assert sorted(documented) == sorted(actual), f"operations.md metrics: {_diff(sorted(documented), sorted(actual))}"
    wrong = {n: (documented[n], t) for n, t in actual.items() if documented[n] != t}
    assert not wrong, f"operations.md metrics with the wrong type (documented, real): {wrong}"


def test_operations_lists_every_alert_with_what_to_do() -> None:
    rows = _marked(OPERATIONS_MD, "alerts")["cx"]
    documented = [r[0] for r in rows]
    actual = _alerts()
    assert sorted(documented) == sorted(actual), f"operations.md alerts: {_diff(sorted(documented), sorted(actual))}"
    assert all(r[1] and r[2] for r in rows), "every alert row says when it fires and what to do"


def test_operations_lists_every_option_of_moments_run() -> None:
    parser = build_parser()
    run = parser._subparsers._group_actions[0].choices["run"]  # type: ignore[union-attr]  # noqa: SLF001
    options = {s for act in [*run._actions, *parser._actions] for s in act.option_strings}  # noqa: SLF001
    options -= {"-h", "--help"}
    cells = " ".join(r[0] for r in _marked(OPERATIONS_MD, "settings")["run"])
    documented = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", cells))
    assert documented == options, f"operations.md settings: {_diff(sorted(documented), sorted(options))}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_names_a_metric_or_alert_that_does_not_exist(page: Path) -> None:
    text = page.read_text()
    exported = _exported_metrics()
    series = set(exported) | {f"{n}{s}" for n, t in exported.items() if t == "histogram"
                              for s in ("_bucket", "_sum", "_count")}
    unknown = sorted(set(re.findall(r"\bcx_[a-z0-9_]+", text)) - series)
    assert not unknown, f"{page.name} names metrics flows/metrics.py does not register: {unknown}"
    alerts = set(_alerts())
    unknown = sorted(set(re.findall(r"\bCx[A-Z][A-Za-z0-9]+", text)) - alerts)
    assert not unknown, f"{page.name} names alerts {ALERTS_YML.name} does not define: {unknown}"


# -- links ------------------------------------------------------------------------------------------
def _slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_inside_the_repository_and_resolve(page: Path) -> None:
    for target in _LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        assert dest.is_relative_to(ROOT), f"{page.name} links outside the repository: {target}"
        assert dest.exists(), f"{page.name}: broken link {target}"
        if anchor:
            headings = {_slug(h) for h in re.findall(r"^#+ (.*)$", dest.read_text(), re.M)}
            assert anchor in headings, f"{page.name}: no heading #{anchor} in {dest.name}"


def test_the_readme_links_nothing_outside_the_repository() -> None:
    outside = [t for t in _LINK.findall((ROOT / "README.md").read_text()) if "://" in t or t.startswith("//")]
    assert not outside, f"README.md links outside the repository: {outside}"


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted(DOCS.glob("*.md"))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_refers_to_the_design_file_outside_the_repository(page: Path) -> None:
    assert "DESIGN.md" not in page.read_text(), f"{page.name} mentions DESIGN.md, which is not in the repository"


def test_the_readme_links_every_page_of_the_docs() -> None:
    readme = (ROOT / "README.md").read_text()
    index = (DOCS / "README.md").read_text()
    assert "docs/README.md" in readme
    for page in DOCS.glob("*.md"):
        if page.name != "README.md":
            assert f"({page.name})" in index, f"docs/README.md does not link {page.name}"
