"""JSONL output holds whole lines only, and its reader names the file and line of a bad one."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import JsonlError, JsonlWriter, read_jsonl


def test_a_torn_last_line_is_cut_off_when_the_file_is_opened(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "moments.jsonl"
    torn = b'{"moment_id": "m3", "customer_id": "c'
    path.write_bytes(b'{"moment_id": "m1"}\n{"moment_id": "m2"}\n' + torn)
    writer = JsonlWriter(tmp_path)
    with caplog.at_level(logging.WARNING, logger="cx.jsonl"):
        writer.add("moment", [{"moment_id": "m3"}])
    writer.close()
    assert [r["moment_id"] for r in read_jsonl(path)] == ["m1", "m2", "m3"]
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert str(path) in warning
    assert f"{len(torn)} bytes" in warning


def test_a_whole_last_record_without_its_newline_is_kept(tmp_path: Path) -> None:
    # Cut exactly between a record and its newline: the record is whole, only the newline is missing.
    path = tmp_path / "actions.jsonl"
    path.write_bytes(b'{"moment_id": "m1"}\n{"moment_id": "m2", "status": "sent"}')
    writer = JsonlWriter(tmp_path, kinds=("action",))
    writer.add("action", [{"moment_id": "m3"}])
    writer.close()
    assert [r["moment_id"] for r in read_jsonl(path)] == ["m1", "m2", "m3"]


def test_a_file_that_is_one_torn_line_is_emptied_and_whole_files_are_left_alone(tmp_path: Path) -> None:
    (tmp_path / "moments.jsonl").write_bytes(b'{"moment_id": "m' * 10_000)  # no newline at all, > one read block
    (tmp_path / "tags.jsonl").write_bytes(b'{"tag": "t1"}\n')
    writer = JsonlWriter(tmp_path)
    writer.add("moment", [{"moment_id": "m9"}])
    writer.add("tag", [{"tag": "t2"}])
    writer.close()
    assert read_jsonl(tmp_path / "moments.jsonl") == [{"moment_id": "m9"}]
    assert read_jsonl(tmp_path / "tags.jsonl") == [{"tag": "t1"}, {"tag": "t2"}]


def test_a_write_that_fails_midway_leaves_whole_lines(tmp_path: Path) -> None:
    # A child process with a file size limit (RLIMIT_FSIZE) stands in for a full disk: write() stores what fits
    # below the limit, then fails with EFBIG, in the middle of a batch and of a line.
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from pathlib import Path
        from connectors.jsonl import JsonlWriter
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
        w = JsonlWriter(Path({str(tmp_path)!r}))
        for batch in range(1000):
            try:
                w.add("moment", [{{"moment_id": f"m{{batch}}-{{i}}", "pad": "x" * 50}} for i in range(30)])
            except OSError as e:
                print(batch, e.errno)
                sys.exit(0)
        sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).parents[2], timeout=60)
    assert proc.returncode == 0, proc.stderr
    failed_batch = int(proc.stdout.split()[0])
    data = (tmp_path / "moments.jsonl").read_bytes()
    assert data.endswith(b"\n")
    rows = read_jsonl(tmp_path / "moments.jsonl")
    # Every batch before the failed one, whole; nothing of the failed one.
    assert len(rows) == failed_batch * 30
    assert rows[-1]["moment_id"] == f"m{failed_batch - 1}-29"


def test_read_jsonl_names_the_file_and_line_of_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "moments.jsonl"
    path.write_bytes(orjson.dumps({"a": 1}) + b"\n\n" + b'{"a": 2}\n{"a": ')
    with pytest.raises(JsonlError, match=rf"{path}: line 4 is not valid JSON \(a torn last line"):
        read_jsonl(path)
    path.write_bytes(b'{"a": 1}\n[1, 2]\n')
    with pytest.raises(JsonlError, match=rf"{path}: line 2 is not a JSON object"):
        read_jsonl(path)


def test_an_unknown_record_kind_raises_instead_of_being_dropped(tmp_path: Path) -> None:
    writer = JsonlWriter(tmp_path, kinds=("moment",))
    try:
        with pytest.raises(ValueError, match="'momnet'"):
            writer.add("momnet", [{"moment_id": "m1"}])
        writer.add("journey_state", [{"customer_id": "c1"}])  # a record kind this writer does not select
    finally:
        writer.close()
    assert list(tmp_path.iterdir()) == []
