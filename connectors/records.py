"""The output record kinds, each defined once: fields, schema version, JSONL file, Kafka topic, ClickHouse table.

The records themselves are built in state/ (dicts, for speed); this is what every writer knows about them.
The JSONL writer takes its file names from here, the Kafka writer its kinds and default topics, the ClickHouse
sink its tables, columns and (at start-up) the column types it checks the tables against; tests/unit/test_docs.py
holds docs/moments-and-outputs.md to the same definitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# ClickHouse column types, named once.
_STR = "String"
_LC = "LowCardinality(String)"
_I64 = "Int64"
_U8 = "UInt8"
_U32 = "UInt32"
_U64 = "UInt64"
_STRS = "Array(String)"
_LCS = "Array(LowCardinality(String))"
_STEP_TIMES = "Array(Tuple(step LowCardinality(String), ts Int64))"
_FAILURES = "Array(Tuple(ts Int64, step LowCardinality(String), reason String, error_code String))"

SCHEMA_VERSION = 1

DEFAULT_INPUT_TOPICS: Mapping[str, str] = {"events": "cx.events", "feedback": "cx.feedback"}


@dataclass(frozen=True, slots=True)
class RecordKind:
    """One output record kind and where it goes.

    Attributes:
        kind: The kind's name, as the dataflow tags its records (``moment``, ``tag``…).
        fields: Every field of the record, in the order state/ builds it, with its ClickHouse column type
            (None: the field is not stored). Stored fields are columns of the same name, in this order.
        schema_version: The record's ``schema`` field value; None for records without one.
        jsonl_file: File name in a ``jsonl:DIR`` directory.
        jsonl_default: Whether ``jsonl:DIR`` writes this kind (the others only on request).
        topic: Default Kafka topic (``CX_TOPIC_<KIND>`` overrides it); None: not published.
        table: ClickHouse table; empty: not stored.
        json_fields: Fields holding a dict, stored as JSON text in a ``String`` column.
        compact: Rows are tuples in field order (not dicts), inserted as ``JSONCompactEachRow``; a null is
            stored as the column's default.
    """

    kind: str
    fields: tuple[tuple[str, str | None], ...]
    schema_version: int | None
    jsonl_file: str
    jsonl_default: bool = False
    topic: str | None = None
    table: str = ""
    json_fields: frozenset[str] = frozenset()
    compact: bool = False

    @property
    def names(self) -> tuple[str, ...]:
        """Every field name, in record order."""
        return tuple(name for name, _ in self.fields)

    @property
    def columns(self) -> tuple[str, ...]:
        """The stored fields (ClickHouse columns), in insert order; empty when the kind has no table."""
        return tuple(name for name, typ in self.fields if typ is not None) if self.table else ()

    @property
    def column_types(self) -> dict[str, str]:
        """Column name -> ClickHouse type, for the start-up check of the table."""
        return {name: typ for name, typ in self.fields if typ is not None} if self.table else {}


KINDS: Mapping[str, RecordKind] = {k.kind: k for k in (
    RecordKind(
        "moment",
        (("schema", _U8), ("moment_id", _STR), ("customer_id", _STR), ("rule", _LC), ("rule_version", _U32),
         ("kind", _LC), ("journey", _LC), ("step", _LC), ("urgency", _LC), ("due_ts", _I64), ("detected_at", _I64),
         ("evidence", _STRS), ("attrs", _STR), ("action", _LC)),
        SCHEMA_VERSION, "moments.jsonl", jsonl_default=True, topic="cx.moments", table="moments",
        json_fields=frozenset({"attrs"}),
    ),
    RecordKind(
        "action",
        (("schema", _U8), ("moment_id", _STR), ("customer_id", _STR), ("rule", _LC), ("rule_version", _U32),
         ("kind", _LC), ("journey", _LC), ("urgency", _LC), ("status", _LC), ("reason", _LC), ("channel", _LC),
         ("template", _LC), ("control", _U8), ("suppressed_channels", _STRS), ("due_ts", _I64),
         ("send_ts", _I64), ("detected_at", _I64)),
        SCHEMA_VERSION, "actions.jsonl", jsonl_default=True, topic="cx.actions", table="actions",
    ),
    RecordKind(
        "tag",
        (("schema", _U8), ("customer_id", _STR), ("tag", _LC), ("rule", _LC), ("rule_version", _U32),
         ("journey", _LC), ("state", _LC),
         ("outcome", _LC), ("moment_id", _STR), ("opened_ts", _I64), ("ts", _I64), ("version", _U64)),
        SCHEMA_VERSION, "tags.jsonl", jsonl_default=True, topic="cx.tags", table="customer_tags",
    ),
    RecordKind(
        "context",
        (("schema", _U8), ("moment_id", _STR), ("customer_id", _STR), ("journey", _LC),
         ("contact_event_id", _STR), ("contact_ts", _I64), ("open_tags", _LCS), ("attempt_id", _STR),
         ("recent_steps", _LCS), ("channels", _LCS), ("fails", _U32), ("last_step", _LC), ("last_ts", _I64),
         ("status", _LC), ("stage", _LC), ("entries", _LCS), ("step_times", _STEP_TIMES), ("failures", _FAILURES),
         ("last_action_ts", _I64), ("last_action_channel", _LC)),
        SCHEMA_VERSION, "context.jsonl", jsonl_default=True, topic="cx.context", table="handoff_contexts",
    ),
    RecordKind(
        "dead_letter",
        (("schema", _U8), ("reason", _LC), ("detail", _STR), ("raw", _STR), ("raw_encoding", _LC),
         ("raw_len", _U64), ("raw_sha256", _STR), ("truncated", _U8), ("source", _LC), ("partition", "Int32"),
         ("offset", _I64), ("received_at", _I64)),
        SCHEMA_VERSION, "deadletter.jsonl", jsonl_default=True, topic="cx.deadletter", table="dead_letters",
    ),
    RecordKind(
        "journey_state",
        (("schema", _U8), ("customer_id", _STR), ("journey", _LC), ("attempt_id", _STR), ("status", _LC),
         ("stage", _LC), ("last_step", _LC), ("last_ts", _I64), ("steps_reached", _LCS), ("fired", _LCS),
         ("version", _U64)),
        SCHEMA_VERSION, "journey_states.jsonl", table="journey_states",
    ),
    RecordKind(
        "journey_step",
        (("customer_id", _STR), ("journey", _LC), ("attempt_id", _STR), ("step", _LC), ("step_index", "UInt16"),
         ("entry", _LC), ("channel", _LC), ("event_id", _STR), ("ts", _I64)),
        None, "journey_steps.jsonl", table="journey_steps",
    ),
    RecordKind(
        "feedback",
        (("schema", _U8), ("moment_id", _STR), ("customer_id", _STR), ("outcome", _LC), ("ts", _I64)),
        SCHEMA_VERSION, "feedback.jsonl", table="feedback",
    ),
    RecordKind(
        "late",
        (("schema", _U8), ("event_id", _STR), ("customer_id", _STR), ("channel", _LC), ("type", _LC),
         ("ts", _I64), ("watermark", _I64), ("late_ms", _I64), ("source", _LC), ("partition", "Int32"),
         ("offset", _I64), ("received_at", _I64)),
        SCHEMA_VERSION, "late.jsonl", jsonl_default=True, table="late_events",
    ),
    RecordKind(
        "event",
        (("event_id", _STR), ("customer_id", _STR), ("ts", _I64), ("channel", _LC), ("type", _LC),
         ("journey", _LC), ("step", _LC), ("entry", _LC), ("attrs", _STR), ("origin", _I64)),
        None, "events.jsonl", table="events", json_fields=frozenset({"attrs"}), compact=True,
    ),
)}

# Derived views, for the writers.
STORED: Mapping[str, RecordKind] = {k: r for k, r in KINDS.items() if r.table}
PUBLISHED: tuple[str, ...] = tuple(k for k, r in KINDS.items() if r.topic is not None)
DEFAULT_OUTPUT_TOPICS: Mapping[str, str] = {k: r.topic for k, r in KINDS.items() if r.topic is not None}
JSONL_FILES: Mapping[str, str] = {k: r.jsonl_file for k, r in KINDS.items()}
JSONL_DEFAULT: tuple[str, ...] = tuple(k for k, r in KINDS.items() if r.jsonl_default)
# Every default topic, inputs first: settings (CX_TOPIC_<NAME>) and metric labels read this.
DEFAULT_TOPICS: Mapping[str, str] = {**DEFAULT_INPUT_TOPICS, **DEFAULT_OUTPUT_TOPICS}
