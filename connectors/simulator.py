"""Seedable multi-channel traffic for the default rule pack, with the moments its scenarios plant.

Each simulated customer follows one scripted scenario in one journey (happy
path, abandonment, a failure, repeated failures, a maze of entry points, a
channel hop, a call-centre contact mid-journey, campaign interest, or plain
browsing) plus journey-less browsing noise. Scenarios are built so that the
moments they cause are exactly the ones they plant, which makes the ground
truth exact: precision and recall against it must both be 1.0.

Pure standard library + orjson; no Bytewax import.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
IDLE_MS = 600_000  # the default pack's abandonment idle time
JOURNEYS = {
    "5g_upgrade": ("landing", "plan_select", "order_form", "payment"),
    "cart": ("product", "cart", "checkout", "payment"),
}
CHANNELS = ("app", "web", "wechat", "ivr", "sms", "store", "email")
DIGITAL = ("app", "app", "app", "web", "web", "wechat")
ENTRIES = ("home_banner", "push_campaign", "search", "sms_link", "wechat_article", "email_offer")
FAIL_REASONS = (("payment", "card_declined", "P402"), ("eligibility", "contract_lock", "E117"),
                ("payment", "3ds_timeout", "P408"), ("eligibility", "credit_check", "E201"))
CAMPAIGNS = ("5g_spring", "family_plan", "cart_recovery", "loyalty")

# Scenario -> weight. Every kind of moment is planted by at least one scenario.
SCENARIOS: dict[str, int] = {
    "happy": 22,
    "abandon": 14,
    "fail_then_complete": 9,
    "stuck": 6,
    "maze": 6,
    "channel_hop": 7,
    "handoff": 8,
    "interested": 8,
    "browse": 20,
}

# A scripted event: (ts, seq, customer, channel, type, journey, step, entry, attrs).
_Ev = tuple[int, int, str, str, str, str | None, str | None, str | None, dict[str, Any] | None]


@dataclass(frozen=True)
class Simulation:
    """A deterministic simulated stream; ``events()`` regenerates it on every call."""

    customers: int
    minutes: float
    seed: int
    start_ms: int = DEFAULT_START_MS

    def _scripts(self) -> tuple[list[list[_Ev]], list[dict[str, Any]]]:
        rng = random.Random(self.seed)
        scripts: list[list[_Ev]] = []
        planted: list[tuple[str, str, int, int]] = []  # (customer, rule, script index, event index or -1)
        window = max(1, int(self.minutes * 60_000))
        names = list(SCENARIOS)
        weights = [SCENARIOS[n] for n in names]
        for c in range(self.customers):
            cid = f"c{c:07d}"
            scenario = rng.choices(names, weights)[0]
            t0 = self.start_ms + rng.randrange(window)
            evs, plants = _script(rng, cid, scenario, t0)
            evs.extend(_noise(rng, cid, evs[0][0], evs[-1][0]))
            evs.sort(key=lambda e: e[0])
            scripts.append(evs)
            planted.extend((cid, rule, len(scripts) - 1, idx) for rule, idx in plants)
        # Event ids follow the order of the stream so they read naturally; assign after sorting per customer.
        return scripts, [{"customer": p[0], "rule": p[1], "script": p[2], "anchor": p[3]} for p in planted]

    def _stream(self) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
        scripts, planted = self._scripts()
        out: list[list[dict[str, Any]]] = []
        n = 0
        for evs in scripts:
            docs = []
            for ts, _seq, cid, ch, typ, journey, step, entry, attrs in evs:
                n += 1
                doc: dict[str, Any] = {"event_id": f"e{self.seed}-{n}", "customer_id": cid, "ts": ts,
                                       "channel": ch, "type": typ}
                if journey is not None:
                    doc["journey"] = journey
                if step is not None:
                    doc["step"] = step
                if entry is not None:
                    doc["entry"] = entry
                if attrs:
                    doc["attrs"] = attrs
                docs.append(doc)
            out.append(docs)
        return out, planted

    def events(self) -> Iterator[dict[str, Any]]:
        """Yield every event as a schema-v1 dict (ts in epoch ms), ordered by (ts, event_id)."""
        streams, _ = self._stream()
        yield from heapq.merge(*streams, key=lambda d: (d["ts"], d["event_id"]))

    def ground_truth(self) -> list[dict[str, Any]]:
        """Return the planted moments: ``customer_id``, ``rule``, ``anchor_event_id``, ``due_ts``.

        Abandonments are included only when due at or before the stream's largest
        event time, as replay fires timers at end of input (DESIGN.md §4).
        """
        streams, planted = self._stream()
        max_ts = max((d["ts"] for s in streams for d in s), default=0)
        truth = []
        for p in planted:
            docs = streams[p["script"]]
            # Anchor indices refer to the scenario's own events, which keep their relative order after sorting.
            journey_docs = [d for d in docs if "journey" in d or d["type"] == "contact"]
            anchor = journey_docs[p["anchor"]]
            rule = p["rule"]
            due = anchor["ts"] + IDLE_MS if rule.endswith(".abandoned") else anchor["ts"]
            if rule.endswith(".abandoned") and due > max_ts:
                continue
            truth.append({"customer_id": p["customer"], "rule": rule, "anchor_event_id": anchor["event_id"],
                          "due_ts": due})
        return truth


def simulate(customers: int, minutes: float, seed: int, start_ms: int = DEFAULT_START_MS) -> Simulation:
    """Return a simulation of ``customers`` customers starting over ``minutes`` of event time.

    Args:
        customers: Number of customers (each follows one scenario).
        minutes: Window over which the customers' journeys start.
        seed: Random seed; the same arguments give byte-identical output.
        start_ms: Event time of the window's start.

    Returns:
        The simulation (events and ground truth are generated on demand).
    """
    if customers < 1 or minutes <= 0:
        raise ValueError("customers and minutes must be positive")
    return Simulation(customers, minutes, seed, start_ms)


def write_jsonl(sim: Simulation, events_path: Path, truth_path: Path | None = None) -> int:
    """Write the events (and optionally the ground truth) as JSONL; return the event count."""
    n = 0
    with Path(events_path).open("wb") as f:
        buf: list[bytes] = []
        for ev in sim.events():
            buf.append(orjson.dumps(ev))
            n += 1
            if len(buf) >= 8192:
                f.write(b"\n".join(buf) + b"\n")
                buf.clear()
        if buf:
            f.write(b"\n".join(buf) + b"\n")
    if truth_path is not None:
        with Path(truth_path).open("wb") as f:
            for t in sim.ground_truth():
                f.write(orjson.dumps(t) + b"\n")
    return n


def _gap(rng: random.Random, lo_s: int, hi_s: int) -> int:
    return rng.randint(lo_s * 1000, hi_s * 1000) + rng.randrange(1000)


def _script(rng: random.Random, cid: str, scenario: str, t0: int) -> tuple[list[_Ev], list[tuple[str, int]]]:
    """Return the scenario's journey events (and contacts) and the (rule, anchor index) it plants."""
    journey = rng.choice(list(JOURNEYS))
    s0, s1, s2, s3 = JOURNEYS[journey]
    ch = rng.choice(DIGITAL)
    entry = rng.choice(ENTRIES)
    campaign = {"campaign": rng.choice(CAMPAIGNS)}
    evs: list[_Ev] = []
    t = t0

    def add(typ: str, step: str | None, *, channel: str | None = None, entry_: str | None = None,
            attrs: dict[str, Any] | None = None, gap: tuple[int, int] = (20, 240),
            journey_: str | None = journey) -> int:
        nonlocal t
        if evs:
            t += _gap(rng, *gap)
        evs.append((t, len(evs), cid, channel or ch, typ, journey_, step, entry_ if entry_ is not None else entry,
                    attrs))
        return len(evs) - 1

    plants: list[tuple[str, int]] = []
    if scenario == "browse":
        add("view", s0, attrs=campaign)
    elif scenario == "interested":
        add("view", s0, attrs=campaign)
        i = add("engage", s0, attrs=campaign, gap=(600, 20 * 3600))
        plants.append((f"{journey}.interested", i))
    else:
        add("view", s0, attrs=campaign)
        add("start", s1)
        if scenario == "maze":
            entries = rng.sample(ENTRIES, 3)
            add("view", s2, entry_=entries[0])
            add("view", s2, entry_=entries[1], gap=(60, 400))
            i = add("view", s2, entry_=entries[2], gap=(60, 400))
            plants.append((f"{journey}.maze", i))
            add("submit", s2, entry_=entries[2], gap=(30, 300))
            add("submit", s3, entry_=entries[2], gap=(30, 300))
            add("complete", s3, entry_=entries[2], gap=(5, 60))
        elif scenario == "channel_hop":
            others = [c for c in ("app", "web", "wechat", "store") if c != ch]
            second, third = rng.sample(others, 2)
            add("submit", s2, channel=second)
            i = add("submit", s3, channel=third, gap=(60, 400))
            plants.append((f"{journey}.channel_hop", i))
            add("complete", s3, channel=third, gap=(5, 60))
        else:
            k = add("submit", s2)
            if scenario == "happy":
                add("submit", s3)
                add("complete", s3, gap=(5, 60))
            elif scenario == "abandon":
                if rng.random() < 0.5:
                    k = add("submit", s3)
                plants.append((f"{journey}.abandoned", k))
            elif scenario == "fail_then_complete":
                reason = rng.choice(FAIL_REASONS)
                i = add("fail", s3, attrs={"reason": reason[1], "error_code": reason[2]})
                plants.append((f"{journey}.failed", i))
                add("submit", s3, gap=(30, 300))
                add("complete", s3, gap=(5, 60))
            elif scenario == "stuck":
                reason = rng.choice(FAIL_REASONS)
                attrs = {"reason": reason[1], "error_code": reason[2]}
                first = add("fail", s3, attrs=attrs)
                add("fail", s3, attrs=attrs, gap=(30, 400))
                third = add("fail", s3, attrs=attrs, gap=(30, 400))
                plants.append((f"{journey}.failed", first))
                plants.append((f"{journey}.stuck", third))
                add("submit", s3, gap=(30, 300))
                add("complete", s3, gap=(5, 60))
            elif scenario == "handoff":
                # The contact carries no journey; the next journey event keeps the gap after s2 under the idle time.
                i = add("contact", None, channel="call_center", entry_="", journey_=None, gap=(60, 240),
                        attrs={"reason": "order_question"})
                plants.append((f"{journey}.handoff", i))
                add("submit", s3, gap=(30, 90))
                add("complete", s3, gap=(5, 60))
    return [(e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7] or None, e[8]) for e in evs], plants


def _noise(rng: random.Random, cid: str, first: int, last: int) -> list[_Ev]:
    """Journey-less browsing around the scenario: no rule reacts to it."""
    out: list[_Ev] = []
    for _ in range(rng.randint(0, 9)):
        t = rng.randint(first, last + 3_600_000)
        out.append((t, 10_000 + len(out), cid, rng.choice(CHANNELS), rng.choice(("view", "engage")), None,
                    rng.choice(("home", "offers", "support", "account")), None, None))
    return out
