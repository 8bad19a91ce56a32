-- recado state store, version 1. Portable SQL: runs on SQLite and PostgreSQL except for the
-- INTEGER PRIMARY KEY row ids (BIGSERIAL there). Times are Unix milliseconds.

CREATE TABLE source_state (
    source_id      TEXT PRIMARY KEY,
    baseline_done  INTEGER NOT NULL DEFAULT 0,
    version        TEXT,
    time_zone      TEXT,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE snapshot_rows (
    source_id   TEXT NOT NULL,
    record_key  TEXT NOT NULL,
    row_hash    INTEGER NOT NULL,
    fields      TEXT NOT NULL,
    PRIMARY KEY (source_id, record_key)
);

CREATE TABLE messages (
    id                  INTEGER PRIMARY KEY,
    idempotency_key     TEXT NOT NULL UNIQUE,
    rule_id             TEXT NOT NULL,
    source_id           TEXT NOT NULL,
    record_key          TEXT NOT NULL,
    provider_id         TEXT NOT NULL,
    phone               TEXT NOT NULL,
    content             TEXT NOT NULL,
    fallback            TEXT,
    state               TEXT NOT NULL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_at     INTEGER NOT NULL,
    provider_message_id TEXT UNIQUE,
    wa_id               TEXT,
    error               TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    state_at            INTEGER NOT NULL
);
CREATE INDEX messages_due ON messages (provider_id, state, next_attempt_at);
CREATE INDEX messages_record ON messages (source_id, record_key);
CREATE INDEX messages_phone ON messages (phone);

CREATE TABLE status_events (
    provider_message_id TEXT NOT NULL,
    status              TEXT NOT NULL,
    received_at         INTEGER NOT NULL,
    PRIMARY KEY (provider_message_id, status)
);

CREATE TABLE webhook_inbox (
    id           INTEGER PRIMARY KEY,
    provider_id  TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    body         BLOB NOT NULL,
    processed_at INTEGER,
    outcome      TEXT
);
CREATE INDEX webhook_inbox_pending ON webhook_inbox (processed_at, id);

CREATE TABLE contacts (
    phone           TEXT PRIMARY KEY,
    wa_id           TEXT,
    opted_out_at    INTEGER,
    opt_out_text    TEXT,
    last_inbound_at INTEGER,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX contacts_wa_id ON contacts (wa_id);

CREATE TABLE inbound_messages (
    provider_message_id TEXT PRIMARY KEY,
    provider_id         TEXT NOT NULL,
    wa_id               TEXT NOT NULL,
    phone               TEXT,
    source_id           TEXT,
    record_key          TEXT,
    in_reply_to         INTEGER,
    kind                TEXT NOT NULL,
    body                TEXT NOT NULL,
    received_at         INTEGER NOT NULL
);

CREATE TABLE writeback (
    source_id   TEXT NOT NULL,
    record_key  TEXT NOT NULL,
    column_name TEXT NOT NULL,
    value       TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    PRIMARY KEY (source_id, record_key, column_name)
);

CREATE TABLE row_issues (
    source_id     TEXT NOT NULL,
    issue_key     TEXT NOT NULL,
    record_key    TEXT NOT NULL,
    message       TEXT NOT NULL,
    first_seen_at INTEGER NOT NULL,
    PRIMARY KEY (source_id, issue_key)
);
