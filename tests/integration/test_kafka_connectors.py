"""connectors.kafka against a real broker (Tansu from the fixture): source, writer, sink, producer tool.

Every test uses its own topics (uuid suffix); none skips: a missing broker binary or kcat is a failure.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax import operators as op
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSink, TestingSource, run_main

from connectors.kafka.config import kafka_config, redacted
from connectors.kafka.produce import produce_jsonl
from connectors.kafka.source import KafkaRawSource
from connectors.kafka.writer import KafkaJsonWriter
from state.batches import RawBatch, Tick
from state.routing import shard_of_raw
from tests.helpers import wait_until
from tests.kafka_helpers import Broker, KafkaJsonSink, create_topics, kcat, produce_lines, read_topic_to_end, unique

pytestmark = pytest.mark.kafka

KINDS = ("moment", "action", "tag", "context", "dead_letter")


def _event(i: int, customer: str) -> bytes:
    return orjson.dumps({"event_id": f"e{i}", "customer_id": customer, "ts": 1_700_000_000_000 + i,
                         "channel": "app", "type": "view", "journey": "cart", "step": "product"})


def _key(line: bytes) -> bytes | None:
    try:
        return str(orjson.loads(line)["customer_id"]).encode()
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def _topics(addr: str, partitions: int = 2) -> dict[str, str]:
    names = {k: unique(f"cx.{k}") for k in KINDS}
    create_topics(addr, names.values(), partitions=partitions)
    return names


def _run_source(source: KafkaRawSource) -> list[tuple[str, RawBatch]]:
    out: list[tuple[str, RawBatch]] = []
    flow = Dataflow("kafka_source_test")
    op.output("out", op.input("inp", flow, source), TestingSink(out))
    run_main(flow)
    return out


def test_kafka_config_maps_env_to_librdkafka_names_and_redacts_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CX_KAFKA_BOOTSTRAP_SERVERS", "b1:9092,b2:9092")
    monkeypatch.setenv("CX_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("CX_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("CX_KAFKA_SSL_KEY_PASSWORD", "pem-secret")
    conf = kafka_config(overrides={"client.id": "cx-test"})
    assert conf["bootstrap.servers"] == "b1:9092,b2:9092"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.password"] == "hunter2"
    assert conf["client.id"] == "cx-test"
    shown = redacted(conf)
    assert shown["sasl.password"] == "***"
    assert shown["ssl.key.password"] == "***"
    assert shown["sasl.mechanism"] == "SCRAM-SHA-512"
    assert "hunter2" not in repr(shown)


def test_writer_delivers_records_keyed_by_customer_id(kafka: str, tmp_path: Path) -> None:
    names = _topics(kafka)
    writer = KafkaJsonWriter({"bootstrap.servers": kafka}, names)
    moments = [{"moment_id": f"m{i}", "customer_id": f"cust-{i % 7}", "rule": "cart.failed"} for i in range(50)]
    writer.add("moment", moments)
    writer.write([("tag", {"customer_id": "cust-1", "tag": "cart_failed", "state": "open"}),
                  ("dead_letter", {"reason": "not_json", "raw": "oops"})])
    writer.add("journey_step", [{"customer_id": "x"}])  # a kind without a topic (ClickHouse only) is not published
    writer.flush()
    writer.close()

    got = read_topic_to_end(kafka, names["moment"])
    assert sorted((k, orjson.loads(v)["moment_id"]) for k, v in got) == sorted(
        (m["customer_id"].encode(), m["moment_id"]) for m in moments)
    # Keyed by customer: one customer's records share a partition, so they stay in order.
    for cust in {m["customer_id"] for m in moments}:
        ids = [orjson.loads(v)["moment_id"] for k, v in got if k == cust.encode()]
        assert ids == [m["moment_id"] for m in moments if m["customer_id"] == cust]
    assert [(k, orjson.loads(v)["state"]) for k, v in read_topic_to_end(kafka, names["tag"])] == [(b"cust-1", "open")]
    assert [(k, orjson.loads(v)["reason"]) for k, v in read_topic_to_end(kafka, names["dead_letter"])] == [
        (None, "not_json")]

    # kcat, an independent client, sees the same records with the same keys.
    out = kcat(tmp_path, "-b", kafka, "-C", "-t", names["moment"], "-e", "-q", "-f", "%k\t%s\n")
    lines = [ln.split("\t", 1) for ln in out.strip().splitlines()]
    assert sorted((k, orjson.loads(v)["moment_id"]) for k, v in lines) == sorted(
        (m["customer_id"], m["moment_id"]) for m in moments)


def test_writer_refuses_items_of_a_kind_without_topic(kafka: str) -> None:
    writer = KafkaJsonWriter({"bootstrap.servers": kafka}, {"moment": unique("cx.moments")})
    with pytest.raises(ValueError, match="'journey_state'"):
        writer.write([("journey_state", {"customer_id": "c"})])


def test_sink_in_a_dataflow_publishes_each_kind_to_its_topic(kafka: str) -> None:
    names = _topics(kafka)
    items: list[tuple[str, dict[str, Any]]] = [
        ("moment", {"customer_id": "c1", "moment_id": "m1"}),
        ("action", {"customer_id": "c2", "moment_id": "m2", "channel": "sms"}),
        ("context", {"customer_id": "c1", "recent_steps": ["cart"]}),
        ("moment", {"customer_id": "c3", "moment_id": "m3"}),
    ]
    flow = Dataflow("kafka_sink_test")
    op.output("out", op.input("inp", flow, TestingSource(items, batch_size=2)),
              KafkaJsonSink({"bootstrap.servers": kafka}, names))
    run_main(flow)
    assert sorted((k, orjson.loads(v)["moment_id"]) for k, v in read_topic_to_end(kafka, names["moment"])) == [
        (b"c1", "m1"), (b"c3", "m3")]
    assert [orjson.loads(v)["channel"] for _k, v in read_topic_to_end(kafka, names["action"])] == ["sms"]
    assert [k for k, _v in read_topic_to_end(kafka, names["context"])] == [b"c1"]


def test_source_reads_every_message_of_all_partitions_grouped_by_shard(kafka: str) -> None:
    topic = unique("cx.events")
    create_topics(kafka, [topic], partitions=4)
    lines = [_event(i, f"cust-{i % 97}") for i in range(3000)]
    # Messages the pipeline will dead-letter still travel: without a usable customer id they go to shard 0.
    lines += [b"not json", b'{"customer_id": 17}', b"", b'{"customer_id": "esc\\u0041ped"}']
    produce_lines(kafka, topic, lines, key_of=_key)
    shards = 5

    out = _run_source(KafkaRawSource({"bootstrap.servers": kafka}, topic, shards, create_topics=False,
                                     batch_size=500, stop_at_end=True))

    seen: Counter[bytes] = Counter()
    positions: set[tuple[int, int]] = set()
    for key, batch in out:
        assert isinstance(batch, RawBatch)
        assert batch.source == f"kafka:{topic}"
        assert 0 <= batch.partition < 4
        assert len(batch.values) == len(batch.offsets) > 0
        assert batch.offsets == sorted(batch.offsets)
        assert {shard_of_raw(v, shards) for v in batch.values} == {int(key)}
        seen.update(batch.values)
        positions.update((batch.partition, o) for o in batch.offsets)
    assert seen == Counter(lines)
    assert len(positions) == len(lines)  # every (partition, offset) exactly once
    assert {p for p, _o in positions} == {0, 1, 2, 3}


def test_source_resumes_from_the_snapshotted_offset_and_reports_lag(kafka: str) -> None:
    topic = unique("cx.events")
    create_topics(kafka, [topic], partitions=1)
    lines = [_event(i, "cust-1") for i in range(20)]
    produce_lines(kafka, topic, lines)
    lags: list[tuple[str, int, int]] = []
    source = KafkaRawSource({"bootstrap.servers": kafka}, topic, 2, create_topics=False, batch_size=5,
                            stop_at_end=True, on_lag=lambda t, p, lag: lags.append((t, p, lag)), lag_interval_s=0)
    assert source.list_parts() == [f"{topic}:0"]
    part = source.build_part("inp", f"{topic}:0", 12)
    got: list[int] = []
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:  # until StopIteration at the partition's end
            for _k, batch in part.next_batch():
                got.extend(batch.offsets)
    except StopIteration:
        pass
    finally:
        part.close()
    assert got == list(range(12, 20))
    assert part.snapshot() == (20, 0)
    assert lags, "no lag reported"
    assert lags[-1] == (topic, 0, 0)
    assert all(0 <= lag <= 8 for _t, _p, lag in lags)


def _final_ticks(part: Any, deadline_s: float = 30) -> list[Tick]:
    """Read a stop-at-end partition to its end; return the final ticks it sent."""
    ticks: list[Tick] = []
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            ticks += [v for _k, v in part.next_batch() if type(v) is Tick and v.final]
        raise AssertionError("the partition never ended")
    except StopIteration:
        return ticks


def test_a_resumed_replay_partitions_final_tick_covers_what_was_read_before_the_restart(kafka: str) -> None:
    topic = unique("cx.events")
    create_topics(kafka, [topic], partitions=1)
    peak = 1_700_000_000_000 + 3_600_000
    # The largest time comes first: everything after it is older.
    lines = [orjson.dumps({"event_id": "p", "customer_id": "cust-1", "ts": peak, "channel": "app", "type": "view"})]
    lines += [_event(i, "cust-1") for i in range(30)]
    produce_lines(kafka, topic, lines)

    def source() -> KafkaRawSource:
        return KafkaRawSource({"bootstrap.servers": kafka}, topic, 4, create_topics=False, batch_size=5,
                              stop_at_end=True, final_tick=True)

    before = source().build_part("inp", f"{topic}:0", None)
    try:
        deadline = time.monotonic() + 30
        while before.snapshot()[0] < 1:
            assert time.monotonic() < deadline, "nothing read"
            before.next_batch()
        state = before.snapshot()
    finally:
        before.close()
    assert state[1] == peak
    after = source().build_part("inp", f"{topic}:0", state)
    try:
        ticks = _final_ticks(after)
    finally:
        after.close()
    assert {t.max_ts_ms for t in ticks} == {peak}
    assert after.snapshot() == (31, peak)
    # Recovery state from before the time was stored (the offset alone) still resumes at its offset.
    old = source().build_part("inp", f"{topic}:0", 25)
    try:
        ticks = _final_ticks(old)
    finally:
        old.close()
    assert {t.max_ts_ms for t in ticks} == {1_700_000_000_000 + 29}
    assert old.snapshot() == (31, 1_700_000_000_000 + 29)


def test_a_live_partition_reports_how_far_behind_its_newest_time_each_message_came(kafka: str) -> None:
    topic = unique("cx.events")
    create_topics(kafka, [topic], partitions=1)
    t0 = 1_700_000_000_000
    # Offsets (ms) of one partition's messages: 3 in order, then 1.5 s and 2.5 s behind the newest, then in order.
    times = [0, 1_000, 4_000, 2_500, 1_500, 5_000]
    produce_lines(kafka, topic, [orjson.dumps({"event_id": f"e{i}", "customer_id": "cust-1", "ts": t0 + t,
                                               "channel": "app", "type": "view"}) for i, t in enumerate(times)])
    calls: list[tuple[str, int, int, list[int]]] = []
    source = KafkaRawSource({"bootstrap.servers": kafka}, topic, 2, create_topics=False, batch_size=2,
                            stop_at_end=True, on_disorder=lambda *a: calls.append(a))  # type: ignore[arg-type]
    part = source.build_part("inp", f"{topic}:0", None)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            part.next_batch()
    except StopIteration:
        pass
    finally:
        part.close()
    assert sum(n for _s, _p, n, _b in calls) == 4
    assert [d for _s, _p, _n, b in calls for d in b] == [1_500, 2_500]
    assert {(s, p) for s, p, _n, _b in calls} == {(f"kafka:{topic}", 0)}


def test_source_fails_naming_topic_and_broker_when_the_topic_is_missing(kafka: str) -> None:
    topic = unique("cx.absent")
    source = KafkaRawSource({"bootstrap.servers": kafka}, topic, 2, create_topics=False, stop_at_end=True)
    with pytest.raises(RuntimeError, match="do not exist") as info:
        source.list_parts()
    assert topic in str(info.value)
    assert kafka in str(info.value)
    # Through a dataflow, the same message reaches the operator.
    with pytest.raises(Exception) as info2:  # noqa: PT011 - Bytewax wraps the error in its own type
        _run_source(source)
    chain = []
    err: BaseException | None = info2.value
    while err is not None:
        chain.append(str(err))
        err = err.__cause__
    assert any(topic in s and kafka in s for s in chain), chain


def test_source_creates_a_missing_topic_with_the_requested_partitions(kafka: str) -> None:
    topic = unique("cx.created")
    source = KafkaRawSource({"bootstrap.servers": kafka}, topic, 2, create_topics=True, partitions=3)
    assert source.list_parts() == [f"{topic}:0", f"{topic}:1", f"{topic}:2"]


def test_produce_jsonl_keys_lines_by_customer_id_at_the_chosen_rate(kafka: str, tmp_path: Path) -> None:
    topic = unique("cx.events")
    create_topics(kafka, [topic], partitions=2)
    path = tmp_path / "events.jsonl"
    lines = [_event(i, f"c{i % 3}") for i in range(40)]
    lines += [b'{"customer_id":"esc\\"aped","event_id":"x"}', b'{"event_id":"no-customer"}', b"garbage"]
    path.write_bytes(b"\n".join(lines[:20]) + b"\n\n" + b"\n".join(lines[20:]) + b"\n")
    t0 = time.monotonic()
    n = produce_jsonl(path, topic, {"bootstrap.servers": kafka}, rate=100, create=False)
    elapsed = time.monotonic() - t0
    assert n == len(lines)  # the blank line is not a message
    assert elapsed >= 0.35, f"{n} messages at 100/s took only {elapsed:.2f}s"
    got = read_topic_to_end(kafka, topic)
    assert sorted(got, key=lambda kv: kv[1]) == sorted(((_key(v), v) for v in lines), key=lambda kv: kv[1])


def test_produce_jsonl_drops_a_byte_order_mark_as_the_file_source_does(kafka: str, tmp_path: Path) -> None:
    # A tester's (session 12): the same file gave one event fewer through `moments produce` and Kafka than read
    # directly (the file source drops a leading UTF-8 BOM; this tool sent it, a `not_json` dead letter).
    topic = unique("cx.events")
    create_topics(kafka, [topic], partitions=1)
    path = tmp_path / "events.jsonl"
    lines = [_event(i, "c1") for i in range(3)]
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")
    assert produce_jsonl(path, topic, {"bootstrap.servers": kafka}, create=False) == 3
    assert [v for _, v in read_topic_to_end(kafka, topic)] == lines


@pytest.mark.parametrize("idempotence", ["true", "false"])
def test_writer_keeps_retrying_while_the_broker_is_down_and_delivers_after_restart(
    own_broker: Broker, idempotence: str
) -> None:
    own_broker.start()
    topic = unique("cx.moments")
    create_topics(own_broker.addr, [topic], partitions=2)
    retries: list[int] = []
    # A short message timeout makes librdkafka give records back during the outage, so the writer's own
    # re-produce path runs too (not only librdkafka's internal retries).
    writer = KafkaJsonWriter({"bootstrap.servers": own_broker.addr, "enable.idempotence": idempotence,
                              "message.timeout.ms": "3000"}, {"moment": topic},
                             on_retry=lambda _t, attempt, _e, _d: retries.append(attempt), stall_s=5)
    writer.add("moment", [{"customer_id": "before", "moment_id": "b1"}])
    writer.flush()

    own_broker.stop()
    writer.add("moment", [{"customer_id": f"c{i}", "moment_id": f"a{i}"} for i in range(20)])
    done = threading.Event()
    failure: list[BaseException] = []

    def flush() -> None:
        try:
            writer.flush()
        except BaseException as e:  # noqa: BLE001 - reported to the test thread
            failure.append(e)
        done.set()

    flusher = threading.Thread(target=flush, daemon=True)
    flusher.start()
    # Blocked, observed: the writer gave failed records back to the producer twice (the message timeout ran out
    # during the outage, then again) and still holds the flush.
    wait_until(lambda: len(retries) >= 2 or done.is_set(), 60, "the writer to produce failed records again twice")
    assert not done.is_set(), f"flush returned while the broker was down: {failure}"
    assert not writer.writable()
    own_broker.start()
    # The test broker keeps data in memory: it comes back empty, so the topic is created again.
    create_topics(own_broker.addr, [topic], partitions=2)
    assert done.wait(90), "records not delivered within 90 s of the broker's return"
    assert not failure, failure
    assert writer.writable()
    assert retries, "the writer never produced failed records again"
    got = {orjson.loads(v)["moment_id"] for _k, v in read_topic_to_end(own_broker.addr, topic)}
    assert got >= {f"a{i}" for i in range(20)}  # at least once; ids make a duplicate harmless
    writer.close()


def test_a_live_partition_ticks_behind_while_it_has_a_backlog_and_caught_up_at_its_end(kafka: str) -> None:
    topic = unique("cx.events")
    create_topics(kafka, [topic], partitions=1)
    produce_lines(kafka, topic, [_event(i, "cust-1") for i in range(23)])
    source = KafkaRawSource({"bootstrap.servers": kafka}, topic, 2, create_topics=False, batch_size=5,
                            live_ticks=True)
    part = source.build_part("inp", f"{topic}:0", None)
    said: list[tuple[int, bool]] = []  # (events read before the tick, behind)
    read = 0
    try:
        deadline = time.monotonic() + 30
        while read < 23 or not said or said[-1][1]:
            assert time.monotonic() < deadline, f"read {read}, ticks {said}"
            for _k, item in part.next_batch():
                if type(item) is Tick:
                    if not said or said[-1][1] != item.behind:  # changes only (one tick per shard key)
                        said.append((read, item.behind))
                else:
                    read += len(item.values)
        # Caught up and idle: nothing more is said.
        for _ in range(20):
            assert not [v for _k, v in part.next_batch() if type(v) is Tick]
        produce_lines(kafka, topic, [_event(100 + i, "cust-1") for i in range(12)])
        while read < 35 or said[-1] != (35, False):
            assert time.monotonic() < deadline, f"read {read}, ticks {said}"
            for _k, item in part.next_batch():
                if type(item) is Tick:
                    if said[-1][1] != item.behind:
                        said.append((read, item.behind))
                else:
                    read += len(item.values)
    finally:
        part.close()
    # Batches of 5 cannot reach the end of 23 messages: behind from the first batch until the end is reached.
    assert said[0] == (5, True)
    assert said[1] == (23, False)
    # A burst after the end: behind again while it is read, caught up at its end.
    assert said[2][1] is True
    assert said[2][0] > 23
    assert said[-1] == (35, False)


def test_a_live_partition_under_a_steady_trickle_is_caught_up(kafka: str) -> None:
    # The broker's long poll always returns a message under a trickle, so no end-of-partition event comes: being
    # caught up is judged by the high watermark of the last fetch (before, the partition stayed "behind" for good
    # and the wall clock never moved a live watermark while any partition had steady traffic).
    topic = unique("cx.events")
    create_topics(kafka, [topic], partitions=1)
    stop = threading.Event()

    def trickle() -> None:
        i = 0
        while not stop.is_set():
            produce_lines(kafka, topic, [_event(i, "cust-1")])
            i += 1
            time.sleep(0.02)

    producer = threading.Thread(target=trickle, daemon=True)
    producer.start()
    source = KafkaRawSource({"bootstrap.servers": kafka}, topic, 2, create_topics=False, batch_size=5,
                            live_ticks=True)
    part = source.build_part("inp", f"{topic}:0", None)
    said: list[bool] = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (said and said[-1] is False):
            said += [v.behind for _k, v in part.next_batch() if type(v) is Tick][:1]
        assert said, "no tick"
        assert said[-1] is False, said
    finally:
        stop.set()
        producer.join(5)
        part.close()
