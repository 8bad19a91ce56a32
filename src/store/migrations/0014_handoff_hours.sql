-- When a hand-off's person was last told the office is closed (once per closed stretch), and
-- when it was flagged as waiting too long (cleared when staff answer).
ALTER TABLE handoffs ADD COLUMN after_hours_at BIGINT;
ALTER TABLE handoffs ADD COLUMN flagged_at BIGINT;
