-- depends: 0001_initial
-- A stored key's policy (keys.py, policy.py; SQLite: db.py ADDED_COLUMNS): the model allow-list as
-- a JSON array (NULL: every model), rate limits, budgets in USD, expiry (Unix seconds), admin scope
-- (0/1, INTEGER as on SQLite) and when the key was last changed. NULL limits and expiry: none.
ALTER TABLE api_keys ADD COLUMN models TEXT;
ALTER TABLE api_keys ADD COLUMN requests_per_minute BIGINT;
ALTER TABLE api_keys ADD COLUMN images_per_minute BIGINT;
ALTER TABLE api_keys ADD COLUMN usd_per_day DOUBLE PRECISION;
ALTER TABLE api_keys ADD COLUMN usd_per_month DOUBLE PRECISION;
ALTER TABLE api_keys ADD COLUMN expires_at DOUBLE PRECISION;
ALTER TABLE api_keys ADD COLUMN admin INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN updated_at DOUBLE PRECISION;
