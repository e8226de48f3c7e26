"""The Bytewax wiring: moments do not depend on the number of workers or on batch sizes."""

from __future__ import annotations

import tempfile
from datetime import timedelta
from pathlib import Path

import orjson
from bytewax.run import cli_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.jsonl import read_jsonl
from flows.config import PipelineConfig
from flows.dataflow import build_dataflow
from state.rules import load_rule_pack

T0 = 1_767_225_600_000
TYPES = ["view", "start", "submit", "fail", "fail", "contact", "complete", "engage"]
PACK = load_rule_pack()
STEPS = {
    "cart": ["product", "cart", "checkout", "payment"],
    "5g_upgrade": ["landing", "plan_select", "order_form", "payment"],
}


def _run(events_path: Path, out_dir: Path, workers: int, batch_lines: int = 4096, shards: int = 64) -> set[str]:
    cfg = PipelineConfig(
        source=f"file:{events_path}", sinks=(f"jsonl:{out_dir}",), metrics_port=None, shards=shards,
        batch_lines=batch_lines, workers=workers,
    ).validate()
    flow = build_dataflow(cfg, PACK, lambda _k, _o, _n: None)
    cli_main(flow, workers_per_process=workers, epoch_interval=timedelta(seconds=1))
    return {m["moment_id"] for m in read_jsonl(out_dir / "moments.jsonl")}


@st.composite
def _streams(draw: st.DrawFn) -> list[dict[str, object]]:
    n = draw(st.integers(20, 120))
    events = []
    t = T0
    for i in range(n):
        t += draw(st.integers(1, 400_000))
        j = draw(st.sampled_from(["cart", "5g_upgrade"]))
        events.append(
            {
                "event_id": f"e{i}",
                "customer_id": f"c{draw(st.integers(0, 6))}",
                "ts": t,
                "channel": draw(st.sampled_from(["app", "web", "wechat", "call_center"])),
                "type": draw(st.sampled_from(TYPES)),
                "journey": j,
                "step": draw(st.sampled_from(STEPS[j])),
                "entry": draw(st.sampled_from(["home_banner", "search", "sms_link", "push"])),
            }
        )
    events[0]["type"] = "fail"  # so at least one moment (the first failure) is always due
    return events


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events=_streams(), batch=st.sampled_from([1, 7, 4096]))
def test_moments_are_identical_with_one_and_two_workers(
    tmp_path: Path, events: list[dict[str, object]], batch: int
) -> None:
    run_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    src = run_dir / "events.jsonl"
    src.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in events))
    one = _run(src, run_dir / "w1", workers=1)
    two = _run(src, run_dir / "w2", workers=2, batch_lines=batch)
    assert one == two
    assert one, "the first event is a fail in a journey, so a failure moment must fire"
