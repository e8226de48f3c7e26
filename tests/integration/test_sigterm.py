"""SIGTERM (Kubernetes, docker stop) ends a worker: flushing what it holds, or at once while nothing runs yet."""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from tests.cluster_helpers import agree_as_peer
from tests.helpers import wait_until
from tests.kafka_helpers import free_port
from tests.worker import Worker

pytestmark = pytest.mark.slow


def _listening(port: int) -> bool:
    """Whether some socket on this host listens on TCP ``port`` (read from /proc: connecting would disturb it)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def _status_events(log: str) -> int:
    """The event count of the last status line, 0 before the first."""
    counts = re.findall(r"status events=(\d+)", log)
    return int(counts[-1]) if counts else 0


def test_sigterm_while_waiting_for_cluster_peers_exits_promptly(tmp_path: Path) -> None:
    # Process 0 of a two-process cluster whose process 1 agreed on the settings and then never started Bytewax:
    # Bytewax waits in Rust for the peer, where no Python signal handler runs.
    port = free_port()
    addrs = f"127.0.0.1:{port};127.0.0.1:{free_port()}"
    args = ["--source", "simulator", "--customers", "100", "--sink", f"jsonl:{tmp_path / 'out'}", "--no-metrics",
            "--status", "off", "-a", addrs]
    w = Worker([*args, "-i", "0"], tmp_path / "w.log")
    try:
        agree_as_peer(args, 1)
        # Bytewax listens on process 0's address once it waits for its peers: the signal then lands there.
        wait_until(lambda: _listening(port) or not w.alive(), 60, f"process 0 to listen on port {port}",
                   detail=lambda: w.log()[-3000:])
        assert w.alive(), w.log()[-3000:]
        w.proc.send_signal(signal.SIGTERM)
        # A deadline, not a measured duration: without the watcher it would wait for its peer for ever.
        code = w.wait(60)
    finally:
        w.stop()
    assert code == 143, w.log()[-3000:]
    assert "did not respond" in w.log()


def test_sigterm_on_a_live_worker_flushes_its_outputs_and_exits_cleanly(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # A live simulation runs in real time: 3,000 customers' journeys over two minutes, from the wall clock on.
    w = Worker(["--source", "simulator", "--clock", "live", "--customers", "3000", "--minutes", "2", "--lateness",
                "1s", "--sink", f"jsonl:{out}", "--no-metrics", "--status", "log", "--snapshot-interval", "600"],
               tmp_path / "w.log")
    try:
        # The status line counts events the dataflow has run: signal once more than 20 went through.
        wait_until(lambda: _status_events(w.log()) > 20 or not w.alive(), 60, "a status line with events > 20",
                   detail=lambda: w.log()[-3000:])
        assert w.alive(), w.log()[-3000:]
        w.proc.send_signal(signal.SIGTERM)
        code = w.wait(30)
    finally:
        w.stop()
    assert code == 0, w.log()[-3000:]
    assert "stopping on signal; flushing outputs" in w.log()
    done = re.search(r"done: events=(\d+) .* dead_letters=(\d+) ", w.log())
    assert done, w.log()[-3000:]
    # Events flowed, and none ran ahead of the clock (they would be dead letters: "ts is too far in the future").
    assert int(done.group(1)) > 20, done.group(0)
    assert int(done.group(2)) == 0, done.group(0)


NOISE = ("panicked", "Traceback", "Box<dyn Any>", "stack backtrace")


def test_sigterm_stops_a_running_single_worker_without_a_panic_or_traceback(tmp_path: Path) -> None:
    # Before: Bytewax's one-worker loop stopped by panicking, which printed "thread '<unnamed>' panicked at
    # src/run.rs … Box<dyn Any>" and a backtrace before the clean "flushing outputs / done".
    out = tmp_path / "out"
    w = Worker(["--source", "simulator", "--clock", "live", "--customers", "3000", "--minutes", "2", "--lateness",
                "1s", "--sink", f"jsonl:{out}", "--no-metrics", "--status", "log", "--snapshot-interval", "600"],
               tmp_path / "w.log", env={"RUST_BACKTRACE": "1"})
    try:
        # The status line counts events once the dataflow runs them: the signal lands inside Bytewax's loop.
        deadline = time.monotonic() + 60
        while not re.search(r"status events=[1-9]", w.log()) and w.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert re.search(r"status events=[1-9]", w.log()), w.log()[-3000:]
    except BaseException:
        w.stop()
        raise
    log = _stop_cleanly(w, 60)
    assert re.search(r"done: events=[1-9]", log), log[-3000:]


def _stop_cleanly(w: Worker, timeout_s: float) -> str:
    """SIGTERM the worker; check it flushed and exited 0 without a panic or traceback; return its log."""
    try:
        w.proc.send_signal(signal.SIGTERM)
        code = w.wait(timeout_s)
    finally:
        w.stop()
    log = w.log()
    assert code == 0, log[-3000:]
    assert "stopping on signal; flushing outputs" in log, log[-3000:]
    for noise in NOISE:
        assert noise not in log, log[-3000:]
    return log


def _moment_ids(directory: Path) -> set[str]:
    import orjson

    with (directory / "moments.jsonl").open("rb") as f:
        return {orjson.loads(line)["moment_id"] for line in f}


def test_sigterm_with_recovery_then_restart_gives_the_moments_of_an_uninterrupted_run(tmp_path: Path) -> None:
    # The stop ends the input: Bytewax closes the last epoch (outputs flushed, positions and state committed), so
    # the restart continues exactly there, and a replay's end-of-input release does not fire early.
    sim = ["--source", "simulator", "--customers", "3000", "--minutes", "120", "--seed", "3", "--no-metrics"]
    full = Worker([*sim, "--sink", f"jsonl:{tmp_path / 'full'}", "--status", "off"], tmp_path / "full.log")
    try:
        assert full.wait(300) == 0, full.log()[-3000:]
    finally:
        full.stop()
    total = int(re.search(r"done: events=(\d+)", full.log()).group(1))  # type: ignore[union-attr]
    part = [*sim, "--sink", f"jsonl:{tmp_path / 'part'}", "--snapshot-interval", "1", "--recovery-dir",
            str(tmp_path / "rd")]
    first = Worker([*part, "--rate", "4000", "--status", "log"], tmp_path / "first.log")
    try:
        deadline = time.monotonic() + 60
        while not re.search(r"status events=[1-9]", first.log()) and first.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        first.proc.send_signal(signal.SIGTERM)
        assert first.wait(60) == 0, first.log()[-3000:]
    finally:
        first.stop()
    stopped_at = int(re.search(r"done: events=(\d+)", first.log()).group(1))  # type: ignore[union-attr]
    assert 0 < stopped_at < total, first.log()[-3000:]
    for noise in NOISE:
        assert noise not in first.log(), first.log()[-3000:]
    second = Worker([*part, "--status", "off"], tmp_path / "second.log")
    try:
        assert second.wait(300) == 0, second.log()[-3000:]
    finally:
        second.stop()
    resumed = int(re.search(r"done: events=(\d+)", second.log()).group(1))  # type: ignore[union-attr]
    assert stopped_at + resumed == total  # nothing read twice, nothing skipped
    assert _moment_ids(tmp_path / "part") == _moment_ids(tmp_path / "full")


# The metrics endpoint is on by default, and its server thread used to take SIGTERM in place of the watcher (it was
# started before SIGTERM was blocked): Python then raised inside Bytewax's worker loop, which stopped by panicking.
# These runs keep the endpoint on (a free port) as a deployment does.


def _stop_with_metrics_on(args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
                          idle_clients: int = 0) -> str:
    """Run a worker with the metrics endpoint on, SIGTERM it once events flowed; check a clean, flushed stop.

    ``idle_clients`` connections that sent half a request stay open across the signal.
    """
    import socket

    out = tmp_path / "out"
    port = free_port()
    w = Worker([*args, "--sink", f"jsonl:{out}", "--metrics-port", str(port), "--http-host", "127.0.0.1",
                "--status", "log", "--snapshot-interval", "600"], tmp_path / "w.log",
               env={"RUST_BACKTRACE": "1", **(env or {})})
    clients: list[socket.socket] = []
    try:
        wait_until(lambda: re.search(r"status events=[1-9]", w.log()) or not w.alive(), 90,
                   "a status line with events", detail=lambda: w.log()[-3000:])
        assert w.alive(), w.log()[-3000:]  # still running: the signal lands inside the dataflow
        assert _listening(port), w.log()[-3000:]
        for _ in range(idle_clients):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"GET /metrics HTTP/1.1\r\n")
            clients.append(c)
        w.proc.send_signal(signal.SIGTERM)
        code = w.wait(60)
    finally:
        w.stop()
        for c in clients:
            c.close()
    log = w.log()
    assert code == 0, log[-3000:]
    for noise in NOISE:
        assert noise not in log, log[-3000:]
    assert "stopping on signal; flushing outputs" in log
    done = re.search(r"done: events=(\d+) .* moments=(\d+) ", log)
    assert done, log[-3000:]
    assert int(done.group(1)) > 0, done.group(0)
    # Flushed: every moment the run counted is in the file.
    written = (out / "moments.jsonl").read_bytes().count(b"\n") if (out / "moments.jsonl").exists() else 0
    assert written == int(done.group(2)), (written, done.group(0))
    return log


def test_sigterm_with_the_metrics_endpoint_on_stops_a_live_simulator_cleanly(tmp_path: Path) -> None:
    _stop_with_metrics_on(["--source", "simulator", "--clock", "live", "--customers", "3000", "--minutes", "2",
                           "--lateness", "1s"], tmp_path, idle_clients=50)


def test_sigterm_with_the_metrics_endpoint_on_stops_a_paced_simulator_cleanly(tmp_path: Path) -> None:
    _stop_with_metrics_on(["--source", "simulator", "--customers", "500", "--minutes", "60", "--rate", "50"],
                          tmp_path)


def test_sigterm_with_the_metrics_endpoint_on_stops_a_file_replay_cleanly(tmp_path: Path) -> None:
    import orjson

    from connectors.simulator import simulate

    events = tmp_path / "events.jsonl"
    # ~200k lines: large enough that the replay still runs when the first status line (2 s) shows events.
    with events.open("wb") as f:
        f.writelines(orjson.dumps(e) + b"\n" for e in simulate(20000, 120, seed=5).events())
    _stop_with_metrics_on(["--source", f"file:{events}"], tmp_path)


@pytest.mark.kafka
def test_sigterm_with_the_metrics_endpoint_on_stops_a_live_kafka_worker_cleanly(kafka: str, tmp_path: Path) -> None:
    import orjson

    from connectors.simulator import simulate
    from tests.kafka_helpers import create_topics, produce, unique

    kinds = {"EVENTS": "events", "FEEDBACK": "feedback", "MOMENT": "moments", "ACTION": "actions", "TAG": "tags",
             "CONTEXT": "context", "DEAD_LETTER": "deadletter"}
    names = {k: unique(f"cx.{v}") for k, v in kinds.items()}
    create_topics(kafka, names.values(), partitions=2)
    produce(kafka, names["EVENTS"], [orjson.dumps(e) for e in simulate(300, 30, seed=8).events()])
    _stop_with_metrics_on(["--source", "kafka", "--kafka-bootstrap", kafka, "--lateness", "1s"], tmp_path,
                          env={f"CX_TOPIC_{k}": v for k, v in names.items()})


def test_a_half_sent_metrics_request_does_not_hold_a_thread_past_the_read_timeout() -> None:
    import socket
    import threading

    from flows import http_endpoint

    server = http_endpoint.start_http(0, "127.0.0.1")
    before = threading.active_count()
    clients = []
    try:
        for _ in range(20):
            c = socket.create_connection(("127.0.0.1", server.port))
            c.sendall(b"GET /metrics HTTP/1.1\r\nHost: x")  # and never the end of the headers
            clients.append(c)
        wait_until(lambda: threading.active_count() >= before + 20, 30, "a handler thread per connection")
        # The clients stay connected and silent: only the handler's read timeout ends their threads.
        wait_until(lambda: threading.active_count() <= before, 60,  # the read timeout is 10 s
                   "the handler threads to give up on the silent clients",
                   detail=lambda: f"{threading.active_count()} threads, {before} before")
    finally:
        server.stop()  # returns although the connections are still open
        for c in clients:
            c.close()


def test_sigterm_on_a_two_process_cluster_resuming_from_recovery_exits_cleanly(tmp_path: Path) -> None:
    # Before: SIGTERM interrupted Bytewax's main loop in a cluster process at once; while the processes resumed
    # from their recovery state that sometimes aborted both ("thread caused non-unwinding panic", status 134).
    # It happened in about a third of the stops, so several are tried.
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"

    def start(i: int, name: str) -> Worker:
        return Worker(["--source", "simulator", "--customers", "2000", "--minutes", "60", "--seed", "3",
                       "--no-metrics", "--status", "off", "--recovery-dir", str(tmp_path / "rd"), "--sink",
                       f"jsonl:{tmp_path / f'out{i}'}", "-i", str(i), "-a", addrs], tmp_path / f"{name}-{i}.log")

    first = [start(i, "first") for i in range(2)]
    try:
        assert [w.wait(300) for w in first] == [0, 0], first[0].log()[-3000:] + first[1].log()[-3000:]
    finally:
        for w in first:
            w.stop()
    signalled = 0
    for attempt in range(6):
        cluster = [start(i, f"again{attempt}") for i in range(2)]
        try:
            for w in cluster:
                w.wait_log("starting:", timeout_s=60)
            alive = [w.alive() for w in cluster]
            for w in cluster:
                w.proc.send_signal(signal.SIGTERM)
            codes = [w.wait(60) for w in cluster]
        finally:
            for w in cluster:
                w.stop()
        if not all(alive):
            continue  # one had already finished: the signal did not land in the run
        signalled += 1
        logs = cluster[0].log()[-3000:] + cluster[1].log()[-3000:]
        assert codes == [0, 0], logs
        for w in cluster:
            for noise in (*NOISE, "non-unwinding"):
                assert noise not in w.log(), logs
    assert signalled, "no attempt signalled both processes while they ran"


def _split_traffic(tmp: Path) -> list[Path]:
    """Simulated traffic in two files, the second covering the later stretch of time: the shards hold its events
    until the first file ends, then release them in one long batch."""
    import orjson

    from connectors.simulator import simulate

    lines = [orjson.dumps(e) + b"\n" for e in simulate(3000, 120, seed=3).events()]
    half = len(lines) // 2
    paths = [tmp / "p0.jsonl", tmp / "p1.jsonl"]
    paths[0].write_bytes(b"".join(lines[:half]))
    paths[1].write_bytes(b"".join(lines[half:]))
    return paths


# Every step (a source batch, a shard batch, a sink write) outlasts this grace: a signal during any of them is a
# signal during a "long" batch, whatever the machine's speed.
SHORT_GRACE = "import flows.runner; flows.runner.INPUT_STOP_GRACE_S = 0.2"
# Every shard step also takes 20 ms more, so that the run outlasts several status lines on any machine: a fast
# one used to finish before the signal, and the scenario (a signal inside a running step) did not happen.
SLOW_STEPS = ("import time, flows.operators as o; _step = o.ShardLogic.on_batch; "
              "o.ShardLogic.on_batch = lambda self, v: (time.sleep(0.02), _step(self, v))[1]")


@pytest.mark.parametrize("after", [1, 8_000])  # the first file holds about 15,000 events
def test_sigterm_during_a_long_batch_stops_cleanly_and_a_resume_loses_no_moment(tmp_path: Path, after: int) -> None:
    # Before: the watcher interrupted the main thread after INPUT_STOP_GRACE_S, inside the running step, and
    # Bytewax panicked ("thread '<unnamed>' panicked at src/operators.rs … Box<dyn Any>", ~60 lines) before the
    # clean "stopping on signal", then exited 0.
    paths = _split_traffic(tmp_path)
    source = ["--source", "file:" + ",".join(map(str, paths)), "--no-metrics"]
    full = Worker([*source, "--sink", f"jsonl:{tmp_path / 'full'}", "--status", "off"], tmp_path / "full.log")
    try:
        assert full.wait(600) == 0, full.log()[-3000:]
    finally:
        full.stop()
    expected = _moment_ids(tmp_path / "full")
    total = int(re.search(r"done: events=(\d+)", full.log()).group(1))  # type: ignore[union-attr]
    assert after < total
    part = [*source, "--sink", f"jsonl:{tmp_path / 'part'}", "--recovery-dir", str(tmp_path / "rd"),
            "--snapshot-interval", "1"]
    first = Worker([*part, "--status", "log"], tmp_path / "first.log", env={"RUST_BACKTRACE": "1"},
                   prelude=f"{SHORT_GRACE}; {SLOW_STEPS}")
    try:
        wait_until(lambda: _status_events(first.log()) >= after or not first.alive(), 300,
                   f"a status line with events >= {after}", detail=lambda: first.log()[-3000:])
        assert first.alive(), "the run ended before the signal: " + first.log()[-3000:]
    except BaseException:
        first.stop()
        raise
    log = _stop_cleanly(first, 300)
    stopped_at = int(re.search(r"done: events=(\d+)", log).group(1))  # type: ignore[union-attr]
    assert stopped_at < total, "the first run was not stopped"
    second = Worker([*part, "--status", "off"], tmp_path / "second.log")
    try:
        assert second.wait(600) == 0, second.log()[-3000:]
    finally:
        second.stop()
    assert _moment_ids(tmp_path / "part") == expected
