-- Budgets: a key's limit per unit (exact decimals as text; NULL: no limit in that unit) and its period ('day',
-- 'month', 'total'); and per key and period (keys "total", "day:2026-12-06", "month:2026-12", UTC) the running
-- totals the job writes keep: reserved by unfinished jobs, spent by finished ones, and the highest threshold
-- (0, 80, 100 %) announced by a budget.threshold event.

ALTER TABLE api_keys ADD COLUMN budget_usd TEXT;
ALTER TABLE api_keys ADD COLUMN budget_credits TEXT;
ALTER TABLE api_keys ADD COLUMN budget_period TEXT;

CREATE TABLE budget_periods (
    api_key_id       TEXT NOT NULL REFERENCES api_keys (id),
    period           TEXT NOT NULL,
    reserved_usd     TEXT NOT NULL DEFAULT '0',
    spent_usd        TEXT NOT NULL DEFAULT '0',
    reserved_credits TEXT NOT NULL DEFAULT '0',
    spent_credits    TEXT NOT NULL DEFAULT '0',
    alerted_usd      INTEGER NOT NULL DEFAULT 0,
    alerted_credits  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_id, period)
);
