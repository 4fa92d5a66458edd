-- Budgets (the meaning of sqlite/0006_budgets.sql): a key's limits and period, and its running totals per period.
-- Money is numeric: exact, never float.

ALTER TABLE api_keys ADD COLUMN budget_usd numeric;
ALTER TABLE api_keys ADD COLUMN budget_credits numeric;
ALTER TABLE api_keys ADD COLUMN budget_period text COLLATE "C";

CREATE TABLE budget_periods (
    api_key_id       text COLLATE "C" NOT NULL REFERENCES api_keys (id),
    period           text COLLATE "C" NOT NULL,
    reserved_usd     numeric NOT NULL DEFAULT 0,
    spent_usd        numeric NOT NULL DEFAULT 0,
    reserved_credits numeric NOT NULL DEFAULT 0,
    spent_credits    numeric NOT NULL DEFAULT 0,
    alerted_usd      smallint NOT NULL DEFAULT 0,
    alerted_credits  smallint NOT NULL DEFAULT 0,
    PRIMARY KEY (api_key_id, period)
);
