-- When a conversation's reminder is due (NULL: none, or already sent) and when it expires, so
-- the inbox finds them without reading every conversation.
ALTER TABLE conversations ADD COLUMN remind_at BIGINT;
ALTER TABLE conversations ADD COLUMN expires_at BIGINT;
CREATE INDEX conversations_remind ON conversations (remind_at);
CREATE INDEX conversations_expire ON conversations (expires_at);
