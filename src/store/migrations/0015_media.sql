-- Files people sent: one row per inbound message that carried one, fetched from the
-- provider by the media loop and kept in a folder next to the state file.
CREATE TABLE media (
    id INTEGER PRIMARY KEY,
    inbound_id TEXT NOT NULL UNIQUE,
    provider_id TEXT NOT NULL,
    phone TEXT,
    media_type TEXT NOT NULL,
    media_ref TEXT NOT NULL,
    mime_type TEXT NOT NULL DEFAULT '',
    filename TEXT,
    state TEXT NOT NULL DEFAULT 'pending',
    size BIGINT,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    stored_at BIGINT
);
CREATE INDEX media_due ON media (state, next_attempt_at);
CREATE INDEX media_created ON media (created_at);
