//! The write-back flusher: one loop per write group (a source's writer; several sources of one
//! vendor object may share one).
//!
//! Values queued in the store (coalesced per field: the latest value wins) go to the writer in
//! batches; the writer locates each record at write time and checks the previous write, so a
//! flush runs even with nothing queued while such a check is due. What was written, what had
//! no record any more and what the vendor refused for good leave the queue; anything else
//! stays for the next flush. A refused value is reported once, never retried for ever, and
//! never blocks the others.

use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::{EngineCtx, Shutdown};
use crate::domain::PendingWrite;
use crate::sources::{SourceError, SourceWriter, WriteReport};
use crate::store::{self, StoreError};

/// Most queued values one flush loads: more than any writer carries in one flush (the
/// largest takes 10,000 values), so a long queue (a campaign's statuses, a vendor down for hours)
/// costs one bounded read per flush, not the whole queue each time.
pub const PENDING_WRITES_PER_FLUSH: usize = 20_000;

/// Why a flush did not complete (nothing is lost: the queue stays).
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How long to wait after `failures` refusals in a row that need a person (a field, a
/// permission), for a loop that runs every `interval`: the interval twice (a passing hiccup),
/// then doubling, at most eight times the interval and at most a minute (pure).
pub fn refused_backoff(interval: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(2).min(3);
    (interval * factor).min(Duration::from_secs(60)).max(interval)
}

pub struct Flusher {
    writer: Arc<SourceWriter>,
    ctx: Arc<EngineCtx>,
    interval: Duration,
    health_name: String,
}

impl Flusher {
    pub fn new(writer: Arc<SourceWriter>, ctx: Arc<EngineCtx>) -> Self {
        let interval = writer.flush_interval();
        let health_name = format!("flusher:{}", writer.label());
        ctx.health.register(&health_name, "loop");
        Self { writer, ctx, interval, health_name }
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        info!(writer = %self.writer.label(), "write-back flusher started");
        let wake =
            self.writer.source_ids().first().and_then(|id| self.ctx.flush_wake.get(id).cloned()).unwrap_or_default();
        // Flushes refused for good in a row: the next one waits longer each time.
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = wake.notified() => {
                    // Let more updates arrive so one write carries them all.
                    tokio::time::sleep(self.interval.min(Duration::from_millis(200))).await;
                }
                _ = shutdown.wait() => break,
            }
            if let Some(pause) = self.flush_logged(&mut failures).await {
                // The vendor said when to come back, or the last flushes were refused: every
                // write stays queued until then.
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.wait() => break,
                }
            }
        }
        // Last flushes, so nothing acknowledged waits for the next start: the senders and the
        // inbox have stopped, so these see every outcome.
        for _ in 0..5 {
            match self.flush_once().await {
                // Done when nothing was written and the last write has been verified.
                Ok(r)
                    if r.done.is_empty()
                        && r.dropped.is_empty()
                        && r.rejected.is_empty()
                        && r.repairs.is_empty()
                        && !self.writer.needs_check() =>
                {
                    break
                }
                Ok(_) => {}
                Err(e) => {
                    warn!(writer = %self.writer.label(), "last write-back before stopping failed; it waits for the next start: {e}");
                    break;
                }
            }
        }
        info!(writer = %self.writer.label(), "write-back flusher stopped");
    }

    /// Flushes once and logs the outcome; says how long to wait when the vendor asked for a
    /// pause, or when flushes keep being refused for a reason only a person can fix (a field
    /// or permission missing): longer each time, up to eight flush intervals or a minute, so
    /// a broken configuration is not hammered every flush and a fixed one is picked up soon.
    async fn flush_logged(&self, failures: &mut u32) -> Option<Duration> {
        let _busy = self.ctx.health.busy(&self.health_name);
        let failed = match self.flush_once().await {
            Ok(WriteReport { failed: Some(e), .. }) => FlushError::Source(e),
            Ok(r) => {
                *failures = 0;
                self.ctx.health.ok(&self.health_name, "loop", self.ctx.now_ms());
                if !r.done.is_empty() || !r.repairs.is_empty() {
                    debug!(writer = %self.writer.label(), written = r.done.len(), dropped = r.dropped.len(), repaired = r.repairs.len(), "write-back flushed");
                }
                return None;
            }
            Err(e) => e,
        };
        if let FlushError::Source(SourceError::RateLimited { detail, pause }) = failed {
            warn!(writer = %self.writer.label(), pause_s = pause.as_secs(), "write-back delayed by the quota: {detail}");
            return Some(pause).filter(|p| !p.is_zero());
        }
        self.ctx.health.failed(&self.health_name, "loop", &failed.to_string());
        error!(writer = %self.writer.label(), "write-back failed, will retry: {failed}");
        match failed {
            FlushError::Source(SourceError::Permanent(_) | SourceError::Denied(_) | SourceError::MissingFields(_)) => {
                *failures += 1;
                Some(refused_backoff(self.interval, *failures))
            }
            _ => None,
        }
    }

    /// Flushes what is queued for this writer (and checks its previous write).
    pub async fn flush_once(&self) -> Result<WriteReport, FlushError> {
        let pending: Vec<PendingWrite> = {
            let mut conn = self.ctx.store.conn().await?;
            store::pending_writes(&mut conn, &self.writer.source_ids(), PENDING_WRITES_PER_FLUSH).await?
        };
        if pending.is_empty() && !self.writer.needs_check() {
            return Ok(WriteReport::default());
        }
        let report = self.writer.write(&pending).await?;
        for (i, reason) in &report.rejected {
            if let Some(p) = pending.get(*i) {
                error!(source = %p.write.source_id, target = %p.write.target, field = %p.write.field, "a value was refused by the source and dropped: {reason}");
            }
        }
        let finished: Vec<&PendingWrite> = report
            .done
            .iter()
            .chain(report.dropped.iter())
            .chain(report.rejected.iter().map(|(i, _)| i))
            .filter_map(|i| pending.get(*i))
            .collect();
        if !finished.is_empty() {
            let mut tx = self.ctx.store.begin().await?;
            store::delete_writes(&mut tx, &finished).await?;
            tx.commit().await?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_wait_longer_each_time_within_bounds() {
        let second = Duration::from_secs(1);
        let waits: Vec<u64> = (1..=7).map(|n| refused_backoff(second, n).as_secs()).collect();
        assert_eq!(waits, vec![1, 1, 2, 4, 8, 8, 8]);
        assert_eq!(refused_backoff(Duration::from_secs(10), 6), Duration::from_secs(60));
        assert_eq!(refused_backoff(Duration::from_secs(90), 1), Duration::from_secs(90));
    }
}
