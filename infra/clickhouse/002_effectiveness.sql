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

-- One row per decided moment: its contact-policy decision and the final state of its tag.
-- state/outcome: the transition with the highest version ('' when the moment has no tag).
-- resolved_ts: ts of the first transition into `resolved` when the final state is resolved, else 0.
-- success: 1 when the tag was resolved as recovered or converted. Sent vs control is the fair
-- comparison: control moments passed every eligibility check as sent ones did.
CREATE VIEW IF NOT EXISTS rule_outcomes AS
SELECT
    a.moment_id AS moment_id,
    a.customer_id AS customer_id,
    a.rule AS rule,
    a.journey AS journey,
    a.urgency AS urgency,
    a.due_ts AS due_ts,
    a.status AS status,
    a.reason AS reason,
    a.control AS control,
    a.channel AS channel,
    t.final_state AS state,
    t.final_outcome AS outcome,
    if(t.final_state = 'resolved', t.first_resolved_ts, 0) AS resolved_ts,
    toUInt8(t.final_state = 'resolved' AND t.final_outcome IN ('recovered', 'converted')) AS success
FROM
(
    SELECT moment_id, customer_id, rule, journey, urgency, due_ts, status, reason, control, channel
    FROM actions FINAL
) AS a
LEFT JOIN
(
    -- Aliases differ from the column names: ClickHouse would resolve `state` in argMinIf to the alias.
    SELECT
        moment_id,
        argMax(state, version) AS final_state,
        argMax(outcome, version) AS final_outcome,
        argMinIf(ts, version, state = 'resolved') AS first_resolved_ts
    FROM tag_history
    GROUP BY moment_id
) AS t ON a.moment_id = t.moment_id;
