"""Two real `moments run` processes of a replay cluster that disagree on a setting both stop, naming it (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.simulator import simulate, write_jsonl
from tests.cluster_helpers import agree_as_peer
from tests.helpers import wait_until
from tests.kafka_helpers import free_port
from tests.worker import Worker

pytestmark = pytest.mark.slow


def _events(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    write_jsonl(simulate(1_500, 120, seed=5), path, None)
    return path


def _cluster(tmp_path: Path, source: str, extra: list[list[str]], run: str = "run") -> list[Worker]:
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    return [Worker(["--source", source, "--no-metrics", "--status", "off", "--sink", f"jsonl:{tmp_path / f'{run}{i}'}",
                    "-i", str(i), "-a", addrs, *extra[i]], tmp_path / f"{run}{i}.log") for i in range(2)]


def _errors(w: Worker) -> list[str]:
    return [line for line in w.log().splitlines() if "error:" in line]


def _ends_with_one_line(w: Worker, text: str) -> str:
    # Every process stops, none waits for its peer forever: the timeout is the failure.
    assert w.wait(180) == 2, w.log()[-3000:]
    errors = _errors(w)
    assert len(errors) == 1, w.log()[-3000:]
    assert text in errors[0], errors[0]
    assert "Traceback" not in w.log()
    return errors[0]


@pytest.mark.parametrize(("a", "b", "setting", "values"), [
    (["--shards", "64"], ["--shards", "32"], "--shards", ("64", "32")),
    (["-w", "2", "--lateness", "10s"], ["-w", "2"], "--lateness", ("10000ms", "30000ms")),
])
def test_file_cluster_processes_with_different_settings_both_stop_naming_it(
    tmp_path: Path, a: list[str], b: list[str], setting: str, values: tuple[str, str],
) -> None:
    cluster = _cluster(tmp_path, f"file:{_events(tmp_path)}", [a, b])
    for i, w in enumerate(cluster):
        line = _ends_with_one_line(w, f"configuration: {setting}: process {1 - i} of the cluster runs with {setting} "
                                      f"{values[1 - i]}, process {i} with {values[i]}")
        assert f"start every process with the same {setting}" in line


@pytest.mark.parametrize("few", ["1", "3"])
def test_a_process_whose_shards_leave_its_peer_none_still_makes_both_stop(tmp_path: Path, few: str) -> None:
    """With -w 1 and --shards 1 (or 3) process 1 believes process 0 runs no shard, so it would greet nobody there:
    the settings exchange before Bytewax starts stops both (an adversary's reproduction)."""
    cluster = _cluster(tmp_path, f"file:{_events(tmp_path)}", [["--shards", "64"], ["--shards", few]])
    for i, w in enumerate(cluster):
        values = ("64", few)
        _ends_with_one_line(w, f"configuration: --shards: process {1 - i} of the cluster runs with --shards "
                               f"{values[1 - i]}, process {i} with {values[i]}")


def test_simulator_cluster_processes_with_different_seeds_both_stop_naming_it(tmp_path: Path) -> None:
    sim = ["--customers", "800", "--minutes", "60"]
    cluster = _cluster(tmp_path, "simulator", [[*sim, "--seed", "1"], [*sim, "--seed", "2"]])
    for w in cluster:
        _ends_with_one_line(w, "configuration: --source: process")


def test_a_live_simulator_cluster_with_different_settings_stops_every_process(tmp_path: Path) -> None:
    """Live, one process runs the simulator for all: its peer is told before either starts."""
    sim = ["--clock", "live", "--customers", "300", "--minutes", "5"]
    cluster = _cluster(tmp_path, "simulator", [[*sim, "--lateness", "10s"], sim])
    for i, w in enumerate(cluster):
        values = ("10000ms", "30000ms")
        _ends_with_one_line(w, f"configuration: --lateness: process {1 - i} of the cluster runs with --lateness "
                               f"{values[1 - i]}, process {i} with {values[i]}")


def test_a_resumed_cluster_process_with_another_setting_stops_both(tmp_path: Path) -> None:
    """The hello goes out again after a restart: recovery state does not hide a changed setting."""
    source = f"file:{_events(tmp_path)}"
    rec = [["--recovery-dir", str(tmp_path / f"rec{i}")] for i in range(2)]
    first = _cluster(tmp_path, source, rec, "first")
    for w in first:
        assert w.wait(180) == 0, w.log()[-3000:]
    again = _cluster(tmp_path, source, [rec[0], [*rec[1], "--max-customers", "5000"]], "again")
    for w in again:
        _ends_with_one_line(w, "configuration: --max-customers: process")


@pytest.mark.parametrize("workers", [("1", "2"), ("2", "1")])
def test_cluster_processes_with_different_workers_both_stop_naming_workers(tmp_path: Path,
                                                                           workers: tuple[str, str]) -> None:
    """Bytewax does not compare -w: with -w 2 on process 0 and -w 1 on process 1, process 0 hung in 4 of 18 runs."""
    cluster = _cluster(tmp_path, f"file:{_events(tmp_path)}", [["-w", workers[0]], ["-w", workers[1]]])
    for i, w in enumerate(cluster):
        line = _ends_with_one_line(w, f"configuration: -w: process {1 - i} of the cluster runs with -w "
                                      f"{workers[1 - i]}, process {i} with {workers[i]}")
        assert "start every process with the same -w" in line


def test_a_third_process_with_another_setting_stops_the_two_that_agree(tmp_path: Path) -> None:
    """Process 0 judges everyone: a process that agrees with it must not start and wait for one that stopped."""
    addrs = ";".join(f"127.0.0.1:{free_port()}" for _ in range(3))
    source = f"file:{_events(tmp_path)}"
    cluster = [Worker(["--source", source, "--no-metrics", "--status", "off", "--sink", f"jsonl:{tmp_path / f'o{i}'}",
                       "-i", str(i), "-a", addrs, *(["--lateness", "5s"] if i == 2 else [])], tmp_path / f"o{i}.log")
               for i in range(3)]
    _ends_with_one_line(cluster[2], "configuration: --lateness: process 0 of the cluster runs with --lateness "
                                    "30000ms, process 2 with 5000ms")
    _ends_with_one_line(cluster[0], "configuration: --lateness: process 2 of the cluster runs with --lateness 5000ms")
    _ends_with_one_line(cluster[1], "configuration: --lateness: process 0 stops: process 2 of the cluster runs with")


@pytest.mark.parametrize("process", [0, 1])
def test_sigterm_while_waiting_for_the_other_processes_ends_at_once_and_cleanly(tmp_path: Path, process: int) -> None:
    """An orchestrator's SIGTERM to a process whose peers never came: no traceback, status 0, one line saying so."""
    import signal

    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    w = Worker(["--source", f"file:{_events(tmp_path)}", "--no-metrics", "--status", "off", "--sink",
                f"jsonl:{tmp_path / 'out'}", "-i", str(process), "-a", addrs], tmp_path / "alone.log")
    w.wait_log("starting:")
    w.proc.send_signal(signal.SIGTERM)
    assert w.wait(30) == 0, w.log()[-3000:]
    assert "stopping on signal while waiting for the other processes of the cluster" in w.log()
    assert "Traceback" not in w.log()


def test_address_lists_that_differ_in_one_peer_stop_both_instead_of_hanging(tmp_path: Path) -> None:
    """Same length, another address for process 1 in process 1's list: Bytewax waited for ever (an adversary's)."""
    p0, p1, elsewhere = free_port(), free_port(), free_port()
    source = f"file:{_events(tmp_path)}"
    lists = [f"127.0.0.1:{p0};127.0.0.1:{p1}", f"127.0.0.1:{p0};127.0.0.1:{elsewhere}"]
    cluster = [Worker(["--source", source, "--no-metrics", "--status", "off", "--sink", f"jsonl:{tmp_path / f'o{i}'}",
                       "-i", str(i), "-a", lists[i]], tmp_path / f"o{i}.log") for i in range(2)]
    for i, w in enumerate(cluster):
        _ends_with_one_line(w, f"configuration: --addresses: process {1 - i} of the cluster runs with --addresses "
                               f"{lists[1 - i]}, process {i} with {lists[i]}")


def test_a_stranger_on_process_0s_address_while_bytewax_connects_stops_it_with_one_line(tmp_path: Path) -> None:
    """A restarted or duplicate process reaching Bytewax's listener: a traceback, now one line naming -a."""
    import socket

    port = free_port()
    args = ["--source", f"file:{_events(tmp_path)}", "--no-metrics", "--status", "off", "--sink",
            f"jsonl:{tmp_path / 'out'}", "-a", f"127.0.0.1:{port};127.0.0.1:{free_port()}"]
    w = Worker([*args, "-i", "0"], tmp_path / "zero.log")
    try:
        agree_as_peer(args, 1)  # then Bytewax waits for process 1 on the same port
        held: list[socket.socket] = []

        def connected() -> bool:
            try:
                held.append(socket.create_connection(("127.0.0.1", port), timeout=30))
                return True
            except OSError:
                return False

        wait_until(connected, 60, "Bytewax to listen on process 0's address", detail=lambda: w.log()[-3000:])
        with held[0] as s:
            s.sendall(b'{"magic":"cx-moments-preflight-1","process":1}\n')
            _ends_with_one_line(w, "configuration: --addresses: Bytewax could not connect the cluster")
    finally:
        w.stop()


@pytest.mark.parametrize(("addresses", "problem"), [
    ("127.0.0.1:abc;127.0.0.1:5", "'127.0.0.1:abc' is not host:port with a port 1..65535"),
    ("127.0.0.1:99999;127.0.0.1:5", "'127.0.0.1:99999' is not host:port"),
    (":0;127.0.0.1:5", "':0' is not host:port"),
    ("http://x:80;127.0.0.1:5", "'http://x:80' is not host:port"),
])
def test_a_malformed_address_is_refused_before_anything_starts(tmp_path: Path, addresses: str, problem: str) -> None:
    w = Worker(["--source", f"file:{_events(tmp_path)}", "--no-metrics", "--status", "off", "--sink",
                f"jsonl:{tmp_path / 'out'}", "-i", "0", "-a", addresses], tmp_path / "bad.log")
    _ends_with_one_line(w, f"configuration: --addresses: {problem}")


def test_an_address_list_without_a_process_id_is_refused(tmp_path: Path) -> None:
    w = Worker(["--source", f"file:{_events(tmp_path)}", "--no-metrics", "--status", "off", "--sink",
                f"jsonl:{tmp_path / 'out'}", "-a", f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"],
               tmp_path / "noid.log")
    _ends_with_one_line(w, "configuration: --process-id: is required with an --addresses list of 2 processes")
