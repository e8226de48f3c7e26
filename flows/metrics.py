"""Prometheus metric definitions (own registry) and the bounded label values they admit.

Metric names are a contract with ``infra/grafana`` and ``infra/prometheus`` (checked by
``tests/unit/test_infra_files.py``). Every label value comes from a bounded set: channels,
event types, reason codes, the rule pack's rule names, urgencies, sink names,
topics. A value outside its set is exported as ``"other"``, so nothing a customer sends (and
never a customer id) can become a label value.

Who sets them: ``flows.accounting`` (once per shard batch), ``flows.connector_metrics`` (sinks, Kafka,
snapshots) and ``flows.http_endpoint`` serves them with /healthz and /readyz.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Metric,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from connectors.records import DEFAULT_TOPICS
from state.events import BASE_TYPES, CHANNELS, InvalidReason
from state.policy import ESCALATED, HOLDOUT
from state.policy import REASONS as POLICY_REASONS
from state.rules import URGENCIES

if TYPE_CHECKING:
    from state.rules import RulePack

OTHER = "other"

# `*_created` series double the series count and no dashboard uses them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)


class _BeforeCollect:
    """Registered first, so every read of the registry (a scrape, ``get_sample_value``) runs ``hooks`` before it
    reads any metric: counts kept in plain ints between reads (``flows.accounting``) are added then, exactly."""

    def __init__(self) -> None:
        self.hooks: list[Callable[[], None]] = []

    def describe(self) -> list[Metric]:  # no series of its own
        return []

    def collect(self) -> list[Metric]:
        for hook in self.hooks:
            hook()
        return []


BEFORE_COLLECT = _BeforeCollect()
REGISTRY.register(BEFORE_COLLECT)
_RUNTIME = (
    ProcessCollector(registry=REGISTRY),  # process_cpu_seconds_total, process_resident_memory_bytes, …
    PlatformCollector(registry=REGISTRY),  # python_info
    GCCollector(registry=REGISTRY),  # python_gc_* (the pipeline tunes the GC thresholds)
)

# Detection latency: resolve 0.1 s (a moment due in the past, published at once) up to the 60 s
# design target and twice that, so p99 > 60 s is still measurable.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120)
LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Disorder: 0 is "in order"; fine around the 30 s default lateness, to an hour.
DISORDER_BUCKETS = (0, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 120, 300, 600, 1800, 3600)
SINK_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SINK_ROWS_BUCKETS = (1, 10, 100, 1000, 5000, 20000, 100000)
SNAPSHOT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_R = REGISTRY
EVENTS = Counter("cx_events_total", "Valid events by channel and type", ["channel", "type"], registry=_R)
INVALID = Counter("cx_invalid_events_total", "Invalid events (dead-lettered) by reason", ["reason"], registry=_R)
LATE = Counter("cx_late_events_total", "Events later than the allowed lateness (state updated, no retraction)",
               registry=_R)
URGENT_EARLY = Counter("cx_urgent_early_events_total", "Live: events applied ahead of the watermark because they "
                       "may fire an urgent rule (with their customer's earlier held events)", registry=_R)
URGENT_REORDERED = Counter("cx_urgent_reordered_events_total", "Live: events that arrived behind their customer's "
                           "early application (applied out of order: live may differ from a replay)", registry=_R)
MOMENTS = Counter("cx_moments_total", "Moments detected by rule and urgency", ["rule", "urgency"], registry=_R)
ACTIONS = Counter("cx_actions_total", "Moments after the contact policy: sent or suppressed (with the reason)",
                  ["rule", "status", "reason"], registry=_R)
RULE_PACK_RELOADS = Counter("cx_rule_pack_reload_total", "Changes of the --rules directory judged while running, by "
                            "result: applied, invalid, too_late (effective_from less than 10 s ahead of the wall "
                            "clock, or behind the watermark), replay (a replay reads the directory once), "
                            "unchanged (the versions in force again, e.g. a refused file removed)", ["result"],
                            registry=_R)
RULE_PACK_VERSIONS = Gauge("cx_rule_pack_versions_info", "1 for the fingerprint of the --rules versions in force in "
                           "this process (processes of a cluster that differ run two rule sets)", ["fingerprint"],
                           registry=_R)


def set_rule_versions(fingerprint: str) -> None:
    """Export the fingerprint of the versions in force (``PackVersions.fingerprint``), replacing the previous one."""
    RULE_PACK_VERSIONS.clear()
    RULE_PACK_VERSIONS.labels(fingerprint=fingerprint).set(1)


TAG_TRANSITIONS = Counter("cx_tag_transitions_total", "Tag transitions by new state", ["state"], registry=_R)
TAGS_OPEN = Gauge("cx_tags_open", "Tags open or actioned, not yet resolved or expired (this process)", registry=_R)
CUSTOMERS = Gauge("cx_customers_tracked", "Customers with state in this process (sum over its shards)", registry=_R)
EVICTED = Counter("cx_customers_evicted_total", "Customers whose idle state was dropped", registry=_R)
LATENCY = Histogram("cx_detection_latency_seconds", "Publish wall time minus moment due time, by rule",
                    ["rule", "urgency"], buckets=LATENCY_BUCKETS, registry=_R)
WITHIN_TARGET = Counter("cx_detection_within_target_total",
                        "Moments published within their urgency's latency target (divide by cx_moments_total)",
                        ["urgency"], registry=_R)
TARGET = Gauge("cx_detection_target_seconds", "Detection latency target per urgency (rule pack)", ["urgency"],
               registry=_R)
EVENT_LAG = Histogram("cx_event_lag_seconds", "Ingest wall time minus event time (newest event of each batch)",
                      buckets=LAG_BUCKETS, registry=_R)
EVENT_DISORDER = Histogram("cx_event_disorder_seconds",
                           "How far behind the newest event time of its input partition each event arrives "
                           "(0: in order); choose --lateness from its upper quantiles", ["input", "partition"],
                           buckets=DISORDER_BUCKETS, registry=_R)
WATERMARK_LAG = Gauge("cx_watermark_lag_seconds", "Wall time at scrape minus the newest shard watermark",
                      registry=_R)
SINK_SECONDS = Histogram("cx_sink_batch_seconds", "Sink batch write time", ["sink"], buckets=SINK_SECONDS_BUCKETS,
                         registry=_R)
SINK_ROWS = Histogram("cx_sink_batch_rows", "Rows per sink batch", ["sink"], buckets=SINK_ROWS_BUCKETS, registry=_R)
SINK_RETRIES = Counter("cx_sink_retries_total", "Sink write retries", ["sink"], registry=_R)
SINK_ERRORS = Counter("cx_sink_errors_total", "Failed sink write attempts (transient ones are retried)", ["sink"],
                      registry=_R)
SINK_UP = Gauge("cx_sink_up", "1 when the sink's last write succeeded", ["sink"], registry=_R)
CONSUMER_LAG = Gauge("cx_kafka_consumer_lag", "Kafka consumer lag (messages)", ["topic", "partition"], registry=_R)
KAFKA_ERRORS = Counter("cx_kafka_errors_total", "Kafka client errors (broker down, transport)", ["client"],
                       registry=_R)
INPUT_UP = Gauge("cx_input_up", "1 when the input is connected", registry=_R)
SNAPSHOT_SECONDS = Histogram("cx_snapshot_seconds", "Time to snapshot one shard", buckets=SNAPSHOT_BUCKETS,
                             registry=_R)
SNAPSHOT_BYTES = Gauge("cx_snapshot_bytes", "Bytes of the last shard snapshot", registry=_R)
GROUPS_DROPPED = Counter("cx_generic_groups_dropped_total", "`per` groups of a generic rule dropped by its "
                         "max_groups cap (a firing may be lost)", ["rule"], registry=_R)
SHED = Counter("cx_customers_shed", "Customers dropped by the --max-customers cap, by whether they had pending "
               "moments (also in cx_customers_evicted_total)", ["pending"], registry=_R)
SHED_MOMENTS = Counter("cx_shed_pending_moments", "Pending moments (abandonments not yet due) dropped with customers "
                       "shed by the --max-customers cap", registry=_R)

_METRICS = (
    EVENTS, INVALID, LATE, MOMENTS, ACTIONS, TAG_TRANSITIONS, TAGS_OPEN, CUSTOMERS, EVICTED, LATENCY, WITHIN_TARGET,
    TARGET, EVENT_LAG, WATERMARK_LAG, SINK_SECONDS, SINK_ROWS, SINK_RETRIES, SINK_ERRORS, SINK_UP, CONSUMER_LAG,
    KAFKA_ERRORS, INPUT_UP, SNAPSHOT_SECONDS, SNAPSHOT_BYTES, GROUPS_DROPPED,
)
_SHED_METRICS = (SHED, SHED_MOMENTS)
OUTPUT_REFUSED = Counter("cx_output_refused_total",
                         "Output records the Kafka broker or client refused for what they are (too large, invalid); "
                         "replaced by an output_refused dead letter, or dropped when that too was refused",
                         ["topic"], registry=_R)
OFFSET_RESETS = Counter("cx_kafka_offset_resets_total",
                        "Input positions outside the partition's offsets (e.g. the broker lost its log), moved per "
                        "auto.offset.reset", ["topic"], registry=_R)
HTTP_DROPPED = Counter("cx_http_connections_dropped_total",
                       "HTTP connections closed by the endpoint's limits: full (refused at the cap), evicted (the "
                       "connection waiting longest on its client, for a new client), deadline (no complete request "
                       "headers in time), stalled (an answer the client did not take in time)",
                       ["reason"], registry=_R)
_METRICS = (*_METRICS, OUTPUT_REFUSED, OFFSET_RESETS, EVENT_DISORDER, RULE_PACK_VERSIONS, HTTP_DROPPED)  # type: ignore[assignment]  # a longer tuple, same use

# Bounded label sets. Rule names and extra event types join when a rule pack is configured.
ACTION_STATUSES = frozenset({"sent", "suppressed", "control"})
ACTION_REASONS = frozenset({"none", HOLDOUT, ESCALATED, *POLICY_REASONS})
TAG_STATES = frozenset({"open", "actioned", "resolved", "expired", "removed"})
SINKS = frozenset({"clickhouse", "kafka", "jsonl"})
KAFKA_CLIENTS = frozenset({"consumer", "producer", "admin"})
DISORDER_INPUTS = frozenset({"file", "simulator"})  # and the Kafka topics
_TOPICS_DEFAULT = frozenset(DEFAULT_TOPICS.values())
_MAX_PARTITION = 4096

_lock = threading.Lock()  # guards the admitted label sets
CHANNEL_LABELS = frozenset(CHANNELS)
TYPE_LABELS: set[str] = set(BASE_TYPES)
INVALID_LABELS = frozenset(r.value for r in InvalidReason)
URGENCY_LABELS = frozenset(URGENCIES)
RULE_LABELS: set[str] = set()
ACTION_REASON_LABELS: set[str] = set(ACTION_REASONS)
TOPIC_LABELS: set[str] = set(_TOPICS_DEFAULT)
TARGETS_S: dict[str, float] = {}


def label(value: object, allowed: frozenset[str] | set[str]) -> str:
    """Return ``value`` when ``allowed`` admits it, else ``other`` (label values stay bounded)."""
    return value if isinstance(value, str) and value in allowed else OTHER


# ---------------------------------------------------------------------------------------------- configuration


def configure(
    pack: RulePack | None = None,
    *,
    topics: Iterable[str] = (),
    action_reasons: Iterable[str] = (),
) -> None:
    """Admit a deployment's bounded label values and export its latency targets.

    Args:
        pack: The rule pack: its rule names and event types become label values, its per-urgency
            latency targets are exported as ``cx_detection_target_seconds``.
        topics: Kafka topic names of this deployment (for ``cx_kafka_consumer_lag``).
        action_reasons: Suppression reasons of the contact policy beyond ``ACTION_REASONS``.
    """
    with _lock:
        TOPIC_LABELS.update(topics)
        ACTION_REASON_LABELS.update(action_reasons)
        if pack is not None:
            TYPE_LABELS.update(pack.types)
            RULE_LABELS.update(r.name for r in pack.rules)
    if pack is not None:
        for urgency, ms in pack.latency_targets_ms.items():
            set_detection_target(urgency, ms / 1000)
        _zero_series(pack)


def _zero_series(pack: RulePack) -> None:
    # Series exist at 0 from start-up for every rule and urgency of the pack: a ratio over a series that
    # appears only at its first increment is empty, so "0 % of P1 within target" could never alert.
    for r in pack.rules:
        rule, u = label(r.name, RULE_LABELS), label(r.urgency, URGENCY_LABELS)
        MOMENTS.labels(rule, u)
        LATENCY.labels(rule, u)
        WITHIN_TARGET.labels(u)
    for urgency in pack.latency_targets_ms:
        WITHIN_TARGET.labels(label(urgency, URGENCY_LABELS))


def set_latency_targets(pack: RulePack) -> None:
    """Configure the metrics for a rule pack (see ``configure``).

    Args:
        pack: The rule pack that runs.
    """
    configure(pack)


def set_detection_target(urgency: str, target_s: float) -> None:
    """Export the detection latency target of one urgency.

    Args:
        urgency: ``P1``…``P4``.
        target_s: Target in seconds.
    """
    u = label(urgency, URGENCY_LABELS)
    TARGETS_S[u] = target_s
    TARGET.labels(u).set(target_s)


def metric_names() -> set[str]:
    """Every series name this process exports, as Prometheus stores it.

    Counters appear as ``<name>_total``, histograms as ``<name>_bucket``/``_sum``/``_count``, gauges
    as ``<name>``; plus the process, platform and GC collectors' series.

    Returns:
        The names.
    """
    names: set[str] = set()
    for metric in (*_METRICS, *_SHED_METRICS):
        for family in metric.describe():
            if family.type == "counter":
                names.add(f"{family.name}_total")
            elif family.type == "histogram":
                names.update(f"{family.name}{s}" for s in ("_bucket", "_sum", "_count"))
            else:
                names.add(family.name)
    for collector in _RUNTIME:
        for family in collector.collect():
            names.update(s.name for s in family.samples)
    return names
