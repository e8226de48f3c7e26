"""Query an embedded ClickHouse path from a child process.

chDB allows one data path per process (and one process per path), so tests
that read what a pipeline run wrote do it in a short-lived child process.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import orjson

_CODE = """
import sys, orjson
from connectors.clickhouse.client import open_client
client = open_client(sys.argv[1])
rows = client.query(sys.argv[2]).result_rows
sys.stdout.buffer.write(orjson.dumps([list(r) for r in rows], default=str))
"""


def query(dsn: str, sql: str) -> list[list[Any]]:
    """Return the rows of ``sql`` run against ``dsn`` in a child process."""
    proc = subprocess.run([sys.executable, "-c", _CODE, dsn, sql], capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"query failed: {sql}\n{proc.stderr.decode(errors='replace')[-2000:]}")
    return orjson.loads(proc.stdout)  # type: ignore[no-any-return]
