"""File replay and Kafka replay agree (issue 12 items 2 and 10), against the real dataflow and a real broker.

- Routing and parsing must agree: a key spelled with escapes and a decoy in ``attrs`` neither moves a clock
  nor splits a customer between shards, whatever the source (a line routed by its decoy is dead-lettered).
- End of input: every shard fires what is due by the whole input's largest valid time, and only once every
  partition (every file, every topic partition, every process) has ended.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.run import cli_main

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate
from flows.config import DEFAULT_TOPICS, PipelineConfig
from flows.dataflow import build_dataflow
from state.outputs import Outputs
from state.routing import shard_of_id
from tests.helpers import MIN, PACK, T0
from tests.kafka_helpers import create_topics, free_port, produce, unique
from tests.worker import Worker

SHARDS = 64
CLI_SHARDS = 512
HOSTILE_TS = 4_102_444_000_000  # valid (before 2100) and far in the future


def _ev(eid: str, customer: str, ts: int, type_: str = "view", **kw: Any) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": customer, "ts": T0 + ts, "channel": "app", "type": type_,
                         **kw})


def _key(v: bytes) -> bytes | None:
    try:
        return str(orjson.loads(v)["customer_id"]).encode()
    except Exception:  # noqa: BLE001 - garbage has no key
        return None


def _run(cfg: PipelineConfig, out: Path) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    """Run the dataflow in this process; return moments, the customers tracked at the end, dead letters."""
    customers: dict[str, int] = {}

    def written(key: str, o: Outputs, _n: int) -> None:
        customers[key] = o.customers

    cli_main(build_dataflow(cfg.validate(), PACK, written), workers_per_process=cfg.workers,
             epoch_interval=timedelta(seconds=1))
    dead = list(read_jsonl(out / "deadletter.jsonl")) if (out / "deadletter.jsonl").exists() else []
    moments = list(read_jsonl(out / "moments.jsonl")) if (out / "moments.jsonl").exists() else []
    return moments, sum(customers.values()), dead


def _file_run(files: list[list[bytes]], tmp: Path, name: str, batch_lines: int = 1,
              lateness_ms: int = 30_000) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    paths = []
    for i, lines in enumerate(files):
        p = tmp / f"{name}-{i}.jsonl"
        p.write_bytes(b"".join(line + b"\n" for line in lines))
        paths.append(str(p))
    out = tmp / name
    cfg = PipelineConfig(source="file:" + ",".join(paths), sinks=(f"jsonl:{out}",), metrics_port=None,
                         shards=SHARDS, batch_lines=batch_lines, lateness_ms=lateness_ms)
    return _run(cfg, out)


def _kafka_run(kafka: str, lines: list[bytes], tmp: Path, name: str, partitions: int,
               lateness_ms: int = 30_000, feedback: list[bytes] | None = None,
               ) -> tuple[list[dict[str, Any]], int, list[dict[str, Any]]]:
    topics = {**DEFAULT_TOPICS, "events": unique("cx.events"), "feedback": unique("cx.feedback")}
    create_topics(kafka, [topics["events"], topics["feedback"]], partitions=partitions)
    produce(kafka, topics["events"], lines, key_of=_key)
    if feedback:
        produce(kafka, topics["feedback"], feedback, key_of=_key)
    out = tmp / name
    cfg = PipelineConfig(source="kafka", sinks=(f"jsonl:{out}",), metrics_port=None, shards=SHARDS,
                         lateness_ms=lateness_ms, kafka_bootstrap=kafka, kafka_topics=topics,
                         kafka_stop_at_end=True, clock="replay")
    return _run(cfg, out)


def _abandoned(moments: list[dict[str, Any]]) -> list[str]:
    return sorted(m["customer_id"] for m in moments if m["kind"] == "abandoned")


def _routing_lines() -> list[bytes]:
    assert shard_of_id("c2", SHARDS) != shard_of_id("decoy", SHARDS)
    escaped_ts = (b'{"event_id":"h1","customer_id":"h","t\\u0073":%d,"channel":"app","type":"view",'
                  b'"attrs":{"ts":%d}}' % (T0 + MIN, HOSTILE_TS))
    decoy = (b'{"event_id":"d1","customer\\u005fid":"c2","ts":%d,"channel":"app","type":"view","journey":"cart",'
             b'"step":"product","attrs":{"customer_id":"decoy"}}' % (T0 + 5 * MIN))
    return [_ev("k1", "c1", 0, "submit", journey="cart", step="checkout"), escaped_ts,
            _ev("k2", "c2", MIN, "submit", journey="cart", step="checkout"), decoy,
            _ev("v1", "c1", 5 * MIN, journey="cart", step="product"), _ev("z", "z", 30 * MIN)]


def _check_routing_run(moments: list[dict[str, Any]], customers: int, dead: list[dict[str, Any]]) -> None:
    # Nobody's clock jumped to 2099: c1 came back to the cart within 10 minutes. The line routed by its decoy
    # never reached c2's state (anywhere): it is a dead letter, and c2, without it, abandoned the cart.
    assert _abandoned(moments) == ["c2"]
    assert [d["reason"] for d in dead] == ["routing_mismatch:customer_id"]
    assert b"decoy" in dead[0]["raw"].encode()
    assert customers == 4  # c1, c2, h, z: each on one shard, none evicted by a flush to 2099


def test_escaped_keys_and_decoys_never_move_a_clock_or_split_a_customer_in_a_file_replay(tmp_path: Path) -> None:
    _check_routing_run(*_file_run([_routing_lines()], tmp_path, "file"))


@pytest.mark.kafka
def test_escaped_keys_and_decoys_never_move_a_clock_or_split_a_customer_in_a_kafka_replay(kafka: str,
                                                                                         tmp_path: Path) -> None:
    _check_routing_run(*_kafka_run(kafka, _routing_lines(), tmp_path, "kafka", partitions=1))


def _two_shards(shards: int = SHARDS) -> tuple[str, str]:
    a = "cust-a"
    b = next(f"cust-b{i}" for i in range(100) if shard_of_id(f"cust-b{i}", shards) != shard_of_id(a, shards))
    return a, b


@pytest.mark.kafka
def test_a_wake_up_due_after_its_shards_last_event_fires_in_file_and_kafka_replays(kafka: str,
                                                                                   tmp_path: Path) -> None:
    a, b = _two_shards()
    lines = [_ev("a1", a, 0, "submit", journey="cart", step="checkout"), _ev("b1", b, 60 * MIN)]
    file_moments, file_customers, _ = _file_run([lines], tmp_path, "file")
    kafka_moments, kafka_customers, _ = _kafka_run(kafka, lines, tmp_path, "kafka", partitions=4)
    assert _abandoned(file_moments) == [a]
    assert _abandoned(kafka_moments) == [a]
    assert kafka_customers == file_customers == 2


def test_several_files_flush_only_once_the_last_one_has_ended(tmp_path: Path) -> None:
    a, b = _two_shards()
    short = [_ev("a1", a, 0, "submit", journey="cart", step="checkout"), _ev("b1", b, 60 * MIN)]
    # The other file ends much later (one line per batch): a's return to the cart is in it.
    long = [_ev(f"f{i}", b, i * 1000) for i in range(40)] + [_ev("a2", a, 5 * MIN, journey="cart", step="product")]
    moments, _customers, _ = _file_run([short, long], tmp_path, "files", lateness_ms=120 * MIN)
    assert _abandoned(moments) == []


# -- the same simulated traffic from a file and from a 4-partition topic keyed by customer ----------------
def _done_customers(log: str) -> int:
    found = re.findall(r"done: .*customers=(\d+)", log)
    assert found, log[-3000:]
    return int(found[-1])


def _cli_run(tmp: Path, name: str, source: list[str], processes: int, env: dict[str, str] | None = None,
             lateness: str = "7d") -> tuple[set[str], int]:
    out = tmp / name
    # A lateness longer than the input: Kafka partitions are read at their own pace, and a shard's events
    # from a lagging partition would otherwise be late against those of a leading one.
    # Many shards, few customers each: many a shard's own last event comes well before the input's last one.
    args = [*source, "--clock", "replay", "--lateness", lateness, "--shards", str(CLI_SHARDS), "--sink", f"jsonl:{out}",
            "--no-metrics", "--status", "off"]
    if processes == 1:
        workers = [Worker(args, tmp / f"{name}.log", env=env)]
    else:
        ports = ";".join(f"127.0.0.1:{free_port()}" for _ in range(processes))
        workers = [Worker([*args, "-i", str(i), "-a", ports], tmp / f"{name}-{i}.log", env=env)
                   for i in range(processes)]
    try:
        for w in workers:
            assert w.wait(240) == 0, w.log()[-3000:]
    finally:
        for w in workers:
            w.stop()
    ids = {m["moment_id"] for m in read_jsonl(out / "moments.jsonl")} if (out / "moments.jsonl").exists() else set()
    return ids, sum(_done_customers(w.log()) for w in workers)


@pytest.mark.kafka
@pytest.mark.parametrize("processes", [1, 2])
def test_kafka_replay_gives_the_moments_and_customers_of_a_file_replay(kafka: str, tmp_path: Path,
                                                                       processes: int) -> None:
    lines = [orjson.dumps(e) for e in simulate(600, 90, seed=12).events()]
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(line + b"\n" for line in lines))
    topics = {"EVENTS": unique("cx.events"), "FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=4)
    produce(kafka, topics["EVENTS"], lines, key_of=_key)
    env = {f"CX_TOPIC_{k}": v for k, v in topics.items()}
    from_file = _cli_run(tmp_path, "file", ["--source", f"file:{src}"], processes)
    from_kafka = _cli_run(tmp_path, "kafka", ["--source", "kafka", "--kafka-bootstrap", kafka, "--kafka-stop-at-end"],
                          processes, env)
    assert len(from_file[0]) > 100
    assert from_kafka == from_file


@pytest.mark.parametrize("processes", [1, 2])
def test_several_files_flush_only_once_the_last_one_has_ended_in_a_cluster_too(tmp_path: Path,
                                                                               processes: int) -> None:
    a, b = _two_shards(CLI_SHARDS)
    short = tmp_path / "short.jsonl"
    short.write_bytes(b"".join(line + b"\n" for line in [_ev("a1", a, 0, "submit", journey="cart", step="checkout"),
                                                         _ev("b1", b, 60 * MIN)]))
    # More lines than a source batch (4096) before a's return to the cart: it comes after the short file ended.
    long = tmp_path / "long.jsonl"
    long.write_bytes(b"".join(_ev(f"f{i}", b, i * 100) + b"\n" for i in range(5000))
                     + _ev("a2", a, 5 * MIN, journey="cart", step="product") + b"\n")
    ids, customers = _cli_run(tmp_path, "files", ["--source", f"file:{short},{long}"], processes)
    assert ids == set()  # a came back to the cart: no abandonment
    assert customers == 2
