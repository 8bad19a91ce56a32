-- Deliveries recado fetched from a provider's API itself (catching up after an outage) are
-- stored beside those the provider posted; only the posted ones tell when the provider last
-- reached recado.
ALTER TABLE webhooks ADD COLUMN fetched BIGINT NOT NULL DEFAULT 0;
