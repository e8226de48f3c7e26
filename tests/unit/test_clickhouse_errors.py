"""ClickHouse errors are classified by the driver's structured error code, never by the text of a message."""

from __future__ import annotations

from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from connectors.clickhouse.errors import (
    TRANSIENT_CODES,
    UNKNOWN_TABLE,
    ChdbPathInUseError,
    error_code,
    is_transient_clickhouse_error,
)

MEMORY_LIMIT_EXCEEDED = 241


def test_the_drivers_code_decides_whatever_the_message_says() -> None:
    assert MEMORY_LIMIT_EXCEEDED in TRANSIENT_CODES
    overloaded = DatabaseError("The ClickHouse server returned an error", code=MEMORY_LIMIT_EXCEEDED)
    assert error_code(overloaded) == MEMORY_LIMIT_EXCEEDED
    assert is_transient_clickhouse_error(overloaded)
    missing = DatabaseError("Code: 241. a message that lies about its code", code=UNKNOWN_TABLE)
    assert error_code(missing) == UNKNOWN_TABLE
    assert not is_transient_clickhouse_error(missing)


def test_code_like_text_in_a_message_is_not_an_error_code() -> None:
    quoted = ValueError("bad value 'Code: 241. MEMORY_LIMIT_EXCEEDED' in row 3")
    assert error_code(quoted) is None
    assert not is_transient_clickhouse_error(quoted)
    uncoded = DatabaseError("Code: 241. text without the driver's code")
    assert error_code(uncoded) is None
    assert not is_transient_clickhouse_error(uncoded)


def test_the_code_of_a_cause_counts() -> None:
    outer = RuntimeError("writing moments")
    outer.__cause__ = DatabaseError("insert failed", code=MEMORY_LIMIT_EXCEEDED)
    assert error_code(outer) == MEMORY_LIMIT_EXCEEDED
    assert is_transient_clickhouse_error(outer)


def test_without_a_code_connection_trouble_and_retryable_statuses_are_transient() -> None:
    assert is_transient_clickhouse_error(OperationalError("Network Error"))
    assert is_transient_clickhouse_error(DatabaseError("HTTP driver received HTTP status 503"))
    assert not is_transient_clickhouse_error(DatabaseError("HTTP driver received HTTP status 400"))
    assert not is_transient_clickhouse_error(ChdbPathInUseError("busy"))
