"""What one batch of detection produces: records per output kind and counters for metrics."""

from __future__ import annotations

import base64
from typing import Any

from state.events import Invalid


def dead_letter_record(inv: Invalid, source: str, partition: int, offset: int, now_ms: int) -> dict[str, Any]:
    """Return the dead-letter record for an invalid input, keeping the original bytes.

    Args:
        inv: The rejection.
        source: Input name, e.g. ``kafka:cx.events``.
        partition: Source partition.
        offset: Position in the partition.
        now_ms: Wall clock.

    Returns:
        A dead-letter record (schema v1); ``raw`` is UTF-8 text or base64.
    """
    try:
        raw, enc = inv.raw.decode("utf-8"), "utf8"
    except UnicodeDecodeError:
        raw, enc = base64.b64encode(inv.raw).decode("ascii"), "base64"
    return {
        "schema": 1,
        "reason": inv.code,
        "detail": inv.detail,
        "raw": raw,
        "raw_encoding": enc,
        "source": source,
        "partition": partition,
        "offset": offset,
        "received_at": now_ms,
    }


class Outputs:
    """Records and counters of one batch; the flow turns them into sink writes and metrics."""

    __slots__ = (
        "shard",
        "moments",
        "actions",
        "tags",
        "states",
        "steps",
        "dead",
        "context",
        "feedback",
        "events",
        "invalid",
        "late",
        "evicted",
        "shed",
        "shed_pending",
        "shed_moments",
        "customers",
        "watermark_ms",
        "max_ts_ms",
    )

    def __init__(self, shard: str = "") -> None:
        self.shard = shard
        self.moments: list[dict[str, Any]] = []
        self.actions: list[dict[str, Any]] = []  # one contact-policy decision per moment
        self.tags: list[dict[str, Any]] = []
        self.states: list[dict[str, Any]] = []
        self.steps: list[dict[str, Any]] = []
        self.dead: list[dict[str, Any]] = []
        self.context: list[dict[str, Any]] = []
        self.feedback: list[dict[str, Any]] = []
        self.events: dict[tuple[str, str], int] = {}  # (channel, type) -> count
        self.invalid: dict[str, int] = {}  # reason -> count
        self.late = 0
        self.evicted = 0
        # Customers shed by the --max-customers cap (also counted in `evicted`), those of them with pending
        # moments, and how many pending moments (abandonments not yet due) went with them.
        self.shed = 0
        self.shed_pending = 0
        self.shed_moments = 0
        self.customers = 0
        self.watermark_ms = 0
        self.max_ts_ms = 0

    def records(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """Return ``(kind, rows)`` pairs for the kinds that have rows."""
        pairs = (
            ("moment", self.moments),
            ("action", self.actions),
            ("tag", self.tags),
            ("journey_state", self.states),
            ("journey_step", self.steps),
            ("dead_letter", self.dead),
            ("context", self.context),
            ("feedback", self.feedback),
        )
        return [(k, rows) for k, rows in pairs if rows]

    def __bool__(self) -> bool:
        return bool(self.moments or self.actions or self.tags or self.states or self.steps or self.dead or self.context
                    or self.feedback or self.events or self.invalid or self.late or self.evicted)
