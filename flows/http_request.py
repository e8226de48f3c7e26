"""A lean, strict parser for an HTTP/1.x request's line and header fields (``flows.http_endpoint``'s).

http.server parses the header fields with ``email.feedparser``: about a third of a look-up's CPU, taken from the
worker while it processes events (RESULTS.md, look-ups). The header section of a request to this endpoint is a
few short ``Name: value`` lines; this reads them with one ``readline`` and one ``partition`` each.

It refuses what http.server refuses, with the same statuses: a bad request line (400), an HTTP/0.9 request other
than GET (400), a version from 2.0 on (505), more than 100 header lines (431); and, stricter, what RFC 9110/9112
say a server must or may reject and email's parser let through as defects: a field line without a colon or with
whitespace before it, an obsolete folded (continued) line, a field name that is not a token, a value holding a
control character (a bare CR, a NUL), two Host or Authorization fields, a control character or a byte beyond
ASCII in the request line (400). The whole header section is bounded (``MAX_HEADER_BYTES``, 431): 100 lines of
64 KiB each, as http.server allows, let 64 connections hold 430 MB for the header deadline. The request line
splits on SP and HTAB only (``str.split`` also splits on U+0085 and U+00A0, which a proxy in front does not); one
empty line before it is skipped and an absolute-form target (``http://host/path``) is read as its path, as RFC 9112
asks; ``Connection`` is read as a list of options. A request cut short in its headers (the client went, or the
header deadline shut the connection) gets no answer.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Final

MAX_HEADERS: Final = 100  # http.client's _MAXHEADERS
MAX_REQUEST_LINE: Final = 65536  # http.server's (414 beyond)
MAX_HEADER_BYTES: Final = 32768  # the whole header section (nginx's default allows 4 lines of 8 KiB)
_END: Final = (b"\r\n", b"\n")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.1: a field name is a token
_CONTROL: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # RFC 9110 §5.5: CR, LF, NUL, other controls; HTAB is fine
_SINGLE: Final = frozenset({"host", "authorization"})  # fields a request may have once
# A request line is ASCII (RFC 9112 §3; a target's other bytes are percent-encoded): raw UTF-8 in a path was read
# as Latin-1 and answered as another id.
_NOT_ASCII_TEXT: Final = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\xff]")
_REQUEST_WS: Final = re.compile(r"[ \t]+")  # RFC 9112 §3: SP (and HTAB, leniently); other controls are refused


class Headers:
    """A request's header fields: looked up by name in any case, repeated names kept, in order.

    The part of ``email.message.Message`` that a handler uses (``get``, ``get_all``, ``[]``, ``in``, ``items``).

    Args:
        fields: ``(name, value)`` in the order received, values without their surrounding whitespace.
    """

    __slots__ = ("_by_name", "_fields")

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        self._fields = fields
        by_name: dict[str, list[str]] = {}
        for name, value in fields:
            by_name.setdefault(name.lower(), []).append(value)
        self._by_name = by_name

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of a field (``default`` when absent)."""
        values = self._by_name.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str, default: list[str] | None = None) -> list[str] | None:
        """Every value of a field, in order (``default`` when absent)."""
        values = self._by_name.get(name.lower())
        return list(values) if values else default

    def __getitem__(self, name: str) -> str | None:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._by_name

    def __len__(self) -> int:
        return len(self._fields)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._fields)

    def keys(self) -> list[str]:
        """The field names, in order (repeated names repeated)."""
        return [name for name, _ in self._fields]

    def items(self) -> list[tuple[str, str]]:
        """The fields, in order."""
        return list(self._fields)

    def __str__(self) -> str:
        return "".join(f"{name}: {value}\r\n" for name, value in self._fields) + "\r\n"


class RequestError(Exception):
    """A request refused: its status and the reason sent in the answer."""

    def __init__(self, status: HTTPStatus, message: str, explain: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.explain = explain


def read_headers(readline: Callable[[int], bytes]) -> Headers | None:
    """Read a request's header section, up to its empty line.

    Args:
        readline: The connection's ``rfile.readline``.

    Returns:
        The fields; None when the input ended before the empty line (nothing to answer).

    Raises:
        RequestError: a header section over ``MAX_HEADER_BYTES`` or too many lines (431), a line that is not a
            field, a control character in a value, two Host fields (400).
    """
    fields: list[tuple[str, str]] = []
    left = MAX_HEADER_BYTES
    once: set[str] = set()
    while True:
        line = readline(left + 1)
        left -= len(line)
        if left < 0:
            raise RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Headers too large",
                               f"the header section is over {MAX_HEADER_BYTES} bytes")
        if line in _END:
            return Headers(fields)
        if not line.endswith(b"\n"):
            return None  # the input ended, here or within the line
        if len(fields) >= MAX_HEADERS:
            raise RequestError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Too many headers",
                               f"got more than {MAX_HEADERS} headers")
        name, colon, value = line.decode("iso-8859-1").partition(":")
        # RFC 9112 §5.1: no whitespace between the name and its colon (a proxy may read the name otherwise);
        # §5.2: a line folded onto the one before it may be refused.
        if not colon or not _TOKEN.fullmatch(name):
            raise RequestError(HTTPStatus.BAD_REQUEST, "Bad header line",
                               "a header line is not 'name: value' (or is folded)")
        value = value[:-2] if value.endswith("\r\n") else value[:-1]
        if _CONTROL.search(value):
            # A bare CR or a NUL read as a line's end by another parser in front splits one field into two.
            raise RequestError(HTTPStatus.BAD_REQUEST, "Bad header value", "a header value holds a control character")
        lower = name.lower()
        if lower in _SINGLE:
            if lower in once:  # RFC 9112 §3.2: a server must refuse two Host fields; two tokens, which wins?
                raise RequestError(HTTPStatus.BAD_REQUEST, "Bad request", f"two {name} header fields")
            once.add(lower)
        fields.append((name, value.strip(" \t")))


def parse_request(handler: BaseHTTPRequestHandler) -> bool:
    """``BaseHTTPRequestHandler.parse_request`` with ``read_headers`` in place of ``http.client.parse_headers``.

    Reads ``handler.raw_requestline`` and the header section from ``handler.rfile``; sets ``command``, ``path``,
    ``request_version``, ``headers`` and ``close_connection`` as http.server does.

    Returns:
        True to answer the request; False when it was refused (the error already sent) or there is none.
    """
    handler.command = None  # type: ignore[assignment]  # as http.server: set in case of an error on the first line
    handler.request_version = version = handler.default_request_version
    handler.close_connection = True
    raw: bytes = handler.raw_requestline  # type: ignore[attr-defined]  # set by handle_one_request
    if raw in _END:
        # RFC 9112 §2.2: an empty line before the request line should be ignored (a client's stray CRLF after a
        # body); one only.
        raw = handler.raw_requestline = handler.rfile.readline(MAX_REQUEST_LINE + 1)  # type: ignore[attr-defined]
        if len(raw) > MAX_REQUEST_LINE:
            handler.requestline = handler.request_version = ""
            handler.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
            return False
    requestline = str(raw, "iso-8859-1").rstrip("\r\n")
    handler.requestline = requestline
    words = _REQUEST_WS.split(requestline.strip(" \t"))
    if words == [""]:
        return False
    if _NOT_ASCII_TEXT.search(requestline):
        handler.send_error(HTTPStatus.BAD_REQUEST, "Bad request line (a control character or a byte beyond ASCII: "
                                                   "percent-encode it)")
        return False
    if len(words) >= 3:
        version = words[-1]
        major, dot, minor = version[5:].partition(".")
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
        if not (version.startswith("HTTP/") and dot and major.isascii() and major.isdigit() and minor.isascii()
                and minor.isdigit() and len(major) <= 10 and len(minor) <= 10):
            handler.send_error(HTTPStatus.BAD_REQUEST, f"Bad request version ({version!r})")
            return False
        number = (int(major), int(minor))
        if number >= (2, 0):
            handler.send_error(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, f"Invalid HTTP version ({version[5:]})")
            return False
        if number >= (1, 1) and handler.protocol_version >= "HTTP/1.1":
            handler.close_connection = False
        handler.request_version = version
    if not 2 <= len(words) <= 3:
        handler.send_error(HTTPStatus.BAD_REQUEST, f"Bad request syntax ({requestline!r})")
        return False
    command, path = words[:2]
    if len(words) == 2:
        handler.close_connection = True
        if command != "GET":
            handler.send_error(HTTPStatus.BAD_REQUEST, f"Bad HTTP/0.9 request type ({command!r})")
            return False
    handler.command = command
    if path[:8].lower().startswith(("http://", "https://")):
        # RFC 9112 §3.2.2: the absolute form (a proxy's) must be accepted; its path is what is asked.
        path = "/" + path.split("/", 3)[3] if path.count("/") >= 3 else "/"
    # gh-87389, as http.server: a path starting with // reads as a host to clients (an open redirect).
    handler.path = "/" + path.lstrip("/") if path.startswith("//") else path
    try:
        headers = read_headers(handler.rfile.readline)
    except RequestError as e:
        handler.send_error(e.status, e.message, e.explain)
        return False
    if headers is None:
        handler.close_connection = True
        return False
    handler.headers = headers  # type: ignore[assignment]  # the part of email.message.Message handlers use
    # A list of options, in one field or several (RFC 9110 §7.6.1): "close, te" closes.
    options = {o.strip().lower() for v in headers.get_all("Connection") or () for o in v.split(",")}
    if "close" in options:
        handler.close_connection = True
    elif "keep-alive" in options and handler.protocol_version >= "HTTP/1.1":
        handler.close_connection = False
    expect = (headers.get("Expect") or "").lower()
    if (expect == "100-continue" and handler.protocol_version >= "HTTP/1.1"
            and handler.request_version >= "HTTP/1.1"):
        return handler.handle_expect_100()
    return True
