-- Durable timers for date-relative rules (one per rule, record and offset) and the progress of
-- recurring campaigns.
CREATE TABLE IF NOT EXISTS timers (
    rule_id     TEXT NOT NULL,
    source_id   TEXT NOT NULL,
    record_key  TEXT NOT NULL,
    slot        TEXT NOT NULL,
    occurrence  TEXT NOT NULL,
    due_at      BIGINT NOT NULL,
    state       TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (rule_id, record_key, slot)
);
CREATE INDEX IF NOT EXISTS timers_due ON timers (state, due_at);
CREATE INDEX IF NOT EXISTS timers_record ON timers (source_id, record_key);

CREATE TABLE IF NOT EXISTS campaigns (
    rule_id     TEXT PRIMARY KEY,
    next_at     BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
