"""``moments``: run | simulate | produce | report | check-rules | lookup | explain."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from flows.config import (
    DEFAULT_CLICKHOUSE_DSN,
    DEFAULT_HTTP_HOST,
    DEFAULT_METRICS_PORT,
    DEFAULT_TOPICS,
    ConfigError,
    PipelineConfig,
    RunError,
    duration_ms,
    simulation_problem,
)
from flows.logs import setup_logging
from flows.lookup_cli import DEFAULT_URL as DEFAULT_LOOKUP_URL
from flows.lookup_cli import add_lookup_args, cmd_explain, cmd_lookup
from flows.report_cli import cmd_report
from flows.rule_check import cmd_check_rules
from state.rules import RulePackError, load_rule_pack
from state.versions import load_versions

log = logging.getLogger("cx.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")


def _env(name: str, default: str | None = None) -> str | None:
    # Empty is unset, for every variable: CX_RECOVERY_DIR= meant the current directory, CX_RULES= loaded it as packs.
    return os.environ.get(f"CX_{name}") or default


def _int_env(name: str, default: int | None) -> int | None:
    v = _env(name)
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        raise ConfigError(f"CX_{name}", f"must be an integer, got {v!r}") from None


def _off_env(name: str) -> bool:
    """Whether ``CX_<name>`` turns a feature off (``off``/``0``/``false``/``no``); unset or empty leaves it on."""
    v = (_env(name) or "").strip().lower()
    if v in ("", "on", "1", "true", "yes"):
        return False
    if v in ("off", "0", "false", "no"):
        return True
    raise ConfigError(f"CX_{name}", f"must be on or off, got {_env(name)!r}")


def _float_env(name: str, default: float) -> float:
    v = _env(name)
    if v is None:
        return default
    try:
        return float(v)
    except ValueError:
        raise ConfigError(f"CX_{name}", f"must be a number, got {v!r}") from None


def _add_sim_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--customers", type=int, default=5_000, help="simulated customers (default 5000)")
    p.add_argument("--minutes", type=float, default=180.0, help="simulated event-time minutes (default 180)")
    p.add_argument("--seed", type=int, default=7, help="simulator seed (default 7)")


def build_parser() -> argparse.ArgumentParser:
    """Return the CLI's argument parser."""
    parser = argparse.ArgumentParser(prog="moments", description="Real-time customer-experience moments on Bytewax.")
    parser.add_argument("--log-level", default=_env("LOG_LEVEL", "info"), choices=LOG_LEVELS)
    parser.add_argument("--log-format", default=_env("LOG_FORMAT", "text"), choices=LOG_FORMATS)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline (default: simulator → embedded ClickHouse)")
    run.add_argument("--source", default=_env("SOURCE", "simulator"), help="simulator | file:PATH[,PATH] | kafka")
    run.add_argument(
        "--sink", action="append", default=None,
        help="jsonl:DIR | clickhouse | chdb:///PATH | http(s)://… | kafka | none; repeatable (default: clickhouse)",
    )
    run.add_argument("--clickhouse", default=_env("CLICKHOUSE_DSN", DEFAULT_CLICKHOUSE_DSN), help="ClickHouse DSN")
    run.add_argument("--rules", type=Path, default=_env("RULES"),
                     help="rule pack TOML, or a directory of versioned pack files (default: built-in pack)")
    run.add_argument("--clock", choices=["replay", "live"], default=_env("CLOCK"),
                     help="event-time clock (default: live for kafka, replay otherwise)")
    run.add_argument("--lateness", default=_env("LATENESS", "30s"), help="allowed lateness (default 30s)")
    run.add_argument("--urgent-lateness", default=_env("URGENT_LATENESS", "auto"),
                     help="live: how long events that may fire an urgent rule wait for stragglers (default auto: "
                          "half the smallest latency target below --lateness, 5s for P1 = 10s; 0: off)")
    run.add_argument("--max-future", default=_env("MAX_FUTURE", "1h"), help="live mode: reject events further ahead")
    run.add_argument("-w", "--workers", type=int, default=_int_env("WORKERS", 1), help="worker threads per process")
    run.add_argument("-i", "--process-id", type=int, default=_int_env("PROCESS_ID", None), help="this process's id")
    run.add_argument("-a", "--addresses", default=_env("ADDRESSES"),
                     help="all processes' host:port, ';' or ',' separated")
    run.add_argument("--processes", type=int, default=_int_env("PROCESSES", None),
                     help="cluster size; checked against --addresses")
    run.add_argument("--shards", type=int, default=_int_env("SHARDS", 64), help="state shards (fixed per deployment)")
    run.add_argument("--metrics-port", type=int, default=_int_env("METRICS_PORT", DEFAULT_METRICS_PORT))
    run.add_argument("--http-host", default=_env("HTTP_HOST", DEFAULT_HTTP_HOST),
                     help="address /metrics, /healthz, /readyz bind to (default 0.0.0.0: every interface; "
                          "127.0.0.1: this machine only)")
    run.add_argument("--http-peers", default=_env("HTTP_PEERS"),
                     help="cluster: every process's look-up API host:port, ';' or ',' separated, in process order "
                          "(default: each --addresses host with this --metrics-port)")
    run.add_argument("--no-metrics", action="store_true", help="do not serve /metrics")
    run.add_argument("--recovery-dir", type=Path, default=_env("RECOVERY_DIR"), help="enable Bytewax recovery here")
    run.add_argument("--snapshot-interval", type=float, default=_float_env("SNAPSHOT_INTERVAL", 10.0),
                     help="seconds per epoch/snapshot (default 10)")
    run.add_argument("--max-customers", type=int, default=_int_env("MAX_CUSTOMERS", None),
                     help="cap on tracked customers per process (oldest shed first)")
    run.add_argument("--rate", type=float, default=None, help="simulator: events per second (default: unpaced)")
    run.add_argument("--kafka-bootstrap", default=_env("KAFKA_BOOTSTRAP_SERVERS"), help="Kafka bootstrap servers")
    run.add_argument("--no-create-topics", action="store_true", help="fail if Kafka topics are missing")
    run.add_argument("--kafka-partitions", type=int, default=_int_env("TOPIC_PARTITIONS", 4),
                     help="partitions for topics created at start-up")
    run.add_argument("--kafka-stop-at-end", action="store_true",
                     help="stop when every input partition reaches its end (backfills, tests)")
    run.add_argument("--dead-letter-max-bytes", type=int, default=_int_env("DEAD_LETTER_MAX_BYTES", 16384),
                     help="original bytes a dead letter keeps; longer inputs are cut, with length and hash (16384)")
    run.add_argument("--no-events-table", action="store_true",
                     default=_off_env("EVENTS_TABLE"),
                     help="do not store the input events in ClickHouse (moments are then explained by event ids only)")
    run.add_argument("--tick", type=float, default=1.0, help="live mode: seconds between wall-clock watermark ticks")
    run.add_argument("--status", choices=["auto", "tty", "log", "off"], default=_env("STATUS", "auto"))
    _add_sim_args(run)

    sim = sub.add_parser("simulate", help="write simulated events (and ground truth) to JSONL")
    _add_sim_args(sim)
    sim.add_argument("-o", "--output", type=Path, required=True, help="events JSONL")
    sim.add_argument("--truth", type=Path, default=None, help="ground-truth moments JSONL")
    sim.add_argument("--rules", type=Path, default=None,
                     help="rule pack file whose moments the ground truth lists, generic rules included (default pack)")

    prod = sub.add_parser("produce", help="send a JSONL file or the simulator's events to the input topic")
    prod.add_argument("--input", default="simulator", help="PATH.jsonl or simulator")
    prod.add_argument("--topic", default=_env("TOPIC_EVENTS", "cx.events"))
    prod.add_argument("--truth", type=Path, default=None, help="simulator: also write its ground truth here")
    prod.add_argument("--rate", type=float, default=None, help="messages per second (default: as fast as possible)")
    prod.add_argument("--kafka-bootstrap", default=_env("KAFKA_BOOTSTRAP_SERVERS"))
    _add_sim_args(prod)

    rep = sub.add_parser("report", help="moments by rule and drop-off per key step, or rule effectiveness")
    rep.add_argument("view", nargs="?", choices=["overview", "rules"], default="overview",
                     help="overview: moments by rule, funnels (default); rules: sent vs control uplift per rule")
    rep.add_argument("--clickhouse", default=_env("CLICKHOUSE_DSN", DEFAULT_CLICKHOUSE_DSN))
    rep.add_argument("--journey", default=None, help="journey for the funnel (default: all)")
    rep.add_argument("--rules", type=Path, default=_env("RULES"), help="rule pack (key steps, effect defaults)")
    rep.add_argument("--html", type=Path, default=None, help="also write an HTML page with charts here")
    rep.add_argument("--from", dest="from_", default=None,
                     help="rules: moments due at or after (ISO date/datetime, UTC unless an offset; or epoch ms)")
    rep.add_argument("--to", default=None, help="rules: moments due before this (exclusive; same forms)")
    rep.add_argument("--json", action="store_true", help="rules: print JSON instead of a table")
    rep.add_argument("--min-sample", type=int, default=None,
                     help="rules: sent and control moments needed for a verdict (default: rule pack, else 200)")
    rep.add_argument("--confidence", type=float, default=None,
                     help="rules: confidence level of the uplift interval (default: rule pack, else 0.95)")
    rep.add_argument("--min-uplift", type=float, default=None,
                     help="rules: smallest uplift worth the contacts, a fraction; credibly below it means retire "
                          "(default: rule pack, else 0)")
    rep.add_argument("--url", default=_env("LOOKUP_URL", DEFAULT_LOOKUP_URL),
                     help="while a worker holds the embedded --clickhouse path, ask it at this HTTP endpoint "
                          f"(default {DEFAULT_LOOKUP_URL}; CX_HTTP_TOKEN is sent as the bearer token when set)")

    look = sub.add_parser("lookup", help="what a running worker knows of a customer: journeys, tags, moments")
    look.add_argument("customer_id")
    add_lookup_args(look)
    expl = sub.add_parser("explain", help="why a moment fired: rule, evidence events, steps, contact decision")
    expl.add_argument("moment_id")
    add_lookup_args(expl)

    chk = sub.add_parser("check-rules", help="validate a rule pack, or a directory of versions, and summarise it")
    chk.add_argument("path", type=Path, nargs="?", default=None)
    chk.add_argument("--simulate", action="store_true",
                     help="also replay the simulator through the pack: per rule fired, sent, control, suppressed by "
                          "reason; flags rules that never fire or never act")
    chk.add_argument("--strict", action="store_true", help="with --simulate: exit 1 when a rule is flagged")
    chk.add_argument("--customers", type=int, default=2_000, help="--simulate: simulated customers (default 2000)")
    chk.add_argument("--minutes", type=float, default=240.0, help="--simulate: event-time minutes (default 240)")
    chk.add_argument("--seed", type=int, default=7, help="--simulate: simulator seed (default 7)")
    return parser


def topics_from_env() -> dict[str, str]:
    """Topic names: the defaults, each overridable by ``CX_TOPIC_<KIND>`` (e.g. ``CX_TOPIC_MOMENT``)."""
    return {k: _env(f"TOPIC_{k.upper()}", v) or v for k, v in DEFAULT_TOPICS.items()}


def config_from_args(a: argparse.Namespace) -> PipelineConfig:
    """Build and validate the run configuration."""
    sinks: list[str] = []
    dsn = a.clickhouse
    for s in a.sink or (_env("SINKS", "clickhouse") or "clickhouse").split(","):
        s = s.strip()
        if not s:
            raise ConfigError("--sink (CX_SINKS)", "has an empty entry; name a sink, or none for no outputs")
        if s.startswith(("chdb://", "http://", "https://")):
            dsn = s
            sinks.append("clickhouse")
        elif s and s != "none":
            sinks.append(s)
    clock = a.clock or ("live" if a.source == "kafka" else "replay")
    addresses = tuple(x for x in (a.addresses or "").replace(",", ";").split(";") if x)
    if a.processes is not None and a.processes != max(1, len(addresses)):
        raise ConfigError("--processes", f"is {a.processes} but --addresses lists {len(addresses)} processes")
    cfg = PipelineConfig(
        source=a.source,
        sinks=tuple(sinks),
        clickhouse_dsn=dsn,
        rules=a.rules,
        clock=clock,
        lateness_ms=duration_ms("--lateness", a.lateness),
        urgent_lateness_ms=None if a.urgent_lateness == "auto" else duration_ms("--urgent-lateness", a.urgent_lateness),
        max_future_ms=duration_ms("--max-future", a.max_future),
        shards=a.shards,
        workers=a.workers,
        process_id=a.process_id,
        addresses=addresses,
        metrics_port=None if a.no_metrics else a.metrics_port,
        http_host=a.http_host,
        http_peers=tuple(x for x in (a.http_peers or "").replace(",", ";").split(";") if x),
        recovery_dir=a.recovery_dir,
        snapshot_interval_s=a.snapshot_interval,
        max_customers=a.max_customers,
        sim_customers=a.customers,
        sim_minutes=a.minutes,
        sim_seed=a.seed,
        sim_rate=a.rate,
        kafka_bootstrap=a.kafka_bootstrap,
        kafka_create_topics=not a.no_create_topics,
        kafka_partitions=a.kafka_partitions,
        kafka_stop_at_end=a.kafka_stop_at_end,
        kafka_topics=topics_from_env(),
        tick_s=a.tick,
        status=a.status,
        dead_letter_max_bytes=a.dead_letter_max_bytes,
        events_table=not a.no_events_table,
    )
    return cfg.validate()


def _progress(verb: str) -> Callable[[int], None]:
    """A progress callback: a rewritten line on a terminal, a log line every ~2 s otherwise."""
    started = time.monotonic()
    last = [0.0]

    def show(n: int) -> None:
        now = time.monotonic()
        if now - last[0] < (0.2 if sys.stderr.isatty() else 2.0):
            return
        last[0] = now
        line = f"{verb} {n:,} events ({n / max(now - started, 1e-9):,.0f}/s)"
        if sys.stderr.isatty():
            sys.stderr.write("\r\x1b[2K" + line)
            sys.stderr.flush()
        else:
            log.info("%s", line)

    return show


def _progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\n")


def cmd_run(a: argparse.Namespace) -> int:
    """``moments run``."""
    from connectors.replay_source import InputFileError
    from flows.runner import run_pipeline

    cfg = config_from_args(a)
    versions = load_versions(cfg.rules)  # a pack file, or a directory of versioned pack files
    try:
        return run_pipeline(cfg, versions.latest, versions)
    except InputFileError as e:
        raise ConfigError("--source", str(e)) from None


def cmd_simulate(a: argparse.Namespace) -> int:
    """``moments simulate``."""
    from connectors.simulator import simulate, write_jsonl

    problem = simulation_problem(a.customers, a.minutes)
    if problem:
        raise ConfigError("--customers/--minutes", problem)
    pack = None
    if a.rules is not None:
        if a.rules.is_dir():
            raise ConfigError("--rules", f"{a.rules}: the simulator takes one pack file, not a directory")
        load_rule_pack(a.rules)  # refuses an invalid pack with file, rule and field
        import tomllib

        pack = tomllib.loads(a.rules.read_text(encoding="utf-8"))
    sim = simulate(a.customers, a.minutes, a.seed, pack=pack)
    n = write_jsonl(sim, a.output, a.truth, progress=_progress("simulated"))
    _progress_done()
    print(f"wrote {n} events to {a.output}" + (f" and ground truth to {a.truth}" if a.truth else ""))
    return 0


def cmd_produce(a: argparse.Namespace) -> int:
    """``moments produce``."""
    import orjson

    from connectors.kafka.config import kafka_config
    from connectors.kafka.errors import KafkaHandshakeError
    from connectors.kafka.produce import produce_jsonl

    conf = kafka_config(overrides={"bootstrap.servers": a.kafka_bootstrap} if a.kafka_bootstrap else None)
    if a.input == "simulator":
        from connectors.simulator import simulate

        sim = simulate(a.customers, a.minutes, a.seed)
        source: object = (orjson.dumps(e) for e in sim.events())
    else:
        source = Path(a.input)
    try:
        n = produce_jsonl(source, a.topic, conf, a.rate, progress=_progress("produced"))  # type: ignore[arg-type]
    except KafkaHandshakeError as e:
        raise ConfigError("CX_KAFKA_SECURITY_PROTOCOL/CX_KAFKA_SASL_*/CX_KAFKA_SSL_*", str(e)) from None
    _progress_done()
    print(f"produced {n} messages to {a.topic}")
    return 0


COMMANDS = {
    "run": cmd_run,
    "simulate": cmd_simulate,
    "produce": cmd_produce,
    "report": cmd_report,
    "check-rules": cmd_check_rules,
    "lookup": cmd_lookup,
    "explain": cmd_explain,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``moments`` console script."""
    try:
        parser = build_parser()  # reads the CX_* defaults: a bad one is a configuration error, not a traceback
    except ConfigError as e:
        print(f"moments: error: {e}", file=sys.stderr)
        return 2
    a = parser.parse_args(argv)
    # Defaults from CX_* variables bypass argparse's choices.
    for opt, value, allowed in (("--log-level (CX_LOG_LEVEL)", a.log_level, LOG_LEVELS),
                                ("--log-format (CX_LOG_FORMAT)", a.log_format, LOG_FORMATS)):
        if value not in allowed:
            print(f"moments: error: configuration: {opt}: must be one of {', '.join(allowed)}, got {value!r}",
                  file=sys.stderr)
            return 2
    setup_logging(a.log_level, a.log_format)
    try:
        return COMMANDS[a.command](a)
    except (ConfigError, RulePackError, FileNotFoundError) as e:
        for line in str(e).splitlines() or [""]:  # a rule pack's problems come one per line
            print(f"moments {a.command}: error: {line}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"moments {a.command}: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`moments report rules | head`): stop quietly, as other command-line tools do.
        # Python would otherwise print a second error flushing stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141


def console() -> NoReturn:
    """The ``moments`` console script: ``main``, then exit without Python's finalization if Bytewax threads remain.

    After a cluster failure (a peer disagreeing on ``-w`` panics Bytewax's communication) a worker thread of this
    process may still be inside the dataflow. At finalization Python ends such a thread the moment it asks for the
    interpreter (``pthread_exit``), and unwinding through Bytewax's Rust frames aborts the process ("FATAL:
    exception not rethrown", exit -6) after the error line was printed. A cluster process whose run failed exits
    at once: other threads of the dataflow (not only its workers) were seen to abort the same way.
    """
    code = main()
    runner = sys.modules.get("flows.runner")  # not imported: no dataflow ran
    if runner is not None and (runner.cluster_failed() or not runner.await_workers_stopped(WORKER_EXIT_GRACE_S)):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


WORKER_EXIT_GRACE_S = 2.0

if __name__ == "__main__":
    console()
