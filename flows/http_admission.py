"""The HTTP endpoint's connections (``flows.http_endpoint``): the cap, the deadlines, and the look-ups' share.

Each connection is a thread and a descriptor: unbounded, idle clients exhausted the process's descriptors (chDB
then failed with EMFILE and the worker died). So at most ``MAX_CONNECTIONS`` are open, and none is held by a
client that does not play its part: a request's line and headers get ``HEADER_DEADLINE_S`` in all, an answer
``WRITE_DEADLINE_S`` to be taken by the client (it is not read: pipelined requests never read filled the cap, each
connection "answering" for ever). At the cap a new client closes the connection that has waited longest on its
client (for a request, or for an answer to be read), a connection silent past ``SILENT_GRACE_S`` first: a
flood of connections that send nothing closes each other, not a scrape waiting for its answer. ``/v1/`` look-ups
may be answered on at most ``MAX_CONNECTIONS - V1_RESERVE`` connections at once (the rest answer 503 at once):
however look-up clients misbehave, connections remain for ``/metrics``, ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Final

# A client that connects and then sends nothing, or trickles a byte at a time (each resets a per-read timeout):
# a request's line and headers (and a kept-alive connection's wait for its next request) get this long in all.
HEADER_DEADLINE_S = 10.0
# An answer the client does not take within this long closes the connection (a per-write timeout would be reset
# by a client reading a little at a time).
WRITE_DEADLINE_S = 5.0
MAX_CONNECTIONS = 64
# Connections kept from /v1/ look-ups for scrapes and probes: look-ups are answered on at most 64 - 8 at once.
V1_RESERVE = 8
# A client sends its request within milliseconds of connecting: one silent for longer is closed first for a new one
# (and an answer untaken for longer, next), before a scrape or probe that is being answered.
SILENT_GRACE_S = 0.5
# Connections closed for a new client but not yet gone: beyond the cap by this many, new clients are refused.
_EVICT_SLACK = 16

_WAITING: Final = 0  # for a request's line and headers, until the deadline
_ANSWERING: Final = 1  # its request is read: no deadline, nor eviction, while the answer is made
_WRITING: Final = 2  # its answer is being taken by the client, until the deadline
_CLOSING: Final = 3  # shut down, its thread not yet gone
_QUEUED: Final = 4  # a scrape waiting for the registry's shared encoding: no work of its own lost if closed


class _Conn:
    __slots__ = ("deadline", "served", "since", "sock", "state")

    def __init__(self, sock: socket.socket, state: int, since: float, deadline: float) -> None:
        self.sock, self.state, self.since, self.deadline = sock, state, since, deadline
        self.served = False  # has written an answer: an idle kept-alive connection, not one yet to send its request

    def eviction_order(self, now: float) -> tuple[int, float]:
        """Closed first for a new client, oldest first within each: silent past the grace (never sent a request),
        an answer untaken past the grace, idle after an answer, new (within the grace), a queued scrape, an answer
        being taken (within the grace).

        Ranked by what the connection waits for: silent ones ranked after a queued scrape let a flood of them
        (more than 64 in the 10 s header deadline) close every scrape before its answer.
        """
        state = self.state
        late = now - self.since > SILENT_GRACE_S
        if state == _WAITING:
            return (2 if self.served else 0 if late else 3), self.since
        if state == _WRITING:
            return (1 if late else 5), self.since
        return 4, self.since  # _QUEUED


class Connections:
    """The open connections, each waiting for a request, answering one, or writing the answer (with a deadline).

    A watchdog (``expire``) closes those past their deadline; at the cap a new client closes the connection that
    has waited longest on its client, in the order of ``_Conn.eviction_order`` (a probe admitted under load is not
    closed before its thread reads its request unless younger ones are all that is left), so a scrape or probe is
    admitted and answered while clients misbehave; only when every connection is answering is a new one refused.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # by id(socket): not the descriptor, which a new connection may reuse at once
        self._open: dict[int, _Conn] = {}
        self._v1 = 0

    def admit(self, sock: socket.socket) -> bool:
        """Whether to serve a new connection (making room if needed); False: close it at once."""
        from flows.metrics import HTTP_DROPPED

        now = time.monotonic()
        with self._lock:
            if len(self._open) >= MAX_CONNECTIONS:
                on_client = [(c.eviction_order(now), k) for k, c in self._open.items()
                             if c.state in (_WAITING, _WRITING, _QUEUED)]
                if not on_client or len(self._open) >= MAX_CONNECTIONS + _EVICT_SLACK:
                    HTTP_DROPPED.labels("full").inc()
                    return False
                _, k = min(on_client)
                self._close(k)
                HTTP_DROPPED.labels("evicted").inc()
            self._open[id(sock)] = _Conn(sock, _WAITING, now, now + HEADER_DEADLINE_S)
            return True

    def _mark(self, sock: socket.socket, state: int, within: float) -> None:
        now = time.monotonic()
        with self._lock:
            c = self._open.get(id(sock))
            if c is not None and c.state != _CLOSING:
                c.state, c.since, c.deadline = state, now, now + within
                c.served = c.served or state == _WRITING

    def waiting(self, sock: socket.socket) -> None:
        """The connection waits for a request's line and headers, from now until the deadline."""
        self._mark(sock, _WAITING, HEADER_DEADLINE_S)

    def answering(self, sock: socket.socket) -> None:
        """The connection's request is read: no deadline, nor eviction, while it is answered."""
        self._mark(sock, _ANSWERING, 0.0)

    def queued(self, sock: socket.socket) -> None:
        """The connection's scrape waits for the registry's encoding (shared with others): it may be closed."""
        self._mark(sock, _QUEUED, 0.0)

    def writing(self, sock: socket.socket) -> None:
        """The connection's answer is being written: the client must take it before the write deadline."""
        self._mark(sock, _WRITING, WRITE_DEADLINE_S)

    def gone(self, sock: socket.socket) -> None:
        """The connection's thread ended."""
        with self._lock:
            self._open.pop(id(sock), None)

    def enter_v1(self) -> bool:
        """Take one of the look-ups' connections (``MAX_CONNECTIONS - V1_RESERVE``); False: all are answering."""
        with self._lock:
            if self._v1 >= MAX_CONNECTIONS - V1_RESERVE:
                return False
            self._v1 += 1
            return True

    def leave_v1(self) -> None:
        """Give back a look-up's connection (``enter_v1``)."""
        with self._lock:
            self._v1 -= 1

    def expire(self) -> None:
        """Close the connections past their deadline: headers not sent, or an answer not taken, in time."""
        from flows.metrics import HTTP_DROPPED

        now = time.monotonic()
        with self._lock:
            late = [(k, c.state) for k, c in self._open.items() if c.state in (_WAITING, _WRITING) and c.deadline < now]
            for k, state in late:
                self._close(k)
                HTTP_DROPPED.labels("deadline" if state == _WAITING else "stalled").inc()

    def close_all(self) -> None:
        """Shut every connection down (the server stops): threads blocked on a client return at once."""
        with self._lock:
            for k in list(self._open):
                if self._open[k].state != _CLOSING:
                    self._close(k)

    def _close(self, key: int) -> None:
        # Shut down, not closed: the handler's thread blocked in a read or a write returns at once and closes it
        # itself; it stays counted until then, marked as closing.
        c = self._open[key]
        c.state = _CLOSING
        try:
            c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
