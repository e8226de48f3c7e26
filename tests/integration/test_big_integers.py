"""An ``attrs`` integer beyond 64 bits is dead-lettered, one within 64 bits kept exactly (issue 12).

orjson reads an integer outside [-2**63, 2**64) as a rounded float: a 30-digit order number reached the moment's
``attrs`` changed (``1.2345678901234568e+29``) in JSONL, Kafka and ClickHouse. Now such an event is a dead letter
``int_too_large:attrs`` naming the key, and the extremes of the 64-bit range reach JSONL and chDB unchanged.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.chdb_query import query
from tests.helpers import T0
from tests.worker import Worker

pytestmark = pytest.mark.slow

BIG = 123456789012345678901234567890
EDGES = {"max": 2**64 - 1, "min": -(2**63)}


def _line(eid: str, customer: str, attrs_json: bytes) -> bytes:
    head = orjson.dumps({"event_id": eid, "customer_id": customer, "ts": T0, "channel": "app", "type": "fail",
                         "journey": "cart"})
    return head[:-1] + b',"attrs":' + attrs_json + b"}\n"


def test_integers_beyond_64_bits_are_dead_lettered_and_the_64_bit_extremes_kept(tmp_path: Path) -> None:
    src = tmp_path / "events.jsonl"
    # Written by hand: the big integer must stay an integer literal in the file.
    src.write_bytes(_line("big", "c-big", b'{"order":' + str(BIG).encode() + b"}")
                    + _line("edges", "c-edges", orjson.dumps(EDGES)))
    dsn = f"chdb://{tmp_path / 'ch'}"
    w = Worker(["--source", f"file:{src}", "--sink", f"jsonl:{tmp_path / 'out'}", "--sink", dsn, "--no-metrics",
                "--status", "off"], tmp_path / "w.log")
    try:
        assert w.wait(300) == 0, w.log()[-3000:]
    finally:
        w.stop()

    dead = [orjson.loads(x) for x in (tmp_path / "out" / "deadletter.jsonl").read_bytes().splitlines()]
    assert [(d["reason"], d["detail"]) for d in dead] == [("int_too_large:attrs", "attrs.order: integer beyond 64 "
                                                                                   "bits (send it as a string)")]
    assert str(BIG).encode() in dead[0]["raw"].encode()  # the message as sent, digits and all
    moments = [orjson.loads(x) for x in (tmp_path / "out" / "moments.jsonl").read_bytes().splitlines()]
    assert [(m["customer_id"], m["attrs"]) for m in moments] == [("c-edges", EDGES)]

    assert query(dsn, "SELECT reason, detail FROM dead_letters") == [["int_too_large:attrs", dead[0]["detail"]]]
    rows = query(dsn, "SELECT customer_id, attrs FROM moments")
    assert [(cid, orjson.loads(attrs)) for cid, attrs in rows] == [("c-edges", EDGES)]
