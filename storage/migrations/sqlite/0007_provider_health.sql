-- Provider health: one circuit breaker per provider, shared by every process on the database and kept across
-- restarts. `failures` counts consecutive failed creates that speak of the provider; at the threshold the circuit
-- opens until `open_until` (unix seconds, as every time here); then one create is let through as the half-open
-- probe, leased to `probe_owner` until `probe_until` so a probe whose process died is taken again.
-- `jobs_in_flight` counts unfinished jobs per provider for GET /v1/providers without reading finished ones.

CREATE TABLE provider_health (
    provider      TEXT PRIMARY KEY,
    state         TEXT NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    failures      INTEGER NOT NULL DEFAULT 0,
    opened_at     REAL,
    open_until    REAL,
    probe_owner   TEXT,
    probe_until   REAL,
    last_error    TEXT,
    last_error_at REAL,
    updated_at    REAL NOT NULL
);

CREATE INDEX jobs_in_flight ON jobs (provider) WHERE stage < 3;
