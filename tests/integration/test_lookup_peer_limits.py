"""A peer that is stopped, hangs or trickles its answer must not lock out a healthy process (issue 17, adversary
pass 2): each call has a deadline for the whole answer, calls waiting on a peer are bounded, failures are logged
sparingly. Real sockets: a fake peer, the endpoint serving look-ups."""

from __future__ import annotations

import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import orjson
import pytest

from flows import http_endpoint, lookup_peers
from flows.http_endpoint import MetricsServer, start_http
from flows.recent import Recent
from flows.serving import Service
from flows.shard_registry import ShardRegistry
from tests.helpers import wait_until

CID = "cust-peer-2"


class _FakePeer:
    """A peer that reads each request, then trickles a 200-byte answer a byte at a time, or hangs, until stopped."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.stop = threading.Event()
        self.requests = 0
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.address = f"127.0.0.1:{self._sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.recv(65536)
                self.requests += 1
                if self.mode == "trickle":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{")
                    while not self.stop.wait(0.3):
                        conn.sendall(b" ")
                else:
                    self.stop.wait(120)
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self._sock.close()


@pytest.fixture
def trickling() -> Iterator[_FakePeer]:
    p = _FakePeer("trickle")
    yield p
    p.close()


@pytest.fixture
def hanging() -> Iterator[_FakePeer]:
    p = _FakePeer("hang")
    yield p
    p.close()


def _service(peer: str) -> Service:
    service = Service(ShardRegistry(), None, peers=("127.0.0.1:1", peer), process=0, recent=Recent())
    service.running = True
    return service


def test_a_peer_trickling_its_answer_is_given_up_at_the_deadline(trickling: _FakePeer) -> None:
    """A per-read timeout was reset by each byte: a look-up waited as long as the peer trickled (minutes)."""
    code, body = _service(trickling.address).customer(CID)
    assert code == 504, body
    assert CID not in orjson.dumps(body).decode()


def _get(port: int, path: str) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}",  # noqa: S310 - loopback
                                 headers={"Authorization": "Bearer tok"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:  # noqa: S310 - loopback
            r.read()
            return int(r.status), dict(r.headers)
    except urllib.error.HTTPError as e:
        return int(e.code), dict(e.headers)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch, hanging: _FakePeer) -> Iterator[tuple[MetricsServer, _FakePeer]]:
    # Long enough that the calls waiting on the hanging peer are still waiting when the test looks.
    monkeypatch.setattr(lookup_peers, "PEER_DEADLINE_S", 120.0)
    server = start_http(0, "127.0.0.1")
    old = http_endpoint.set_service(_service(hanging.address), token="tok")  # noqa: S106
    yield server, hanging
    hanging.stop.set()
    http_endpoint.set_service(old)
    server.stop()


def test_calls_waiting_on_a_hanging_peer_are_bounded_and_the_others_told_to_retry_at_once(
        served: tuple[MetricsServer, _FakePeer]) -> None:
    server, peer = served
    results: list[int] = []

    def ask() -> None:
        results.append(_get(server.port, f"/v1/customers/{CID}")[0])

    waiting = [threading.Thread(target=ask, daemon=True) for _ in range(lookup_peers.PEER_CALLS)]
    for t in waiting:
        t.start()
    wait_until(lambda: peer.requests == lookup_peers.PEER_CALLS, 60, "look-ups to wait on the hanging peer")
    # One more, while they wait: told to retry, at once (not after the peer's deadline).
    code, headers = _get(server.port, f"/v1/customers/{CID}")
    assert code == 503
    assert headers.get("Retry-After")
    assert results == []  # the others still wait on the peer
    assert peer.requests == lookup_peers.PEER_CALLS
    for path in ("/healthz", "/readyz", "/metrics"):
        assert _get(server.port, path)[0] == 200, path
    peer.stop.set()  # the peer closes its connections without an answer
    for t in waiting:
        t.join(120)
    assert results == [502] * lookup_peers.PEER_CALLS


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_peers_failures_are_logged_once_a_minute_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    service = _service(f"127.0.0.1:{_closed_port()}")
    with caplog.at_level("WARNING", logger="cx.serving"):
        for _ in range(20):
            assert service.customer(CID)[0] == 502
    lines = [r.getMessage() for r in caplog.records if "did not answer" in r.getMessage()]
    assert len(lines) == 1, lines
    caplog.clear()
    now = [0.0]
    peers = lookup_peers.Peers(clock=lambda: now[0])
    address = f"127.0.0.1:{_closed_port()}"
    with caplog.at_level("WARNING", logger="cx.serving"):
        for _ in range(5):
            assert peers.ask(address, "/v1/customers/x", None)[0] == 502
        now[0] += lookup_peers.WARN_EVERY_S
        assert peers.ask(address, "/v1/customers/x", None)[0] == 502
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[1].endswith("(4 more since the last such line)"), lines


def test_the_peer_answer_is_read_whole_across_reads() -> None:
    """The answer split over several reads, and a body beyond the headers' first read, is read whole."""
    body = orjson.dumps({"customer_id": CID, "process": 1, "held": True, "pad": "x" * 200_000})
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n" % len(body))
            conn.sendall(b"\r\n" + body[:10])
            conn.sendall(body[10:])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        code, got = lookup_peers.Peers().ask(f"127.0.0.1:{srv.getsockname()[1]}", "/v1/customers/x", None)
    finally:
        t.join(10)
        srv.close()
    assert code == 200
    assert got["pad"] == "x" * 200_000
