"""Settings of issue 12: the dead-letter bound and where an out-of-range Kafka position goes."""

from __future__ import annotations

import pytest

from connectors.kafka.config import consumer_conf, reset_policy
from flows.cli import build_parser, config_from_args
from flows.config import ConfigError
from state.batches import RawBatch, Tick
from state.shard import Shard, process
from tests.helpers import PACK


def _run_args(*extra: str) -> list[str]:
    return ["run", "--source", "file:x.jsonl", "--sink", "none", *extra]


def test_dead_letter_max_bytes_comes_from_the_cli_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_from_args(build_parser().parse_args(_run_args())).dead_letter_max_bytes == 16384
    assert config_from_args(build_parser().parse_args(
        _run_args("--dead-letter-max-bytes", "100"))).dead_letter_max_bytes == 100
    monkeypatch.setenv("CX_DEAD_LETTER_MAX_BYTES", "2048")
    assert config_from_args(build_parser().parse_args(_run_args())).dead_letter_max_bytes == 2048


@pytest.mark.parametrize("value", ["0", "131073"])
def test_dead_letter_max_bytes_out_of_range_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match=r"--dead-letter-max-bytes: must be 1\.\.131072"):
        config_from_args(build_parser().parse_args(_run_args("--dead-letter-max-bytes", value)))


def test_the_shard_applies_the_bound_to_its_dead_letters() -> None:
    sh = Shard(PACK, clock=lambda: 1, dead_letter_max_bytes=10)
    out = process(sh, [RawBatch("kafka:cx.events", 0, [b"\x00" * 1000], [5]), Tick(0, final=True)])
    (rec,) = out.dead
    assert (rec["raw"], rec["raw_len"], rec["truncated"]) == ("\x00" * 10, 1000, True)


def test_auto_offset_reset_maps_to_earliest_latest_or_error() -> None:
    assert reset_policy({}) == "earliest"
    assert [reset_policy({"auto.offset.reset": v}) for v in ("smallest", "beginning", "LATEST", "end", "largest",
                                                            "error", "none")] == [
        "earliest", "earliest", "latest", "latest", "latest", "error", "error"]
    # librdkafka knows no "none" (Kafka's Java name): the consumer gets "error".
    assert consumer_conf({"auto.offset.reset": "none"})["auto.offset.reset"] == "error"
    assert consumer_conf({})["auto.offset.reset"] == "earliest"
