"""The HTTP endpoint's admission against real sockets: clients that never read their answers, or read them a
little at a time, and look-up clients holding connections, must not lock out /metrics, /healthz and /readyz."""

from __future__ import annotations

import fcntl
import http.client
import socket
import struct
import termios
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from flows import http_admission, http_endpoint
from flows.http_endpoint import MetricsServer, start_http
from flows.recent import Recent
from flows.serving import Service
from flows.shard_registry import ShardRegistry
from tests.helpers import wait_until

CAP = 8  # the cap scaled down from 64, so that a test opens few connections; the behaviour is the same


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[MetricsServer]:
    monkeypatch.setattr(http_admission, "MAX_CONNECTIONS", CAP)
    monkeypatch.setattr(http_admission, "V1_RESERVE", 2)
    s = start_http(0, "127.0.0.1")
    yield s
    s.stop()


def _pending(sock: socket.socket) -> int:
    """Bytes received on ``sock`` and not yet read."""
    return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0])


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closed (or reset) the connection: reading what is left ends in end of file or fails."""
    sock.settimeout(0)
    try:
        while sock.recv(1 << 20):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,  # noqa: S310 - loopback
                                 headers={"Authorization": "Bearer tok"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
        return int(r.status), r.read(), dict(r.headers)


def _never_reading(port: int, path: bytes, requests: int = 200) -> socket.socket:
    """The adversary's client: a small receive buffer, ``requests`` pipelined requests, never a read."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path * requests)
    return s


def test_clients_that_never_read_their_answers_do_not_lock_out_health_and_metrics(server: MetricsServer) -> None:
    """An adversary's (issue 17): 70 such clients held all 64 connections "answering", and probes were refused."""
    clients = [_never_reading(server.port, b"/metrics") for _ in range(CAP + 4)]
    try:
        # Every connection the server holds is stuck on a client that does not read: its answers fill the buffers.
        wait_until(lambda: len(server.connections._open) >= CAP
                   and sum(_pending(c) > 0 for c in clients) >= CAP, 60,
                   "the clients that never read to fill the connections")
        for path in ("/healthz", "/readyz", "/metrics"):
            assert _get(server.port, path)[0] == 200, path
        # An answer the client does not take is given up at the write deadline: the connections are closed.
        wait_until(lambda: all(_closed_by_server(c) for c in clients), 60,
                   "the server to close the connections whose answers are not read")
    finally:
        for c in clients:
            c.close()


def test_an_answer_read_a_little_at_a_time_is_given_up_at_the_write_deadline(
        server: MetricsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A per-write timeout is reset by each read: a client reading 1 KiB at a time held its connection for hours."""
    from flows.metrics import REGISTRY

    monkeypatch.setattr(http_admission, "WRITE_DEADLINE_S", 1.0)
    before = REGISTRY.get_sample_value("cx_http_connections_dropped_total", {"reason": "stalled"}) or 0.0
    client = _never_reading(server.port, b"/metrics", 1000)
    stop = threading.Event()

    def trickle() -> None:
        # Reads a little whenever the server has sent something: the server always makes progress.
        while not stop.wait(0.1):
            try:
                client.settimeout(0)
                if not client.recv(1024):
                    return
            except BlockingIOError:
                continue
            except OSError:
                return

    reader = threading.Thread(target=trickle, daemon=True)
    reader.start()
    try:
        # Seen from the server: the client may still be reading what the kernel had queued before the close.
        wait_until(lambda: (REGISTRY.get_sample_value("cx_http_connections_dropped_total", {"reason": "stalled"})
                            or 0.0) > before and not server.connections._open, 120,
                   "the server to close a connection taking its answers slowly")
    finally:
        stop.set()
        client.close()


@pytest.fixture
def blocked(server: MetricsServer) -> Iterator[tuple[MetricsServer, threading.Event, list[int]]]:
    """The server answering look-ups with a service whose customer look-ups wait for ``release``."""
    release = threading.Event()
    entered: list[int] = []

    class _Blocked(Service):
        def customer(self, cid: str, local: bool = False, token: str | None = None) -> tuple[int, dict[str, Any]]:
            entered.append(1)
            release.wait(60)
            return super().customer(cid, local, token)

    service = _Blocked(ShardRegistry(), None, recent=Recent())
    service.running = True
    old = http_endpoint.set_service(service, token="tok")  # noqa: S106
    yield server, release, entered
    release.set()
    http_endpoint.set_service(old)


def test_look_ups_answering_at_once_leave_connections_for_health_and_metrics(
        blocked: tuple[MetricsServer, threading.Event, list[int]]) -> None:
    server, release, entered = blocked
    results: list[int] = []

    def ask() -> None:
        try:
            results.append(_get(server.port, "/v1/customers/c1")[0])
        except urllib.error.HTTPError as e:
            results.append(e.code)

    askers = [threading.Thread(target=ask, daemon=True) for _ in range(CAP)]
    for t in askers:
        t.start()
    # CAP - reserve look-ups are answered at once (they wait); the others are told to retry, at once.
    wait_until(lambda: len(entered) == CAP - 2 and results.count(503) == 2, 60,
               "look-ups to take their share of the connections and the rest to be told to retry")
    for path in ("/healthz", "/readyz", "/metrics"):
        assert _get(server.port, path)[0] == 200, path
    release.set()
    for t in askers:
        t.join(60)
    assert sorted(results) == [404] * (CAP - 2) + [503] * 2


def test_head_is_answered_on_health_and_metrics(server: MetricsServer) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        code, body, headers = _get(server.port, path, "HEAD")
        assert code == 200, path
        assert body == b""
        assert int(headers["Content-Length"]) > 0
    with pytest.raises(urllib.error.HTTPError) as e:
        _get(server.port, "/v1/customers/c1", "HEAD")
    assert e.value.code == 405
    assert e.value.headers["Allow"] == "GET"  # RFC 9110: a 405 names the methods the path takes


def test_a_flood_of_silent_connections_does_not_close_scrapes_being_answered(
        server: MetricsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An adversary's (issue 17): connections that send nothing, opened faster than the cap over the header
    deadline, each closed the oldest scrape waiting for its encoding (ranked before them): /metrics failed."""
    from prometheus_client.exposition import generate_latest

    def slow(registry: Any) -> bytes:  # a large registry's encoding: the scrape waits, queued, meanwhile
        time.sleep(0.2)
        return bytes(generate_latest(registry))

    monkeypatch.setattr(http_endpoint, "choose_encoder", lambda accept: (slow, "text/plain"))
    stop = threading.Event()
    silent: list[socket.socket] = []

    def flood() -> None:  # 50 a second: the cap (8) is full of them within 0.2 s, each evicted 0.16 s old
        while not stop.wait(0.02):
            try:
                silent.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
            except OSError:
                continue

    flooder = threading.Thread(target=flood, daemon=True)
    flooder.start()
    try:
        wait_until(lambda: len(server.connections._open) >= CAP, 60, "the silent connections to fill the cap")
        codes = []
        for _ in range(10):
            try:
                codes.append(_get(server.port, "/metrics")[0])
            except (OSError, http.client.HTTPException) as e:
                codes.append(type(e).__name__)  # type: ignore[arg-type]
        assert codes == [200] * 10
    finally:
        stop.set()
        flooder.join(10)
        for c in silent:
            c.close()


def test_scrapes_at_once_share_an_encoding_started_after_they_arrived(
        server: MetricsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sixty clients pipelining /metrics each encoded the registry: seconds of CPU with every connection busy."""
    from prometheus_client.exposition import generate_latest

    from flows.metrics import HTTP_DROPPED

    started, release = threading.Event(), threading.Event()
    encodings: list[int] = []

    def slow(registry: Any) -> bytes:
        encodings.append(1)
        started.set()
        release.wait(60)
        return bytes(generate_latest(registry))

    monkeypatch.setattr(http_endpoint, "choose_encoder", lambda accept: (slow, "text/plain"))
    bodies: list[bytes] = []
    first = threading.Thread(target=lambda: bodies.append(_get(server.port, "/metrics")[1]), daemon=True)
    first.start()
    assert started.wait(60)
    # Scrapes arriving during that encoding: their counter moved after it started, so they wait for the next one.
    HTTP_DROPPED.labels("probe-test").inc()
    others = [threading.Thread(target=lambda: bodies.append(_get(server.port, "/metrics")[1]), daemon=True)
              for _ in range(CAP - 3)]
    for t in others:
        t.start()
    wait_until(lambda: sum(c.state == http_admission._QUEUED for c in server.connections._open.values()) == CAP - 2, 60,
               "the scrapes to wait for the encoding")
    release.set()
    for t in [first, *others]:
        t.join(60)
    assert len(bodies) == CAP - 2
    # One the first scrape started, one for all those that came during it (a third only if a scrape's thread was
    # held up between being counted as queued above and looking at the encodings: never one per scrape).
    assert 2 <= len(encodings) <= 3, len(encodings)
    assert all(b'reason="probe-test"' in b for b in bodies[1:])
