-- The language a contact chose in a conversation (a code such as `es` or `en`).
ALTER TABLE contacts ADD COLUMN language TEXT;
