-- The query string of the URL a vendor called with a webhook. Vendors that sign URLs
-- carry data there (recado puts the outbox id of a message in its status callback URL).
ALTER TABLE webhooks ADD COLUMN query TEXT NOT NULL DEFAULT '';
