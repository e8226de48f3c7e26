"""The cluster's settings check before Bytewax starts: every process must run with the same ones.

Processes of a cluster that disagree on ``-w`` are not caught by Bytewax: its workers exchange data by index, so
a process with fewer workers leaves the other's waiting (a hang in 4 of 18 runs of an adversary's reproduction)
or panics. Kafka partitions send no in-dataflow handshake (``state.batches.Hello``), so a Kafka cluster with two
``--lateness`` values ran silently. So before Bytewax binds its ports each process says its settings to process
0 over a short TCP exchange on process 0's own cluster address; process 0 compares each with its own as it
arrives, and answers every process once all agree, or at the first difference (then it also answers latecomers
for up to ``LINGER_S`` before it stops). Only an agreeing cluster starts.

Process 0 reads every connection at once (a stranger that never finishes a line holds nobody up), keeps one
report per process (a second process with the same ``-i`` is refused; a report whose connection closed, a peer
killed while waiting, is dropped before the answer), and closes its listener before answering, so Bytewax can
bind the address at once (its peers retry connecting until it does). Each peer closes its connection first,
which leaves the TIME_WAIT on the peer's side.
"""

from __future__ import annotations

import logging
import selectors
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson

from flows import stopping
from flows.config import ConfigError, split_address
from flows.dataflow import cluster_hello
from flows.operators import ClusterSettingsError, check_hello
from state.batches import Hello

if TYPE_CHECKING:
    from flows.config import PipelineConfig
    from state.rules import RulePack
    from state.versions import PackVersions

log = logging.getLogger("cx.run")

WAIT_LOG_S = 10.0  # how often a process says whom it is still waiting for
READ_S = 10.0  # a connection must send its whole line within this
LINGER_S = 10.0  # after a difference, process 0 still answers processes that report late
_MAX_LINE = 1 << 20  # settings are a few hundred bytes: a longer line is not a peer of this version
_MAGIC = "cx-moments-preflight-1"


class PreflightError(ConnectionError):
    """The exchange itself failed (this process's address cannot be bound); names the address."""


class PreflightStoppedError(Exception):
    """A stop was requested (SIGTERM) while this process waited for the others."""


def _never() -> bool:
    return False


def _encode(hello: Hello, failure: str | None = None) -> bytes:
    return orjson.dumps({"magic": _MAGIC, "process": hello.process, "settings": [list(s) for s in hello.settings],
                         "failure": failure}) + b"\n"


def _decode(line: bytes) -> tuple[Hello, str | None] | None:
    try:
        msg = orjson.loads(line)
        if not isinstance(msg, dict) or msg.get("magic") != _MAGIC:
            return None
        settings = tuple((str(k), str(v)) for k, v in msg["settings"])
        failure = msg.get("failure")
        return Hello(int(msg["process"]), settings), (str(failure) if failure is not None else None)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def agree(addresses: Sequence[str], ours: Hello, stop: Callable[[], bool] = _never) -> None:
    """Exchange settings with every process of the cluster; return when all agree.

    ``stop`` is asked about twice a second while waiting (SIGTERM ends the wait: ``PreflightStoppedError``).

    Raises:
        ClusterSettingsError: a process runs with another value of a setting (named, with both values).
        PreflightError: this process cannot listen on its address.
    """
    if len(addresses) <= 1:
        return
    if ours.process == 0:
        _Collector(addresses, ours, stop).run()
    else:
        _report(addresses[0], ours, stop)


def _closed(conn: socket.socket) -> bool:
    # A peer sends nothing after its line until it has read the answer: readable now means closed (or reset).
    try:
        conn.setblocking(False)
        return conn.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _difference(peer: Hello, ours: Hello, otherwise: str) -> str:
    """The refusal as the peer should report it (``setting<TAB>text``): its own difference against process 0's
    settings, else ``otherwise``."""
    try:
        check_hello(ours, peer)
    except ClusterSettingsError as e:
        return f"{e.setting}\t{e}"
    return otherwise


class _Collector:
    """Process 0's side: collect every peer's settings, judge them, answer."""

    def __init__(self, addresses: Sequence[str], ours: Hello, stop: Callable[[], bool]) -> None:
        self.addresses, self.ours, self.stop = addresses, ours, stop
        self.expected = set(range(1, len(addresses)))
        self.peers: dict[int, tuple[socket.socket, Hello]] = {}
        self.reading: dict[socket.socket, tuple[bytearray, float]] = {}
        self.failure: ClusterSettingsError | None = None
        self.answered: set[int] = set()
        self.sel = selectors.DefaultSelector()

    def run(self) -> None:
        host, port = split_address(self.addresses[0])
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            try:
                listener.bind((host, port))
            except OSError as e:
                raise PreflightError(f"cannot listen on {self.addresses[0]} (this process's -a address): "
                                     f"{e.strerror or e}") from None
            listener.listen(64)
            listener.setblocking(False)
            self.sel.register(listener, selectors.EVENT_READ, None)
            self._collect(listener)
        finally:
            self.sel.close()
            listener.close()
            for conn in self.reading:
                conn.close()
        self._answer_all()
        if self.failure is not None:
            raise self.failure

    def _collect(self, listener: socket.socket) -> None:
        said = time.monotonic()
        linger_until = None
        while True:
            if self.stop():
                for conn, _hello in self.peers.values():
                    conn.close()
                raise PreflightStoppedError
            now = time.monotonic()
            if self.failure is not None:
                linger_until = linger_until or now + LINGER_S
                self._answer_all()  # those waiting now learn at once; latecomers as they come
                if now >= linger_until or self.expected <= self.answered:
                    return
            elif not self.expected - self.peers.keys():
                for p in [p for p, (c, _h) in self.peers.items() if _closed(c)]:
                    self.peers.pop(p)[0].close()  # it left (killed while waiting): wait for it again
                if not self.expected - self.peers.keys():
                    return
            if self.failure is None and now - said >= WAIT_LOG_S:
                said = now
                log.info("waiting for cluster process(es) %s to report their settings",
                         ", ".join(map(str, sorted(self.expected - self.peers.keys()))))
            for key, _ev in self.sel.select(0.5):
                if key.data is None:
                    self._accept(listener)
                else:
                    self._read(key.fileobj)  # type: ignore[arg-type]
            for conn in [c for c, (_b, deadline) in self.reading.items() if deadline < time.monotonic()]:
                self._drop(conn)  # a stranger that never finished its line

    def _accept(self, listener: socket.socket) -> None:
        try:
            conn, _addr = listener.accept()
        except BlockingIOError:
            return
        conn.setblocking(False)
        self.reading[conn] = (bytearray(), time.monotonic() + READ_S)
        self.sel.register(conn, selectors.EVENT_READ, True)

    def _drop(self, conn: socket.socket) -> None:
        self.sel.unregister(conn)
        self.reading.pop(conn, None)
        conn.close()

    def _read(self, conn: socket.socket) -> None:
        buf, _deadline = self.reading[conn]
        try:
            chunk = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        buf += chunk
        if b"\n" not in buf:
            if not chunk or len(buf) > _MAX_LINE:
                self._drop(conn)  # closed before a whole line, or not a peer of this version
            return
        got = _decode(bytes(buf.split(b"\n", 1)[0]))
        self.sel.unregister(conn)
        del self.reading[conn]
        if got is None:
            conn.close()
            return
        self._judge(conn, got[0])

    def _judge(self, conn: socket.socket, hello: Hello) -> None:
        p = hello.process
        if p not in self.expected:
            # Not a process of this cluster (another -a list, or a second -i 0): its own difference, if any.
            stranger = f"-i\tthere is no process {p} in process 0's -a list"
            self._send(conn, hello, _difference(hello, self.ours, stranger))
            return
        if p in self.peers:
            old = self.peers[p][0]
            if not _closed(old):
                self._send(conn, hello, f"-i\tanother process already reported as process {p} of the cluster: "
                                        f"two processes were started with -i {p}; start each with its own -i")
                return
            old.close()  # the same process, restarted
        try:
            check_hello(hello, self.ours)
        except ClusterSettingsError as e:
            self.failure = self.failure or e
        self.peers[p] = (conn, hello)

    def _send(self, conn: socket.socket, hello: Hello, failure: str | None) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(5.0)
            conn.sendall(_encode(self.ours, failure))
            conn.recv(1)  # the peer closes first
        except OSError:
            pass
        finally:
            conn.close()

    def _answer_all(self) -> None:
        for p in list(self.peers):
            conn, hello = self.peers.pop(p)
            self.answered.add(p)
            failure = self.failure
            self._send(conn, hello, None if failure is None else
                       _difference(hello, self.ours, f"{failure.setting}\tprocess 0 stops: {failure}"))


def _answer(conn: socket.socket, address: str, stop: Callable[[], bool]) -> bytes:
    conn.settimeout(0.5)
    buf = bytearray()
    said = time.monotonic()
    while b"\n" not in buf and len(buf) <= _MAX_LINE:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            if stop():
                conn.close()
                raise PreflightStoppedError from None
            if time.monotonic() - said >= WAIT_LOG_S:
                said = time.monotonic()
                log.info("waiting for cluster process 0 at %s to hear from every process", address)
            continue
        if not chunk:
            break
        buf += chunk
    return bytes(buf.split(b"\n", 1)[0])


def _report(address: str, ours: Hello, stop: Callable[[], bool]) -> None:
    host, port = split_address(address)
    said = time.monotonic()
    while True:
        if stop():
            raise PreflightStoppedError
        if time.monotonic() - said >= WAIT_LOG_S:
            said = time.monotonic()
            log.info("waiting for cluster process 0 at %s", address)
        try:
            conn = socket.create_connection((host, port), timeout=5.0)
        except OSError:
            time.sleep(0.2)
            continue
        try:
            conn.sendall(_encode(ours))
            line = _answer(conn, address, stop)
        except OSError:
            line = b""
        finally:
            conn.close()
        got = _decode(line)
        if got is None:
            time.sleep(0.2)  # process 0 dropped this report (it restarted, or judged it gone): report again
            continue
        hello, failure = got
        if failure is not None:
            setting, _, text = failure.partition("\t")
            raise ClusterSettingsError.from_text(setting, text)
        check_hello(hello, ours)
        return


def check_cluster(cfg: PipelineConfig, pack: RulePack, versions: PackVersions | None = None) -> None:
    """Before Bytewax starts: stop unless every process of the ``-a`` cluster runs with the same settings.

    Raises:
        ConfigError: naming the setting that differs and both values, or the address the exchange failed on.
    """
    hello = cluster_hello(cfg, pack, versions)
    if hello is None:
        return
    settings = (("--processes", str(len(cfg.addresses))), ("--addresses", ";".join(cfg.addresses)),
                ("-w", str(cfg.workers)), *hello.settings)
    try:
        agree(cfg.addresses, Hello(hello.process, settings), stopping.stop_requested)
    except ClusterSettingsError as e:
        raise ConfigError(e.setting, str(e)) from None
    except PreflightError as e:
        raise ConfigError("--addresses", str(e)) from None
