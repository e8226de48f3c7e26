"""A replay restarted from its snapshot mid-input ends exactly like an uninterrupted replay (issue 12).

At the end of a replay every shard fires what is due by the largest valid event time of the whole input, which
each partition's final tick reports. A partition restarted after reading that time must still report it: the
traffic here puts the later half of the events first, so what is read after the restart is all older, and with
many shards many a shard's own last event comes before wake-ups (abandonments) that fall due by the input's largest
time.

The first run is stopped through the pipeline's own stop (``flows.stopping``, what SIGTERM does) right after a
given input position, so the restart point is exact; the second resumes from the same recovery directory.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.recovery import RecoveryConfig, init_db_dir
from bytewax.run import cli_main

import flows.dataflow
from connectors.jsonl import read_jsonl
from connectors.simulator import simulate
from flows import stopping
from flows.config import DEFAULT_TOPICS, PipelineConfig
from flows.dataflow import build_dataflow
from state.outputs import Outputs
from tests.helpers import PACK
from tests.kafka_helpers import create_topics, produce, unique

SHARDS = 512
LATENESS_MS = 7 * 86_400_000  # longer than the input: results do not depend on the order lines are read in


def _traffic() -> tuple[list[bytes], int]:
    """Simulated traffic with its later half first; return the lines and how many come first."""
    lines = [orjson.dumps(e) for e in simulate(600, 90, seed=12).events()]
    head = len(lines) // 2
    return lines[head:] + lines[:head], len(lines) - head


class _StopAfterPart(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: StatefulSourcePartition[Any, Any], position: Callable[[Any], int], at: int) -> None:
        self._inner = inner
        self._position = position
        self._at = at

    def next_batch(self) -> list[Any]:
        items = list(self._inner.next_batch())
        if self._position(self._inner.snapshot()) >= self._at:
            stopping.request_stop()
        return items

    def next_awake(self) -> Any:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class _StopAfter(FixedPartitionedSource[Any, Any]):
    """The real source, with a stop requested once partition ``part`` has read up to position ``at`` (None: no
    stop); notes the resume state each partition is built with in ``resumed``."""

    def __init__(self, inner: FixedPartitionedSource[Any, Any], part: str, position: Callable[[Any], int],
                 at: int | None, resumed: dict[str, Any]) -> None:
        self._inner = inner
        self._part = part
        self._position = position
        self._at = at
        self._resumed = resumed

    def list_parts(self) -> list[str]:
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> StatefulSourcePartition[Any, Any]:
        self._resumed[for_part] = resume_state
        part = self._inner.build_part(step_id, for_part, resume_state)
        if for_part != self._part or self._at is None:
            return part
        return _StopAfterPart(part, self._position, self._at)


def _position(state: Any) -> int:
    return state if isinstance(state, int) else state[0]


def _run(cfg: PipelineConfig, recovery: Path | None) -> tuple[set[str], int]:
    """Run the dataflow in this process; return the moment ids written and the customers tracked at the end."""
    customers: dict[str, int] = {}

    def written(key: str, o: Outputs, _n: int) -> None:
        customers[key] = o.customers

    rc = None
    if recovery is not None:
        if not recovery.exists():
            recovery.mkdir()
            init_db_dir(recovery, 1)
        rc = RecoveryConfig(str(recovery))
    stopping.reset()
    try:
        cli_main(build_dataflow(cfg.validate(), PACK, written, snapshots=rc is not None), workers_per_process=1,
                 epoch_interval=timedelta(seconds=1), recovery_config=rc)
    finally:
        stopped = stopping.stop_requested()
        stopping.reset()
    (out,) = cfg.jsonl_dirs
    ids = {m["moment_id"] for m in read_jsonl(out / "moments.jsonl")} if (out / "moments.jsonl").exists() else set()
    return ids, sum(customers.values()) if not stopped else -1


def _stopped_then_resumed(monkeypatch: pytest.MonkeyPatch, cfg: Callable[[str, int], PipelineConfig], part: str,
                          at: int, tmp: Path, tune: Callable[[Any], None] = lambda _s: None,
                          first_batch: int | None = None) -> tuple[set[str], int]:
    recovery = tmp / "recovery"
    make_source = flows.dataflow.make_source
    resumed: dict[str, Any] = {}

    def source(stop_at: int | None, tune: Callable[[Any], None]) -> Callable[[PipelineConfig, Any], Any]:
        def make(c: PipelineConfig, pack: Any) -> Any:
            inner = make_source(c, pack)
            assert isinstance(inner, FixedPartitionedSource)
            tune(inner)
            return _StopAfter(inner, part, _position, stop_at, resumed)

        return make

    monkeypatch.setattr(flows.dataflow, "make_source", source(at, tune))
    first, stopped = _run(cfg("first", first_batch or at), recovery)
    assert stopped == -1, "the first run was not stopped"
    assert resumed[part] is None
    monkeypatch.setattr(flows.dataflow, "make_source", source(None, lambda _s: None))
    second, customers = _run(cfg("second", 4096), recovery)
    assert _position(resumed[part]) == at, "the second run did not resume where the first one stopped"
    return first | second, customers


@pytest.mark.parametrize("where", ["mid-input", "end-unnoticed", "after-final-tick"])
def test_a_file_replay_stopped_mid_input_and_resumed_gives_the_moments_of_an_uninterrupted_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    lines, first = _traffic()
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"".join(line + b"\n" for line in lines))

    def cfg(name: str, batch_lines: int) -> PipelineConfig:
        return PipelineConfig(source=f"file:{src}", sinks=(f"jsonl:{tmp_path / name}",), metrics_port=None,
                              shards=SHARDS, lateness_ms=LATENESS_MS, batch_lines=batch_lines)

    expected = _run(cfg("clean", 4096), None)
    # The first run's batches end exactly at the stop position. Mid-input (the later half read) and at the end of
    # the file before the partition noticed it, the final tick comes only after the restart; after the final
    # tick (one batch reads the whole file and its end), the restart comes before the end-of-input flush.
    at, batch = {"mid-input": (first, first), "end-unnoticed": (len(lines), len(lines)),
                 "after-final-tick": (len(lines), len(lines) + 1)}[where]
    got = _stopped_then_resumed(monkeypatch, cfg, "0", at, tmp_path, first_batch=batch)
    assert len(expected[0]) > 100
    assert got == expected


@pytest.mark.kafka
@pytest.mark.parametrize("where", ["mid-input", "end-unnoticed"])
def test_a_kafka_replay_stopped_mid_input_and_resumed_gives_the_moments_of_an_uninterrupted_one(
        kafka: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
        caplog: pytest.LogCaptureFixture) -> None:
    lines, first = _traffic()
    topics = {**DEFAULT_TOPICS, "events": unique("cx.events"), "feedback": unique("cx.feedback")}
    create_topics(kafka, [topics["events"], topics["feedback"]], partitions=1)
    produce(kafka, topics["events"], lines)

    def cfg(name: str, _batch: int) -> PipelineConfig:
        return PipelineConfig(source="kafka", sinks=(f"jsonl:{tmp_path / name}",), metrics_port=None,
                              shards=SHARDS, lateness_ms=LATENESS_MS, kafka_bootstrap=kafka, kafka_topics=topics,
                              kafka_stop_at_end=True, clock="replay")

    def one_at_a_time(source: Any) -> None:
        # One message per consume() in the first run: the stop lands on an exact offset, before the partition's
        # end has been seen (a batch reaching the end would carry its final tick into the snapshot).
        source._batch = 1

    expected = _run(cfg("clean", 0), None)
    # Mid-input, or with every message read but the partition's end not yet seen (it comes with a later consume()).
    at = first if where == "mid-input" else len(lines)
    got = _stopped_then_resumed(monkeypatch, cfg, f"{topics['events']}:0", at, tmp_path, one_at_a_time)
    assert len(expected[0]) > 100
    assert got == expected
    # The feedback partition read nothing before the stop: resuming it is no lost log (it was reported as one).
    assert "saved position" not in caplog.text
