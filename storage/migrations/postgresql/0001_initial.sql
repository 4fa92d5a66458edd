-- Reelay schema v1 (the meaning of sqlite/0001_initial.sql): API keys, jobs (with outbox and polling columns),
-- the event log, webhook receipts and idempotency keys.
-- Timestamps stay ISO-8601 UTC text, so records read back equal to what was written, as on SQLite.
-- Text that is compared or sorted uses COLLATE "C": byte order, like SQLite, whatever the database's locale.
-- JSON the store looks inside (metadata filters, cost sums) is jsonb; JSON it only keeps is json, stored verbatim.
-- An event's job snapshot is bytea: the exact bytes sent to SSE subscribers.

CREATE TABLE api_keys (
    id          text COLLATE "C" PRIMARY KEY,
    name        text NOT NULL,
    secret_hash bytea NOT NULL,
    created_at  text COLLATE "C" NOT NULL,
    revoked_at  text COLLATE "C"
);

CREATE TABLE jobs (
    id                text COLLATE "C" PRIMARY KEY,
    api_key_id        text COLLATE "C" NOT NULL REFERENCES api_keys (id),
    model             text COLLATE "C" NOT NULL,
    provider          text COLLATE "C" NOT NULL,
    status            text COLLATE "C" NOT NULL,
    stage             smallint NOT NULL,
    input             json NOT NULL,
    metadata          jsonb NOT NULL,
    provider_task_id  text COLLATE "C",
    output            json,
    error             json,
    cost              jsonb NOT NULL,
    callback_token    text COLLATE "C" NOT NULL,
    created_at        text COLLATE "C" NOT NULL,
    updated_at        text COLLATE "C" NOT NULL,
    completed_at      text COLLATE "C",
    deadline_at       double precision NOT NULL,
    dispatch_state    text COLLATE "C" NOT NULL,
    dispatch_attempts integer NOT NULL DEFAULT 0,
    next_attempt_at   double precision,
    next_poll_at      double precision,
    poll_attempts     integer NOT NULL DEFAULT 0,
    lease_until       double precision
);

CREATE INDEX jobs_by_key ON jobs (api_key_id, id DESC);
CREATE INDEX jobs_to_dispatch ON jobs (next_attempt_at) WHERE dispatch_state IN ('pending', 'sending');
CREATE INDEX jobs_to_poll ON jobs (next_poll_at) WHERE stage IN (1, 2);
CREATE UNIQUE INDEX jobs_by_provider_task ON jobs (provider, provider_task_id)
    WHERE provider_task_id IS NOT NULL;

-- Ids come from the identity sequence after the writer took the event lock (see storage/postgres.py), so
-- they are committed in increasing order. CACHE 1 (the default) keeps them increasing across sessions.
CREATE TABLE events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id     text COLLATE "C" NOT NULL,
    api_key_id text COLLATE "C" NOT NULL,
    type       text COLLATE "C" NOT NULL,
    created_at text COLLATE "C" NOT NULL,
    job        bytea NOT NULL
);

CREATE INDEX events_by_key ON events (api_key_id, id);
CREATE INDEX events_by_job ON events (job_id, id);

CREATE TABLE webhook_receipts (
    provider    text COLLATE "C" NOT NULL,
    receipt_key text COLLATE "C" NOT NULL,
    received_at text COLLATE "C" NOT NULL,
    PRIMARY KEY (provider, receipt_key)
);

CREATE TABLE idempotency_keys (
    api_key_id   text COLLATE "C" NOT NULL,
    key          text COLLATE "C" NOT NULL,
    request_hash text COLLATE "C" NOT NULL,
    job_id       text COLLATE "C" NOT NULL,
    created_at   text COLLATE "C" NOT NULL,
    PRIMARY KEY (api_key_id, key)
);
