-- Conversations: where each contact is in a flow (one row per phone number), so a survey or a
-- menu survives restarts. `answers` is a JSON object of the answers so far.
CREATE TABLE conversations (
    phone        TEXT PRIMARY KEY,
    flow_id      TEXT NOT NULL,
    state        TEXT NOT NULL,
    provider_id  TEXT NOT NULL,
    source_id    TEXT,
    record_key   TEXT,
    started_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);
