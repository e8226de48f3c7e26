"""Kafka input and output over confluent-kafka.

- ``KafkaRawSource``: a Bytewax source over the partitions of the input topics,
  reading raw ``consume()`` batches (Bytewax's stock ``KafkaSource`` costs ~4× more
  per message) and routing raw bytes to shards; resumes from snapshotted offsets.
- ``KafkaJsonWriter``: publishes records as JSON keyed by ``customer_id``; every
  failed delivery is produced again with backoff until it succeeds (never dropped).
- ``kafka_config``: librdkafka settings from ``CX_KAFKA_*`` environment variables.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from state.batches import RawBatch
from state.routing import shard_of_raw

log = logging.getLogger("cx.kafka")

_SECRET_WORDS = ("password", "secret", "key", "token", "jaas")


class _RateLimit(logging.Filter):
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
client_log.addFilter(_RateLimit(10.0))
_error_hooks: list[Callable[[str, KafkaError], None]] = []


def on_kafka_error(hook: Callable[[str, KafkaError], None]) -> None:
    """Register a callback for client-level errors (broker down, transport failures), e.g. metrics."""
    _error_hooks.append(hook)


def _error_cb(client: str) -> Callable[[KafkaError], None]:
    def cb(err: KafkaError) -> None:
        client_log.warning("Kafka %s: %s (librdkafka retries)", client, err.str())
        for hook in _error_hooks:
            hook(client, err)

    return cb
Item = tuple[str, RawBatch]


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


def _consumer_conf(conf: dict[str, str]) -> dict[str, Any]:
    c: dict[str, Any] = {
        "group.id": "cx-moments",
        "enable.auto.commit": False,  # Bytewax recovery owns positions
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        # librdkafka's default 1000 ms stalls a consumer that reads slower than it fetches.
        "fetch.queue.backoff.ms": 10,
        "reconnect.backoff.max.ms": 2000,
        "logger": client_log,
        "error_cb": _error_cb("consumer"),
    }
    c.update(conf)
    return c


def _producer_conf(conf: dict[str, str]) -> dict[str, Any]:
    p: dict[str, Any] = {
        "acks": "all",
        # Off by default: an idempotent producer stalls for good when a broker loses its producer state (seen
        # with a restarted memory-backed broker); records are at-least-once and carry deterministic ids and
        # versions, so duplicates are harmless. CX_KAFKA_ENABLE_IDEMPOTENCE=true turns it on.
        "enable.idempotence": False,
        "linger.ms": 5,
        "compression.type": "lz4",
        "reconnect.backoff.max.ms": 2000,
        "logger": client_log,
        "error_cb": _error_cb("producer"),
    }
    p.update({k: v for k, v in conf.items() if not k.startswith(("fetch.", "group.", "auto.offset", "enable.auto"))})
    return p


def _admin_conf(conf: dict[str, str]) -> dict[str, Any]:
    keep = ("bootstrap.servers", "security.", "sasl.", "ssl.", "client.id", "socket.")
    admin: dict[str, Any] = {k: v for k, v in conf.items() if k.startswith(keep)}
    admin["logger"] = client_log
    return admin


def wait_for_broker(
    conf: dict[str, str], *, deadline_s: float | None = None, sleep: Callable[[float], None] = time.sleep
) -> AdminClient:
    """Return an admin client once the cluster answers, retrying with backoff and logging while it does not.

    Raises:
        TimeoutError: naming the bootstrap servers when ``deadline_s`` passes.
    """
    admin = AdminClient(_admin_conf(conf))
    start = time.monotonic()
    delay = 0.5
    attempt = 0
    while True:
        try:
            admin.list_topics(timeout=5)
            if attempt:
                log.info("Kafka at %s is reachable", conf.get("bootstrap.servers"))
            return admin
        except KafkaException as e:
            attempt += 1
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                raise TimeoutError(f"Kafka at {conf.get('bootstrap.servers')} not reachable: {e}") from None
            log.warning("Kafka at %s not reachable yet (attempt %d); retrying in %.1fs",
                        conf.get("bootstrap.servers"), attempt, delay)
            sleep(delay)
            delay = min(delay * 2, 10.0)


def ensure_topics(conf: dict[str, str], topics: Iterable[str], *, create: bool, partitions: int = 4,
                  admin: AdminClient | None = None) -> dict[str, int]:
    """Return partition counts of the topics, creating missing ones when allowed.

    Raises:
        RuntimeError: naming the topic and broker when a topic is missing and creation is off.
    """
    admin = admin or wait_for_broker(conf)
    wanted = list(dict.fromkeys(topics))
    existing = admin.list_topics(timeout=10).topics
    missing = [t for t in wanted if t not in existing]
    if missing and not create:
        raise RuntimeError(f"Kafka topic(s) {', '.join(missing)} do not exist on {conf.get('bootstrap.servers')} "
                           "(allow creation, or create them)")
    if missing:
        futures = admin.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=1) for t in missing])
        for topic, fut in futures.items():
            try:
                fut.result()
                log.info("created topic %s with %d partitions", topic, partitions)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
    for _ in range(50):
        md = admin.list_topics(timeout=10).topics
        counts = {t: len(md[t].partitions) for t in wanted if t in md and md[t].partitions}
        if len(counts) == len(wanted):
            return counts
        time.sleep(0.1)
    raise RuntimeError(f"Kafka topics {wanted} have no partitions on {conf.get('bootstrap.servers')}")


class _KafkaPartition(StatefulSourcePartition[Item, int]):
    def __init__(self, conf: dict[str, str], topic: str, partition: int, start: int | None, shards: int,
                 batch_size: int, stop_at_end: bool, on_lag: Callable[[str, int, int], None] | None) -> None:
        self._consumer = Consumer(_consumer_conf(conf))
        self._topic = topic
        self._part = partition
        self._next = start if start is not None else OFFSET_BEGINNING
        self._consumer.assign([TopicPartition(topic, partition, self._next)])
        self._shards = shards
        self._keys = [str(s) for s in range(shards)]
        self._batch = batch_size
        self._stop = stop_at_end
        self._eof = False
        self._on_lag = on_lag
        self._lag_at = 0.0
        self._source = f"kafka:{topic}"
        self._errors_logged = 0.0

    def next_batch(self) -> list[Item]:
        if self._stop and self._eof:
            raise StopIteration
        msgs = self._consumer.consume(self._batch, 0.1)
        shards = self._shards
        values: dict[int, list[bytes]] = {}
        offsets: dict[int, list[int]] = {}
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                else:
                    self._log_error(err)
                continue
            self._eof = False
            raw = m.value() or b""
            s = shard_of_raw(raw, shards)
            values.setdefault(s, []).append(raw)
            offsets.setdefault(s, []).append(m.offset())
            self._next = m.offset() + 1
        now = time.monotonic()
        if self._on_lag is not None and now - self._lag_at > 5:
            self._lag_at = now
            self._report_lag()
        return [(self._keys[s], RawBatch(self._source, self._part, v, offsets[s])) for s, v in values.items()]

    def _log_error(self, err: KafkaError) -> None:
        now = time.monotonic()
        if now - self._errors_logged > 10:
            self._errors_logged = now
            log.warning("Kafka consumer %s[%d]: %s (retrying)", self._topic, self._part, err.str())

    def _report_lag(self) -> None:
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, self._part), timeout=1)
        except KafkaException:
            return
        if self._on_lag is not None and self._next >= 0:
            self._on_lag(self._topic, self._part, max(0, high - self._next))

    def next_awake(self) -> datetime | None:
        return None

    def snapshot(self) -> int:
        return self._next

    def close(self) -> None:
        self._consumer.close()


class KafkaRawSource(FixedPartitionedSource[Item, int]):
    """Raw messages of Kafka topics' partitions, routed to shards by customer id.

    Args:
        conf: librdkafka settings.
        topics: Input topic, or several (e.g. events and feedback).
        shards: Number of shards.
        create_topics: Create missing topics at start-up (else fail naming topic and broker).
        partitions: Partitions for created topics.
        batch_size: Messages per ``consume()``.
        stop_at_end: Stop each partition at its end (tests); production runs forever.
        on_lag: Called with (topic, partition, lag) every few seconds.
    """

    def __init__(self, conf: dict[str, str], topics: str | list[str], shards: int, *, create_topics: bool = True,
                 partitions: int = 4, batch_size: int = 10_000, stop_at_end: bool = False,
                 on_lag: Callable[[str, int, int], None] | None = None) -> None:
        self._conf = conf
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        self._shards = shards
        self._create = create_topics
        self._partitions = partitions
        self._batch = batch_size
        self._stop = stop_at_end
        self._on_lag = on_lag

    def list_parts(self) -> list[str]:
        counts = ensure_topics(self._conf, self._topics, create=self._create, partitions=self._partitions)
        return [f"{t}:{p}" for t in self._topics for p in range(counts[t])]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> _KafkaPartition:
        topic, _, part = for_part.rpartition(":")
        return _KafkaPartition(self._conf, topic, int(part), resume_state, self._shards, self._batch, self._stop,
                               self._on_lag)


OUTPUT_KINDS = ("moment", "action", "tag", "context", "dead_letter")


class KafkaJsonWriter:
    """Publish records as JSON to per-kind topics, keyed by ``customer_id``; never drops a record.

    Args:
        conf: librdkafka settings.
        topics: Record kind → topic (kinds without a topic are not published).
        on_retry: Called as (topic, attempt, error, delay) when undelivered records are produced again.
        on_write: Called as (topic, records, seconds) after a flush delivered everything.
        sleep: Injectable sleep for the backoff.
    """

    def __init__(self, conf: dict[str, str], topics: dict[str, str], *,
                 on_retry: Callable[[str, int, BaseException, float], None] | None = None,
                 on_write: Callable[[str, int, float], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._topics = {k: v for k, v in topics.items() if k in OUTPUT_KINDS}
        self._producer = Producer(_producer_conf(conf))
        self._failed: list[tuple[str, bytes | None, bytes]] = []
        self._pending = 0
        self._on_retry = on_retry
        self._on_write = on_write
        self._sleep = sleep
        self._ok = True

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        self._pending -= 1
        if err is not None:
            self._ok = False
            self._failed.append((msg.topic(), msg.key(), msg.value()))

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, on_delivery=self._delivered)
                self._pending += 1
                return
            except BufferError:
                # The local queue is full: wait for deliveries (back-pressure).
                self._producer.poll(0.1)

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Produce rows of one kind (kinds without a topic are skipped)."""
        topic = self._topics.get(kind)
        if topic is None or not rows:
            return
        dumps = orjson.dumps
        for r in rows:
            cid = r.get("customer_id")
            self._produce(topic, cid.encode() if isinstance(cid, str) else None, dumps(r))
        self._producer.poll(0)

    def flush(self) -> None:
        """Block until every record is delivered, producing failed ones again with backoff."""
        t0 = time.perf_counter()
        attempt = 0
        delay = 0.2
        while True:
            self._producer.flush(10)
            if not self._failed and self._pending <= 0:
                break
            if self._failed:
                attempt += 1
                failed, self._failed = self._failed, []
                topic = failed[0][0]
                err = RuntimeError(f"{len(failed)} records to {topic} not delivered")
                log.warning("Kafka delivery failed for %d records (attempt %d); producing again in %.1fs",
                            len(failed), attempt, delay)
                if self._on_retry is not None:
                    self._on_retry(topic, attempt, err, delay)
                self._sleep(delay)
                delay = min(delay * 2, 10.0)
                for t, k, v in failed:
                    self._produce(t, k, v)
        self._ok = True
        if self._on_write is not None:
            self._on_write("kafka", 0, time.perf_counter() - t0)

    def writable(self) -> bool:
        """Whether the last deliveries succeeded (for /readyz)."""
        return self._ok

    def close(self) -> None:
        """Deliver what is queued."""
        self.flush()


def _key_of(line: bytes) -> bytes | None:
    try:
        cid = orjson.loads(line).get("customer_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return cid.encode() if isinstance(cid, str) else None


def produce_jsonl(source: Path | Iterable[bytes], topic: str, conf: dict[str, str], rate: float | None = None,
                  *, create: bool = True, progress: Callable[[int], None] | None = None) -> int:
    """Send lines (a JSONL file or raw messages) to a topic keyed by customer id, optionally at ``rate``/s.

    Returns:
        The number of messages delivered.
    """
    ensure_topics(conf, [topic], create=create)
    writer = KafkaJsonWriter(conf, {})
    if isinstance(source, Path):
        lines: Iterator[bytes] = (ln.rstrip(b"\n") for ln in source.open("rb"))
    else:
        lines = iter(source)
    n = 0
    t0 = time.monotonic()
    for line in lines:
        if not line:
            continue
        writer._produce(topic, _key_of(line), line)  # noqa: SLF001 - same module family
        n += 1
        if rate:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        if n % 10_000 == 0:
            writer._producer.poll(0)  # noqa: SLF001
            if progress is not None:
                progress(n)
    writer.flush()
    return n
