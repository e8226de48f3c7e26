"""The settings exchange before Bytewax starts (flows.cluster_preflight), with real sockets between threads."""

from __future__ import annotations

import socket
import threading

import pytest

from flows import cluster_preflight
from flows.cluster_preflight import agree
from flows.operators import ClusterSettingsError
from state.batches import Hello
from tests.helpers import wait_until
from tests.kafka_helpers import free_port

SAME = (("-w", "1"), ("--lateness", "30000ms"))


class _Process:
    """One process's side of the exchange, on a thread; ``result`` is None (agreed) or the exception."""

    def __init__(self, addresses: list[str], hello: Hello) -> None:
        self.result: BaseException | None = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(addresses, hello), daemon=True)
        self.thread.start()

    def _run(self, addresses: list[str], hello: Hello) -> None:
        try:
            agree(addresses, hello)
        except BaseException as e:  # noqa: BLE001 - reported to the test
            self.result = e
        finally:
            self.done.set()

    def outcome(self) -> BaseException | None:
        assert self.done.wait(30), "a process of the exchange never returned"
        return self.result


def _addresses(n: int) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(n)]


def _run(addresses: list[str], hellos: list[Hello]) -> list[BaseException | None]:
    procs = [_Process(addresses, h) for h in reversed(hellos)][::-1]  # peers first: they wait for process 0
    return [p.outcome() for p in procs]


def _connect(address: str) -> socket.socket:
    host, port = address.split(":")
    holder: list[socket.socket] = []

    def up() -> bool:
        try:
            holder.append(socket.create_connection((host, int(port)), timeout=5))
            return True
        except OSError:
            return False

    wait_until(up, 30, f"process 0 to listen on {address}")
    return holder[0]


def test_agreeing_processes_all_return_and_process_0s_address_is_free_again() -> None:
    addresses = _addresses(3)
    assert _run(addresses, [Hello(i, SAME) for i in range(3)]) == [None, None, None]
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
    other = (("-w", "1"), ("--lateness", "5000ms"))
    results = _run(_addresses(3), [Hello(0, SAME), Hello(1, SAME), Hello(2, other)])
    assert all(isinstance(e, ClusterSettingsError) for e in results), results
    assert "process 0 stops: process 2 of the cluster runs with --lateness 5000ms" in str(results[1])
    assert str(results[2]).startswith("process 0 of the cluster runs with --lateness 30000ms, process 2 with 5000ms")


def test_a_difference_stops_process_0_without_waiting_for_processes_that_never_come() -> None:
    # Process 2 never starts: the difference process 1 brought is enough to stop both.
    results = _run(_addresses(3), [Hello(0, SAME), Hello(1, (("-w", "2"),))])
    assert all(isinstance(e, ClusterSettingsError) for e in results), results


def test_a_process_that_reports_after_the_difference_is_still_told() -> None:
    # Within LINGER_S of the difference (10 s): it starts right after process 1 has its answer.
    addresses = _addresses(3)
    zero, one = _Process(addresses, Hello(0, SAME)), _Process(addresses, Hello(1, (("-w", "2"),)))
    assert isinstance(one.outcome(), ClusterSettingsError)
    late = _Process(addresses, Hello(2, SAME))
    assert "process 0 stops: process 1 of the cluster runs with -w 2" in str(late.outcome())
    assert isinstance(zero.outcome(), ClusterSettingsError)


def test_a_process_of_another_cluster_size_is_refused_at_once_and_the_rest_runs() -> None:
    addresses = _addresses(2)
    zero = _Process(addresses, Hello(0, (("--processes", "2"),)))
    stray = _Process([*addresses, f"127.0.0.1:{free_port()}"], Hello(2, (("--processes", "3"),)))
    assert str(stray.outcome()).startswith("process 0 of the cluster runs with --processes 2, process 2 with 3")
    assert _Process(addresses, Hello(1, (("--processes", "2"),))).outcome() is None
    assert zero.outcome() is None


def test_a_second_process_with_the_same_id_is_refused_while_the_first_waits() -> None:
    addresses = _addresses(3)
    zero = _Process(addresses, Hello(0, SAME))
    twins = [_Process(addresses, Hello(1, SAME)), _Process(addresses, Hello(1, SAME))]
    # Whichever reported second is refused, at once (process 2 has not come yet): the first still waits.
    wait_until(lambda: any(t.done.is_set() for t in twins), 30, "one of the twins to be answered")
    refused = [t for t in twins if t.done.is_set()]
    assert len(refused) == 1, [t.result for t in twins]
    e = refused[0].outcome()
    assert isinstance(e, ClusterSettingsError), e
    assert e.setting == "-i"
    assert "two processes were started with -i 1" in str(e)
    assert _Process(addresses, Hello(2, SAME)).outcome() is None
    assert [t.outcome() for t in twins if t is not refused[0]] == [None]
    assert zero.outcome() is None


def test_a_peer_that_left_while_waiting_is_dropped_and_its_restart_counted() -> None:
    """A report whose connection closed (a peer killed while waiting) must not start Bytewax without it."""
    addresses = _addresses(3)
    zero = _Process(addresses, Hello(0, SAME))
    gone = _connect(addresses[0])
    gone.sendall(cluster_preflight._encode(Hello(2, SAME)))
    gone.close()  # killed before the others came
    one = _Process(addresses, Hello(1, SAME))
    assert not one.done.wait(1.0)  # still waiting for process 2, whose report was dropped
    two = _Process(addresses, Hello(2, SAME))  # restarted
    assert [zero.outcome(), one.outcome(), two.outcome()] == [None, None, None]


@pytest.fixture
def patient(monkeypatch: pytest.MonkeyPatch) -> None:
    # Strangers are never timed out during the test: the peers must get through while they are still connected.
    monkeypatch.setattr(cluster_preflight, "READ_S", 3600.0)


def test_strangers_that_never_finish_a_line_hold_nobody_up(patient: None) -> None:
    addresses = _addresses(2)
    zero = _Process(addresses, Hello(0, SAME))
    strangers = [_connect(addresses[0]) for _ in range(6)]
    strangers[0].sendall(b"x")  # a trickle
    try:
        assert _Process(addresses, Hello(1, SAME)).outcome() is None
        assert zero.outcome() is None
    finally:
        for s in strangers:
            s.close()


def test_garbage_on_process_0s_address_is_dropped_and_the_peers_still_agree() -> None:
    addresses = _addresses(2)
    zero = _Process(addresses, Hello(0, SAME))
    for payload in (b"GET / HTTP/1.0\r\n\r\n", b"\x00" * 70_000 + b"\n", b'{"magic":"cx-moments-preflight-1"}\n',
                    b"x" * (2 << 20)):
        with _connect(addresses[0]) as s:
            try:
                s.sendall(payload)
                s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == b""  # closed without an answer
            except OSError:
                pass  # closed while the payload was still arriving (reset, broken pipe or not connected by now)
    assert _Process(addresses, Hello(1, SAME)).outcome() is None
    assert zero.outcome() is None


@pytest.mark.parametrize("n", [1, 0])
def test_outside_a_cluster_there_is_nothing_to_exchange(n: int) -> None:
    agree(_addresses(n), Hello(0, ()))
