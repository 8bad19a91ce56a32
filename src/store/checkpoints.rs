//! Checkpoints of the state store's write-ahead log, made in the background.
//!
//! In WAL mode a commit appends the pages it changed to the log; a checkpoint copies them into
//! the database file and syncs both files. SQLite makes it in the connection whose commit took
//! the log past `wal_autocheckpoint` frames (1,000 by default), so the writer stops for it:
//! ingesting webhooks at 7,500–9,000 deliveries a second, that was about fourteen checkpoints a
//! second, and every delivery waiting for the next group commit waited for them too (p99
//! 28–33 ms).
//!
//! Here a task with a connection of its own checkpoints after commits (at most every
//! [`CHECKPOINT_EVERY`]) in SQLite's passive mode, which neither waits for the writer nor holds
//! it up: the writer goes on appending while the task copies.
//!
//! One thing passive mode cannot do alone: SQLite starts the log over from its beginning only
//! once all of it has been copied, and under continuous writes a passive checkpoint never
//! catches up with the frames committed while it ran, so the log grew through a whole burst,
//! to the writer's backstop ([`WRITER_CHECKPOINTS_AT_FRAMES`]), where the writer checkpointed
//! on every commit again. So once the log is past [`RESTART_AT_FRAMES`], the task makes more
//! passive passes, each copying what was committed during the one before (fewer frames each
//! time: copying is faster than committing), and when one found only a few frames new, it
//! copies the last ones with this process's write transactions held at the write gate. The log
//! is then all copied, and the next write transaction starts it over instead of growing it.
//! Holding the writers costs one checkpoint's syncs, measured at 5–24 ms on this project's
//! 2-core VM under load, which is why it happens only once the log is large, and not again
//! until the log has grown further after a time it did not make it start over (a reader still
//! in it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Frames (pages) the log may hold before the connection that commits checkpoints it itself.
pub(super) const WRITER_CHECKPOINTS_AT_FRAMES: &str = "16000";

/// The size the log file is cut back to when it starts over (64 MiB). After a burst the file
/// keeps up to this much disk while the daemon runs (with SQLite's 1,000-frame default it kept
/// about 4 MB). `Store::close` removes it, unless another process (`recado report`) still has
/// the database open.
pub(super) const WAL_SIZE_LIMIT_BYTES: &str = "67108864";

/// Least time between two background checkpoints.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

/// Log size (frames, 4 KiB each) from which the log is brought to start over (about 47 MiB):
/// below the writer's backstop, so that under continuous writes the log starts over before
/// the writer checkpoints on every commit. Lower (4,000) held the writers more often for the
/// same few milliseconds each, and the run was slower (see BENCHMARKS.md).
const RESTART_AT_FRAMES: i64 = 12_000;

/// Passive checkpoints at most, one after the other, to catch up with the writer before the
/// log is brought to start over (the next round tries again).
const CATCH_UP_PASSES: usize = 8;

/// The log size from which the writers are held again after a time that did not make the log
/// start over, at most: below the writer's backstop, where it checkpoints on every commit.
const RETRY_AT_MOST_FRAMES: i64 = 15_000;

/// How long the last pass waits for the write gate before leaving it to the next round (a
/// transaction held that long is not one of the daemon's usual ones).
const GATE_WAIT: Duration = Duration::from_secs(10);

/// Frames committed during the last catch-up pass, at most, for the writers to be held while
/// the next copies them (about 1 MiB: a few milliseconds).
const LAST_PASS_AT_MOST_FRAMES: i64 = 256;

/// Least time between two warnings that background checkpoints fail.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What one checkpoint found and did.
struct Pass {
    /// Frames in the log.
    log: i64,
    /// Frames of the log now copied into the database file.
    copied: i64,
}

/// The running task, as the store holds it.
pub(super) struct Background {
    stop: Arc<Notify>,
    /// Held while it is awaited, so that every caller of [`Background::stop`] returns only
    /// once the task has ended.
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Background {
    /// Starts checkpointing on a connection of its own, each time `wrote` says a transaction
    /// committed.
    pub(super) async fn start(
        opts: SqliteConnectOptions,
        write_gate: Arc<Mutex<()>>,
        wrote: mpsc::Receiver<()>,
    ) -> Result<Background, sqlx::Error> {
        let conn = opts.connect().await?;
        let stop = Arc::new(Notify::new());
        let checkpointer = Checkpointer { conn: Some(conn), opts, write_gate, held_at: None, warned: None };
        let task = tokio::spawn(checkpointer.run(wrote, stop.clone()));
        Ok(Background { stop, task: Mutex::new(Some(task)) })
    }

    /// Stops the task and closes its connection; returns once it has (for every caller).
    /// `Store::close` closes the other connections after it, so the last of them copies the
    /// whole log into the database file and removes it (with whatever a person's erased data
    /// it still held).
    pub(super) async fn stop(&self) {
        self.stop.notify_one();
        let mut task = self.task.lock().await;
        if let Some(running) = task.as_mut() {
            let _ = running.await;
            *task = None;
        }
    }
}

struct Checkpointer {
    /// None after a failure that may have been the connection's: reopened on the next round.
    conn: Option<SqliteConnection>,
    opts: SqliteConnectOptions,
    write_gate: Arc<Mutex<()>>,
    /// The log's size when the writers were last held for it to start over, while it has not
    /// started over since.
    held_at: Option<i64>,
    warned: Option<Instant>,
}

impl Checkpointer {
    async fn run(mut self, mut wrote: mpsc::Receiver<()>, stop: Arc<Notify>) {
        loop {
            tokio::select! {
                biased;
                _ = stop.notified() => break,
                committed = wrote.recv() => if committed.is_none() { break },
            }
            if let Err(e) = self.round().await {
                // The writer's own checkpoint is the fallback meanwhile.
                self.conn = None;
                if self.warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    self.warned = Some(Instant::now());
                    warn!("background checkpoint of the state store failed (the connection is reopened): {e}");
                } else {
                    debug!("background checkpoint of the state store failed: {e}");
                }
            }
            tokio::select! {
                biased;
                _ = stop.notified() => break,
                _ = tokio::time::sleep(CHECKPOINT_EVERY) => {}
            }
        }
        if let Some(conn) = self.conn.take() {
            let _ = conn.close().await;
        }
    }

    /// One passive checkpoint; and when the log has grown past [`RESTART_AT_FRAMES`], more,
    /// each copying what was committed while the one before ran (fewer frames each time, as
    /// copying is faster than committing), until a last one, with the writers held, has only a
    /// few frames left to copy. After a time the writers were held and the log did not start
    /// over, not again until it has grown some more (`held_at`).
    async fn round(&mut self) -> Result<(), sqlx::Error> {
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.opts.connect().await?),
        };
        let Some(mut seen) = checkpoint(conn).await? else { return Ok(()) };
        if let Some(held_at) = self.held_at {
            if seen.log < held_at {
                // It started over since.
                self.held_at = None;
            } else if seen.log < (held_at + RESTART_AT_FRAMES / 4).min(RETRY_AT_MOST_FRAMES) {
                // It did not start over after the writers were held last (a reader was still
                // reading the log, or a write was made outside the gate): not again until the
                // log has grown some more, or each round would hold them for nothing.
                return Ok(());
            }
        }
        if seen.log < RESTART_AT_FRAMES {
            return Ok(());
        }
        for _ in 0..CATCH_UP_PASSES {
            // A reader still reads frames the pass could not copy: holding the writers would
            // not let the log start over, only stop them longer.
            if seen.copied < seen.log {
                return Ok(());
            }
            let Some(next) = checkpoint(conn).await? else { return Ok(()) };
            if next.log < seen.log {
                // The log started over meanwhile.
                return Ok(());
            }
            let committed_meanwhile = next.log - seen.log;
            seen = next;
            if committed_meanwhile <= LAST_PASS_AT_MOST_FRAMES && seen.copied == seen.log {
                // Writes of this process made outside a transaction do not take the gate; the
                // log then starts over at a later round.
                let Ok(_writers_wait) = tokio::time::timeout(GATE_WAIT, self.write_gate.lock()).await else {
                    return Ok(());
                };
                if let Some(last) = checkpoint(conn).await? {
                    self.held_at = Some(last.log);
                }
                return Ok(());
            }
        }
        Ok(())
    }
}

/// A passive checkpoint: None when another connection was checkpointing.
async fn checkpoint(conn: &mut SqliteConnection) -> Result<Option<Pass>, sqlx::Error> {
    // Answers one row: (busy, frames in the log, frames checkpointed); busy is 1 (and the
    // counts -1) when another connection held the checkpoint lock.
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut *conn).await?;
    let busy: i64 = row.try_get(0)?;
    if busy != 0 {
        return Ok(None);
    }
    Ok(Some(Pass { log: row.try_get(1)?, copied: row.try_get(2)? }))
}
