-- Durable timers for date-relative rules (one per rule, record and offset) and the progress of
-- recurring campaigns.
CREATE TABLE timers (
    rule_id     TEXT NOT NULL,
    source_id   TEXT NOT NULL,
    record_key  TEXT NOT NULL,
    slot        TEXT NOT NULL,
    occurrence  TEXT NOT NULL,
    due_at      INTEGER NOT NULL,
    state       TEXT NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (rule_id, record_key, slot)
);
CREATE INDEX timers_due ON timers (state, due_at);
CREATE INDEX timers_record ON timers (source_id, record_key);

CREATE TABLE campaigns (
    rule_id     TEXT PRIMARY KEY,
    next_at     INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
);
