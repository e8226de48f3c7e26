"""The HTTP endpoint's request line and headers against real sockets: http.server's refusals kept, stricter lines
refused, kept-alive connections served in turn (flows.http_request)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from flows.http_endpoint import MetricsServer, start_http
from flows.http_request import MAX_HEADERS, MAX_LINE
from tests.helpers import raw_http


@pytest.fixture
def server() -> Iterator[MetricsServer]:
    s = start_http(0, "127.0.0.1")
    yield s
    s.stop()



@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.1 extra\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.x\r\n\r\n", b"400"),
    (b"GET /healthz HTTP/1.\xb2\r\n\r\n", b"400"),  # a digit to str.isdigit(), not to int()
    (b"GET /healthz HTTP/2.0\r\n\r\n", b"505"),
    (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * MAX_LINE + b"\r\n\r\n", b"431"),
    (b"GET /healthz HTTP/1.1\r\n" + b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n", b"431"),
    (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
    (b"PUT /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"501"),
])
def test_http_servers_refusals_keep_their_status_and_close(server: MetricsServer, request_bytes: bytes,
                                                          status: bytes) -> None:
    got = raw_http(server.port, request_bytes)  # returns once the server closed the connection
    # Refused before the version is known, http.server answers as to HTTP/0.9: the error page, no status line.
    assert re.findall(rb"Error code: (\d{3})", got) == [status], got[:300]


def test_an_http_0_9_request_other_than_get_is_refused(server: MetricsServer) -> None:
    assert b"Bad HTTP/0.9 request type" in raw_http(server.port, b"POST /healthz\r\n")


@pytest.mark.parametrize("line", [b"Host : x", b" folded onto Host", b"not a field"])
def test_a_header_line_that_is_not_a_field_is_a_bad_request_and_closes(server: MetricsServer, line: bytes) -> None:
    """email.feedparser let these through as defects; another parser in front (a proxy) may read them otherwise."""
    smuggled = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    got = raw_http(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + line + b"\r\n\r\n" + smuggled)
    assert got.startswith(b"HTTP/1.1 400 "), got[:200]
    assert got.count(b"HTTP/1.1 ") == 1, got[:2000]


def test_a_kept_alive_connection_answers_in_turn_until_connection_close(server: MetricsServer) -> None:
    got = raw_http(server.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                            b"GET /nowhere HTTP/1.1\r\nhost: x\r\naccept: */*\r\n\r\n"
                            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                            b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", got) == [b"200", b"404", b"200"]


def test_an_http_1_0_request_is_answered_and_closed(server: MetricsServer) -> None:
    got = raw_http(server.port, b"GET /healthz HTTP/1.0\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n")
    assert got.startswith(b"HTTP/1.1 200 ")
    assert got.endswith(b"ok\n")
    assert got.count(b"HTTP/1.1 ") == 1
