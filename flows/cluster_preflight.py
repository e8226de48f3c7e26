"""The cluster's settings check before Bytewax starts: every process must run with the same ones.

Processes of a cluster that disagree on ``-w`` are not caught by Bytewax: its workers exchange data by index, so
a process with fewer workers leaves the other's waiting (a hang in 4 of 18 runs of an adversary's reproduction)
or panics. Kafka partitions send no in-dataflow handshake (``state.batches.Hello``), so a Kafka cluster with two
``--lateness`` values ran silently. So before Bytewax binds its ports each process says its settings to process
0 over a short TCP exchange on process 0's own cluster address; process 0 compares them all with its own and
answers every process with its settings and the first disagreement found, and only an agreeing cluster starts.

Process 0 closes its listener before answering, so Bytewax can bind the address at once (its peers retry
connecting until it does); each peer closes its connection first, which leaves the TIME_WAIT on the peer's side.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import orjson

from flows import stopping
from flows.config import ConfigError
from flows.dataflow import cluster_hello
from flows.operators import ClusterSettingsError, check_hello
from state.batches import Hello

if TYPE_CHECKING:
    from flows.config import PipelineConfig
    from state.rules import RulePack
    from state.versions import PackVersions

log = logging.getLogger("cx.run")

WAIT_LOG_S = 10.0  # how often a process says whom it is still waiting for
_MAX_LINE = 1 << 20  # settings are a few hundred bytes: a longer line is not a peer of this version
_MAGIC = "cx-moments-preflight-1"


class PreflightError(ConnectionError):
    """The exchange itself failed (a peer that closed or spoke another protocol); names the address."""


class PreflightStoppedError(Exception):
    """A stop was requested (SIGTERM) while this process waited for the others."""


def _never() -> bool:
    return False


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - the cluster address as Bytewax binds it


def _read_line(conn: socket.socket, timeout_s: float | None) -> bytes:
    conn.settimeout(timeout_s)
    buf = bytearray()
    while b"\n" not in buf:
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > _MAX_LINE:
            break
    return bytes(buf.split(b"\n", 1)[0])


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

    ``stop`` is asked about once a second while waiting (SIGTERM ends the wait: ``PreflightStoppedError``).

    Raises:
        ClusterSettingsError: a process runs with another value of a setting (named, with both values).
        PreflightError: the exchange failed (names the address).
    """
    if len(addresses) <= 1:
        return
    if ours.process == 0:
        _collect(addresses, ours, stop)
    else:
        _report(addresses[0], ours, stop)


def _collect(addresses: Sequence[str], ours: Hello, stop: Callable[[], bool]) -> None:
    host, port = _split(addresses[0])
    peers: dict[int, tuple[socket.socket, Hello]] = {}
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        try:
            listener.bind((host, port))
        except OSError as e:
            raise PreflightError(f"cannot listen on {addresses[0]} (this process's -a address): {e.strerror}") from None
        listener.listen(len(addresses) * 2)
        listener.settimeout(1.0)
        said = time.monotonic()
        expected = set(range(1, len(addresses)))
        while expected - peers.keys():
            if stop():
                for conn, _hello in peers.values():
                    conn.close()
                raise PreflightStoppedError
            if time.monotonic() - said >= WAIT_LOG_S:
                said = time.monotonic()
                log.info("waiting for cluster process(es) %s to start",
                         ", ".join(map(str, sorted(expected - peers.keys()))))
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                got = _decode(_read_line(conn, 10.0))
            except OSError:
                got = None
            if got is None or got[0].process not in expected:
                conn.close()  # not a peer of this version (or a second process with one -i): it retries or fails
                continue
            if got[0].process in peers:
                peers[got[0].process][0].close()  # a restarted peer: its newer connection counts
            peers[got[0].process] = (conn, got[0])
    finally:
        listener.close()
    failure: ClusterSettingsError | None = None
    for process in sorted(peers):
        try:
            check_hello(peers[process][1], ours)
        except ClusterSettingsError as e:
            failure = e
            break
    for conn, hello in peers.values():
        try:
            # Each peer is told the first disagreement this process found, seen from the peer's side.
            theirs = None if failure is None else _peer_view(failure, hello, ours)
            conn.sendall(_encode(ours, theirs))
            _read_line(conn, 5.0)  # the peer closes first
        except OSError:
            pass
        finally:
            conn.close()
    if failure is not None:
        raise failure


def _peer_view(failure: ClusterSettingsError, peer: Hello, ours: Hello) -> str:
    try:
        check_hello(ours, peer)
    except ClusterSettingsError as e:
        return f"{e.setting}\t{e}"
    return f"{failure.setting}\tprocess 0 stops: {failure}"


def _answer(conn: socket.socket, stop: Callable[[], bool]) -> bytes:
    conn.settimeout(1.0)
    buf = bytearray()
    while b"\n" not in buf and len(buf) <= _MAX_LINE:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            if stop():
                conn.close()
                raise PreflightStoppedError from None
            continue
        if not chunk:
            break
        buf += chunk
    return bytes(buf.split(b"\n", 1)[0])


def _report(address: str, ours: Hello, stop: Callable[[], bool]) -> None:
    host, port = _split(address)
    said = time.monotonic()
    while True:
        if stop():
            raise PreflightStoppedError
        try:
            conn = socket.create_connection((host, port), timeout=5.0)
        except OSError:
            if time.monotonic() - said >= WAIT_LOG_S:
                said = time.monotonic()
                log.info("waiting for cluster process 0 at %s", address)
            time.sleep(0.2)
            continue
        try:
            conn.sendall(_encode(ours))
            line = _answer(conn, stop)  # process 0 answers once every process has reported
        except OSError:
            conn.close()
            time.sleep(0.2)
            continue
        conn.close()
        got = _decode(line)
        if got is None:
            # Refused (a second process with this -i, or Bytewax already running there): try again.
            time.sleep(0.2)
            if time.monotonic() - said >= WAIT_LOG_S:
                said = time.monotonic()
                log.info("waiting for cluster process 0 at %s", address)
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
    settings = (("--processes", str(len(cfg.addresses))), ("-w", str(cfg.workers)), *hello.settings)
    try:
        agree(cfg.addresses, Hello(hello.process, settings), stopping.stop_requested)
    except ClusterSettingsError as e:
        raise ConfigError(e.setting, str(e)) from None
    except PreflightError as e:
        raise ConfigError("--addresses", str(e)) from None
