-- Reelay schema v1: API keys, jobs (with outbox and polling columns), the event log,
-- webhook receipts and idempotency keys. JSON columns are TEXT; an event's job snapshot is
-- stored as the exact bytes sent to SSE subscribers.

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    secret_hash BLOB NOT NULL,
    created_at  TEXT NOT NULL,
    revoked_at  TEXT
);

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    api_key_id        TEXT NOT NULL REFERENCES api_keys (id),
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    status            TEXT NOT NULL,
    stage             INTEGER NOT NULL,
    input             TEXT NOT NULL,
    metadata          TEXT NOT NULL,
    provider_task_id  TEXT,
    output            TEXT,
    error             TEXT,
    cost              TEXT NOT NULL,
    callback_token    TEXT NOT NULL,
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    completed_at      TEXT,
    deadline_at       REAL NOT NULL,
    dispatch_state    TEXT NOT NULL,
    dispatch_attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at   REAL,
    next_poll_at      REAL,
    poll_attempts     INTEGER NOT NULL DEFAULT 0,
    lease_until       REAL
);

CREATE INDEX jobs_by_key ON jobs (api_key_id, id DESC);
CREATE INDEX jobs_to_dispatch ON jobs (next_attempt_at) WHERE dispatch_state IN ('pending', 'sending');
CREATE INDEX jobs_to_poll ON jobs (next_poll_at) WHERE stage IN (1, 2);
CREATE UNIQUE INDEX jobs_by_provider_task ON jobs (provider, provider_task_id)
    WHERE provider_task_id IS NOT NULL;

CREATE TABLE events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL,
    api_key_id TEXT NOT NULL,
    type       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    job        BLOB NOT NULL
);

CREATE INDEX events_by_key ON events (api_key_id, id);
CREATE INDEX events_by_job ON events (job_id, id);

CREATE TABLE webhook_receipts (
    provider    TEXT NOT NULL,
    receipt_key TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (provider, receipt_key)
);

CREATE TABLE idempotency_keys (
    api_key_id   TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    job_id       TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
