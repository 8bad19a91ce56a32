//! The state store: SQLite on disk (WAL), behind a small typed API, one file per concern.
//!
//! Everything that must survive a crash lives here: source snapshots ([`snapshots`]), the
//! outbox ([`outbox`]), webhook bodies before they are applied ([`webhooks`]), contacts and
//! what they wrote ([`contacts`]), the write-back queue ([`writeback`]), record problems
//! ([`issues`]), timers and campaigns ([`timers`]), their pruning ([`retention`]), and the views
//! people read ([`report`]: funnels, failures, one person's history).
//! Functions take a `&mut SqliteConnection` so the engine composes them into one transaction
//! (a snapshot moves only with its consequences); [`Store`] owns the pool.
//!
//! The schema is applied by sqlx's migrator from embedded SQL that is portable to PostgreSQL
//! (`$n` parameters, `ON CONFLICT`, BIGINT Unix milliseconds, no BLOBs; see
//! `docs/decisions/0001-sqlite-state-store.md`). Nothing here panics on what the file holds:
//! an unreadable value is a [`StoreError::Corrupt`].

mod checkpoints;
pub mod contacts;
pub mod conversations;
pub mod forget;
pub mod handoffs;
pub mod issues;
pub mod media;
pub mod outbox;
pub mod report;
pub mod retention;
pub mod snapshots;
pub mod timers;
pub mod webhooks;
pub mod writeback;

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqlSafeStr, SqliteConnection, SqlitePool};

pub use contacts::*;
pub use conversations::*;
pub use forget::*;
pub use handoffs::*;
pub use issues::*;
pub use media::*;
pub use outbox::*;
pub use retention::*;
pub use snapshots::*;
pub use timers::*;
pub use webhooks::*;
pub use writeback::*;

/// How long a writer waits for the database before giving up (with a transient error): the
/// in-process write gate and SQLite's busy timeout (for other processes, e.g. `recado forget`).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A write transaction. It holds the store's write gate until it commits or is dropped.
///
/// SQLite has one writer at a time. Left to itself, a second writer polls for the lock with
/// sleeps that grow to 100 ms (its busy handler), so a webhook stored while the inbox or a
/// poll commits waited tens of milliseconds for a lock freed in one. Writers of this process
/// queue on an async mutex instead, in order, and `BEGIN IMMEDIATE` then finds the lock free.
pub struct Tx {
    inner: sqlx::Transaction<'static, sqlx::Sqlite>,
    _gate: tokio::sync::OwnedMutexGuard<()>,
    wrote: tokio::sync::mpsc::Sender<()>,
}

impl Tx {
    pub async fn commit(self) -> StoreResult<()> {
        self.inner.commit().await?;
        // Full: a checkpoint is already due.
        let _ = self.wrote.try_send(());
        Ok(())
    }
}

impl std::ops::Deref for Tx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.inner
    }
}

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store: {0}")]
    Database(#[from] sqlx::Error),
    #[error("state store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("state store holds an unreadable {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("cannot open the state store {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("state store: busy: no write turn within {0:?}")]
    Busy(Duration),
    #[error("another recado is running on the state store {path} (it holds {lock}): stop it first, or give this one its own state.path")]
    Locked { path: String, lock: String },
}

impl StoreError {
    /// Another writer holds the database, or the disk is briefly unavailable: try again.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Database(sqlx::Error::Database(e)) => {
                let m = e.message().to_lowercase();
                m.contains("locked") || m.contains("busy")
            }
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed) => true,
            StoreError::Busy(_) => true,
            _ => false,
        }
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Reads a column, turning a decode failure into [`StoreError::Corrupt`] instead of a panic.
pub(crate) fn col<'r, T>(row: &'r SqliteRow, name: &'static str) -> StoreResult<T>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    row.try_get(name).map_err(|e| StoreError::Corrupt { what: name, detail: e.to_string() })
}

/// Distinct records (source, key) grouped by source, at most 500 keys a group: one query a
/// group (`source_id = … AND record_key IN (…)`, see [`push_records_of`]) finds them by the
/// `(source_id, record_key)` index.
pub(crate) fn records_by_source<'a>(
    records: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<(&'a str, Vec<&'a str>)> {
    let mut sorted: Vec<(&str, &str)> = records.into_iter().collect();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
        .chunk_by(|a, b| a.0 == b.0)
        .flat_map(|same| same.chunks(500))
        .filter_map(|group| Some((group.first()?.0, group.iter().map(|(_, k)| *k).collect())))
        .collect()
}

/// Appends `source_id = $ AND record_key IN ($, …)` for one group of [`records_by_source`].
pub(crate) fn push_records_of(qb: &mut sqlx::QueryBuilder<sqlx::Sqlite>, source: &str, keys: &[&str]) {
    qb.push("source_id = ").push_bind(source).push(" AND record_key IN ");
    push_list(qb, keys.iter().copied());
}

/// Appends `($, $, …)`, a bind a value (the list of an `IN`).
pub(crate) fn push_list<'t, T>(qb: &mut sqlx::QueryBuilder<sqlx::Sqlite>, values: impl IntoIterator<Item = T>)
where
    T: sqlx::Encode<'t, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    qb.push("(");
    let mut sep = qb.separated(", ");
    for v in values {
        sep.push_bind(v);
    }
    qb.push(")");
}

/// Appends `, column = CASE id WHEN $ THEN $ … ELSE column END`: a value a row, for one
/// `UPDATE` of many rows.
pub(crate) fn push_case_by_id<'t, T>(
    qb: &mut sqlx::QueryBuilder<sqlx::Sqlite>,
    column: &str,
    values: impl IntoIterator<Item = (i64, T)>,
) where
    T: sqlx::Encode<'t, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    qb.push(format!(", {column} = CASE id"));
    for (id, v) in values {
        qb.push(" WHEN ").push_bind(id).push(" THEN ").push_bind(v);
    }
    qb.push(format!(" ELSE {column} END"));
}

/// The schema, in order: (version, name, SQL). One list, so the migrator and the portability
/// test can never disagree about which migrations exist.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (2, "indexes", include_str!("migrations/0002_indexes.sql")),
    (3, "timers", include_str!("migrations/0003_timers.sql")),
    (4, "vendor neutral", include_str!("migrations/0004_vendor_neutral.sql")),
    (5, "baseline records", include_str!("migrations/0005_baseline_records.sql")),
    (6, "webhook query", include_str!("migrations/0006_webhook_query.sql")),
    (7, "fetched deliveries", include_str!("migrations/0007_fetched_deliveries.sql")),
    (8, "conversations", include_str!("migrations/0008_conversations.sql")),
    (9, "consent", include_str!("migrations/0009_consent.sql")),
    (10, "conversation timers", include_str!("migrations/0010_conversation_timers.sql")),
    (11, "contact language", include_str!("migrations/0011_contact_language.sql")),
    (12, "forget", include_str!("migrations/0012_forget.sql")),
    (13, "handoffs", include_str!("migrations/0013_handoffs.sql")),
    (14, "handoff hours", include_str!("migrations/0014_handoff_hours.sql")),
    (15, "media", include_str!("migrations/0015_media.sql")),
];

/// Each migration runs once, in a transaction (sqlx's migrator).
fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, name, sql)| {
                Migration::new(*version, Cow::Borrowed(*name), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

/// The embedded migrations' SQL (for the portability test).
pub fn migration_sql() -> Vec<&'static str> {
    MIGRATIONS.iter().map(|(_, _, sql)| *sql).collect()
}

/// Handle to the database.
#[derive(Clone)]
pub struct Store {
    /// Connections for reads (and the few single-statement writes made outside a [`Tx`]).
    pool: SqlitePool,
    /// The one connection every [`Tx`] runs on. SQLite discards a connection's page cache
    /// when another connection has written since its last transaction, so write transactions
    /// spread over the pool each began with a cold cache and read every page they touched
    /// back from the file; on their own connection, the pages they keep touching (the tails
    /// of the webhook and status tables, their indexes) stay cached.
    writer: SqlitePool,
    /// Taken by every write transaction of this process (see [`Tx`]).
    write_gate: Arc<tokio::sync::Mutex<()>>,
    /// Tells [`checkpoints`] that a transaction committed.
    wrote: tokio::sync::mpsc::Sender<()>,
    /// The task that checkpoints the write-ahead log; stopped first by [`Store::close`].
    checkpoints: Arc<checkpoints::Background>,
}

/// The right to run on a state store: one daemon per state file. Two daemons on one store
/// would both send what is queued (twice to the same people), so `recado run` takes this
/// before anything else and keeps it until it exits; the operating system lets go of it even
/// when the process is killed. `recado forget` takes it too (it erases what a running daemon
/// holds in memory as well); commands that only read (`plan`, `report`) do not need it.
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Takes the lock of the store at `path` (the file `<path>.lock`, created `0600`).
    pub fn acquire(path: &Path) -> StoreResult<StateLock> {
        create_parent(path)?;
        let lock = PathBuf::from(format!("{}.lock", path.display()));
        let file = private_file(&lock)
            .map_err(|e| StoreError::Open { path: lock.display().to_string(), detail: e.to_string() })?;
        match file.try_lock() {
            Ok(()) => Ok(StateLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => {
                Err(StoreError::Locked { path: path.display().to_string(), lock: lock.display().to_string() })
            }
            Err(std::fs::TryLockError::Error(e)) => {
                Err(StoreError::Open { path: lock.display().to_string(), detail: format!("cannot lock it: {e}") })
            }
        }
    }
}

fn create_parent(path: &Path) -> StoreResult<()> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Open { path: dir.display().to_string(), detail: e.to_string() })?;
        }
    }
    Ok(())
}

/// Opens `path` for writing, creating it readable by its owner only: the state holds phone
/// numbers and what people wrote. (SQLite gives its `-wal` and `-shm` files the database
/// file's permissions.)
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

impl Store {
    /// Opens (creating if needed, `0600`) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> StoreResult<Store> {
        create_parent(path)?;
        if !path.exists() {
            private_file(path)
                .map_err(|e| StoreError::Open { path: path.display().to_string(), detail: e.to_string() })?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL is durable against process crashes; a power loss may lose the last
            // commits but never corrupts the database.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .pragma("wal_autocheckpoint", checkpoints::WRITER_CHECKPOINTS_AT_FRAMES)
            .pragma("journal_size_limit", checkpoints::WAL_SIZE_LIMIT_BYTES)
            .foreign_keys(true);
        let open_error = |e: sqlx::Error| StoreError::Open { path: path.display().to_string(), detail: e.to_string() };
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            // Kept open: its page cache is what it is for.
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(20))
            .connect_with(opts.clone())
            .await
            .map_err(open_error)?;
        migrator().run(&writer).await?;
        let write_gate = Arc::new(tokio::sync::Mutex::new(()));
        let (wrote, commits) = tokio::sync::mpsc::channel(1);
        let checkpoints =
            checkpoints::Background::start(opts.clone(), write_gate.clone(), commits).await.map_err(open_error)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(3)
            .acquire_timeout(Duration::from_secs(20))
            .connect_with(opts)
            .await
            .map_err(open_error)?;
        Ok(Store { pool, writer, write_gate, wrote, checkpoints: Arc::new(checkpoints) })
    }

    /// Opens an existing store read-only, without migrating (for `recado plan`). A missing file
    /// is an empty state.
    pub async fn open_read_only(path: &Path) -> StoreResult<ReadOnlyStore> {
        if !path.exists() {
            return Ok(ReadOnlyStore(None));
        }
        let opts = SqliteConnectOptions::new().filename(path).read_only(true).busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .map_err(|e| StoreError::Open { path: path.display().to_string(), detail: e.to_string() })?;
        Ok(ReadOnlyStore(Some(pool)))
    }

    /// Starts a write transaction, in turn after the others of this process (see [`Tx`]).
    /// `BEGIN IMMEDIATE` takes the write lock up front, so two transactions never deadlock
    /// upgrading a read lock (SQLite would answer "busy" at once instead of waiting for the
    /// busy timeout).
    pub async fn begin(&self) -> StoreResult<Tx> {
        let gate = tokio::time::timeout(BUSY_TIMEOUT, self.write_gate.clone().lock_owned())
            .await
            .map_err(|_| StoreError::Busy(BUSY_TIMEOUT))?;
        let inner = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        Ok(Tx { inner, _gate: gate, wrote: self.wrote.clone() })
    }

    pub async fn conn(&self) -> StoreResult<sqlx::pool::PoolConnection<sqlx::Sqlite>> {
        Ok(self.pool.acquire().await?)
    }

    pub async fn close(&self) {
        // The checkpoints' connection first and the writer last: the last connection closed
        // copies the whole log into the database file and removes it.
        self.checkpoints.stop().await;
        self.pool.close().await;
        self.writer.close().await;
    }
}

/// The store as `recado plan` sees it: questions only, and an absent store answers "no".
pub struct ReadOnlyStore(Option<SqlitePool>);

impl ReadOnlyStore {
    /// Was a message with this idempotency key already queued or sent?
    pub async fn already(&self, idempotency_key: &str) -> bool {
        let Some(pool) = &self.0 else { return false };
        let Ok(mut c) = pool.acquire().await else { return false };
        message_exists(&mut c, idempotency_key).await.unwrap_or(false)
    }

    /// `Some(reason)` when the contact with this number opted out.
    /// The contact recado holds for `phone` (with an erased person's opt-out), if any.
    pub async fn contact(&self, phone: &str) -> Option<Contact> {
        let pool = self.0.as_ref()?;
        let mut c = pool.acquire().await.ok()?;
        contact(&mut c, phone).await.ok()?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema must run on PostgreSQL later: after the one documented substitution, no
    /// SQLite-only types or functions.
    #[test]
    fn migrations_are_portable() {
        for sql in migration_sql() {
            let upper = sql.to_uppercase();
            let pg = upper.replace("INTEGER PRIMARY KEY", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY");
            for banned in
                [" BLOB", "AUTOINCREMENT", "INTEGER", "DATETIME", "PRAGMA", "TYPEOF(", "IFNULL(", "GLOB ", "STRFTIME("]
            {
                assert!(!pg.contains(banned), "{banned} is not portable:\n{sql}");
            }
            // Two-argument MAX/MIN are scalar functions in SQLite only (GREATEST/LEAST elsewhere).
            for f in ["MAX(", "MIN("] {
                for (i, _) in pg.match_indices(f) {
                    let args = &pg[i + f.len()..];
                    let end = args.find(')').unwrap_or(args.len());
                    assert!(!args[..end].contains(','), "two-argument {f} is not portable:\n{sql}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_state_file_from_an_earlier_build_is_adopted_with_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        // The schema and runner of the first builds, with a queued write of each kind.
        {
            let opts = SqliteConnectOptions::new().filename(&path).create_if_missing(true);
            let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await.unwrap();
            let legacy = include_str!("migrations/0001_init.sql").replace("body         TEXT", "body         BLOB");
            sqlx::raw_sql(sqlx::AssertSqlSafe(legacy)).execute(&pool).await.unwrap();
            sqlx::raw_sql(include_str!("migrations/0002_indexes.sql")).execute(&pool).await.unwrap();
            sqlx::raw_sql(include_str!("migrations/0003_timers.sql")).execute(&pool).await.unwrap();
            sqlx::raw_sql(
                "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL);
                 INSERT INTO schema_migrations VALUES (1, 0), (2, 0), (3, 0);
                 INSERT INTO writeback VALUES ('s', 'K1', 'Estado', 'read', 1);
                 INSERT INTO writeback VALUES ('s', char(1) || 'row:7', 'Error', 'no ID', 2);
                 INSERT INTO writeback VALUES ('s', char(1) || 'all:K2', 'Error', 'duplicate', 3);
                 INSERT INTO contacts VALUES ('+5511987654321', '551187654321', NULL, NULL, 5, 5);
                 INSERT INTO webhook_inbox (provider_id, received_at, body) VALUES ('w', 1, CAST('{\"a\":1}' AS BLOB));
                 INSERT INTO inbound_messages VALUES ('m1', 'w', '551187654321', '+5511987654321', NULL, NULL, NULL, 'text', 'hola', 1);",
            )
            .execute(&pool)
            .await
            .unwrap();
            pool.close().await;
        }
        let store = Store::open(&path).await.unwrap();
        let mut c = store.conn().await.unwrap();
        let mut writes: Vec<String> = pending_writes(&mut c, &["s".to_string()], usize::MAX)
            .await
            .unwrap()
            .into_iter()
            .map(|p| format!("{} {}={}", p.write.target, p.write.field, p.write.value))
            .collect();
        writes.sort();
        assert_eq!(
            writes,
            vec![
                "every record keyed K2 Error=duplicate",
                "record K1 Estado=read",
                "unkeyed record at row:7 Error=no ID"
            ]
        );
        let contact = contact_by_user_id(&mut c, "551187654321").await.unwrap().unwrap();
        assert_eq!(contact.phone, "+5511987654321");
        let pending = pending_webhooks(&mut c, 10).await.unwrap();
        assert_eq!(pending[0].body, "{\"a\":1}");
        assert_eq!(inbound_count(&mut c).await.unwrap(), 1);
        drop(c);
        store.close().await;
        // Opening again applies nothing twice.
        Store::open(&path).await.unwrap().close().await;
    }

    /// Committed pages reach the database file soon after their commits, long before the
    /// write-ahead log holds enough for the writer to copy them itself (see
    /// [`checkpoints`]).
    #[tokio::test]
    async fn committed_pages_are_copied_into_the_database_file_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).await.unwrap();
        let body = "x".repeat(8_000);
        // 64 deliveries of 8 KB: about 130 frames, where the writer copies at 16,000 (and
        // SQLite's default is 1,000).
        for i in 0..64 {
            let mut tx = store.begin().await.unwrap();
            let delivery =
                NewWebhook { provider_id: "w".into(), query: String::new(), body: body.clone(), received_at: i };
            insert_webhooks(&mut tx, &[delivery]).await.unwrap();
            tx.commit().await.unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let len = std::fs::metadata(&path).unwrap().len();
            if len >= 64 * 8_000 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the database file still holds {len} bytes");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        store.close().await;
    }

    /// Closing the store leaves no log beside the database file: what it held (a person's
    /// erased data among it, after `recado forget`) is in the file, or gone.
    #[tokio::test]
    async fn a_closed_store_leaves_no_write_ahead_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).await.unwrap();
        for i in 0..20 {
            let mut tx = store.begin().await.unwrap();
            let delivery =
                NewWebhook { provider_id: "w".into(), query: String::new(), body: "x".repeat(100), received_at: i };
            insert_webhooks(&mut tx, &[delivery]).await.unwrap();
            tx.commit().await.unwrap();
        }
        let wal = dir.path().join("state.db-wal");
        assert!(wal.exists(), "the store writes ahead while it is open");
        // Two handles closing at once: each returns once it is all closed.
        let other = store.clone();
        tokio::join!(store.close(), other.close());
        assert!(!wal.exists(), "the log is still beside the database file after close");
    }
}
