"""Build events and run them through a shard, for tests."""

from __future__ import annotations

import json
import math
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from state.batches import RawBatch, Tick
from state.outputs import Outputs
from state.rules import RulePack, load_rule_pack
from state.shard import Shard, process

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
MIN = 60_000
PACK = load_rule_pack()


def ev(eid: str, ts: int, type_: str = "view", *, customer: str = "c1", channel: str = "app",
       journey: str | None = "cart", step: str | None = None, entry: str | None = None,
       **attrs: Any) -> dict[str, Any]:
    """One event dict; ``ts`` is an offset in ms from T0."""
    d: dict[str, Any] = {"event_id": eid, "customer_id": customer, "ts": T0 + ts, "channel": channel, "type": type_}
    if journey is not None:
        d["journey"] = journey
    if step is not None:
        d["step"] = step
    if entry is not None:
        d["entry"] = entry
    if attrs:
        d["attrs"] = attrs
    return d


def raws(events: Iterable[dict[str, Any]]) -> list[bytes]:
    """Serialise events."""
    return [orjson.dumps(e) for e in events]


def run(events: Iterable[dict[str, Any]] | Iterable[bytes], *, pack: RulePack = PACK, lateness_ms: int = 30_000,
        end: bool = True, shard: Shard | None = None) -> Outputs:
    """Feed events (dicts or bytes) to a shard in one batch; with ``end`` flush as at end of input."""
    items = [e if isinstance(e, bytes) else orjson.dumps(e) for e in events]
    sh = shard or Shard(pack, lateness_ms=lateness_ms)
    batch: list[RawBatch | Tick] = [RawBatch("test", 0, items, list(range(len(items))))]
    if end:
        batch.append(Tick(0, final=True))
    return process(sh, batch)


def rules_fired(out: Outputs) -> list[str]:
    """Rules of the moments, in emission order."""
    return [m["rule"] for m in out.moments]


def styled(doc: dict[str, Any], style: str, attrs: dict[str, Any] | None = None) -> bytes:
    """Encode ``doc`` as a producer might: ``orjson``, ``ascii`` escapes, ``spaced`` separators, or with a
    decoy ``attrs`` object (``attrs``) placed first (``attrs_first``) or last (``attrs_last``)."""
    if style == "orjson":
        return orjson.dumps(doc)
    if style == "ascii":
        return json.dumps(doc, ensure_ascii=True).encode()
    if style == "spaced":
        return json.dumps(doc, ensure_ascii=False, indent=2, separators=(" , ", " : ")).encode()
    if style == "attrs_first":
        return json.dumps({"attrs": attrs, **doc}, ensure_ascii=False).encode()
    return orjson.dumps({**doc, "attrs": attrs})


def wait_until(cond: Callable[[], object], timeout: float, what: str, *, interval: float = 0.1,
               detail: Callable[[], str] | None = None) -> object:
    """Poll ``cond`` until it returns something truthy and return that; fail naming ``what`` after ``timeout`` s.

    ``detail`` (e.g. a worker's log tail) is added to the failure message. Tests wait on a condition this way
    rather than sleeping for a guessed time: they go on as soon as it holds and fail clearly when it never does.
    """
    end = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        if time.monotonic() >= end:
            extra = f"\n{detail()}" if detail is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{extra}")
        time.sleep(interval)


def uplift_half_width(n_t: int, s_t: int, n_c: int, s_c: int, confidence: float, min_sample: int) -> float:
    """The report's uplift half-width, written out from the normal-mixture boundary (not the report's code).

    Rates shrunk by half a success for the variance, at least that of the arms' common rate; the mixture tuned
    for 2·min_sample information.
    """
    q_t, q_c = (s_t + 0.5) / (n_t + 1), (s_c + 0.5) / (n_c + 1)
    q = (s_t + s_c + 0.5) / (n_t + n_c + 1)  # both arms together: the variance is at least what it gives each
    tau = 1 / max(q_t * (1 - q_t) / n_t + q_c * (1 - q_c) / n_c, q * (1 - q) * (1 / n_t + 1 / n_c))
    a = 1 - confidence
    rho2 = (-2 * math.log(a) + math.log(1 - 2 * math.log(a))) / (2 * min_sample)
    return math.sqrt((1 + rho2 * tau) / (rho2 * tau * tau) * math.log((1 + rho2 * tau) / a**2))


def raw_http(port: int, request: bytes, timeout: float = 10) -> bytes:
    """Send ``request`` bytes to the loopback ``port`` and read until the server closes the connection (a reset
    after an answer, input left unread, ends it too), or ``timeout`` seconds pass without a byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except (TimeoutError, ConnectionResetError):
            pass
        return got
