"""A restart with changed rule parameters, or changed rules, keeps every customer's state; changed journeys are
refused."""

from __future__ import annotations

from pathlib import Path

import orjson

from connectors.jsonl import read_jsonl
from state.rules import DEFAULT_PACK
from tests.helpers import MIN, T0, ev
from tests.worker import Worker


def _write(path: Path, events: list[dict[str, object]]) -> None:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))


def _run(tmp: Path, name: str, *args: str) -> Worker:
    w = Worker([*args, "--no-metrics", "--status", "off", "--recovery-dir", str(tmp / "recovery")], tmp / f"{name}.log")
    w.wait(300)
    return w


def test_an_abandonment_armed_before_a_restart_fires_after_it_under_the_new_idle(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # Customer k reaches checkout at 0 and goes quiet; the input ends 2 minutes later, before the abandonment is due.
    _write(first, [ev("k1", 0, "submit", customer="k", step="checkout"),
                   ev("f1", 2 * MIN, "view", customer="filler", step="product")])
    _write(second, [ev("f2", 40 * MIN, "view", customer="filler2", step="product")])
    w = _run(tmp_path, "first", "--source", f"file:{first}", "--sink", f"jsonl:{tmp_path / 'out1'}")
    assert w.proc.returncode == 0, w.log()[-3000:]
    assert not [m for m in read_jsonl(tmp_path / "out1" / "moments.jsonl") if m["customer_id"] == "k"]

    pack = tmp_path / "idle15.toml"
    pack.write_text(DEFAULT_PACK.read_text().replace('idle = "10m"', 'idle = "15m"'))
    w = _run(tmp_path, "second", "--source", f"file:{first},{second}", "--rules", str(pack), "--sink",
             f"jsonl:{tmp_path / 'out2'}")
    assert w.proc.returncode == 0, w.log()[-3000:]
    got = [(m["rule"], m["due_ts"]) for m in read_jsonl(tmp_path / "out2" / "moments.jsonl") if m["customer_id"] == "k"]
    assert got == [("cart.abandoned", T0 + 15 * MIN)]


_VIEWS = """
[[moment]]
kind = "count"
name = "views"
journeys = ["cart"]
when = { type = "view" }
threshold = 2
within = "60m"
urgency = "P3"
action = "none"
"""


def test_a_restart_whose_pack_removes_and_adds_rules_keeps_the_open_journeys(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    # k reaches checkout and goes quiet (its abandonment is due after the restart); n views once before it.
    _write(first, [ev("k1", 0, "submit", customer="k", step="checkout"),
                   ev("n1", MIN, "view", customer="n", step="product"),
                   ev("f1", 2 * MIN, "view", customer="filler", step="product")])
    _write(second, [ev("n2", 20 * MIN, "view", customer="n", step="product"),
                    ev("n3", 21 * MIN, "view", customer="n", step="cart"),
                    ev("f2", 40 * MIN, "view", customer="filler2", step="product")])
    w = _run(tmp_path, "first", "--source", f"file:{first}", "--sink", f"jsonl:{tmp_path / 'out1'}")
    assert w.proc.returncode == 0, w.log()[-3000:]
    assert not [m for m in read_jsonl(tmp_path / "out1" / "moments.jsonl") if m["customer_id"] in ("k", "n")]

    text = DEFAULT_PACK.read_text()
    start = text.index('[[moment]]\nkind = "maze"')
    pack = tmp_path / "changed.toml"  # maze removed, a generic rule added
    pack.write_text(text[:start] + text[text.index("[[moment]]", start + 1):] + _VIEWS)
    w = _run(tmp_path, "second", "--source", f"file:{first},{second}", "--rules", str(pack), "--sink",
             f"jsonl:{tmp_path / 'out2'}")
    assert w.proc.returncode == 0, w.log()[-3000:]
    got = sorted((m["customer_id"], m["rule"], m["due_ts"]) for m in read_jsonl(tmp_path / "out2" / "moments.jsonl")
                 if m["customer_id"] in ("k", "n") and m["rule"] in ("cart.abandoned", "cart.views"))
    # The abandonment armed before the restart fires after it; the new rule starts empty at the restart: n's view
    # before it does not count (with it, the view at 20 minutes would have fired).
    assert got == [("k", "cart.abandoned", T0 + 10 * MIN), ("n", "cart.views", T0 + 21 * MIN)]


def test_a_restart_whose_pack_changes_a_journey_is_refused_with_one_line(tmp_path: Path) -> None:
    events = tmp_path / "a.jsonl"
    _write(events, [ev("k1", 0, "submit", customer="k", step="checkout")])
    w = _run(tmp_path, "first", "--source", f"file:{events}", "--sink", f"jsonl:{tmp_path / 'out1'}")
    assert w.proc.returncode == 0, w.log()[-3000:]
    text = DEFAULT_PACK.read_text()
    pack = tmp_path / "steps.toml"
    pack.write_text(text.replace('"checkout", "payment"]', '"checkout", "review", "payment"]', 1))
    assert pack.read_text() != text
    w = _run(tmp_path, "second", "--source", f"file:{events}", "--rules", str(pack), "--sink",
             f"jsonl:{tmp_path / 'out2'}")
    assert w.proc.returncode == 2, w.log()[-3000:]
    log = w.log()
    assert "configuration: --rules: recovery state was built with other journeys" in log
    assert "Traceback" not in log
    assert "panicked" not in log  # refused before Bytewax opens the recovery store
