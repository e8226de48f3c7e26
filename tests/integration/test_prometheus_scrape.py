"""A live worker scraped by a real Prometheus server and by a plain HTTP client: the counters match the outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest

from connectors.jsonl import read_jsonl
from connectors.simulator import simulate
from tests.helpers import wait_until
from tests.kafka_helpers import create_topics, free_port, produce, unique
from tests.worker import Worker

pytestmark = pytest.mark.kafka


def _prom_query(port: int, expr: str) -> float:
    url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(expr)}"
    with urllib.request.urlopen(url, timeout=5) as r:
        data = json.loads(r.read())
    result = data["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    sums: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        sums[name] = sums.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return sums


def _lines(path: Path) -> int:
    """Complete lines in a JSONL file being written (a half-written last line is not counted)."""
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_prometheus_scrape_matches_events_dead_letters_and_moments(kafka: str, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus, "prometheus is missing: the README's test command (infra/dev/test.sh) installs it"
    topics = {"CX_TOPIC_EVENTS": unique("cx.events"), "CX_TOPIC_FEEDBACK": unique("cx.feedback")}
    create_topics(kafka, topics.values(), partitions=2)
    metrics_port, prom_port = free_port(), free_port()
    out = tmp_path / "out"
    # Live clock: the wall clock releases every buffered event, so all of them are counted.
    worker = Worker(["--source", "kafka", "--kafka-bootstrap", kafka, "--sink", f"jsonl:{out}",
                     "--metrics-port", str(metrics_port), "--status", "off"], tmp_path / "worker.log", env=topics)
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: cx\n"
                      f"    static_configs: [{{targets: ['127.0.0.1:{metrics_port}']}}]\n")
    prom = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=(tmp_path / "prom.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        events = [orjson.dumps(e) for e in simulate(300, 60, seed=4).events()]
        garbage = [b"not json", b'{"event_id": 1}', b"\xff\xfe"]
        produce(kafka, topics["CX_TOPIC_EVENTS"], events + garbage)
        # Wait until the worker has accounted for every message and moments stopped changing.
        deadline = time.monotonic() + 90
        scraped: dict[str, float] = {}
        while time.monotonic() < deadline:
            try:
                scraped = _scrape(metrics_port)
            except urllib.error.URLError:  # the worker is still starting
                time.sleep(0.5)
                continue
            if scraped.get("cx_events_total", 0) + scraped.get("cx_invalid_events_total", 0) >= len(events) + 3:
                break
            time.sleep(0.5)
        # The abandonments of these old events fire at the wall-clock ticks (1 s) once the input is idle, and
        # nothing announces the last one: wait until the counters match the files and stayed put for 2 ticks.
        settled: dict[str, object] = {"key": None, "since": 0.0}

        def quiet() -> bool:
            got = _scrape(metrics_port)
            key = (got.get("cx_events_total"), got.get("cx_moments_total"), got.get("cx_actions_total"),
                   _lines(out / "moments.jsonl"), _lines(out / "actions.jsonl"))
            now = time.monotonic()
            if key != settled["key"]:
                settled.update(key=key, since=now)
            return key[1] == key[3] and key[2] == key[4] and now - settled["since"] >= 2.0  # type: ignore[operator]

        wait_until(quiet, 60, "the counters to match the output files and stay put", interval=0.25,
                   detail=lambda: worker.log()[-3000:])
        scraped = _scrape(metrics_port)
        moments = read_jsonl(out / "moments.jsonl")
        dead = read_jsonl(out / "deadletter.jsonl")
        assert scraped["cx_events_total"] == len(events)
        assert scraped["cx_invalid_events_total"] == len(dead) == 3
        assert scraped["cx_moments_total"] == len(moments) > 0
        assert scraped["cx_detection_latency_seconds_count"] == len(moments)
        # Every message of the event topic's partitions is measured for disorder (the undecodable ones as in order).
        assert scraped["cx_event_disorder_seconds_count"] == len(events) + 3
        # One contact-policy decision per moment, counted by status and reason.
        actions = read_jsonl(out / "actions.jsonl")
        assert scraped["cx_actions_total"] == len(actions) == len(moments)
        # The simulated events are months old for this live worker: all too late to act on.
        stale = sum(1 for a in actions if a["reason"] == "stale")
        assert stale == len(actions)
        # Prometheus itself scraped the same numbers.
        wait_until(lambda: _prom_query(prom_port, "sum(cx_moments_total)") == len(moments), 30,
                   "Prometheus to scrape the final moment count", interval=0.5)
        assert _prom_query(prom_port, "sum(cx_events_total)") == len(events)
        assert _prom_query(prom_port, "sum(cx_invalid_events_total)") == 3
        assert _prom_query(prom_port, "sum(cx_detection_latency_seconds_count)") == len(moments)
        assert _prom_query(prom_port, 'sum(cx_actions_total{status="suppressed",reason="stale"})') == stale
        assert _prom_query(prom_port, 'up{job="cx"}') == 1
    finally:
        prom.terminate()
        prom.wait(timeout=10)
        worker.stop()
