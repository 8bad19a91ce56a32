//! Files people send: fetched from the provider after the message was stored (never inside
//! the inbox's transaction: a download may take seconds), kept in a folder next to the state
//! file (`state.media_max_mb` per file, `state.retention.media` long), and served by recado at
//! a link that carries its own signature (`/media/<id>/<signature>`), so only someone given
//! the link (the team, in their records) can open it.
//!
//! A file over the cap, or one the provider no longer has, is `failed` with the reason, which
//! its link shows; a transient failure (a timeout, an expired download address) is tried
//! again with a growing delay, at most [`MAX_ATTEMPTS`] times.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tracing::{info, warn};

use super::{EngineCtx, Shutdown};
use crate::providers::{MediaError, Provider};
use crate::store::{self, StoreError};

/// Tries of a file before it is given up.
pub const MAX_ATTEMPTS: i64 = 8;

/// The signature of the link to file `id`, recorded at `created_at`, under `key`. The time is
/// signed too: SQLite may give a deleted file's id to a new one, and an old link must not open
/// it.
pub fn link_signature(key: &[u8], id: i64, created_at: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else { return String::new() };
    mac.update(format!("media:{id}:{created_at}").as_bytes());
    hex::encode(mac.finalize().into_bytes()).chars().take(32).collect()
}

/// Whether `signature` opens file `id` recorded at `created_at` (in constant time).
pub fn link_opens(key: &[u8], id: i64, created_at: i64, signature: &str) -> bool {
    let want = link_signature(key, id, created_at);
    !want.is_empty() && want.len() == signature.len() && constant_time_eq(want.as_bytes(), signature.as_bytes())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The link to file `id`: under `http.public_url` when set (clickable from a record), else the
/// path alone.
pub async fn link(
    ctx: &EngineCtx,
    conn: &mut sqlx::SqliteConnection,
    (id, created_at): (i64, i64),
) -> Result<String, StoreError> {
    let key = store::media_link_key(conn).await?;
    let base = ctx.config.http.public_url.as_deref().unwrap_or("").trim_end_matches('/');
    Ok(format!("{base}/media/{id}/{}", link_signature(&key, id, created_at)))
}

/// The file of row `id` on disk.
pub fn file_path(ctx: &EngineCtx, id: i64) -> std::path::PathBuf {
    ctx.config.state.media_dir().join(id.to_string())
}

/// Fetches the files people sent.
pub struct MediaFetcher {
    ctx: Arc<EngineCtx>,
    providers: HashMap<String, Provider>,
}

impl MediaFetcher {
    pub fn new(ctx: Arc<EngineCtx>, providers: HashMap<String, Provider>) -> Self {
        Self { ctx, providers }
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        let health = "loop:media";
        loop {
            let busy = self.ctx.health.busy(health);
            let round = self.fetch_due().await;
            drop(busy);
            match round {
                Ok(_) => self.ctx.health.ok(health, "loop", self.ctx.now_ms()),
                Err(e) => {
                    self.ctx.health.failed(health, "loop", &e.to_string());
                    warn!("fetching files people sent failed: {e}");
                }
            }
            let next = match self.ctx.store.conn().await {
                Ok(mut c) => store::next_media_due(&mut c).await.ok().flatten(),
                Err(_) => None,
            };
            let at = next.unwrap_or_else(|| self.ctx.now_ms() + 60_000);
            tokio::select! {
                _ = self.ctx.media_wake.notified() => {}
                _ = self.ctx.clock.sleep_until(at, Duration::from_secs(60)) => {}
                _ = shutdown.wait() => break,
            }
        }
    }

    /// Fetches the files due. Returns how many were looked at.
    pub async fn fetch_due(&self) -> Result<usize, StoreError> {
        let now = self.ctx.now_ms();
        let due = {
            let mut conn = self.ctx.store.conn().await?;
            store::media_due(&mut conn, now, 20).await?
        };
        let max = self.ctx.config.state.media_max_bytes;
        for m in &due {
            let Some(provider) = self.providers.get(&m.provider_id) else {
                let mut tx = self.ctx.store.begin().await?;
                store::media_failed(&mut tx, m.id, "its provider is no longer configured").await?;
                tx.commit().await?;
                continue;
            };
            let outcome = provider.fetch_media(&crate::domain::MediaRef(m.media_ref.clone()), max).await;
            let outcome = match outcome {
                Ok(file) => self.keep(m.id, &file.bytes).await.map(|()| file),
                Err(e) => Err(e),
            };
            let mut tx = self.ctx.store.begin().await?;
            match outcome {
                Ok(file) => {
                    let mime = if file.mime_type.is_empty() { m.mime_type.clone() } else { file.mime_type.clone() };
                    store::media_stored(&mut tx, m.id, &mime, file.bytes.len() as i64, self.ctx.now_ms()).await?;
                    info!(media = m.id, media_type = %m.media_type, bytes = file.bytes.len(), "a file a person sent was stored");
                }
                Err(e @ (MediaError::TooLarge { .. } | MediaError::Gone(_))) => {
                    let reason = format!("not kept: {e}");
                    warn!(media = m.id, media_type = %m.media_type, "{reason}");
                    store::media_failed(&mut tx, m.id, &reason).await?;
                }
                Err(MediaError::Transient(reason)) if m.attempts + 1 >= MAX_ATTEMPTS => {
                    let reason = format!("not kept after {MAX_ATTEMPTS} tries: {reason}");
                    warn!(media = m.id, "{reason}");
                    store::media_failed(&mut tx, m.id, &reason).await?;
                }
                Err(MediaError::Transient(reason)) => {
                    let delay = 5_000i64.saturating_mul(1 << m.attempts.clamp(0, 10));
                    info!(media = m.id, attempt = m.attempts + 1, "fetching a file failed, trying again: {reason}");
                    store::media_retry(&mut tx, m.id, &reason, self.ctx.now_ms() + delay).await?;
                }
            }
            tx.commit().await?;
        }
        Ok(due.len())
    }

    /// Writes a file where its link finds it (owner-only, written whole then renamed).
    async fn keep(&self, id: i64, bytes: &[u8]) -> Result<(), MediaError> {
        let dir = self.ctx.config.state.media_dir();
        let path = file_path(&self.ctx, id);
        let partial = dir.join(format!("{id}.partial"));
        let bytes = bytes.to_vec();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(&dir)?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            let mut f = options.open(&partial)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&partial, &path)
        })
        .await
        .map_err(|e| MediaError::Transient(format!("writing the file failed: {e}")))?
        .map_err(|e| MediaError::Transient(format!("cannot write the file next to the state file: {e}")))
    }
}
