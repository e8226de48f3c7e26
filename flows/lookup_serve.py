"""The look-up API's part of a run: set up before the dataflow starts, torn down after it ends."""

from __future__ import annotations

import logging
import sys

from flows.config import PipelineConfig
from flows.http_token import TOKEN_ENV, http_token

log = logging.getLogger("cx.run")

LOOKUP_SWITCH_INTERVAL_S = 0.001
_switch_interval: list[float] = []  # the interpreter's switch interval before look-ups were served


def serve_lookups(cfg: PipelineConfig) -> None:
    """Answer ``/v1/`` look-ups on the HTTP endpoint from this run's shards and ClickHouse sink (flows.serving)."""
    from flows import http_endpoint, serving
    from flows.lookup_history import History
    from flows.recent import RECENT, max_customers_setting

    history = None
    if cfg.wants_clickhouse:
        from connectors.clickhouse.client import resolve_dsn

        history = History(resolve_dsn(cfg.clickhouse_dsn, cfg.process_id if cfg.addresses else None))
    serving.SHARDS.clear()
    RECENT.clear(enabled=True, max_customers=max_customers_setting())
    # A look-up's thread wakes (its request arrived) and waits for the GIL, which the worker thread gives up
    # only after the switch interval (5 ms by default), once or twice per look-up: 1 ms (RESULTS.md, look-ups).
    _switch_interval.append(sys.getswitchinterval())
    sys.setswitchinterval(LOOKUP_SWITCH_INTERVAL_S)
    service = serving.Service(serving.SHARDS, history, cfg.peers, cfg.process_id or 0, cfg.shards, cfg.workers,
                              resumed=cfg.recovery_dir is not None)
    http_endpoint.set_service(service)
    if http_token():
        log.info("look-up API on /v1/ (bearer token required)")
    else:
        log.info("look-up API on /v1/ without a token (set %s to require one)", TOKEN_ENV)


def stop_lookups() -> None:
    """Stop answering look-ups and release the ClickHouse client they read through (the chDB path's lock)."""
    from flows import http_endpoint, serving
    from flows.recent import RECENT

    service = http_endpoint.set_service(None)
    if service is not None and service.history is not None:
        service.history.close()
    serving.SHARDS.clear()
    RECENT.clear()
    if _switch_interval:
        sys.setswitchinterval(_switch_interval.pop())
