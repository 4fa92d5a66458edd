-- Per-provider rate budgets: SQLite runs as one process and keeps its buckets in memory. This index finds each
-- provider's oldest due status check (GET /v1/providers: how far behind polling is) and its due polls to claim.
CREATE INDEX jobs_poll_by_provider ON jobs (provider, next_poll_at) WHERE stage IN (1, 2);
