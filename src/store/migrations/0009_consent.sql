-- A contact's answer to the privacy notice: accepted or refused, when, how (a tap or typed),
-- and which version of the notice.
ALTER TABLE contacts ADD COLUMN consent TEXT;
ALTER TABLE contacts ADD COLUMN consent_at BIGINT;
ALTER TABLE contacts ADD COLUMN consent_method TEXT;
ALTER TABLE contacts ADD COLUMN consent_version TEXT;
