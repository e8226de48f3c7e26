"""Settings an adversary tried (session 8): each refused with one line naming it, or read as documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from flows.cli import build_parser, config_from_args, main
from flows.config import ConfigError
from flows.http_token import http_token
from flows.lookup_cli import _shown, fetch


@pytest.mark.parametrize("var", ["CX_RECOVERY_DIR", "CX_RULES", "CX_HTTP_PEERS", "CX_SHARDS"])
def test_an_empty_variable_is_unset(var: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # CX_RECOVERY_DIR= kept snapshots in the current directory; CX_RULES= loaded it as a directory of packs.
    default = config_from_args(build_parser().parse_args(["run"]))
    monkeypatch.setenv(var, "")
    cfg = config_from_args(build_parser().parse_args(["run"]))
    assert cfg == default
    assert cfg.recovery_dir is None


@pytest.mark.parametrize("value", ["   ", "Zq9x\n", " Zq9x", "Zq 9x", "Zq9ö", "Zq9x\r\n"])
def test_a_token_no_client_could_send_is_refused_without_showing_it(value: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CX_HTTP_TOKEN", value)
    with pytest.raises(ConfigError, match="CX_HTTP_TOKEN: must be a bearer token") as e:
        http_token()
    assert value.strip() not in str(e.value) or not value.strip()


@pytest.mark.parametrize(("value", "token"), [("", None), ("s3cr3t-Token_1.2~+/==", "s3cr3t-Token_1.2~+/==")])
def test_good_tokens_and_no_token(value: str, token: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CX_HTTP_TOKEN", value)
    assert http_token() == token


@pytest.mark.parametrize(("url", "problem"), [
    ("http://[::1", "is not a URL (Invalid IPv6 URL)"),
    ("http://127.0.0.1:99999", "is not a URL (Port out of range"),
    ("http://:80", "names no host"),
])
def test_a_malformed_lookup_url_is_refused_naming_the_setting(url: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"--url (CX_LOOKUP_URL): {problem}")):
        fetch(url, "/v1/customers/c1")


def test_a_password_in_the_lookup_url_is_never_shown() -> None:
    assert _shown("http://user:pw@127.0.0.1:9464/x") == "http://127.0.0.1:9464/x"
    assert _shown("https://h:1") == "https://h:1"


def test_a_recovery_dir_that_is_a_file_is_refused_naming_it(capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["run", "--no-metrics", "--source", "simulator", "--customers", "5", "--minutes", "1", "--sink",
                 f"jsonl:{tmp_path / 'out'}", "--recovery-dir", str(afile)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"configuration: --recovery-dir: {afile} exists and is not a directory" in err


def test_an_embedded_clickhouse_path_that_is_a_file_is_refused_naming_it(capsys: pytest.CaptureFixture[str],
                                                                         tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    assert main(["run", "--no-metrics", "--source", "simulator", "--customers", "5", "--minutes", "1", "--sink",
                 f"chdb://{afile}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"(CX_CLICKHOUSE_DSN): {afile} exists and is not a directory" in err


@pytest.mark.parametrize("value", ["abc", "0", "-5", "²"])
def test_a_lookup_store_size_that_is_not_a_count_is_one_line(value: str, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setenv("CX_LOOKUP_CUSTOMERS", value)
    assert main(["run", "--metrics-port", "0", "--source", "simulator", "--customers", "5", "--minutes", "1",
                 "--sink", f"jsonl:{tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"configuration: CX_LOOKUP_CUSTOMERS: must be a whole number of customers, at least 1, got {value!r}" in err


def test_a_rules_directory_entry_that_is_not_a_regular_file_is_named_not_skipped(tmp_path: Path) -> None:
    import os

    from state.rules import DEFAULT_PACK, RulePackError
    from state.versions import load_versions

    (tmp_path / "v1.toml").write_text(DEFAULT_PACK.read_text())
    (tmp_path / "v2.toml").symlink_to(tmp_path / "gone.toml")  # a broken link: a version meant to be in force
    (tmp_path / "v3.toml").mkdir()
    os.mkfifo(tmp_path / "v4.toml")
    with pytest.raises(RulePackError) as e:
        load_versions(tmp_path)
    lines = str(e.value).splitlines()
    assert [line.split(":")[0] for line in lines] == [str(tmp_path / f"v{i}.toml") for i in (2, 3, 4)]
    assert all("(file): is not a regular file" in line for line in lines)


@pytest.mark.parametrize("path", ["/dev/zero", "fifo"])
def test_a_pack_path_that_is_not_a_regular_file_is_refused_without_reading_it(tmp_path: Path, path: str) -> None:
    import os

    from state.rules import RulePackError, load_rule_pack

    if path == "fifo":
        path = str(tmp_path / "p.toml")
        os.mkfifo(path)  # reading it would block for ever
    with pytest.raises(RulePackError, match="is not a regular file"):
        load_rule_pack(path)


@pytest.mark.parametrize("value", ["253402300800000", "4611686018427387904", "99999999999999999999",
                                   '"2100-01-01T00:00:00Z"', "-1"])
def test_an_effective_from_no_event_can_reach_is_refused_naming_the_field(tmp_path: Path, value: str) -> None:
    """check-rules crashed on these (year 10000) while run accepted them: a version that could never be in force."""
    import tomllib

    from state.rules import DEFAULT_PACK, RulePackError, load_rule_pack

    text = DEFAULT_PACK.read_text().replace("version = 1\n", f"version = 1\neffective_from = {value}\n", 1)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        pytest.skip("not TOML")
    (tmp_path / "v.toml").write_text(text)
    with pytest.raises(RulePackError, match="pack.effective_from"):
        load_rule_pack(tmp_path / "v.toml")
