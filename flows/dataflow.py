"""The only wiring: source → per-shard detection → writers (JSONL, ClickHouse, Kafka) and metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import bytewax.operators as op
import orjson
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source

from connectors.disorder import DisorderHook
from connectors.jsonl import JsonlWriter
from connectors.placement import Placement
from connectors.replay_source import JsonlFileSource, file_partition_names, file_paths
from connectors.simulator_source import SimulatorSource
from flows.config import ConfigError, PipelineConfig, RunError
from flows.operators import detect
from flows.rule_reload import RuleReloader
from flows.sink import PipelineSink, Writer
from flows.stopping import stoppable
from state.batches import Hello
from state.outputs import Outputs
from state.rules import RulePack
from state.shard import Shard, wall_ms
from state.urgent import default_urgent_lateness
from state.versions import PackVersions


def simulator_lines(cfg: PipelineConfig) -> Callable[[], Iterator[bytes]]:
    """Return a factory of the simulator's events as JSON lines (live mode starts at the wall clock)."""
    from connectors.simulator import DEFAULT_START_MS, simulate

    start = wall_ms() if cfg.live else DEFAULT_START_MS
    sim = simulate(cfg.sim_customers, cfg.sim_minutes, cfg.sim_seed, start_ms=start)

    def lines() -> Iterator[bytes]:
        dumps = orjson.dumps
        for ev in sim.events():
            yield dumps(ev)

    return lines


def placement_of(cfg: PipelineConfig) -> Placement:
    """Return this process's place in the configured cluster."""
    return Placement(cfg.process_id or 0, max(1, len(cfg.addresses)), cfg.workers)


def cluster_hello(cfg: PipelineConfig, pack: RulePack, versions: PackVersions | None = None) -> Hello | None:
    """Return this process's cluster handshake: what must be equal in every process for the same moments.

    The same lines must reach the same shards (``--shards``; ``-w`` is Bytewax's own handshake), be read from
    the same input (the file names in order, or the simulation) and be judged alike (the rule pack's
    fingerprint, or that of every version of a ``--rules`` directory with its ``effective_from``, the clock,
    ``--lateness``, live ``--max-future`` and ``--urgent-lateness``, ``--max-customers``). Paths, sinks, ports
    and batch sizes may differ. None outside a cluster. Kafka partitions send none (their batches cross
    processes, and the shard's own ``--shards`` check covers them), but a Kafka process still checks the hello
    of a peer started with another ``--source``.
    """
    if len(cfg.addresses) <= 1:
        return None
    source = cfg.source
    if cfg.source == "simulator":
        source = f"simulator (--customers {cfg.sim_customers} --minutes {cfg.sim_minutes!r} --seed {cfg.sim_seed})"
    elif cfg.source.startswith("file:"):
        source = "file:" + ",".join(p.name for p in file_paths(cfg.source[5:]))
    elif cfg.source == "kafka":
        source = f"kafka (topic {cfg.kafka_topics.get('events', '?')})"
    # Everything the rules decide (types and contact policy too): packs that differ in any of it give other moments.
    fp = PackVersions.of([pack]).full_fingerprint() if versions is None else versions.full_fingerprint()
    settings = [("--shards", str(cfg.shards)), ("--source", source),
                # Not the pack's name: it decides nothing (processes whose packs differ in it alone agree).
                ("--rules", f"fingerprint {fp}"), ("--clock", cfg.clock),
                ("--lateness", f"{cfg.lateness_ms}ms"),
                ("--max-customers", "(no cap)" if cfg.max_customers is None else str(cfg.max_customers))]
    if cfg.live:
        settings.append(("--max-future", f"{cfg.max_future_ms}ms"))
        urgent = (default_urgent_lateness(pack, cfg.lateness_ms) if cfg.urgent_lateness_ms is None
                  else cfg.urgent_lateness_ms)
        settings.append(("--urgent-lateness", f"{urgent}ms"))
    return Hello(cfg.process_id or 0, tuple(settings))


def _disorder_hook(cfg: PipelineConfig) -> DisorderHook | None:
    # Measured only where it is exported: without metrics the sources skip the per-line work.
    if cfg.metrics_port is None:
        return None
    from flows import connector_metrics

    return connector_metrics.disorder_hook()


def _greeted_here(cfg: PipelineConfig, placement: Placement) -> tuple[int, frozenset[int]] | None:
    # A replay cluster's peers each greet this process's first shard (connectors.placement.hello_items).
    if placement.processes == 1 or cfg.live or not (cfg.source.startswith("file:") or cfg.source == "simulator"):
        return None
    own = placement.own_shards(cfg.shards)
    return (min(own), frozenset(range(placement.processes)) - {placement.process}) if own else None


def make_source(cfg: PipelineConfig, pack: RulePack,
                versions: PackVersions | None = None) -> Source:  # type: ignore[type-arg]
    """Build the configured input."""
    if cfg.source.startswith("file:"):
        return JsonlFileSource(file_paths(cfg.source[5:]), cfg.shards, cfg.batch_lines, types=pack.types,
                               placement=placement_of(cfg), max_future_ms=cfg.max_future_ms if cfg.live else None,
                               hello=cluster_hello(cfg, pack, versions), on_disorder=_disorder_hook(cfg))
    if cfg.source == "simulator":
        # Live, each process would start the simulation at its own wall clock: one partition feeds them all.
        return SimulatorSource(simulator_lines(cfg), cfg.shards, cfg.sim_rate, cfg.batch_lines, types=pack.types,
                               placement=None if cfg.live else placement_of(cfg), realtime=cfg.live,
                               max_future_ms=cfg.max_future_ms if cfg.live else None,
                               hello=cluster_hello(cfg, pack, versions), cluster=placement_of(cfg),
                               on_disorder=_disorder_hook(cfg))
    if cfg.source == "kafka":
        from connectors.kafka.config import kafka_config, on_kafka_error
        from connectors.kafka.source import KafkaRawSource
        from flows import connector_metrics

        on_kafka_error(connector_metrics.kafka_error_hook())
        return KafkaRawSource(
            kafka_config(overrides=cfg.kafka_overrides()),
            [cfg.kafka_topics["events"], cfg.kafka_topics["feedback"]],
            cfg.shards,
            create_topics=cfg.kafka_create_topics,
            partitions=cfg.kafka_partitions,
            stop_at_end=cfg.kafka_stop_at_end,
            on_lag=connector_metrics.consumer_lag_hook(),
            on_reset=connector_metrics.record_offset_reset,
            final_tick=cfg.kafka_stop_at_end and not cfg.live,
            types=pack.types,
            feedback_topics=[cfg.kafka_topics["feedback"]],
            ticks=cfg.kafka_stop_at_end and not cfg.live,
            on_disorder=_disorder_hook(cfg),
            live_ticks=cfg.live,
        )
    raise ValueError(f"unknown source {cfg.source!r}")


def replay_partitions(cfg: PipelineConfig) -> Callable[[], frozenset[str]]:
    """Return a function giving the input partitions a shard's watermark waits for.

    Every shard hears every partition's ticks: a cluster's file and simulator partitions feed only their own
    process's shards, but each process reads every file (its partition ticks under the file's name). Live, only
    Kafka's event partitions tick (``Tick.behind``): the wall clock waits until each has reported.
    """
    if cfg.live and cfg.source != "kafka":
        return frozenset
    if cfg.source.startswith("file:"):
        names = frozenset(file_partition_names(file_paths(cfg.source[5:])))
        return lambda: names
    if cfg.source == "simulator":
        return lambda: frozenset({"simulator"})
    if cfg.source == "kafka" and (cfg.kafka_stop_at_end or cfg.live):
        # A replay to the end (every partition then reports, an empty one by its end), or live. Asked when a shard
        # is built: the event topic's partition count, from the broker once per process.
        topic = cfg.kafka_topics["events"]
        known: list[frozenset[str]] = []

        def kafka_partitions() -> frozenset[str]:
            if not known:
                from connectors.kafka.admin import ensure_topics
                from connectors.kafka.config import kafka_config

                counts = ensure_topics(kafka_config(overrides=cfg.kafka_overrides()), [topic],
                                       create=cfg.kafka_create_topics, partitions=cfg.kafka_partitions)
                known.append(frozenset(f"kafka:{topic}[{p}]" for p in range(counts[topic])))
            return known[0]

        return kafka_partitions
    return frozenset


def check_clickhouse_schema(cfg: PipelineConfig) -> None:
    """Create the ClickHouse tables if missing and check their columns, before Bytewax starts.

    Inside the dataflow (each worker's sink) the same error would surface wrapped in Bytewax's errors.

    Raises:
        RunError: naming each table and column that does not fit its record kind.
    """
    from connectors.clickhouse.client import chdb_path, resolve_dsn
    from connectors.clickhouse.schema import SchemaMismatchError
    from connectors.clickhouse.sink import ClickHouseSink

    dsn = resolve_dsn(cfg.clickhouse_dsn, cfg.process_id if cfg.addresses else None)
    path = chdb_path(dsn)
    if path is not None and Path(path).exists() and not Path(path).is_dir():
        # chDB itself answers with a 150-line traceback.
        raise ConfigError("--clickhouse or --sink chdb:///… (CX_CLICKHOUSE_DSN)",
                          f"{path} exists and is not a directory: embedded ClickHouse keeps its data in a directory")
    sink = ClickHouseSink(dsn, background=False)
    try:
        sink.ensure_schema()
    except SchemaMismatchError as e:
        raise RunError(str(e)) from None
    finally:
        sink.close()


def make_writers(cfg: PipelineConfig, worker_index: int) -> Sequence[Writer]:
    """Build one worker's writers for the configured sinks."""
    writers: list[Writer] = [JsonlWriter(d) for d in cfg.jsonl_dirs]
    if cfg.wants_clickhouse:
        from connectors.clickhouse.client import resolve_dsn
        from connectors.clickhouse.sink import ClickHouseSink
        from flows import connector_metrics, http_endpoint

        ch = ClickHouseSink(
            resolve_dsn(cfg.clickhouse_dsn, cfg.process_id if cfg.addresses else None),
            batch_rows=cfg.ch_batch_rows,
            on_retry=connector_metrics.sink_retry_hook("clickhouse"),
            on_write=connector_metrics.sink_write_hook("clickhouse"),
        )
        ch.ensure_schema()
        http_endpoint.register_readiness("clickhouse", ch.writable)
        writers.append(ch)
    if cfg.wants_kafka:
        from connectors.kafka.admin import ensure_topics
        from connectors.kafka.config import kafka_config
        from connectors.kafka.writer import OUTPUT_KINDS, KafkaJsonWriter
        from flows import connector_metrics, http_endpoint

        conf = kafka_config(overrides=cfg.kafka_overrides())
        ensure_topics(conf, [cfg.kafka_topics[k] for k in OUTPUT_KINDS], create=cfg.kafka_create_topics,
                      partitions=cfg.kafka_partitions)
        kw = KafkaJsonWriter(conf, cfg.kafka_topics, on_retry=connector_metrics.sink_retry_hook("kafka"),
                             on_write=connector_metrics.sink_write_hook("kafka"),
                             on_refused=connector_metrics.record_output_refused)
        http_endpoint.register_readiness("kafka", kw.writable)
        writers.append(kw)
    return writers


class _OwnShardsSink(PipelineSink):
    """The pipeline sink with each shard's partition listed only by the process that runs the shard.

    Bytewax sends an item to a worker that lists its sink partition; if every process listed every
    partition, half of all outputs would be pickled across to another process.
    """

    def __init__(self, shards: int, placement: Placement, *args: Any) -> None:
        super().__init__(shards, *args)
        parts = super().list_parts()
        self._own = [p for p in parts if placement.process_of(p) == placement.process]
        # Bytewax picks the partition at part_fn's index in the sorted union of all processes' lists.
        self._index = {p: i for i, p in enumerate(sorted(parts))}

    def list_parts(self) -> list[str]:
        return self._own

    def part_fn(self, item_key: str) -> int:
        return self._index[item_key]


def build_dataflow(
    cfg: PipelineConfig,
    pack: RulePack,
    on_written: Callable[[str, Outputs, int], None],
    *,
    snapshots: bool | None = None,
    versions: PackVersions | None = None,
    reloader: RuleReloader | None = None,
) -> Dataflow:
    """Assemble the dataflow for a configuration.

    Args:
        cfg: Validated configuration.
        pack: Validated rule pack.
        on_written: Called per shard batch once every writer has flushed it.
        snapshots: Pickle shard snapshots every epoch (default: only with recovery).
        versions: The versions of a ``--rules`` directory (``pack`` is the newest); None for ``pack`` alone.
        reloader: Watches that directory while running; the shards install the versions it accepts.

    Returns:
        The dataflow, ready for ``cli_main``.
    """

    partitions = replay_partitions(cfg)

    def make_shard() -> Shard:
        return Shard(
            pack,
            lateness_ms=cfg.lateness_ms,
            live=cfg.live,
            max_future_ms=cfg.max_future_ms,
            max_customers=None if cfg.max_customers is None else max(1, cfg.max_customers // cfg.shards),
            feedback_sources=frozenset({f"kafka:{cfg.kafka_topics['feedback']}"}),
            dead_letter_max_bytes=cfg.dead_letter_max_bytes,
            shards=cfg.shards,
            partitions=partitions(),
            urgent_lateness_ms=(default_urgent_lateness(pack, cfg.lateness_ms) if cfg.urgent_lateness_ms is None
                                else cfg.urgent_lateness_ms),
            versions=versions,
            keep_events=cfg.keeps_events,  # the events table: a moment's evidence events (flows.serving)
        )

    flow = Dataflow("cx_moments")
    # SIGTERM ends the input (flows.stopping).
    source = make_source(cfg, pack) if versions is None else make_source(cfg, pack, versions)  # tests replace it
    raw = op.input("input", flow, stoppable(source))
    placement = placement_of(cfg)
    outs = detect("detect", raw, make_shard, cfg.recovery_dir is not None if snapshots is None else snapshots,
                  cfg.tick_s, cluster_hello(cfg, pack, versions), _greeted_here(cfg, placement), reloader)
    sink = (PipelineSink(cfg.shards, partial(make_writers, cfg), on_written) if placement.processes == 1
            else _OwnShardsSink(cfg.shards, placement, partial(make_writers, cfg), on_written))
    op.output("sinks", outs, sink)
    return flow
