-- `recado forget`: what is kept of a person whose data was erased is only what honours their
-- opt-out, a keyed hash of their number (the key lives in `store_keys`, in this file only).
CREATE TABLE store_keys (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE erased_contacts (
    phone_hash   TEXT PRIMARY KEY,
    opted_out_at BIGINT,
    erased_at    BIGINT NOT NULL
);
