"""librdkafka settings from ``CX_KAFKA_*`` variables, per client (consumer, producer, admin); secrets
redacted for logs; librdkafka's log lines and error callbacks routed to Python logging and hooks."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError

_SECRET_WORDS = ("password", "secret", "key", "token", "jaas")


class RateLimit(logging.Filter):
    """Let one record per message kind through every ``interval_s`` (a broker outage repeats itself)."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self._interval = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = record.getMessage()[:60]
        now = time.monotonic()
        if now - self._last.get(key, 0.0) < self._interval:
            return False
        self._last[key] = now
        return True


# librdkafka's own log lines go through Python logging (so JSON logs stay JSON), rate-limited.
client_log = logging.getLogger("cx.kafka.client")
client_log.addFilter(RateLimit(10.0))
_error_hooks: list[Callable[[str, KafkaError], None]] = []


def on_kafka_error(hook: Callable[[str, KafkaError], None]) -> None:
    """Register a callback for client-level errors (broker down, transport failures), e.g. metrics."""
    _error_hooks.append(hook)


def error_cb(client: str) -> Callable[[KafkaError], None]:
    def cb(err: KafkaError) -> None:
        client_log.warning("Kafka %s: %s (librdkafka retries)", client, err.str())
        for hook in _error_hooks:
            hook(client, err)

    return cb




def kafka_config(prefix: str = "CX_KAFKA_", overrides: dict[str, str] | None = None) -> dict[str, str]:
    """Return librdkafka settings from the environment: ``CX_KAFKA_SASL_MECHANISM`` → ``sasl.mechanism``.

    Args:
        prefix: Environment variable prefix.
        overrides: Settings that win over the environment (e.g. ``--kafka-bootstrap``).

    Returns:
        A librdkafka configuration dict (``bootstrap.servers`` defaults to ``localhost:9092``).
    """
    conf = {k[len(prefix):].lower().replace("_", "."): v for k, v in os.environ.items() if k.startswith(prefix)}
    conf.update({k: v for k, v in (overrides or {}).items() if v})
    conf.setdefault("bootstrap.servers", "localhost:9092")
    return conf


def redacted(conf: dict[str, Any]) -> dict[str, Any]:
    """Return the settings with secrets masked, for logs."""
    return {k: ("***" if any(w in k for w in _SECRET_WORDS) else v) for k, v in conf.items()}


def consumer_conf(conf: dict[str, str]) -> dict[str, Any]:
    c: dict[str, Any] = {
        "group.id": "cx-moments",
        "enable.auto.commit": False,  # Bytewax recovery owns positions
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # librdkafka's default 1000 ms stalls a consumer that reads slower than it fetches.
        "fetch.queue.backoff.ms": 10,
        "reconnect.backoff.max.ms": 2000,
        "logger": client_log,
        "error_cb": error_cb("consumer"),
    }
    c.update(conf)
    if str(c["auto.offset.reset"]).lower() == "none":
        c["auto.offset.reset"] = "error"  # Kafka's Java name for it; librdkafka knows only "error"
    return c


_EARLIEST = frozenset({"earliest", "smallest", "beginning"})
_LATEST = frozenset({"latest", "largest", "end"})


def reset_policy(conf: dict[str, str]) -> str:
    """Return ``earliest``, ``latest`` or ``error``: where an input position outside its partition goes.

    From ``auto.offset.reset`` (``CX_KAFKA_AUTO_OFFSET_RESET``), ``earliest`` by default: replaying is harmless
    (moment ids are stable), skipping is not. librdkafka's synonyms are accepted, and ``none`` means ``error``.
    """
    v = str(conf.get("auto.offset.reset", "earliest")).lower()
    return "earliest" if v in _EARLIEST else "latest" if v in _LATEST else "error"





def producer_conf(conf: dict[str, str]) -> dict[str, Any]:
    p: dict[str, Any] = {
        "acks": "all",
        # Idempotence keeps librdkafka's own retries from duplicating or reordering records. A broker that lost
        # its producer state (a restarted memory-backed broker) can leave such a producer looping on "unknown
        # producer id": KafkaJsonWriter replaces a producer that is fatal or stalled. CX_KAFKA_ENABLE_IDEMPOTENCE
        # =false turns it off; records carry deterministic ids, so the rare duplicate is harmless either way.
        "enable.idempotence": True,
        "linger.ms": 5,
        "compression.type": "lz4",
        "reconnect.backoff.max.ms": 2000,
        "logger": client_log,
        "error_cb": error_cb("producer"),
    }
    p.update({k: v for k, v in conf.items() if not k.startswith(("fetch.", "group.", "auto.offset", "enable.auto"))})
    return p


def admin_conf(conf: dict[str, str]) -> dict[str, Any]:
    keep = ("bootstrap.servers", "security.", "sasl.", "ssl.", "client.id", "socket.")
    admin: dict[str, Any] = {k: v for k, v in conf.items() if k.startswith(keep)}
    admin["logger"] = client_log
    return admin
