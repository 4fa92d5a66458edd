-- Caller webhooks (the meaning of sqlite/0004_caller_webhooks.sql): a job's own receiver, each key's signing
-- secret and endpoints, and the durable delivery queue with its attempt log. Deliveries are leased like jobs
-- (lease_until, lease_owner; claimed with FOR UPDATE SKIP LOCKED).

ALTER TABLE jobs ADD COLUMN webhook_url text;
ALTER TABLE jobs ADD COLUMN webhook_events json;

CREATE TABLE webhook_secrets (
    api_key_id          text COLLATE "C" PRIMARY KEY REFERENCES api_keys (id),
    secret              text NOT NULL,
    previous            text,
    previous_expires_at double precision
);

CREATE TABLE webhook_endpoints (
    id                  text COLLATE "C" PRIMARY KEY,
    api_key_id          text COLLATE "C" NOT NULL REFERENCES api_keys (id),
    url                 text NOT NULL,
    events              json NOT NULL,
    description         text NOT NULL,
    secret              text NOT NULL,
    previous            text,
    previous_expires_at double precision,
    disabled            boolean NOT NULL DEFAULT false,
    disabled_reason     text COLLATE "C",
    failing_since       double precision,
    created_at          text COLLATE "C" NOT NULL,
    updated_at          text COLLATE "C" NOT NULL
);

CREATE INDEX webhook_endpoints_by_key ON webhook_endpoints (api_key_id, created_at);

CREATE TABLE webhook_deliveries (
    id              text COLLATE "C" PRIMARY KEY,
    api_key_id      text COLLATE "C" NOT NULL,
    target          text COLLATE "C" NOT NULL,
    url             text NOT NULL,
    event_type      text COLLATE "C" NOT NULL,
    status          text COLLATE "C" NOT NULL,
    created_at      text COLLATE "C" NOT NULL,
    updated_at      text COLLATE "C" NOT NULL,
    job_id          text COLLATE "C",
    endpoint_id     text COLLATE "C",
    event_id        bigint,
    payload         bytea,
    attempts        integer NOT NULL DEFAULT 0,
    round_attempts  integer NOT NULL DEFAULT 0,
    next_attempt_at double precision,
    last_status     integer,
    lease_until     double precision,
    lease_owner     text COLLATE "C"
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
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id   text COLLATE "C" NOT NULL,
    attempted_at  text COLLATE "C" NOT NULL,
    duration_ms   double precision NOT NULL,
    status_code   integer,
    response_body text,
    error         text
);

CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts (delivery_id, id);
