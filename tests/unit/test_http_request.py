"""The HTTP endpoint's request parser (flows.http_request): the fields it reads and the lines it refuses."""

from __future__ import annotations

import io
from http import HTTPStatus

import pytest

from flows.http_request import MAX_HEADERS, MAX_LINE, Headers, RequestError, read_headers


def _read(data: bytes) -> Headers | None:
    return read_headers(io.BytesIO(data).readline)


def test_fields_are_found_in_any_case_with_repeats_in_order_and_values_trimmed() -> None:
    h = _read(b"Host: x\r\nAccept:  text/plain \r\ncontent-length: 0\r\nContent-Length:\t41\r\n\r\nGET / HTTP/1.1\r\n")
    assert h is not None
    assert h.get("accept") == "text/plain"
    assert h["ACCEPT"] == "text/plain"
    assert h.get_all("Content-Length") == ["0", "41"]
    assert h.get("Authorization", "") == ""
    assert h.get_all("Authorization") is None
    assert h["Authorization"] is None
    assert "host" in h
    assert "Cookie" not in h
    assert h.keys() == ["Host", "Accept", "content-length", "Content-Length"]


def test_a_bare_newline_ends_the_headers_as_crlf_does() -> None:
    h = _read(b"Host: x\nAccept: */*\n\nrest")
    assert h is not None
    assert h.items() == [("Host", "x"), ("Accept", "*/*")]


def test_input_ending_inside_the_headers_gives_nothing_to_answer() -> None:
    assert _read(b"Host: x\r\nAcc") is None
    assert _read(b"") is None


def test_a_header_line_over_the_limit_is_refused_as_too_large() -> None:
    with pytest.raises(RequestError) as e:
        _read(b"X: " + b"a" * MAX_LINE + b"\r\n\r\n")
    assert e.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    assert e.value.message == "Line too long"


def test_more_header_lines_than_the_limit_are_refused_and_the_limit_itself_is_read() -> None:
    assert len(_read(b"X: 1\r\n" * MAX_HEADERS + b"\r\n") or ()) == MAX_HEADERS
    with pytest.raises(RequestError) as e:
        _read(b"X: 1\r\n" * (MAX_HEADERS + 1) + b"\r\n")
    assert e.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    assert e.value.message == "Too many headers"


@pytest.mark.parametrize("line", [b"Content-Length : 5", b" Host: x", b"\tfolded", b"no colon", b": empty name",
                                  b"Two words: x"])
def test_a_line_that_is_not_a_field_is_a_bad_request(line: bytes) -> None:
    # email.feedparser kept these as defects (a folded line joined the one before; "Content-Length : 5" a field
    # another parser might read differently): RFC 9112 says a server must, or may, refuse them.
    with pytest.raises(RequestError) as e:
        _read(b"Host: x\r\n" + line + b"\r\n\r\n")
    assert e.value.status == HTTPStatus.BAD_REQUEST
