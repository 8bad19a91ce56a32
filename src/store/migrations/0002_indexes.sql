-- Indexes for hot paths found by the dispatch load run: MAX(seq) when queueing write-back, and
-- open row problems by record.
CREATE INDEX IF NOT EXISTS writeback_seq ON writeback (seq);
CREATE INDEX IF NOT EXISTS row_issues_record ON row_issues (source_id, record_key);
