"""Kafka input and output over confluent-kafka.

- ``KafkaRawSource``: a Bytewax source over the partitions of the input topics,
  reading raw ``consume()`` batches (Bytewax's stock ``KafkaSource`` costs ~4× more
  per message) and routing raw bytes to shards; resumes from snapshotted offsets.
- ``KafkaJsonWriter``: publishes records as JSON keyed by ``customer_id``; a record
  is kept until the broker acknowledged it and produced again (with backoff, on a new
  producer if need be) until then: never dropped, at worst duplicated.
- ``KafkaJsonSink``: the writer as a Bytewax ``DynamicSink`` for ``(kind, record)`` items.
- ``produce_jsonl``: send JSONL lines to a topic at a chosen rate (``moments produce``).
- ``kafka_config``: librdkafka settings from ``CX_KAFKA_*`` environment variables;
  ``redacted`` masks secrets for logs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from connectors.records import DEFAULT_OUTPUT_TOPICS, PUBLISHED
from state.batches import RawBatch, Tick
from state.events import BASE_TYPES
from state.routing import shard_of_raw, tracked_ts, validated_max_ts

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


Item = tuple[str, RawBatch | Tick]


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


def _ignore_lag(_topic: str, _partition: int, _lag: int) -> None:
    """Lag callback of a partition nobody asked lag reports of (its position check still runs)."""


def _producer_conf(conf: dict[str, str]) -> dict[str, Any]:
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
        "error_cb": _error_cb("producer"),
    }
    p.update({k: v for k, v in conf.items() if not k.startswith(("fetch.", "group.", "auto.offset", "enable.auto"))})
    return p


def _admin_conf(conf: dict[str, str]) -> dict[str, Any]:
    keep = ("bootstrap.servers", "security.", "sasl.", "ssl.", "client.id", "socket.")
    admin: dict[str, Any] = {k: v for k, v in conf.items() if k.startswith(keep)}
    admin["logger"] = client_log
    return admin


class KafkaHandshakeError(ConnectionError):
    """The broker answered but the security handshake (SASL or TLS) failed: retrying cannot fix the settings."""


# librdkafka's codes for a refused SASL or TLS handshake (reported through error_cb, not by list_topics).
_HANDSHAKE_ERRORS = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED,
                               KafkaError.UNSUPPORTED_SASL_MECHANISM, KafkaError.ILLEGAL_SASL_STATE})
# Settings whose values are shown in errors; every other security setting is only named (it may be a secret).
_SHOWN_SETTINGS = ("security.protocol", "sasl.mechanism", "sasl.mechanisms")


class _HandshakeWatch(logging.Filter):
    """Note librdkafka log lines of connections that failed during the TLS handshake; pass every record on.

    A TLS client at a plaintext listener gets no error code of its own: the connection times out "in state
    SSL_HANDSHAKE" and the client only reports all brokers down.
    """

    # SASL failures arrive through error_cb (_AUTHENTICATION); only TLS needs the log line.
    _STATES = ("in state SSL_HANDSHAKE", "SSL handshake failed")

    def __init__(self) -> None:
        super().__init__()
        self.failures: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if any(s in msg for s in self._STATES):
            self.failures.append(msg.split("]: ", 1)[-1])
        return True


def security_settings(conf: dict[str, str]) -> str:
    """Name the security settings in effect as their ``CX_KAFKA_*`` variables, values only where not secret."""
    names = []
    for key in sorted(k for k in conf if k.startswith(("security.", "sasl.", "ssl."))):
        env = "CX_KAFKA_" + key.upper().replace(".", "_")
        names.append(f"{env}={conf[key]}" if key in _SHOWN_SETTINGS else f"{env} (set)")
    return ", ".join(names) or "none set (CX_KAFKA_SECURITY_PROTOCOL, CX_KAFKA_SASL_*, CX_KAFKA_SSL_*)"


def wait_for_broker(
    conf: dict[str, str], *, deadline_s: float | None = None, sleep: Callable[[float], None] = time.sleep
) -> AdminClient:
    """Return an admin client once the cluster answers, retrying with backoff and logging while it does not.

    Raises:
        TimeoutError: naming the bootstrap servers when ``deadline_s`` passes.
        KafkaHandshakeError: the broker refused the SASL or TLS handshake (naming the security settings, never
            their secret values): wrong protocol, mechanism or credentials are not fixed by waiting.
    """
    refused: list[KafkaError] = []

    def on_error(err: KafkaError) -> None:
        if err.code() in _HANDSHAKE_ERRORS:
            refused.append(err)

    watch = _HandshakeWatch()
    # A logger of its own (records still reach client_log's handlers) so the watch sees only this client.
    admin_log = logging.Logger(client_log.name)
    admin_log.parent = client_log
    admin_log.addFilter(watch)
    admin_log.addFilter(_RateLimit(10.0))
    admin_conf = _admin_conf(conf)
    admin_conf["error_cb"] = on_error
    admin_conf["logger"] = admin_log
    admin = AdminClient(admin_conf)
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
            admin.poll(0)  # serves error_cb: list_topics only says "transport failure"
            if refused or watch.failures:
                reason = refused[-1].str() if refused else watch.failures[-1]
                raise KafkaHandshakeError(
                    f"Kafka at {conf.get('bootstrap.servers')}: authentication/handshake failed with "
                    f"{security_settings(conf)}: {reason}") from None
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
        # replication_factor=-1: the cluster's default.replication.factor, not 1 (one broker loss = data loss).
        new = [NewTopic(t, num_partitions=partitions, replication_factor=-1) for t in missing]
        futures = admin.create_topics(new)
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


# Errors of one message the client cannot fetch or unpack (a zstd bomb over receive.message.max.bytes, a corrupt
# record): every fetch of that offset fails the same way, so without a skip the partition never moves again.
_UNDECODABLE = frozenset({KafkaError._BAD_COMPRESSION, KafkaError._BAD_MSG, KafkaError.MSG_SIZE_TOO_LARGE})
# Fetches of the same offset failing so before it is skipped: a one-off fault (a corrupt transfer) gets retries.
UNDECODABLE_RETRIES = 3

KafkaPosition = int | tuple[int, int]
"""A Kafka partition's resume state: the next offset and the largest valid event time read (older state: the
offset alone)."""


def _kafka_resume(state: KafkaPosition | None) -> tuple[int | None, int]:
    """Return the next offset (None: the beginning) and the largest event time read of a partition's resume state."""
    if state is None:
        return None, 0
    offset, max_ts = (state, 0) if isinstance(state, int) else state
    # A partition that had read nothing saved a logical offset (OFFSET_BEGINNING): it starts at the beginning
    # again, which is no lost log to report.
    return (offset if offset >= 0 else None), max_ts


class _KafkaPartition(StatefulSourcePartition[Item, KafkaPosition]):
    """One topic partition: raw ``consume()`` batches routed to shards; the snapshot is the next offset and the
    largest valid event time read (a replay's final tick must cover what was read before a restart)."""

    def __init__(self, conf: dict[str, str], topic: str, partition: int, start: int | None, shards: int,
                 batch_size: int, stop_at_end: bool, on_lag: Callable[[str, int, int], None] | None,
                 on_error: Callable[[str, int, KafkaError], None] | None = None, idle_wait_s: float = 0.01,
                 lag_interval_s: float = 5.0, on_reset: Callable[[str], None] | None = None,
                 final_tick: bool = False, types: Collection[str] = BASE_TYPES, max_ts: int = 0,
                 clock: bool = True) -> None:
        self._final_tick = final_tick and stop_at_end
        # Feedback records are not events: they never move the input's end-of-input time (their final tick
        # carries 0), whatever fields they carry.
        self._track = self._final_tick and clock
        self._types = types
        self._max_ts = max_ts
        self._consumer = Consumer(_consumer_conf(conf))
        self._topic = topic
        self._part = partition
        self._next = start if start is not None else OFFSET_BEGINNING
        self._on_reset = on_reset
        self._policy = reset_policy(conf)
        self._beyond: int | None = None  # a position the last position check found beyond the partition's end
        if start is not None:
            try:
                self._next = self._checked_start(start)
            except RuntimeError:
                self._consumer.close()
                raise
        self._consumer.assign([TopicPartition(topic, partition, self._next)])
        self._shards = shards
        self._keys = [str(s) for s in range(shards)]
        self._batch = batch_size
        self._stop = stop_at_end
        self._eof = False
        self._on_lag = on_lag
        self._on_error = on_error
        # The position check rides on the lag check: it runs even when nobody wants lag reports.
        self._on_lag = self._on_lag or _ignore_lag
        self._lag_at = 0.0
        self._lag_interval = lag_interval_s
        self._source = f"kafka:{topic}"
        self._errors_logged = 0.0
        self._idle_wait = timedelta(seconds=idle_wait_s)
        self._awake: datetime | None = None
        self._failing = (-1, 0)  # (offset, fetches failed in a row) of a message that cannot be decoded
        self._condemned = -1  # the reported (batch) offset of the last message skipped as undecodable

    def next_batch(self) -> list[Item]:
        if self._stop and self._eof:
            raise StopIteration
        # Never block here: a worker polls its partitions in turn, so a 100 ms wait on an idle partition (the
        # feedback topic, usually) held up every busy one (measured: 39k instead of 179k msg/s). When nothing
        # came, next_awake() spaces the polls instead of a busy loop.
        msgs = self._consumer.consume(self._batch, 0.001)
        if not msgs:
            self._awake = datetime.now(UTC) + self._idle_wait
            if self._on_lag is not None:
                self._maybe_report_lag()
            return []
        self._awake = None
        shards = self._shards
        values: dict[int, list[bytes]] = {}
        offsets: dict[int, list[int]] = {}
        track = self._track
        candidates: list[tuple[int, bytes]] = []
        max_ts = self._max_ts
        skipped: list[tuple[int, str]] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                # Reaching the end of the partition is news, not an error.
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                elif err.code() in _UNDECODABLE and (bad_at := m.offset()) is not None and bad_at >= 0:
                    bad = self._undecodable(err, bad_at)
                    if bad is not None:
                        skipped.append(bad)
                        break  # the rest of this batch was fetched before the seek
                else:
                    self._log_error(err)
                continue
            self._eof = False
            self._failing = (-1, 0)
            raw = m.value() or b""
            off: int = m.offset()  # type: ignore[assignment]  # None only on error events, skipped above
            s = shard_of_raw(raw, shards)
            if track:
                t = tracked_ts(raw)
                if t is not None and t > max_ts:
                    candidates.append((t, raw))
            vs = values.get(s)
            if vs is None:
                values[s] = [raw]
                offsets[s] = [off]
            else:
                vs.append(raw)
                offsets[s].append(off)
            self._next = off + 1
        if self._on_lag is not None:
            self._maybe_report_lag()
        items: list[Item] = [(self._keys[s], RawBatch(self._source, self._part, v, offsets[s], s))
                             for s, v in values.items()]
        if skipped:
            # No customer id to route by: shard 0 writes the dead letter (any shard's dead letters reach the
            # same outputs and counter), in the same epoch as the position that skips it.
            items.append((self._keys[0], RawBatch(self._source, self._part, [], [], 0, tuple(skipped))))
        if self._final_tick:
            if candidates:
                # Only a line its shard accepts (valid, same ts, routed to its own customer's shard) moves the flush.
                self._max_ts = max(max_ts, validated_max_ts(candidates, self._types, shards=shards))
            if self._eof:
                # The partition's end in a replay: every shard (in every process: the exchange routes by key)
                # hears its largest valid event time, and flushes to the whole input's largest at end of input.
                tick = Tick(self._max_ts, final=True, partition=f"{self._source}[{self._part}]")
                items.extend((k, tick) for k in self._keys)
        return items

    def _checked_start(self, start: int) -> int:
        """Return the restored position, or where ``auto.offset.reset`` moves it when it lies outside the partition.

        A broker that lost its log (memory storage restarted, topic re-created) has partitions that end before
        the saved position: reading on would wait silently and then skip what arrives below it.
        """
        tp = TopicPartition(self._topic, self._part)
        try:
            low, high = self._consumer.get_watermark_offsets(tp, timeout=10)
        except KafkaException as e:
            log.warning("Kafka input %s[%d]: could not check saved position %d against the partition's offsets "
                        "(%s); checked again while running", self._topic, self._part, start, e)
            return start
        if low <= start <= high:
            return start
        # Some brokers (Tansu) answer ListOffsets with less than the partition's end; the offsets a fetch reports
        # are right. Fetch at the saved position (nothing is consumed here) and judge by what it reports.
        self._consumer.assign([TopicPartition(self._topic, self._part, start)])
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            fetched_low, fetched_high = self._consumer.get_watermark_offsets(tp, cached=True)
            if fetched_high >= 0:
                low, high = fetched_low, fetched_high
                break
            time.sleep(0.02)
        if low <= start <= high:
            return start
        return self._reset("saved", start, low, high)

    def _reset(self, what: str, position: int, low: int, high: int) -> int:
        """Log and count a position outside ``low..high``; return where the policy moves it (or raise)."""
        if self._on_reset is not None:
            self._on_reset(self._topic)
        where = "beyond the partition's end" if position > high else "before the partition's start"
        if self._policy == "error":
            log.error("Kafka input %s[%d]: %s position %d is %s (offsets %d..%d); auto.offset.reset=error: stopping",
                      self._topic, self._part, what, position, where, low, high)
            raise RuntimeError(
                f"Kafka input {self._topic}[{self._part}]: {what} position {position} is {where} (offsets "
                f"{low}..{high}; did the broker lose its log?) and auto.offset.reset (CX_KAFKA_AUTO_OFFSET_RESET) "
                "is error: check the broker, then set it to earliest (replay the partition) or latest (skip to "
                "its end), or start with a fresh recovery directory")
        target = low if self._policy == "earliest" else high
        log.error("Kafka input %s[%d]: %s position %d is %s (offsets %d..%d; did the broker lose its log?); "
                  "auto.offset.reset=%s: continuing from offset %d", self._topic, self._part, what, position, where,
                  low, high, self._policy, target)
        return target

    def _move(self, what: str, position: int, low: int, high: int) -> None:
        """Apply ``_reset`` to the running consumer."""
        self._next = self._reset(what, position, max(low, 0), high)
        self._consumer.assign([TopicPartition(self._topic, self._part, self._next)])
        self._beyond = None

    def _undecodable(self, err: KafkaError, offset: int) -> tuple[int, str] | None:
        """Count a fetch that failed on one message; after ``UNDECODABLE_RETRIES`` in a row at the same position,
        seek past it and return ``(offset, error)`` for its dead letter."""
        # A compressed batch reports its first offset: once past that, the position itself is what fails, and
        # the rest of a batch already found undecodable is skipped without more retries.
        position = max(offset, self._next)
        failing, count = self._failing
        count = count + 1 if failing == position else 1
        if count < UNDECODABLE_RETRIES and offset != self._condemned:
            self._failing = (position, count)
            if self._on_error is not None:
                self._on_error(self._topic, self._part, err)
            return None
        self._failing = (-1, 0)
        self._condemned = offset
        self._next = position + 1
        # assign() (not seek) also drops what was already fetched for the old position.
        self._consumer.assign([TopicPartition(self._topic, self._part, self._next)])
        log.error("Kafka input %s[%d]: message at offset %d cannot be fetched or decoded (%s; failed %d times); "
                  "skipped, dead-lettered as undecodable", self._topic, self._part, position, err.str(), count)
        return position, err.str()

    def _log_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET) and self._next >= 0:
            # The broker itself says the position is out of range (librdkafka reports it when the policy is error).
            tp = TopicPartition(self._topic, self._part)
            try:
                low, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    low, high = self._consumer.get_watermark_offsets(tp, timeout=5)
            except KafkaException:
                low, high = -1, -1
            self._move("fetch", self._next, low, high)
            return
        if self._on_error is not None:
            self._on_error(self._topic, self._part, err)
        now = time.monotonic()
        # An outage repeats the same error many times a second: one line per 10 s is enough (no message data).
        if now - self._errors_logged > 10:
            self._errors_logged = now
            log.warning("Kafka consumer %s[%d]: %s (retrying)", self._topic, self._part, err.str())

    def _maybe_report_lag(self) -> None:
        now = time.monotonic()
        if self._on_lag is None or self._next < 0 or now - self._lag_at < self._lag_interval:
            return
        self._lag_at = now
        try:
            # cached=True: the high watermark of the last fetch; a network call here would block the worker
            # for its timeout on every report while the broker is down.
            low, high = self._consumer.get_watermark_offsets(TopicPartition(self._topic, self._part), cached=True)
        except KafkaException:
            return
        if high >= 0:
            if self._next > high:
                # The offsets of the last fetch: a new leader may briefly report less, so act on the second
                # report in a row, one interval later, at the same position.
                if self._beyond == self._next:
                    self._move("current", self._next, low, high)
                else:
                    self._beyond = self._next
                return
            self._beyond = None
            self._on_lag(self._topic, self._part, max(0, high - self._next))

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        return self._next, self._max_ts

    def close(self) -> None:
        self._consumer.close()


class KafkaRawSource(FixedPartitionedSource[Item, KafkaPosition]):
    """Raw messages of Kafka topics' partitions, routed to shards by customer id.

    Emits ``(str(shard), RawBatch)`` items, one per shard present in a ``consume()`` batch; no ticks (the live
    clock moves the watermark) except, in a replay (``final_tick``), a final one per partition to every shard.
    Snapshots are the next offset of each partition (with the largest valid event time read), so a restart
    with recovery resumes where the last epoch ended; without a snapshot a partition starts at its beginning.
    A broker that is down at start is waited for (logged with backoff); one that goes down mid-run is
    reconnected to by librdkafka while this logs every 10 s.

    Args:
        conf: librdkafka settings (see ``kafka_config``).
        topics: Input topic, or several (e.g. events and feedback).
        shards: Number of shards.
        create_topics: Create missing topics at start-up (else fail naming topic and broker).
        partitions: Partitions for created topics.
        batch_size: Messages per ``consume()``.
        stop_at_end: Stop each partition at its end (tests, replays); production runs forever.
        on_lag: Called with (topic, partition, lag) every few seconds; lag = high watermark − next offset.
        on_error: Called with (topic, partition, error) for each consumer error (not for partition ends).
        lag_interval_s: Seconds between ``on_lag`` reports (and position checks) per partition.
        on_reset: Called with the topic when a partition's position lay outside its offsets and was moved per
            ``auto.offset.reset`` (checked at start-up, on out-of-range errors and with each lag report).
        final_tick: With ``stop_at_end`` (a replay), send every shard a final ``Tick`` with the partition's
            largest valid event time when the partition ends, so that at end of input every shard fires what
            is due by the whole input's largest time, as a file replay does.
        types: Event types the rule pack knows (for the final tick's validity check).
        feedback_topics: Topics whose messages are feedback, not events: they never move the final tick's time.
    """

    def __init__(self, conf: dict[str, str], topics: str | list[str], shards: int, *, create_topics: bool = True,
                 partitions: int = 4, batch_size: int = 10_000, stop_at_end: bool = False,
                 on_lag: Callable[[str, int, int], None] | None = None,
                 on_error: Callable[[str, int, KafkaError], None] | None = None,
                 lag_interval_s: float = 5.0, on_reset: Callable[[str], None] | None = None,
                 final_tick: bool = False, types: Collection[str] = BASE_TYPES,
                 feedback_topics: Collection[str] = ()) -> None:
        self._final_tick = final_tick
        self._feedback = frozenset(feedback_topics)
        self._types = types
        self._conf = conf
        self._on_reset = on_reset
        self._topics = [topics] if isinstance(topics, str) else list(topics)
        self._shards = shards
        self._create = create_topics
        self._partitions = partitions
        self._batch = batch_size
        self._stop = stop_at_end
        self._on_lag = on_lag
        self._on_error = on_error
        self._lag_interval = lag_interval_s

    def list_parts(self) -> list[str]:
        """Return ``topic:partition`` names, waiting for the broker and creating topics if allowed."""
        counts = ensure_topics(self._conf, self._topics, create=self._create, partitions=self._partitions)
        return [f"{t}:{p}" for t in self._topics for p in range(counts[t])]

    def build_part(self, step_id: str, for_part: str, resume_state: KafkaPosition | None) -> _KafkaPartition:
        """Open one partition at its snapshotted offset (or its beginning)."""
        topic, _, part = for_part.rpartition(":")
        start, max_ts = _kafka_resume(resume_state)
        return _KafkaPartition(self._conf, topic, int(part), start, self._shards, self._batch, self._stop,
                               self._on_lag, self._on_error, lag_interval_s=self._lag_interval,
                               on_reset=self._on_reset,
                               final_tick=self._final_tick, types=self._types, max_ts=max_ts,
                               clock=topic not in self._feedback)


OUTPUT_KINDS = PUBLISHED

_Record = tuple[str, bytes | None, bytes]


def _is_fatal(exc: BaseException) -> bool:
    """Whether an exception from the client carries a fatal librdkafka error (the producer is unusable)."""
    for e in (exc, exc.__cause__):
        if isinstance(e, KafkaException) and e.args and isinstance(e.args[0], KafkaError) and e.args[0].fatal():
            return True
    return False


# Errors that refuse one record for what it is (its size or content): producing it again cannot succeed, so
# the record is replaced by a small notice on the dead-letter topic instead of blocking the epoch forever.
_REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.INVALID_RECORD,
                      KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE})


def _refused_error(exc: BaseException) -> KafkaError | None:
    """The error of a ``produce()`` exception when it refuses the record itself, else None."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        err: KafkaError = exc.args[0]
        if err.code() in _REFUSED and not err.fatal():
            return err
    return None


def refusal_notice(topic: str, value: bytes, error: str, now_ms: int) -> dict[str, Any]:
    """Return the dead-letter record that stands in for an output record the broker refused.

    It has the fields of an input dead letter (``state.outputs.dead_letter_record``) without the record's
    content (it may be large, and it holds customer data): reason ``output_refused``, the refused record's
    topic as ``source``, its size and SHA-256, and the error as ``detail``.
    """
    return {"schema": 1, "reason": "output_refused", "detail": error[:500], "raw": "", "raw_encoding": "utf8",
            "raw_len": len(value), "raw_sha256": hashlib.sha256(value).hexdigest(), "truncated": True,
            "source": f"output:{topic}", "partition": -1, "offset": -1, "received_at": now_ms}


class KafkaJsonWriter:
    """Publish records as JSON to per-kind topics, keyed by ``customer_id``; never drops a record.

    ``add``/``write`` queue records; ``flush`` blocks until every record queued since the last flush is
    acknowledged (``acks=all``), which is what lets a Bytewax epoch close. Until then the writer keeps a
    reference to each record, so nothing depends on librdkafka handing failures back:

    - a delivery that failed (e.g. timed out while the broker was down) is produced again with backoff;
    - while the broker is unreachable ``flush`` keeps waiting (back-pressure on the dataflow), logging every
      30 s;
    - a producer that hit a fatal error, or an idempotent producer that failed or made no progress for
      ``stall_s`` (it loops forever on "unknown producer id" after a broker lost its state), is purged and
      replaced, and every unacknowledged record is produced again by the new one. Records may then arrive
      twice, which deterministic ids make harmless, but never zero times.

    A record the broker or the client refuses for what it is (too large, invalid: ``_REFUSED``, raised by
    ``produce()`` or reported on delivery) is not produced again: it is replaced by a ``refusal_notice`` on the
    dead-letter topic, and if that too is refused (or there is no dead-letter topic) counted and logged (size
    and hash only). No output record can stop the worker.

    Args:
        conf: librdkafka settings (producer defaults: acks=all, idempotence, linger 5 ms, lz4).
        topics: Record kind → topic for kinds in ``OUTPUT_KINDS`` (kinds without a topic are not published).
        on_retry: Called as (topic, attempt, error, delay) when undelivered records are produced again.
        on_write: Called as (sink, records, seconds) after a flush delivered everything.
        sleep: Injectable sleep for the backoff.
        stall_s: Seconds without progress after which an idempotent producer is replaced.
        on_refused: Called with the topic of each record refused for what it is.
    """

    def __init__(self, conf: dict[str, str], topics: dict[str, str], *,
                 on_retry: Callable[[str, int, BaseException, float], None] | None = None,
                 on_write: Callable[[str, int, float], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, stall_s: float = 15.0,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self._topics = {k: v for k, v in topics.items() if k in OUTPUT_KINDS}
        self._conf = _producer_conf(conf)
        self._idempotent = str(self._conf.get("enable.idempotence", "")).lower() in ("true", "1")
        self._unacked: list[_Record] = []  # everything since the last complete flush
        self._failed: list[_Record] = []
        self._refused: list[tuple[_Record, str]] = []  # refused records with the error, handled by flush
        self._notices: set[bytes] = set()  # values of refusal notices not yet acknowledged
        self._on_refused = on_refused
        self._fatal = False
        self._generation = 0
        self._on_retry = on_retry
        self._on_write = on_write
        self._sleep = sleep
        self._stall_s = stall_s
        self._ok = True
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        self._generation += 1
        generation = self._generation
        conf = dict(self._conf)
        inner = conf.get("error_cb")

        def error_cb(err: KafkaError) -> None:
            if err.fatal():
                self._fatal = True
            if inner is not None:
                inner(err)

        def delivered(err: KafkaError | None, msg: Any) -> None:
            # A replaced producer's late reports are ignored: its records are all being produced again.
            if err is not None and generation == self._generation:
                if err.fatal():
                    self._fatal = True
                elif err.code() in _REFUSED:
                    self._refused.append(((msg.topic(), msg.key(), msg.value()), err.str()))
                    return
                self._failed.append((msg.topic(), msg.key(), msg.value()))

        conf["error_cb"] = error_cb
        # Reports for failures only: a Python callback per delivered record would cost more than producing it.
        conf["on_delivery"] = delivered
        conf["delivery.report.only.error"] = True
        log.debug("Kafka producer settings: %s", redacted(conf))
        try:
            return Producer(conf)
        except KafkaException as e:
            # A librdkafka built without lz4 rejects the codec; compression is an optimisation, so go without.
            if "compression" not in str(e) or conf.get("compression.type") == "none":
                raise
            log.warning("Kafka producer: %s; producing uncompressed", e)
            self._conf["compression.type"] = conf["compression.type"] = "none"
            return Producer(conf)

    def _send(self, topic: str, key: bytes | None, value: bytes) -> None:
        """Hand one record to librdkafka; after a fatal error, leave it to ``flush`` (it is in ``_unacked``)."""
        while not self._fatal:
            try:
                self._producer.produce(topic, value, key)
                return
            except BufferError:
                # The local queue is full: serve delivery reports until there is room (back-pressure).
                self._poll(0.1)
            except KafkaException as e:
                refused = _refused_error(e)
                if refused is not None:
                    self._refused.append(((topic, key, value), refused.str()))
                    return
                if not _is_fatal(e):
                    raise
                self._fatal = True

    def _handle_refused(self) -> None:
        """Replace refused records by refusal notices (or count and log them); none is produced again."""
        refused, self._refused = self._refused, []
        dead_topic = self._topics.get("dead_letter")
        for rec, error in refused:
            topic, key, value = rec
            try:
                self._unacked.remove(rec)
            except ValueError:
                continue  # reported again after a producer replacement: already handled
            if self._on_refused is not None:
                self._on_refused(topic)
            digest = hashlib.sha256(value).hexdigest()
            if value in self._notices or dead_topic is None:
                self._notices.discard(value)
                # Size and hash only: the record holds customer data.
                log.error("Kafka refused a %d-byte record for %s (sha256 %s): %s; dropped, counted in "
                          "cx_output_refused_total", len(value), topic, digest, error)
                continue
            log.error("Kafka refused a %d-byte record for %s (sha256 %s): %s; sent to %s as output_refused",
                      len(value), topic, digest, error, dead_topic)
            notice = orjson.dumps(refusal_notice(topic, value, error, int(time.time() * 1000)))
            self._notices.add(notice)
            self._produce(dead_topic, key, notice)

    def _poll(self, timeout_s: float) -> None:
        try:
            self._producer.poll(timeout_s)
        except (KafkaException, SystemError) as e:
            # A fatal error can surface from a callback (then wrapped in SystemError by the client).
            if not _is_fatal(e):
                raise
            self._fatal = True

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        self._unacked.append((topic, key, value))
        self._send(topic, key, value)

    def _replace_producer(self, why: str) -> None:
        """Purge the producer, start a new one and produce every unacknowledged record again."""
        old = self._producer
        log.warning("Kafka producer replaced (%s); producing %d records again", why, len(self._unacked))
        try:
            old.purge()
            old.poll(0)
        except (KafkaException, SystemError) as e:
            if not _is_fatal(e):
                raise
        self._fatal = False
        self._failed = []
        self._producer = self._new_producer()
        for t, k, v in list(self._unacked):
            self._send(t, k, v)

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Queue rows of one kind (kinds without a topic are skipped).

        Args:
            kind: Record kind, e.g. ``moment``.
            rows: Records; each is keyed by its ``customer_id`` (no key when it has none, e.g. dead letters).
        """
        topic = self._topics.get(kind)
        if topic is None or not rows:
            return
        if kind == "action":
            # cx.actions carries what downstream must do; suppressed and hold-out decisions are stored only.
            rows = [r for r in rows if r.get("status") == "sent"]
        dumps = orjson.dumps
        produce = self._produce
        for r in rows:
            cid = r.get("customer_id")
            produce(topic, cid.encode() if isinstance(cid, str) else None, dumps(r))
        self._poll(0)

    def write(self, items: Iterable[tuple[str, dict[str, Any]]]) -> None:
        """Queue ``(kind, record)`` items.

        Args:
            items: Pairs of record kind and record.

        Raises:
            ValueError: naming the kind when a record's kind has no topic (it would be lost silently).
        """
        topics = self._topics
        dumps = orjson.dumps
        produce = self._produce
        for kind, r in items:
            topic = topics.get(kind)
            if topic is None:
                raise ValueError(f"no Kafka topic for record kind {kind!r} (topics: {topics})")
            cid = r.get("customer_id")
            produce(topic, cid.encode() if isinstance(cid, str) else None, dumps(r))
        self._poll(0)

    def flush(self) -> None:
        """Block until every queued record is acknowledged, producing failed ones again with backoff."""
        t0 = time.perf_counter()
        attempt = 0
        delay = 0.2
        left = -1
        progress_at = waiting_logged = time.monotonic()
        while True:
            try:
                now_left = self._producer.flush(5)
            except (KafkaException, SystemError) as e:
                if not _is_fatal(e):
                    raise
                self._fatal = True
                now_left = len(self._producer)
            now = time.monotonic()
            if self._refused:
                self._handle_refused()
                continue
            if now_left != left:
                left, progress_at = now_left, now
            stalled = self._idempotent and now_left > 0 and now - progress_at > self._stall_s
            if not (self._fatal or stalled or self._failed):
                if now_left == 0:
                    break
                if now - waiting_logged > 30:
                    waiting_logged = now
                    self._ok = False
                    log.warning("Kafka: %d records waiting for delivery (broker unreachable?); still trying",
                                now_left)
                continue
            attempt += 1
            self._ok = False
            topic = (self._failed or self._unacked or [("?", None, b"")])[0][0]
            why = ("fatal error" if self._fatal else f"no progress for {now - progress_at:.0f}s" if stalled
                   else f"{len(self._failed)} deliveries failed")
            log.warning("Kafka %s (attempt %d); producing again in %.1fs", why, attempt, delay)
            if self._on_retry is not None:
                self._on_retry(topic, attempt, RuntimeError(f"{topic}: {why}"), delay)
            self._sleep(delay)
            delay = min(delay * 2, 10.0)
            if self._fatal or stalled or self._idempotent:
                # An idempotent producer whose deliveries failed may be stuck on a sequence the broker forgot.
                self._replace_producer(why)
            else:
                failed, self._failed = self._failed, []
                for t, k, v in failed:
                    self._send(t, k, v)
            left, progress_at = -1, time.monotonic()
        self._ok = True
        if self._on_write is not None:
            self._on_write("kafka", len(self._unacked), time.perf_counter() - t0)
        self._unacked = []
        self._notices.clear()

    def writable(self) -> bool:
        """Whether the last deliveries succeeded (for /readyz)."""
        return self._ok

    def close(self) -> None:
        """Deliver what is queued."""
        self.flush()


class _KafkaSinkPartition(StatelessSinkPartition[tuple[str, dict[str, Any]]]):
    def __init__(self, writer: KafkaJsonWriter) -> None:
        self._writer = writer

    def write_batch(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        # Flushing before returning means a batch Bytewax handed over is acknowledged by the broker; a broker
        # outage blocks here, which is the back-pressure the dataflow needs.
        self._writer.write(items)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class KafkaJsonSink(DynamicSink[tuple[str, dict[str, Any]]]):
    """Bytewax sink for ``(kind, record)`` items: JSON to per-kind topics, keyed by customer id, never dropped.

    Args:
        conf: librdkafka settings (see ``kafka_config``).
        topics: Record kind → topic; defaults to ``DEFAULT_OUTPUT_TOPICS``. A kind without a topic fails the
            batch (naming the kind) rather than losing it.
        on_retry: See ``KafkaJsonWriter``.
        on_write: See ``KafkaJsonWriter``.
        on_refused: See ``KafkaJsonWriter``.
    """

    def __init__(self, conf: dict[str, str], topics: dict[str, str] | None = None, *,
                 on_retry: Callable[[str, int, BaseException, float], None] | None = None,
                 on_write: Callable[[str, int, float], None] | None = None,
                 on_refused: Callable[[str], None] | None = None) -> None:
        self._conf = conf
        self._topics = dict(DEFAULT_OUTPUT_TOPICS if topics is None else topics)
        self._on_retry = on_retry
        self._on_write = on_write
        self._on_refused = on_refused

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _KafkaSinkPartition:
        """One producer per worker."""
        return _KafkaSinkPartition(KafkaJsonWriter(self._conf, self._topics, on_retry=self._on_retry,
                                                   on_write=self._on_write, on_refused=self._on_refused))


# The common case (an unescaped string id) in one C-level search; anything else is parsed.
_CUSTOMER_ID = re.compile(rb'"customer_id"\s*:\s*"([^"\\]*)"')


def _key_of(line: bytes) -> bytes | None:
    """Return the customer id of a JSON line as bytes (the message key), or None when it has none."""
    m = _CUSTOMER_ID.search(line)
    if m is not None:
        return m.group(1)
    try:
        cid = orjson.loads(line).get("customer_id")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return cid.encode() if isinstance(cid, str) else None


def produce_jsonl(source: str | Path | Iterable[bytes | str], topic: str, conf: dict[str, str],
                  rate: float | None = None, *, create: bool = True,
                  progress: Callable[[int], None] | None = None) -> int:
    """Send lines (a JSONL file or raw messages) to a topic keyed by customer id, optionally at ``rate``/s.

    Lines are sent as they are (invalid ones too: the pipeline dead-letters them); blank lines are skipped.

    Args:
        source: A JSONL file path, or an iterable of messages (bytes or str).
        topic: Destination topic.
        conf: librdkafka settings.
        rate: Messages per second, or None for as fast as possible.
        create: Create the topic if it is missing.
        progress: Called with the count every 10,000 messages.

    Returns:
        The number of messages delivered.
    """
    ensure_topics(conf, [topic], create=create)
    # Input needs no idempotent producer: the pipeline drops duplicate event ids and tolerates reordering
    # within the allowed lateness, and on Tansu idempotence cut this tool from ~350k to ~225k msg/s.
    writer = KafkaJsonWriter({"enable.idempotence": "false", **conf}, {})
    if isinstance(source, str | Path):
        with Path(source).open("rb") as f:
            return _produce_lines(writer, (ln.rstrip(b"\r\n") for ln in f), topic, rate, progress)
    return _produce_lines(writer, (ln.encode() if isinstance(ln, str) else ln for ln in source), topic, rate,
                          progress)


def _produce_lines(writer: KafkaJsonWriter, lines: Iterator[bytes], topic: str, rate: float | None,
                   progress: Callable[[int], None] | None) -> int:
    n = 0
    t0 = time.monotonic()
    produce = writer._produce  # noqa: SLF001 - this module's own writer
    for line in lines:
        if not line.strip():
            continue
        produce(topic, _key_of(line), line)
        n += 1
        if rate:
            ahead = n / rate - (time.monotonic() - t0)
            if ahead > 0.001:
                time.sleep(ahead)
        if n % 10_000 == 0:
            # The writer keeps every record until it is acknowledged: flush now and then to bound that.
            if n % 100_000 == 0:
                writer.flush()
            else:
                writer._poll(0)  # noqa: SLF001
            if progress is not None:
                progress(n)
    writer.flush()
    return n
