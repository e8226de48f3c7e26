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


# A client that connects and then sends nothing (or half a request) would hold its handler thread for ever.
HTTP_READ_TIMEOUT_S = 10.0
# ... and one that trickles a byte at a time resets a per-read timeout each time: a request's line and headers
# (and a kept-alive connection's wait for its next request) get this long in all.
HEADER_DEADLINE_S = 10.0
# Each connection is a thread and a descriptor: unbounded, idle clients exhausted the process's descriptors
# (chDB then failed with EMFILE and the worker died). Scrapers, probes and people asking look-ups need a few.
MAX_CONNECTIONS = 64
# Connections closed for a new client but not yet gone: beyond the cap by this many, new clients are refused.
_EVICT_SLACK = 16


class _Connections:
    """The open connections, each waiting for a request (with a deadline) or answering one.

    At the cap a new client closes the connection that has waited longest for a request (an idle or trickling
    client), so /metrics and the health probes stay answerable while look-up clients misbehave; only when every
    connection is answering is a new one refused. A watchdog closes those past their header deadline.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(socket) -> (socket, deadline while waiting): not the descriptor, which a new connection may reuse at once
        self._open: dict[int, tuple[socket.socket, float | None]] = {}
        self._closing = 0

    def admit(self, sock: socket.socket) -> bool:
        """Whether to serve a new connection (making room if needed); False: close it at once."""
        from flows.metrics import HTTP_DROPPED

        with self._lock:
            if len(self._open) >= MAX_CONNECTIONS:
                waiting = [(d, k) for k, (_, d) in self._open.items() if d is not None]
                if not waiting or len(self._open) >= MAX_CONNECTIONS + _EVICT_SLACK:
                    HTTP_DROPPED.labels("full").inc()
                    return False
                _, k = min(waiting)
                self._close(k)
                HTTP_DROPPED.labels("evicted").inc()
            self._open[id(sock)] = (sock, time.monotonic() + HEADER_DEADLINE_S)
            return True

    def waiting(self, sock: socket.socket) -> None:
        """The connection waits for a request's line and headers, from now until the deadline."""
        with self._lock:
            if id(sock) in self._open:
                self._open[id(sock)] = (sock, time.monotonic() + HEADER_DEADLINE_S)

    def answering(self, sock: socket.socket) -> None:
        """The connection's request is read: no deadline, nor eviction, while it is answered."""
        with self._lock:
            if id(sock) in self._open:
                self._open[id(sock)] = (sock, None)

    def gone(self, sock: socket.socket) -> None:
        """The connection's thread ended."""
        with self._lock:
            self._open.pop(id(sock), None)

    def expire(self) -> None:
        """Close the connections past their header deadline."""
        from flows.metrics import HTTP_DROPPED

        now = time.monotonic()
        with self._lock:
            late = [k for k, (_, d) in self._open.items() if d is not None and d < now]
            for k in late:
                self._close(k)
                HTTP_DROPPED.labels("deadline").inc()

    def _close(self, key: int) -> None:
        # Shut down, not closed: the handler's thread blocked in a read returns at once and closes it itself;
        # it stays counted until then, marked as no longer waiting.
        sock, _ = self._open[key]
        self._open[key] = (sock, None)
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Handler(BaseHTTPRequestHandler):
    timeout = HTTP_READ_TIMEOUT_S  # socket timeout: http.server then drops the connection (silently)
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

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.connections.answering(self.connection)  # type: ignore[attr-defined]
        lengths = self.headers.get_all("Content-Length") or []
        if (self.headers.get("Transfer-Encoding") or len(lengths) > 1
                or any(v.strip() not in ("", "0") for v in lengths)):
            # Unread, a body would be parsed as the next request of a kept-alive connection (smuggled past a
            # proxy that saw one request, or read another of two Content-Length headers): refused, and closed.
            self._send(400, b"a GET has no body\n", "text/plain; charset=utf-8", close=True)
            return
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(REGISTRY), ctype)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            checks = readiness()
            failing = sorted(n for n, ok in checks.items() if not ok)
            body = orjson.dumps({"ready": not failing, "failing": failing, "checks": checks})
            self._send(503 if failing else 200, body, "application/json")
        elif path.startswith("/v1/"):
            self._v1(path, self.path.partition("?")[2])
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

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
                return self._json(401, {"error": "missing or wrong Authorization: Bearer token"},
                                  {"WWW-Authenticate": 'Bearer realm="cx-moments"'})
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
        try:
            code, body = service.report(view, dict(parse_qsl(query)))
        except ValueError as e:
            return self._json(400, {"error": f"bad report parameter: {e}"})
        except Exception as e:  # noqa: BLE001 - a failed report must not show a traceback
            log.warning("report %s failed: %s", view, type(e).__name__)
            return self._json(500, {"error": f"report failed: {type(e).__name__}"})
        finally:
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

    def _send(self, code: int, body: bytes, ctype: str, close: bool = False) -> None:
        self.send_response(code)
        if close:
            self.send_header("Connection", "close")  # http.server then closes the connection after the answer
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


# A scraper or probe that gives up before the answer is written (a timeout, `curl | head`) is routine.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class MetricsServer(ThreadingHTTPServer):
    """The endpoint's server; ``port`` is the bound port (useful after asking for port 0)."""

    daemon_threads = True
    block_on_close = False  # stopping never waits on a client's connection (threads end by HTTP_READ_TIMEOUT_S)
    # Bursts of new connections (many look-up clients, a scrape during them) queue in the kernel, not refused
    # and retried a second later as with socketserver's 5.
    request_queue_size = 128

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections = _Connections()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve a connection on its own thread, within the cap (``MAX_CONNECTIONS``); refused: closed at once."""
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
        """Between two accepts (at least every half second): close connections past their header deadline."""
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
        """Stop serving and close the socket, without waiting for open connections."""
        self.shutdown()
        self.server_close()


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
