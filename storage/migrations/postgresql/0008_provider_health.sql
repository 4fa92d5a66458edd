-- Provider health (the meaning of sqlite/0007_provider_health.sql): one circuit breaker per provider, shared by
-- every replica, and an index counting unfinished jobs per provider.

CREATE TABLE provider_health (
    provider      text COLLATE "C" PRIMARY KEY,
    state         text COLLATE "C" NOT NULL CHECK (state IN ('closed', 'open', 'half_open')),
    failures      integer NOT NULL DEFAULT 0,
    opened_at     double precision,
    open_until    double precision,
    probe_owner   text COLLATE "C",
    probe_until   double precision,
    last_error    text,
    last_error_at double precision,
    updated_at    double precision NOT NULL
);

CREATE INDEX jobs_in_flight ON jobs (provider) WHERE stage < 3;
