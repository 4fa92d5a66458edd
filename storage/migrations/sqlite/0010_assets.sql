-- The archiver's queue: one row per succeeded job with result URLs to copy into the asset store, written by the
-- job's succeeded write itself (so a crash cannot lose it). `items` is a JSON list, one entry per output:
-- {variant, index, url} and, once that copy is final, {key, bytes, content_type, sha256} or {error: {code, message}}.
-- Leased like jobs; `state` becomes 'done' in the transaction that adds the job's `output.assets`. Pruning a job
-- removes its row.
CREATE TABLE asset_archives (
    job_id          TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    items           TEXT NOT NULL,
    state           TEXT NOT NULL DEFAULT 'pending',
    attempts        INTEGER NOT NULL DEFAULT 0,
    succeeded_at    REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    lease_until     REAL,
    lease_owner     TEXT
);
CREATE INDEX asset_archives_due ON asset_archives (next_attempt_at) WHERE state = 'pending';
