"""Look-up and explanation (DESIGN.md §9): what ``GET /v1/customers/{id}`` and ``GET /v1/moments/{id}`` answer.

A customer look-up is answered from the worker's memory:

- **The live state** (journeys, held tags, recent sends) is read from the shards this process runs. Each
  ``ShardLogic`` registers its shard with a gate (``SHARDS``, ``flows.shard_gate``): its worker applies a Bytewax
  batch holding the gate's lock, and a look-up is read between two of the worker's events (by the worker, at its
  next event boundary, or by the look-up once the lock is free). So the HTTP thread never sees a half-applied
  event (an attempt whose step moved but whose time did not) nor iterates a dict the worker resizes, and waits
  for one event, not a whole batch; the state/ hot path pays one test per event.
- **The recent history** (the last moments with their contact decisions, the latest hand-off context, the entry
  points of the customer's attempts) is kept from the worker's outputs in ``flows.recent`` (bounded).

ClickHouse is asked only for what memory cannot answer (``flows.lookup_history``): a customer the state evicted
(its stored journeys, moments and context), one the recent store dropped, one the state shed and saw again (its
open tags and earlier journeys), the entry points and channels of attempts memory did not note (restored from
snapshots, stored), and a moment's explanation (its evidence events, the steps around it), through the client
the worker's own sink holds: on the embedded default (chDB) no other process may open the path while the worker
runs, so the worker answers for it.

In a cluster each process serves the customers of its own shards. A process asked about a customer it does
not hold asks the process that runs the customer's shard (``Placement.process_of``, the placement Bytewax
uses), then the others, over their HTTP ports (``--http-peers``); the peer answers from its own state and
its own chDB path. Asking the owner is one hop, needs no shared store, and works on the embedded default,
where each process has its own ClickHouse path.
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from typing import Any, Final

import orjson

from flows.lookup_history import History
from flows.lookup_peers import Peers
from flows.recent import MAX_MOMENTS, RECENT, Recent
from flows.shard_registry import ShardRegistry
from state.routing import shard_of_id
from state.rules import RulePack, describe_rule

log = logging.getLogger("cx.serving")


PENDING_S: Final = 30.0  # how long a moment held in memory may lack stored rows before they count as gone


def _unanswered(codes: list[int]) -> tuple[int, dict[str, Any]]:
    """The answer when a process that may hold the answer did not give one: not "unknown" (that would be false).

    503 when every such process was busy (or starting): retry shortly; 504 when one was too slow; 502 otherwise.
    """
    code = 504 if 504 in codes else 503 if set(codes) == {503} else 502
    return code, {"error": f"incomplete: {len(codes)} other process(es) of the cluster did not answer "
                           f"(HTTP {', '.join(map(str, sorted(set(codes))))}); retry, or check --http-peers"}


class Service:
    """Answers the ``/v1/`` look-ups of one process.

    Args:
        shards: The shards this process runs.
        history: The stored history (None: no ClickHouse sink, so only the live state is shown).
        peers: Every process's HTTP ``host:port`` in process order (empty outside a cluster).
        process: This process's index in ``peers``.
        total_shards: ``--shards``, to find a customer's shard.
        workers: Workers per process, to find the process that runs a shard.
        recent: The recent history kept in memory (``flows.recent``).
        resumed: The run resumed from snapshots (or started on a database holding moments): memory lacks the
            history from before, ClickHouse has it.
        pack: The rule pack the run starts with (the shards' own once they are built: before any event).
    """

    def __init__(self, shards: ShardRegistry, history: History | None, peers: tuple[str, ...] = (),
                 process: int = 0, total_shards: int = 64, workers: int = 1, recent: Recent = RECENT,
                 resumed: bool = False, pack: RulePack | None = None) -> None:
        self._incomplete: dict[str, float] = {}  # moment id -> when first found with rows not yet written
        self.running = False  # set once the dataflow runs (its ClickHouse tables exist): answers before are 503
        self.pack = pack
        self.shards = shards
        self.recent = recent
        self.resumed = resumed
        # The run started on a database holding moments without restoring state: tags held before are in
        # ClickHouse only (set by flows.lookup_serve once the dataflow runs).
        self.restarted = False
        self.history = history
        self.peers = peers
        self.process = process
        self.total_shards = total_shards
        self.workers = workers
        self.peer_calls = Peers()  # each with a deadline, a bound per peer (flows.lookup_peers)

    def ready(self) -> bool:
        """Whether look-ups can be answered: the dataflow runs (readiness check ``lookups``)."""
        return self.running

    def _pack(self) -> RulePack | None:
        return self.shards.pack() or self.pack

    # -- customers --------------------------------------------------------------------
    def customer(self, cid: str, local: bool = False, token: str | None = None) -> tuple[int, dict[str, Any]]:
        """Answer ``GET /v1/customers/{cid}``: ``(200, view)``, or ``(404, error)`` when nobody knows it.

        A customer a shard here holds is answered from memory (its state, and ``flows.recent`` for its moments,
        context and entry points); ClickHouse is asked only for what memory lacks: a customer the state evicted
        (its stored journeys, moments and context), or one the recent store dropped (its moments and context).
        """
        view = self.shards.customer(cid)
        if view is not None:
            return 200, self._with_history(cid, view)
        failed: list[int] = []
        if not local:
            for peer in self._peers_for(cid):
                code, body = self._ask(peer, f"/v1/customers/{urllib.parse.quote(cid, safe='')}", token)
                if code == 200:
                    return code, body
                if code != 404:
                    failed.append(code)
        stored = self._stored(cid)
        if stored is not None:
            return 200, stored
        return _unanswered(failed) if failed else (404, {"error": "unknown customer"})

    def _may_be_stored(self, cid: str) -> bool:
        """Whether ClickHouse may hold history of a customer that memory lacks (dropped, from before a resume)."""
        r = self.recent
        return self.history is not None and (not r.enabled or self.resumed or r.maybe_dropped(cid))

    def _with_history(self, cid: str, view: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"customer_id": cid, "process": self.process, "held": True, **view, "moments": [],
                               "context": None}
        kept = self.recent.get(cid)
        attempts = kept["attempts"] if kept is not None else {}
        complete = False  # the newest moments and context are all from this run: memory alone has them
        if kept is not None:
            out["moments"], out["context"] = kept["moments"], kept["context"]
            complete = len(kept["moments"]) >= MAX_MOMENTS and kept["context"] is not None
        # The state's record began empty (a restart without snapshots) or anew (the customer was shed and seen
        # again): the tags it held open and the journeys it was on before are in ClickHouse only.
        lost = self.restarted or out.pop("shed", False) or self.recent.maybe_shed(cid)
        if self.history is not None and (lost or (not complete and self._may_be_stored(cid))):
            try:
                if not complete and self._may_be_stored(cid):
                    # Memory holds only what happened since the run started (or since the store dropped the
                    # customer): the earlier moments and context are in ClickHouse, merged with memory's.
                    out["moments"] = _merged(out["moments"], self.history.moments(cid))
                    out["context"] = _latest(out["context"], self.history.context(cid))
                if lost:
                    out["tags"] = self._tags(cid, out["tags"], out["last_seen"])
                    live = {j["journey"] for j in out["journeys"]}  # one attempt per journey: the live one is newer
                    out["journeys"] += [j for j in self.history.journeys(cid) if j["journey"] not in live]
            except Exception as e:  # noqa: BLE001 - the live part still answers; the problem is named
                log.warning("look-up history unavailable: %s", type(e).__name__)
                out["history"] = f"unavailable: {type(e).__name__}"
        self._trails(cid, out, attempts)
        return out

    def _trails(self, cid: str, out: dict[str, Any], attempts: dict[tuple[str, str], Any]) -> None:
        """Set each journey's ``entry``, ``entries`` and ``channels``: from memory (``flows.recent``), and for the
        attempts memory lacks (from before a resume or a restart, a shed record, a stored customer) from their
        stored steps, in one query; none when memory holds every attempt.
        """
        keys = [(j["journey"], j["attempt"]) for j in out["journeys"]]
        lacking = [k for k in keys if k not in attempts]
        if lacking and self.history is not None:
            try:
                attempts = {**self.history.attempt_steps(cid, lacking), **attempts}
            except Exception as e:  # noqa: BLE001 - what memory holds still answers; the problem is named
                log.warning("look-up of stored steps failed: %s", type(e).__name__)
                out["history"] = f"unavailable: {type(e).__name__}"
        for j in out["journeys"]:
            entries, channels = attempts.get((j["journey"], j["attempt"]), ((), ()))
            live = j.get("channels", [])  # a live open attempt's channels (ChannelHop); stored journeys have none
            j.update(entry=entries[-1] if entries else "", entries=list(entries),
                     channels=[*live, *(ch for ch in channels if ch not in live)])

    def _tags(self, cid: str, held: list[dict[str, Any]], seen: int) -> list[dict[str, Any]]:
        """The tags ``held`` by the state, and those stored open (or actioned) and not expired, in ClickHouse.

        Expired is judged at this process's event time (its shards' watermark, or the customer's last event if
        later): a replay's tags are not all expired by the wall clock. A tag of a rule the pack no longer has
        is left out (its time to live is unknown).
        """
        assert self.history is not None
        pack = self._pack()
        now = max([seen, *(shard.wm for shard, _ in self.shards)])
        out, names = list(held), {t["tag"] for t in held}
        for t in self.history.tags(cid):
            r = next((r for r in pack.rules if r.name == t["rule"]), None) if pack is not None else None
            if t["tag"] in names or t["state"] not in ("open", "actioned") or r is None:
                continue
            expires = t["opened_ts"] + r.ttl_ms
            if expires > now:
                out.append({"tag": t["tag"], "journey": t["journey"], "moment_id": t["moment_id"],
                            "opened_ts": t["opened_ts"], "state": t["state"], "expires_at": expires})
        return out

    def _stored(self, cid: str) -> dict[str, Any] | None:
        """A customer no shard here holds (the state evicted it): from memory, and ClickHouse for what memory lacks.

        Returns None when neither knows it: an id never seen is a 404 without a query.
        """
        kept = self.recent.get(cid)
        if kept is None and not self._may_be_stored(cid):
            return None
        out: dict[str, Any] = {"customer_id": cid, "process": self.process, "held": False, "journeys": [],
                               "tags": [], "sends": [], "last_seen": 0, "moments": [], "context": None}
        if kept is not None:
            out["moments"], out["context"] = kept["moments"], kept["context"]
        if self.history is not None:
            try:
                out["journeys"] = self.history.journeys(cid)
                out["moments"] = _merged(out["moments"], self.history.moments(cid))
                out["context"] = _latest(out["context"], self.history.context(cid))
                out["tags"] = self._tags(cid, [], max((j["updated_at"] for j in out["journeys"]), default=0))
            except Exception as e:  # noqa: BLE001 - what memory holds still answers; the problem is named
                log.warning("look-up of a stored customer failed: %s", type(e).__name__)
                out["history"] = f"unavailable: {type(e).__name__}"
        if not (kept is not None or out["journeys"] or out["moments"] or out["context"]):
            return None
        # What memory still holds of each attempt (entry points, channels), the stored steps for the rest.
        self._trails(cid, out, kept["attempts"] if kept is not None else {})
        out["last_seen"] = max((j["updated_at"] for j in out["journeys"]), default=0)
        return out

    # -- moments ----------------------------------------------------------------------
    def moment(self, mid: str, local: bool = False, token: str | None = None) -> tuple[int, dict[str, Any]]:
        """Answer ``GET /v1/moments/{mid}``: the rule, its evidence events, the steps around it, the decision."""
        found = self._explain(mid) if self.history is not None else None
        if found is not None:
            if self._pending(mid, found):
                return 503, {"error": "pending: the moment's rows are still being written to ClickHouse; retry",
                             "retry_after_s": 1}
            return 200, found
        failed: list[int] = []
        if not local:
            for peer in self._others():
                code, body = self._ask(peer, f"/v1/moments/{mid}", token)
                if code == 200:
                    return code, body
                if code != 404:
                    failed.append(code)
        if failed:
            return _unanswered(failed)
        if self.history is None:
            return 404, {"error": "unknown moment (the worker writes no ClickHouse sink, where moments are kept)"}
        return 404, {"error": "unknown moment"}

    def _pending(self, mid: str, found: dict[str, Any]) -> bool:
        """Whether a moment found in ClickHouse lacks rows the sink has not written yet (about a second).

        Its moment row can be stored before its evidence events and its decision: for a moment this process's
        memory holds (``flows.recent``), missing evidence or a decision memory has means "not yet", for
        ``PENDING_S`` from the first such answer (after that, evidence past the events table's TTL is missing
        for good and is shown as not stored).
        """
        kept = self.recent.get(found["moment"]["customer_id"])
        if kept is None:
            return False
        key = mid.encode()
        mem = next((orjson.loads(orjson.dumps(f)) for f in kept["moments"] if key in orjson.dumps(f)), None)
        if mem is None or not (any(e.get("stored") is False for e in found["evidence"])
                               or (found["decision"] is None and mem.get("decision") is not None)):
            return False
        now = time.monotonic()
        if len(self._incomplete) > 10_000:  # bounded: forget those past the window
            self._incomplete = {k: t for k, t in self._incomplete.items() if now - t < PENDING_S}
        return now - self._incomplete.setdefault(mid, now) < PENDING_S

    def _explain(self, mid: str) -> dict[str, Any] | None:
        assert self.history is not None
        m = self.history.moment(mid)
        if m is None:
            return None
        cid = m["customer_id"]
        evidence = list(m["evidence"])
        stored = {e["event_id"]: e for e in self.history.events(cid, evidence)}
        for e in stored.values():
            e["attrs"] = orjson.loads(e["attrs"]) if e["attrs"] else {}
        decision = self.history.decisions(cid, [mid]).get(mid)
        m["attrs"] = orjson.loads(m["attrs"]) if m["attrs"] else {}
        return {
            "moment": m,
            "rule": self._rule(m["rule"], m["rule_version"]),
            "evidence": [stored.get(eid, {"event_id": eid, "stored": False}) for eid in evidence],
            "steps": self.history.steps(cid, m["journey"], m["due_ts"]),
            "decision": decision,
            "process": self.process,
        }

    def _rule(self, name: str, version: int) -> dict[str, Any]:
        pack = self._pack()
        r = next((r for r in pack.rules if r.name == name), None) if pack is not None else None
        if r is None or pack is None:
            return {"rule": name, "version": version, "known": False}
        params = {k: v for k, v in (("within_ms", r.within_ms), ("threshold", r.threshold),
                                    ("no_intent_ms", r.no_intent_ms), ("channel", r.channel), ("type", r.type),
                                    ("recent_steps", r.recent_steps), ("ttl_ms", r.ttl_ms),
                                    ("act_within_ms", r.act_within_ms), ("holdout", r.holdout)) if v}
        return {"rule": name, "version": version, "running_version": r.version, "kind": r.kind,
                "journey": r.journey, "urgency": r.urgency, "action": r.action, "channels": list(r.channels),
                "parameters": params, "summary": describe_rule(r), "pack": pack.name}

    # -- reports ----------------------------------------------------------------------
    def report(self, view: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Answer ``GET /v1/reports/{overview|rules}``: ``moments report`` run by the worker on its own database.

        On the embedded default no other process may open the chDB path while the worker runs; the command
        asks the worker instead (``flows.report_cli``). Parameters: ``journey``, ``html=1`` (overview);
        ``from``, ``to`` (epoch ms), ``confidence``, ``min_sample``, ``min_uplift`` (rules).

        Raises:
            ValueError: a parameter that is not a number where one is needed (the endpoint answers 400).
        """
        from flows.report import OVERVIEW_TABLES, RULES_TABLES, missing_tables, text_report_of

        bounds = {k: _epoch_ms(k, params[k]) if params.get(k) else None for k in ("from", "to")}
        _min_sample(params.get("min_sample"), 1)  # refused before anything is read
        pack = self._pack()
        if self.history is None or pack is None:
            return 404, {"error": "no report here: the worker writes no ClickHouse sink (or has not started)"}
        history = self.history
        if view == "overview":
            def overview(client: Any) -> dict[str, Any]:
                missing = missing_tables(client, OVERVIEW_TABLES)
                if missing:
                    return {"missing": missing}
                out = {"text": text_report_of(client, pack, params.get("journey"))}
                if params.get("html") == "1":
                    from flows.report_html import html_report

                    out["html"] = html_report(client, pack, params.get("journey"))
                return out

            return 200, history.with_client(overview)
        from flows.rule_report import render_json, render_text, rule_report

        kw: dict[str, Any] = {"confidence": float(params.get("confidence") or pack.effect_confidence),
                              "min_sample": _min_sample(params.get("min_sample"), pack.effect_min_sample),
                              "min_uplift": float(params.get("min_uplift") or pack.effect_min_uplift)}

        def rules(client: Any) -> dict[str, Any]:
            missing = missing_tables(client, RULES_TABLES)
            if missing:
                return {"missing": missing}
            rep = rule_report(client, bounds["from"], bounds["to"], **kw)
            return {"json": orjson.loads(render_json(rep)), "text": render_text(rep)}

        return 200, history.with_client(rules)

    # -- peers ------------------------------------------------------------------------
    def _others(self) -> list[str]:
        return [p for i, p in enumerate(self.peers) if i != self.process]

    def _peers_for(self, cid: str) -> list[str]:
        """The other processes to ask about a customer: the one running its shard first."""
        if len(self.peers) <= 1:
            return []
        from connectors.placement import Placement

        owner = Placement(self.process, len(self.peers), self.workers).process_of(
            str(shard_of_id(cid, self.total_shards)))
        order = [owner] + [i for i in range(len(self.peers)) if i != owner]
        return [self.peers[i] for i in order if i != self.process]

    def _ask(self, peer: str, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
        """GET ``path`` from a peer (``Peers.ask``): 502 unreachable, 504 too slow, 503 too many calls waiting on it."""
        return self.peer_calls.ask(peer, path, token)


def _key(m: Any) -> tuple[int, str, Any]:
    """``(time, moment id, m)`` of a moment (or a context) as memory holds it (encoded) or ClickHouse gives it."""
    d = orjson.loads(orjson.dumps(m)) if isinstance(m, orjson.Fragment) else m
    return int(d.get("due_ts", d.get("contact_ts", 0))), str(d["moment_id"]), m


def _merged(kept: list[Any], stored: list[dict[str, Any]]) -> list[Any]:
    """Memory's moments and ClickHouse's, each once (by moment id), newest first, at most ``MAX_MOMENTS``."""
    if not stored:
        return kept
    keys = [_key(m) for m in kept]
    ids = {k[1] for k in keys}
    keys += [_key(m) for m in stored if m["moment_id"] not in ids]
    keys.sort(key=lambda k: (-k[0], k[1]))
    return [k[2] for k in keys[:MAX_MOMENTS]]


def _latest(kept: Any, stored: dict[str, Any] | None) -> Any:
    """The later of memory's hand-off context and ClickHouse's (memory's on a tie: it is this run's)."""
    if kept is None or stored is None:
        return stored if kept is None else kept
    return stored if _key(stored)[0] > _key(kept)[0] else kept


def _epoch_ms(name: str, text: str) -> int:
    """A report bound: epoch milliseconds that ClickHouse's Int64 holds (beyond it the query failed: a 500)."""
    ms = int(text)
    if not 0 <= ms < 2**63:
        raise ValueError(f"{name}={text[:24]} is not epoch milliseconds (0 to 2^63-1)")
    return ms


def dumps(body: dict[str, Any]) -> bytes:
    """Encode an API answer (non-string keys and odd types as text rather than failing)."""
    return orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS, default=str)


def _min_sample(text: str | None, default: int) -> int:
    """A report's ``min_sample`` parameter, as ``moments report --min-sample`` bounds it (ValueError: a 400)."""
    n = int(text) if text else default
    if not 1 <= n <= 1_000_000_000:
        raise ValueError(f"min_sample must be 1..1000000000, got {text}")
    return n
