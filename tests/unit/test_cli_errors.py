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


# Found by an adversarial pass after the first round: values at the edges of every numeric setting, empty list
# entries, and CX_* variables whose values argparse's choices never see.
@pytest.mark.parametrize(("args", "named"), [
    (("--snapshot-interval", "inf"), "--snapshot-interval"),
    (("--snapshot-interval", "1e300"), "--snapshot-interval"),
    (("--rate", "nan"), "--rate"),
    (("--rate", "inf"), "--rate"),
    (("--rate", "-3"), "--rate"),
    (("--tick", "nan"), "--tick"),
    (("--tick", "inf"), "--tick"),
    (("--lateness", "99999999999999999999d"), "--lateness"),
    (("--max-future", "0"), "--max-future"),
    (("--minutes", "100000000"), "--minutes"),
    (("--sink", "jsonl:"), "--sink"),
])
def test_edge_values_are_refused_naming_the_setting(
    capsys: pytest.CaptureFixture[str], args: tuple[str, ...], named: str
) -> None:
    assert named in _run_error(capsys, *args)


def test_an_empty_entry_in_a_file_list_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    # A trailing comma used to read every *.jsonl of the current directory.
    assert main(["run", "--no-metrics", "--source", "file:a.jsonl,", "--sink", "none"]) == 2
    assert "empty path" in capsys.readouterr().err


@pytest.mark.parametrize(("var", "value", "named"), [
    ("CX_SINKS", ",", "CX_SINKS"), ("CX_STATUS", "bogus", "CX_STATUS"), ("CX_LOG_LEVEL", "trace", "CX_LOG_LEVEL"),
    ("CX_LOG_FORMAT", "xml", "CX_LOG_FORMAT"),
])
def test_bad_values_of_choice_variables_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], var: str, value: str, named: str
) -> None:
    monkeypatch.setenv(var, value)
    assert main(["run", "--no-metrics", "--source", "file:/nonexistent/cx-never.jsonl"]) == 2
    err = capsys.readouterr().err
    assert named in err
    assert "Traceback" not in err


def test_simulate_refuses_minutes_past_the_valid_time_range(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    assert main(["simulate", "--customers", "10", "--minutes", "1e8", "-o", str(tmp_path / "x.jsonl")]) == 2
    assert "--minutes" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_the_time_zone_cache_is_bounded() -> None:
    from state.rules import zone

    for i in range(3000):
        assert zone(f"Nope/{i:06d}") is None
    assert zone("Europe/Paris") is not None
    assert zone.cache_info().currsize <= zone.cache_info().maxsize == 1024


@pytest.mark.parametrize("workers", ["0", "65", "1000"])
def test_worker_threads_per_process_are_bounded(capsys: pytest.CaptureFixture[str], workers: str) -> None:
    # A thousand were accepted: 14 GB and minutes of start-up that ignored SIGTERM.
    err = _run_error(capsys, "--workers", workers)
    assert "--workers" in err
    assert "1..64" in err


def test_sixty_four_workers_are_accepted() -> None:
    PipelineConfig(workers=64, metrics_port=None, sinks=("none",)).validate()


@pytest.mark.parametrize("where", ["/proc/cx-never", "FILE", "FILE/below"])
def test_a_jsonl_sink_that_cannot_be_a_directory_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path, where: str
) -> None:
    # /proc refuses new directories; a regular file is no directory. Both were a 100-line traceback, exit 1.
    f = tmp_path / "plain.txt"
    f.write_text("x")
    d = where.replace("FILE", str(f))
    err = _run_error(capsys, "--sink", f"jsonl:{d}")
    assert "--sink" in err
    assert d in err
