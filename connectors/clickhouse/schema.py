"""The ClickHouse side of the record kinds: the DDL (infra/clickhouse/*.sql), its check, and the insert payload."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

import orjson

from connectors.records import STORED, RecordKind

# Record kind -> its definition (table, columns), for the kinds stored in ClickHouse.
TABLES: Mapping[str, RecordKind] = STORED


class SchemaMismatchError(RuntimeError):
    """A ClickHouse table lacks a column its record kind needs, or has it with another type (permanent)."""


def schema_problems(columns: Iterable[tuple[str, str, str]]) -> list[str]:
    """Compare the tables' columns with the record kinds (``connectors.records``).

    A column the table has beyond the record's is fine (inserts name their columns); a missing one, or one
    of another type, would refuse or silently change every insert.

    Args:
        columns: ``(table, column, type)`` rows, as ``system.columns`` lists them.

    Returns:
        One line per problem, naming the table and the column; empty when every table fits.
    """
    found: dict[str, dict[str, str]] = {}
    for table, name, typ in columns:
        found.setdefault(table, {})[name] = typ
    problems: list[str] = []
    for spec in TABLES.values():
        have = found.get(spec.table)
        if have is None:
            problems.append(f"table {spec.table} is missing (it stores {spec.kind} records)")
            continue
        for name, typ in spec.column_types.items():
            if name not in have:
                problems.append(f"table {spec.table}: column {name} is missing ({spec.kind} records need it "
                                f"as {typ})")
            elif have[name] != typ:
                problems.append(f"table {spec.table}: column {name} is {have[name]}, {spec.kind} records need "
                                f"{typ}")
    return problems


def columns_query() -> str:
    """The query listing ``(table, column, type)`` of the record tables in the client's database."""
    names = ", ".join(f"'{spec.table}'" for spec in TABLES.values())  # our own constant names: no quoting needed
    return f"SELECT table, name, type FROM system.columns WHERE database = currentDatabase() AND table IN ({names})"


def check_tables(client: Any, where: str) -> None:
    """Check the record tables against the record kinds; run at start-up, after the DDL.

    Args:
        client: A clickhouse-connect client on the sink's database.
        where: The database as the message names it (a chDB path or a database name, never a password).

    Raises:
        SchemaMismatchError: naming every missing or mistyped column, table by table.
    """
    problems = schema_problems(client.query(columns_query()).result_rows)
    if problems:
        raise SchemaMismatchError(
            f"ClickHouse schema in {where} does not match the record kinds (connectors/records.py): "
            + "; ".join(problems)
            + ". Add or fix the columns (infra/clickhouse/*.sql shows the expected DDL) or write to a new database."
        )


@cache
def schema_statements() -> tuple[str, ...]:
    """Return the DDL statements of ``infra/clickhouse/*.sql``, files in name order.

    Returns:
        The statements, without comments or trailing semicolons.
    """
    stmts: list[str] = []
    files = sorted(
        (f for f in resources.files("infra.clickhouse").iterdir() if f.name.endswith(".sql")),
        key=lambda f: f.name,
    )
    for f in files:
        text = "\n".join(line for line in f.read_text().splitlines() if not line.strip().startswith("--"))
        stmts.extend(s.strip() for s in text.split(";") if s.strip())
    return tuple(stmts)


# JSONEachRow, strict: a value of the wrong type, a null in a non-Nullable column or an unknown field is
# refused by ClickHouse (a permanent error), as the column-oriented insert refused it, instead of being
# coerced or defaulted. Dicts (``RecordKind.json_fields``) are read into their String column as JSON text.
JSON_INSERT_SETTINGS: Mapping[str, int] = {
    "input_format_skip_unknown_fields": 0,
    "input_format_null_as_default": 0,
    "input_format_json_read_numbers_as_strings": 0,
    "input_format_json_read_bools_as_strings": 0,
    "input_format_json_read_arrays_as_strings": 0,
    "input_format_json_read_bools_as_numbers": 1,
    "input_format_json_read_objects_as_strings": 1,
}


# Compact rows (``RecordKind.compact``): tuples whose None fields (an event without a journey) take the default.
COMPACT_INSERT_SETTINGS: Mapping[str, int] = {**JSON_INSERT_SETTINGS, "input_format_null_as_default": 1}


def payload(kind: str, spec: RecordKind, rows: list[Any]) -> bytes:
    """Serialize rows as one JSONEachRow (array) payload.

    One ``orjson.dumps`` call per batch: the least time holding the GIL of the formats measured (about a
    third of building columns for clickhouse-connect's Native insert), and parsing it is ClickHouse's work,
    which chDB does with the GIL released.

    Raises:
        ValueError: naming a field a record lacks (ClickHouse would fill in a default) or has in excess.
    """
    width = len(spec.columns)
    if spec.compact:
        # The rows are (named) tuples in column order: one dump, then the JSON array's brackets dropped, as
        # JSONCompactEachRow takes the rows one after another.
        if any(n != width for n in set(map(len, rows))):
            raise ValueError(f"{kind} row with other than {width} fields (table {spec.table})")
        return orjson.dumps(rows, default=tuple)[1:-1]
    # map(len) runs in C: the per-row check costs next to nothing next to the dump.
    if any(n != width for n in set(map(len, rows))):
        for row in rows:
            missing = [c for c in spec.columns if c not in row]
            if missing:
                raise ValueError(f"{kind} record without field {missing[0]!r} (table {spec.table})")
            if len(row) != width:
                extra = sorted(set(row) - set(spec.columns))
                raise ValueError(f"{kind} record with field {extra[0]!r} that table {spec.table} lacks")
    return orjson.dumps(rows)

