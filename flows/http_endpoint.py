"""The HTTP endpoint: /metrics (the registry of ``flows.metrics``), /healthz and /readyz (registered checks),
and the look-up API ``/v1/customers/{id}`` and ``/v1/moments/{id}`` (``flows.serving``) once a run sets it up.

It listens on port 9464 by default (``CX_METRICS_PORT``, ``--metrics-port``), on every interface
unless ``--http-host``/``CX_HTTP_HOST`` names one (``127.0.0.1``: this machine only). The ``/v1/`` paths
carry customer data: with ``CX_HTTP_TOKEN`` set they need ``Authorization: Bearer <token>``; ids in
their paths are never logged.
"""

from __future__ import annotations

import hmac
import logging
import math
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import orjson
from prometheus_client.exposition import choose_encoder

from flows.http_admission import Connections as _Connections
from flows.http_request import parse_request
from flows.metrics import REGISTRY
from state.events import id_problem

if TYPE_CHECKING:
    from flows.serving import Service

log = logging.getLogger("cx.metrics")

DEFAULT_PORT = 9464
PORT_ENV = "CX_METRICS_PORT"
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - scraped from outside the pod/container
HOST_ENV = "CX_HTTP_HOST"

_lock = threading.Lock()
_readiness: dict[str, Callable[[], bool]] = {}


def register_readiness(name: str, check: Callable[[], bool]) -> None:
    """Add (or replace) a check that /readyz runs; all must pass for 200.

    Args:
        name: Shown in the /readyz body.
        check: Returns True when ready; an exception counts as not ready.
    """
    with _lock:
        _readiness[name] = check


def unregister_readiness(name: str) -> None:
    """Remove a readiness check (no error if absent).

    Args:
        name: The check's name.
    """
    with _lock:
        _readiness.pop(name, None)


def readiness() -> dict[str, bool]:
    """Run every readiness check.

    Returns:
        ``name -> passed``; a check that raises has not passed.
    """
    with _lock:
        checks = list(_readiness.items())
    result = {}
    for name, check in checks:
        try:
            result[name] = bool(check())
        except Exception:  # noqa: BLE001 - a failing check means not ready
            log.debug("readiness check %s raised", name, exc_info=True)
            result[name] = False
    return result


_api: list[tuple[Service, str | None]] = []  # the look-up service and the bearer token (at most one)
_MOMENT_ID = re.compile(r"[0-9a-f]{32}")
_report_lock = threading.Lock()
_report_next = [0.0]  # monotonic time from which the next report may run


def set_service(service: Service | None, token: str | None = None) -> Service | None:
    """Serve the ``/v1/`` look-ups with ``service`` (None: stop serving them).

    Args:
        service: Answers the look-ups.
        token: When set, ``/v1/`` requests need ``Authorization: Bearer <token>`` (default: ``CX_HTTP_TOKEN``).

    Returns:
        The service served before, if any.
    """
    from flows.http_token import http_token

    old = _api[0][0] if _api else None
    _api.clear()
    if service is not None:
        _api.append((service, token if token is not None else http_token()))
    return old


_scrape_lock = threading.Lock()
_scrapes: dict[Callable[..., bytes], tuple[int, bytes]] = {}  # encoder -> (number of the encoding, its body)
_scrape_count = [0]


def _exposition(encoder: Callable[..., bytes]) -> bytes:
    """The registry encoded for a scrape: one encoding at a time, shared by the scrapes that wait for it.

    Sixty scrapes at once (clients pipelining /metrics) each encoded the registry, holding every connection
    "answering" for seconds of CPU: probes were refused. A scrape takes the body of an encoding started after it
    arrived (never an older one), so concurrent scrapes cost at most two encodings.
    """
    wanted = _scrape_count[0] + 1
    with _scrape_lock:
        done = _scrapes.get(encoder)
        if done is not None and done[0] >= wanted:
            return done[1]
        _scrape_count[0] += 1
        n = _scrape_count[0]
        body = encoder(REGISTRY)
        _scrapes[encoder] = (n, body)
        return body


class _Handler(BaseHTTPRequestHandler):
    # Blocking sockets, no socket timeout: with one, CPython polls before each read and each write, each wait let
    # go of the GIL and had to take it back from the worker thread (up to the switch interval each time): a request
    # cost the worker 4 hand-overs, 2 without. A client that sends nothing, half a request, or does not take its
    # answer is still closed: the connections' watchdog shuts it down past its deadline (flows.http_admission).
    timeout = None
    # Keep-alive: a desktop asking look-ups in a row reuses its connection (no connect, no new handler thread).
    protocol_version = "HTTP/1.1"
    # Headers and body leave in one write (http.server flushes after each request): a second write is a second
    # wait for the GIL, which the worker thread holds up to the switch interval; and with Nagle on, a kept-alive
    # connection's second write waits for the client's delayed ACK (40 ms on Linux).
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def handle_one_request(self) -> None:
        """Read and answer one request, within the header deadline (``_Connections``)."""
        conns: _Connections = self.server.connections  # type: ignore[attr-defined]
        conns.waiting(self.connection)
        super().handle_one_request()

    def parse_request(self) -> bool:
        """http.server's, with a lean strict header parser (``flows.http_request``) in place of email's."""
        return parse_request(self)

    def _has_body(self) -> bool:
        """Whether the request says it has a body; if so it is refused (400) and the connection closed.

        Unread, a body would be parsed as the next request of a kept-alive connection (smuggled past a proxy that
        saw one request, or read another of two Content-Length headers). Any Transfer-Encoding field counts, even
        an empty one before "chunked".
        """
        lengths = self.headers.get_all("Content-Length") or []
        if ("Transfer-Encoding" in self.headers or len(lengths) > 1
                or any(v.strip() not in ("", "0") for v in lengths)):
            self._send(400, f"a {self.command} has no body\n".encode(), "text/plain; charset=utf-8", close=True)
            return True
        return False

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.connections.answering(self.connection)  # type: ignore[attr-defined]
        if self._has_body():
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
            self.server.connections.queued(self.connection)  # type: ignore[attr-defined]
            self._send(200, _exposition(encoder), ctype)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            checks = readiness()
            failing = sorted(n for n, ok in checks.items() if not ok)
            body = orjson.dumps({"ready": not failing, "failing": failing, "checks": checks})
            self._send(503 if failing else 200, body, "application/json")
        elif path.startswith("/v1/"):
            conns: _Connections = self.server.connections  # type: ignore[attr-defined]
            if not conns.enter_v1():  # connections stay for scrapes and probes (flows.http_admission)
                self._json(503, {"error": "busy: too many look-ups at once here; retry"}, {"Retry-After": "1"})
                return
            try:
                self._v1(path, self.path.partition("?")[2])
            finally:
                conns.leave_v1()
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
        """The health and metrics paths' headers, without the body (a monitor's availability check)."""
        if self.path.split("?", 1)[0] in ("/metrics", "/healthz", "/readyz"):
            self.do_GET()
        elif self._has_body():  # before the 405: its body would be read as the next request (smuggled)
            return
        else:
            self._send(405, b"HEAD: only /metrics, /healthz and /readyz\n", "text/plain; charset=utf-8",
                       headers={"Allow": "GET"})  # RFC 9110 §15.5.6: a 405 names the methods the path takes

    def send_response(self, code: int, message: str | None = None) -> None:
        """http.server's, once the answer is made: from now the client must take it by the write deadline."""
        self.server.connections.writing(self.connection)  # type: ignore[attr-defined]
        super().send_response(code, message)

    def end_headers(self) -> None:
        """http.server's; an HTTP/1.0 connection kept alive (its ``Connection: keep-alive``) is told it is, or its
        client, which assumes a 1.0 server closes, waits for the end of the connection."""
        if self.request_version == "HTTP/1.0" and not self.close_connection:
            self.send_header("Connection", "keep-alive")
        super().end_headers()

    def _v1(self, path: str, query: str) -> None:
        """A look-up: checked (token, path, id), answered, and logged by its route only (ids are customer data)."""
        parts = path.split("/")
        route = (f"/v1/{parts[2]}/{{id}}" if len(parts) == 4 and parts[2] in ("customers", "moments")
                 else path if path in ("/v1/reports/overview", "/v1/reports/rules") else "/v1/?")
        code = self._v1_answer(parts, query)
        log.debug("GET %s %d", route, code)

    def _v1_answer(self, parts: list[str], query: str) -> int:
        if not _api:
            return self._json(404, {"error": "no look-up API here (it is served by a running worker)"})
        service, token = _api[0]
        if token is not None:
            scheme, _, given = self.headers.get("Authorization", "").strip().partition(" ")
            # The scheme is case-insensitive (RFC 7235). Constant time: how much of a guess matches must not show
            # in the time of the answer.
            if not (scheme.lower() == "bearer"
                    and hmac.compare_digest(given.strip().encode("utf-8", "replace"), token.encode())):
                # And closed: a client without the token gets one answer per connection, so pipelining wrong
                # tokens does not keep connections answering (they would hold the cap from probes).
                return self._json(401, {"error": "missing or wrong Authorization: Bearer token"},
                                  {"WWW-Authenticate": 'Bearer realm="cx-moments"', "Connection": "close"})
        if not service.ready():
            return self._json(503, {"error": "starting: the worker does not answer look-ups yet"},
                              {"Retry-After": "1"})
        if len(parts) == 4 and parts[2] == "reports" and parts[3] in ("overview", "rules"):
            return self._report(service, parts[3], query)
        if len(parts) != 4 or parts[2] not in ("customers", "moments"):
            return self._json(404, {"error": "not found: try /v1/customers/{customer_id} or /v1/moments/{moment_id}"})
        try:
            ident = unquote(parts[3], errors="strict")
        except UnicodeDecodeError:
            return self._json(400, {"error": "the id is not UTF-8"})
        local = "local=1" in query.split("&")
        customers = parts[2] == "customers"
        problem = (id_problem(ident, "customer_id") if customers
                   else None if _MOMENT_ID.fullmatch(ident) else "moment_id must be 32 lowercase hex digits")
        if problem:
            return self._json(400, {"error": problem})
        try:
            code, body = (service.customer if customers else service.moment)(ident, local, token)
        except Exception as e:  # noqa: BLE001 - one failed look-up must not show a traceback (it may hold the id)
            log.warning("look-up %s failed: %s", parts[2], type(e).__name__)
            return self._json(500, {"error": f"look-up failed: {type(e).__name__}"})
        return self._json(code, body, {"Retry-After": "1"} if code in (503, 504) else None)

    def _report(self, service: Service, view: str, query: str) -> int:
        # One report at a time per process: each is a scan of the tables on the worker's own ClickHouse (and
        # CPU); two at once slowed the worker 2.6x. Others are told to come back.
        if not _report_lock.acquire(blocking=False):
            return self._json(429, {"error": "another report is running here: retry shortly"},
                              {"Retry-After": "2"})
        # Nor back to back: a report holds the ClickHouse client the sink inserts through, and reports asked one
        # after another stalled the dataflow for seconds at a time. After one that took d seconds, the next waits
        # d seconds (reports take at most half of the client's time).
        wait = _report_next[0] - time.monotonic()
        if wait > 0:
            _report_lock.release()
            return self._json(429, {"error": "the last report just ended: retry shortly"},
                              {"Retry-After": str(max(1, math.ceil(wait)))})
        started = time.monotonic()
        try:
            code, body = service.report(view, dict(parse_qsl(query)))
        except ValueError as e:
            return self._json(400, {"error": f"bad report parameter: {e}"})
        except Exception as e:  # noqa: BLE001 - a failed report must not show a traceback
            log.warning("report %s failed: %s", view, type(e).__name__)
            return self._json(500, {"error": f"report failed: {type(e).__name__}"})
        finally:
            ended = time.monotonic()
            _report_next[0] = ended + (ended - started)
            _report_lock.release()
        return self._json(code, body)

    def _json(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        from flows.serving import dumps

        data = dumps(body)
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        return code

    def _send(self, code: int, body: bytes, ctype: str, close: bool = False,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")  # http.server then closes the connection after the answer
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


# A scraper or probe that gives up before the answer is written (a timeout, `curl | head`) is routine.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class MetricsServer(ThreadingHTTPServer):
    """The endpoint's server; ``port`` is the bound port (useful after asking for port 0)."""

    daemon_threads = True
    block_on_close = False  # stopping never waits on a client's connection (stop() shuts them all down)
    # Bursts of new connections (many look-up clients, a scrape during them) queue in the kernel, not refused
    # and retried a second later as with socketserver's 5.
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections = _Connections()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve a connection on its own thread, within the cap (``flows.http_admission``); refused: closed at once."""
        if not self.connections.admit(request):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """socketserver's, then the connection no longer counts."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.connections.gone(request)

    def service_actions(self) -> None:
        """Between two accepts (at least every half second): close connections past their deadline."""
        self.connections.expire()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.server_address[1])

    @property
    def host(self) -> str:
        """The bound address (``0.0.0.0``: every interface)."""
        return str(self.server_address[0])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Note a client that went away at debug level; anything else as socketserver does (a traceback)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE):
            log.debug("metrics client disconnected early (errno %s)", getattr(exc, "errno", None))
            return
        super().handle_error(request, client_address)

    def stop(self) -> None:
        """Stop serving and close the socket; open connections are shut down (their threads end), not waited for."""
        self.shutdown()
        self.server_close()
        self.connections.close_all()


class _MetricsServer6(MetricsServer):
    address_family = socket.AF_INET6


def start_http(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> MetricsServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread.

    Args:
        port: TCP port (default 9464, ``CX_METRICS_PORT``); 0 picks a free one, read it from ``server.port``.
        host: Bind address (default every interface: Prometheus scrapes from another host or pod;
            ``--http-host``/``CX_HTTP_HOST``).

    Returns:
        The running server.

    Raises:
        OSError: the address cannot be bound (``errno.EADDRINUSE``: the port is taken).
    """
    # An IPv6 address (``::1``, ``::``) needs its own address family: the server binds IPv4 unless told.
    server_class = _MetricsServer6 if ":" in host else MetricsServer
    server = server_class((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
