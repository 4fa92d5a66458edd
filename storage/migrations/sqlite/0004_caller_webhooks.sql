-- Caller webhooks: a job's own receiver (webhook_url, webhook_events), each key's signing secret and endpoints,
-- and the durable delivery queue with its attempt log. A delivery is inserted in the transaction of the event
-- it carries; its body is built from that event when it is sent (a webhook.test keeps its own payload).
-- Signing secrets are kept as they are: Reelay signs with them, so they cannot be stored as hashes.

ALTER TABLE jobs ADD COLUMN webhook_url TEXT;
ALTER TABLE jobs ADD COLUMN webhook_events TEXT;  -- a JSON list of event types; NULL when webhook_url is

CREATE TABLE webhook_secrets (
    api_key_id          TEXT PRIMARY KEY REFERENCES api_keys (id),
    secret              TEXT NOT NULL,
    previous            TEXT,
    previous_expires_at REAL
);

CREATE TABLE webhook_endpoints (
    id                  TEXT PRIMARY KEY,
    api_key_id          TEXT NOT NULL REFERENCES api_keys (id),
    url                 TEXT NOT NULL,
    events              TEXT NOT NULL,  -- a JSON list of event types, or ["*"]
    description         TEXT NOT NULL,
    secret              TEXT NOT NULL,
    previous            TEXT,
    previous_expires_at REAL,
    disabled            INTEGER NOT NULL DEFAULT 0,
    disabled_reason     TEXT,
    failing_since       REAL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);

CREATE INDEX webhook_endpoints_by_key ON webhook_endpoints (api_key_id, created_at);

CREATE TABLE webhook_deliveries (
    id              TEXT PRIMARY KEY,
    api_key_id      TEXT NOT NULL,
    target          TEXT NOT NULL,
    url             TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    status          TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    job_id          TEXT,
    endpoint_id     TEXT,
    event_id        INTEGER,
    payload         BLOB,
    attempts        INTEGER NOT NULL DEFAULT 0,
    round_attempts  INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    last_status     INTEGER,
    lease_until     REAL
);

-- Covering: a claim reads due, unleased deliveries of the receivers that have room from this index alone.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id, target, lease_until)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_by_job ON webhook_deliveries (job_id, id) WHERE job_id IS NOT NULL;
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, status, id)
    WHERE endpoint_id IS NOT NULL;
-- webhook.test deliveries (the only ones without a job), for the prune of old ones.
CREATE INDEX webhook_deliveries_tests ON webhook_deliveries (created_at) WHERE job_id IS NULL;

CREATE TABLE webhook_attempts (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id   TEXT NOT NULL,
    attempted_at  TEXT NOT NULL,
    duration_ms   REAL NOT NULL,
    status_code   INTEGER,
    response_body TEXT,
    error         TEXT
);

CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, id);
