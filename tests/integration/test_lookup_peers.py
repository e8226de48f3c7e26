"""A process asking its peers about a customer or a moment, against real sockets: peers down, stopped, proxies."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest

from flows import lookup_peers
from flows.recent import Recent
from flows.serving import Service
from flows.shard_registry import ShardRegistry

CID = "cust-peer-1"


class _Peer(BaseHTTPRequestHandler):
    """A peer process that holds every customer and moment."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.seen.append((self.path, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        body = orjson.dumps({"customer_id": CID, "process": 1, "held": True})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


@pytest.fixture
def peer() -> Iterator[ThreadingHTTPServer]:
    s = ThreadingHTTPServer(("127.0.0.1", 0), _Peer)
    s.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown()
    s.server_close()


def _service(other: str) -> Service:
    return Service(ShardRegistry(), None, peers=("127.0.0.1:1", other), process=0, recent=Recent())


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_peer_that_is_down_makes_the_answer_an_error_not_unknown() -> None:
    service = _service(f"127.0.0.1:{_closed_port()}")
    code, body = service.customer(CID)
    assert code == 502, body
    assert CID not in orjson.dumps(body).decode()
    code, body = service.moment("0" * 32)
    assert code == 502, body


def test_a_stopped_peer_makes_the_answer_a_gateway_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lookup_peers, "PEER_DEADLINE_S", 0.5)
    # A listener that never accepts: the connection completes in the kernel, the request is never answered
    # (a process stopped with SIGSTOP).
    with socket.socket() as stopped:
        stopped.bind(("127.0.0.1", 0))
        stopped.listen(8)
        code, body = _service(f"127.0.0.1:{stopped.getsockname()[1]}").customer(CID)
    assert code == 504, body
    assert CID not in orjson.dumps(body).decode()


def test_peers_are_asked_directly_even_with_a_proxy_configured(monkeypatch: pytest.MonkeyPatch,
                                                               peer: ThreadingHTTPServer) -> None:
    # A proxy that records who connects and never answers: the token and the id must not reach it.
    proxy = socket.socket()
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(8)
    proxy.settimeout(0)
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{proxy.getsockname()[1]}")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    # urllib reads the proxy variables when it builds its default opener, once per process: as a worker started
    # with them set would.
    monkeypatch.setattr(urllib.request, "_opener", None)
    monkeypatch.setattr(lookup_peers, "PEER_DEADLINE_S", 2.0)
    try:
        code, body = _service(f"127.0.0.1:{peer.server_address[1]}").customer(CID, token="s3cret")  # noqa: S106
        assert code == 200, body
        assert peer.seen == [(f"/v1/customers/{CID}?local=1", "Bearer s3cret")]  # type: ignore[attr-defined]
        with pytest.raises(BlockingIOError):
            proxy.accept()  # nobody connected to the proxy
    finally:
        proxy.close()


class _Redirecting(BaseHTTPRequestHandler):
    """A peer address that answers with a redirect (to ``server.target``), and the target, which records callers."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.seen.append((self.path, self.headers.get("Authorization")))  # type: ignore[attr-defined]
        self.send_response(302)
        self.send_header("Location", self.server.target)  # type: ignore[attr-defined]
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


def test_a_peers_redirect_is_not_followed_and_the_token_goes_nowhere_else(peer: ThreadingHTTPServer) -> None:
    """An adversary's: urllib followed a peer's 302 and sent the bearer token to the host it named."""
    redirecting = ThreadingHTTPServer(("127.0.0.1", 0), _Redirecting)
    redirecting.seen = []  # type: ignore[attr-defined]
    redirecting.target = f"http://127.0.0.1:{peer.server_address[1]}/stolen"  # type: ignore[attr-defined]
    threading.Thread(target=redirecting.serve_forever, daemon=True).start()
    try:
        code, body = _service(f"127.0.0.1:{redirecting.server_address[1]}").customer(CID, token="s3cret")  # noqa: S106
        assert code == 502, body
        assert peer.seen == []  # type: ignore[attr-defined]
        assert len(redirecting.seen) == 1  # type: ignore[attr-defined]
    finally:
        redirecting.shutdown()
        redirecting.server_close()


def test_a_cluster_on_one_host_without_http_peers_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from flows.config import PipelineConfig
    from flows.lookup_serve import serve_lookups, stop_lookups

    cfg = PipelineConfig(addresses=("127.0.0.1:7001", "127.0.0.1:7002"), process_id=0, sinks=())
    with caplog.at_level("WARNING", logger="cx.run"):
        serve_lookups(cfg)
        stop_lookups()
    assert any("--http-peers" in r.getMessage() for r in caplog.records), caplog.text
