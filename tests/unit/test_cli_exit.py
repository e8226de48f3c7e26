"""The console script leaves without Python's finalization while Bytewax worker threads are still running."""

from __future__ import annotations

from pathlib import Path

import pytest

import flows.cli as cli
import flows.runner as runner
import flows.stopping as stopping


def _tasks(tmp_path: Path, names: list[str]) -> Path:
    for i, name in enumerate(names):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "comm").write_text(name + "\n")
    return tmp_path


def test_await_workers_stopped_reports_worker_threads_still_running(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stopping, "_TASKS", _tasks(tmp_path, ["python", "timely:work-1", "timely:send-0"]))
    assert not stopping.await_workers_stopped(0.05)
    (tmp_path / "1" / "comm").write_text("python\n")  # the worker left the dataflow
    assert stopping.await_workers_stopped(0.05)


@pytest.mark.parametrize(("left", "cluster_failed"), [(True, False), (False, False), (False, True)])
def test_console_exits_hard_only_when_workers_remain_or_a_cluster_run_failed(
        left: bool, cluster_failed: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    # At finalization Python would end such a thread inside Bytewax's Rust frames: the process aborted (exit -6)
    # after printing its error line; os._exit keeps the exit code.
    monkeypatch.setattr(cli, "main", lambda: 2)
    monkeypatch.setattr(runner, "await_workers_stopped", lambda _t: not left)
    monkeypatch.setattr(runner, "_CLUSTER_FAILED", cluster_failed)
    exits: list[tuple[str, int]] = []

    def hard(code: int) -> None:
        exits.append(("os._exit", code))
        raise SystemExit(code)

    monkeypatch.setattr(cli.os, "_exit", hard)
    with pytest.raises(SystemExit) as e:
        cli.console()
    assert e.value.code == 2
    assert exits == ([("os._exit", 2)] if left or cluster_failed else [])
