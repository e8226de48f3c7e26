"""End to end: planted conversions → run → `moments report rules` equals what the raw outputs say.

Customers abandon a cart; treated ones (not in the hold-out) come back and buy more often than
control ones, as if the reminder worked. The report, read from the embedded ClickHouse, must give
the same counts, rates and uplift interval as a computation from the JSONL outputs in this test.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.jsonl import read_jsonl
from state.policy import in_holdout
from state.rules import DEFAULT_PACK
from tests.helpers import uplift_half_width

pytestmark = pytest.mark.slow

T0 = 1_767_225_600_000  # 2026-01-01 00:00 UTC = 08:00 in the pack's default zone (outside quiet hours)
MIN = 60_000
CUSTOMERS = 2_400
HOLDOUT = 0.5
RULE = "cart.abandoned"
P_TREATED, P_CONTROL = 0.45, 0.20
MIN_SAMPLE = 200  # the default pack's [effectiveness] min_sample


def _moments(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CX_LOG_LEVEL": "warning"}
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def _events(rng: random.Random) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(CUSTOMERS):
        cid = f"cust-{i:05d}"
        t = T0 + 60 * MIN + rng.randrange(8 * 60 * MIN)  # 09:00-17:00 local: no quiet hours

        def e(kind: str, ts: int, step: str, n: int, cid: str = cid) -> None:
            out.append({"event_id": f"{cid}-{n}", "customer_id": cid, "ts": ts, "channel": "app", "type": kind,
                        "journey": "cart", "step": step})

        e("view", t, "product", 0)
        e("start", t + MIN, "cart", 1)
        e("submit", t + 2 * MIN, "checkout", 2)  # then silence: abandoned at checkout, due 10 min later
        treated = not in_holdout(cid, RULE, HOLDOUT)
        if rng.random() < (P_TREATED if treated else P_CONTROL):
            back = t + 2 * MIN + rng.randrange(20 * MIN, 120 * MIN)
            e("view", back, "checkout", 3)
            e("submit", back + MIN, "payment", 4)
            e("complete", back + 2 * MIN, "payment", 5)
    out.sort(key=lambda d: (d["ts"], d["event_id"]))
    return out


@pytest.fixture(scope="module")
def effectiveness_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    work = tmp_path_factory.mktemp("effect")
    pack = DEFAULT_PACK.read_text().replace("holdout = 0.1 ", f"holdout = {HOLDOUT} ")
    assert tomllib.loads(pack)["policy"]["holdout"] == HOLDOUT
    (work / "pack.toml").write_text(pack)
    (work / "events.jsonl").write_bytes(b"".join(orjson.dumps(d) + b"\n" for d in _events(random.Random(7))))
    dsn = f"chdb://{work / 'ch'}"
    run = _moments("run", "--source", "file:events.jsonl", "--sink", "jsonl:out", "--sink", dsn, "--rules",
                   "pack.toml", "--no-metrics", "--status", "off", cwd=work)
    assert run.returncode == 0, run.stderr
    rep = _moments("report", "rules", "--clickhouse", dsn, "--rules", "pack.toml", "--json", cwd=work)
    assert rep.returncode == 0, rep.stderr
    return {"work": work, "report": orjson.loads(rep.stdout)}


def _independent(work: Path) -> dict[str, Any]:
    """Counts and uplift from the raw JSONL outputs, without ClickHouse or the report's code."""
    decisions = {a["moment_id"]: a for a in read_jsonl(work / "out" / "actions.jsonl") if a["rule"] == RULE}
    latest: dict[str, dict[str, Any]] = {}
    for t in read_jsonl(work / "out" / "tags.jsonl"):
        if t["moment_id"] in decisions and t["version"] >= latest.get(t["moment_id"], {"version": -1})["version"]:
            latest[t["moment_id"]] = t
    n = {"sent": 0, "control": 0}
    s = {"sent": 0, "control": 0}
    for mid, a in decisions.items():
        if a["status"] in n:
            n[a["status"]] += 1
            t = latest.get(mid)
            s[a["status"]] += t is not None and t["state"] == "resolved" and t["outcome"] in ("recovered", "converted")
    p_t, p_c = s["sent"] / n["sent"], s["control"] / n["control"]
    half = uplift_half_width(n["sent"], s["sent"], n["control"], s["control"], 0.95, MIN_SAMPLE)
    return {"moments": len(decisions), "n": n, "s": s, "uplift": p_t - p_c, "low": max(p_t - p_c - half, -1.0),
            "high": min(p_t - p_c + half, 1.0)}


def test_every_abandonment_has_one_decision_and_the_hold_out_matches_the_assignment(
    effectiveness_run: dict[str, Any],
) -> None:
    work = effectiveness_run["work"]
    moments = [m for m in read_jsonl(work / "out" / "moments.jsonl") if m["rule"] == RULE]
    actions = [a for a in read_jsonl(work / "out" / "actions.jsonl") if a["rule"] == RULE]
    assert len(moments) == CUSTOMERS
    assert sorted(a["moment_id"] for a in actions) == sorted(m["moment_id"] for m in moments)
    for a in actions:
        assert a["status"] == ("control" if in_holdout(a["customer_id"], RULE, HOLDOUT) else "sent"), a


def test_rule_report_matches_the_raw_outputs(effectiveness_run: dict[str, Any]) -> None:
    want = _independent(effectiveness_run["work"])
    got = next(r for r in effectiveness_run["report"]["rules"] if r["rule"] == RULE)
    assert got["moments"] == want["moments"] == CUSTOMERS
    assert (got["sent"], got["control"]) == (want["n"]["sent"], want["n"]["control"])
    assert (got["successes_sent"], got["successes_control"]) == (want["s"]["sent"], want["s"]["control"])
    assert got["uplift"] == pytest.approx(want["uplift"], abs=1e-12)
    assert got["ci_low"] == pytest.approx(want["low"], abs=1e-9)
    assert got["ci_high"] == pytest.approx(want["high"], abs=1e-9)
    # The planted effect is there (0.25 points), significant at this sample: the rule is kept.
    assert want["uplift"] == pytest.approx(P_TREATED - P_CONTROL, abs=0.06)
    assert got["verdict"] == "keep"
    assert got["median_recovery_ms"] is not None
    assert 20 * MIN < got["median_recovery_ms"] < 130 * MIN
