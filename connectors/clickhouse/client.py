"""ClickHouse DSNs and clients: DSN resolution, client creation, and one shared client per (process, DSN)."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse

from clickhouse_connect.driver.binding import quote_identifier

from connectors.clickhouse.errors import UNKNOWN_DATABASE, ChdbPathInUseError, error_code

log = logging.getLogger("cx.clickhouse")

DEFAULT_DSN = "chdb:///./data/cx.chdb"
PASSWORD_ENV = "CX_CLICKHOUSE_PASSWORD"
# Record kind -> its definition (table, columns), for the kinds stored in ClickHouse.

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


def create_database(dsn: str, database: str) -> None:
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
            create_database(dsn, database)
            return clickhouse_connect.get_client(dsn=dsn, **kwargs)
        if path is not None and _path_locked_by_other_process(path):
            raise ChdbPathInUseError(
                f"chDB path {path} is in use by another process (chDB allows one process per path): "
                "stop that process or give this one its own path"
            ) from e
        raise


@dataclass(eq=False)
class SharedClient:
    client: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0


_SHARED: dict[str, SharedClient] = {}
_SHARED_LOCK = threading.Lock()


def _forget_clients_after_fork() -> None:
    # A forked child must not use the parent's clients (a chDB engine or HTTP pool belongs to one
    # process): it starts with an empty cache and opens its own.
    global _SHARED_LOCK
    _SHARED.clear()
    _SHARED_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_clients_after_fork)


def acquire_client(dsn: str) -> SharedClient:
    with _SHARED_LOCK:
        shared = _SHARED.get(dsn)
        if shared is None:
            shared = _SHARED[dsn] = SharedClient(open_client(dsn))
        shared.users += 1
        return shared


def shared_clients() -> dict[str, int]:
    """Return the clients this process keeps open for sinks: resolved DSN -> number of sinks using it.

    Returns:
        A snapshot of the client cache (diagnostics and tests; DSNs may hold passwords).
    """
    with _SHARED_LOCK:
        return {dsn: shared.users for dsn, shared in _SHARED.items()}


def release_client(dsn: str, shared: SharedClient) -> None:
    with _SHARED_LOCK:
        shared.users -= 1
        if shared.users > 0:
            return
        if _SHARED.get(dsn) is shared:
            del _SHARED[dsn]
    # Closing the last chDB client releases the engine and its path lock (another process may open it).
    with shared.lock:
        shared.client.close()

