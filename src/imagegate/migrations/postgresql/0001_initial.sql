-- The schema of db.py's SCHEMA and ADDED_COLUMNS as of issue 11, in PostgreSQL's types: times and
-- money DOUBLE PRECISION (REAL is 4 bytes there), counts and sizes BIGINT, blobs BYTEA.
-- Applied by `imagegate migrate` (yoyo-migrations); later changes are new numbered files.

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION,
    webhook_secret TEXT
);

CREATE TABLE results (
    token TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    content_type TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    size BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX results_expiry ON results (expires_at);
CREATE INDEX results_age ON results (created_at);

-- The result store's size budget (storage.py): the total of results.size, kept by triggers.
CREATE TABLE results_total (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    bytes BIGINT NOT NULL
);
CREATE FUNCTION results_total_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE results_total SET bytes = bytes + NEW.size;
        RETURN NEW;
    END IF;
    UPDATE results_total SET bytes = bytes - OLD.size;
    RETURN OLD;
END;
$$;
CREATE TRIGGER results_total_insert AFTER INSERT ON results
    FOR EACH ROW EXECUTE FUNCTION results_total_change();
CREATE TRIGGER results_total_delete AFTER DELETE ON results
    FOR EACH ROW EXECUTE FUNCTION results_total_change();

CREATE TABLE result_reservations (
    id TEXT PRIMARY KEY,
    bytes BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE idempotency (
    scope TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    status INTEGER,
    headers TEXT,
    body BYTEA,
    expires_at DOUBLE PRECISION NOT NULL,
    fingerprint TEXT,
    claim TEXT,
    results TEXT
);

CREATE TABLE usage (
    id BIGSERIAL PRIMARY KEY,
    request_id TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    key_id TEXT,
    "user" TEXT,
    model TEXT NOT NULL,
    provider TEXT NOT NULL,
    mode TEXT NOT NULL,
    images BIGINT NOT NULL,
    cost DOUBLE PRECISION NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cost_estimated INTEGER NOT NULL DEFAULT 0,
    client_request_id TEXT,
    safety_identifier TEXT
);
CREATE INDEX usage_created ON usage (created_at);
CREATE INDEX usage_request ON usage (request_id);

CREATE TABLE jobs (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    key_id TEXT,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    mode TEXT NOT NULL,
    request TEXT NOT NULL,
    webhook_url TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    heartbeat_at DOUBLE PRECISION,
    usage_counted INTEGER NOT NULL DEFAULT 0,
    result BYTEA,  -- the images answer as JSON bytes (jobs.py splices them into the job object)
    error TEXT
);
CREATE INDEX jobs_status ON jobs (status, seq);
CREATE INDEX jobs_key ON jobs (key_id, seq);

CREATE TABLE webhook_deliveries (
    id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    body BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION,
    lease_until DOUBLE PRECISION,
    last_status INTEGER,
    last_error TEXT,
    delivered_at DOUBLE PRECISION,
    given_up_at DOUBLE PRECISION
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at);
CREATE UNIQUE INDEX webhook_deliveries_job ON webhook_deliveries (job_id);
