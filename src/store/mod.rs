//! The state store: SQLite on disk (WAL), behind a small typed API.
//!
//! Everything that must survive a crash lives here: source snapshots, the outbox, webhook
//! bodies before they are processed, contacts (opt-out, 24-hour window), and the write-back
//! queue. Functions take a `&mut SqliteConnection` so the engine can compose them into one
//! transaction (a snapshot moves only with its intents); [`Store`] owns the pool.
//!
//! The SQL is kept portable to PostgreSQL (`$n` parameters, `ON CONFLICT`, integer times in
//! Unix milliseconds); see `docs/decisions/0001-sqlite-state-store.md`.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use crate::diff::{Snapshot, SnapshotRow};
use crate::domain::{MessageContent, MessageState, PhoneNumber, RecordKey};
use crate::rules::Intent;

/// Schema migrations, applied in order, each once.
const MIGRATIONS: &[(i64, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_indexes.sql")),
    (3, include_str!("migrations/0003_timers.sql")),
];

pub type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

/// Handle to the database.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub async fn open(path: &Path) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL is durable against process crashes; a power loss may lose the last
            // commits but never corrupts the database.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await
            .with_context(|| format!("opening state store {}", path.display()))?;
        let store = Store { pool };
        store.migrate().await.context("migrating the state store")?;
        Ok(store)
    }

    async fn migrate(&self) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        for (version, sql) in MIGRATIONS {
            let done: Option<i64> = sqlx::query_scalar("SELECT version FROM schema_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
            if done.is_some() {
                continue;
            }
            sqlx::raw_sql(*sql).execute(&mut *tx).await.with_context(|| format!("migration {version}"))?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(version)
                .bind(chrono::Utc::now().timestamp_millis())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Starts a write transaction. `BEGIN IMMEDIATE` takes the write lock up front, so two
    /// transactions never deadlock upgrading a read lock (SQLite would answer "busy" at once
    /// instead of waiting for the busy timeout).
    /// Opens an existing store read-only, without migrating (for `recado plan`). A missing file
    /// is an empty state.
    pub async fn open_read_only(path: &Path) -> anyhow::Result<ReadOnlyStore> {
        if !path.exists() {
            return Ok(ReadOnlyStore(None));
        }
        let opts = SqliteConnectOptions::new().filename(path).read_only(true).busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts)
            .await
            .with_context(|| format!("opening state store {} read-only", path.display()))?;
        Ok(ReadOnlyStore(Some(pool)))
    }

    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    pub async fn conn(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Sqlite>, sqlx::Error> {
        self.pool.acquire().await
    }

    pub async fn close(&self) {
        self.pool.close().await;
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

    /// `Some(reason)` when the record's contact opted out.
    pub async fn opted_out(&self, view: &crate::engine::RecordView) -> Option<String> {
        let pool = self.0.as_ref()?;
        let phone = view.phone.as_ref().ok()?;
        let mut c = pool.acquire().await.ok()?;
        let contact = contact(&mut c, phone.as_str()).await.ok()??;
        contact.opted_out_at.map(|_| "opted out".to_string())
    }
}

// ---------------------------------------------------------------------------------------------
// Sources: state and snapshots

/// What the store remembers of a source between polls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceState {
    /// The first full read was committed (as a baseline or processed).
    pub baseline_done: bool,
    /// The Drive `version` of the last full read.
    pub version: Option<String>,
    pub time_zone: Option<String>,
}

pub async fn source_state(conn: &mut SqliteConnection, source_id: &str) -> Result<SourceState, sqlx::Error> {
    let row = sqlx::query("SELECT baseline_done, version, time_zone FROM source_state WHERE source_id = $1")
        .bind(source_id)
        .fetch_optional(conn)
        .await?;
    Ok(row
        .map(|r| SourceState {
            baseline_done: r.get::<i64, _>("baseline_done") != 0,
            version: r.get("version"),
            time_zone: r.get("time_zone"),
        })
        .unwrap_or_default())
}

pub async fn save_source_state(
    conn: &mut SqliteConnection,
    source_id: &str,
    s: &SourceState,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO source_state (source_id, baseline_done, version, time_zone, updated_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (source_id) DO UPDATE SET baseline_done = excluded.baseline_done, version = excluded.version,
         time_zone = excluded.time_zone, updated_at = excluded.updated_at",
    )
    .bind(source_id)
    .bind(i64::from(s.baseline_done))
    .bind(&s.version)
    .bind(&s.time_zone)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn load_snapshot(conn: &mut SqliteConnection, source_id: &str) -> anyhow::Result<Snapshot> {
    let rows = sqlx::query("SELECT record_key, row_hash, fields FROM snapshot_rows WHERE source_id = $1")
        .bind(source_id)
        .fetch_all(conn)
        .await?;
    let mut snap = Snapshot::with_capacity(rows.len());
    for r in rows {
        let fields: String = r.get("fields");
        let fields = serde_json::from_str(&fields).context("corrupt snapshot row")?;
        snap.insert(RecordKey(r.get("record_key")), SnapshotRow { hash: r.get::<i64, _>("row_hash") as u64, fields });
    }
    Ok(snap)
}

/// Writes the rows that changed since the stored snapshot, and deletes removed ones.
pub async fn apply_snapshot_delta(
    conn: &mut SqliteConnection,
    source_id: &str,
    upserts: &[(&RecordKey, &SnapshotRow)],
    removals: &[&RecordKey],
) -> Result<(), sqlx::Error> {
    for (key, row) in upserts {
        let fields = serde_json::to_string(&row.fields).unwrap_or_else(|_| "{}".into());
        sqlx::query(
            "INSERT INTO snapshot_rows (source_id, record_key, row_hash, fields) VALUES ($1, $2, $3, $4)
             ON CONFLICT (source_id, record_key) DO UPDATE SET row_hash = excluded.row_hash, fields = excluded.fields",
        )
        .bind(source_id)
        .bind(&key.0)
        .bind(row.hash as i64)
        .bind(fields)
        .execute(&mut *conn)
        .await?;
    }
    for key in removals {
        sqlx::query("DELETE FROM snapshot_rows WHERE source_id = $1 AND record_key = $2")
            .bind(source_id)
            .bind(&key.0)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Outbox

/// One message of the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxMessage {
    pub id: i64,
    pub idempotency_key: String,
    pub rule_id: String,
    pub source_id: String,
    pub record_key: RecordKey,
    pub provider_id: String,
    pub phone: PhoneNumber,
    pub content: MessageContent,
    pub fallback: Option<MessageContent>,
    pub state: MessageState,
    pub attempts: u32,
    pub next_attempt_at: i64,
    pub provider_message_id: Option<String>,
    pub wa_id: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub state_at: i64,
}

const MESSAGE_COLUMNS: &str = "id, idempotency_key, rule_id, source_id, record_key, provider_id, phone, content, fallback, state, attempts, next_attempt_at, provider_message_id, wa_id, error, created_at, updated_at, state_at";

fn message_from_row(r: &SqliteRow) -> anyhow::Result<OutboxMessage> {
    let content: String = r.get("content");
    let fallback: Option<String> = r.get("fallback");
    let state: String = r.get("state");
    Ok(OutboxMessage {
        id: r.get("id"),
        idempotency_key: r.get("idempotency_key"),
        rule_id: r.get("rule_id"),
        source_id: r.get("source_id"),
        record_key: RecordKey(r.get("record_key")),
        provider_id: r.get("provider_id"),
        phone: PhoneNumber::from_e164_unchecked(r.get::<String, _>("phone")),
        content: serde_json::from_str(&content).context("corrupt message content")?,
        fallback: fallback.map(|f| serde_json::from_str(&f)).transpose().context("corrupt fallback")?,
        state: MessageState::from_str(&state).map_err(anyhow::Error::msg)?,
        attempts: r.get::<i64, _>("attempts") as u32,
        next_attempt_at: r.get("next_attempt_at"),
        provider_message_id: r.get("provider_message_id"),
        wa_id: r.get("wa_id"),
        error: r.get("error"),
        created_at: r.get("created_at"),
        updated_at: r.get("updated_at"),
        state_at: r.get("state_at"),
    })
}

fn messages_from_rows(rows: Vec<SqliteRow>) -> anyhow::Result<Vec<OutboxMessage>> {
    rows.iter().map(message_from_row).collect()
}

/// Commits an intent to the outbox as `queued`. Returns the new id, or `None` when a message
/// with the same idempotency key already exists (it is never sent twice).
pub async fn insert_intent(
    conn: &mut SqliteConnection,
    intent: &Intent,
    due_at: i64,
    now: i64,
) -> anyhow::Result<Option<i64>> {
    let content = serde_json::to_string(&intent.content)?;
    let fallback = intent.fallback.as_ref().map(serde_json::to_string).transpose()?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO messages (idempotency_key, rule_id, source_id, record_key, provider_id, phone, content, fallback,
                               state, attempts, next_attempt_at, created_at, updated_at, state_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'queued', 0, $9, $10, $10, $10)
         ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    )
    .bind(&intent.idempotency_key)
    .bind(&intent.rule_id)
    .bind(&intent.source_id)
    .bind(&intent.record_key.0)
    .bind(&intent.provider_id)
    .bind(intent.phone.as_str())
    .bind(content)
    .bind(fallback)
    .bind(due_at)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(id)
}

/// Queued messages of `provider_id` whose time has come, oldest first.
pub async fn due_messages(
    conn: &mut SqliteConnection,
    provider_id: &str,
    now: i64,
    limit: i64,
) -> anyhow::Result<Vec<OutboxMessage>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE provider_id = $1 AND state = 'queued' AND next_attempt_at <= $2
         ORDER BY next_attempt_at, id LIMIT $3"
    )))
    .bind(provider_id)
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    messages_from_rows(rows)
}

/// When the next queued message of `provider_id` becomes due.
pub async fn next_due_at(conn: &mut SqliteConnection, provider_id: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM messages WHERE provider_id = $1 AND state = 'queued'")
        .bind(provider_id)
        .fetch_one(conn)
        .await
}

/// Messages left `sending` (a send whose outcome is unknown) since before `before`.
pub async fn in_doubt(
    conn: &mut SqliteConnection,
    provider_id: &str,
    before: i64,
) -> anyhow::Result<Vec<OutboxMessage>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE provider_id = $1 AND state = 'sending' AND updated_at < $2 ORDER BY id"
    )))
    .bind(provider_id)
    .bind(before)
    .fetch_all(conn)
    .await?;
    messages_from_rows(rows)
}

pub async fn message_by_id(conn: &mut SqliteConnection, id: i64) -> anyhow::Result<Option<OutboxMessage>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(message_from_row).transpose()
}

pub async fn message_by_provider_id(
    conn: &mut SqliteConnection,
    provider_message_id: &str,
) -> anyhow::Result<Option<OutboxMessage>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE provider_message_id = $1"
    )))
    .bind(provider_message_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// The most recent message that reached the provider for a phone number.
pub async fn latest_sent_to(conn: &mut SqliteConnection, phone: &str) -> anyhow::Result<Option<OutboxMessage>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE phone = $1 AND provider_message_id IS NOT NULL ORDER BY id DESC LIMIT 1"
    )))
    .bind(phone)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// True when no newer message exists for the same record (its status owns the row's cells).
pub async fn is_latest_for_record(conn: &mut SqliteConnection, m: &OutboxMessage) -> Result<bool, sqlx::Error> {
    let newer: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE source_id = $1 AND record_key = $2 AND id > $3")
            .bind(&m.source_id)
            .bind(&m.record_key.0)
            .bind(m.id)
            .fetch_one(conn)
            .await?;
    Ok(newer == 0)
}

/// A change to one outbox message; `None` fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct MessageUpdate {
    pub state: Option<MessageState>,
    pub attempts: Option<u32>,
    pub next_attempt_at: Option<i64>,
    pub provider_message_id: Option<String>,
    pub wa_id: Option<String>,
    /// `Some(None)` clears the error.
    pub error: Option<Option<String>>,
    pub state_at: Option<i64>,
    /// Replace the content (free text switched to its fallback template).
    pub content: Option<MessageContent>,
}

pub async fn update_message(conn: &mut SqliteConnection, id: i64, u: &MessageUpdate, now: i64) -> anyhow::Result<()> {
    let content = u.content.as_ref().map(serde_json::to_string).transpose()?;
    sqlx::query(
        "UPDATE messages SET
            state = COALESCE($2, state),
            attempts = COALESCE($3, attempts),
            next_attempt_at = COALESCE($4, next_attempt_at),
            provider_message_id = COALESCE($5, provider_message_id),
            wa_id = COALESCE($6, wa_id),
            error = CASE WHEN $7 = 1 THEN $8 ELSE error END,
            state_at = COALESCE($9, state_at),
            content = COALESCE($10, content),
            updated_at = $11
         WHERE id = $1",
    )
    .bind(id)
    .bind(u.state.map(|s| s.as_str()))
    .bind(u.attempts.map(i64::from))
    .bind(u.next_attempt_at)
    .bind(&u.provider_message_id)
    .bind(&u.wa_id)
    .bind(i64::from(u.error.is_some()))
    .bind(u.error.clone().flatten())
    .bind(u.state_at)
    .bind(content)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Queued messages to `phone` (used to skip them all on opt-out).
pub async fn queued_for_phone(conn: &mut SqliteConnection, phone: &str) -> anyhow::Result<Vec<OutboxMessage>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE phone = $1 AND state = 'queued' ORDER BY id"
    )))
    .bind(phone)
    .fetch_all(conn)
    .await?;
    messages_from_rows(rows)
}

/// Records that a provider reported `status` for a message. False when already seen.
pub async fn record_status_event(
    conn: &mut SqliteConnection,
    provider_message_id: &str,
    status: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO status_events (provider_message_id, status, received_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(provider_message_id)
    .bind(status)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Message counts by state.
pub async fn counts_by_state(conn: &mut SqliteConnection) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT state, COUNT(*) AS n FROM messages GROUP BY state ORDER BY state").fetch_all(conn).await?;
    Ok(rows.iter().map(|r| (r.get("state"), r.get("n"))).collect())
}

/// Every message, oldest first (for summaries and tests).
pub async fn all_messages(conn: &mut SqliteConnection) -> anyhow::Result<Vec<OutboxMessage>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY id")))
        .fetch_all(conn)
        .await?;
    messages_from_rows(rows)
}

// ---------------------------------------------------------------------------------------------
// Webhook inbox

/// Persists a verified webhook body; processing happens later from the store.
pub async fn insert_inbox(
    conn: &mut SqliteConnection,
    provider_id: &str,
    body: &[u8],
    now: i64,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("INSERT INTO webhook_inbox (provider_id, received_at, body) VALUES ($1, $2, $3) RETURNING id")
        .bind(provider_id)
        .bind(now)
        .bind(body)
        .fetch_one(conn)
        .await
}

/// Unprocessed webhook bodies, oldest first.
pub async fn pending_inbox(
    conn: &mut SqliteConnection,
    limit: i64,
) -> Result<Vec<(i64, String, Vec<u8>)>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT id, provider_id, body FROM webhook_inbox WHERE processed_at IS NULL ORDER BY id LIMIT $1")
            .bind(limit)
            .fetch_all(conn)
            .await?;
    Ok(rows.iter().map(|r| (r.get("id"), r.get("provider_id"), r.get("body"))).collect())
}

pub async fn finish_inbox(conn: &mut SqliteConnection, id: i64, outcome: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_inbox SET processed_at = $2, outcome = $3 WHERE id = $1")
        .bind(id)
        .bind(now)
        .bind(outcome)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn pending_inbox_count(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_inbox WHERE processed_at IS NULL").fetch_one(conn).await
}

// ---------------------------------------------------------------------------------------------
// Contacts

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub phone: String,
    pub wa_id: Option<String>,
    pub opted_out_at: Option<i64>,
    pub last_inbound_at: Option<i64>,
}

fn contact_from_row(r: &SqliteRow) -> Contact {
    Contact {
        phone: r.get("phone"),
        wa_id: r.get("wa_id"),
        opted_out_at: r.get("opted_out_at"),
        last_inbound_at: r.get("last_inbound_at"),
    }
}

pub async fn contact(conn: &mut SqliteConnection, phone: &str) -> Result<Option<Contact>, sqlx::Error> {
    let row = sqlx::query("SELECT phone, wa_id, opted_out_at, last_inbound_at FROM contacts WHERE phone = $1")
        .bind(phone)
        .fetch_optional(conn)
        .await?;
    Ok(row.as_ref().map(contact_from_row))
}

/// Finds the contact a WhatsApp id belongs to: by the id the provider returned when we sent,
/// else by the number itself (`+<wa_id>`).
pub async fn contact_by_wa_id(conn: &mut SqliteConnection, wa_id: &str) -> Result<Option<Contact>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT phone, wa_id, opted_out_at, last_inbound_at FROM contacts WHERE wa_id = $1 OR phone = $2
         ORDER BY CASE WHEN wa_id = $1 THEN 0 ELSE 1 END LIMIT 1",
    )
    .bind(wa_id)
    .bind(format!("+{wa_id}"))
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(contact_from_row))
}

/// Creates the contact if needed and records the provider's id for it.
pub async fn upsert_contact(
    conn: &mut SqliteConnection,
    phone: &str,
    wa_id: Option<&str>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO contacts (phone, wa_id, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (phone) DO UPDATE SET wa_id = COALESCE(excluded.wa_id, contacts.wa_id), updated_at = excluded.updated_at",
    )
    .bind(phone)
    .bind(wa_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_last_inbound(conn: &mut SqliteConnection, phone: &str, at: i64, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE contacts SET last_inbound_at = MAX(COALESCE(last_inbound_at, 0), $2), updated_at = $3 WHERE phone = $1",
    )
    .bind(phone)
    .bind(at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_opted_out(conn: &mut SqliteConnection, phone: &str, text: &str, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE contacts SET opted_out_at = COALESCE(opted_out_at, $2), opt_out_text = $3, updated_at = $2 WHERE phone = $1")
        .bind(phone)
        .bind(now)
        .bind(text)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores an inbound message. False when it was already stored (a redelivered webhook).
#[allow(clippy::too_many_arguments)]
pub async fn insert_inbound(
    conn: &mut SqliteConnection,
    provider_message_id: &str,
    provider_id: &str,
    wa_id: &str,
    phone: Option<&str>,
    record: Option<(&str, &str)>,
    in_reply_to: Option<i64>,
    kind: &str,
    body: &str,
    at: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO inbound_messages (provider_message_id, provider_id, wa_id, phone, source_id, record_key, in_reply_to, kind, body, received_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(provider_message_id)
    .bind(provider_id)
    .bind(wa_id)
    .bind(phone)
    .bind(record.map(|r| r.0))
    .bind(record.map(|r| r.1))
    .bind(in_reply_to)
    .bind(kind)
    .bind(body)
    .bind(at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

// ---------------------------------------------------------------------------------------------
// Write-back queue

/// Which row a write-back cell belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum WriteTarget {
    /// The row whose key column holds this key (resolved at flush time).
    Record(RecordKey),
    /// A row that has no key: written only if, at flush time, that row's key is still blank.
    BlankKeyRow(u32),
    /// Every row holding this key (duplicate-key warnings).
    AllRowsWithKey(RecordKey),
}

const BLANK_ROW_PREFIX: &str = "\u{1}row:";
const ALL_ROWS_PREFIX: &str = "\u{1}all:";

impl WriteTarget {
    fn encode(&self) -> String {
        match self {
            WriteTarget::Record(k) => k.0.clone(),
            WriteTarget::BlankKeyRow(n) => format!("{BLANK_ROW_PREFIX}{n}"),
            WriteTarget::AllRowsWithKey(k) => format!("{ALL_ROWS_PREFIX}{}", k.0),
        }
    }

    fn decode(s: String) -> Self {
        if let Some(k) = s.strip_prefix(ALL_ROWS_PREFIX) {
            return WriteTarget::AllRowsWithKey(RecordKey(k.to_string()));
        }
        match s.strip_prefix(BLANK_ROW_PREFIX).and_then(|n| n.parse().ok()) {
            Some(n) => WriteTarget::BlankKeyRow(n),
            None => WriteTarget::Record(RecordKey(s)),
        }
    }
}

/// One cell to write back. Later writes to the same cell replace earlier ones (coalescing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CellWrite {
    pub source_id: String,
    pub target: WriteTarget,
    pub column: String,
    pub value: String,
}

/// A queued cell write with its sequence number (to delete only what was flushed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    pub write: CellWrite,
    pub seq: i64,
}

pub async fn pending_writes(conn: &mut SqliteConnection, source_id: &str) -> Result<Vec<PendingWrite>, sqlx::Error> {
    let rows =
        sqlx::query("SELECT record_key, column_name, value, seq FROM writeback WHERE source_id = $1 ORDER BY seq")
            .bind(source_id)
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| PendingWrite {
            write: CellWrite {
                source_id: source_id.to_string(),
                target: WriteTarget::decode(r.get("record_key")),
                column: r.get("column_name"),
                value: r.get("value"),
            },
            seq: r.get("seq"),
        })
        .collect())
}

/// Deletes flushed writes, unless the cell was written again meanwhile (newer seq).
pub async fn delete_writes(conn: &mut SqliteConnection, done: &[PendingWrite]) -> Result<(), sqlx::Error> {
    for p in done {
        sqlx::query("DELETE FROM writeback WHERE source_id = $1 AND record_key = $2 AND column_name = $3 AND seq = $4")
            .bind(&p.write.source_id)
            .bind(p.write.target.encode())
            .bind(&p.write.column)
            .bind(p.seq)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn pending_write_count(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM writeback").fetch_one(conn).await
}

// ---------------------------------------------------------------------------------------------
// Row issues (reported once)

/// Records an issue. True when it is new (log it and write it to the row).
pub async fn note_issue(
    conn: &mut SqliteConnection,
    source_id: &str,
    issue_key: &str,
    record_key: &str,
    message: &str,
    now: i64,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query(
        "INSERT INTO row_issues (source_id, issue_key, record_key, message, first_seen_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT DO NOTHING",
    )
    .bind(source_id)
    .bind(issue_key)
    .bind(record_key)
    .bind(message)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// All open issues of a source: (issue key, record key).
pub async fn issues(conn: &mut SqliteConnection, source_id: &str) -> Result<Vec<(String, String)>, sqlx::Error> {
    let rows = sqlx::query("SELECT issue_key, record_key FROM row_issues WHERE source_id = $1")
        .bind(source_id)
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(|r| (r.get("issue_key"), r.get("record_key"))).collect())
}

pub async fn resolve_issue(conn: &mut SqliteConnection, source_id: &str, issue_key: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM row_issues WHERE source_id = $1 AND issue_key = $2")
        .bind(source_id)
        .bind(issue_key)
        .execute(conn)
        .await?;
    Ok(())
}

/// Inbound messages stored (for summaries and tests).
pub async fn inbound_count(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM inbound_messages").fetch_one(conn).await
}

/// True when the record has an open row problem (its error cell shows it).
pub async fn has_open_issue(
    conn: &mut SqliteConnection,
    source_id: &str,
    record_key: &str,
) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM row_issues WHERE source_id = $1 AND record_key = $2")
        .bind(source_id)
        .bind(record_key)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// Contacts for several phones at once (the dispatcher checks a chunk in one query).
pub async fn contacts_for(
    conn: &mut SqliteConnection,
    phones: &[&str],
) -> Result<std::collections::HashMap<String, Contact>, sqlx::Error> {
    if phones.is_empty() {
        return Ok(Default::default());
    }
    let placeholders: Vec<String> = (1..=phones.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT phone, wa_id, opted_out_at, last_inbound_at FROM contacts WHERE phone IN ({})",
        placeholders.join(", ")
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for p in phones {
        q = q.bind(*p);
    }
    let rows = q.fetch_all(conn).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let c = contact_from_row(r);
            (c.phone.clone(), c)
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Timers and campaigns

/// A stored timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimerRow {
    pub rule_id: String,
    pub source_id: String,
    pub record_key: String,
    pub slot: String,
    pub occurrence: String,
    pub due_at: i64,
    /// `pending`, `fired`, `skipped` or `cancelled`.
    pub state: String,
}

fn timer_from_row(r: &SqliteRow) -> TimerRow {
    TimerRow {
        rule_id: r.get("rule_id"),
        source_id: r.get("source_id"),
        record_key: r.get("record_key"),
        slot: r.get("slot"),
        occurrence: r.get("occurrence"),
        due_at: r.get("due_at"),
        state: r.get("state"),
    }
}

/// Timers of a source, all of them or those of some records.
pub async fn timers_of(
    conn: &mut SqliteConnection,
    source_id: &str,
    keys: Option<&[&str]>,
) -> Result<Vec<TimerRow>, sqlx::Error> {
    const COLS: &str = "rule_id, source_id, record_key, slot, occurrence, due_at, state";
    match keys {
        None => {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLS} FROM timers WHERE source_id = $1")))
                .bind(source_id)
                .fetch_all(conn)
                .await?;
            Ok(rows.iter().map(timer_from_row).collect())
        }
        Some(keys) => {
            let mut out = Vec::new();
            for chunk in keys.chunks(500) {
                let ph: Vec<String> = (2..chunk.len() + 2).map(|i| format!("${i}")).collect();
                let sql =
                    format!("SELECT {COLS} FROM timers WHERE source_id = $1 AND record_key IN ({})", ph.join(", "));
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(source_id);
                for k in chunk {
                    q = q.bind(*k);
                }
                out.extend(q.fetch_all(&mut *conn).await?.iter().map(timer_from_row));
            }
            Ok(out)
        }
    }
}

pub async fn upsert_timer(conn: &mut SqliteConnection, t: &TimerRow, now: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO timers (rule_id, source_id, record_key, slot, occurrence, due_at, state, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (rule_id, record_key, slot) DO UPDATE SET source_id = excluded.source_id,
           occurrence = excluded.occurrence, due_at = excluded.due_at, state = excluded.state, updated_at = excluded.updated_at",
    )
    .bind(&t.rule_id)
    .bind(&t.source_id)
    .bind(&t.record_key)
    .bind(&t.slot)
    .bind(&t.occurrence)
    .bind(t.due_at)
    .bind(&t.state)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Pending timers due at or before `now`, earliest first.
pub async fn due_timers(conn: &mut SqliteConnection, now: i64, limit: i64) -> Result<Vec<TimerRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT rule_id, source_id, record_key, slot, occurrence, due_at, state FROM timers
         WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.iter().map(timer_from_row).collect())
}

/// When the earliest pending timer is due.
pub async fn next_timer_at(conn: &mut SqliteConnection) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT MIN(due_at) FROM timers WHERE state = 'pending'").fetch_one(conn).await
}

/// The stored snapshot row of one record (its state as of the last committed poll).
pub async fn snapshot_row(
    conn: &mut SqliteConnection,
    source_id: &str,
    key: &str,
) -> anyhow::Result<Option<SnapshotRow>> {
    let row = sqlx::query("SELECT row_hash, fields FROM snapshot_rows WHERE source_id = $1 AND record_key = $2")
        .bind(source_id)
        .bind(key)
        .fetch_optional(conn)
        .await?;
    match row {
        None => Ok(None),
        Some(r) => {
            let fields: String = r.get("fields");
            Ok(Some(SnapshotRow { hash: r.get::<i64, _>("row_hash") as u64, fields: serde_json::from_str(&fields)? }))
        }
    }
}

/// A page of a source's snapshot in key order, after `after` (campaigns walk it page by page).
pub async fn snapshot_page(
    conn: &mut SqliteConnection,
    source_id: &str,
    after: &str,
    limit: i64,
) -> anyhow::Result<Vec<(RecordKey, SnapshotRow)>> {
    let rows = sqlx::query(
        "SELECT record_key, row_hash, fields FROM snapshot_rows WHERE source_id = $1 AND record_key > $2 ORDER BY record_key LIMIT $3",
    )
    .bind(source_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let fields: String = r.get("fields");
        out.push((
            RecordKey(r.get("record_key")),
            SnapshotRow { hash: r.get::<i64, _>("row_hash") as u64, fields: serde_json::from_str(&fields)? },
        ));
    }
    Ok(out)
}

/// The next occurrence a campaign waits for.
pub async fn campaign_next(conn: &mut SqliteConnection, rule_id: &str) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT next_at FROM campaigns WHERE rule_id = $1").bind(rule_id).fetch_optional(conn).await
}

pub async fn set_campaign_next(
    conn: &mut SqliteConnection,
    rule_id: &str,
    next_at: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO campaigns (rule_id, next_at, updated_at) VALUES ($1, $2, $3)
         ON CONFLICT (rule_id) DO UPDATE SET next_at = excluded.next_at, updated_at = excluded.updated_at",
    )
    .bind(rule_id)
    .bind(next_at)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a message with this idempotency key exists (used by `plan` and tests).
pub async fn message_exists(conn: &mut SqliteConnection, idempotency_key: &str) -> Result<bool, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE idempotency_key = $1")
        .bind(idempotency_key)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// Commits many intents at once (campaigns), `queued`, skipping idempotency keys that exist.
/// Returns how many were new.
pub async fn insert_intents(conn: &mut SqliteConnection, intents: &[(Intent, i64)], now: i64) -> anyhow::Result<u64> {
    let mut inserted = 0;
    for chunk in intents.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO messages (idempotency_key, rule_id, source_id, record_key, provider_id, phone, content, fallback,
                                   state, attempts, next_attempt_at, created_at, updated_at, state_at) ",
        );
        let mut rows = Vec::with_capacity(chunk.len());
        for (intent, due) in chunk {
            let content = serde_json::to_string(&intent.content)?;
            let fallback = intent.fallback.as_ref().map(serde_json::to_string).transpose()?;
            rows.push((intent, *due, content, fallback));
        }
        qb.push_values(rows, |mut b, (intent, due, content, fallback)| {
            b.push_bind(intent.idempotency_key.clone())
                .push_bind(intent.rule_id.clone())
                .push_bind(intent.source_id.clone())
                .push_bind(intent.record_key.0.clone())
                .push_bind(intent.provider_id.clone())
                .push_bind(intent.phone.as_str().to_string())
                .push_bind(content)
                .push_bind(fallback)
                .push_bind("queued")
                .push_bind(0i64)
                .push_bind(due)
                .push_bind(now)
                .push_bind(now)
                .push_bind(now);
        });
        qb.push(" ON CONFLICT (idempotency_key) DO NOTHING");
        inserted += qb.build().execute(&mut *conn).await?.rows_affected();
    }
    Ok(inserted)
}

/// Queues cells for write-back, several per statement. A cell already queued takes the new value
/// and a new sequence number, so a flush that read the old value does not delete the new one.
pub async fn queue_writes(conn: &mut SqliteConnection, writes: &[CellWrite]) -> Result<(), sqlx::Error> {
    if writes.is_empty() {
        return Ok(());
    }
    let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM writeback").fetch_one(&mut *conn).await?;
    // One cell may appear twice in a batch: keep the last value, as writing them in order would.
    let mut seen = std::collections::HashSet::new();
    let mut cells: Vec<(String, &CellWrite)> = Vec::with_capacity(writes.len());
    for w in writes.iter().rev() {
        let target = w.target.encode();
        if seen.insert((w.source_id.as_str(), target.clone(), w.column.as_str())) {
            cells.push((target, w));
        }
    }
    for chunk in cells.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO writeback (source_id, record_key, column_name, value, seq) ",
        );
        qb.push_values(chunk, |mut b, (target, w)| {
            b.push_bind(w.source_id.as_str())
                .push_bind(target.as_str())
                .push_bind(w.column.as_str())
                .push_bind(w.value.as_str())
                .push_bind(next);
        });
        qb.push(" ON CONFLICT (source_id, record_key, column_name) DO UPDATE SET value = excluded.value, seq = excluded.seq");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}
