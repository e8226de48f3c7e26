"""A ``--rules`` directory with a second version effective mid-stream: a replay (one process, or a cluster of two)
equals a reference written here that switches parameters at the effective time; a restart keeps open journeys; live,
one process or a cluster of two pick up a new file, or refuse it, alike."""

from __future__ import annotations

import random
import re
import signal
import sqlite3
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.jsonl import read_jsonl
from flows.rule_reload import MARGIN_MS
from state.routing import shard_of_id
from tests.helpers import MIN, T0, wait_until
from tests.kafka_helpers import create_topics, free_port, produce, unique
from tests.worker import Worker, stop_process

pytestmark = pytest.mark.slow

SWITCH = T0 + 90 * MIN  # version 2 comes into force here
IDLE = {1: 10 * MIN, 2: 25 * MIN}
TIMEOUT = 60 * MIN
STEPS = ["product", "cart", "checkout", "payment"]
KEY = {"checkout", "payment"}

_PACK = """[pack]
name = "versions"
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
kind = "abandoned"
idle = "{idle}m"
ttl = "{ttl}"

[[moment]]
kind = "failed"
urgency = "{urgency}"
"""


def write_packs(d: Path, *, second: bool = True) -> Path:
    """v1 in force from T0 (epoch ms), v2 (another idle and urgency) from ``SWITCH`` (RFC 3339)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "v1.toml").write_text(_PACK.format(version=1, effective=T0, idle=10, ttl="2h", urgency="P2"))
    if second:
        write_v2(d)
    return d


def write_v2(d: Path) -> None:
    """Version 2: idle 25m, failed at P1, in force from 01:30Z (``SWITCH``)."""
    (d / "v2.toml").write_text(_PACK.format(version=2, effective='"2026-01-01T01:30:00Z"', idle=25, ttl="3h",
                                            urgency="P1"))


def write_v2_other_rules(d: Path) -> None:
    """Version 2 with another rule set: idle 25m, ``failed`` removed, ``stuck`` added, in force from 01:30Z."""
    text = _PACK.format(version=2, effective='"2026-01-01T01:30:00Z"', idle=25, ttl="3h", urgency="P1")
    (d / "v2.toml").write_text(text.replace('kind = "failed"', 'kind = "stuck"\nthreshold = 2'))


def events(seed: int = 7, customers: int = 60) -> list[dict[str, Any]]:
    """Each customer walks the cart journey with pauses around the switch; in (ts, event_id) order, ids unique."""
    rnd = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i in range(customers):
        t = T0 + rnd.randrange(0, 150 * MIN)
        for k in range(rnd.randrange(2, 9)):
            t += rnd.choice([MIN, 3 * MIN, 9 * MIN, 12 * MIN, 24 * MIN, 30 * MIN, 70 * MIN]) + rnd.randrange(0, 999)
            type_ = rnd.choices(["view", "submit", "fail", "complete"], [5, 3, 2, 1])[0]
            out.append({"event_id": f"e{i}-{k}", "customer_id": f"cust{i}", "ts": t, "channel": "app",
                        "type": type_, "journey": "cart", "step": rnd.choice(STEPS)})
    # Filler far later, so that every abandonment above is due before the end of input.
    out.append({"event_id": "end", "customer_id": "filler", "ts": T0 + 600 * MIN, "channel": "app", "type": "view"})
    out.sort(key=lambda e: (e["ts"], e["event_id"]))
    return out


def version_at(t: int) -> int:
    return 2 if t >= SWITCH else 1


def reference(evs: list[dict[str, Any]]) -> set[tuple[str, str, int, int]]:
    """(customer, rule, due_ts, rule_version) as DESIGN.md §4 and §8 say, written out independently.

    An event is judged by the version in force at its time; an abandonment keeps the idle of the version in
    force when the key-step event that armed it happened; a wake-up comes before an event of its time.
    """
    by_customer: dict[str, list[dict[str, Any]]] = {}
    for e in evs:
        if e.get("journey") == "cart":
            by_customer.setdefault(e["customer_id"], []).append(e)
    end = max(e["ts"] for e in evs)
    found: set[tuple[str, str, int, int]] = set()
    for cid, mine in by_customer.items():
        last: int | None = None  # the attempt's latest event time (None: no active attempt)
        armed: tuple[int, int] | None = None  # (due, version) of a pending abandonment
        fired: set[str] = set()
        for e in [*mine, None]:
            t = end if e is None else e["ts"]
            if armed is not None and armed[0] <= t:  # the wake-up comes first
                found.add((cid, "cart.abandoned", armed[0], armed[1]))
                fired.add("abandoned")
            armed = None  # any event in the journey disarms
            if e is None:
                break
            if last is None or t - last >= TIMEOUT:
                fired = set()
            last = t
            if e["type"] == "complete":
                last = None
                continue
            if e["type"] == "fail" and "failed" not in fired:
                found.add((cid, "cart.failed", t, version_at(t)))
                fired.add("failed")
            if e["step"] in KEY and "abandoned" not in fired:
                armed = (t + IDLE[version_at(t)], version_at(t))
    return found


def moments(out: Path) -> set[tuple[str, str, int, int]]:
    return {(m["customer_id"], m["rule"], m["due_ts"], m["rule_version"])
            for m in read_jsonl(out / "moments.jsonl")}


def _write(path: Path, evs: list[dict[str, Any]]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in evs))
    return path


def _args(tmp: Path, *more: str) -> list[str]:
    return ["--no-metrics", "--status", "off", *more]


def test_a_replay_switches_versions_at_the_effective_time_as_the_reference_does(tmp_path: Path) -> None:
    evs = events()
    want = reference(evs)
    assert {v for *_x, v in want} == {1, 2}  # both versions fire, on both rules
    assert {(r, v) for _c, r, _d, v in want} >= {("cart.abandoned", 1), ("cart.abandoned", 2), ("cart.failed", 2)}
    src = _write(tmp_path / "events.jsonl", evs)
    w = Worker(_args(tmp_path, "--source", f"file:{src}", "--rules", str(write_packs(tmp_path / "packs")),
                     "--sink", f"jsonl:{tmp_path / 'out'}"), tmp_path / "run.log")
    assert w.wait(300) == 0, w.log()[-3000:]
    assert moments(tmp_path / "out") == want
    # Tags and actions carry the version their moment fired under.
    by_id = {m["moment_id"]: m["rule_version"] for m in read_jsonl(tmp_path / "out" / "moments.jsonl")}
    for kind in ("tags", "actions"):
        rows = read_jsonl(tmp_path / "out" / f"{kind}.jsonl")
        assert rows
        assert all(r["rule_version"] == by_id[r["moment_id"]] for r in rows), kind


def test_a_two_process_file_cluster_switches_as_the_reference_does(tmp_path: Path) -> None:
    evs = events(seed=11)
    src = _write(tmp_path / "events.jsonl", evs)
    packs = write_packs(tmp_path / "packs")
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    cluster = [Worker(_args(tmp_path, "--source", f"file:{src}", "--rules", str(packs), "--sink",
                            f"jsonl:{tmp_path / f'out{i}'}", "-i", str(i), "-a", addrs), tmp_path / f"run{i}.log")
               for i in range(2)]
    for w in cluster:
        assert w.wait(300) == 0, w.log()[-3000:]
    assert moments(tmp_path / "out0") | moments(tmp_path / "out1") == reference(evs)


def test_cluster_processes_with_different_versions_both_stop_naming_rules(tmp_path: Path) -> None:
    src = _write(tmp_path / "events.jsonl", events())
    one, two = write_packs(tmp_path / "one", second=False), write_packs(tmp_path / "two")
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    cluster = [Worker(_args(tmp_path, "--source", f"file:{src}", "--rules", str(d), "--sink",
                            f"jsonl:{tmp_path / f'out{i}'}", "-i", str(i), "-a", addrs), tmp_path / f"run{i}.log")
               for i, d in enumerate((one, two))]
    for w in cluster:
        assert w.wait(180) == 2, w.log()[-3000:]
        assert "configuration: --rules: process" in w.log(), w.log()[-3000:]


def _resume_epoch(recovery: Path) -> int:
    """The latest epoch any worker of the recovery directory has written a frontier for (0: none yet)."""
    best = 0
    for part in recovery.glob("part-*.sqlite3"):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=1)) as db:
                best = max(best, *(f for (f,) in db.execute("SELECT worker_frontier FROM fronts").fetchall()))
        except (sqlite3.Error, TypeError):
            continue  # mid-write, or no frontier yet: asked again
    return best


def _k(eid: str, minute: int, step: str) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": "k", "ts": T0 + minute * MIN, "channel": "app",
                         "type": "submit", "journey": "cart", "step": step})


@pytest.mark.kafka
@pytest.mark.parametrize("add_v2", [write_v2, write_v2_other_rules], ids=["same-rules", "other-rules"])
def test_a_sigkilled_worker_restarted_with_a_new_version_keeps_an_armed_abandonment(
        kafka: str, tmp_path: Path, add_v2: Any) -> None:
    """Customer k leaves checkout at 01:20 under v1 (idle 10m) and the worker is SIGKILLed before it is due; restarted
    with v2 added (idle 25m from 01:30; with ``other-rules`` also a rule removed and one added), k's journey is still
    open and its abandonment fires at 01:30 under v1 (v2's idle would have let k's next event at 01:40 disarm it)."""
    topics = {"CX_TOPIC_EVENTS": unique("cx.events"), "CX_TOPIC_FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=1)
    # Without ticks a shard's watermark follows its own events: a probe customer of k's shard fails at 01:21 and
    # moves on at 01:22; its moment shows that the shard applied k1 (at 01:20, before it).
    probe = next(f"probe{i}" for i in range(10_000) if shard_of_id(f"probe{i}", 64) == shard_of_id("k", 64))
    produce(kafka, topics["CX_TOPIC_EVENTS"], [_k("k1", 80, "checkout"), *(
        orjson.dumps({"event_id": f"p{m}", "customer_id": probe, "ts": T0 + m * MIN, "channel": "app", "type": t,
                      "journey": "cart", "step": "cart"}) for m, t in ((81, "fail"), (82, "view")))])
    packs, rec = write_packs(tmp_path / "packs", second=False), tmp_path / "recovery"
    args = ["--source", "kafka", "--kafka-bootstrap", kafka, "--clock", "replay", "--rules", str(packs),
            "--recovery-dir", str(rec), "--snapshot-interval", "0.5", "--no-metrics", "--status", "off"]
    w = Worker([*args, "--sink", f"jsonl:{tmp_path / 'out1'}"], tmp_path / "first.log", env=topics)
    try:
        out1 = tmp_path / "out1" / "moments.jsonl"
        wait_until(lambda: out1.exists() and any(m["customer_id"] == probe for m in read_jsonl(out1)), 120,
                   "the probe's moment (k1 applied)", detail=lambda: w.log()[-2000:])
        seen = _resume_epoch(rec)
        wait_until(lambda: _resume_epoch(rec) >= seen + 2, 60, "two snapshots after k1", detail=lambda: w.log()[-2000:])
        w.proc.send_signal(signal.SIGKILL)
        w.wait(30)
    finally:
        stop_process(w.proc)
    assert not [m for m in read_jsonl(tmp_path / "out1" / "moments.jsonl") if m["customer_id"] == "k"]

    add_v2(packs)
    produce(kafka, topics["CX_TOPIC_EVENTS"], [_k("k2", 100, "payment"), _k("k3", 200, "product")])
    w = Worker([*args, "--kafka-stop-at-end", "--sink", f"jsonl:{tmp_path / 'out2'}"], tmp_path / "second.log",
               env=topics)
    assert w.wait(300) == 0, w.log()[-3000:]
    got = [(m["rule"], m["due_ts"], m["rule_version"], m["evidence"])
           for m in read_jsonl(tmp_path / "out2" / "moments.jsonl") if m["customer_id"] == "k"]
    # One abandonment per attempt: k2 (01:40, at a key step) belongs to k1's attempt, which fired already. Had the
    # journey been lost, k2 would open an attempt whose abandonment (v2, due 02:05) fires before k3.
    assert got == [("cart.abandoned", T0 + 90 * MIN, 1, ["k1"])]


def _reloads(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r'^cx_rule_pack_reload_total\{result="(\w+)"\} ([\d.e+]+)$', text, re.M)}


def _fail(cid: str, ts: int) -> bytes:
    return orjson.dumps({"event_id": f"{cid}-f", "customer_id": cid, "ts": ts, "channel": "app", "type": "fail",
                         "journey": "cart", "step": "cart"})


@pytest.mark.kafka
def test_a_live_worker_picks_up_a_new_version_and_refuses_invalid_or_late_ones(kafka: str, tmp_path: Path) -> None:
    """Live on a real broker: an invalid file and one effective before the watermark change nothing and are
    reported (log line naming file and field, metric); a valid one is picked up without a restart and applies
    from its effective_from on."""
    topics = {"CX_TOPIC_EVENTS": unique("cx.events"), "CX_TOPIC_FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=1)
    packs = write_packs(tmp_path / "packs", second=False)
    out = tmp_path / "out" / "moments.jsonl"
    w = Worker(["--source", "kafka", "--kafka-bootstrap", kafka, "--clock", "live", "--lateness", "1s",
                "--rules", str(packs), "--sink", f"jsonl:{tmp_path / 'out'}", "--metrics-port", "0",
                "--status", "off"], tmp_path / "live.log", env=topics)
    try:
        w.wait_log("metrics on http://")
        port = int(re.findall(r"metrics on http://[^ ]+:(\d+)/metrics", w.log())[0])
        assert wait_until(lambda: _reloads(port), 30, "the reload counters") == {"applied": 0, "invalid": 0,
                                                                                  "too_late": 0, "replay": 0,
                                                                                  "unchanged": 0}

        def version_of(cid: str) -> int:
            got = wait_until(lambda: out.exists() and [m for m in read_jsonl(out) if m["customer_id"] == cid], 60,
                             f"{cid}'s moment", detail=lambda: w.log()[-2000:])
            return int(got[0]["rule_version"])  # type: ignore[index]

        produce(kafka, topics["CX_TOPIC_EVENTS"], [_fail("a", time.time_ns() // 1_000_000)])
        assert version_of("a") == 1

        (packs / "v2.toml").write_text(_PACK.format(version=2, effective=T0, idle="soon", ttl="3h", urgency="P1"))
        wait_until(lambda: _reloads(port)["invalid"] == 1, 30, "the invalid file counted", detail=lambda: w.log())
        assert f"{packs / 'v2.toml'}: moment[0].idle: must be a duration" in w.log()
        now = time.time_ns() // 1_000_000
        (packs / "v2.toml").write_text(_PACK.format(version=2, effective=now - 3_600_000, idle=25, ttl="3h",
                                                    urgency="P1"))
        wait_until(lambda: _reloads(port)["too_late"] == 1, 30, "the late file counted", detail=lambda: w.log())
        assert f"{packs / 'v2.toml'}: pack.effective_from: lies before the wall clock plus 10 s" in w.log()
        produce(kafka, topics["CX_TOPIC_EVENTS"], [_fail("b", time.time_ns() // 1_000_000)])
        assert version_of("b") == 1  # neither file changed what is in force

        effective = time.time_ns() // 1_000_000 + MARGIN_MS + 5_000  # ahead of the reload margin
        (packs / "v2.toml").write_text(_PACK.format(version=2, effective=effective, idle=25, ttl="3h", urgency="P1"))
        wait_until(lambda: _reloads(port)["applied"] == 1, 10, "the new version picked up within 10 s",
                   detail=lambda: w.log())
        wait_until(lambda: time.time_ns() // 1_000_000 > effective, 30, "the wall clock past effective_from")
        produce(kafka, topics["CX_TOPIC_EVENTS"], [_fail("c", time.time_ns() // 1_000_000)])
        assert version_of("c") == 2
        assert w.alive()
    finally:
        stop_process(w.proc)


def _info(port: int) -> set[str]:
    """The fingerprints ``cx_rule_pack_versions_info`` reports 1 for (the versions in force in the process)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    return set(re.findall(r'^cx_rule_pack_versions_info\{fingerprint="(\w+)"\} 1\.0$', text, re.M))


@pytest.mark.kafka
def test_a_live_two_process_cluster_switches_alike_and_refuses_alike(kafka: str, tmp_path: Path) -> None:
    """Two live processes on the real broker, one --rules directory: a version dropped in with its effective_from
    past the reload margin is accepted by both, and each moment of either process's customers carries v2 exactly
    when it is due at or after effective_from; one effective too soon is refused by both, and nothing changes."""
    topics = {"CX_TOPIC_EVENTS": unique("cx.events"), "CX_TOPIC_FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=4)
    packs = write_packs(tmp_path / "packs", second=False)
    addrs = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    cluster = [Worker(["--source", "kafka", "--kafka-bootstrap", kafka, "--clock", "live", "--lateness", "1s",
                       "--rules", str(packs), "--sink", f"jsonl:{tmp_path / f'out{i}'}", "--metrics-port", "0",
                       "--status", "off", "-i", str(i), "-a", addrs], tmp_path / f"live{i}.log", env=topics)
               for i in range(2)]
    outs = [tmp_path / f"out{i}" / "moments.jsonl" for i in range(2)]
    try:
        ports = []
        for w in cluster:
            w.wait_log("metrics on http://", 60)
            ports.append(int(re.findall(r"metrics on http://[^ ]+:(\d+)/metrics", w.log())[0]))
        for p in ports:
            wait_until(lambda p=p: _reloads(p), 30, "the reload counters")

        def detail() -> str:
            return "\n".join(w.log()[-1500:] for w in cluster)

        def fails(prefix: str, n: int = 40) -> dict[str, dict[str, Any]]:
            """n customers fail now; return their moments (customer -> moment) once every one is out."""
            now = time.time_ns() // 1_000_000
            produce(kafka, topics["CX_TOPIC_EVENTS"], [_fail(f"{prefix}{i}", now) for i in range(n)],
                    key_of=lambda v: orjson.loads(v)["customer_id"].encode())

            def found() -> dict[str, dict[str, Any]]:
                got = {m["customer_id"]: {**m, "process": i} for i, o in enumerate(outs) if o.exists()
                       for m in read_jsonl(o) if m["customer_id"].startswith(prefix)}
                return got if len(got) == n else {}
            return wait_until(found, 90, f"the moments of {prefix}*", detail=detail)  # type: ignore[return-value]

        first = fails("a")
        assert {m["rule_version"] for m in first.values()} == {1}
        assert {m["process"] for m in first.values()} == {0, 1}  # both processes hold customers
        fingerprints = [_info(p) for p in ports]
        assert fingerprints[0] == fingerprints[1]
        assert len(fingerprints[0]) == 1

        effective = time.time_ns() // 1_000_000 + MARGIN_MS + 20_000  # a margin for a loaded machine
        (packs / "v2.toml").write_text(_PACK.format(version=2, effective=effective, idle=25, ttl="3h", urgency="P1"))
        for p in ports:
            wait_until(lambda p=p: _reloads(p)["applied"] == 1, 30, "v2 applied by every process", detail=detail)
        now = [_info(p) for p in ports]
        assert now[0] == now[1]
        assert now[0] != fingerprints[0]
        before = fails("b")  # most likely due before effective_from; judged by due time either way
        wait_until(lambda: time.time_ns() // 1_000_000 > effective, 30, "the wall clock past effective_from")
        after = fails("c")
        assert {m["process"] for m in after.values()} == {0, 1}
        for m in [*first.values(), *before.values(), *after.values()]:
            assert m["rule_version"] == (2 if m["due_ts"] >= effective else 1), m
        assert {m["rule_version"] for m in after.values()} == {2}

        # Effective in 2 s: inside the margin for every process, refused by both; v2 stays in force.
        soon = time.time_ns() // 1_000_000 + 2_000
        (packs / "v3.toml").write_text(_PACK.format(version=3, effective=soon, idle=30, ttl="3h", urgency="P3"))
        for p in ports:
            wait_until(lambda p=p: _reloads(p)["too_late"] == 1, 30, "v3 refused by every process", detail=detail)
        for w in cluster:
            assert f"{packs / 'v3.toml'}: pack.effective_from: lies before the wall clock plus 10 s" in w.log()
        assert [_info(p) for p in ports] == now
        later = fails("d")
        assert {m["rule_version"] for m in later.values()} == {2}
        assert {m["process"] for m in later.values()} == {0, 1}
        assert all(_reloads(p)["applied"] == 1 for p in ports)
        assert all(w.alive() for w in cluster)
    finally:
        for w in cluster:
            stop_process(w.proc)
