-- Look-up and explanation (issue 17). Idempotent, like the files before it.

-- Hand-off contexts (`context` records, also published on cx.context): the latest per customer is what a
-- customer look-up shows. One row per hand-off moment; a replay writes the same row again.
CREATE TABLE IF NOT EXISTS handoff_contexts
(
    schema UInt8,
    moment_id String,
    customer_id String,
    journey LowCardinality(String),
    contact_event_id String,
    contact_ts Int64,
    open_tags Array(LowCardinality(String)),
    attempt_id String,
    recent_steps Array(LowCardinality(String)),
    channels Array(LowCardinality(String)),
    fails UInt32,
    last_step LowCardinality(String),
    last_ts Int64,
    status LowCardinality(String),
    stage LowCardinality(String),
    entries Array(LowCardinality(String)),
    step_times Array(Tuple(step LowCardinality(String), ts Int64)),
    failures Array(Tuple(ts Int64, step LowCardinality(String), reason String, error_code String)),
    last_action_ts Int64,
    last_action_channel LowCardinality(String)
)
ENGINE = ReplacingMergeTree
ORDER BY (customer_id, contact_ts, moment_id)
SETTINGS non_replicated_deduplication_window = 1000;

-- The valid input events (`event` rows), kept 7 days after they were stored: a moment's evidence events for
-- `GET /v1/moments/{id}` and `moments explain`. Evidence reaches back at most a rule's window (a day for
-- `interested`), but a moment is explained later than it fires: a week covers the usual questions. Change it
-- with `ALTER TABLE events MODIFY TTL stored_at + INTERVAL N DAY`. By the time stored, not the event time: a
-- replay of last year's files must still explain its moments. Not partitioned: one batch may hold events of
-- any date (2000..2100), and a partition per day would refuse such an insert. Ordered by customer: an
-- explanation reads one customer's rows.
CREATE TABLE IF NOT EXISTS events
(
    event_id String,
    customer_id String,
    ts Int64,
    channel LowCardinality(String),
    type LowCardinality(String),
    journey LowCardinality(String),
    step LowCardinality(String),
    entry LowCardinality(String),
    attrs String,
    origin Int64,
    stored_at DateTime DEFAULT now()
)
ENGINE = MergeTree
ORDER BY (customer_id, ts, event_id)
TTL stored_at + INTERVAL 7 DAY;

-- A customer look-up reads one customer's moments, decisions and steps, an explanation one moment: tables
-- ordered by rule or journey skip the granules that cannot hold the id instead of reading them all.
ALTER TABLE moments ADD INDEX IF NOT EXISTS lookup_customer customer_id TYPE bloom_filter GRANULARITY 1;
ALTER TABLE moments ADD INDEX IF NOT EXISTS lookup_moment moment_id TYPE bloom_filter GRANULARITY 1;
ALTER TABLE actions ADD INDEX IF NOT EXISTS lookup_customer customer_id TYPE bloom_filter GRANULARITY 1;
ALTER TABLE journey_steps ADD INDEX IF NOT EXISTS lookup_customer customer_id TYPE bloom_filter GRANULARITY 1;
