"""Bounded memory: a long run of one-off customers keeps tracked customers and RSS flat."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

_CHILD = r"""
import gc, json, resource
import orjson
from state.batches import RawBatch, Tick
import tomllib
from state.rules import DEFAULT_PACK, rule_pack_from_dict
from state.shard import Shard, process

T0 = 1_767_225_600_000
# Without a weekly cap a contacted customer's history matters for a day (daily cap), not seven:
# that keeps the plateau within this run's 96 h (a weekly cap keeps contacted customers 7 days).
data = tomllib.loads(DEFAULT_PACK.read_text())
data["policy"]["max_per_week"] = 0
pack = rule_pack_from_dict(data, "no-weekly-cap.toml")
sh = Shard(pack)
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()
samples = []
# 96 simulated hours; a new customer every 2 s of event time, each seen once at a key step (timers pending).
step_ms = 2_000
per_hour = 3_600_000 // step_ms
n = 0
for hour in range(96):
    raws = []
    for i in range(per_hour):
        ts = T0 + n * step_ms
        raws.append(orjson.dumps({"event_id": f"e{n}", "customer_id": f"one-off-{n}", "ts": ts, "channel": "web",
                                  "type": "submit", "journey": "cart", "step": "checkout"}))
        n += 1
    process(sh, [RawBatch("t", 0, raws, list(range(len(raws))))])
    if hour % 6 == 5:
        gc.collect()
        samples.append({"hour": hour + 1, "tracked": len(sh.customers), "timers": len(sh.timers), "rss": rss()})
print(json.dumps(samples))
"""


def test_one_off_customers_are_evicted_and_memory_stays_flat() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True, timeout=600)
    samples = json.loads(out.stdout.strip().splitlines()[-1])
    per_day = 24 * 3600 // 2
    late = [s for s in samples if s["hour"] >= 60]
    # Idle customers go after a day, or when the 48 h TTL of their abandonment tag ends: a plateau of two days.
    for s in late:
        assert s["tracked"] <= 2.1 * per_day, s
    tracked = [s["tracked"] for s in late]
    assert max(tracked) - min(tracked) <= 0.1 * per_day, tracked
    rss = [s["rss"] for s in late]
    assert max(rss) <= 1.15 * min(rss), rss
    timers = [s["timers"] for s in late]
    assert max(timers) <= 1.1 * min(timers) + 100, timers
