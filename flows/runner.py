"""Run the dataflow in this process: metrics endpoint, status line, Bytewax execution, summary."""

from __future__ import annotations

import _thread
import errno
import gc
import logging
import os
import signal
import sys
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Final

from bytewax.errors import BytewaxRuntimeError
from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main

import state
from connectors.replay_source import file_paths
from flows import stopping
from flows.cluster_preflight import PreflightStoppedError, check_cluster
from flows.config import ConfigError, PipelineConfig, redacted_dsn
from flows.dataflow import build_dataflow, check_clickhouse_schema
from flows.heap import HEAP
from flows.http_token import http_token
from flows.lookup_serve import lookups_running, serve_lookups, stop_lookups
from flows.operators import ClusterSettingsError
from flows.recovery import recovery_config, recovery_failure
from flows.recovery_layout import check_input_files, check_rule_pack, check_shards
from flows.rule_reload import RESULTS, RuleReloader
from flows.sink import flush_all
from flows.stats import STATS
from flows.stopping import await_workers_stopped
from state.outputs import Outputs
from state.routing import ShardCountMismatchError
from state.rules import RulePack
from state.urgent import default_urgent_lateness
from state.versions import PackVersions

if TYPE_CHECKING:
    from bytewax.dataflow import Dataflow

    from flows.http_endpoint import MetricsServer

# Customer state is millions of small long-lived objects: the default thresholds (700, 10, 10) make the cyclic GC
# rescan them constantly (measured ~30% of the hot path, benchmarks/RESULTS.md). What survives a batch is also
# frozen (flows.heap): a young generation of 100,000 state objects took 70-150 ms to collect, the GIL held.
GC_THRESHOLDS: Final = (100_000, 50, 1000)

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
        f"lateness={cfg.lateness_ms}ms{_urgent(cfg, pack)} shards={cfg.shards} workers={cfg.workers} "
        f"process={cfg.process_id if cfg.process_id is not None else 'single'} "
        f"metrics_port={cfg.metrics_port} recovery={'on' if cfg.recovery_dir else 'off'}"
    )


def _urgent(cfg: PipelineConfig, pack: RulePack) -> str:
    if not cfg.live:
        return ""
    ms = default_urgent_lateness(pack, cfg.lateness_ms) if cfg.urgent_lateness_ms is None else cfg.urgent_lateness_ms
    return f" urgent_lateness={ms}ms" if ms else " urgent_lateness=off"


def _prepare(cfg: PipelineConfig, pack: RulePack, versions: PackVersions | None = None) -> tuple[
        MetricsServer | None, Dataflow, RecoveryConfig | None]:
    """Start the metrics endpoint, check Kafka, build the dataflow and its recovery configuration."""
    from flows import metrics

    server = None
    if cfg.metrics_port is not None:
        from flows.recent import max_customers_setting

        http_token(), max_customers_setting()  # the look-up API's settings: refused before anything starts
        serve_lookups(cfg, pack)  # first: the endpoint's first answers already say "starting", not "none here"
        try:
            server = _start_metrics(cfg)
        except BaseException:
            stop_lookups()
            raise
        everywhere = server.host in ("0.0.0.0", "::")  # noqa: S104 - compared, not bound
        log.info("metrics on http://%s/metrics%s", _host_port(server.host, server.port),
                 " (every interface)" if everywhere else "")
    log.info("starting: %s", summary(cfg, pack))
    # Sources edited since they were compiled run as pure Python: a warning, as the run is slower than it should be.
    log.log(logging.WARNING if state.BUILD.stale else logging.INFO, "%s", state.BUILD.line)
    if versions is not None and len(versions.packs) > 1:
        log.info("rule pack versions in %s: %s", versions.path, versions.describe())
    metrics.set_latency_targets(pack)
    gc.set_threshold(*GC_THRESHOLDS)
    STATS.live = cfg.live
    if cfg.source == "kafka" or cfg.wants_kafka:
        _check_kafka(cfg)
    if cfg.wants_clickhouse:
        check_clickhouse_schema(cfg)
    reloader = None
    if cfg.rules is not None and cfg.rules.is_dir() and versions is not None:
        def judged(result: str) -> None:
            metrics.RULE_PACK_RELOADS.labels(result=result).inc()
            if reloader is not None:
                metrics.set_rule_versions(reloader.current.full_fingerprint())

        reloader = RuleReloader(cfg.rules, versions, cfg.live, judged)
        metrics.set_rule_versions(versions.full_fingerprint())
        for result in RESULTS:
            metrics.RULE_PACK_RELOADS.labels(result=result)  # exported at 0 before any change
        reloader.start()
    flow = build_dataflow(cfg, pack, _on_written(pack), versions=versions,  # type: ignore[arg-type]
                          reloader=reloader)
    recovery = None
    if cfg.recovery_dir is not None:
        recovery = recovery_config(cfg.recovery_dir, cfg)
        check_shards(cfg.recovery_dir, cfg.shards)
        check_rule_pack(cfg.recovery_dir, versions if versions is not None else PackVersions.of([pack]))
        if cfg.source.startswith("file:"):
            check_input_files(cfg.recovery_dir, file_paths(cfg.source[5:]))
    check_cluster(cfg, pack, versions)  # last: a peer waits for this process's settings only once it can run
    return server, flow, recovery


def run_pipeline(cfg: PipelineConfig, pack: RulePack, versions: PackVersions | None = None) -> int:
    """Run until the input ends (replay) or forever (live); return an exit code.

    ``versions``: the versions of a ``--rules`` directory (``pack`` is the newest); None for ``pack`` alone.
    """
    global _CLUSTER_FAILED
    _CLUSTER_FAILED = False
    try:
        return _run_pipeline(cfg, pack, versions)
    except BaseException:
        # A cluster process that failed inside Bytewax: threads of the dataflow may remain (see cluster_failed).
        _CLUSTER_FAILED = len(cfg.addresses) > 1 and _RUN_ENDED.is_set()
        raise


def _run_pipeline(cfg: PipelineConfig, pack: RulePack, versions: PackVersions | None) -> int:
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
    _RUN_ENDED.clear()
    stopping.on_stop_for(lambda: _exit_unless_ended(cfg))
    try:
        server, flow, recovery = _prepare(cfg, pack, versions)
    except PreflightStoppedError:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        _STOPPING = True  # the watcher leaves the exit to this thread
        log.info("stopping on signal while waiting for the other processes of the cluster; nothing was read")
        return 0
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})  # not running: the main thread takes SIGTERM again
        raise
    stop = threading.Event()
    status = None
    if cfg.status != "off":
        status = threading.Thread(target=_status_loop, args=(stop, cfg.status, 2.0), daemon=True)
        status.start()
    lookups_running()
    HEAP.start()
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
            _log_stopping()
    except KeyboardInterrupt:
        await_workers_stopped(SIGTERM_GRACE_S)
        _log_stopping()
    except Exception as e:
        # The interrupt surfaces wrapped when it lands inside a Python step called by Bytewax.
        if not (isinstance(e, BytewaxRuntimeError) and _STOPPING):
            named = _cluster_mismatch(e, cfg) or recovery_failure(e, cfg.recovery_dir)
            if named is None:
                raise
            raise named from None
        await_workers_stopped(SIGTERM_GRACE_S)
        _log_stopping()
    except BaseException as e:
        # Bytewax's Rust panics (pyo3's PanicException) are BaseExceptions: in a cluster, a peer that failed or
        # disagrees on -w ends the run with "Send/Recv thread panic", which names no cause.
        named = _cluster_mismatch(e, cfg) if type(e).__name__ == "PanicException" else None
        if named is None:
            raise
        raise named from None
    finally:
        _RUN_ENDED.set()
        HEAP.stop()
        flush_all()
        stop.set()
        if server is not None:
            server.stop()  # handler threads are daemons: an idle client does not hold the exit
        stop_lookups()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        if status is not None and (cfg.status == "tty" or (cfg.status == "auto" and sys.stderr.isatty())):
            sys.stderr.write("\n")
        stopping.on_stop_for(None)
    failed = stopping.failure()
    if failed is not None:
        named = _cluster_mismatch(failed, cfg)
        raise named if named is not None else failed
    print(f"done: {STATS.line(final=True)}", flush=True)
    return 0


def _log_stopping() -> None:
    if stopping.failure() is None:
        log.info("stopping on signal; flushing outputs")
    else:
        log.info("stopping: %s; flushing outputs", stopping.failure())


KAFKA_SECURITY = "CX_KAFKA_SECURITY_PROTOCOL/CX_KAFKA_SASL_*/CX_KAFKA_SSL_*"


def _cluster_mismatch(e: BaseException, cfg: PipelineConfig) -> Exception | None:
    """Return a one-line error for a cluster whose processes disagree, else None.

    A disagreement a shard of this process found (``--shards`` from a Kafka batch, or any setting of the
    file/simulator handshake) is named with both values, even when Bytewax's own failure surfaced first (a
    peer that stopped on the same finding closed its connection). Otherwise a Bytewax panic in a cluster means
    a peer failed or the processes disagree on ``-w``, which Bytewax does not check.
    """
    found = stopping.failure()
    cur: BaseException | None = e
    for _ in range(10):
        if cur is None:
            break
        if isinstance(cur, (ShardCountMismatchError, ClusterSettingsError)):
            found = cur
            break
        cur = cur.__cause__ or cur.__context__
    if isinstance(found, ClusterSettingsError):
        return ConfigError(found.setting, str(found))
    if found is not None:
        return ConfigError("--shards", str(found))
    if len(cfg.addresses) > 1 and "failed to initialize networking" in str(e):
        cause = str(e).rsplit("failed to initialize networking:", 1)[-1].strip().splitlines()[0]
        return ConfigError("--addresses", f"Bytewax could not connect the cluster ({cause}): something other than "
                           f"a peer of this run (a process restarted or started twice, or another program) "
                           f"connected to this process's -a address as it started; restart every process")
    if len(cfg.addresses) > 1 and type(e).__name__ == "PanicException":
        return ConfigError("--workers/-w", f"cluster processes disagree on -w or a peer failed: {e} (give every "
                           f"process of the -a list the same -w (and --processes); if they agree, see the other "
                           f"processes' logs for the failure)")
    return None


def _check_kafka(cfg: PipelineConfig) -> None:
    """Wait for the broker before Bytewax starts, so that a refused handshake ends the run with one line.

    Inside the dataflow (the source's ``list_parts``) the same error would surface wrapped in Bytewax's errors.
    """
    from connectors.kafka.admin import wait_for_broker
    from connectors.kafka.config import kafka_config
    from connectors.kafka.errors import KafkaHandshakeError

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
_RUN_ENDED = threading.Event()
_CLUSTER_FAILED = False


def cluster_failed() -> bool:
    """Whether the last run of a cluster process ended in an error (``flows.cli.console`` exits at once then)."""
    return _CLUSTER_FAILED
STOP_FOR_GRACE_S = 10.0


def _exit_unless_ended(cfg: PipelineConfig) -> None:
    """After a shard stopped the run (``stopping.stop_for``), exit 2 naming why if Bytewax has not returned soon.

    A peer that did not hear of the difference (a live simulator's partition runs in one process only) keeps the
    cluster running, and a process stays inside Bytewax until every peer's input ended: an interrupt
    (``_terminate``) does not get it out. Exiting closes its connections, so the peer fails too (Bytewax's
    "Send thread panic", named by ``_cluster_mismatch``).
    """

    def wait_then_exit() -> None:
        if _RUN_ENDED.wait(STOP_FOR_GRACE_S):
            return
        failed = stopping.failure()
        named = _cluster_mismatch(failed, cfg) if failed is not None else None
        # As ``flows.cli`` prints a ConfigError: there is no way back to it from here.
        print(f"moments run: error: {named or failed}", file=sys.stderr, flush=True)
        log.warning("stopping: the cluster did not finish within %.0f s; exiting without a flush", STOP_FOR_GRACE_S)
        logging.shutdown()
        os._exit(2)

    threading.Thread(target=wait_then_exit, name="stop-for", daemon=True).start()


def _terminate(_signum: int, _frame: object) -> None:
    global _STOPPING
    _STOPPING = True
    raise KeyboardInterrupt


SIGTERM_GRACE_S = 5.0
INPUT_STOP_GRACE_S = 5.0
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
    # A step still running (a long shard batch) is waited for: interrupting it is what made Bytewax panic.
    if not stopping.wait_for_end(lambda: _STOPPING, _run_pipeline.__code__, INPUT_STOP_GRACE_S):
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
