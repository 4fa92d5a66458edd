-- Limits across replicas (PostgreSQL only; SQLite runs as one process and counts in memory). UNLOGGED: after a
-- database crash the buckets start full and the slots empty, which is harmless.

-- One token bucket per API key: tokens left at `at` (the database's clock, so every replica reads the same time).
CREATE UNLOGGED TABLE rate_buckets (
    api_key_id text PRIMARY KEY,
    tokens double precision NOT NULL,
    at timestamptz NOT NULL,
    allowed boolean NOT NULL
);

-- One row per open event stream; a live replica pushes `expires_at` forward, a dead one's rows lapse.
CREATE UNLOGGED TABLE stream_slots (
    api_key_id text NOT NULL,
    id text NOT NULL,
    owner text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (api_key_id, id)
);
