"""Bad settings stop ``moments run`` with one line naming the setting and the problem, and exit status 2."""

from __future__ import annotations

import pytest

from flows.cli import build_parser, config_from_args, main
from flows.config import PipelineConfig


def _run_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``moments run ARGS`` (refused before any work starts); return its error output."""
    # A missing input file stops an accepted configuration quickly (with another message) instead of running it.
    assert main(["run", "--no-metrics", "--source", "file:/nonexistent/cx-never.jsonl", "--sink", "none", *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.parametrize("cap", ["0", "-1", "63"])
def test_max_customers_below_the_shard_count_is_refused_with_the_minimum(
    capsys: pytest.CaptureFixture[str], cap: str
) -> None:
    err = _run_error(capsys, "--shards", "64", "--max-customers", cap)
    assert "--max-customers" in err
    assert "at least --shards (64)" in err
    assert f"got {cap}" in err


def test_max_customers_equal_to_the_shard_count_is_accepted() -> None:
    a = build_parser().parse_args(["run", "--shards", "8", "--max-customers", "8", "--sink", "none"])
    assert config_from_args(a).max_customers == 8
    assert PipelineConfig(shards=8, max_customers=None).validate().max_customers is None


@pytest.mark.parametrize("interval", ["0", "-1", "nan"])
def test_snapshot_interval_must_be_positive(capsys: pytest.CaptureFixture[str], interval: str) -> None:
    err = _run_error(capsys, "--snapshot-interval", interval)
    assert "--snapshot-interval" in err
    assert "positive" in err


@pytest.mark.parametrize("dsn", ["chdb://", "chdb:///", "chdb:///.", "chdb://somehost/x", "http://", "https://:8123",
                                 "http://host:port"])
def test_a_clickhouse_dsn_without_a_location_is_refused(capsys: pytest.CaptureFixture[str], dsn: str) -> None:
    err = _run_error(capsys, "--sink", dsn)
    assert "--clickhouse/--sink" in err


@pytest.mark.parametrize("dsn", ["chdb:///./data/x.chdb", "chdb:///tmp/x", "chdb://memory", "http://ch:8123/cx",
                                 "https://u@ch.example"])
def test_good_clickhouse_dsns_are_accepted(dsn: str) -> None:
    assert PipelineConfig(sinks=("clickhouse",), clickhouse_dsn=dsn).validate().clickhouse_dsn == dsn


@pytest.mark.parametrize(("var", "value"), [
    ("CX_SHARDS", "abc"), ("CX_WORKERS", "two"), ("CX_MAX_CUSTOMERS", "1e5"), ("CX_METRICS_PORT", "x"),
    ("CX_SNAPSHOT_INTERVAL", "abc"), ("CX_TOPIC_PARTITIONS", "four"), ("CX_PROCESS_ID", "a"),
])
def test_a_numeric_environment_variable_that_is_not_a_number_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    err = _run_error(capsys)
    assert var in err
    assert repr(value) in err
