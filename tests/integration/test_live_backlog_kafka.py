"""A live worker that starts behind its topic (an outage, a restart, a consumer lag) reads the backlog in event time.

Before, the wall clock moved the watermark to "now" at the first batch: every later backlog event came late, and a
customer's abandonment fired before the event that finished the journey was read (a false moment, and a message to
a customer who had completed). Now the worker gives the same moments as a replay of the same lines.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import read_jsonl
from tests.helpers import wait_until
from tests.kafka_helpers import create_topics, produce, unique
from tests.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _events(n_fillers: int) -> list[bytes]:
    t = time.time_ns() // 1_000_000 - 20 * 60_000  # 20 minutes ago: c1's abandonment was due 10 minutes ago
    out = [{"event_id": "c1-s", "customer_id": "c1", "ts": t, "channel": "web", "type": "submit", "journey": "cart",
            "step": "checkout"}]
    out += [{"event_id": f"f{i}", "customer_id": f"f{i % 3000}", "ts": t + 1 + i * 4, "channel": "app",
             "type": "view", "journey": "cart", "step": "product"} for i in range(n_fillers)]
    # c1 came back and paid two minutes after the checkout: no abandonment, in event-time order.
    out.append({"event_id": "c1-d", "customer_id": "c1", "ts": t + 2 * 60_000, "channel": "web",
                "type": "complete", "journey": "cart", "step": "payment"})
    return [orjson.dumps(e) for e in out]


def _status_events(log: str) -> int:
    counts = re.findall(r"status events=(\d+)", log)
    return int(counts[-1]) if counts else 0


def _moments(path: Path) -> set[tuple[str, str, int]]:
    return {(m["moment_id"], m["rule"], m["due_ts"]) for m in read_jsonl(path / "moments.jsonl")}


@pytest.mark.parametrize("partitions", [1, 4])
def test_a_live_worker_behind_its_topic_gives_the_replay_moments(kafka: str, tmp_path: Path, partitions: int) -> None:
    # With several partitions (unkeyed: one customer's events spread over them) the consumer reads one partition's
    # backlog ahead of another's: the watermark follows the slowest partition behind, as a replay's does.
    lines = _events(30_000)
    events, feedback = unique("cx.events"), unique("cx.feedback")
    create_topics(kafka, [events, feedback], partitions=partitions)
    produce(kafka, events, lines)
    (tmp_path / "lines.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    common = ["--no-metrics", "--status", "log", "--lateness", "5s"]
    replay = Worker(["--source", f"file:{tmp_path / 'lines.jsonl'}", "--sink", f"jsonl:{tmp_path / 'replay'}",
                     *common], tmp_path / "replay.log")
    try:
        assert replay.wait(300) == 0, replay.log()[-3000:]
    finally:
        replay.stop()
    live = Worker(["--source", "kafka", "--kafka-bootstrap", kafka, "--sink", f"jsonl:{tmp_path / 'live'}",
                   *common], tmp_path / "live.log", env={"CX_TOPIC_EVENTS": events, "CX_TOPIC_FEEDBACK": feedback})
    try:
        wait_until(lambda: _status_events(live.log()) >= len(lines) or not live.alive(), 300,
                   "the live worker to apply every event", detail=lambda: live.log()[-3000:])
        # Caught up: the wall clock fires what is due by now at its next tick; two status lines later it has.
        seen = live.log().count("status events=")
        wait_until(lambda: live.log().count("status events=") >= seen + 2 or not live.alive(), 60, "two more lines")
        assert live.alive(), live.log()[-3000:]
        got = _moments(tmp_path / "live")
    finally:
        live.stop()
    want = _moments(tmp_path / "replay")
    assert "cart.abandoned" not in {rule for _id, rule, _due in want}  # c1 paid: nothing was abandoned
    assert got == want
    assert re.findall(r"late=(\d+)", live.log())[-1] == "0"  # the backlog was read in event time
