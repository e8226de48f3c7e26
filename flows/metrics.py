"""Prometheus metrics (own registry) and the /metrics, /healthz, /readyz endpoint.

Metric names are a contract with ``infra/grafana`` and ``infra/prometheus`` (checked by
``tests/unit/test_infra_files.py``). Every label value comes from a bounded set: channels,
event types, reason codes, the rule pack's rule names, urgencies, moment kinds, sink names,
topics. A value outside its set is exported as ``"other"``, so nothing a customer sends (and
never a customer id) can become a label value.

The pipeline calls the ``record_*``/``set_*`` functions once per shard batch with counts it
already aggregated, never per event: a prometheus-client call takes a lock and costs about a
microsecond, which the hot path cannot afford per event.

The endpoint listens on port 9464 by default (``CX_METRICS_PORT``, ``--metrics-port``), on every interface
unless ``--http-host``/``CX_HTTP_HOST`` names one (``127.0.0.1``: this machine only).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder

from connectors.records import DEFAULT_TOPICS
from state.events import BASE_TYPES, CHANNELS, InvalidReason
from state.policy import HOLDOUT
from state.policy import REASONS as POLICY_REASONS
from state.rules import KINDS, URGENCIES

if TYPE_CHECKING:
    from state.outputs import Outputs
    from state.rules import RulePack

log = logging.getLogger("cx.metrics")

DEFAULT_PORT = 9464
PORT_ENV = "CX_METRICS_PORT"
DEFAULT_HOST = "0.0.0.0"  # noqa: S104 - scraped from outside the pod/container
HOST_ENV = "CX_HTTP_HOST"
OTHER = "other"

# `*_created` series double the series count and no dashboard uses them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)
_RUNTIME = (
    ProcessCollector(registry=REGISTRY),  # process_cpu_seconds_total, process_resident_memory_bytes, …
    PlatformCollector(registry=REGISTRY),  # python_info
    GCCollector(registry=REGISTRY),  # python_gc_* (the pipeline tunes the GC thresholds)
)

# Detection latency: resolve 0.1 s (a moment due in the past, published at once) up to the 60 s
# design target and twice that, so p99 > 60 s is still measurable.
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120)
LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
SINK_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
SINK_ROWS_BUCKETS = (1, 10, 100, 1000, 5000, 20000, 100000)
SNAPSHOT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

_R = REGISTRY
EVENTS = Counter("cx_events_total", "Valid events by channel and type", ["channel", "type"], registry=_R)
INVALID = Counter("cx_invalid_events_total", "Invalid events (dead-lettered) by reason", ["reason"], registry=_R)
LATE = Counter("cx_late_events_total", "Events later than the allowed lateness (state updated, no retraction)",
               registry=_R)
MOMENTS = Counter("cx_moments_total", "Moments detected by rule and urgency", ["rule", "urgency"], registry=_R)
ACTIONS = Counter("cx_actions_total", "Moments after the contact policy: sent or suppressed (with the reason)",
                  ["rule", "status", "reason"], registry=_R)
TAG_TRANSITIONS = Counter("cx_tag_transitions_total", "Tag transitions by new state", ["state"], registry=_R)
TAGS_OPEN = Gauge("cx_tags_open", "Tags open or actioned, not yet resolved or expired (this process)", registry=_R)
CUSTOMERS = Gauge("cx_customers_tracked", "Customers with state in this process (sum over its shards)", registry=_R)
EVICTED = Counter("cx_customers_evicted_total", "Customers whose idle state was dropped", registry=_R)
LATENCY = Histogram("cx_detection_latency_seconds", "Publish wall time minus moment due time", ["kind"],
                    buckets=LATENCY_BUCKETS, registry=_R)
WITHIN_TARGET = Counter("cx_detection_within_target_total",
                        "Moments published within their urgency's latency target (divide by cx_moments_total)",
                        ["urgency"], registry=_R)
TARGET = Gauge("cx_detection_target_seconds", "Detection latency target per urgency (rule pack)", ["urgency"],
               registry=_R)
EVENT_LAG = Histogram("cx_event_lag_seconds", "Ingest wall time minus event time (newest event of each batch)",
                      buckets=LAG_BUCKETS, registry=_R)
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
SHED = Counter("cx_customers_shed", "Customers dropped by the --max-customers cap, by whether they had pending "
               "moments (also in cx_customers_evicted_total)", ["pending"], registry=_R)
SHED_MOMENTS = Counter("cx_shed_pending_moments", "Pending moments (abandonments not yet due) dropped with customers "
                       "shed by the --max-customers cap", registry=_R)

_METRICS = (
    EVENTS, INVALID, LATE, MOMENTS, ACTIONS, TAG_TRANSITIONS, TAGS_OPEN, CUSTOMERS, EVICTED, LATENCY, WITHIN_TARGET,
    TARGET, EVENT_LAG, WATERMARK_LAG, SINK_SECONDS, SINK_ROWS, SINK_RETRIES, SINK_ERRORS, SINK_UP, CONSUMER_LAG,
    KAFKA_ERRORS, INPUT_UP, SNAPSHOT_SECONDS, SNAPSHOT_BYTES,
)
_SHED_METRICS = (SHED, SHED_MOMENTS)

# Bounded label sets. Rule names and extra event types join when a rule pack is configured.
ACTION_STATUSES = frozenset({"sent", "suppressed", "control"})
ACTION_REASONS = frozenset({"none", HOLDOUT, *POLICY_REASONS})
TAG_STATES = frozenset({"open", "actioned", "resolved", "expired", "removed"})
SINKS = frozenset({"clickhouse", "kafka", "jsonl"})
KAFKA_CLIENTS = frozenset({"consumer", "producer", "admin"})
_TOPICS_DEFAULT = frozenset(DEFAULT_TOPICS.values())
_MAX_PARTITION = 4096

_lock = threading.Lock()
_channels = frozenset(CHANNELS)
_types: set[str] = set(BASE_TYPES)
_reasons = frozenset(r.value for r in InvalidReason)
_kinds = frozenset(KINDS)
_urgencies = frozenset(URGENCIES)
_rules: set[str] = set()
_action_reasons: set[str] = set(ACTION_REASONS)
_topics: set[str] = set(_TOPICS_DEFAULT)
_targets_s: dict[str, float] = {}
_customers: dict[str, int] = {}
_watermarks: dict[str, int] = {}
_open_tags = 0
_readiness: dict[str, Callable[[], bool]] = {}


def _label(value: object, allowed: frozenset[str] | set[str]) -> str:
    return value if isinstance(value, str) and value in allowed else OTHER


def _watermark_lag_s() -> float:
    # Computed at scrape time, so a pipeline whose watermark stopped shows a growing lag.
    with _lock:
        newest = max(_watermarks.values(), default=0)
    return max(0.0, time.time() - newest / 1000) if newest > 0 else 0.0


WATERMARK_LAG.set_function(_watermark_lag_s)


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
        _topics.update(topics)
        _action_reasons.update(action_reasons)
        if pack is not None:
            _types.update(pack.types)
            _rules.update(r.name for r in pack.rules)
    if pack is not None:
        for urgency, ms in pack.latency_targets_ms.items():
            set_detection_target(urgency, ms / 1000)


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
    u = _label(urgency, _urgencies)
    _targets_s[u] = target_s
    TARGET.labels(u).set(target_s)


# ---------------------------------------------------------------------------------------------- per batch


def record_events(counts: Mapping[tuple[str, str], int]) -> None:
    """Count one batch's valid events.

    Args:
        counts: ``(channel, type) -> count``; unknown channels and types are counted as ``other``.
    """
    for (channel, etype), n in counts.items():
        if n:
            EVENTS.labels(_label(channel, _channels), _label(etype, _types)).inc(n)


def record_invalid(counts: Mapping[str, int]) -> None:
    """Count one batch's dead-lettered inputs.

    Args:
        counts: ``reason -> count``: ``InvalidReason`` values, or dead-letter codes such as
            ``missing_field:customer_id`` (the field is dropped); others count as ``other``.
    """
    for reason, n in counts.items():
        if n:
            INVALID.labels(_label(str(reason).split(":", 1)[0], _reasons)).inc(n)


def record_late(n: int) -> None:
    """Count events later than the allowed lateness.

    Args:
        n: How many in this batch.
    """
    if n > 0:
        LATE.inc(n)


def record_evicted(n: int) -> None:
    """Count customers whose idle state was dropped.

    Args:
        n: How many in this batch.
    """
    if n > 0:
        EVICTED.inc(n)


SHED_WARN_INTERVAL_S = 60.0
_shed_lock = threading.Lock()
_shed_unwarned = [0, 0]  # customers with pending moments, pending moments: shed since the last warning
_shed_warned_at = [float("-inf")]


def record_shed(customers: int, pending_customers: int, pending_moments: int) -> None:
    """Count customers shed by the ``--max-customers`` cap; warn (at most once a minute) when moments went too.

    Args:
        customers: Customers shed in this batch.
        pending_customers: How many of them had pending moments.
        pending_moments: The pending moments dropped with them.
    """
    if customers <= 0:
        return
    if customers > pending_customers:
        SHED.labels("no").inc(customers - pending_customers)
    if pending_customers <= 0:
        return
    SHED.labels("yes").inc(pending_customers)
    SHED_MOMENTS.inc(pending_moments)
    with _shed_lock:
        _shed_unwarned[0] += pending_customers
        _shed_unwarned[1] += pending_moments
        now = time.monotonic()
        if now - _shed_warned_at[0] < SHED_WARN_INTERVAL_S:
            return
        n, m = _shed_unwarned
        _shed_unwarned[:] = [0, 0]
        _shed_warned_at[0] = now
    log.warning("--max-customers: %d customer(s) with pending moments were shed, dropping %d pending moment(s) "
                "(abandonments that will not fire); raise --max-customers (cx_shed_pending_moments_total)", n, m)


def record_moment(rule: str, urgency: str, kind: str, latency_s: float, target_s: float | None = None) -> None:
    """Count one published moment and its detection latency (moments are rare next to events).

    Args:
        rule: Rule name of the configured pack (``<journey>.<kind>``); others count as ``other``.
        urgency: ``P1``…``P4``.
        kind: Moment kind (``abandoned``, ``failed``, …).
        latency_s: Publish wall time minus the moment's due time (clamped at 0).
        target_s: The urgency's target; None uses the configured one (no target: not counted as within).
    """
    u = _label(urgency, _urgencies)
    latency_s = max(0.0, latency_s)
    MOMENTS.labels(_label(rule, _rules), u).inc()
    LATENCY.labels(_label(kind, _kinds)).observe(latency_s)
    target = _targets_s.get(u) if target_s is None else target_s
    if target is not None and latency_s <= target:
        WITHIN_TARGET.labels(u).inc()


def record_actions(counts: Mapping[tuple[str, str, str], int]) -> None:
    """Count one batch's contact-policy decisions.

    Args:
        counts: ``(rule, status, reason) -> count``; status ``sent`` or ``suppressed``, reason a
            bounded code (``none`` or empty for sent ones).
    """
    for (rule, status, reason), n in counts.items():
        if n:
            ACTIONS.labels(_label(rule, _rules), _label(status, ACTION_STATUSES),
                           _label(reason or "none", _action_reasons)).inc(n)


def record_tag_transitions(counts: Mapping[str, int]) -> None:
    """Count tag transitions and keep ``cx_tags_open`` (opened minus resolved/expired/removed).

    Args:
        counts: ``new state -> count``.
    """
    global _open_tags
    delta = 0
    for state, n in counts.items():
        if not n:
            continue
        s = _label(state, TAG_STATES)
        TAG_TRANSITIONS.labels(s).inc(n)
        if s == "open":
            delta += n
        elif s in ("resolved", "expired", "removed"):
            delta -= n
    if delta:
        with _lock:
            # Clamped: after a restart, tags opened before it are closed without having been counted.
            _open_tags = max(0, _open_tags + delta)
            TAGS_OPEN.set(_open_tags)


def set_customers(shard: str, n: int) -> None:
    """Set how many customers one shard tracks; the gauge is the sum over this process's shards.

    Args:
        shard: Shard key.
        n: Customers it holds.
    """
    with _lock:
        _customers[shard] = n
        CUSTOMERS.set(sum(_customers.values()))


def observe_watermark(shard: str, watermark_ms: int) -> None:
    """Note a shard's watermark; ``cx_watermark_lag_seconds`` is wall time minus the newest one.

    Args:
        shard: Shard key.
        watermark_ms: Its event-time watermark (epoch ms; 0 = none yet).
    """
    if watermark_ms > 0:
        with _lock:
            _watermarks[shard] = watermark_ms


def observe_event_lag(seconds: float) -> None:
    """Record ingest time minus event time for one sampled event.

    Args:
        seconds: The lag (negative values, from clock skew, count as 0).
    """
    EVENT_LAG.observe(max(0.0, seconds))


def record_sink_batch(sink: str, rows: int, seconds: float) -> None:
    """Record one successful sink write and mark the sink up.

    Args:
        sink: ``clickhouse``, ``kafka`` or ``jsonl``.
        rows: Rows written.
        seconds: Write time.
    """
    s = _label(sink, SINKS)
    SINK_SECONDS.labels(s).observe(seconds)
    SINK_ROWS.labels(s).observe(rows)
    SINK_UP.labels(s).set(1)


def record_sink_retry(sink: str) -> None:
    """Count a failed write attempt that will be retried, and mark the sink down until one succeeds.

    Args:
        sink: Sink name.
    """
    s = _label(sink, SINKS)
    SINK_RETRIES.labels(s).inc()
    SINK_ERRORS.labels(s).inc()
    SINK_UP.labels(s).set(0)


def record_sink_error(sink: str) -> None:
    """Count a failed write attempt that is not retried, and mark the sink down.

    Args:
        sink: Sink name.
    """
    s = _label(sink, SINKS)
    SINK_ERRORS.labels(s).inc()
    SINK_UP.labels(s).set(0)


def set_sink_up(sink: str, up: bool) -> None:
    """Set whether a sink is writable.

    Args:
        sink: Sink name.
        up: True when its last write succeeded.
    """
    SINK_UP.labels(_label(sink, SINKS)).set(1 if up else 0)


def set_consumer_lag(topic: str, partition: int, lag: int) -> None:
    """Set the consumer lag of one input partition; a lag report means the input is connected.

    Args:
        topic: Topic name (configured topics only; others are ``other``).
        partition: Partition number.
        lag: Messages behind the high watermark.
    """
    p = str(partition) if isinstance(partition, int) and 0 <= partition < _MAX_PARTITION else OTHER
    CONSUMER_LAG.labels(_label(topic, _topics), p).set(max(0, lag))
    INPUT_UP.set(1)


def set_input_up(up: bool) -> None:
    """Set whether the input is connected.

    Args:
        up: True when connected.
    """
    INPUT_UP.set(1 if up else 0)


def record_kafka_error(client: str) -> None:
    """Count a Kafka client error; a consumer error marks the input down until lag is reported again.

    Args:
        client: ``consumer``, ``producer`` or ``admin``.
    """
    c = _label(client, KAFKA_CLIENTS)
    KAFKA_ERRORS.labels(c).inc()
    if c == "consumer":
        INPUT_UP.set(0)


def record_snapshot(seconds: float, nbytes: int) -> None:
    """Record one shard snapshot.

    Args:
        seconds: Time to build it.
        nbytes: Its size.
    """
    SNAPSHOT_SECONDS.observe(seconds)
    SNAPSHOT_BYTES.set(nbytes)


def observe_outputs(key: str, out: Outputs, now_ms: int, pack: RulePack | None = None) -> None:
    """Account one shard batch after its records were written (publish time = ``now_ms``).

    Args:
        key: Shard key.
        out: The batch's records and counters.
        now_ms: Wall clock when the batch was published.
        pack: The rule pack (admits its rule names if ``configure`` was not called).
    """
    if pack is not None and not _rules:
        configure(pack)
    record_events(out.events)
    record_invalid(out.invalid)
    record_late(out.late)
    record_evicted(out.evicted)
    record_shed(out.shed, out.shed_pending, out.shed_moments)
    for m in out.moments:
        record_moment(m["rule"], m["urgency"], m["kind"], (now_ms - m["due_ts"]) / 1000)
    if out.actions:
        decisions: dict[tuple[str, str, str], int] = {}
        for a in out.actions:
            k = (a["rule"], a["status"], a["reason"])
            decisions[k] = decisions.get(k, 0) + 1
        record_actions(decisions)
    if out.tags:
        states: dict[str, int] = {}
        for t in out.tags:
            states[t["state"]] = states.get(t["state"], 0) + 1
        record_tag_transitions(states)
    set_customers(key, out.customers)
    observe_watermark(key, out.watermark_ms)
    if out.events and out.max_ts_ms > 0:
        observe_event_lag((now_ms - out.max_ts_ms) / 1000)


# ---------------------------------------------------------------------------------------------- connector hooks


def sink_write_hook(sink: str) -> Callable[[str, int, float], None]:
    """Return an ``on_write(table, rows, seconds)`` callback for a sink.

    Args:
        sink: Sink name.

    Returns:
        The callback.
    """

    def on_write(_table: str, rows: int, seconds: float) -> None:
        record_sink_batch(sink, rows, seconds)

    return on_write


def sink_retry_hook(sink: str) -> Callable[[str, int, BaseException, float], None]:
    """Return an ``on_retry(table, attempt, error, delay)`` callback for a sink.

    Args:
        sink: Sink name.

    Returns:
        The callback.
    """

    def on_retry(_table: str, _attempt: int, _exc: BaseException, _delay: float) -> None:
        record_sink_retry(sink)

    return on_retry


def consumer_lag_hook() -> Callable[[str, int, int], None]:
    """Return an ``on_lag(topic, partition, lag)`` callback for the Kafka source.

    Returns:
        The callback.
    """
    return set_consumer_lag


def kafka_error_hook() -> Callable[[str, Any], None]:
    """Return an ``on_error(client, error)`` callback counting Kafka client errors.

    Returns:
        The callback.
    """

    def on_error(client: str, _err: Any) -> None:
        record_kafka_error(client)

    return on_error


# ---------------------------------------------------------------------------------------------- HTTP endpoint


def register_readiness(name: str, check: Callable[[], bool]) -> None:
    """Add (or replace) a check that /readyz runs; all must pass for 200.

    Args:
        name: Shown in the /readyz body.
        check: Returns True when ready; an exception counts as not ready.
    """
    with _lock:
        _readiness[name] = check


def unregister_readiness(name: str) -> None:
    """Remove a readiness check (no error if absent).

    Args:
        name: The check's name.
    """
    with _lock:
        _readiness.pop(name, None)


def readiness() -> dict[str, bool]:
    """Run every readiness check.

    Returns:
        ``name -> passed``; a check that raises has not passed.
    """
    with _lock:
        checks = list(_readiness.items())
    result = {}
    for name, check in checks:
        try:
            result[name] = bool(check())
        except Exception:  # noqa: BLE001 - a failing check means not ready
            log.debug("readiness check %s raised", name, exc_info=True)
            result[name] = False
    return result


# A client that connects and then sends nothing (or half a request) would hold its handler thread for ever.
HTTP_READ_TIMEOUT_S = 10.0


class _Handler(BaseHTTPRequestHandler):
    timeout = HTTP_READ_TIMEOUT_S  # socket timeout: http.server then drops the connection (silently)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
            self._send(200, encoder(REGISTRY), ctype)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain; charset=utf-8")
        elif path == "/readyz":
            checks = readiness()
            failing = sorted(n for n, ok in checks.items() if not ok)
            body = orjson.dumps({"ready": not failing, "failing": failing, "checks": checks})
            self._send(503 if failing else 200, body, "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain; charset=utf-8")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


# A scraper or probe that gives up before the answer is written (a timeout, `curl | head`) is routine.
_CLIENT_GONE = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, TimeoutError)


class MetricsServer(ThreadingHTTPServer):
    """The endpoint's server; ``port`` is the bound port (useful after asking for port 0)."""

    daemon_threads = True
    block_on_close = False  # stopping never waits on a client's connection (threads end by HTTP_READ_TIMEOUT_S)

    @property
    def port(self) -> int:
        """The bound TCP port."""
        return int(self.server_address[1])

    @property
    def host(self) -> str:
        """The bound address (``0.0.0.0``: every interface)."""
        return str(self.server_address[0])

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Note a client that went away at debug level; anything else as socketserver does (a traceback)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, _CLIENT_GONE):
            log.debug("metrics client disconnected early (errno %s)", getattr(exc, "errno", None))
            return
        super().handle_error(request, client_address)

    def stop(self) -> None:
        """Stop serving and close the socket, without waiting for open connections."""
        self.shutdown()
        self.server_close()


def start_http(port: int = DEFAULT_PORT, host: str = DEFAULT_HOST) -> MetricsServer:
    """Serve /metrics, /healthz and /readyz from a daemon thread.

    Args:
        port: TCP port (default 9464, ``CX_METRICS_PORT``); 0 picks a free one, read it from ``server.port``.
        host: Bind address (default every interface: Prometheus scrapes from another host or pod;
            ``--http-host``/``CX_HTTP_HOST``).

    Returns:
        The running server.

    Raises:
        OSError: the address cannot be bound (``errno.EADDRINUSE``: the port is taken).
    """
    server = MetricsServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


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


# ------------------------------------------------------------------------------ output refusals, offset resets

OUTPUT_REFUSED = Counter("cx_output_refused_total",
                         "Output records the Kafka broker or client refused for what they are (too large, invalid); "
                         "replaced by an output_refused dead letter, or dropped when that too was refused",
                         ["topic"], registry=_R)
OFFSET_RESETS = Counter("cx_kafka_offset_resets_total",
                        "Input positions outside the partition's offsets (e.g. the broker lost its log), moved per "
                        "auto.offset.reset", ["topic"], registry=_R)
_METRICS = (*_METRICS, OUTPUT_REFUSED, OFFSET_RESETS)  # type: ignore[assignment]  # a longer tuple, same use


def record_output_refused(topic: str) -> None:
    """Count one refused output record.

    Args:
        topic: Its topic (configured topics only; others are ``other``).
    """
    OUTPUT_REFUSED.labels(_label(topic, _topics)).inc()


def record_offset_reset(topic: str) -> None:
    """Count one input position reset because it lay outside its partition's offsets.

    Args:
        topic: The input topic (configured topics only; others are ``other``).
    """
    OFFSET_RESETS.labels(_label(topic, _topics)).inc()
