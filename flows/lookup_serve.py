"""The look-up API's part of a run: set up before the dataflow starts, torn down after it ends."""

from __future__ import annotations

import logging
import sys

from flows.config import PipelineConfig
from flows.http_token import TOKEN_ENV, http_token
from state.rules import RulePack

log = logging.getLogger("cx.run")

LOOKUP_SWITCH_INTERVAL_S = 0.001
_switch_interval: list[float] = []  # the interpreter's switch interval before look-ups were served


def serve_lookups(cfg: PipelineConfig, pack: RulePack | None = None) -> None:
    """Answer ``/v1/`` look-ups on the HTTP endpoint from this run's shards and ClickHouse sink (flows.serving).

    They answer 503 ("starting") until ``lookups_running``; ``pack``: the rule pack the run starts with.
    """
    from flows import http_endpoint, serving, shard_registry
    from flows.lookup_history import History
    from flows.recent import RECENT, max_customers_setting

    history = None
    if cfg.wants_clickhouse:
        from connectors.clickhouse.client import resolve_dsn

        history = History(resolve_dsn(cfg.clickhouse_dsn, cfg.process_id if cfg.addresses else None))
    shard_registry.SHARDS.clear()
    RECENT.clear(enabled=True, max_customers=max_customers_setting())
    # A look-up's thread wakes (its request arrived) and waits for the GIL, which the worker thread gives up
    # only after the switch interval (5 ms by default), once or twice per look-up: 1 ms (RESULTS.md, look-ups).
    _switch_interval.append(sys.getswitchinterval())
    sys.setswitchinterval(LOOKUP_SWITCH_INTERVAL_S)
    service = serving.Service(shard_registry.SHARDS, history, cfg.peers, cfg.process_id or 0, cfg.shards, cfg.workers,
                              resumed=cfg.recovery_dir is not None, pack=pack)
    http_endpoint.set_service(service)
    if not cfg.http_peers and len(set(cfg.peers)) < len(cfg.peers):
        # Each -a host with this process's port: processes sharing a host would each ask themselves.
        log.warning("look-ups: processes of the cluster share a host but --http-peers (CX_HTTP_PEERS) is not "
                    "set: a process cannot ask the others about their customers")
    # Not ready (look-ups answer 503 "starting") until the dataflow runs: its tables exist, its shards answer.
    http_endpoint.register_readiness("lookups", service.ready)
    if http_token():
        log.info("look-up API on /v1/ (bearer token required)")
    else:
        log.info("look-up API on /v1/ without a token (set %s to require one)", TOKEN_ENV)


def lookups_running() -> None:
    """The dataflow runs (its sinks' tables exist): look-ups are answered from now on."""
    from flows import http_endpoint

    if not http_endpoint._api:
        return
    service = http_endpoint._api[0][0]
    if service.history is not None and not service.resumed:
        # A database that already holds moments (a restart without --recovery-dir) has history memory lacks:
        # asked as after a resume, rather than a false 404 for its customers. One query, at start.
        try:
            service.resumed = bool(service.history.with_client(
                lambda c: c.query("SELECT 1 FROM moments LIMIT 1").result_rows))
        except Exception as e:  # noqa: BLE001 - unknown: ask ClickHouse for ids memory lacks
            log.warning("could not tell whether ClickHouse holds earlier moments: %s", type(e).__name__)
            service.resumed = True
    service.running = True


def stop_lookups() -> None:
    """Stop answering look-ups and release the ClickHouse client they read through (the chDB path's lock)."""
    from flows import http_endpoint, shard_registry
    from flows.recent import RECENT

    service = http_endpoint.set_service(None)
    http_endpoint.unregister_readiness("lookups")
    if service is not None and service.history is not None:
        service.history.close()
    shard_registry.SHARDS.clear()
    RECENT.clear()
    if _switch_interval:
        sys.setswitchinterval(_switch_interval.pop())
