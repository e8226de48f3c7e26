"""The settings exchange before Bytewax starts (flows.cluster_preflight), with real sockets between threads."""

from __future__ import annotations

import socket
import threading

import pytest

from flows.cluster_preflight import agree
from flows.operators import ClusterSettingsError
from state.batches import Hello
from tests.kafka_helpers import free_port


def _run(addresses: list[str], hellos: list[Hello]) -> list[BaseException | None]:
    results: list[BaseException | None] = [None] * len(hellos)

    def one(i: int) -> None:
        try:
            agree(addresses, hellos[i])
        except BaseException as e:  # noqa: BLE001 - reported to the test
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(len(hellos))]
    for t in reversed(threads):  # peers first: they wait for process 0
        t.start()
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a process of the exchange never returned"
    return results


def _addresses(n: int) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(n)]


def test_agreeing_processes_all_return_and_process_0s_address_is_free_again() -> None:
    addresses = _addresses(3)
    settings = (("-w", "2"), ("--shards", "64"))
    assert _run(addresses, [Hello(i, settings) for i in range(3)]) == [None, None, None]
    host, port = addresses[0].split(":")
    with socket.socket() as s:  # Bytewax binds it next, at once
        s.bind((host, int(port)))


def test_a_difference_stops_both_sides_naming_the_setting_and_both_values() -> None:
    results = _run(_addresses(2), [Hello(0, (("-w", "2"),)), Hello(1, (("-w", "1"),))])
    assert all(isinstance(e, ClusterSettingsError) for e in results), results
    assert str(results[0]).startswith("process 1 of the cluster runs with -w 1, process 0 with 2")
    assert str(results[1]).startswith("process 0 of the cluster runs with -w 2, process 1 with 1")
    assert [e.setting for e in results if isinstance(e, ClusterSettingsError)] == ["-w", "-w"]


def test_a_process_that_agrees_is_stopped_too_when_another_differs() -> None:
    same, other = (("--lateness", "30000ms"),), (("--lateness", "5000ms"),)
    results = _run(_addresses(3), [Hello(0, same), Hello(1, same), Hello(2, other)])
    assert all(isinstance(e, ClusterSettingsError) for e in results), results
    assert "process 0 stops: process 2 of the cluster runs with --lateness 5000ms" in str(results[1])
    assert str(results[2]).startswith("process 0 of the cluster runs with --lateness 30000ms, process 2 with 5000ms")


def test_garbage_on_process_0s_address_is_ignored_and_the_peers_still_agree() -> None:
    addresses = _addresses(2)
    hellos = [Hello(0, (("-w", "1"),)), Hello(1, (("-w", "1"),))]
    results: list[BaseException | None] = [None]
    t = threading.Thread(target=lambda: agree(addresses, hellos[0]), daemon=True)
    t.start()
    host, port = addresses[0].split(":")
    for payload in (b"GET / HTTP/1.0\r\n\r\n", b"\x00" * 70_000 + b"\n", b'{"magic":"cx-moments-preflight-1"}\n'):
        while True:
            try:
                with socket.create_connection((host, int(port)), timeout=5) as s:
                    s.sendall(payload)
                    s.shutdown(socket.SHUT_WR)
                    assert s.recv(100) == b""  # closed without an answer
                break
            except ConnectionRefusedError:
                continue
    try:
        agree(addresses, hellos[1])
    except BaseException as e:  # noqa: BLE001
        results[0] = e
    t.join(30)
    assert not t.is_alive()
    assert results == [None]


@pytest.mark.parametrize("n", [1, 0])
def test_outside_a_cluster_there_is_nothing_to_exchange(n: int) -> None:
    agree(_addresses(n), Hello(0, ()))
