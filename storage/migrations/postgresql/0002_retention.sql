-- Retention (the meaning of sqlite/0002_retention.sql): `reelay prune` finds what is older than a cutoff
-- through these, one bounded batch at a time, instead of scanning whole tables.

CREATE INDEX jobs_by_completion ON jobs (completed_at) WHERE stage = 3;
CREATE INDEX webhook_receipts_by_time ON webhook_receipts (received_at);
CREATE INDEX idempotency_keys_by_time ON idempotency_keys (created_at);
