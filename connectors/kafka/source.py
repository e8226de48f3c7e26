"""``KafkaRawSource``: a Bytewax source over the partitions of the input topics.

It reads raw ``consume()`` batches (Bytewax's stock ``KafkaSource`` costs ~4x more per message) and routes raw
bytes to shards; it resumes from snapshotted offsets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from connectors.kafka.admin import ensure_topics
from connectors.kafka.config import consumer_conf, reset_policy
from connectors.kafka.errors import UNDECODABLE
from state.batches import RawBatch, Tick
from state.events import BASE_TYPES
from state.routing import shard_of_raw, tracked_ts, validated_max_ts

if TYPE_CHECKING:
    from connectors.disorder import DisorderHook

log = logging.getLogger("cx.kafka")


Item = tuple[str, RawBatch | Tick]


def _ignore_lag(_topic: str, _partition: int, _lag: int) -> None:
    """Lag callback of a partition nobody asked lag reports of (its position check still runs)."""


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
                 clock: bool = True, ticks: bool = False, on_disorder: DisorderHook | None = None,
                 live_ticks: bool = False) -> None:
        self._final_tick = final_tick and stop_at_end
        # Live: tick when the partition falls behind (read up to less than the high watermark of its last fetch),
        # while it is behind (its largest time, which a backlog's watermark follows), and when it catches up: the
        # shards let the wall clock move their watermarks only while no partition has a backlog.
        self._live_ticks = live_ticks and clock
        self._behind: bool | None = None  # what the last live tick said (None: nothing said yet)
        # A replay's event partitions tick after every batch: the shards' watermarks follow the slowest one.
        self._ticks = ticks and clock
        self._ticked = -1  # the time the last tick carried: an unchanged one is not sent again
        # Feedback records are not events: they never move the input's end-of-input time (their final tick
        # carries 0), whatever fields they carry.
        self._track = (self._final_tick or self._ticks or self._live_ticks) and clock
        self._types = types
        self._max_ts = max_ts
        # Disorder of event partitions: the newest valid event time read, which each message is measured against.
        self._on_disorder = on_disorder if clock else None
        self._newest = max_ts
        self._consumer = Consumer(consumer_conf(conf))
        self._topic = topic
        self._part = partition
        self._tp = TopicPartition(topic, partition)  # for the cached high watermark (``_has_backlog``)
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
        measure = self._on_disorder is not None
        newest = self._newest
        behind: list[int] = []
        candidates: list[tuple[int, bytes]] = []
        max_ts = self._max_ts
        skipped: list[tuple[int, str]] = []
        for m in msgs:
            err = m.error()
            if err is not None:
                # Reaching the end of the partition is news, not an error.
                if err.code() == KafkaError._PARTITION_EOF:
                    self._eof = True
                elif err.code() in UNDECODABLE and (bad_at := m.offset()) is not None and bad_at >= 0:
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
            if track or measure:
                t = tracked_ts(raw)
                if t is not None:
                    if t > max_ts:
                        candidates.append((t, raw))
                    if t < newest:
                        behind.append(newest - t)
                    else:
                        newest = t
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
        if candidates:
            # Only a line its shard accepts (valid, same ts, routed to its own customer's shard) moves the clock.
            valid = validated_max_ts(candidates, self._types, shards=shards)
            if track:
                self._max_ts = max(max_ts, valid)
            self._newest = max(self._newest, valid)
        if self._on_disorder is not None:
            # Every other message counts as in order (one without a ts too: it is dead-lettered anyway).
            self._on_disorder(self._source, self._part, sum(map(len, values.values())) - len(behind), behind)
        if self._final_tick and self._eof:
            # The partition's end in a replay: every shard (in every process: the exchange routes by key)
            # hears its largest valid event time, and flushes to the whole input's largest at end of input.
            tick = Tick(self._max_ts, final=True, partition=f"{self._source}[{self._part}]")
            items.extend((k, tick) for k in self._keys)
        elif self._ticks and self._max_ts > self._ticked:
            # After the batch's events (same key, same order): none of them is below what the tick says.
            self._ticked = self._max_ts
            tick = Tick(self._max_ts, partition=f"{self._source}[{self._part}]")
            items.extend((k, tick) for k in self._keys)
        elif self._live_ticks:
            backlog = self._has_backlog()
            if backlog is not self._behind or (backlog and self._max_ts > self._ticked):
                self._behind = backlog
                self._ticked = self._max_ts
                tick = Tick(self._max_ts, partition=f"{self._source}[{self._part}]", behind=backlog)
                items.extend((k, tick) for k in self._keys)
        return items

    def _has_backlog(self) -> bool:
        """Whether messages wait beyond what was read: by the high watermark of the last fetch (no network call).

        An end-of-partition event alone would not do: under a steady trickle the broker's long poll always returns
        a message, so it never comes.
        """
        if self._eof:
            return False
        try:
            high = self._consumer.get_watermark_offsets(self._tp, cached=True)[1]
        except KafkaException:
            return True
        return high < 0 or self._next < high

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
        ticks: A replay: after every batch, send every shard a ``Tick`` with the partition's largest valid event
            time so far (feedback partitions do not tick), which the shards' watermarks follow.
        live_ticks: Live: send every shard a ``Tick`` with ``behind`` set when an event partition falls behind
            (a batch that did not reach its end), and unset when it reaches its end; the shards' wall clocks wait
            for every partition to be caught up (``state.watermark``).
        on_disorder: Called once per batch of an event partition with its messages' disorder (``DisorderHook``).
    """

    def __init__(self, conf: dict[str, str], topics: str | list[str], shards: int, *, create_topics: bool = True,
                 partitions: int = 4, batch_size: int = 10_000, stop_at_end: bool = False,
                 on_lag: Callable[[str, int, int], None] | None = None,
                 on_error: Callable[[str, int, KafkaError], None] | None = None,
                 lag_interval_s: float = 5.0, on_reset: Callable[[str], None] | None = None,
                 final_tick: bool = False, types: Collection[str] = BASE_TYPES,
                 feedback_topics: Collection[str] = (), ticks: bool = False,
                 on_disorder: DisorderHook | None = None, live_ticks: bool = False) -> None:
        self._on_disorder = on_disorder
        self._ticks = ticks
        self._live_ticks = live_ticks
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
                               clock=topic not in self._feedback, ticks=self._ticks,
                               on_disorder=self._on_disorder, live_ticks=self._live_ticks)
