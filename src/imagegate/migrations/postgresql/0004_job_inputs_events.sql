-- depends: 0001_initial
-- Jobs shared between instances (jobs.py): a job's uploads and its stream's events live in the
-- database, not in one instance's data dir. As db.py's SCHEMA for SQLite.
CREATE TABLE job_inputs (
    job_id TEXT NOT NULL,
    name TEXT NOT NULL,
    content_type TEXT,
    data BYTEA NOT NULL,
    PRIMARY KEY (job_id, name)
);
CREATE TABLE job_events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data BYTEA NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, seq)
);
