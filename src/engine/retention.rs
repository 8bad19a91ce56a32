//! Pruning: once an hour, what the store no longer needs goes (applied raw webhooks, old
//! status de-duplication entries, old inbound messages, files people sent once older than
//! `state.retention.media`), a batch per transaction so webhooks are never kept waiting.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info};

use super::{EngineCtx, Shutdown};
use crate::store::{self, Pruned, StoreError};

pub struct RetentionLoop {
    ctx: Arc<EngineCtx>,
}

impl RetentionLoop {
    pub fn new(ctx: Arc<EngineCtx>) -> Self {
        Self { ctx }
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        // The first pass a minute after start, then hourly.
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => break,
            }
            wait = Duration::from_secs(3600);
            let busy = self.ctx.health.busy("loop:retention");
            let pruned = self.prune_all(&shutdown).await;
            drop(busy);
            match pruned {
                Ok(total) => {
                    self.ctx.health.ok("loop:retention", "loop", self.ctx.now_ms());
                    if total != Pruned::default() {
                        info!(
                            webhooks = total.webhooks,
                            status_events = total.status_events,
                            inbound = total.inbound,
                            media = total.media,
                            "old rows pruned"
                        );
                    }
                }
                Err(e) => {
                    self.ctx.health.failed("loop:retention", "loop", &e.to_string());
                    error!("pruning old rows failed: {e}");
                }
            }
        }
    }

    /// Files people sent, older than `keep`: the bytes go, and their rows keep only why, so a
    /// link written in a record answers 410 "no longer kept" for another `keep` before the row
    /// goes too. Returns how many files and forgotten rows went.
    async fn prune_media(&self, keep: Duration) -> Result<u64, StoreError> {
        let before = self.ctx.now_ms() - keep.as_millis() as i64;
        let ids = {
            let mut conn = self.ctx.store.conn().await?;
            store::media_older_than(&mut conn, before, 500).await?
        };
        for id in &ids {
            // Gone already (never fetched, or removed by hand) is fine.
            let _ = tokio::fs::remove_file(super::media::file_path(&self.ctx, *id)).await;
        }
        let why = format!(
            "the file is no longer kept: files are kept {} (state.retention.media)",
            crate::validation::human_duration(keep)
        );
        let mut tx = self.ctx.store.begin().await?;
        store::expire_media_rows(&mut tx, &ids, &why).await?;
        let forgotten = store::delete_expired_media_rows(&mut tx, before - keep.as_millis() as i64, 500).await?;
        tx.commit().await?;
        Ok(ids.len() as u64 + forgotten)
    }

    /// Prunes until nothing is left to prune. Public for tests.
    pub async fn prune_all(&self, shutdown: &Shutdown) -> Result<Pruned, StoreError> {
        let r = self.ctx.config.state.retention;
        let mut total = Pruned::default();
        loop {
            let mut tx = self.ctx.store.begin().await?;
            let p =
                store::prune(&mut tx, self.ctx.now_ms(), r.raw_webhooks, r.status_events, r.inbound_messages).await?;
            tx.commit().await?;
            total.webhooks += p.webhooks;
            total.status_events += p.status_events;
            total.inbound += p.inbound;
            let files = self.prune_media(r.media).await?;
            total.media += files;
            if (p == Pruned::default() && files == 0) || shutdown.is_set() {
                return Ok(total);
            }
        }
    }
}
