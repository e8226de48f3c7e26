"""Asking another process of the cluster for a look-up (``flows.serving``): one GET, with a deadline for the whole
answer and a bound on the calls waiting on each peer.

A peer stopped (``kill -STOP``) or trickling its answer a byte at a time held each caller's connection for the
socket timeout per read, that is for as long as it trickled: the callers' connections filled the endpoint and
its health probes were refused for minutes. Now a call gets ``PEER_DEADLINE_S`` for everything (connect, request,
headers and body), at most ``PEER_CALLS`` calls wait on one peer (beyond, the look-up is told to retry at once),
and failures are logged once per peer per minute, with a count.

Peers are asked directly over a socket, never through a proxy from ``http_proxy`` & co.: it would see the bearer
token and the customer id, and a proxy cannot reach a peer's loopback or cluster address anyway. Nor is a peer's
redirect followed: the token would go to wherever it points (a redirect is not an answer).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Final
from urllib.parse import urlsplit

import orjson

log = logging.getLogger("cx.serving")

PEER_DEADLINE_S = 5.0  # for a whole call: connect, request, the answer's headers and body
PEER_CALLS = 4  # calls waiting on one peer at once; more are answered 503 at once (the peer is slow or gone)
MAX_ANSWER: Final = 32 << 20  # bytes: a look-up's answer is a few KiB; beyond, it is not a peer's answer
WARN_EVERY_S: Final = 60.0  # a peer's failures are logged once per this long, with the count of the others


class Peers:
    """The calls this process makes to its peers: bounded per peer, each within a deadline, failures logged sparingly.

    Args:
        clock: Monotonic seconds (injectable for tests of the log's rate).
    """

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}
        self._failed: dict[str, tuple[float, int]] = {}  # peer -> (when last logged, failures not logged since)
        self._clock = clock

    def ask(self, peer: str, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
        """GET ``path`` (with ``?local=1``) from ``peer``: ``(status, body)``.

        Returns:
            The peer's status and JSON object (``{}`` unless 200); 502 when it cannot be reached or its answer
            is not a JSON object (or is cut short), 504 when the whole answer does not come within the deadline,
            503 when ``PEER_CALLS`` calls already wait on it.
        """
        with self._lock:
            busy = self._calls.get(peer, 0) >= PEER_CALLS
            if not busy:
                self._calls[peer] = self._calls.get(peer, 0) + 1
        if busy:
            self.failed(peer, "too many look-ups waiting on it")
            return 503, {}
        try:
            return _get(peer, f"{path}?local=1", token)
        except (OSError, ValueError) as e:
            self.failed(peer, type(e).__name__)
            return (504 if isinstance(e, TimeoutError) else 502), {}
        finally:
            with self._lock:
                self._calls[peer] -= 1

    def failed(self, peer: str, reason: str) -> None:
        """Log a failed call to ``peer``: the first, then at most one line per ``WARN_EVERY_S`` with a count."""
        now = self._clock()
        with self._lock:
            last, quiet = self._failed.get(peer, (None, 0))
            if last is not None and now - last < WARN_EVERY_S:
                self._failed[peer] = (last, quiet + 1)
                return
            self._failed[peer] = (now, 0)
        more = f" ({quiet} more since the last such line)" if quiet else ""
        log.warning("peer %s did not answer a look-up: %s%s", peer, reason, more)


def _get(peer: str, target: str, token: str | None) -> tuple[int, dict[str, Any]]:
    """One GET within ``PEER_DEADLINE_S`` in all (TimeoutError past it; ValueError for what is not an answer)."""
    deadline = time.monotonic() + PEER_DEADLINE_S

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the peer's answer did not come within the deadline")
        return remaining

    url = urlsplit(f"http://{peer}")
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    request = f"GET {target} HTTP/1.1\r\nHost: {peer}\r\n{auth}Connection: close\r\n\r\n".encode()
    with socket.create_connection((url.hostname or "", url.port or 80), timeout=left()) as sock:
        sock.settimeout(left())
        sock.sendall(request)
        got = bytearray()
        length: int | None = None
        while True:
            sock.settimeout(left())
            chunk = sock.recv(65536)
            if not chunk:
                break
            got += chunk
            if len(got) > MAX_ANSWER:
                raise ValueError("the answer is too large")
            head, sep, body = got.partition(b"\r\n\r\n")
            if sep and length is None:
                length = _content_length(bytes(head))
            if sep and length is not None and len(body) >= length:
                break
    head, sep, body = got.partition(b"\r\n\r\n")
    if not sep:
        raise ValueError("the answer was cut short")
    status = head.split(b"\r\n", 1)[0].split(b" ")
    if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
        raise ValueError("not an HTTP answer")
    code = int(status[1])
    if code != 200:
        return code, {}  # an error, or a redirect (not followed)
    length = _content_length(bytes(head))
    if length is not None and len(body) < length:
        raise ValueError("the answer was cut short")
    parsed = orjson.loads(bytes(body[:length] if length is not None else body))
    if not isinstance(parsed, dict):
        raise ValueError("not a JSON object")  # not a peer's answer
    return code, parsed


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            if not value.strip().isdigit():
                raise ValueError("a bad Content-Length")
            return int(value.strip())
    return None
