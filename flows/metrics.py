"""Prometheus metrics (own registry) and the /metrics, /healthz, /readyz endpoint.

Metric names are a contract with infra/grafana and infra/prometheus (checked by
tests). Labels come from bounded sets only: channels, event types, reason codes,
rule names and urgencies of the rule pack, sink names. Never customer ids.
The pipeline updates metrics once per shard batch, not per event.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import platform_collector as _platform
from prometheus_client import process_collector as _process

from state.events import BASE_TYPES, CHANNELS
from state.outputs import Outputs
from state.rules import RulePack

log = logging.getLogger("cx.metrics")

REGISTRY = CollectorRegistry()
_process.ProcessCollector(registry=REGISTRY)
_platform.PlatformCollector(registry=REGISTRY)

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 90, 120)
LAG_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

EVENTS = Counter("cx_events_total", "Valid events by channel and type", ["channel", "type"], registry=REGISTRY)
INVALID = Counter("cx_invalid_events_total", "Invalid events (dead-lettered) by reason", ["reason"], registry=REGISTRY)
LATE = Counter("cx_late_events_total", "Events later than the allowed lateness", registry=REGISTRY)
MOMENTS = Counter("cx_moments_total", "Moments detected by rule and urgency", ["rule", "urgency"], registry=REGISTRY)
ACTIONS = Counter("cx_actions_total", "Actions by rule, status and reason", ["rule", "status", "reason"],
                  registry=REGISTRY)
TAG_TRANSITIONS = Counter("cx_tag_transitions_total", "Tag transitions by state", ["state"], registry=REGISTRY)
TAGS_OPEN = Gauge("cx_tags_open", "Tags currently open (this process)", registry=REGISTRY)
CUSTOMERS = Gauge("cx_customers_tracked", "Customers with state in this process", registry=REGISTRY)
EVICTED = Counter("cx_customers_evicted_total", "Customers whose idle state was dropped", registry=REGISTRY)
LATENCY = Histogram("cx_detection_latency_seconds", "Publish wall time minus moment due time", ["kind"],
                    buckets=LATENCY_BUCKETS, registry=REGISTRY)
WITHIN_TARGET = Counter("cx_detection_within_target_total", "Moments published within their urgency's target",
                        ["urgency"], registry=REGISTRY)
TARGET = Gauge("cx_detection_target_seconds", "Detection latency target per urgency (rule pack)", ["urgency"],
               registry=REGISTRY)
EVENT_LAG = Histogram("cx_event_lag_seconds", "Ingest wall time minus event time", buckets=LAG_BUCKETS,
                      registry=REGISTRY)
WATERMARK_LAG = Gauge("cx_watermark_lag_seconds", "Wall time minus the newest shard watermark", registry=REGISTRY)
SINK_SECONDS = Histogram("cx_sink_batch_seconds", "Sink batch write time", ["sink"], registry=REGISTRY)
SINK_ROWS = Histogram("cx_sink_batch_rows", "Rows per sink batch", ["sink"],
                      buckets=(1, 10, 100, 1000, 5000, 20000, 100000), registry=REGISTRY)
SINK_RETRIES = Counter("cx_sink_retries_total", "Sink write retries", ["sink"], registry=REGISTRY)
SINK_ERRORS = Counter("cx_sink_errors_total", "Failed sink writes (each is retried)", ["sink"], registry=REGISTRY)
SINK_UP = Gauge("cx_sink_up", "1 when the sink's last write succeeded", ["sink"], registry=REGISTRY)
CONSUMER_LAG = Gauge("cx_kafka_consumer_lag", "Kafka consumer lag (messages)", ["topic", "partition"],
                     registry=REGISTRY)
INPUT_UP = Gauge("cx_input_up", "1 when the input is connected", registry=REGISTRY)
KAFKA_ERRORS = Counter("cx_kafka_errors_total", "Kafka client errors (broker down, transport)", ["client"],
                       registry=REGISTRY)
SNAPSHOT_SECONDS = Histogram("cx_snapshot_seconds", "Time to snapshot one shard", registry=REGISTRY)
SNAPSHOT_BYTES = Gauge("cx_snapshot_bytes", "Bytes of the last shard snapshot", registry=REGISTRY)

_CHANNELS = frozenset(CHANNELS)
_TYPES = set(BASE_TYPES)
_targets_s: dict[str, float] = {}
_customers: dict[str, int] = {}
_open_tags = 0
_lock = threading.Lock()
_readiness: dict[str, Callable[[], bool]] = {}


def set_latency_targets(pack: RulePack) -> None:
    """Export the pack's per-urgency latency targets and accept its event types as labels."""
    _TYPES.update(pack.types)
    for urgency, ms in pack.latency_targets_ms.items():
        _targets_s[urgency] = ms / 1000
        TARGET.labels(urgency).set(ms / 1000)


def observe_outputs(key: str, out: Outputs, now_ms: int, pack: RulePack | None = None) -> None:
    """Account one shard batch after its records were written (publish time = ``now_ms``)."""
    global _open_tags
    for (channel, etype), n in out.events.items():
        if n:
            EVENTS.labels(channel if channel in _CHANNELS else "other", etype if etype in _TYPES else "other").inc(n)
    for reason, n in out.invalid.items():
        INVALID.labels(reason).inc(n)
    if out.late:
        LATE.inc(out.late)
    if out.evicted:
        EVICTED.inc(out.evicted)
    for m in out.moments:
        MOMENTS.labels(m["rule"], m["urgency"]).inc()
        latency = max(0.0, (now_ms - m["due_ts"]) / 1000)
        LATENCY.labels(m["kind"]).observe(latency)
        target = _targets_s.get(m["urgency"])
        if target is not None and latency <= target:
            WITHIN_TARGET.labels(m["urgency"]).inc()
    delta = 0
    for t in out.tags:
        TAG_TRANSITIONS.labels(t["state"]).inc()
        delta += 1 if t["state"] == "open" else -1
    with _lock:
        _customers[key] = out.customers
        CUSTOMERS.set(sum(_customers.values()))
        _open_tags = max(0, _open_tags + delta)
        TAGS_OPEN.set(_open_tags)
    if out.watermark_ms > 0:
        WATERMARK_LAG.set(max(0.0, (now_ms - out.watermark_ms) / 1000))


def observe_event_lag(seconds: float) -> None:
    """Record ingest time minus event time for a sample of events."""
    EVENT_LAG.observe(max(0.0, seconds))


def sink_write_hook(sink: str) -> Callable[[str, int, float], None]:
    """Return an ``on_write(table, rows, seconds)`` callback for a sink."""

    def on_write(_table: str, rows: int, seconds: float) -> None:
        SINK_SECONDS.labels(sink).observe(seconds)
        SINK_ROWS.labels(sink).observe(rows)
        SINK_UP.labels(sink).set(1)

    return on_write


def sink_retry_hook(sink: str) -> Callable[[str, int, BaseException, float], None]:
    """Return an ``on_retry(table, attempt, error, delay)`` callback for a sink."""

    def on_retry(_table: str, _attempt: int, _exc: BaseException, _delay: float) -> None:
        SINK_RETRIES.labels(sink).inc()
        SINK_ERRORS.labels(sink).inc()
        SINK_UP.labels(sink).set(0)

    return on_retry


def consumer_lag_hook() -> Callable[[str, int, int], None]:
    """Return an ``on_lag(topic, partition, lag)`` callback for the Kafka source."""

    def on_lag(topic: str, partition: int, lag: int) -> None:
        CONSUMER_LAG.labels(topic, str(partition)).set(lag)
        INPUT_UP.set(1)

    return on_lag


def kafka_error_hook() -> Callable[[str, Any], None]:
    """Return a callback counting Kafka client errors; a consumer error marks the input down."""

    def on_error(client: str, _err: Any) -> None:
        KAFKA_ERRORS.labels(client).inc()
        if client == "consumer":
            INPUT_UP.set(0)

    return on_error


def register_readiness(name: str, check: Callable[[], bool]) -> None:
    """Add a check that /readyz runs; all must pass for 200."""
    _readiness[name] = check


def readiness() -> dict[str, bool]:
    """Run every readiness check (an exception counts as not ready)."""
    result = {}
    for name, check in list(_readiness.items()):
        try:
            result[name] = bool(check())
        except Exception:  # noqa: BLE001 - a failing check means not ready
            result[name] = False
    return result


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif path == "/readyz":
            checks = readiness()
            ok = all(checks.values())
            body = orjson.dumps({"ready": ok, "checks": checks})
            self._send(200 if ok else 503, body, "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        return


def start_http(port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - scraped from outside
    """Serve /metrics, /healthz and /readyz in a daemon thread.

    Args:
        port: TCP port (0 picks a free one; read it from ``server.server_address``).
        host: Bind address.

    Returns:
        The running server.
    """
    server = ThreadingHTTPServer((host, port), _Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def metric_names() -> set[str]:
    """Every sample name this process exports (with _total/_bucket/_sum/_count forms)."""
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        for sample in family.samples:
            names.add(sample.name)
    for h in (LATENCY, EVENT_LAG, SINK_SECONDS, SINK_ROWS, SNAPSHOT_SECONDS):
        base = h._name  # noqa: SLF001 - labelled histograms expose no samples until used
        names.update({base, f"{base}_bucket", f"{base}_sum", f"{base}_count"})
    for c in (EVENTS, INVALID, LATE, MOMENTS, ACTIONS, TAG_TRANSITIONS, EVICTED, WITHIN_TARGET, SINK_RETRIES,
              SINK_ERRORS, KAFKA_ERRORS):
        names.update({c._name, f"{c._name}_total"})  # noqa: SLF001
    return names
