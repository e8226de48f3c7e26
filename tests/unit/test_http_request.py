"""The HTTP endpoint's request parser (flows.http_request): the fields it reads and the lines it refuses."""

from __future__ import annotations

import io
from http import HTTPStatus

import pytest

from flows.http_request import MAX_HEADER_BYTES, MAX_HEADERS, Headers, RequestError, read_headers


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


@pytest.mark.parametrize("section", [
    b"X: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n",  # one long line
    (b"X: " + b"a" * 4093 + b"\r\n") * 9 + b"\r\n",  # short lines (each well within 64 KiB) over the total
])
def test_a_header_section_over_the_limit_is_refused_as_too_large(section: bytes) -> None:
    # An adversary's (issue 17): 100 lines of 64 KiB each per connection, as http.server allows, held 430 MB
    # across 64 connections for the 10 s header deadline.
    with pytest.raises(RequestError) as e:
        _read(section)
    assert e.value.status == HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    assert e.value.message == "Headers too large"


def test_a_header_section_of_exactly_the_limit_is_read() -> None:
    line = b"X: " + b"a" * 1019 + b"\r\n"  # 1,024 bytes
    n = (MAX_HEADER_BYTES - 2) // len(line)
    last = b"Y: " + b"b" * (MAX_HEADER_BYTES - 2 - n * len(line) - 5) + b"\r\n"
    section = line * n + last + b"\r\n"
    assert len(section) == MAX_HEADER_BYTES
    h = _read(section)
    assert h is not None
    assert len(h) == n + 1


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


@pytest.mark.parametrize("line", [b"X-a: 1\r2", b"X-a: 1\x002", b"X-a: \x01", b"X-a: a\x7fb",
                                  b"X-\x00: 1", b"X-\xe9: 1", b"X/y: 1", b"X(y): 1"])
def test_a_control_character_in_a_value_or_a_name_that_is_not_a_token_is_a_bad_request(line: bytes) -> None:
    # An adversary's (issue 17): a bare CR or a NUL that another parser in front reads as a line's end splits one
    # field into two there; RFC 9110 §5.5 says to refuse (or replace) them, §5.1 that a name is a token.
    with pytest.raises(RequestError) as e:
        _read(b"Host: x\r\n" + line + b"\r\n\r\n")
    assert e.value.status == HTTPStatus.BAD_REQUEST


def test_a_tab_and_latin1_text_in_a_value_are_kept() -> None:
    h = _read(b"Host: x\r\nX-a:\ta\tb \xe9\r\n\r\n")
    assert h is not None
    assert h.get("X-a") == "a\tb \xe9"


@pytest.mark.parametrize(("first", "second"), [(b"Host: x", b"Host: y"), (b"Host: x", b"host: x"),
                                               (b"Authorization: Bearer a", b"authorization: Bearer b")])
def test_two_host_or_authorization_fields_are_a_bad_request(first: bytes, second: bytes) -> None:
    # RFC 9112 §3.2: a server must refuse two Host fields; of two tokens the first was taken (an adversary's).
    with pytest.raises(RequestError) as e:
        _read(first + b"\r\n" + second + b"\r\n\r\n")
    assert e.value.status == HTTPStatus.BAD_REQUEST
