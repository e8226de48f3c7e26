"""Input files that cannot be read as UTF-8 JSONL are named at start-up; a UTF-8 BOM costs no event."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from connectors.replay_source import _open_file_at
from connectors.simulator import simulate
from state.events import Event, parse_event

EVENTS = [orjson.dumps(e) for e in simulate(3, 30, seed=7).events()]


def _moments_run(src: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "flows.cli", "run", "--source", f"file:{src}", "--sink",
                           f"jsonl:{out}", "--no-metrics", "--status", "off", "--shards", "4"],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(("encoding", "name"), [("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"),
                                                 ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32"),
                                                 ("utf-32-le", "UTF-32")])
def test_a_utf16_or_utf32_file_is_refused_naming_it(tmp_path: Path, encoding: str, name: str) -> None:
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\n".join(EVENTS).decode().encode(encoding))
    p = _moments_run(str(src), tmp_path / "out")
    assert p.returncode == 2, p.stderr
    errors = [line for line in p.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, p.stderr
    assert str(src) in errors[0]
    assert f"{name}-encoded" in errors[0]
    assert "convert it to UTF-8" in errors[0]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "out" / "deadletter.jsonl").exists()


def test_a_utf8_bom_does_not_cost_the_first_event(tmp_path: Path) -> None:
    src = tmp_path / "events.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + b"\n".join(EVENTS) + b"\n")
    lines = list(_open_file_at(src)(0))
    assert len(lines) == len(EVENTS)
    assert type(parse_event(lines[0].rstrip(b"\n"))) is Event
    assert list(_open_file_at(src)(1)) == lines[1:]  # a resume position still counts the first line
    p = _moments_run(str(src), tmp_path / "out")
    assert p.returncode == 0, p.stderr
    dead = tmp_path / "out" / "deadletter.jsonl"
    assert not dead.exists() or not dead.read_text(), dead.read_text()
    assert f"events={len(EVENTS)} " in p.stdout


def test_an_empty_file_or_a_directory_without_jsonl_is_named_in_a_warning(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    p = _moments_run(str(empty), tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert f"{empty} is empty" in p.stderr
    folder = tmp_path / "drop"
    folder.mkdir()
    (folder / "events.json").write_bytes(EVENTS[0])  # not *.jsonl: not read
    p = _moments_run(str(folder), tmp_path / "out")
    assert p.returncode == 0, p.stderr
    assert f"directory {folder} holds no *.jsonl files" in p.stderr


@pytest.mark.parametrize("head", [b"\x00" * 4096, b"\x00\x00\x00{" + b"\x00" * 64, b"\xff\x00" * 64])
def test_nul_garbage_is_input_to_dead_letter_not_an_encoding(head: bytes) -> None:
    # Only ASCII laid out as UTF-16/32 (a NUL beside every character) is a wide encoding; a hostile first line of
    # NULs must reach the dead letters like any bad line, not make the whole file refused.
    from connectors.replay_source import _wide_encoding

    assert _wide_encoding(head) is None
    assert _wide_encoding('{"event_id":"e1","customer_id":"c1"}\n'.encode("utf-16-le")) == "UTF-16"
