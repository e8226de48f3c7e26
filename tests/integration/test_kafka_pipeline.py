"""``moments run --source kafka`` against a real broker (Tansu), read back like a downstream system would."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from state.moments import moment_id
from state.policy import in_holdout
from tests.chdb_query import query
from tests.kafka_helpers import create_topics, kcat, produce, read_topic, unique, wait_for_messages
from tests.worker import Worker

pytestmark = pytest.mark.kafka

KINDS = {"events": "EVENTS", "feedback": "FEEDBACK", "moment": "MOMENT", "action": "ACTION", "tag": "TAG",
         "context": "CONTEXT", "dead_letter": "DEAD_LETTER"}


def _now() -> int:
    return time.time_ns() // 1_000_000


def _ev(eid: str, ts: int, type_: str, customer: str = "cust-1", **kw: object) -> bytes:
    d = {"event_id": eid, "customer_id": customer, "ts": ts, "channel": "app", "type": type_, **kw}
    return orjson.dumps(d)


def _key(v: bytes) -> bytes | None:
    try:
        return str(orjson.loads(v)["customer_id"]).encode()
    except Exception:  # noqa: BLE001 - garbage has no key
        return None


@pytest.fixture
def topics(kafka: str) -> dict[str, str]:
    """One set of topics per test, created up front."""
    names = {k: unique(f"cx.{k}") for k in KINDS}
    create_topics(kafka, names.values(), partitions=2)
    return names


def _topic_env(names: dict[str, str]) -> dict[str, str]:
    return {f"CX_TOPIC_{KINDS[k]}": v for k, v in names.items()}


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[object]:
    workers: list[Worker] = []

    def start(bootstrap: str, names: dict[str, str], *extra: str, name: str = "w") -> Worker:
        args = ["--source", "kafka", "--kafka-bootstrap", bootstrap, "--sink", "kafka", "--sink",
                f"jsonl:{tmp_path / name / 'out'}", "--sink", f"chdb://{tmp_path / name / 'ch'}", "--metrics-port",
                "0", "--status", "log", "--lateness", "1s", "--tick", "0.2", *extra]
        w = Worker(args, tmp_path / f"{name}.log", env=_topic_env(names))
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def test_events_flow_to_every_output_topic_keyed_by_customer(kafka: str, topics: dict[str, str],
                                                             worker_factory: object, tmp_path: Path) -> None:
    worker = worker_factory(kafka, topics)  # type: ignore[operator]
    t = _now()
    produce(kafka, topics["events"], [
        _ev("e1", t, "view", journey="cart", step="product"),
        _ev("e2", t + 1, "fail", journey="cart", step="payment", attrs={"reason": "card_declined"}),
        _ev("e3", t + 2, "contact"),
    ], key_of=_key)
    # A contact on the call centre hands off the cart journey's context.
    produce(kafka, topics["events"], [orjson.dumps({"event_id": "e4", "customer_id": "cust-1", "ts": t + 3,
                                                    "channel": "call_center", "type": "contact"})], key_of=_key)
    moments = wait_for_messages(kafka, topics["moment"], 2, timeout_s=60)
    rules = sorted(orjson.loads(v)["rule"] for _k, v in moments)
    assert rules == ["cart.failed", "cart.handoff"], worker.log()[-2000:]  # type: ignore[attr-defined]
    assert {k for k, _v in moments} == {b"cust-1"}
    failed = next(orjson.loads(v) for _k, v in moments if b"cart.failed" in v)
    assert failed["moment_id"] == moment_id("cust-1", "cart.failed", "e2")
    assert failed["attrs"] == {"reason": "card_declined"}
    # Both moments are acted on (the failure is P1, which may act in quiet hours; the handoff is agent context).
    actions = [orjson.loads(v) for _k, v in wait_for_messages(kafka, topics["action"], 2)]
    assert sorted((a["rule"], a["status"], a["channel"]) for a in actions) == [
        ("cart.failed", "sent", "outbound_call"), ("cart.handoff", "sent", "agent_screen")]
    assert {a["moment_id"] for a in actions} == {orjson.loads(v)["moment_id"] for _k, v in moments}
    tags = wait_for_messages(kafka, topics["tag"], 4)
    assert sorted(orjson.loads(v)["state"] for _k, v in tags) == ["actioned", "actioned", "open", "open"]
    context = wait_for_messages(kafka, topics["context"], 1)
    assert orjson.loads(context[0][1])["recent_steps"] == ["product", "payment"]
    # kcat, an independent client, sees the same records with the same keys.
    out = kcat(tmp_path, "-b", kafka, "-C", "-t", topics["moment"], "-e", "-q", "-f", "%k\t%s\n")
    lines = [ln.split("\t", 1) for ln in out.strip().splitlines()]
    assert sorted(orjson.loads(v)["rule"] for _k, v in lines) == ["cart.failed", "cart.handoff"]
    assert {k for k, _v in lines} == {"cust-1"}


def test_malformed_messages_are_dead_lettered_and_the_worker_keeps_running(
    kafka: str, topics: dict[str, str], worker_factory: object
) -> None:
    worker = worker_factory(kafka, topics)  # type: ignore[operator]
    t = _now()
    bad = [b"not json", b"\x00\xff\xfe binary", orjson.dumps({"event_id": "x", "customer_id": 5, "ts": t,
                                                            "channel": "app", "type": "view"}),
           b'{"pad": "' + b"y" * 70_000 + b'"}']
    produce(kafka, topics["events"], bad)
    produce(kafka, topics["events"], [_ev("ok1", t, "fail", customer="cust-2", journey="cart")], key_of=_key)
    dead = wait_for_messages(kafka, topics["dead_letter"], 4)
    records = [orjson.loads(v) for _k, v in dead]
    assert sorted(r["reason"] for r in records) == ["bad_type:customer_id", "not_json", "not_json", "too_large"]
    binary = next(r for r in records if r["raw_encoding"] == "base64")
    assert binary["source"] == f"kafka:{topics['events']}"
    assert binary["offset"] >= 0
    moments = wait_for_messages(kafka, topics["moment"], 1)
    assert orjson.loads(moments[0][1])["rule"] == "cart.failed"
    assert worker.alive()  # type: ignore[attr-defined]


def test_abandonment_is_published_within_the_live_bound_after_input_stops(
    kafka: str, topics: dict[str, str], worker_factory: object, tmp_path: Path
) -> None:
    pack = tmp_path / "short.toml"
    default = (Path(__file__).resolve().parents[2] / "flows" / "rulepacks" / "default.toml").read_text()
    pack.write_text(default.replace('idle = "10m"', 'idle = "5s"'))
    worker = worker_factory(kafka, topics, "--rules", str(pack))  # type: ignore[operator]
    # The event must reach the worker within its 1 s lateness: first make sure the consumer of its partition
    # fetches. A line that is not JSON, keyed like the event (same partition), comes back as a dead letter.
    produce(kafka, topics["events"], [b"not json"], key_of=lambda _v: b"cust-3")
    assert wait_for_messages(kafka, topics["dead_letter"], 1), worker.log()[-3000:]  # type: ignore[attr-defined]
    t = _now()
    produce(kafka, topics["events"], [_ev("k1", t, "submit", customer="cust-3", journey="cart", step="checkout")],
            key_of=_key)
    due = t + 5_000
    deadline = time.monotonic() + 90
    arrived = None
    while time.monotonic() < deadline and arrived is None:
        for _k, v in read_topic(kafka, topics["moment"], timeout_s=2):
            if orjson.loads(v)["rule"] == "cart.abandoned":
                arrived = _now()
        time.sleep(0.2)
    assert arrived is not None, worker.log()[-3000:]  # type: ignore[attr-defined]
    latency_s = (arrived - due) / 1000
    print(f"abandonment published {latency_s:.2f}s after its due time")
    assert latency_s <= 60


def test_a_p1_moment_is_published_long_before_the_lateness_has_passed(
    kafka: str, topics: dict[str, str], worker_factory: object
) -> None:
    # A 10 minute lateness: without the urgent lane nothing could come out for 10 minutes after the failure.
    worker = worker_factory(kafka, topics, "--lateness", "10m")  # type: ignore[operator]
    worker.wait_log("urgent_lateness=5000ms")  # type: ignore[attr-defined]
    t = _now()
    produce(kafka, topics["events"], [
        _ev("u1", t - 2_000, "submit", customer="cust-9", journey="cart", step="checkout"),
        _ev("u2", t, "fail", customer="cust-9", journey="cart", step="payment", attrs={"reason": "card_declined"}),
    ], key_of=_key)
    moments = wait_for_messages(kafka, topics["moment"], 1, timeout_s=120)
    failed = orjson.loads(moments[0][1])
    assert failed["rule"] == "cart.failed", worker.log()[-3000:]  # type: ignore[attr-defined]
    assert failed["moment_id"] == moment_id("cust-9", "cart.failed", "u2")
    # Detected (by the worker's own clock) well inside the lateness: the watermark was still 10 minutes behind.
    assert failed["detected_at"] - failed["due_ts"] < 600_000
    actions = [orjson.loads(v) for _k, v in wait_for_messages(kafka, topics["action"], 1)]
    assert [(a["rule"], a["status"]) for a in actions] == [("cart.failed", "sent")]


def test_feedback_changes_the_tag_state_in_clickhouse(kafka: str, topics: dict[str, str], worker_factory: object,
                                                       tmp_path: Path) -> None:
    worker = worker_factory(kafka, topics)  # type: ignore[operator]
    t = _now()
    produce(kafka, topics["events"], [_ev("f1", t, "fail", customer="cust-4", journey="cart", step="payment")],
            key_of=_key)
    moments = wait_for_messages(kafka, topics["moment"], 1)
    mid = orjson.loads(moments[0][1])["moment_id"]
    produce(kafka, topics["feedback"], [orjson.dumps({"moment_id": mid, "customer_id": "cust-4",
                                                      "outcome": "converted", "ts": t + 60_000})], key_of=_key)
    tags = wait_for_messages(kafka, topics["tag"], 2)
    # cust-4 is in cart.failed's 10 % hold-out: no action, so the tag goes from open straight to resolved.
    assert in_holdout("cust-4", "cart.failed", 0.1)
    assert [orjson.loads(v)["state"] for _k, v in tags] == ["open", "resolved"]
    # chDB allows one process per path: read after the worker ends. SIGTERM flushes every sink on the way out
    # (exit code 0 and the log line say it did), so no flush interval needs waiting for.
    worker.proc.send_signal(signal.SIGTERM)  # type: ignore[attr-defined]
    assert worker.wait(60) == 0, worker.log()[-3000:]  # type: ignore[attr-defined]
    assert "stopping on signal; flushing outputs" in worker.log()  # type: ignore[attr-defined]
    rows = query(f"chdb://{tmp_path / 'w' / 'ch'}", "SELECT state, outcome FROM customer_tags FINAL "
                 "WHERE customer_id = 'cust-4'")
    assert rows == [["resolved", "converted"]]
    stored = query(f"chdb://{tmp_path / 'w' / 'ch'}", "SELECT outcome FROM feedback")
    assert stored == [["converted"]]
