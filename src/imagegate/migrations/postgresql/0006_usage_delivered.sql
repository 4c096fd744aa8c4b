-- depends: 0001_initial
-- usage.delivered: 1 once the answer carrying the row's images was written to its client
-- (usage.py); rows made before the column existed were all counted as delivered, hence DEFAULT 1.
-- A row is inserted with 0 and marked later, or inserted with 1 when its mark came in the same
-- journal flush. The usage API sums images of rows with 0 as `undelivered_images`.
ALTER TABLE usage ADD COLUMN IF NOT EXISTS delivered INTEGER NOT NULL DEFAULT 1;
-- Delivered marks that came before their usage row (the row still in another instance's journal):
-- the row's insert reads them.
CREATE TABLE IF NOT EXISTS usage_marks (
    request_id TEXT PRIMARY KEY,
    marked_at DOUBLE PRECISION NOT NULL
);
