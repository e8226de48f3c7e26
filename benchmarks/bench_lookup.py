"""Look-up latency while the worker processes events, and what serving and the events table cost (issue 17).

``moments run`` replays simulated events (a file written once by the simulator, or ``--source simulator``:
generated in the worker, which then spends part of its time generating) into the embedded ClickHouse (the default
sink) three ways, the same input each time: with the events table off (the shard's ``keep_events`` forced off), as
shipped, and as shipped while client threads ask ``GET /v1/customers/{id}`` at 200 requests/s for random simulated
customers. Throughput is valid events (``cx_events_total``) per second between the first and the last counted event,
polled from /metrics; latency is each request's wall time from the client, split by answer (200 from memory: the
customer is held; 200 with ``"held": false``: evicted, read from ClickHouse; 404: unknown).

``--decoy`` adds a baseline with the client's load matched: the same client threads, at the same rate, ask a decoy
process (the same HTTP endpoint code answering a fixed body of a look-up's size) while the worker replays without
look-ups. On a 2-core machine the client's threads and the answering compete with the worker for the cores,
which the agent desktops of a deployment do not: with the load matched in both runs, the ratio is what serving
costs the worker itself (its HTTP thread, the GIL it shares, the shard gate), not what a client on the same
machine costs.

``--sink jsonl`` writes the outputs to JSONL files instead (as a worker whose ClickHouse runs on another machine
spends no CPU on the database; the embedded one shares this machine's cores with the worker); its section is
``lookup-jsonl`` and it has no events-table comparison.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchmarks.harness import Figure, machine, table, write_section
from benchmarks.traffic import events_file

RATE = 200.0  # look-ups per second
# Open loop: each client thread keeps its own schedule (RATE / CLIENTS) on one kept-alive connection, so a slow
# answer delays that thread's next request but the others still send theirs (4 closed-loop threads reached 30/s).
CLIENTS = 8
# Forces the events table off: the shard hands no events to the sink (the comparison run).
NO_EVENTS = ("import state.shard as _s\n_i = _s.Shard.__init__\n"
             "def _init(self, *a, **k):\n    k['keep_events'] = False\n    _i(self, *a, **k)\n"
             "_s.Shard.__init__ = _init\n")
RUN_CLI = "import runpy; runpy.run_module('flows.cli', run_name='__main__', alter_sys=True)\n"
_EVENTS = re.compile(rb"^cx_events_total\{[^}]*\} ([0-9.e+]+)$", re.M)


# The decoy: the endpoint's own HTTP code answering every customer look-up with a fixed body of a held customer's
# size (two journeys, a tag, three moments), so its CPU per request is close to the worker's HTTP thread's.
DECOY = """
import sys, threading
from flows import http_endpoint
J = {"journey": "order", "attempt": 3, "stage": "checkout", "status": "open", "step": "payment",
     "entry": "app", "entries": ["app", "web"], "channels": ["app", "web"], "updated_at": 1700000000000}
M = {"moment_id": "0" * 32, "rule": "payment_failed", "rule_version": 1, "kind": "failure", "journey": "order",
     "step": "payment", "urgency": "P2", "due_ts": 1700000000000, "detected_at": 1700000000000,
     "evidence": ["e" * 32], "action": "sms_help", "decision": {"status": "sent", "reason": "", "channel": "sms",
     "template": "t", "control": False, "suppressed_channels": [], "send_ts": 1700000000000}}
class Decoy:
    def ready(self): return True
    def customer(self, cid, local=False, token=None):
        return 200, {"customer_id": cid, "process": 0, "held": True, "journeys": [J, J], "tags": [
            {"tag": "pay_fail", "journey": "order", "moment_id": "0" * 32, "opened_ts": 1, "state": "open",
             "expires_at": 2}], "sends": [], "last_seen": 1, "moments": [M, M, M], "context": None}
http_endpoint.set_service(Decoy())
http_endpoint._api[0] = (http_endpoint._api[0][0], None)  # no token, whatever the environment says
http_endpoint.start_http(int(sys.argv[1]), "127.0.0.1")
threading.Event().wait()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _events(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310 - loopback
            return sum(float(v) for v in _EVENTS.findall(r.read()))
    except OSError:
        return None


def _lookups(port: int, customers: int, stop: threading.Event, out: list[tuple[float, int, float]],
             seed: int) -> None:
    rnd = random.Random(seed)  # noqa: S311 - sampling customers, not security
    gap = CLIENTS / RATE
    due = time.perf_counter() + rnd.random() * gap  # spread the threads over one gap
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        time.sleep(max(0.0, due - time.perf_counter()))
        cid = f"c{rnd.randrange(customers):07d}"
        t0 = time.perf_counter()
        try:
            conn.request("GET", f"/v1/customers/{cid}")
            r = conn.getresponse()
            body = r.read()
            # 200 from memory (held), or 299 here: an evicted customer answered from ClickHouse.
            code = 299 if r.status == 200 and b'"held":false' in body else r.status
        except (OSError, http.client.HTTPException):
            code = 0
            conn.close()  # reconnects at the next request
        out.append((t0, code, time.perf_counter() - t0))
        due += gap
    conn.close()


def _switches(pid: int) -> int:
    """Voluntary context switches of every thread of process ``pid`` so far (0 once it is gone): each time one of
    its threads blocked, e.g. waiting for the GIL another thread holds; an HTTP request that makes the worker thread
    hand the GIL over shows there, whatever else runs on the machine."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        m = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", text, re.M)
        total += int(m.group(1)) if m else 0
    return total


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(customers: int, minutes: float, mode: str, source: Path | None = None, sink: str = "chdb",
        prelude: str = "") -> tuple[
        float, list[tuple[int, float]], float, float, float]:
    """One replay (of ``source``, else the simulator); returns (events/s, [(status, seconds)] of the look-ups made
    while events flowed, their span, the worker's events per CPU-second, its voluntary context switches per second
    while events flowed).

    Events per CPU-second counts the CPU time of the whole worker process (every thread: Bytewax's, the writers',
    the HTTP threads', embedded ClickHouse's; start-up and the final flush included), so the look-ups' cost shows
    in it; a shared machine moves it less than the wall-clock rate, but it still moves.
    """
    port = _free_port()
    decoy = None
    ask = port
    if mode == "decoy":
        ask = _free_port()
        decoy = subprocess.Popen([sys.executable, "-c", DECOY, str(ask)], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        while _events(ask) is None:  # its /metrics answers once it listens
            time.sleep(0.05)
    cpu0 = _children_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        src = ["--source", f"file:{source}"] if source is not None else \
            ["--source", "simulator", "--customers", str(customers), "--minutes", str(minutes)]
        out = f"chdb://{Path(tmp) / 'ch'}" if sink == "chdb" else f"jsonl:{Path(tmp) / 'out'}"
        args = ["run", *src, "--sink", out, "--metrics-port", str(port), "--status", "off"]
        cmd = ["-c", NO_EVENTS + RUN_CLI] \
            if mode == "no-events" else ["-c", prelude + RUN_CLI] if prelude else ["-m", "flows.cli"]
        proc = subprocess.Popen([sys.executable, *cmd, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "CX_LOG_LEVEL": "warning"})
        samples: list[tuple[float, float]] = []
        switched: list[tuple[float, int]] = []
        lat: list[tuple[float, int, float]] = []
        stop = threading.Event()
        threads: list[threading.Thread] = []
        while proc.poll() is None:
            n = _events(port)
            if n is not None:
                samples.append((time.perf_counter(), n))
                switched.append((samples[-1][0], _switches(proc.pid)))
                if mode in ("lookups", "decoy") and not threads and n > 0:
                    threads = [threading.Thread(target=_lookups, args=(ask, customers, stop, lat, i))
                               for i in range(CLIENTS)]
                    for t in threads:
                        t.start()
            time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
        proc.wait(timeout=600)
    cpu = _children_cpu() - cpu0  # this run's worker only: it is the one child reaped meanwhile
    if decoy is not None:  # reaped after the worker's CPU was read: its own is not counted
        decoy.kill()
        decoy.wait()
    # From the first sample that counted events to the first that reached the final count (the end of input).
    flowing = [(t, n) for t, n in samples if n > 0]
    first = flowing[0]
    last = next(s for s in flowing if s[1] == flowing[-1][1])
    # Only the look-ups made while events flowed (after the end of input the worker flushes and exits).
    during = [(t, c, d) for t, c, d in lat if t <= last[0]]
    span = last[0] - during[0][0] if during else 0.0
    sw = [(t, k) for t, k in switched if first[0] <= t <= last[0] and k > 0]
    per_s = (sw[-1][1] - sw[0][1]) / max(sw[-1][0] - sw[0][0], 1e-9) if len(sw) > 1 else float("nan")
    return ((last[1] - first[1]) / max(last[0] - first[0], 1e-9), [(c, d) for _, c, d in during], span,
            flowing[-1][1] / max(cpu, 1e-9), per_s)


def _ms(xs: list[float], q: float) -> float:
    return 1000 * statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else float("nan")


def _latency(lat: list[tuple[int, float]]) -> str:
    ok = [s for c, s in lat if c == 200]
    miss = [s for c, s in lat if c == 404]
    stored = [s for c, s in lat if c == 299]
    alls = [s for _, s in lat]
    return (f"{len(ok):,} answered 200 from memory (p50 {_ms(ok, 50):.1f} ms, p99 {_ms(ok, 99):.1f} ms), "
            f"{len(stored):,} 200 for an evicted customer from ClickHouse (p50 {_ms(stored, 50):.1f} ms, p99 "
            f"{_ms(stored, 99):.1f} ms), {len(miss):,} 404 (p50 {_ms(miss, 50):.1f} ms, p99 {_ms(miss, 99):.1f} ms), "
            f"{len(lat) - len(ok) - len(miss) - len(stored)} other; all answers: p50 {_ms(alls, 50):.1f} ms, "
            f"p99 {_ms(alls, 99):.1f} ms")


def _load() -> float:
    return os.getloadavg()[0]


def main() -> None:
    """Run the comparison and write its RESULTS.md section."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--customers", type=int, default=20_000)
    ap.add_argument("--minutes", type=float, default=600)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--source", choices=("file", "simulator"), default="file",
                    help="replay a file the simulator wrote once (default), or simulate inside the worker")
    ap.add_argument("--sink", choices=("chdb", "jsonl"), default="chdb",
                    help="embedded ClickHouse (default, as shipped) or JSONL files (a database elsewhere)")
    ap.add_argument("--decoy", action="store_true",
                    help="also a baseline with the client's load matched: it asks a decoy process meanwhile")
    ap.add_argument("--before", action="append", default=[], metavar="STEPS",
                    help="also serve look-ups with these costs put back (benchmarks.lookup_before: "
                         "parse,switch,gate), in the same rounds; repeat for several variants")
    a = ap.parse_args()
    source = events_file(a.customers, a.minutes) if a.source == "file" else None
    modes: tuple[str, ...] = ("no-events", "shipped", "lookups") if a.sink == "chdb" else ("shipped", "lookups")
    modes += ("decoy",) if a.decoy else ()
    modes += tuple(f"before:{b}" for b in a.before)
    rates: dict[str, list[float]] = {m: [] for m in modes}
    per_cpu: dict[str, list[float]] = {m: [] for m in rates}
    switches: dict[str, list[float]] = {m: [] for m in rates}
    lat: dict[str, list[tuple[int, float]]] = {m: [] for m in rates}
    span = 0.0
    loads: list[float] = []
    for i in range(a.runs):
        for mode in rates if i % 2 == 0 else reversed(rates):  # alternating: a trend of the load hits both ends
            loads.append(_load())
            before = mode.partition("before:")[2]
            prelude = f"from benchmarks.lookup_before import install\ninstall({before.split(',')!r})\n"
            r, got, secs, c, sw = run(a.customers, a.minutes, "lookups" if before else mode, source, a.sink,
                                      prelude if before else "")
            rates[mode].append(r)
            per_cpu[mode].append(c)
            switches[mode].append(sw)
            lat[mode] += got
            span += secs if mode == "lookups" else 0.0
            print(f"{mode}: {r:,.0f} events/s, {c:,.0f} events per CPU-second, {len(got)} look-ups, "
                  f"load {loads[-1]:.1f}", flush=True)
    sent_rate = len(lat["lookups"]) / max(span, 1e-9)
    into = "chDB" if a.sink == "chdb" else "JSONL"
    figures = [
        Figure(f"replay into {into}, as shipped", tuple(rates["shipped"])),
        Figure(f"replay into {into}, with 200 look-ups/s", tuple(rates["lookups"])),
        Figure("ratio with look-ups / without", tuple(s / n for s, n in zip(rates["lookups"], rates["shipped"],
                                                                          strict=True)), "×"),
        Figure("worker's events per CPU-second, as shipped", tuple(per_cpu["shipped"])),
        Figure("worker's events per CPU-second, with 200 look-ups/s", tuple(per_cpu["lookups"])),
        Figure("events per CPU-second with look-ups / without", tuple(
            s / n for s, n in zip(per_cpu["lookups"], per_cpu["shipped"], strict=True)), "×"),
    ]
    if a.decoy:
        figures += [
            Figure(f"replay into {into}, client asking a decoy (load matched)", tuple(rates["decoy"])),
            Figure("ratio with look-ups / without, client load matched", tuple(
                s / n for s, n in zip(rates["lookups"], rates["decoy"], strict=True)), "×"),
            Figure("worker's events per CPU-second, client asking a decoy", tuple(per_cpu["decoy"])),
            Figure("events per CPU-second with look-ups / without, client load matched", tuple(
                s / n for s, n in zip(per_cpu["lookups"], per_cpu["decoy"], strict=True)), "×"),
        ]
    for b in a.before:
        m = f"before:{b}"
        figures += [
            Figure(f"replay into {into}, with 200 look-ups/s, {b} as before", tuple(rates[m])),
            Figure(f"ratio with look-ups ({b} as before) / without", tuple(
                s / n for s, n in zip(rates[m], rates["shipped"], strict=True)), "×"),
            Figure(f"events per CPU-second with look-ups ({b} as before) / without", tuple(
                s / n for s, n in zip(per_cpu[m], per_cpu["shipped"], strict=True)), "×"),
        ]
    # What a look-up costs the worker in hand-overs: its process's voluntary switches per second with the client
    # asking it, less without (the decoy's run when there is one: the same client load on the machine), per look-up.
    base = "decoy" if a.decoy else "shipped"
    for m in ("lookups", *(f"before:{b}" for b in a.before)):
        figures.append(Figure(f"worker's voluntary context switches per look-up ({m})", tuple(
            (s - n) / RATE for s, n in zip(switches[m], switches[base], strict=True)), "switches"))
    if a.sink == "chdb":
        figures[:0] = [Figure("replay into chDB, events table off", tuple(rates["no-events"])),
                       Figure("ratio events table on / off", tuple(
                           s / n for s, n in zip(rates["shipped"], rates["no-events"], strict=True)), "×")]
    what = "a file of simulated events" if source is not None else "the simulator in the worker"
    sink = "embedded ClickHouse" if a.sink == "chdb" else "JSONL outputs"
    body = (f"## Look-ups while the worker runs (issue 17; {what}, {a.customers:,} customers, {a.minutes:g} min, "
            f"{sink})\n\n{machine()}\n\n{table(figures)}\n\n"
            f"Load average (1 min) at the start of each run: {min(loads):.1f}–{max(loads):.1f} "
            f"(median {statistics.median(loads):.1f}).\n\n"
            f"Look-ups at {RATE:.0f}/s from {CLIENTS} open-loop client threads (kept-alive connections) while events "
            f"flowed: {len(lat['lookups']):,} requests ({sent_rate:.0f}/s), {_latency(lat['lookups'])}.")
    if a.decoy:
        body += f"\n\nThe decoy's answers, the same rounds: {_latency(lat['decoy'])}."
    for b in a.before:
        body += f"\n\nWith {b} as before, the same rounds: {_latency(lat[f'before:{b}'])}."
    write_section("lookup" if a.sink == "chdb" else "lookup-jsonl", body)
    print(body)


if __name__ == "__main__":
    main()
