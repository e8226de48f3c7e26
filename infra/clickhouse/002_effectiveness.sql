-- Rule effectiveness (`moments report rules`): per-moment tag history and one outcome row per decided moment.
-- Applied after 001_schema.sql, on every sink start and whenever the sink re-creates a missing table,
-- so every statement is idempotent. No semicolons inside statements: the loader splits on them.

-- Existing `actions` tables from before the contact-policy record: bring them to the columns of
-- 001_schema.sql, in the same order (a no-op on tables created from it).
ALTER TABLE actions
    ADD COLUMN IF NOT EXISTS kind LowCardinality(String) AFTER rule,
    ADD COLUMN IF NOT EXISTS template LowCardinality(String) AFTER channel,
    ADD COLUMN IF NOT EXISTS suppressed_channels Array(String) AFTER control,
    ADD COLUMN IF NOT EXISTS send_ts Int64 AFTER due_ts,
    ADD COLUMN IF NOT EXISTS detected_at Int64 AFTER send_ts,
    DROP COLUMN IF EXISTS ts;

-- customer_tags keeps one row per (customer_id, tag) after merges, so a customer's earlier moments
-- of the same rule lose their outcome there. This keeps every transition, per moment.
CREATE TABLE IF NOT EXISTS tag_history
(
    schema UInt8,
    customer_id String,
    tag LowCardinality(String),
    rule LowCardinality(String),
    journey LowCardinality(String),
    state LowCardinality(String),
    outcome LowCardinality(String),
    moment_id String,
    opened_ts Int64,
    ts Int64,
    version UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (rule, moment_id, version);

-- Filled on every insert into customer_tags (rows written before this view existed are not copied).
-- Explicit columns: a column added to customer_tags later must not break its inserts. If tag_history
-- is dropped, inserts into customer_tags fail with UNKNOWN_TABLE and write nothing, so the sink
-- re-creates the schema and retries: no transition is lost.
CREATE MATERIALIZED VIEW IF NOT EXISTS tag_history_mv TO tag_history AS
SELECT schema, customer_id, tag, rule, journey, state, outcome, moment_id, opened_ts, ts, version
FROM customer_tags;

-- rule_outcomes, one row per decided moment, is defined in 004_rule_versions.sql.
