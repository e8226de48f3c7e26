"""A ``--rules`` directory whose version 2 removes one rule and adds another (DESIGN.md §8: a rule's state belongs to
its name): a replay, one process or a cluster of two, equals a reference written here."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.jsonl import read_jsonl
from tests.helpers import MIN, T0
from tests.kafka_helpers import free_port
from tests.worker import Worker

pytestmark = pytest.mark.slow

SWITCH = T0 + 90 * MIN  # version 2 comes into force here: `abandoned` removed, `stuck` added
IDLE = 10 * MIN
STUCK_WITHIN = 30 * MIN
TIMEOUT = 60 * MIN
STEPS = ["product", "cart", "checkout", "payment"]
KEY = {"checkout", "payment"}

_HEAD = """[pack]
name = "rule-set"
version = {version}
effective_from = {effective}
attempt_timeout = "60m"

[[journey]]
id = "cart"
steps = ["product", "cart", "checkout", "payment"]
key_steps = ["checkout", "payment"]

[policy]
holdout = 0.0

[[moment]]
kind = "failed"
"""
_ABANDONED = """
[[moment]]
kind = "abandoned"
idle = "10m"
ttl = "2h"
"""
_STUCK = """
[[moment]]
kind = "stuck"
threshold = 2
within = "30m"
"""


def write_packs(d: Path) -> Path:
    """v1 (failed, abandoned) from T0; v2 (failed, stuck) from ``SWITCH``."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "v1.toml").write_text(_HEAD.format(version=1, effective=T0) + _ABANDONED)
    (d / "v2.toml").write_text(_HEAD.format(version=2, effective='"2026-01-01T01:30:00Z"') + _STUCK)
    return d


def events(seed: int, customers: int = 80) -> list[dict[str, Any]]:
    """Customers walk the cart journey around the switch, failing often; in (ts, event_id) order."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(customers):
        t = T0 + rnd.randrange(0, 150 * MIN)
        for k in range(rnd.randrange(2, 10)):
            t += rnd.choice([MIN, 3 * MIN, 8 * MIN, 12 * MIN, 24 * MIN, 40 * MIN, 70 * MIN]) + rnd.randrange(0, 999)
            type_ = rnd.choices(["view", "submit", "fail", "complete"], [4, 2, 4, 1])[0]
            out.append({"event_id": f"e{i}-{k}", "customer_id": f"cust{i}", "ts": t, "channel": "app",
                        "type": type_, "journey": "cart", "step": rnd.choice(STEPS)})
    out.append({"event_id": "end", "customer_id": "filler", "ts": T0 + 600 * MIN, "channel": "app", "type": "view"})
    out.sort(key=lambda e: (e["ts"], e["event_id"]))
    return out


def reference(evs: list[dict[str, Any]]) -> set[tuple[str, str, int, int]]:
    """(customer, rule, due_ts, rule_version), written out independently of the engine.

    ``failed`` is in both versions (one rule: once per attempt across the switch). ``abandoned`` is armed only by
    key-step events before the switch and fires only when due before it (a removed rule fires no more). ``stuck``
    starts empty at the switch: it counts only fails from then on.
    """
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for e in evs:
        if e.get("journey") == "cart":
            by_customer.setdefault(e["customer_id"], []).append(e)
    end = max(e["ts"] for e in evs)
    found: set[tuple[str, str, int, int]] = set()
    for cid, mine in by_customer.items():
        last: int | None = None
        armed: int | None = None  # due time of a pending abandonment
        fired: set[str] = set()
        fails: list[int] = []  # stuck's window (fails at or after the switch)
        for e in [*mine, None]:
            t = end if e is None else e["ts"]
            if armed is not None and armed <= t and armed < SWITCH:
                found.add((cid, "cart.abandoned", armed, 1))
                fired.add("abandoned")
            armed = None
            if e is None:
                break
            if last is None or t - last >= TIMEOUT:
                fired, fails = set(), []
            last = t
            version = 2 if t >= SWITCH else 1
            if e["type"] == "complete":
                last, fails = None, []
                continue
            if e["type"] == "fail":
                if "failed" not in fired:
                    found.add((cid, "cart.failed", t, version))
                    fired.add("failed")
                if version == 2 and "stuck" not in fired:
                    fails = [f for f in fails if t - f <= STUCK_WITHIN]
                    if fails:
                        found.add((cid, "cart.stuck", t, 2))
                        fired.add("stuck")
                        fails = []
                    else:
                        fails = [t]
            if e["step"] in KEY and version == 1 and "abandoned" not in fired:
                armed = t + IDLE
    return found


def moments(out: Path) -> set[tuple[str, str, int, int]]:
    return {(m["customer_id"], m["rule"], m["due_ts"], m["rule_version"]) for m in read_jsonl(out / "moments.jsonl")}


def _write(path: Path, evs: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in evs))
    return path


def test_a_replay_through_a_rule_set_change_equals_the_reference(tmp_path: Path) -> None:
    evs = events(seed=3)
    want = reference(evs)
    rules = {(r, v) for _c, r, _d, v in want}
    assert rules >= {("cart.abandoned", 1), ("cart.failed", 1), ("cart.failed", 2), ("cart.stuck", 2)}
    # Some abandonment was armed before the switch and due after it: the removal is what keeps it from firing.
    assert any(e["step"] in KEY and SWITCH - IDLE < e["ts"] < SWITCH for e in evs if "step" in e)
    src = _write(tmp_path / "events.jsonl", evs)
    w = Worker(["--no-metrics", "--status", "off", "--source", f"file:{src}", "--rules",
                str(write_packs(tmp_path / "packs")), "--sink", f"jsonl:{tmp_path / 'out'}"], tmp_path / "run.log")
    assert w.wait(300) == 0, w.log()[-3000:]
    assert moments(tmp_path / "out") == want


def test_a_two_process_file_cluster_gives_the_moments_of_one(tmp_path: Path) -> None:
    evs = events(seed=5)
    src = _write(tmp_path / "events.jsonl", evs)
    packs = write_packs(tmp_path / "packs")
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    cluster = [Worker(["--no-metrics", "--status", "off", "--source", f"file:{src}", "--rules", str(packs),
                       "--sink", f"jsonl:{tmp_path / f'out{i}'}", "-i", str(i), "-a", addrs], tmp_path / f"run{i}.log")
               for i in range(2)]
    for w in cluster:
        assert w.wait(300) == 0, w.log()[-3000:]
    assert moments(tmp_path / "out0") | moments(tmp_path / "out1") == reference(evs)
