"""Per-batch accounting: the pipeline's counts, already aggregated per shard batch, into the metrics.

The pipeline calls these once per shard batch, never per event: a prometheus-client call takes a lock and
costs about a microsecond, which the hot path cannot afford per event.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from flows.metrics import (
    ACTION_REASON_LABELS,
    ACTION_STATUSES,
    ACTIONS,
    BEFORE_COLLECT,
    CHANNEL_LABELS,
    CUSTOMERS,
    EVENT_LAG,
    EVENTS,
    EVICTED,
    GROUPS_DROPPED,
    INVALID,
    INVALID_LABELS,
    LATE,
    LATENCY,
    MOMENTS,
    RULE_LABELS,
    SHED,
    SHED_MOMENTS,
    TAG_STATES,
    TAG_TRANSITIONS,
    TAGS_OPEN,
    TARGETS_S,
    TYPE_LABELS,
    URGENCY_LABELS,
    URGENT_EARLY,
    URGENT_REORDERED,
    WATERMARK_LAG,
    WITHIN_TARGET,
    configure,
    label,
)

if TYPE_CHECKING:
    from state.outputs import Outputs
    from state.rules import RulePack

log = logging.getLogger("cx.metrics")

_lock = threading.Lock()
_customers: dict[str, int] = {}
_watermarks: dict[str, int] = {}
_open_tags = 0
# Labelled children by (metric, label values): prometheus-client's ``labels()`` validates and locks on every call,
# which cost more than the rest of a batch's accounting. Label values are bounded (``label``), and so is this.
_children: dict[tuple[object, tuple[str, ...]], Any] = {}


def _child(metric: Any, *values: str) -> Any:
    key = (metric, values)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*values)
    return child


def _watermark_lag_s() -> float:
    # Computed at scrape time, so a pipeline whose watermark stopped shows a growing lag.
    with _lock:
        newest = max(_watermarks.values(), default=0)
    return max(0.0, time.time() - newest / 1000) if newest > 0 else 0.0


WATERMARK_LAG.set_function(_watermark_lag_s)


# Valid events (and moments) counted since the registry was last read, per labelled child of the counter: a shard batch
# of a few dozen lines has a few dozen (channel, type) keys, and an ``inc`` each (a lock, a float add) cost more
# than the rest of its accounting. The batches add to plain ints under one lock; every read of the registry adds
# them to the counter first (``metrics.BEFORE_COLLECT``), so a scrape still sees every event accounted so far.
_pending_lock = threading.Lock()
_pending_events: dict[Any, int] = {}
_event_children: dict[tuple[str, str], Any] = {}  # admitted (channel, type) -> its child (bounded: admitted only)


def record_events(counts: Mapping[tuple[str, str], int]) -> None:
    """Count one batch's valid events.

    Args:
        counts: ``(channel, type) -> count``; unknown channels and types are counted as ``other``.
    """
    children, pending = _event_children, _pending_events
    with _pending_lock:
        for key, n in counts.items():
            child = children.get(key)
            if child is None:
                channel, etype = key
                child = _child(EVENTS, label(channel, CHANNEL_LABELS), label(etype, TYPE_LABELS))
                if channel in CHANNEL_LABELS and etype in TYPE_LABELS:
                    children[key] = child
            pending[child] = pending.get(child, 0) + n


def _add_pending() -> None:
    with _pending_lock:
        for child, n in _pending_events.items():
            if n:
                child.inc(n)
        _pending_events.clear()


BEFORE_COLLECT.hooks.append(_add_pending)


def record_invalid(counts: Mapping[str, int]) -> None:
    """Count one batch's dead-lettered inputs.

    Args:
        counts: ``reason -> count``: ``InvalidReason`` values, or dead-letter codes such as
            ``missing_field:customer_id`` (the field is dropped); others count as ``other``.
    """
    for reason, n in counts.items():
        if n:
            _child(INVALID, label(str(reason).split(":", 1)[0], INVALID_LABELS)).inc(n)


def record_late(n: int) -> None:
    """Count events later than the allowed lateness.

    Args:
        n: How many in this batch.
    """
    if n > 0:
        LATE.inc(n)


def record_evicted(n: int) -> None:
    """Count customers whose idle state was dropped.

    Args:
        n: How many in this batch.
    """
    if n > 0:
        EVICTED.inc(n)


SHED_WARN_INTERVAL_S = 60.0
_shed_lock = threading.Lock()
_shed_unwarned = [0, 0]  # customers with pending moments, pending moments: shed since the last warning
_shed_warned_at = [float("-inf")]


def record_shed(customers: int, pending_customers: int, pending_moments: int) -> None:
    """Count customers shed by the ``--max-customers`` cap; warn (at most once a minute) when moments went too.

    Args:
        customers: Customers shed in this batch.
        pending_customers: How many of them had pending moments.
        pending_moments: The pending moments dropped with them.
    """
    if customers <= 0:
        return
    if customers > pending_customers:
        SHED.labels("no").inc(customers - pending_customers)
    if pending_customers <= 0:
        return
    SHED.labels("yes").inc(pending_customers)
    SHED_MOMENTS.inc(pending_moments)
    with _shed_lock:
        _shed_unwarned[0] += pending_customers
        _shed_unwarned[1] += pending_moments
        now = time.monotonic()
        if now - _shed_warned_at[0] < SHED_WARN_INTERVAL_S:
            return
        n, m = _shed_unwarned
        _shed_unwarned[:] = [0, 0]
        _shed_warned_at[0] = now
    log.warning("--max-customers: %d customer(s) with pending moments were shed, dropping %d pending moment(s) "
                "(abandonments that will not fire); raise --max-customers (cx_shed_pending_moments_total)", n, m)


def record_moment(rule: str, urgency: str, latency_s: float, target_s: float | None = None) -> None:
    """Count one published moment and its detection latency (moments are rare next to events).

    Args:
        rule: Rule name of the configured pack (``<journey>.<kind>``); others count as ``other``.
        urgency: ``P1``…``P4``.
        latency_s: Publish wall time minus the moment's due time (clamped at 0).
        target_s: The urgency's target; None uses the configured one (no target: not counted as within).
    """
    with _pending_lock:
        _moment(rule, urgency, latency_s, target_s)


def _moment(rule: str, urgency: str, latency_s: float, target_s: float | None = None) -> None:
    # The caller holds _pending_lock: the counters are added when the registry is read, as the events' are.
    u = label(urgency, URGENCY_LABELS)
    latency_s = max(0.0, latency_s)
    rule_label = label(rule, RULE_LABELS)
    pending = _pending_events
    child = _child(MOMENTS, rule_label, u)
    pending[child] = pending.get(child, 0) + 1
    _child(LATENCY, rule_label, u).observe(latency_s)
    target = TARGETS_S.get(u) if target_s is None else target_s
    if target is not None and latency_s <= target:
        child = _child(WITHIN_TARGET, u)
        pending[child] = pending.get(child, 0) + 1


def record_actions(counts: Mapping[tuple[str, str, str], int]) -> None:
    """Count one batch's contact-policy decisions.

    Args:
        counts: ``(rule, status, reason) -> count``; status ``sent`` or ``suppressed``, reason a
            bounded code (``none`` or empty for sent ones).
    """
    for (rule, status, reason), n in counts.items():
        if n:
            _child(ACTIONS, label(rule, RULE_LABELS), label(status, ACTION_STATUSES),
                   label(reason or "none", ACTION_REASON_LABELS)).inc(n)


def record_tag_transitions(counts: Mapping[str, int]) -> None:
    """Count tag transitions and keep ``cx_tags_open`` (opened minus resolved/expired/removed).

    Args:
        counts: ``new state -> count``.
    """
    global _open_tags
    delta = 0
    for state, n in counts.items():
        if not n:
            continue
        s = label(state, TAG_STATES)
        _child(TAG_TRANSITIONS, s).inc(n)
        if s == "open":
            delta += n
        elif s in ("resolved", "expired", "removed"):
            delta -= n
    if delta:
        with _lock:
            # Clamped: after a restart, tags opened before it are closed without having been counted.
            _open_tags = max(0, _open_tags + delta)
            TAGS_OPEN.set(_open_tags)


def set_customers(shard: str, n: int) -> None:
    """Set how many customers one shard tracks; the gauge is the sum over this process's shards.

    Args:
        shard: Shard key.
        n: Customers it holds.
    """
    _customers[shard] = n  # one store: the gauge sums the shards when it is read


def _customers_total() -> float:
    return sum(list(_customers.values()))  # a copy: a worker may add a shard meanwhile


CUSTOMERS.set_function(_customers_total)


def observe_watermark(shard: str, watermark_ms: int) -> None:
    """Note a shard's watermark; ``cx_watermark_lag_seconds`` is wall time minus the newest one.

    Args:
        shard: Shard key.
        watermark_ms: Its event-time watermark (epoch ms; 0 = none yet).
    """
    if watermark_ms > 0:
        with _lock:
            _watermarks[shard] = watermark_ms


def observe_event_lag(seconds: float) -> None:
    """Record ingest time minus event time for one sampled event.

    Args:
        seconds: The lag (negative values, from clock skew, count as 0).
    """
    EVENT_LAG.observe(max(0.0, seconds))


def observe_outputs(key: str, out: Outputs, now_ms: int, pack: RulePack | None = None) -> None:
    """Account one shard batch after its records were written (publish time = ``now_ms``).

    Args:
        key: Shard key.
        out: The batch's records and counters.
        now_ms: Wall clock when the batch was published.
        pack: The rule pack (admits its rule names if ``configure`` was not called).
    """
    if pack is not None and not RULE_LABELS:
        configure(pack)
    record_events(out.events)
    record_invalid(out.invalid)
    record_late(out.late)
    if out.urgent_early:
        URGENT_EARLY.inc(out.urgent_early)
    if out.urgent_reordered:
        URGENT_REORDERED.inc(out.urgent_reordered)
    record_evicted(out.evicted)
    for rule, n in out.groups_dropped.items():
        GROUPS_DROPPED.labels(label(rule, RULE_LABELS)).inc(n)
    record_shed(out.shed, out.shed_pending, out.shed_moments)
    if out.moments:
        with _pending_lock:
            for m in out.moments:
                _moment(m["rule"], m["urgency"], (now_ms - m["due_ts"]) / 1000)
    if out.actions:
        decisions: dict[tuple[str, str, str], int] = {}
        for a in out.actions:
            k = (a["rule"], a["status"], a["reason"])
            decisions[k] = decisions.get(k, 0) + 1
        record_actions(decisions)
    if out.tags:
        states: dict[str, int] = {}
        for t in out.tags:
            states[t["state"]] = states.get(t["state"], 0) + 1
        record_tag_transitions(states)
    set_customers(key, out.customers)
    observe_watermark(key, out.watermark_ms)
    if out.events and out.max_ts_ms > 0:
        observe_event_lag((now_ms - out.max_ts_ms) / 1000)
