"""ClickHouse sink over clickhouse-connect: batched column inserts, schema on start, retries with backoff.

The DSN chooses the server: ``http(s)://…`` for a ClickHouse server,
``chdb:///path`` for the embedded engine (chDB). What chDB 4.4 allows, as
measured (tests/integration/test_clickhouse_sink.py pins it):

- One engine per process. Clients on the same path share it (each sees the
  other's writes); a client on another path fails while any client is open,
  and succeeds once they are all closed.
- One process per path. The engine holds a lock on ``<path>/status``; a second
  process cannot open the path until the first has closed all its clients or
  exited.

So the sink keeps one client per (process, DSN), shared by Bytewax's worker
threads under a lock and closed when the last sink using it closes.
Column-oriented inserts are the fastest path measured for dict records
(2-3x row-oriented inserts for moments, ahead of JSONEachRow and Arrow).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse

import orjson
from clickhouse_connect.driver.binding import quote_identifier
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from connectors.records import KINDS, STORED, RecordKind
from connectors.retry import retry

log = logging.getLogger("cx.clickhouse")

DEFAULT_DSN = "chdb:///./data/cx.chdb"
PASSWORD_ENV = "CX_CLICKHOUSE_PASSWORD"
# Record kind -> its definition (table, columns), for the kinds stored in ClickHouse.
TABLES: Mapping[str, RecordKind] = STORED

UNKNOWN_TABLE = 60
UNKNOWN_DATABASE = 81
# Server error codes after which the same insert may succeed later: overload, memory, timeouts,
# network, replication/keeper trouble, a full disk. Everything else with a code (syntax, types,
# unknown columns, access) is permanent. A missing table is permanent here too: the sink
# handles it by re-creating its schema, other callers should see it.
TRANSIENT_CODES: frozenset[int] = frozenset({
    3,     # UNEXPECTED_END_OF_FILE
    32,    # ATTEMPT_TO_READ_AFTER_EOF
    159,   # TIMEOUT_EXCEEDED
    160,   # TOO_SLOW
    164,   # READONLY (a replica that lost its keeper session)
    173,   # CANNOT_ALLOCATE_MEMORY
    198,   # DNS_ERROR
    201,   # QUOTA_EXCEEDED
    202,   # TOO_MANY_SIMULTANEOUS_QUERIES
    203,   # NO_FREE_CONNECTION
    209,   # SOCKET_TIMEOUT
    210,   # NETWORK_ERROR
    225,   # NO_ZOOKEEPER
    236,   # ABORTED
    241,   # MEMORY_LIMIT_EXCEEDED
    242,   # TABLE_IS_READ_ONLY
    243,   # NOT_ENOUGH_SPACE
    252,   # TOO_MANY_PARTS
    285,   # TOO_FEW_LIVE_REPLICAS
    319,   # UNKNOWN_STATUS_OF_INSERT
    373,   # SESSION_IS_LOCKED
    394,   # QUERY_WAS_CANCELLED
    425,   # SYSTEM_ERROR
    439,   # CANNOT_SCHEDULE_TASK
    473,   # DEADLOCK_AVOIDED
    999,   # KEEPER_EXCEPTION
    1000,  # POCO_EXCEPTION
})
# HTTP statuses without a ClickHouse code (proxies, load balancers) that are worth retrying.
_TRANSIENT_HTTP = frozenset({408, 429, 500, 502, 503, 504})


class ChdbPathInUseError(RuntimeError):
    """Another process holds the chDB data path (chDB allows one process per path)."""


# -- DSNs and clients ------------------------------------------------------------------------


def resolve_dsn(dsn: str, process_id: int | None = None) -> str:
    """Return the DSN to connect with: a chDB path made absolute and canonical.

    ``chdb:///./data/x`` (or ``/../``, ``/~/``) is relative to the CWD; clickhouse-connect
    would otherwise read it as the absolute ``/data/x``.

    Args:
        dsn: The configured DSN.
        process_id: In a multi-process cluster each process needs its own chDB path
            (``<path>-p<N>``), because chDB allows one process per path. Ignored for servers.

    Returns:
        The DSN, unchanged unless it names a chDB path.

    Raises:
        ValueError: for a ``chdb://host/...`` form other than ``chdb://memory``.
    """
    if not dsn.startswith("chdb:"):
        return dsn
    parsed = urlparse(dsn)
    if parsed.netloc:
        if parsed.netloc not in ("memory", ":memory:"):
            raise ValueError(
                f"chDB DSN {dsn!r}: use chdb:///absolute/path, chdb:///./relative/path or chdb://memory"
            )
        return dsn
    path = parsed.path
    if not path:
        return dsn
    if path.startswith(("/./", "/../", "/~")):
        path = path[1:]
    # chDB compares engine paths literally: one spelling per directory keeps one cached client per path.
    path = os.path.realpath(os.path.expanduser(path))
    if process_id is not None:
        path = f"{path}-p{process_id}"
    # Not urlunparse: with an empty host it writes "chdb:/path", which clickhouse-connect misreads.
    return f"chdb://{path}" + (f"?{parsed.query}" if parsed.query else "")


def chdb_path(dsn: str) -> str | None:
    """Return the data directory of a ``chdb:///path`` DSN (None for servers and in-memory chDB).

    Args:
        dsn: A DSN.

    Returns:
        The absolute path, or None.
    """
    if not dsn.startswith("chdb:"):
        return None
    parsed = urlparse(resolve_dsn(dsn))
    if parsed.netloc or not parsed.path:
        return None
    return parsed.path


def dsn_database(dsn: str) -> str | None:
    """Return the database a DSN selects (``?database=`` or the server/``memory`` path), if any.

    Args:
        dsn: A DSN.

    Returns:
        The database name, or None for the default database.
    """
    parsed = urlparse(dsn)
    query = dict(parse_qsl(parsed.query))
    if query.get("database"):
        return query["database"]
    if dsn.startswith("chdb:") and not parsed.netloc:
        return None  # chdb:///path: the whole path is the data directory
    name = parsed.path.lstrip("/").split("/")[0]
    return name or None


def _without_database(dsn: str) -> str:
    parsed = urlparse(dsn)
    query = urlencode([(k, v) for k, v in parse_qsl(parsed.query) if k != "database"])
    path = parsed.path if dsn.startswith("chdb:") and not parsed.netloc else ""
    return f"{parsed.scheme}://{parsed.netloc}{path}" + (f"?{query}" if query else "")


def _connect_kwargs(dsn: str) -> dict[str, Any]:
    if dsn.startswith("chdb:"):
        return {}
    password = os.environ.get(PASSWORD_ENV)
    # The environment wins over a password in the DSN, so the DSN can be logged and shared redacted.
    return {"password": password} if password else {}


def _create_database(dsn: str, database: str) -> None:
    import clickhouse_connect

    boot = clickhouse_connect.get_client(dsn=_without_database(dsn), **_connect_kwargs(dsn))
    try:
        boot.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
    finally:
        boot.close()


def _path_locked_by_other_process(path: str) -> bool:
    try:
        import fcntl
    except ImportError:  # not POSIX: no way to tell
        return False
    status = Path(path) / "status"
    if not status.exists():
        return False
    with status.open("rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def open_client(dsn: str) -> Any:
    """Connect to ClickHouse (server or embedded chDB), creating the DSN's database if missing.

    The password may come from ``CX_CLICKHOUSE_PASSWORD`` (it wins over one in the DSN);
    it is never logged. Prefer one client per process and DSN (``ClickHouseSink`` caches it).

    Args:
        dsn: ``http(s)://user@host:port/db``, ``chdb:///path[?database=db]`` or ``chdb://memory``.

    Returns:
        A clickhouse-connect client.

    Raises:
        ChdbPathInUseError: another process holds the chDB path.
    """
    import clickhouse_connect

    dsn = resolve_dsn(dsn)
    path = chdb_path(dsn)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    kwargs = _connect_kwargs(dsn)
    try:
        return clickhouse_connect.get_client(dsn=dsn, **kwargs)
    except Exception as e:
        database = dsn_database(dsn)
        if error_code(e) == UNKNOWN_DATABASE and database:
            _create_database(dsn, database)
            return clickhouse_connect.get_client(dsn=dsn, **kwargs)
        if path is not None and _path_locked_by_other_process(path):
            raise ChdbPathInUseError(
                f"chDB path {path} is in use by another process (chDB allows one process per path): "
                "stop that process or give this one its own path"
            ) from e
        raise


@dataclass(eq=False)
class _Shared:
    client: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


_SHARED: dict[str, _Shared] = {}
_SHARED_LOCK = threading.Lock()


def _forget_clients_after_fork() -> None:
    # A forked child must not use the parent's clients (a chDB engine or HTTP pool belongs to one
    # process): it starts with an empty cache and opens its own.
    global _SHARED_LOCK
    _SHARED.clear()
    _SHARED_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_clients_after_fork)


def _acquire(dsn: str) -> _Shared:
    with _SHARED_LOCK:
        shared = _SHARED.get(dsn)
        if shared is None:
            shared = _SHARED[dsn] = _Shared(open_client(dsn))
        shared.users += 1
        return shared


def shared_clients() -> dict[str, int]:
    """Return the clients this process keeps open for sinks: resolved DSN -> number of sinks using it.

    Returns:
        A snapshot of the client cache (diagnostics and tests; DSNs may hold passwords).
    """
    with _SHARED_LOCK:
        return {dsn: shared.users for dsn, shared in _SHARED.items()}


def _release(dsn: str, shared: _Shared) -> None:
    with _SHARED_LOCK:
        shared.users -= 1
        if shared.users > 0:
            return
        if _SHARED.get(dsn) is shared:
            del _SHARED[dsn]
    # Closing the last chDB client releases the engine and its path lock (another process may open it).
    with shared.lock:
        shared.client.close()


# -- errors ----------------------------------------------------------------------------------


def error_code(exc: BaseException) -> int | None:
    """Return the ClickHouse error code an exception carries, looking through its causes.

    Args:
        exc: Any exception.

    Returns:
        The numeric code (``exc.code`` or ``Code: N`` in the message), or None.
    """
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 5:
        code = getattr(e, "code", None)
        if isinstance(code, int) and not isinstance(code, bool):
            return code
        text = str(e)
        i = text.find("Code: ")
        if i >= 0:
            digits = text[i + 6 : i + 12].split(".")[0].strip()
            if digits.isdigit():
                return int(digits)
        e = e.__cause__
        seen += 1
    return None


def _http_status(exc: BaseException) -> int | None:
    text = str(exc)
    marker = "HTTP status "
    i = text.find(marker)
    digits = text[i + len(marker) : i + len(marker) + 3] if i >= 0 else ""
    return int(digits) if digits.isdigit() else None


def is_transient_clickhouse_error(exc: BaseException) -> bool:
    """Decide whether a failed ClickHouse call may succeed if repeated later.

    The server's error code decides when there is one (``TRANSIENT_CODES``:
    overload, memory, timeouts, network, a full disk…). Without a code,
    connection failures, timeouts and retryable HTTP statuses are transient;
    client-side data errors (wrong types, None in a non-Nullable column),
    unknown columns and the chDB path being in use are permanent.

    Args:
        exc: The error.

    Returns:
        True to retry with backoff, False to raise.
    """
    if isinstance(exc, ChdbPathInUseError):
        return False
    code = error_code(exc)
    if code is not None:
        return code in TRANSIENT_CODES
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, OperationalError):
        # clickhouse-connect's wrapper for network failures and exhausted 429/503/504 retries.
        return True
    if isinstance(exc, DatabaseError):
        status = _http_status(exc)
        return status in _TRANSIENT_HTTP
    return False


def _describe(exc: BaseException) -> str:
    # Type and code only: server messages can quote row values (customer ids).
    code = error_code(exc)
    return type(exc).__name__ if code is None else f"{type(exc).__name__} code {code}"


# -- schema ----------------------------------------------------------------------------------


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


def _payload(kind: str, spec: RecordKind, rows: list[dict[str, Any]]) -> bytes:
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


# -- the sink --------------------------------------------------------------------------------

Batch = tuple[str, list[dict[str, Any]]]


class _InsertThread:
    """Insert handed-over batches on one thread, in the order they were handed over.

    Bounded: ``submit`` blocks while ``max_rows`` rows are pending, and every caller blocks while the current
    batch is being retried (``check``), so a slow or unavailable ClickHouse still holds the dataflow back.
    A failed batch is never dropped: it stays at the head of the queue, with everything behind it, and the
    error is raised on the caller's thread by ``check``, ``submit`` and ``drain`` until ``resume`` retries it.

    Args:
        write: Inserts one batch (with its own retries); raises when it gives up.
        max_rows: Rows that may wait in the queue (a larger batch is still taken when the queue is empty).
        name: Thread name.
    """

    def __init__(self, write: Callable[[str, list[dict[str, Any]]], None], max_rows: int, name: str) -> None:
        self._write = write
        self._max_rows = max_rows
        self._cv = threading.Condition()
        self._queue: deque[Batch] = deque()
        self._rows = 0
        self._error: BaseException | None = None
        self._retrying = False
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Block while the current batch is being retried; raise the error of a failed batch."""
        if not (self._retrying or self._error is not None):  # the common case, without taking the lock
            return
        with self._cv:
            while self._retrying and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error

    def submit(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Queue a batch; blocks while the queue is full or a batch is being retried.

        Raises:
            Exception: the error of a failed batch (this one is not queued then).
        """
        with self._cv:
            while True:
                if self._error is not None:
                    raise self._error
                if self._stopping:
                    raise RuntimeError("ClickHouseSink is closed")
                if not self._retrying and (not self._queue or self._rows + len(rows) <= self._max_rows):
                    break
                self._cv.wait()
            self._queue.append((kind, rows))
            self._rows += len(rows)
            self._cv.notify_all()

    def resume(self) -> None:
        """Retry a failed batch (and go on with the ones behind it)."""
        with self._cv:
            if self._error is not None:
                self._error = None
                self._cv.notify_all()

    def drain(self) -> None:
        """Wait until every queued batch is written.

        Raises:
            Exception: the error of a failed batch; it and the batches behind it stay queued.
        """
        with self._cv:
            while self._queue and self._error is None:
                self._cv.wait()
            if self._error is not None:
                raise self._error

    def retrying(self) -> None:
        """Mark the current batch as being retried (called from ``write``'s retry hook)."""
        self._retrying = True

    def is_current(self) -> bool:
        """Tell whether the calling thread is this insert thread."""
        return threading.current_thread() is self._thread

    def pending(self) -> dict[str, int]:
        """Return queued rows per record kind."""
        counts: dict[str, int] = {}
        with self._cv:
            for kind, rows in self._queue:
                counts[kind] = counts.get(kind, 0) + len(rows)
        return counts

    def stop(self) -> None:
        """Finish the queue (unless a batch failed: those are given up) and end the thread."""
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._error is not None or not self._queue:
                    if self._stopping:
                        return
                    self._cv.wait()
                kind, rows = self._queue[0]  # dequeued only once written
            try:
                self._write(kind, rows)
            except BaseException as e:  # noqa: BLE001 - kept with its batch and raised on the caller's thread
                with self._cv:
                    self._error = e
                    self._retrying = False
                    self._cv.notify_all()
                continue
            with self._cv:
                self._queue.popleft()
                self._rows -= len(rows)
                self._retrying = False
                self._cv.notify_all()


class ClickHouseSink:
    """Buffer records per table and insert them in batches; block while ClickHouse is down.

    By default inserts run on a thread of the sink's own (``background``): a full buffer, or ``start_flush``,
    hands its rows over and returns, and ``flush`` waits until everything handed over is written. The caller
    still feels every outage: ``add`` blocks while a batch is being retried and while ``max_pending_rows``
    rows wait, and an error that ends the retries is raised by the next ``add``, ``start_flush`` or ``flush``.

    Args:
        dsn: ClickHouse DSN (see ``open_client``).
        batch_rows: A table's buffer is handed over when it reaches this many rows (and on ``flush``).
        on_retry: Called as ``(table, attempt, error, delay)`` before each retry sleep
            (``table`` is ``"schema"`` while creating the tables).
        on_write: Called as ``(table, rows, seconds)`` after each successful insert.
        max_attempts: None retries transient errors forever (back-pressure, never drops);
            a bound makes ``flush`` raise the last error instead.
        sleep: Sleep used by the backoff (injectable for tests).
        retry_base_s: First backoff cap.
        retry_max_s: Largest backoff cap.
        background: Insert on the sink's thread; False inserts on the caller's thread.
        max_pending_rows: Rows handed over but not yet written before ``add`` blocks (default
            ``4 * batch_rows``).

    Raises:
        ValueError: if ``batch_rows`` or ``max_pending_rows`` < 1 or the DSN is malformed.
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
        retry_base_s: float = 0.1,
        retry_max_s: float = 30.0,
        background: bool = True,
        max_pending_rows: int | None = None,
    ) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be at least 1, got {batch_rows}")
        if max_pending_rows is not None and max_pending_rows < 1:
            raise ValueError(f"max_pending_rows must be at least 1, got {max_pending_rows}")
        self._dsn = resolve_dsn(dsn)
        self._database = dsn_database(self._dsn)
        self._batch = batch_rows
        self._on_retry = on_retry
        self._on_write = on_write
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._base_s = retry_base_s
        self._max_s = retry_max_s
        self._background = background
        self._max_pending = max_pending_rows or 4 * batch_rows
        self._buffers: dict[str, list[dict[str, Any]]] = {}
        # Guards the buffers; re-entrant because close() flushes.
        self._lock = threading.RLock()
        self._inserts: _InsertThread | None = None  # started with the first hand-over
        self._shared: _Shared | None = None
        self._shared_lock = threading.Lock()
        self._ok: bool | None = None  # None until the first schema check or write finished
        self._closed = False

    @property
    def dsn(self) -> str:
        """The resolved DSN (may contain a password: redact before logging)."""
        return self._dsn

    def buffered(self) -> dict[str, int]:
        """Return the rows not yet written per record kind (kinds with rows only), handed over or not.

        Returns:
            ``{kind: rows}``.
        """
        with self._lock:
            counts = {k: len(v) for k, v in self._buffers.items() if v}
        if self._inserts is not None:
            for kind, n in self._inserts.pending().items():
                counts[kind] = counts.get(kind, 0) + n
        return counts

    def ensure_schema(self) -> None:
        """Create the DSN's database and the tables if missing (idempotent); retries transient errors."""
        with self._lock:
            self._call("schema", self._create_schema)
            self._ok = True

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Buffer rows of one record kind; hands that table's rows over when its buffer reaches ``batch_rows``.

        Blocks while ClickHouse refuses a batch (it is being retried) or too many rows wait to be written.

        Args:
            kind: Record kind (``moment``, ``tag``, ``journey_state``, ``journey_step``,
                ``dead_letter``, ``action``, ``feedback``); Kafka-only kinds are ignored.
            rows: Records of that kind (not copied: do not mutate them afterwards).

        Raises:
            ValueError: for a kind that has no table and is not Kafka-only.
            Exception: the error that ended the retries of an earlier batch (the rows are buffered).
        """
        spec = TABLES.get(kind)
        if spec is None:
            if kind in KINDS:  # a kind that is not stored (published only)
                return
            raise ValueError(f"no ClickHouse table for record kind {kind!r}")
        if not rows:
            return
        with self._lock:
            buf = self._buffers.setdefault(kind, [])
            buf.extend(rows)
            if len(buf) >= self._batch:
                self._hand_over(kind)
        if self._inserts is not None:
            self._inserts.check()

    def start_flush(self) -> None:
        """Hand every buffered row over to be written, without waiting for it (``flush`` waits).

        Raises:
            Exception: the error that ended the retries of an earlier batch.
        """
        with self._lock:
            for kind in list(self._buffers):
                if self._buffers[kind]:
                    self._hand_over(kind)

    def flush(self) -> None:
        """Write every buffered row and wait until all are written; blocks with backoff while ClickHouse is down.

        A batch that failed before is tried again first.

        Raises:
            Exception: a permanent error (or a transient one after ``max_attempts``); the rows stay
                buffered.
        """
        with self._lock:
            if self._inserts is not None:
                self._inserts.resume()
            self.start_flush()
            if self._inserts is not None:
                self._inserts.drain()

    def writable(self) -> bool:
        """Report whether ClickHouse takes writes (for ``/readyz``).

        Returns:
            The outcome of the last schema check or insert; before any, a ``SELECT 1`` probe.
        """
        if self._ok is not None:
            return self._ok
        try:
            shared = self._connection()
            if not shared.lock.acquire(timeout=1.0):
                return False  # busy with a first write: not known to work yet
            try:
                shared.client.command("SELECT 1")
            finally:
                shared.lock.release()
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    def close(self) -> None:
        """Write what is buffered, then stop the insert thread and release the shared client.

        Raises:
            Exception: as ``flush``; the sink is closed all the same (its unwritten rows are given up).
        """
        with self._lock:
            if self._closed:
                return
            try:
                self.flush()
            finally:
                self._closed = True
                if self._inserts is not None:
                    self._inserts.stop()
                with self._shared_lock:
                    shared, self._shared = self._shared, None
                if shared is not None:
                    _release(self._dsn, shared)

    # -- internals ---------------------------------------------------------------------------

    def _hand_over(self, kind: str) -> None:
        # Caller holds self._lock. The buffer is emptied only once its rows are queued or written.
        rows = self._buffers[kind]
        if not self._background:
            self._write(kind, rows)
        else:
            if self._inserts is None:
                if self._closed:
                    raise RuntimeError("ClickHouseSink is closed")
                self._inserts = _InsertThread(self._write, self._max_pending, "clickhouse-insert")
            self._inserts.submit(kind, rows)
        self._buffers[kind] = []

    def _connection(self) -> _Shared:
        with self._shared_lock:
            if self._closed:
                raise RuntimeError("ClickHouseSink is closed")
            if self._shared is None:
                self._shared = _acquire(self._dsn)
            return self._shared

    def _create_schema(self) -> None:
        shared = self._connection()
        try:
            with shared.lock:
                for stmt in schema_statements():
                    shared.client.command(stmt)
        except Exception as e:
            if error_code(e) != UNKNOWN_DATABASE or not self._database:
                raise
            log.warning("database %s is missing; creating it", self._database)
            _create_database(self._dsn, self._database)
            with shared.lock:
                for stmt in schema_statements():
                    shared.client.command(stmt)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            self._ok = False
            if self._inserts is not None and self._inserts.is_current():
                # Hold the dataflow back while this batch is retried, as an insert on its own thread did.
                self._inserts.retrying()
            log.warning("clickhouse %s: attempt %d failed (%s); retrying in %.2fs", what, attempt,
                        _describe(exc), delay)
            if self._on_retry is not None:
                self._on_retry(what, attempt, exc, delay)

        try:
            return retry(fn, is_transient=is_transient_clickhouse_error, on_retry=on_retry, sleep=self._sleep,
                         base_s=self._base_s, max_s=self._max_s, max_attempts=self._max_attempts)
        except Exception:
            self._ok = False
            raise

    def _write(self, kind: str, rows: list[dict[str, Any]]) -> None:
        spec = TABLES[kind]
        data = _payload(kind, spec, rows)
        names = list(spec.columns)

        def insert() -> float:
            shared = self._connection()
            t0 = time.perf_counter()
            try:
                with shared.lock:
                    shared.client.raw_insert(spec.table, names, data, settings=JSON_INSERT_SETTINGS,
                                             fmt="JSONEachRow")
            except Exception as e:
                code = error_code(e)
                if code not in (UNKNOWN_TABLE, UNKNOWN_DATABASE):
                    raise
                # Someone dropped the table (or database): re-create and try again at once; a failure
                # of either is classified by the retry loop like any other.
                log.warning("table %s is missing (code %d); re-creating the schema", spec.table, code)
                self._create_schema()
                with shared.lock:
                    shared.client.raw_insert(spec.table, names, data, settings=JSON_INSERT_SETTINGS,
                                             fmt="JSONEachRow")
            return time.perf_counter() - t0

        seconds = self._call(spec.table, insert)
        self._ok = True
        if self._on_write is not None:
            self._on_write(spec.table, len(rows), seconds)
