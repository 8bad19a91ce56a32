-- Which snapshot rows were part of a source's first read. Those records were never news: fixing
-- their phone or consent later must not send them a welcome meant for new records. Rows kept
-- from earlier builds cannot be told apart and keep the earlier behaviour (0).
ALTER TABLE snapshot_rows ADD COLUMN from_baseline BIGINT NOT NULL DEFAULT 0;
