"""What one batch of detection produces: records per output kind and counters for metrics."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Container
from typing import Any, Final

from state.events import Event, Invalid

# 16 KiB of original bytes: even when every byte becomes a 6-character JSON escape (``\\u0000``) the encoded
# record stays near 100 KiB, far below Kafka's default 1 MB message limit.
DEFAULT_DEAD_LETTER_MAX_BYTES: Final = 16 * 1024
# The largest allowed setting: 6 × 128 KiB plus the record's other fields still fits in 1 MB.
MAX_DEAD_LETTER_MAX_BYTES: Final = 128 * 1024
# A journey step row's fields: ``Outputs.step_rows`` holds the rows as tuples in this order, made dicts (``steps``,
# ``records``) only for what reads them (most events add a step row; JSONL does not write them by default).
STEP_FIELDS: Final = ("customer_id", "journey", "attempt_id", "step", "step_index", "entry", "channel", "event_id",
                      "ts")


def _text_or_base64(raw: bytes, cut: bool) -> tuple[str, str]:
    """Return ``(text, encoding)``: UTF-8 text when ``raw`` decodes, else base64.

    When ``raw`` was ``cut`` from a longer input, a multi-byte character split at the end is dropped and the
    rest still counts as text.
    """
    try:
        return raw.decode("utf-8"), "utf8"
    except UnicodeDecodeError as e:
        if cut and e.end == len(raw) and e.reason == "unexpected end of data" and len(raw) - e.start < 4:
            try:
                return raw[: e.start].decode("utf-8"), "utf8"
            except UnicodeDecodeError:
                pass
    return base64.b64encode(raw).decode("ascii"), "base64"


def dead_letter_record(inv: Invalid, source: str, partition: int, offset: int, now_ms: int,
                       max_bytes: int = DEFAULT_DEAD_LETTER_MAX_BYTES) -> dict[str, Any]:
    """Return the dead-letter record for an invalid input, keeping at most ``max_bytes`` of the original bytes.

    Every output (Kafka, ClickHouse, JSONL) gets this same bounded record, so no input of any size can make a
    dead letter that an output refuses.

    Args:
        inv: The rejection.
        source: Input name, e.g. ``kafka:cx.events``.
        partition: Source partition.
        offset: Position in the partition.
        now_ms: Wall clock.
        max_bytes: Original bytes kept in ``raw``.

    Returns:
        A dead-letter record (schema v1); ``raw`` is UTF-8 text or base64 of the first ``max_bytes`` bytes,
        ``raw_len`` the original length, ``raw_sha256`` the hex SHA-256 of the original bytes and
        ``truncated`` whether ``raw`` holds less than the original.
    """
    data = inv.raw
    truncated = len(data) > max_bytes
    raw, enc = _text_or_base64(data[:max_bytes] if truncated else data, truncated)
    return {
        "schema": 1,
        "reason": inv.code,
        "detail": inv.detail,
        "raw": raw,
        "raw_encoding": enc,
        "raw_len": len(data),
        "raw_sha256": hashlib.sha256(data).hexdigest(),
        "truncated": truncated,
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
        "step_rows",
        "dead",
        "context",
        "feedback",
        "late_events",
        "inputs",
        "events",
        "invalid",
        "late",
        "urgent_early",
        "urgent_reordered",
        "evicted",
        "groups_dropped",
        "shed",
        "shed_pending",
        "shed_moments",
        "shed_ids",
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
        self.step_rows: list[tuple[Any, ...]] = []  # journey step rows, in STEP_FIELDS order
        self.dead: list[dict[str, Any]] = []
        self.context: list[dict[str, Any]] = []
        self.feedback: list[dict[str, Any]] = []
        self.late_events: list[dict[str, Any]] = []  # events applied behind the watermark (also counted in `late`)
        # The valid input events read (``Shard(keep_events=True)``): stored for explaining moments (``event`` kind).
        self.inputs: list[Event] = []
        self.events: dict[tuple[str, str], int] = {}  # (channel, type) -> count
        self.invalid: dict[str, int] = {}  # reason -> count
        self.late = 0
        # Live, the urgent lane (state.urgent): events applied ahead of the watermark for an urgent rule, and
        # events that arrived behind such an early application (applied out of order: live may differ from replay).
        self.urgent_early = 0
        self.urgent_reordered = 0
        self.evicted = 0
        self.groups_dropped: dict[str, int] = {}  # generic rule -> `per` groups dropped by its `max_groups` cap
        # Customers shed by the --max-customers cap (also counted in `evicted`), those of them with pending
        # moments, and how many pending moments (abandonments not yet due) went with them.
        self.shed = 0
        self.shed_pending = 0
        self.shed_moments = 0
        # The ids shed (a rare path): a look-up of one seen again merges what its shed record held (flows.recent).
        self.shed_ids: list[str] = []
        self.customers = 0
        self.watermark_ms = 0
        self.max_ts_ms = 0

    def reject(self, inv: Invalid, source: str, partition: int, offset: int, now_ms: int, max_bytes: int) -> None:
        """Count an invalid input by its reason and add its dead-letter record (see ``dead_letter_record``)."""
        self.invalid[inv.reason.value] = self.invalid.get(inv.reason.value, 0) + 1
        self.dead.append(dead_letter_record(inv, source, partition, offset, now_ms, max_bytes))

    def records(self, kinds: Container[str] | None = None) -> list[tuple[str, list[Any]]]:
        """Return ``(kind, rows)`` pairs for the kinds that have rows (``event`` rows are ``Event`` tuples).

        Journey step rows are made dicts here, and only when ``kinds`` (None: every kind) holds them.
        """
        steps: list[Any] = self.step_rows
        if steps:
            steps = [_step_record(r) for r in steps] if kinds is None or "journey_step" in kinds else []
        pairs = (
            ("moment", self.moments),
            ("action", self.actions),
            ("tag", self.tags),
            ("journey_state", self.states),
            ("journey_step", steps),
            ("dead_letter", self.dead),
            ("context", self.context),
            ("feedback", self.feedback),
            ("late", self.late_events),
            ("event", self.inputs),
        )
        return [(k, rows) for k, rows in pairs if rows]

    @property
    def steps(self) -> list[dict[str, Any]]:
        """The journey step rows as records (dicts, made at each call from ``step_rows``)."""
        return [_step_record(r) for r in self.step_rows]

    def __bool__(self) -> bool:
        return bool(self.moments or self.actions or self.tags or self.states or self.step_rows or self.dead
                    or self.context or self.feedback or self.late_events or self.events or self.invalid or self.late
                    or self.evicted or self.urgent_early or self.urgent_reordered or self.inputs)


def _step_record(r: tuple[Any, ...]) -> dict[str, Any]:
    return {"customer_id": r[0], "journey": r[1], "attempt_id": r[2], "step": r[3], "step_index": r[4],
            "entry": r[5], "channel": r[6], "event_id": r[7], "ts": r[8]}
