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
//! copies the last ones with this process's writers held at the write gate. The log is then all
//! copied, and the next write transaction starts it over instead of growing it. Holding the
//! writers costs one checkpoint's syncs, measured at 5–24 ms on this project's 2-core VM under
//! load, which is why it happens only once the log is large.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, Row, SqliteConnection, SqlitePool};
use tokio::sync::{mpsc, Mutex};
use tracing::debug;

/// Frames (pages) the log may hold before the connection that commits checkpoints it itself.
pub(super) const WRITER_CHECKPOINTS_AT_FRAMES: &str = "16000";

/// The size the log file is cut back to once it starts over (64 MiB): a burst may grow it
/// beyond, it does not keep the disk afterwards.
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

/// Frames committed during the last catch-up pass, at most, for the writers to be held while
/// the next copies them (about 1 MiB: a few milliseconds).
const LAST_PASS_AT_MOST_FRAMES: i64 = 256;

/// What one checkpoint found and did.
struct Pass {
    /// Frames in the log.
    log: i64,
    /// Frames of the log now copied into the database file.
    copied: i64,
}

async fn checkpoint(conn: &mut SqliteConnection) -> Result<Pass, sqlx::Error> {
    // Answers one row: (busy, frames in the log, frames checkpointed).
    let row = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut *conn).await?;
    Ok(Pass { log: row.try_get(1)?, copied: row.try_get(2)? })
}

/// One passive checkpoint; and when the log has grown past [`RESTART_AT_FRAMES`], more, each
/// copying what was committed while the one before ran (fewer frames each time, as copying is
/// faster than committing), until a last one, with the writers held, has only a few frames
/// left to copy.
async fn checkpoint_and_restart(conn: &mut SqliteConnection, write_gate: &Mutex<()>) -> Result<(), sqlx::Error> {
    let mut seen = checkpoint(conn).await?;
    if seen.log < RESTART_AT_FRAMES {
        return Ok(());
    }
    for _ in 0..CATCH_UP_PASSES {
        // A reader still reads frames the pass could not copy: holding the writers would not
        // let the log start over, only stop them longer.
        if seen.copied < seen.log {
            return Ok(());
        }
        let next = checkpoint(conn).await?;
        if next.log < seen.log {
            // The log started over meanwhile.
            return Ok(());
        }
        let committed_meanwhile = next.log - seen.log;
        seen = next;
        if committed_meanwhile <= LAST_PASS_AT_MOST_FRAMES && seen.copied == seen.log {
            let _writers_wait = write_gate.lock().await;
            checkpoint(conn).await?;
            return Ok(());
        }
    }
    Ok(())
}

/// Checkpoints on `conn` each time `wrote` says a transaction committed, until the store's
/// handles are gone or `writer` is closed.
pub(super) async fn copy_in_background(
    mut conn: SqliteConnection,
    writer: SqlitePool,
    write_gate: Arc<Mutex<()>>,
    mut wrote: mpsc::Receiver<()>,
) {
    while wrote.recv().await.is_some() {
        if writer.is_closed() {
            break;
        }
        if let Err(e) = checkpoint_and_restart(&mut conn, &write_gate).await {
            // The writer's own checkpoint is the fallback.
            debug!("background checkpoint of the state store did not run: {e}");
        }
        tokio::time::sleep(CHECKPOINT_EVERY).await;
    }
    let _ = conn.close().await;
}
