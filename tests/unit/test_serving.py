"""Look-ups read the live state whole while a worker thread applies batches; ids are checked like input events."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import orjson
import pytest

from flows.cli import build_parser, config_from_args
from flows.shard_registry import ShardRegistry
from state.batches import RawBatch
from state.events import MAX_ID_CHARS, id_problem
from state.shard import Shard, process
from tests.helpers import PACK, T0, ev, raws

STEPS = ("product", "cart", "checkout")


@pytest.mark.parametrize(("value", "problem"), [
    ("c-1", None),
    ("x" * MAX_ID_CHARS, None),
    ("x" * (MAX_ID_CHARS + 1), "customer_id is longer than 128 characters"),
    ("", "customer_id must not be empty"),
    ("  \t", "customer_id must not be empty"),
])
def test_ids_in_paths_are_judged_like_an_input_events_ids(value: str, problem: str | None) -> None:
    assert id_problem(value) == problem


class _Owner:
    """Holds a shard as the operator logic does (the registry refers to the owner weakly)."""

    def __init__(self, shard: Shard) -> None:
        self.shard = shard


def test_a_lookup_sees_the_customer_as_one_event_left_it_while_the_worker_applies_batches() -> None:
    shard = Shard(PACK, lateness_ms=0)
    lock = threading.Lock()
    registry = ShardRegistry()
    owner = _Owner(shard)
    registry.add(owner, lock)
    n = 3_000
    seen: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()
    found = threading.Event()

    def worker() -> None:
        # Like ShardLogic.on_batch: each batch applied under the shard's lock.
        try:
            for i in range(0, n, 50):
                batch = [ev(f"e{k}", k, "view", step=STEPS[k % 3]) for k in range(i, i + 50)]
                with lock:
                    process(shard, [RawBatch("file:t", 0, raws(batch), list(range(i, i + 50)))])
                if i == 0:
                    found.wait(10)  # the compiled shard can finish every batch before the reader's first look
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                view = registry.customer("c1")
                if view is not None:
                    j = view["journeys"][0]
                    seen.append((j["updated_at"], j["step"]))
                    found.set()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=worker), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert seen, "the reader never found the customer"
    # The step shown is always the step of the event at the time shown: never one from a half-applied event.
    for ts, step in seen:
        assert step == STEPS[(ts - T0) % 3]
    assert registry.customer("nobody") is None


def test_the_registry_lets_go_of_the_shards_of_a_dataflow_that_ended() -> None:
    registry = ShardRegistry()
    owner = _Owner(Shard(PACK))
    registry.add(owner, threading.Lock())
    assert len(registry) == 1
    del owner
    gc.collect()
    assert len(registry) == 0


@pytest.mark.parametrize(("args", "env", "keeps"), [
    ([], {}, True),
    (["--no-events-table"], {}, False),
    ([], {"CX_EVENTS_TABLE": "off"}, False),
    ([], {"CX_EVENTS_TABLE": " No "}, False),
    ([], {"CX_EVENTS_TABLE": "on"}, True),
    ([], {"CX_EVENTS_TABLE": ""}, True),
    (["--sink", "jsonl:out"], {}, False),  # no ClickHouse sink: nowhere to keep them
])
def test_the_events_table_is_on_with_a_clickhouse_sink_unless_turned_off(
        args: list[str], env: dict[str, str], keeps: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = config_from_args(build_parser().parse_args(["run", *args]))
    assert cfg.keeps_events is keeps


@pytest.mark.parametrize("value", ["maybe", "-1", "2", "offf"])
def test_an_events_table_setting_that_is_neither_on_nor_off_is_refused_naming_it(
        value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # It was read as "on" whatever it said: a typo of "off" kept storing every event.
    from flows.config import ConfigError

    monkeypatch.setenv("CX_EVENTS_TABLE", value)
    with pytest.raises(ConfigError, match=f"CX_EVENTS_TABLE: must be on or off, got '{value}'"):
        build_parser()


def test_a_batch_holding_only_events_to_store_is_not_dropped() -> None:
    # Live, a batch that only buffers events (nothing applied yet) has no other records: its outputs were dropped as
    # empty, and a moment's evidence events were missing from the events table when it fired later.
    from state.batches import RawBatch
    from state.shard import Shard
    from tests.helpers import PACK, T0, ev

    sh = Shard(PACK, live=True, clock=lambda: T0, keep_events=True)
    sh.feed(RawBatch("test", 0, [orjson.dumps(ev("e1", 0, customer="c1", step="product"))], [0]))
    out = sh.take_outputs()
    assert [e.event_id for e in out.inputs] == ["e1"]
    assert out
