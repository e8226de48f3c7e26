"""The look-up API against a live worker (a real Tansu broker feeds it): customers, moments, protection, cluster."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from connectors.placement import Placement
from state.moments import moment_id
from state.routing import shard_of_id
from tests.helpers import wait_until
from tests.kafka_helpers import create_topics, free_port, produce, unique
from tests.worker import Worker

pytestmark = pytest.mark.kafka

TOKEN = "s3cret-token"  # noqa: S105 - a test's token


def _now() -> int:
    return time.time_ns() // 1_000_000


def _ev(eid: str, ts: int, type_: str, customer: str, **kw: object) -> bytes:
    return orjson.dumps({"event_id": eid, "customer_id": customer, "ts": ts, "channel": "app", "type": type_, **kw})


def _key(v: bytes) -> bytes | None:
    try:
        return str(orjson.loads(v)["customer_id"]).encode()
    except Exception:  # noqa: BLE001 - garbage has no key
        return None


def _port(w: Worker) -> int:
    w.wait_log("metrics on http://")
    m = re.search(r"metrics on http://[^ ]+:(\d+)/metrics", w.log())
    assert m, w.log()[-3000:]
    return int(m.group(1))


def _get(port: int, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")  # noqa: S310 - loopback
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - loopback
            body = r.read()
            return int(r.status), orjson.loads(body) if r.headers.get("Content-Type") == "application/json" else body
    except urllib.error.HTTPError as e:
        return int(e.code), orjson.loads(e.read() or b"{}")


@pytest.fixture
def topics(kafka: str) -> dict[str, str]:
    """The event and feedback topics of one test."""
    names = {"events": unique("cx.events"), "feedback": unique("cx.feedback")}
    create_topics(kafka, names.values(), partitions=2)
    return names


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


def _args(kafka: str, topics: dict[str, str], where: Path, *extra: str) -> tuple[list[str], dict[str, str]]:
    args = ["--source", "kafka", "--kafka-bootstrap", kafka, "--sink", f"chdb://{where / 'ch'}", "--status", "off",
            "--lateness", "1s", "--tick", "0.2", *extra]
    env = {"CX_TOPIC_EVENTS": topics["events"], "CX_TOPIC_FEEDBACK": topics["feedback"], "CX_HTTP_TOKEN": TOKEN}
    return args, env


def _start(kafka: str, topics: dict[str, str], where: Path, workers: list[Worker], *extra: str,
           env: dict[str, str] | None = None) -> tuple[Worker, int]:
    """A worker on a free look-up port (``env`` added to ``_args``'s); returns it and its port."""
    args, base = _args(kafka, topics, where, "--metrics-port", "0", *extra)
    w = Worker(args, where / "w.log", env={**base, **(env or {})})
    workers.append(w)
    return w, _port(w)


def test_lookup_and_explain_a_customer_mid_journey(kafka: str, topics: dict[str, str], workers: list[Worker],
                                                   tmp_path: Path) -> None:
    w, port = _start(kafka, topics, tmp_path, workers)
    t = _now()
    produce(kafka, topics["events"], [
        _ev("e1", t, "view", "cust-a", journey="cart", step="product", entry="home_banner"),
        _ev("e2", t + 1, "start", "cust-a", journey="cart", step="cart", entry="search"),
        _ev("e3", t + 2, "fail", "cust-a", journey="cart", step="payment",
            attrs={"reason": "card_declined", "error_code": "E51"}),
        orjson.dumps({"event_id": "e4", "customer_id": "cust-a", "ts": t + 3, "channel": "call_center",
                      "type": "contact"}),
    ], key_of=_key)

    def looked_up() -> dict[str, Any] | None:
        code, body = _get(port, "/v1/customers/cust-a")
        # The history comes from what the sink has written (moments, decisions, steps, the context), each kind
        # in its own insert: wait until all of it is there.
        ready = (code == 200 and len(body["moments"]) >= 2 and all(m["decision"] for m in body["moments"])
                 and body["context"] is not None and all(j["entry"] for j in body["journeys"]))
        return body if ready else None

    view = wait_until(looked_up, 60, "the customer's look-up with its moment")
    assert isinstance(view, dict)
    [cart] = view["journeys"]
    assert (cart["journey"], cart["step"], cart["status"], cart["attempt"]) == ("cart", "payment", "active", "e1")
    assert cart["entry"] == "search"
    assert cart["entries"] == ["home_banner", "search"]
    assert cart["channels"] == ["app"]
    assert [(tg["tag"], tg["state"]) for tg in view["tags"]] == [("cart.failed", "actioned"),
                                                                 ("cart.handoff", "actioned")]
    failed = moment_id("cust-a", "cart.failed", "e3")
    assert [m["rule"] for m in view["moments"]] == ["cart.handoff", "cart.failed"]  # newest first
    m = view["moments"][1]
    assert (m["moment_id"], m["evidence"]) == (failed, ["e3"])
    assert m["decision"]["status"] == "sent"
    assert m["decision"]["channel"] == "outbound_call"

    # The hand-off context tells the agent what they would otherwise ask the customer.
    ctx = view["context"]
    assert ctx["moment_id"] == moment_id("cust-a", "cart.handoff", "e4")
    assert ctx["stage"] == "intention"
    assert ctx["entries"] == ["home_banner", "search"]
    assert [(s["step"], s["ts"]) for s in ctx["step_times"]] == [("product", t), ("cart", t + 1), ("payment", t + 2)]
    assert ctx["failures"] == [{"ts": t + 2, "step": "payment", "reason": "card_declined", "error_code": "E51"}]
    assert ctx["last_action_channel"] == "outbound_call"
    assert ctx["last_action_ts"] == t + 2
    assert ctx["recent_steps"] == ["product", "cart", "payment"]  # the fields from before stay

    def explained() -> dict[str, Any] | None:
        code, body = _get(port, f"/v1/moments/{failed}")
        # Evidence and steps are separate inserts of the sink: wait for both (CI once read the steps before theirs).
        return body if (code == 200 and all(e.get("stored", True) for e in body["evidence"])
                        and len(body["steps"]) >= 3) else None

    ex = wait_until(explained, 60, "the moment's explanation with its stored evidence and steps")
    assert isinstance(ex, dict)
    assert ex["rule"]["rule"] == "cart.failed"
    assert ex["rule"]["version"] == 1
    assert ex["rule"]["summary"]
    [ev] = ex["evidence"]
    assert (ev["event_id"], ev["type"], ev["step"]) == ("e3", "fail", "payment")
    assert ev["attrs"] == {"reason": "card_declined", "error_code": "E51"}
    assert [s["step"] for s in ex["steps"]] == ["product", "cart", "payment"]
    assert ex["decision"]["status"] == "sent"
    assert ex["decision"]["reason"] is not None

    # The command-line clients print the same for a person, through the worker (it holds the chDB path).
    cli_env = {"CX_HTTP_TOKEN": TOKEN, "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "flows.cli", "lookup", "cust-a", "--url", f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, env=cli_env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "cart.failed" in out.stdout
    assert "payment" in out.stdout
    out = subprocess.run([sys.executable, "-m", "flows.cli", "explain", failed, "--url", f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True, env=cli_env, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "card_declined" in out.stdout
    assert "decision: sent" in out.stdout

    # `moments report` on the path the worker holds: the worker runs it (before: ChdbPathInUseError).
    dsn = f"chdb://{tmp_path / 'ch'}"
    url = f"http://127.0.0.1:{port}"
    out = subprocess.run([sys.executable, "-m", "flows.cli", "report", "--clickhouse", dsn, "--url", url,
                          "--html", str(tmp_path / "r.html")], capture_output=True, text=True, env=cli_env, timeout=120,
                         check=False)
    assert out.returncode == 0, out.stderr
    assert "Moments by rule" in out.stdout
    assert "cart.failed" in out.stdout
    assert "<html" in (tmp_path / "r.html").read_text()
    out = subprocess.run([sys.executable, "-m", "flows.cli", "report", "rules", "--clickhouse", dsn, "--url", url,
                          "--json"], capture_output=True, text=True, env=cli_env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert "cart.failed" in {r["rule"] for r in orjson.loads(out.stdout)["rules"]}


def test_lookups_are_protected_validated_and_never_stop_the_worker(kafka: str, topics: dict[str, str],
                                                                   workers: list[Worker], tmp_path: Path) -> None:
    w, port = _start(kafka, topics, tmp_path, workers, env={"CX_LOG_LEVEL": "debug"})
    produce(kafka, topics["events"], [_ev("p1", _now(), "view", "cust-p", journey="cart", step="product")],
            key_of=_key)
    wait_until(lambda: _get(port, "/v1/customers/cust-p")[0] == 200, 60, "the customer to be known")
    assert _get(port, "/v1/customers/cust-p", token=None)[0] == 401
    assert _get(port, "/v1/customers/cust-p", token="wrong")[0] == 401
    assert _get(port, "/v1/moments/" + "0" * 32, token=None)[0] == 401
    for open_path in ("/metrics", "/healthz"):
        assert _get(port, open_path, token=None)[0] == 200
    assert _get(port, "/v1/customers/nobody")[0] == 404
    assert _get(port, "/v1/moments/" + "0" * 32)[0] == 404
    for bad in ("x" * 129, "%20%20", "%FF%FE", ""):
        assert _get(port, f"/v1/customers/{bad}")[0] in (400, 404), bad
    assert _get(port, "/v1/customers/" + "x" * 129)[0] == 400
    assert _get(port, "/v1/customers/%20%20")[0] == 400
    assert _get(port, "/v1/customers/%FF%FE")[0] == 400
    assert _get(port, "/v1/moments/not-a-moment")[0] == 400
    assert _get(port, "/v1/customers/cust-p/extra")[0] == 404
    # Requests that are not HTTP at all, or whose path is far too long, are refused by the server alone.
    for raw, code in ((b"GARBAGE\r\n\r\n", b"400"),
                      (b"GET /v1/customers/" + b"y" * 70_000 + b" HTTP/1.1\r\n\r\n", b"414"),
                      # Raw bytes beyond ASCII in a path: refused (percent-encode ids); read as Latin-1 before,
                      # they were answered as another id (an adversary's, issue 17).
                      (b"GET /v1/customers/\xff\xfe HTTP/1.1\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
                       b"400")):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(raw)
            assert code in sock.recv(4096)  # an error page (for a line that is not HTTP, without a status line)
    assert w.alive()
    assert _get(port, "/v1/customers/cust-p")[0] == 200
    assert "cust-p" not in w.log()
    assert "x" * 129 not in w.log()


def test_any_process_of_a_cluster_answers_for_a_customer_of_another(kafka: str, topics: dict[str, str],
                                                                    workers: list[Worker], tmp_path: Path) -> None:
    http = [free_port(), free_port()]
    addresses = f"127.0.0.1:{free_port()};127.0.0.1:{free_port()}"
    peers = ";".join(f"127.0.0.1:{p}" for p in http)
    for i in range(2):
        args, env = _args(kafka, topics, tmp_path, "--metrics-port", str(http[i]), "-i", str(i), "-a", addresses,
                          "--http-peers", peers)
        workers.append(Worker(args, tmp_path / f"w{i}.log", env=env))
    for w in workers:
        _port(w)
    # A customer whose shard runs in process 1, asked of process 0.
    placement = Placement(0, 2, 1)
    cid = next(c for c in (f"cust-{n}" for n in range(1000)) if placement.process_of(str(shard_of_id(c, 64))) == 1)
    produce(kafka, topics["events"], [_ev("c1", _now(), "view", cid, journey="cart", step="cart")], key_of=_key)

    def answered() -> dict[str, Any] | None:
        code, body = _get(http[0], f"/v1/customers/{cid}")
        return body if code == 200 else None

    body = wait_until(answered, 90, "process 0 to answer for a customer of process 1")
    assert isinstance(body, dict)
    assert body["process"] == 1
    assert body["journeys"][0]["step"] == "cart"
    assert _get(http[0], f"/v1/customers/{cid}?local=1")[0] == 404  # process 0 itself does not hold it
    assert _get(http[1], "/v1/customers/nobody")[0] == 404


def test_a_customer_evicted_from_memory_is_answered_from_clickhouse(kafka: str, topics: dict[str, str],
                                                                    workers: list[Worker], tmp_path: Path) -> None:
    # One customer in the state (--max-customers 1 on one shard) and in the look-ups' memory (CX_LOOKUP_CUSTOMERS):
    # a second customer evicts the first from both. Before, the first was a 404 although ClickHouse held it.
    w, port = _start(kafka, topics, tmp_path, workers, "--shards", "1", "--max-customers", "1",
                     env={"CX_LOOKUP_CUSTOMERS": "1"})
    t = _now()
    produce(kafka, topics["events"], [
        _ev("e1", t, "view", "cust-a", journey="cart", step="product"),
        _ev("e2", t + 1, "fail", "cust-a", journey="cart", step="payment", attrs={"reason": "card_declined"}),
        orjson.dumps({"event_id": "e3", "customer_id": "cust-a", "ts": t + 2, "channel": "call_center",
                      "type": "contact"}),
    ], key_of=_key)

    def held() -> bool:
        code, body = _get(port, "/v1/customers/cust-a")
        return code == 200 and body.get("held", True) and len(body["moments"]) == 2 and body["context"] is not None

    wait_until(held, 60, "the customer's moments, from memory")
    produce(kafka, topics["events"], [_ev("b1", t + 3, "view", "cust-b", journey="cart", step="product")],
            key_of=_key)

    def stored() -> dict[str, Any] | None:
        code, body = _get(port, "/v1/customers/cust-a")
        # The sink writes moments, decisions and contexts in separate inserts: wait for all three.
        return body if (code == 200 and body.get("held") is False and len(body["moments"]) == 2
                        and all(m["decision"] is not None for m in body["moments"])
                        and body["context"] is not None) else None

    body = wait_until(stored, 60, "the evicted customer's history, from ClickHouse")
    assert isinstance(body, dict)
    assert [m["rule"] for m in body["moments"]] == ["cart.handoff", "cart.failed"]
    assert body["moments"][1]["decision"]["status"] == "sent"
    assert body["context"]["moment_id"] == moment_id("cust-a", "cart.handoff", "e3")
    assert _get(port, "/v1/customers/cust-b")[1]["held"] is True
    assert _get(port, "/v1/customers/nobody")[0] == 404


def test_a_customer_shed_and_seen_again_shows_its_open_tags_and_journeys(kafka: str, topics: dict[str, str],
                                                                          workers: list[Worker],
                                                                          tmp_path: Path) -> None:
    # One customer in the state (--max-customers 1 on one shard): cust-b sheds cust-a, which then comes back with
    # an event of no journey. Its new record knows nothing of before: the look-up showed no tags and no journeys,
    # though its tag was still open in ClickHouse.
    w, port = _start(kafka, topics, tmp_path, workers, "--shards", "1", "--max-customers", "1")
    t = _now()
    produce(kafka, topics["events"], [
        _ev("e1", t, "view", "cust-a", journey="cart", step="product", entry="home_banner"),
        _ev("e2", t + 1, "fail", "cust-a", journey="cart", step="payment", attrs={"reason": "card_declined"}),
    ], key_of=_key)

    def tagged() -> bool:
        code, body = _get(port, "/v1/customers/cust-a")
        return code == 200 and [tg["tag"] for tg in body["tags"]] == ["cart.failed"]

    wait_until(tagged, 60, "the customer's tag, from memory")
    produce(kafka, topics["events"], [_ev("b1", t + 2, "view", "cust-b", journey="cart", step="product")],
            key_of=_key)

    def shed() -> bool:  # answered from ClickHouse: the sink has written its tag and journey state
        code, body = _get(port, "/v1/customers/cust-a")
        return code == 200 and body["held"] is False and [tg["tag"] for tg in body["tags"]] == ["cart.failed"]

    wait_until(shed, 60, "cust-a shed, its tag stored")
    produce(kafka, topics["events"], [_ev("a3", t + 3, "view", "cust-a")], key_of=_key)

    def back() -> dict[str, Any] | None:
        code, body = _get(port, "/v1/customers/cust-a")
        return body if code == 200 and body.get("held") is True else None

    body = wait_until(back, 60, "cust-a held again")
    assert isinstance(body, dict)
    assert [(tg["tag"], tg["moment_id"]) for tg in body["tags"]] == [
        ("cart.failed", moment_id("cust-a", "cart.failed", "e2"))], body
    [cart] = body["journeys"]
    assert (cart["journey"], cart["attempt"], cart["step"]) == ("cart", "e1", "payment")
    assert (cart["entry"], cart["entries"], cart["channels"]) == ("home_banner", ["home_banner"], ["app"])
    assert "cust-a" not in w.log()


def test_after_a_resume_restored_journeys_show_their_entries_and_channels(kafka: str, topics: dict[str, str],
                                                                          workers: list[Worker],
                                                                          tmp_path: Path) -> None:
    # Memory's entry points and channels per attempt are not in the snapshot, and the state keeps channels only
    # for open attempts: after a resume they were empty.
    args, env = _args(kafka, topics, tmp_path, "--metrics-port", "0", "--recovery-dir", str(tmp_path / "rec"),
                      "--snapshot-interval", "0.5")
    t = _now()
    produce(kafka, topics["events"], [
        _ev("e1", t, "view", "cust-a", journey="cart", step="product", entry="home_banner"),
        _ev("e2", t + 1, "start", "cust-a", journey="cart", step="cart", entry="search"),
        _ev("e3", t + 2, "view", "cust-a", journey="5g_upgrade", step="landing", entry="ad"),
        orjson.dumps({"event_id": "e4", "customer_id": "cust-a", "ts": t + 3, "channel": "web", "type": "complete",
                      "journey": "5g_upgrade", "step": "payment"}),
    ], key_of=_key)

    def complete(port: int) -> Any:
        def ready() -> dict[str, Any] | None:
            code, body = _get(port, "/v1/customers/cust-a")
            js = {j["journey"]: j for j in body.get("journeys", [])} if code == 200 else {}
            return js if len(js) == 2 and js["5g_upgrade"]["status"] == "completed" and js["cart"]["entries"] else None
        return ready

    first = Worker(args, tmp_path / "first.log", env=env)
    workers.append(first)
    before = wait_until(complete(_port(first)), 60, "the customer's journeys, from memory")
    assert isinstance(before, dict)
    time.sleep(3)  # snapshots every 0.5 s: the state after the last event is in one
    first.stop()
    second = Worker(args, tmp_path / "second.log", env=env)
    workers.append(second)
    port = _port(second)

    def held() -> dict[str, Any] | None:  # answered from ClickHouse ("held": false) until the shard is back
        code, body = _get(port, "/v1/customers/cust-a")
        return body if code == 200 and body["held"] is True else None

    body = wait_until(held, 60, "the resumed worker to hold the restored customer")
    assert isinstance(body, dict)
    js = {j["journey"]: j for j in body["journeys"]}
    assert (js["cart"]["entry"], js["cart"]["entries"]) == ("search", ["home_banner", "search"]), js
    assert js["cart"]["channels"] == ["app"]
    assert (js["5g_upgrade"]["status"], js["5g_upgrade"]["entries"]) == ("completed", ["ad"])
    assert js["5g_upgrade"]["channels"] == ["app", "web"]
    assert before["5g_upgrade"]["channels"] == ["app", "web"]  # what memory showed before the stop
    assert "cust-a" not in second.log()
