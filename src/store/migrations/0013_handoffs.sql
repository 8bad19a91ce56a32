-- Hand-offs to a person: one row per hand-off, keyed like its record in the inbox source.
-- At most one open per contact. `transcript` is what the inbox shows (newest last);
-- `pending` holds staff replies (JSON) waiting for the person to write again (outside the
-- 24-hour window); `replies` numbers the staff replies taken, for their idempotency keys.
CREATE TABLE handoffs (
    key TEXT PRIMARY KEY,
    phone TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    source_id TEXT,
    record_key TEXT,
    topic TEXT NOT NULL DEFAULT '',
    language TEXT NOT NULL DEFAULT '',
    opened_at BIGINT NOT NULL,
    closed_at BIGINT,
    transcript TEXT NOT NULL DEFAULT '',
    replies BIGINT NOT NULL DEFAULT 0,
    pending TEXT NOT NULL DEFAULT '[]',
    waiting_since BIGINT
);
CREATE UNIQUE INDEX handoffs_open_per_phone ON handoffs (phone) WHERE closed_at IS NULL;
