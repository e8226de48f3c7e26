"""``KafkaJsonWriter``: publishes records as JSON keyed by ``customer_id``; never drops a record.

A record is kept until the broker acknowledged it and produced again (with backoff, on a new producer if need
be) until then: at worst duplicated.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from connectors.kafka.config import producer_conf, redacted
from connectors.kafka.errors import REFUSED, is_fatal, refused_error
from connectors.records import KINDS, PUBLISHED

log = logging.getLogger("cx.kafka")


OUTPUT_KINDS = PUBLISHED

_Record = tuple[str, bytes | None, bytes]





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

    A record the broker or the client refuses for what it is (too large, invalid: ``REFUSED``, raised by
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
        self._conf = producer_conf(conf)
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
                elif err.code() in REFUSED:
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
                refused = refused_error(e)
                if refused is not None:
                    self._refused.append(((topic, key, value), refused.str()))
                    return
                if not is_fatal(e):
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
            if not is_fatal(e):
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
            if not is_fatal(e):
                raise
        self._fatal = False
        self._failed = []
        self._producer = self._new_producer()
        for t, k, v in list(self._unacked):
            self._send(t, k, v)

    def add(self, kind: str, rows: list[dict[str, Any]]) -> None:
        """Queue rows of one kind (kinds this writer does not publish, e.g. journey states, are skipped).

        Args:
            kind: Record kind, e.g. ``moment``.
            rows: Records; each is keyed by its ``customer_id`` (no key when it has none, e.g. dead letters).

        Raises:
            ValueError: naming a kind that is no record kind at all (a typo would otherwise lose its records).
        """
        topic = self._topics.get(kind)
        if topic is None:
            if kind not in KINDS:
                raise ValueError(f"unknown record kind {kind!r} (connectors/records.py defines {', '.join(KINDS)})")
            return
        if not rows:
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
                if not is_fatal(e):
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
