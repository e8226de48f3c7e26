"""The cluster handshake of file and simulator input: what each process sends, and what a shard does with it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from bytewax.operators import StatefulBatchLogic

from connectors.placement import Placement, hello_items
from connectors.replay_source import JsonlFileSource
from connectors.simulator_source import SimulatorSource
from flows import stopping
from flows.config import ConfigError, PipelineConfig
from flows.dataflow import cluster_hello
from flows.operators import ClusterSettingsError, ShardLogic, check_hello
from flows.runner import _cluster_mismatch
from state.batches import Hello, RawBatch, Tick
from state.rules import DEFAULT_PACK, load_rule_pack
from state.shard import Shard
from state.versions import PackVersions
from tests.helpers import PACK, T0

SHARDS = 16
ADDRS = ("127.0.0.1:7000", "127.0.0.1:7001")


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    stopping.reset()
    yield
    stopping.reset()


def _file(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(orjson.dumps({"event_id": f"e{i}", "customer_id": f"c{i % 37}", "ts": T0 + 1000 * i,
                                            "channel": "app", "type": "view"}) + b"\n" for i in range(n)))
    return path


def _hello(process: int, shards: int = SHARDS, lateness: str = "30000ms") -> Hello:
    return Hello(process, (("--shards", str(shards)), ("--lateness", lateness)))


def test_a_hello_goes_to_one_shard_of_every_other_process() -> None:
    hello = _hello(1)
    for workers in (1, 2):
        placement = Placement(1, 3, workers)
        items = hello_items(hello, placement, SHARDS)
        assert [v for _k, v in items] == [hello, hello]
        assert [placement.process_of(k) for k, _v in items] == [0, 2]
        assert all(int(k) in placement.own_shards(SHARDS, placement.process_of(k)) for k, _v in items)
    assert hello_items(hello, Placement(0, 1, 4), SHARDS) == []
    assert hello_items(hello, None, SHARDS) == []
    assert hello_items(None, Placement(0, 2, 1), SHARDS) == []


def test_a_cluster_file_partition_sends_its_hello_before_its_lines_and_again_after_a_restart(tmp_path: Path) -> None:
    path = _file(tmp_path, 100)
    placement = Placement(0, 2, 1)
    plain = JsonlFileSource([path], SHARDS, batch_lines=40, placement=placement).build_part("input", "0-p0", None)
    src = JsonlFileSource([path], SHARDS, batch_lines=40, placement=placement, hello=_hello(0))
    part = src.build_part("input", "0-p0", None)
    assert part.next_batch() == hello_items(_hello(0), placement, SHARDS)
    assert part.snapshot() == plain.snapshot(), "a hello moves no position"
    assert part.next_batch() == plain.next_batch()
    resumed = src.build_part("input", "0-p0", part.snapshot())
    assert resumed.next_batch() == hello_items(_hello(0), placement, SHARDS)
    assert resumed.next_batch() == plain.next_batch()


def test_a_simulator_partition_sends_its_hello_live_too() -> None:
    lines = [orjson.dumps({"event_id": "e1", "customer_id": "c1", "ts": T0, "channel": "app", "type": "view"})]
    cluster = Placement(1, 2, 1)
    # Live, one partition (placement None) feeds every process: the hello still goes to the others.
    src = SimulatorSource(lambda: iter(lines), SHARDS, placement=None, hello=_hello(1), cluster=cluster)
    (name,) = src.list_parts()
    assert src.build_part("input", name, None).next_batch() == hello_items(_hello(1), cluster, SHARDS)


def test_a_stopped_partition_still_sends_its_hello_then_ends(tmp_path: Path) -> None:
    """A peer's difference can stop this process before its input's first batch: the peer must hear ours."""
    placement = Placement(0, 2, 1)
    src = stopping.stoppable(JsonlFileSource([_file(tmp_path, 10)], SHARDS, placement=placement, hello=_hello(0)))
    part = src.build_part("input", "0-p0", None)  # type: ignore[attr-defined]
    stopping.request_stop()
    assert part.next_batch() == hello_items(_hello(0), placement, SHARDS)
    with pytest.raises(StopIteration):
        part.next_batch()


def test_a_difference_names_the_setting_and_both_values() -> None:
    check_hello(_hello(1), _hello(0))
    with pytest.raises(ClusterSettingsError, match=r"process 1 .* --shards 32, process 0 with 16: lines would be "
                                                   r"lost or counted twice; .* same --shards") as e:
        check_hello(_hello(1, shards=32), _hello(0))
    assert e.value.setting == "--shards"
    with pytest.raises(ClusterSettingsError, match=r"--lateness 1000ms, process 0 with 30000ms: the same events "
                                                   r"would give different moments"):
        check_hello(_hello(1, lateness="1000ms"), _hello(0))


def _logic(hello: Hello) -> ShardLogic:
    return ShardLogic(Shard(PACK, shards=SHARDS), None, recovery=False, tick_s=1.0, hello=hello)


def test_a_matching_hello_changes_nothing_in_the_shard() -> None:
    logic = _logic(_hello(0))
    before = logic.shard.snapshot()
    assert logic.on_batch([_hello(1)]) == ([], StatefulBatchLogic.RETAIN)
    assert logic.shard.snapshot() == before
    assert not stopping.stop_requested()
    raw = orjson.dumps({"event_id": "e1", "customer_id": "c1", "ts": T0, "channel": "app", "type": "view"})
    outs, _ = logic.on_batch([_hello(1), RawBatch("file:x", 0, [raw], [1], -1), Tick(T0 + 60_000, final=True)])
    assert sum(outs[0].events.values()) == 1


def test_a_differing_hello_stops_the_run_and_names_the_difference() -> None:
    seen: list[None] = []
    stopping.on_stop_for(lambda: seen.append(None))
    try:
        logic = _logic(_hello(0))
        assert logic.on_batch([_hello(1, shards=32)]) == ([], StatefulBatchLogic.RETAIN)
        logic.on_batch([_hello(1, shards=8)])
    finally:
        stopping.on_stop_for(None)
    assert stopping.stop_requested()
    assert seen == [None], "escalated once"
    failed = stopping.failure()
    assert isinstance(failed, ClusterSettingsError)
    assert "--shards 32" in str(failed)
    named = _cluster_mismatch(RuntimeError("Send thread panic"), PipelineConfig(addresses=ADDRS, process_id=0))
    assert isinstance(named, ConfigError)
    assert named.setting == "--shards"


def test_cluster_settings_cover_the_input_the_rules_and_the_clock(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    cfg = PipelineConfig(source=f"file:{a},{b}", addresses=ADDRS, process_id=1)
    hello = cluster_hello(cfg, PACK)
    assert hello is not None
    assert hello.process == 1
    settings = dict(hello.settings)
    assert settings["--shards"] == "64"
    assert settings["--source"] == "file:a.jsonl,b.jsonl"
    assert PackVersions.of([PACK]).full_fingerprint() in settings["--rules"]
    assert {"--clock", "--lateness", "--max-customers"} <= set(settings)
    sim = cluster_hello(PipelineConfig(source="simulator", addresses=ADDRS, process_id=0, sim_seed=3), PACK)
    assert sim is not None
    assert "--seed 3" in dict(sim.settings)["--source"]
    assert cluster_hello(PipelineConfig(source=f"file:{a}"), PACK) is None, "outside a cluster, none"
    # A Kafka process sends none (its partitions send no hello) but checks a peer's: it names its source too.
    kafka = cluster_hello(PipelineConfig(source="kafka", addresses=ADDRS, process_id=0), PACK)
    assert kafka is not None
    assert dict(kafka.settings)["--source"] == "kafka (topic cx.events)"
    # Live, the urgent lateness changes what is detected when (auto: from the pack's targets), so it is compared.
    live = cluster_hello(PipelineConfig(source="simulator", addresses=ADDRS, process_id=0, clock="live"), PACK)
    assert live is not None
    assert dict(live.settings)["--urgent-lateness"] == "5000ms"
    assert "--urgent-lateness" not in settings


class PanicException(BaseException):  # noqa: N818 - named as pyo3's, which the runner recognises by name
    pass


def test_a_bytewax_panic_in_a_cluster_names_workers() -> None:
    named = _cluster_mismatch(PanicException("Recv thread panic: Any { .. }"),
                              PipelineConfig(addresses=ADDRS, process_id=1))
    assert isinstance(named, ConfigError)
    assert "--workers/-w" in str(named)
    assert "disagree on -w or a peer failed: Recv thread panic" in str(named)
    assert _cluster_mismatch(PanicException("x"), PipelineConfig()) is None


@pytest.mark.parametrize("edit", [("[pack]", 'types = ["topup"]\n[pack]'), ("max_per_day = 2", "max_per_day = 5"),
                                  ('[[moment]]\nkind = "failed"', '[[moment]]\nkind = "failed"\nholdout = 0.5')])
def test_processes_whose_packs_differ_in_types_or_contact_policy_do_not_agree(tmp_path: Path,
                                                                               edit: tuple[str, str]) -> None:
    """An adversary's: packs differing only in an event type or a hold-out passed the handshake (the fingerprint
    covered detection fields only), and the same events gave other moments in each process."""
    base = DEFAULT_PACK.read_text()
    assert edit[0] in base
    (tmp_path / "a.toml").write_text(base)
    (tmp_path / "b.toml").write_text(base.replace(*edit, 1))
    cfg = PipelineConfig(source="simulator", addresses=ADDRS, process_id=0)
    a, b, a2 = (cluster_hello(cfg, load_rule_pack(tmp_path / n)) for n in ("a.toml", "b.toml", "a.toml"))
    assert a is not None
    assert b is not None
    assert dict(a.settings)["--rules"] != dict(b.settings)["--rules"]
    assert a == a2


def test_processes_whose_packs_differ_only_in_the_packs_name_agree(tmp_path: Path) -> None:
    """An adversary's: the name (in no moment) was part of the handshake, so such processes stopped with a message
    giving both the same fingerprint."""
    base = DEFAULT_PACK.read_text()
    (tmp_path / "a.toml").write_text(base)
    (tmp_path / "b.toml").write_text(base.replace('name = "default"', 'name = "renamed"', 1))
    cfg = PipelineConfig(source="simulator", addresses=ADDRS, process_id=0)
    a, b = (cluster_hello(cfg, load_rule_pack(tmp_path / n)) for n in ("a.toml", "b.toml"))
    assert load_rule_pack(tmp_path / "b.toml").name == "renamed"
    assert a == b
