-- Dead letters keep a bounded prefix of the original bytes (`--dead-letter-max-bytes`) with the original
-- length, its SHA-256 and whether it was cut. Existing `dead_letters` tables get the columns of 001_schema.sql,
-- in the same order (a no-op on tables created from it). Idempotent; no semicolons inside statements.
ALTER TABLE dead_letters
    ADD COLUMN IF NOT EXISTS raw_len UInt64 AFTER raw_encoding,
    ADD COLUMN IF NOT EXISTS raw_sha256 String AFTER raw_len,
    ADD COLUMN IF NOT EXISTS truncated UInt8 AFTER raw_sha256;
