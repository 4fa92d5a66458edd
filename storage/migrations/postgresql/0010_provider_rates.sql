-- Per-provider rate budgets shared by every replica: one token bucket per provider, on the database's clock.
-- `tokens` left at `at`; `paused_until`: a 429's Retry-After stops every take until then; `creates_until`: a
-- create found no token, so status checks take none until then (creates go first). `granted`: the last take's.
-- UNLOGGED: after a database crash the buckets start full, which the limit's margin allows.
CREATE UNLOGGED TABLE provider_rates (
    provider text PRIMARY KEY,
    tokens double precision NOT NULL,
    at timestamptz NOT NULL,
    paused_until timestamptz,
    creates_until timestamptz,
    granted integer NOT NULL
);

-- Each provider's oldest due status check (GET /v1/providers) and its due polls to claim.
CREATE INDEX jobs_poll_by_provider ON jobs (provider, next_poll_at) WHERE stage IN (1, 2);
