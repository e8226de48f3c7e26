-- cx-moments ClickHouse schema (DESIGN.md §5). Applied by the sink on start-up; idempotent.
-- Times are Int64 epoch milliseconds, as in the JSON records. Replacing tables collapse
-- replays (moment ids are deterministic) and keep the latest version of a state: read them
-- with FINAL (or argMax by version) for exact answers.
-- non_replicated_deduplication_window: an insert retried after a partial failure re-sends
-- the same blocks; ClickHouse drops the blocks it already has, so even the plain MergeTree
-- (dead_letters) stores each row once. Identical blocks are identical rows, never news.

CREATE TABLE IF NOT EXISTS moments
(
    schema UInt8,
    moment_id String,
    customer_id String,
    rule LowCardinality(String),
    rule_version UInt32,
    kind LowCardinality(String),
    journey LowCardinality(String),
    step LowCardinality(String),
    urgency LowCardinality(String),
    due_ts Int64,
    detected_at Int64,
    evidence Array(String),
    attrs String,
    action LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (rule, moment_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS customer_tags
(
    schema UInt8,
    customer_id String,
    tag LowCardinality(String),
    rule LowCardinality(String),
    rule_version UInt32,
    journey LowCardinality(String),
    state LowCardinality(String),
    outcome LowCardinality(String),
    moment_id String,
    opened_ts Int64,
    ts Int64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (customer_id, tag)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS journey_states
(
    schema UInt8,
    customer_id String,
    journey LowCardinality(String),
    attempt_id String,
    status LowCardinality(String),
    stage LowCardinality(String),
    last_step LowCardinality(String),
    last_ts Int64,
    steps_reached Array(LowCardinality(String)),
    fired Array(LowCardinality(String)),
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (customer_id, journey)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS journey_steps
(
    customer_id String,
    journey LowCardinality(String),
    attempt_id String,
    step LowCardinality(String),
    step_index UInt16,
    entry LowCardinality(String),
    channel LowCardinality(String),
    event_id String,
    ts Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (journey, step, customer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- One contact-policy decision per moment: status sent | suppressed | control (hold-out).
CREATE TABLE IF NOT EXISTS actions
(
    schema UInt8,
    moment_id String,
    customer_id String,
    rule LowCardinality(String),
    rule_version UInt32,
    kind LowCardinality(String),
    journey LowCardinality(String),
    urgency LowCardinality(String),
    status LowCardinality(String),
    reason LowCardinality(String),
    channel LowCardinality(String),
    template LowCardinality(String),
    control UInt8,
    suppressed_channels Array(String),
    due_ts Int64,
    send_ts Int64,
    detected_at Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (rule, moment_id)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS dead_letters
(
    schema UInt8,
    reason LowCardinality(String),
    detail String,
    raw String,
    raw_encoding LowCardinality(String),
    raw_len UInt64,
    raw_sha256 String,
    truncated UInt8,
    source LowCardinality(String),
    partition Int32,
    offset Int64,
    received_at Int64
)
ENGINE = MergeTree
ORDER BY received_at
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS feedback
(
    schema UInt8,
    moment_id String,
    customer_id String,
    outcome LowCardinality(String),
    ts Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (moment_id, outcome, ts)
SETTINGS non_replicated_deduplication_window = 1000;

-- Events applied behind the watermark (`late` records): an event replayed after a restart is the same row.
CREATE TABLE IF NOT EXISTS late_events
(
    schema UInt8,
    event_id String,
    customer_id String,
    channel LowCardinality(String),
    type LowCardinality(String),
    ts Int64,
    watermark Int64,
    late_ms Int64,
    source LowCardinality(String),
    partition Int32,
    offset Int64,
    received_at Int64
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, event_id)
SETTINGS non_replicated_deduplication_window = 1000;
