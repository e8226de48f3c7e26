"""Run the dataflow in this process: metrics endpoint, status line, Bytewax execution, summary."""

from __future__ import annotations

import _thread
import errno
import fcntl
import gc
import logging
import os
import pickle
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import closing
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

from flows import stopping
from flows.config import ConfigError, PipelineConfig, RunError, redacted_dsn
from flows.dataflow import build_dataflow, check_clickhouse_schema
from flows.operators import SnapshotRestoreError
from flows.sink import flush_all
from flows.stats import STATS
from state.outputs import Outputs
from state.rules import RulePack

if TYPE_CHECKING:
    from bytewax.dataflow import Dataflow

    from flows.http_endpoint import MetricsServer

log = logging.getLogger("cx.run")


def _on_written(pack: RulePack) -> object:
    from flows import accounting

    def on_written(key: str, out: Outputs, now_ms: int) -> None:
        STATS.add(key, out)
        accounting.observe_outputs(key, out, now_ms, pack)

    return on_written


def _status_loop(stop: threading.Event, mode: str, interval_s: float) -> None:
    tty = mode == "tty" or (mode == "auto" and sys.stderr.isatty())
    while not stop.wait(interval_s):
        line = STATS.line()
        if tty:
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
        else:
            log.info("status %s", line)


def summary(cfg: PipelineConfig, pack: RulePack) -> str:
    """Describe what will run (no secrets)."""
    sinks = ", ".join(redacted_dsn(cfg.clickhouse_dsn) if s == "clickhouse" else s for s in cfg.sinks)
    return (
        f"source={cfg.source} sinks=[{sinks}] rules={pack.name}({len(pack.rules)} rules) clock={cfg.clock} "
        f"lateness={cfg.lateness_ms}ms shards={cfg.shards} workers={cfg.workers} "
        f"process={cfg.process_id if cfg.process_id is not None else 'single'} "
        f"metrics_port={cfg.metrics_port} recovery={'on' if cfg.recovery_dir else 'off'}"
    )


def _prepare(cfg: PipelineConfig, pack: RulePack) -> tuple[MetricsServer | None, Dataflow, RecoveryConfig | None]:
    """Start the metrics endpoint, check Kafka, build the dataflow and its recovery configuration."""
    from flows import metrics

    server = None
    if cfg.metrics_port is not None:
        server = _start_metrics(cfg)
        everywhere = server.host in ("0.0.0.0", "::")  # noqa: S104 - compared, not bound
        log.info("metrics on http://%s/metrics%s", _host_port(server.host, server.port),
                 " (every interface)" if everywhere else "")
    log.info("starting: %s", summary(cfg, pack))
    metrics.set_latency_targets(pack)
    # Customer state is millions of small long-lived objects: the default thresholds (700, 10, 10) make the
    # cyclic GC rescan them constantly (measured ~30% of the hot path, benchmarks/RESULTS.md).
    gc.set_threshold(100_000, 50, 1000)
    STATS.live = cfg.live
    if cfg.source == "kafka" or cfg.wants_kafka:
        _check_kafka(cfg)
    if cfg.wants_clickhouse:
        check_clickhouse_schema(cfg)
    flow = build_dataflow(cfg, pack, _on_written(pack))  # type: ignore[arg-type]
    recovery = None
    if cfg.recovery_dir is not None:
        recovery = _recovery_config(cfg.recovery_dir, cfg)
    return server, flow, recovery


def run_pipeline(cfg: PipelineConfig, pack: RulePack) -> int:
    """Run until the input ends (replay) or forever (live); return an exit code."""
    # SIGTERM (Kubernetes, docker stop) ends the input (flows.stopping), or the run like Ctrl-C where that does not
    # end it; buffered outputs are flushed on the way out. Armed before any thread starts: a thread inherits the
    # signal mask of its creator, and one started earlier (the metrics server's) would leave SIGTERM unblocked
    # there, so the kernel could deliver it to that thread instead of the watcher; Python then ran ``_terminate``
    # inside Bytewax's worker loop, which stopped by panicking ("Box<dyn Any>").
    global _STOPPING
    _STOPPING = False
    stopping.reset()
    signal.signal(signal.SIGTERM, _terminate)
    _watch_sigterm()
    try:
        server, flow, recovery = _prepare(cfg, pack)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # not running: the main thread takes SIGTERM again
        raise
    stop = threading.Event()
    status = None
    if cfg.status != "off":
        status = threading.Thread(target=_status_loop, args=(stop, cfg.status, 2.0), daemon=True)
        status.start()
    try:
        cli_main(
            flow,
            workers_per_process=cfg.workers,
            process_id=cfg.process_id,
            addresses=list(cfg.addresses) or None,
            epoch_interval=timedelta(seconds=cfg.snapshot_interval_s),
            recovery_config=recovery,
        )
        if stopping.stop_requested():
            _STOPPING = True
            log.info("stopping on signal; flushing outputs")
    except KeyboardInterrupt:
        _await_workers_stopped(SIGTERM_GRACE_S)
        log.info("stopping on signal; flushing outputs")
    except Exception as e:
        # The interrupt surfaces wrapped when it lands inside a Python step called by Bytewax.
        if not (isinstance(e, BytewaxRuntimeError) and _STOPPING):
            named = _recovery_failure(e, cfg.recovery_dir)
            if named is None:
                raise
            raise named from None
        _await_workers_stopped(SIGTERM_GRACE_S)
        log.info("stopping on signal; flushing outputs")
    finally:
        flush_all()
        stop.set()
        if server is not None:
            server.stop()  # handler threads are daemons: an idle client does not hold the exit
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if status is not None and (cfg.status == "tty" or (cfg.status == "auto" and sys.stderr.isatty())):
            sys.stderr.write("\n")
    print(f"done: {STATS.line(final=True)}", flush=True)
    return 0


KAFKA_SECURITY = "CX_KAFKA_SECURITY_PROTOCOL/CX_KAFKA_SASL_*/CX_KAFKA_SSL_*"


def _check_kafka(cfg: PipelineConfig) -> None:
    """Wait for the broker before Bytewax starts, so that a refused handshake ends the run with one line.

    Inside the dataflow (the source's ``list_parts``) the same error would surface wrapped in Bytewax's errors.
    """
    from connectors.kafka import KafkaHandshakeError, kafka_config, wait_for_broker

    try:
        wait_for_broker(kafka_config(overrides=cfg.kafka_overrides()))
    except KafkaHandshakeError as e:
        raise ConfigError(KAFKA_SECURITY, str(e)) from None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _start_metrics(cfg: PipelineConfig) -> MetricsServer:
    """Start the HTTP endpoint, turning a bind failure into one line naming the setting to change."""
    from flows import http_endpoint

    assert cfg.metrics_port is not None
    try:
        return http_endpoint.start_http(cfg.metrics_port, cfg.http_host)
    except OSError as e:
        fix = "(set --metrics-port or CX_METRICS_PORT, or --no-metrics)"
        if e.errno == errno.EADDRINUSE:
            raise ConfigError(f"--metrics-port {cfg.metrics_port}", f"address already in use {fix}") from None
        if e.errno == errno.EACCES:
            raise ConfigError(f"--metrics-port {cfg.metrics_port}",
                              f"permission denied (ports below 1024 need privileges) {fix}") from None
        # Anything else is the address: not one of this machine's (EADDRNOTAVAIL) or not resolvable (gaierror).
        raise ConfigError(f"--http-host {cfg.http_host}", f"cannot listen there: {e.strerror or e} "
                          "(set --http-host or CX_HTTP_HOST, e.g. 0.0.0.0 or 127.0.0.1)") from None


_STOPPING = False


def _terminate(_signum: int, _frame: object) -> None:
    global _STOPPING
    _STOPPING = True
    raise KeyboardInterrupt


SIGTERM_GRACE_S = 5.0
INPUT_STOP_GRACE_S = 5.0
_TASKS = Path("/proc/self/task")


def _worker_threads() -> int:
    """Count this process's Bytewax worker threads (Timely names them ``timely:work-N``); 0 where unknown."""
    count = 0
    try:
        for task in _TASKS.iterdir():
            try:
                if (task / "comm").read_text().startswith("timely:work"):
                    count += 1
            except OSError:
                continue  # the thread ended while listing
    except OSError:
        return 0
    return count


def _await_workers_stopped(timeout_s: float) -> None:
    """Wait until the worker threads have left the dataflow, so the final flush sees every output.

    On a signal Bytewax returns as soon as it has told the workers to stop; a worker may still be finishing
    the step it was in, and rows it writes after ``flush_all`` would be lost.
    """
    deadline = time.monotonic() + timeout_s
    while _worker_threads() and time.monotonic() < deadline:
        time.sleep(0.01)


_WATCHER: threading.Thread | None = None


def _watch_sigterm() -> None:
    """Take SIGTERM on a thread of its own, so that it ends the process even while Bytewax runs no Python.

    A cluster process waiting for its peers to connect stays inside Bytewax's Rust code, where a Python signal
    handler never gets to run. The watcher ends the input (``flows.stopping``); if the dataflow has not finished
    within ``INPUT_STOP_GRACE_S`` it hands the signal to the main thread (``_terminate``: flush and exit), and
    exits the process itself if the main thread has not taken it within ``SIGTERM_GRACE_S`` more.
    """
    global _WATCHER
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    if _WATCHER is None:  # one per process; it keeps waiting after a run (the main thread then takes SIGTERM)
        _WATCHER = threading.Thread(target=_sigterm_watcher, name="sigterm", daemon=True)
        _WATCHER.start()


def _sigterm_watcher() -> None:
    signal.sigwait({signal.SIGTERM})
    # End the input and give the dataflow a moment to finish. Interrupting Bytewax instead is kept for a dataflow
    # that does not finish: its one-worker loop stops by panicking (a backtrace on stderr), and a cluster process
    # interrupted while it resumes from recovery state could abort ("non-unwinding panic", status 134). A cluster
    # finishes once every process ended its input (each gets the signal from its orchestrator).
    stopping.request_stop()
    deadline = time.monotonic() + INPUT_STOP_GRACE_S
    while time.monotonic() < deadline and not _STOPPING:
        time.sleep(0.05)
    if not _STOPPING:
        _thread.interrupt_main(signal.SIGTERM)
    deadline = time.monotonic() + SIGTERM_GRACE_S
    while time.monotonic() < deadline:
        if _STOPPING:
            return  # the main thread is flushing and exiting
        time.sleep(0.05)
    log.warning("stopping on signal: the dataflow did not respond within %.0f s (waiting for the other processes "
                "of the cluster?); exiting without a flush", INPUT_STOP_GRACE_S + SIGTERM_GRACE_S)
    logging.shutdown()
    os._exit(143)


def _recovery_failure(e: BaseException, directory: Path | None) -> Exception | None:
    """Return an error naming the recovery directory and the problem for a failure of Bytewax's recovery store.

    Bytewax reports them as a Rust panic (a SQLite error without a path) or our snapshot's own exception; None
    when ``e`` is neither.
    """
    if directory is None:
        return None
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for x in chain:
        # Bytewax unpickles each stored snapshot before handing it to our restore: either may find it unusable.
        if isinstance(x, SnapshotRestoreError | pickle.UnpicklingError):
            problem = str(x) if isinstance(x, SnapshotRestoreError) else f"{type(x).__name__}: {x}"
            return ConfigError("--recovery-dir", f"{directory}: a shard snapshot cannot be restored ({problem}); "
                               f"restore the directory from a backup, or remove its part-*.sqlite3* files to start "
                               f"over without state")
    text = str(e)
    if "SqliteFailure" in text or ("database" in text.lower() and "sqlite" in text.lower()):
        problem = text.rsplit("Some(", 1)[-1].rstrip(")").strip('"') if "Some(" in text else text
        return RunError(f"recovery: writing snapshots to {directory} failed: {problem} (is the disk full or "
                        f"read-only?); free space or fix the permissions, then restart: it resumes from the last "
                        f"snapshot")
    return None


_LOCKS: dict[Path, int] = {}
"""Recovery partitions locked by this process (path -> descriptor of the lock file), held for its life."""


def _lock_partition(part: Path) -> None:
    """Take an exclusive lock on a recovery partition, beside it in ``part-<i>.lock``.

    Two processes writing one partition corrupt each other's snapshots and input positions (the second
    resumed from the first's in-flight snapshot). ``flock`` locks are released by the kernel when the
    process dies, so a SIGKILLed worker never leaves a stale lock.

    Raises:
        ConfigError: another process holds the partition (its pid, as it wrote it, is named).
    """
    lock = part.with_suffix(".lock")
    if lock in _LOCKS:
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise ConfigError("--recovery-dir", f"cannot lock {lock}: {e.strerror}") from None
        raise ConfigError("--recovery-dir", f"{part} is in use by another process (pid {holder}): stop it, or give "
                          "this process its own --recovery-dir (or its own -i in a cluster)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[lock] = fd


_BYTEWAX_TABLES = frozenset({"parts", "exs", "fronts", "commits", "snaps"})
"""The tables of a Bytewax 0.21 recovery partition (``src/recovery.rs``)."""


def _check_partitions(directory: Path) -> None:
    """Check every recovery partition in ``directory`` before Bytewax opens it.

    Bytewax reports a corrupt or truncated partition as a Rust panic without the file's name.

    Raises:
        ConfigError: naming the file and the problem, with what to do.
    """
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=30)) as db:
                check = db.execute("PRAGMA quick_check").fetchone()
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                rows = db.execute("SELECT count(*) FROM parts").fetchone() if "parts" in tables else (0,)
        except sqlite3.Error as e:
            if "locked" in str(e) or "busy" in str(e):
                continue  # another process of the cluster is writing it: in use, so not ours to judge
            problem = str(e)
        else:
            missing = sorted(_BYTEWAX_TABLES - tables)
            if check is None or check[0] != "ok":
                problem = f"integrity check failed: {check[0] if check else 'no answer'}"
            elif missing:
                problem = f"not a Bytewax recovery partition (no table {', '.join(missing)})"
            elif not rows[0]:
                problem = "not a Bytewax recovery partition (its parts table is empty)"
            else:
                continue
        raise ConfigError("--recovery-dir", f"{part} is damaged: {problem}; restore it from a backup, or remove "
                          f"{directory}'s part-*.sqlite3* files to start over without state")


def _partition_counts(directory: Path) -> dict[str, int]:
    """Return the cluster size each recovery partition in ``directory`` was created for.

    Read from Bytewax 0.21's ``parts`` table (``part_index``, ``part_count``; ``src/recovery.rs``); files that
    cannot be read are left out and left to Bytewax to judge.
    """
    counts: dict[str, int] = {}
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute("SELECT part_count FROM parts").fetchone()
        except sqlite3.Error:
            continue
        if row is not None:
            counts[part.name] = int(row[0])
    return counts


def _recovery_config(directory: Path, cfg: PipelineConfig) -> RecoveryConfig:
    """Return the recovery configuration, creating this process's recovery partition on its first start.

    Bytewax needs the cluster as a whole to hold every recovery partition; any one process may hold any
    subset (Bytewax 0.21 ``docs/guide/concepts/recovery.md``, "Setup"). Each worker lists the partitions
    in its own ``db_dir`` and worker 0 picks one holder per partition (``calc_primaries`` in
    ``src/timely.rs``); only that copy is read and written. So process ``i`` of ``N`` creates only
    partition ``i`` of ``N``: with one volume per process (a Kubernetes StatefulSet) each volume holds the
    one partition its process writes, and with a directory shared by the processes the set is complete
    too. Creating all ``N`` in every directory left empty copies that Bytewax may pick instead of the
    written one once the worker layout changes (``-w``): the restart then began again from the start of
    the input, or panicked.

    Args:
        directory: ``--recovery-dir``; created if missing.
        cfg: The run configuration (cluster size, this process's id, backup interval).

    Returns:
        Bytewax's recovery configuration for ``directory``.

    Raises:
        ConfigError: The directory holds partitions of a smaller cluster. A process added to it would create a
            partition of the new size, which Bytewax cannot combine with the old ones (it panics without a
            message), so this is refused here with one. Also when another process holds this process's
            partition (``_lock_partition``) or a partition is damaged (``_check_partitions``).
    """
    directory.mkdir(parents=True, exist_ok=True)
    count = max(1, len(cfg.addresses))
    # Locked before it is checked or created, so that two processes never race to create or resume it.
    _lock_partition(directory / f"part-{cfg.process_id or 0}.sqlite3")
    _check_partitions(directory)
    smaller = {name: n for name, n in _partition_counts(directory).items() if n < count}
    if smaller:
        name, n = min(smaller.items())
        raise ConfigError("--recovery-dir", f"{directory / name} belongs to a cluster of {n} process(es), this one "
                          f"has {count}: the number of processes is fixed for the life of the recovery state")
    index = cfg.process_id or 0
    own = directory / f"part-{index}.sqlite3"
    if not own.exists():
        # init_db_dir makes all `count` partitions; keep only ours. Built next to the target and renamed so a
        # process listing a shared directory never opens a half-written file (Bytewax only reads *.sqlite3
        # files directly in the directory, not this staging sub-directory).
        with tempfile.TemporaryDirectory(prefix=".init-", dir=directory) as staging:
            init_db_dir(Path(staging), count)
            os.replace(Path(staging) / own.name, own)
        log.info("created recovery partition %d of %d at %s", index, count, own)
    return RecoveryConfig(str(directory), timedelta(seconds=cfg.backup_interval_s))
