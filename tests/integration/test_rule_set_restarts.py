"""A rule removed at one restart and added back at a later one (DESIGN.md §8, Versions): the restarts record each
rule-set change at their restored watermark, so `moments run` with two restarts gives the moments of one replay of a
directory of versions that writes the absence down (before, the rule fired for the time it was absent)."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate
from state.rules import DEFAULT_PACK
from tests.kafka_helpers import free_port
from tests.worker import Worker

pytestmark = pytest.mark.slow

MIN = 60_000
_BOUNDARY = re.compile(r"recorded as a version boundary at event time (\d+)")


def _pack(version: int, effective: int | None, abandoned: bool = True) -> str:
    text = DEFAULT_PACK.read_text()
    head = f"version = {version}\n" + (f"effective_from = {effective}\n" if effective is not None else "")
    text = text.replace("version = 1\n", head, 1)
    if not abandoned:
        start = text.index('[[moment]]\nkind = "abandoned"')
        text = text[:start] + text[text.index("[[moment]]", start + 1):]
    return text


def _moments(out: Path) -> set[tuple[str, str, int]]:
    return {(m["customer_id"], m["rule"], m["due_ts"]) for m in read_jsonl(out / "moments.jsonl")}


def _run(tmp: Path, name: str, files: list[Path], rules: Path, setup: str, recovery: bool = True) -> tuple[
        set[tuple[str, str, int]], str]:
    """Run ``moments run`` to the end of ``files`` (``setup``: ``w1``, ``w2`` or a 2-process ``cluster``, each
    process with its recovery directory); return the moments and the logs."""
    procs = 2 if setup == "cluster" else 1
    more = ["-w", "2"] if setup == "w2" else []
    if procs > 1:
        more += ["-a", f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"]
    cluster = [Worker(["--no-metrics", "--status", "off", "--source", "file:" + ",".join(map(str, files)), "--rules",
                       str(rules), "--sink", f"jsonl:{tmp / name / str(i)}", *more,
                       *(["-i", str(i)] if procs > 1 else []),
                       *(["--recovery-dir", str(tmp / f"recovery{i}")] if recovery else [])], tmp / f"{name}{i}.log")
               for i in range(procs)]
    for w in cluster:
        assert w.wait(600) == 0, w.log()[-3000:]
    return set().union(*(_moments(tmp / name / str(i)) for i in range(procs))), "".join(w.log() for w in cluster)


@pytest.mark.parametrize("setup", ["w1", "w2", "cluster"])
def test_a_rule_removed_at_a_restart_and_added_back_at_a_later_one_fires_as_with_a_directory_of_versions(
        tmp_path: Path, setup: str) -> None:
    evs = sorted(simulate(2000, 120, seed=7).events(), key=lambda e: (e["ts"], e["event_id"]))
    start = evs[0]["ts"]
    # Three files by event time: the first run reads the first, each restart one more (an input list may grow at
    # its end); every run ends its input, so the restored watermark lies after the events read before.
    cuts = [start + 40 * MIN, start + 80 * MIN]
    parts = [[e for e in evs if e["ts"] < cuts[0]], [e for e in evs if cuts[0] <= e["ts"] < cuts[1]],
             [e for e in evs if e["ts"] >= cuts[1]]]
    files = []
    for i, part in enumerate(parts):
        files.append(tmp_path / f"events{i}.jsonl")
        files[-1].write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in part))
    packs = [tmp_path / "default.toml", tmp_path / "without.toml", tmp_path / "back.toml"]
    for p, text in zip(packs, (_pack(1, None), _pack(2, None, abandoned=False), _pack(3, None)), strict=True):
        p.write_text(text)

    restarted: set[tuple[str, str, int]] = set()
    boundaries = []
    for i in range(3):
        got, log = _run(tmp_path, f"out{i}", files[:i + 1], packs[i], setup)
        restarted |= got
        if i:
            found = {int(t) for t in _BOUNDARY.findall(log)}
            # Without the line (before the fix), where it would be: the moments below tell what went wrong.
            read = max(e["ts"] for e in evs if e["ts"] < cuts[i - 1]) + 1
            boundaries.append(found.pop() if len(found) == 1 else read)

    # The same change written as versions, replayed in one run without restarts.
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "v1.toml").write_text(_pack(1, None))
    (versions / "v2.toml").write_text(_pack(2, boundaries[0], abandoned=False))
    (versions / "v3.toml").write_text(_pack(3, boundaries[1]))
    want, _log = _run(tmp_path, "versions", files, versions, setup, recovery=False)
    assert {r for _c, r, _d in want} >= {"cart.abandoned", "5g_upgrade.abandoned"}
    extra, missing = restarted - want, want - restarted
    assert not extra, (sorted(extra)[:10], len(extra))
    assert not missing, (sorted(missing)[:10], len(missing))
    # Each restart logged its boundary: the largest event time read before it, plus one (the watermark after the end
    # of input, from which the events of the next file are handled).
    assert boundaries == [max(e["ts"] for e in evs if e["ts"] < c) + 1 for c in cuts]
