-- Rule versions (issue 16): moments, decisions and tags carry the version of the rule pack that fired
-- them, and rule_outcomes splits by it so that a changed rule is judged on its own sample. Rows written
-- before this read as version 0. Idempotent, like the files before it.

ALTER TABLE moments ADD COLUMN IF NOT EXISTS rule_version UInt32 AFTER rule;
ALTER TABLE actions ADD COLUMN IF NOT EXISTS rule_version UInt32 AFTER rule;
ALTER TABLE customer_tags ADD COLUMN IF NOT EXISTS rule_version UInt32 AFTER rule;

-- One row per decided moment: its contact-policy decision and the final state of its tag.
-- state/outcome: the transition with the highest version ('' when the moment has no tag).
-- resolved_ts: ts of the first transition into `resolved` when the final state is resolved, else 0.
-- success: 1 when the tag was resolved as recovered or converted. Sent vs control is the fair
-- comparison: control moments passed every eligibility check as sent ones did.
CREATE OR REPLACE VIEW rule_outcomes AS
SELECT
    a.moment_id AS moment_id,
    a.customer_id AS customer_id,
    a.rule AS rule,
    a.rule_version AS rule_version,
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
    SELECT moment_id, customer_id, rule, rule_version, journey, urgency, due_ts, status, reason, control, channel
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
