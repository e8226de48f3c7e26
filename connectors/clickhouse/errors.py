"""ClickHouse errors: transient (retry with backoff) or permanent, decided by the driver's error code.

clickhouse-connect puts the server's numeric error code on its exceptions as ``code`` (``Error.code``), for both
backends: over HTTP from the ``X-ClickHouse-Exception-Code`` response header, and for the embedded chDB engine,
whose Python API raises a plain ``RuntimeError`` with text only, by the driver parsing that message once
(``chdb_backend._wrap_exception``). This module reads ``code`` and never the message. The one thing the driver
does not carry as an attribute is the HTTP status of a response without a ClickHouse code (a proxy's 502): it is
read from the driver's own "HTTP status N" wording, the most structured form available.
"""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError, Error, OperationalError

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


def error_code(exc: BaseException) -> int | None:
    """Return the ClickHouse error code a clickhouse-connect exception carries, looking through its causes.

    Only the driver's structured ``Error.code`` counts: a message that merely reads "Code: 241" (from another
    library, or quoting a row) is not a ClickHouse error.

    Args:
        exc: Any exception.

    Returns:
        The numeric code, or None.
    """
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 5:
        if isinstance(e, Error) and isinstance(e.code, int) and not isinstance(e.code, bool):
            return e.code
        e = e.__cause__
        seen += 1
    return None


def _http_status(exc: BaseException) -> int | None:
    # The driver keeps no attribute for the status of a response without a ClickHouse code; it words it
    # "HTTP driver received HTTP status N" (clickhouse_connect.driver._backend.httpcommon.build_http_error).
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


def describe_error(exc: BaseException) -> str:
    # Type and code only: server messages can quote row values (customer ids).
    code = error_code(exc)
    return type(exc).__name__ if code is None else f"{type(exc).__name__} code {code}"
