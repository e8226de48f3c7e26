"""The ClickHouse side of the record kinds: the DDL (infra/clickhouse/*.sql) and the insert payload."""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any

import orjson

from connectors.records import STORED, RecordKind

# Record kind -> its definition (table, columns), for the kinds stored in ClickHouse.
TABLES: Mapping[str, RecordKind] = STORED


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


def payload(kind: str, spec: RecordKind, rows: list[dict[str, Any]]) -> bytes:
    """Serialize rows as one JSONEachRow (array) payload.

    One ``orjson.dumps`` call per batch: the least time holding the GIL of the formats measured (about a
    third of building columns for clickhouse-connect's Native insert), and parsing it is ClickHouse's work,
    which chDB does with the GIL released.

    Raises:
        ValueError: naming a field a record lacks (ClickHouse would fill in a default) or has in excess.
    """
    width = len(spec.columns)
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

