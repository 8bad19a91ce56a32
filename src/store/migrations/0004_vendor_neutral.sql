-- Vendor-neutral shapes: write-back targets as (kind, value) instead of prefixed strings,
-- provider ids of people in their own table (a person can have several: a number-like id and a
-- business-scoped one), inbound senders that may have no phone, raw webhooks as text with
-- their processing attempts and a parking place, the index of records by phone, and indexes for
-- pruning old rows.

-- Write-back queue.
CREATE TABLE write_queue (
    source_id   TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target      TEXT NOT NULL,
    field       TEXT NOT NULL,
    value       TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (source_id, target_kind, target, field)
);
-- Earlier builds wrote row targets as "\x01row:N" and every-copy targets as "\x01all:KEY".
INSERT INTO write_queue (source_id, target_kind, target, field, value, seq)
SELECT source_id,
       CASE WHEN record_key LIKE '_row:%' THEN 'unkeyed'
            WHEN record_key LIKE '_all:%' THEN 'every_copy'
            ELSE 'record' END,
       CASE WHEN record_key LIKE '_row:%' THEN 'row:' || SUBSTR(record_key, 6)
            WHEN record_key LIKE '_all:%' THEN SUBSTR(record_key, 6)
            ELSE record_key END,
       column_name, value, seq
FROM writeback;
DROP TABLE writeback;
CREATE INDEX write_queue_seq ON write_queue (seq);

-- Provider ids of people.
CREATE TABLE contact_ids (
    user_id    TEXT PRIMARY KEY,
    phone      TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX contact_ids_phone ON contact_ids (phone);
INSERT INTO contact_ids (user_id, phone, updated_at)
SELECT wa_id, phone, updated_at FROM contacts WHERE wa_id IS NOT NULL AND wa_id <> '';
DROP INDEX contacts_wa_id;
ALTER TABLE contacts DROP COLUMN wa_id;
ALTER TABLE messages RENAME COLUMN wa_id TO recipient_id;

-- Inbound messages: the sender may be known by a provider id only.
CREATE TABLE inbound (
    provider_message_id TEXT PRIMARY KEY,
    provider_id         TEXT NOT NULL,
    sender_id           TEXT,
    phone               TEXT,
    source_id           TEXT,
    record_key          TEXT,
    in_reply_to         BIGINT,
    kind                TEXT NOT NULL,
    body                TEXT NOT NULL,
    received_at         BIGINT NOT NULL
);
INSERT INTO inbound (provider_message_id, provider_id, sender_id, phone, source_id, record_key, in_reply_to, kind, body, received_at)
SELECT provider_message_id, provider_id, wa_id, phone, source_id, record_key, in_reply_to, kind, body, received_at
FROM inbound_messages;
DROP TABLE inbound_messages;
CREATE INDEX inbound_received ON inbound (received_at);
CREATE INDEX inbound_phone ON inbound (phone);

-- Raw webhooks: text, attempts, parking.
CREATE TABLE webhooks (
    id           INTEGER PRIMARY KEY,
    provider_id  TEXT NOT NULL,
    received_at  BIGINT NOT NULL,
    body         TEXT NOT NULL,
    attempts     BIGINT NOT NULL DEFAULT 0,
    processed_at BIGINT,
    parked_at    BIGINT,
    outcome      TEXT
);
INSERT INTO webhooks (id, provider_id, received_at, body, processed_at, outcome)
SELECT id, provider_id, received_at, CAST(body AS TEXT), processed_at, outcome FROM webhook_inbox;
DROP TABLE webhook_inbox;
CREATE INDEX webhooks_pending ON webhooks (processed_at, id);
CREATE INDEX webhooks_received ON webhooks (received_at);

-- Which records hold which phone number, across sources (kept by the pollers).
CREATE TABLE contact_records (
    phone      TEXT NOT NULL,
    source_id  TEXT NOT NULL,
    record_key TEXT NOT NULL,
    PRIMARY KEY (phone, source_id, record_key)
);
CREATE INDEX contact_records_record ON contact_records (source_id, record_key);

CREATE INDEX status_events_received ON status_events (received_at);

-- Which snapshot fields hold dates (shown as dates in messages sent from the snapshot).
ALTER TABLE snapshot_rows ADD COLUMN date_fields TEXT;

-- The runner of earlier builds.
DROP TABLE IF EXISTS schema_migrations;
