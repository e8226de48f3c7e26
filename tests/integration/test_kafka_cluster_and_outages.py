"""Scale-out and broker outages against real Tansu brokers."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate
from tests.helpers import wait_until
from tests.kafka_helpers import Broker, create_topics, free_port, produce, unique, wait_for_messages
from tests.worker import Worker

pytestmark = pytest.mark.kafka

KIND_ENV = {"events": "EVENTS", "feedback": "FEEDBACK", "moment": "MOMENT", "action": "ACTION", "tag": "TAG",
            "context": "CONTEXT", "dead_letter": "DEAD_LETTER"}


def _key(v: bytes) -> bytes:
    return str(orjson.loads(v)["customer_id"]).encode()


def _topics(addr: str, partitions: int) -> dict[str, str]:
    names = {k: unique(f"cx.{k}") for k in KIND_ENV}
    create_topics(addr, names.values(), partitions=partitions)
    return names


def _env(names: dict[str, str]) -> dict[str, str]:
    return {f"CX_TOPIC_{KIND_ENV[k]}": v for k, v in names.items()}


def _replay_args(addr: str, out: Path) -> list[str]:
    # Replay clock with a lateness longer than the input, stopping at the end of every partition: the result
    # must not depend on how partitions interleave, only on the events.
    return ["--source", "kafka", "--kafka-bootstrap", addr, "--clock", "replay", "--lateness", "7d",
            "--kafka-stop-at-end", "--sink", f"jsonl:{out}", "--no-metrics", "--status", "off"]


def test_two_process_cluster_publishes_the_same_moments_as_one_process(kafka: str, tmp_path: Path) -> None:
    names = _topics(kafka, partitions=4)
    events = [orjson.dumps(e) for e in simulate(400, 60, seed=21).events()]
    produce(kafka, names["events"], events, key_of=_key)

    single = Worker(_replay_args(kafka, tmp_path / "one"), tmp_path / "one.log", env=_env(names))
    assert single.wait(180) == 0, single.log()[-3000:]
    ports = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    cluster = [Worker([*_replay_args(kafka, tmp_path / "two"), "-i", str(i), "-a", ports],
                      tmp_path / f"two-{i}.log", env=_env(names)) for i in range(2)]
    for w in cluster:
        assert w.wait(180) == 0, w.log()[-3000:]
    one = {m["moment_id"] for m in read_jsonl(tmp_path / "one" / "moments.jsonl")}
    two = {m["moment_id"] for m in read_jsonl(tmp_path / "two" / "moments.jsonl")}
    assert len(one) > 50
    assert one == two


def test_kafka_cluster_processes_with_different_lateness_both_stop_naming_it(kafka: str, tmp_path: Path) -> None:
    """Kafka partitions carry no in-dataflow handshake: the settings exchange before Bytewax starts must catch it."""
    names = _topics(kafka, partitions=2)
    ports = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    lateness = [[], ["--lateness", "1h"]]
    cluster = [Worker([*_replay_args(kafka, tmp_path / f"p{i}"), "-i", str(i), "-a", ports, *lateness[i]],
                      tmp_path / f"p{i}.log", env=_env(names)) for i in range(2)]
    values = ("604800000ms", "3600000ms")
    for i, w in enumerate(cluster):
        assert w.wait(120) == 2, w.log()[-3000:]
        errors = [line for line in w.log().splitlines() if "error:" in line]
        assert len(errors) == 1, w.log()[-3000:]
        assert (f"configuration: --lateness: process {1 - i} of the cluster runs with --lateness {values[1 - i]}, "
                f"process {i} with {values[i]}") in errors[0]


def test_worker_started_before_the_broker_waits_and_then_processes(own_broker: Broker, tmp_path: Path) -> None:
    out = tmp_path / "out"
    worker = Worker(["--source", "kafka", "--kafka-bootstrap", own_broker.addr, "--sink", "kafka", "--sink",
                     f"jsonl:{out}", "--no-metrics", "--status", "log", "--lateness", "1s", "--tick", "0.2"],
                    tmp_path / "w.log")
    try:
        worker.wait_log("not reachable yet", timeout_s=30)
        assert worker.alive()
        own_broker.start()
        t = time.time_ns() // 1_000_000
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                produce(own_broker.addr, "cx.events", [orjson.dumps({"event_id": "a", "customer_id": "c", "ts": t,
                                                                      "channel": "app", "type": "fail",
                                                                      "journey": "cart"})])
                break
            except Exception:  # noqa: BLE001 - the topic appears once the worker created it
                time.sleep(0.5)
        moments = wait_for_messages(own_broker.addr, "cx.moments", 1, timeout_s=60)
        assert orjson.loads(moments[0][1])["rule"] == "cart.failed"
    finally:
        worker.stop()


def test_broker_outage_mid_run_is_survived_without_restart(own_broker: Broker, tmp_path: Path) -> None:
    own_broker.start()
    out = tmp_path / "out"
    worker = Worker(["--source", "kafka", "--kafka-bootstrap", own_broker.addr, "--sink", "kafka", "--sink",
                     f"jsonl:{out}", "--no-metrics", "--status", "log", "--lateness", "1s", "--tick", "0.2"],
                    tmp_path / "w.log")
    try:
        worker.wait_log("starting:", timeout_s=30)
        t = time.time_ns() // 1_000_000

        def fail_event(eid: str, customer: str, ts: int) -> bytes:
            return orjson.dumps({"event_id": eid, "customer_id": customer, "ts": ts, "channel": "app",
                                 "type": "fail", "journey": "cart"})

        produce(own_broker.addr, "cx.events", [fail_event("b1", "before", t)], key_of=_key)
        wait_for_messages(own_broker.addr, "cx.moments", 1, timeout_s=60)
        seen = worker.log().count("Kafka consumer")
        own_broker.stop()
        # The worker has met the outage once its consumer logs it (rate-limited); it must still run then.
        wait_until(lambda: worker.log().count("Kafka consumer") > seen or not worker.alive(), 60,
                   "the worker to log the outage", detail=lambda: worker.log()[-3000:])
        assert worker.alive(), worker.log()[-3000:]
        own_broker.start()
        # The test broker keeps data in memory: it returns empty, so the topics are created again.
        create_topics(own_broker.addr, ["cx.events", "cx.moments", "cx.tags", "cx.context", "cx.deadletter",
                                        "cx.actions", "cx.feedback"], partitions=4)
        produce(own_broker.addr, "cx.events", [fail_event("a1", "after", time.time_ns() // 1_000_000)], key_of=_key)
        moments = wait_for_messages(own_broker.addr, "cx.moments", 1, timeout_s=90)
        assert [orjson.loads(v)["customer_id"] for _k, v in moments] == ["after"]
        assert worker.alive()
        log = worker.log()
        assert "Kafka consumer:" in log, log[-3000:]  # the outage was logged (rate-limited)
        jsonl = [m["customer_id"] for m in read_jsonl(out / "moments.jsonl")]
        assert jsonl == ["before", "after"]
    finally:
        worker.stop()
