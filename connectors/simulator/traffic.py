"""The simulated stream: customers drawn from the scenarios, merged in event-time order, and its ground truth."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from connectors.simulator import generic_reference
from connectors.simulator.pack import DEFAULT_START_MS, JOURNEYS, MIN_MS
from connectors.simulator.reference import detect_customer
from connectors.simulator.scenarios import CUM_WEIGHTS, NAMES, SCENARIOS, Raw, Script, noise


@dataclass(frozen=True, slots=True)
class _Customer:
    index: int
    customer_id: str
    scenario: str
    variant: str
    intended: frozenset[str]
    raws: tuple[Raw, ...]  # in time order, timestamps unique within the customer


@dataclass(frozen=True)
class Simulation:
    """A deterministic simulated stream; ``events()`` regenerates it on every call.

    Attributes:
        customers: Number of customers (each follows one scenario).
        minutes: Window of event time over which the customers' journeys start.
        seed: Random seed; equal arguments give byte-identical output.
        start_ms: Event time (epoch ms) of the window's start; no event is earlier.
        pack: A rule pack as ``tomllib`` reads it, or None for the default pack: the ground truth then holds
            its generic rules' moments and only the built-in rules it has (with the default pack's parameters).
            The events do not depend on it.
    """

    customers: int
    minutes: float
    seed: int
    start_ms: int = DEFAULT_START_MS
    pack: Mapping[str, Any] | None = field(default=None, compare=False)
    _window_ms: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Fix the window's length in ms."""
        object.__setattr__(self, "_window_ms", max(1, int(self.minutes * MIN_MS)))

    def _customer(self, c: int) -> _Customer:
        """Write customer ``c``'s script from its own random stream (independent of every other customer)."""
        rng = random.Random(f"{self.seed}/{c}")
        n, w = self.customers, self._window_ms
        # Start times are stratified over the window, so they rise with the customer index and events() can
        # bring customers in lazily; within its stratum each start is uniform.
        lo, hi = self.start_ms + c * w // n, self.start_ms + (c + 1) * w // n
        t0 = lo + rng.randrange(hi - lo) if hi > lo else lo
        scenario = rng.choices(NAMES, cum_weights=CUM_WEIGHTS)[0]
        script = Script(rng, t0, rng.choice(tuple(JOURNEYS)))
        SCENARIOS[scenario][1](script)
        raws = script.events
        used = {e[0] for e in raws}
        for e in noise(rng, t0, raws[-1][0]):
            t = e[0]
            while t in used:  # unique times within a customer: its order never rests on event-id ties
                t += 1
            used.add(t)
            raws.append((t, *e[1:]))
        raws.sort(key=lambda e: e[0])
        return _Customer(c, f"c{c:07d}", scenario, script.variant, frozenset(script.intended), tuple(raws))

    def _customers(self) -> Iterator[tuple[_Customer, int]]:
        """Yield every customer in start order with the number of its first event."""
        offset = 0
        for c in range(self.customers):
            cust = self._customer(c)
            yield cust, offset
            offset += len(cust.raws)

    def _docs(self, cust: _Customer, offset: int) -> list[dict[str, Any]]:
        return [_doc(f"e{self.seed}-{offset + k}", cust.customer_id, raw) for k, raw in enumerate(cust.raws)]

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield every event as a schema-v1 dict (``ts`` in epoch ms), ordered by (ts, event_id).

        Customers are brought in lazily in start order and merged on a heap, so
        only the scripts of customers that have started are held in memory, as
        compact tuples; event dicts are built as they are yielded.

        Yields:
            Fresh event dicts (callers may mutate them).
        """
        seed = self.seed
        heap: list[tuple[int, str, int, int, _Customer, int]] = []  # (ts, event_id, index, k, customer, offset)
        pending = self._customers()
        nxt = next(pending, None)
        while True:
            # Every unstarted customer's events are at or after its start time, which rises with the index:
            # once the next start is after the heap's head, the head is the smallest remaining event.
            while nxt is not None and (not heap or nxt[0].raws[0][0] <= heap[0][0]):
                cust, offset = nxt
                heapq.heappush(heap, (cust.raws[0][0], f"e{seed}-{offset}", cust.index, 0, cust, offset))
                nxt = next(pending, None)
            if not heap:
                return
            _ts, eid, idx, k, cust, offset = heap[0]
            yield _doc(eid, cust.customer_id, cust.raws[k])
            k += 1
            if k < len(cust.raws):
                heapq.heapreplace(heap, (cust.raws[k][0], f"e{seed}-{offset + k}", idx, k, cust, offset))
            else:
                heapq.heappop(heap)

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return every moment the events cause under DESIGN.md §4 with the default pack.

        Found by ``reference_moments`` per customer; abandonments still pending
        at the end count only when due at or before the stream's largest event
        time, as replay fires timers at end of input. With a ``pack``, its generic
        rules' moments come from ``generic_reference`` (written from DESIGN.md §8
        apart from ``state/``), with the same rule for timers still pending.

        Returns:
            Dicts ``customer_id``, ``rule``, ``anchor_event_id``, ``due_ts``, sorted by (due_ts, customer_id, rule).
        """
        fired: list[dict[str, Any]] = []
        pending: list[dict[str, Any]] = []
        max_ts = self.start_ms
        builtins, generic = _split_pack(self.pack)
        for cust, offset in self._customers():
            docs = self._docs(cust, offset)
            max_ts = max(max_ts, docs[-1]["ts"])
            f, p = detect_customer(docs)
            fired.extend(m for m in f if builtins is None or m["rule"] in builtins)
            pending.extend(m for m in p if builtins is None or m["rule"] in builtins)
            if generic is not None:
                # Each customer alone, with no end of input yet: what is due by the stream's end is kept below.
                pending.extend({"customer_id": c, "rule": r, "anchor_event_id": a, "due_ts": d}
                               for c, r, d, a, _ in generic_reference.run(generic, docs, _NO_END))
        fired.extend(m for m in pending if m["due_ts"] <= max_ts)
        fired.sort(key=lambda m: (m["due_ts"], m["customer_id"], m["rule"], m["anchor_event_id"]))
        return fired


_NO_END = 1 << 62
_GENERIC_KINDS = frozenset({"count", "distinct", "absence", "sequence"})


def _split_pack(pack: Mapping[str, Any] | None) -> tuple[frozenset[str] | None, dict[str, Any] | None]:
    """The names of a pack's built-in rules and the pack with only its generic rules (None, None: default pack)."""
    if pack is None:
        return None, None
    journeys = [j["id"] for j in pack.get("journey", [])]
    moments = pack.get("moment", [])
    builtins = frozenset(f"{j}.{m.get('name', m['kind'])}" for m in moments if m.get("kind") not in _GENERIC_KINDS
                         for j in m.get("journeys", journeys))
    generic = [m for m in moments if m.get("kind") in _GENERIC_KINDS]
    return builtins, ({**pack, "moment": generic} if generic else None)


def _doc(event_id: str, customer_id: str, raw: Raw) -> dict[str, Any]:
    ts, channel, type_, journey, step, entry, attrs = raw
    doc: dict[str, Any] = {"event_id": event_id, "customer_id": customer_id, "ts": ts, "channel": channel,
                           "type": type_}
    if journey is not None:
        doc["journey"] = journey
    if step is not None:
        doc["step"] = step
    if entry is not None:
        doc["entry"] = entry
    if attrs:
        doc["attrs"] = dict(attrs)
    return doc


def simulate(customers: int, minutes: float, seed: int, start_ms: int = DEFAULT_START_MS,
             pack: Mapping[str, Any] | None = None) -> Simulation:
    """Return a simulation of ``customers`` customers whose journeys start over ``minutes`` of event time.

    Args:
        customers: Number of customers (each follows one scenario; about 10 events each).
        minutes: Window over which the customers' journeys start (events run on past it).
        seed: Random seed; the same arguments give byte-identical output.
        start_ms: Event time of the window's start (epoch ms).
        pack: The rule pack (as ``tomllib`` reads it) whose moments the ground truth lists; None: the default.

    Returns:
        The simulation; events and ground truth are generated on demand.

    Raises:
        ValueError: ``customers`` or ``minutes`` is not positive.
    """
    if customers < 1 or minutes <= 0:
        raise ValueError(f"customers and minutes must be positive, got {customers} and {minutes}")
    return Simulation(customers, minutes, seed, start_ms, pack)


def write_jsonl(
    sim: Simulation,
    events_path: Path | str,
    truth_path: Path | str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Write the events (and optionally the ground truth) as JSONL, one orjson object per line.

    Args:
        sim: The simulation.
        events_path: Where the events go.
        truth_path: Where the ground truth goes, or None to skip it.
        progress: Called with the number of events written so far, every 8,192 events.

    Returns:
        The number of events written.
    """
    n = 0
    dumps = orjson.dumps
    with Path(events_path).open("wb") as f:
        buf: list[bytes] = []
        for ev in sim.events():
            buf.append(dumps(ev))
            if len(buf) >= 8192:
                n += len(buf)
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
                if progress is not None:
                    progress(n)
        if buf:
            n += len(buf)
            f.write(b"\n".join(buf) + b"\n")
    if truth_path is not None:
        with Path(truth_path).open("wb") as f:
            f.writelines(dumps(t) + b"\n" for t in sim.ground_truth())
    return n
