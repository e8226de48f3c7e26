"""ClickHouse sink over clickhouse-connect: batched column inserts, schema on start, retries with backoff.

The DSN chooses the server: ``http(s)://…`` for a ClickHouse server,
``chdb:///path`` for the embedded engine (chDB). chDB allows one data path per
process and one process per path, so the sink keeps one client per process
and DSN, shared by the worker threads under a lock.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import orjson

from connectors.retry import retry

log = logging.getLogger("cx.clickhouse")

DEFAULT_DSN = "chdb:///./data/cx.chdb"
NOT_STORED = frozenset({"context"})

# kind -> (table, columns, per-column converters for values that are not stored as given)
_JSON = orjson.dumps
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "moment": ("moments", ("schema", "moment_id", "customer_id", "rule", "kind", "journey", "step", "urgency",
                           "due_ts", "detected_at", "evidence", "attrs", "action")),
    "tag": ("customer_tags", ("schema", "customer_id", "tag", "rule", "journey", "state", "outcome", "moment_id",
                              "opened_ts", "ts", "version")),
    "journey_state": ("journey_states", ("schema", "customer_id", "journey", "attempt_id", "status", "stage",
                                         "last_step", "last_ts", "steps_reached", "fired", "version")),
    "journey_step": ("journey_steps", ("customer_id", "journey", "attempt_id", "step", "step_index", "entry",
                                       "channel", "event_id", "ts")),
    "dead_letter": ("dead_letters", ("schema", "reason", "detail", "raw", "raw_encoding", "source", "partition",
                                     "offset", "received_at")),
    "action": ("actions", ("schema", "moment_id", "customer_id", "rule", "journey", "urgency", "status", "reason",
                           "channel", "control", "due_ts", "ts")),
    "feedback": ("feedback", ("schema", "moment_id", "customer_id", "outcome", "ts")),
}
_AS_JSON = {("moment", "attrs")}
_AS_INT = {("action", "control")}

# ClickHouse error codes worth retrying: timeouts, network, overload, memory, too many parts, readonly replicas.
_TRANSIENT_CODES = frozenset({159, 160, 164, 173, 198, 201, 202, 203, 209, 210, 241, 242, 252, 285, 319, 425, 999,
                              1000})
_UNKNOWN_TABLE = 60
_UNKNOWN_DATABASE = 81


def resolve_dsn(dsn: str, process_id: int | None = None) -> str:
    """Return the DSN with a relative chDB path made absolute (``chdb:///./x`` is relative to the CWD).

    Args:
        dsn: The configured DSN.
        process_id: In a multi-process cluster, each process gets its own chDB path (``…-p<N>``),
            because chDB allows one process per path.

    Returns:
        The DSN to connect with.
    """
    if not dsn.startswith("chdb:"):
        return dsn
    parsed = urlparse(dsn)
    if parsed.netloc and parsed.netloc not in ("", "memory", ":memory:"):
        return dsn
    path = parsed.path
    if path.startswith(("/./", "/../", "/~")):
        path = str(Path(os.path.expanduser(path[1:])).resolve())
    if process_id is not None and path:
        path = f"{path}-p{process_id}"
    query = f"?{parsed.query}" if parsed.query else ""
    return f"chdb://{path}{query}"


def open_client(dsn: str) -> Any:
    """Connect to ClickHouse (server or embedded); the password may come from ``CX_CLICKHOUSE_PASSWORD``.

    Args:
        dsn: ``http(s)://user@host:port/db`` or ``chdb:///path[?database=db]``.

    Returns:
        A clickhouse-connect client; the DSN's database is created if missing.
    """
    import clickhouse_connect

    dsn = resolve_dsn(dsn)
    if dsn.startswith("chdb:"):
        parsed = urlparse(dsn)
        params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
        database = params.pop("database", None)
        if parsed.path:
            Path(parsed.path).parent.mkdir(parents=True, exist_ok=True)
        base = f"chdb://{parsed.netloc}{parsed.path}" + (f"?{urlencode(params)}" if params else "")
        if database:
            boot = clickhouse_connect.get_client(dsn=base)
            boot.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
            return clickhouse_connect.get_client(dsn=base, database=database)
        return clickhouse_connect.get_client(dsn=base)
    kwargs: dict[str, Any] = {}
    password = os.environ.get("CX_CLICKHOUSE_PASSWORD")
    if password:
        kwargs["password"] = password
    return clickhouse_connect.get_client(dsn=dsn, **kwargs)


def error_code(exc: BaseException) -> int | None:
    """Return the ClickHouse error code carried by an exception, if any."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    text = str(exc)
    i = text.find("Code: ")
    if i >= 0:
        digits = ""
        for ch in text[i + 6 : i + 12]:
            if not ch.isdigit():
                break
            digits += ch
        if digits:
            return int(digits)
    return None


def is_transient_clickhouse_error(exc: BaseException) -> bool:
    """Decide by error code and type whether a failed write may succeed if retried.

    Network errors, timeouts, overload and memory limits are transient; a missing
    table is transient too (the sink re-creates its schema); type, syntax and
    schema errors are permanent.
    """
    if isinstance(exc, ConnectionError | TimeoutError | socket.timeout | OSError):
        return True
    code = error_code(exc)
    if code is not None:
        return code in _TRANSIENT_CODES or code in (_UNKNOWN_TABLE, _UNKNOWN_DATABASE)
    name = type(exc).__name__
    return name in ("OperationalError", "StreamFailureError", "StreamCompleteException")


_CLIENTS: dict[str, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _shared_client(dsn: str) -> tuple[Any, threading.Lock]:
    with _CLIENTS_LOCK:
        entry = _CLIENTS.get(dsn)
        if entry is None:
            entry = (open_client(dsn), threading.Lock())
            _CLIENTS[dsn] = entry
        return entry  # type: ignore[no-any-return]


def schema_statements() -> list[str]:
    """The DDL statements of ``infra/clickhouse/*.sql`` in file order."""
    stmts: list[str] = []
    files = sorted((f for f in resources.files("infra.clickhouse").iterdir() if f.name.endswith(".sql")),
                   key=lambda f: f.name)
    for f in files:
        text = "\n".join(line for line in f.read_text().splitlines() if not line.strip().startswith("--"))
        stmts.extend(s.strip() for s in text.split(";") if s.strip())
    return stmts


class ClickHouseSink:
    """Buffer records per table and insert them in column batches.

    Args:
        dsn: ClickHouse DSN.
        batch_rows: A table's buffer is written when it reaches this many rows (and on ``flush``).
        on_retry: Called as (table, attempt, error, delay) before each retry sleep.
        on_write: Called as (table, rows, seconds) after each successful insert.
        max_attempts: None retries transient errors forever (back-pressure); tests may bound it.
        sleep: Injectable sleep for the backoff.
    """

    def __init__(
        self,
        dsn: str,
        *,
        batch_rows: int = 20_000,
        on_retry: Callable[[str, int, BaseException, float], None] | None = None,
        on_write: Callable[[str, int, float], None] | None = None,
        max_attempts: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._dsn = resolve_dsn(dsn)
        self._batch = batch_rows
        self._on_retry = on_retry
        self._on_write = on_write
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        self._ok = True

    def _client(self) -> tuple[Any, threading.Lock]:
        return _shared_client(self._dsn)

    def ensure_schema(self) -> None:
        """Create the tables if missing (idempotent)."""
        client, lock = self._client()
        with lock:
            for stmt in schema_statements():
                client.command(stmt)

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Buffer rows of one record kind; writes the table when its buffer is full.

        Raises:
            ValueError: for a kind that has no table and is not Kafka-only.
        """
        if kind in NOT_STORED or not rows:
            return
        if kind not in TABLES:
            raise ValueError(f"no ClickHouse table for record kind {kind!r}")
        buf = self._buffers.setdefault(kind, [])
        buf.extend(rows)
        if len(buf) >= self._batch:
            self._write(kind)

    def flush(self) -> None:
        """Write every buffered row; blocks with backoff while ClickHouse is unavailable."""
        for kind in list(self._buffers):
            if self._buffers[kind]:
                self._write(kind)

    def _write(self, kind: str) -> None:
        rows = self._buffers[kind]
        table, cols = TABLES[kind]
        data = [[_value(kind, c, r.get(c)) for r in rows] for c in cols]

        def insert() -> None:
            client, lock = self._client()
            t0 = time.perf_counter()
            try:
                with lock:
                    client.insert(table, data, column_names=list(cols), column_oriented=True)
            except Exception as e:
                self._ok = False
                if error_code(e) in (_UNKNOWN_TABLE, _UNKNOWN_DATABASE):
                    log.warning("table %s is missing; re-creating the schema", table)
                    try:
                        self.ensure_schema()
                    except Exception:  # noqa: BLE001 - the retry loop reports the insert error
                        log.exception("re-creating the schema failed")
                raise
            self._ok = True
            if self._on_write is not None:
                self._on_write(table, len(rows), time.perf_counter() - t0)

        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning("insert into %s failed (attempt %d, retrying in %.1fs): %s", table, attempt, delay,
                        type(exc).__name__)
            if self._on_retry is not None:
                self._on_retry(table, attempt, exc, delay)

        retry(insert, is_transient=is_transient_clickhouse_error, on_retry=on_retry, sleep=self._sleep,
              max_attempts=self._max_attempts)
        # Cleared only after a successful insert: a failure keeps the rows for the next attempt.
        self._buffers[kind] = []

    def writable(self) -> bool:
        """Whether the last write succeeded (for /readyz)."""
        return self._ok

    def close(self) -> None:
        """Write what is buffered (the shared client stays open for other workers)."""
        self.flush()


def _value(kind: str, col: str, v: Any) -> Any:
    if (kind, col) in _AS_JSON:
        return _JSON(v or {}).decode()
    if (kind, col) in _AS_INT:
        return int(bool(v))
    return v
