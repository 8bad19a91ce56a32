//! Hand-offs to a person: who, which inbox record (its key), the transcript staff read, the
//! staff replies taken so far and those waiting for the person to write again. At most one
//! is open per contact (a partial UNIQUE index).

use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;

use super::{col, StoreError, StoreResult};
use crate::domain::RecordKey;

/// A stored hand-off.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    /// Its record's key in the inbox (`H-…`).
    pub key: String,
    pub phone: String,
    /// The provider the contact writes through.
    pub provider_id: String,
    /// The contact's own record, when they have one.
    pub record: Option<(String, RecordKey)>,
    pub topic: String,
    /// The language the contact is spoken to in.
    pub language: String,
    pub opened_at: i64,
    pub closed_at: Option<i64>,
    pub transcript: String,
    /// Staff replies taken so far.
    pub replies: i64,
    /// Staff replies waiting for the person to write (their window was closed).
    pub pending: Vec<PendingReply>,
    /// The person's oldest message no one answered yet.
    pub waiting_since: Option<i64>,
    /// When the person was last told the office is closed.
    pub after_hours_at: Option<i64>,
    /// When it was flagged as waiting too long (cleared when staff answer).
    pub flagged_at: Option<i64>,
}

/// A staff reply kept until the person writes again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingReply {
    pub text: String,
    /// Who wrote it (the inbox's assigned field), shown in the transcript.
    #[serde(default)]
    pub by: Option<String>,
    /// Its number among the hand-off's replies (its idempotency key).
    pub n: i64,
    /// Already in the transcript (it was queued inside the window and met it closed on its
    /// way out), so releasing it adds no second line.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shown: bool,
    /// Its place among the waiting replies when that is not `n`: the number it was first
    /// written under, for one that came back after a later reply was written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<i64>,
}

const COLUMNS: &str = "key, phone, provider_id, source_id, record_key, topic, language, opened_at, closed_at, transcript, replies, pending, waiting_since, after_hours_at, flagged_at";

fn from_row(r: &sqlx::sqlite::SqliteRow) -> StoreResult<Handoff> {
    let source: Option<String> = col(r, "source_id")?;
    let key: Option<String> = col(r, "record_key")?;
    let pending: String = col(r, "pending")?;
    Ok(Handoff {
        key: col(r, "key")?,
        phone: col(r, "phone")?,
        provider_id: col(r, "provider_id")?,
        record: source.zip(key).map(|(s, k)| (s, RecordKey(k))),
        topic: col(r, "topic")?,
        language: col(r, "language")?,
        opened_at: col(r, "opened_at")?,
        closed_at: col(r, "closed_at")?,
        transcript: col(r, "transcript")?,
        replies: col(r, "replies")?,
        pending: serde_json::from_str(&pending)
            .map_err(|e| StoreError::Corrupt { what: "hand-off pending replies", detail: e.to_string() })?,
        waiting_since: col(r, "waiting_since")?,
        after_hours_at: col(r, "after_hours_at")?,
        flagged_at: col(r, "flagged_at")?,
    })
}

/// Stores a new hand-off. `false` when the contact already has an open one or the key exists
/// (the message that opened it handled again).
pub async fn insert_handoff(conn: &mut SqliteConnection, h: &Handoff) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO handoffs (key, phone, provider_id, source_id, record_key, topic, language, opened_at, transcript, waiting_since)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(&h.key)
    .bind(&h.phone)
    .bind(&h.provider_id)
    .bind(h.record.as_ref().map(|(s, _)| s.as_str()))
    .bind(h.record.as_ref().map(|(_, k)| k.0.as_str()))
    .bind(&h.topic)
    .bind(&h.language)
    .bind(h.opened_at)
    .bind(&h.transcript)
    .bind(h.waiting_since)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// The contact's open hand-off.
pub async fn open_handoff_of(conn: &mut SqliteConnection, phone: &str) -> StoreResult<Option<Handoff>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM handoffs WHERE phone = $1 AND closed_at IS NULL"
    )))
    .bind(phone)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// A hand-off by its inbox key.
pub async fn handoff(conn: &mut SqliteConnection, key: &str) -> StoreResult<Option<Handoff>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM handoffs WHERE key = $1")))
        .bind(key)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Saves what moves while a hand-off is open: transcript, replies, pending, waiting time,
/// and its closing.
pub async fn update_handoff(conn: &mut SqliteConnection, h: &Handoff) -> StoreResult<()> {
    let pending = serde_json::to_string(&h.pending)
        .map_err(|e| StoreError::Corrupt { what: "hand-off pending replies", detail: e.to_string() })?;
    sqlx::query(
        "UPDATE handoffs SET transcript = $2, replies = $3, pending = $4, waiting_since = $5, closed_at = $6,
             after_hours_at = $7, flagged_at = $8 WHERE key = $1",
    )
    .bind(&h.key)
    .bind(&h.transcript)
    .bind(h.replies)
    .bind(pending)
    .bind(h.waiting_since)
    .bind(h.closed_at)
    .bind(h.after_hours_at)
    .bind(h.flagged_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Of these numbers, those with an open hand-off.
pub async fn phones_in_handoff(
    conn: &mut SqliteConnection,
    phones: &[&str],
) -> StoreResult<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for chunk in phones.chunks(500) {
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT phone FROM handoffs WHERE closed_at IS NULL AND phone IN ");
        super::push_list(&mut qb, chunk.iter().copied());
        let rows: Vec<String> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
        out.extend(rows);
    }
    Ok(out)
}

/// Open hand-offs whose person has waited since before `waiting_before` and that are not
/// flagged yet.
pub async fn handoffs_to_flag(conn: &mut SqliteConnection, waiting_before: i64) -> StoreResult<Vec<Handoff>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM handoffs WHERE closed_at IS NULL AND flagged_at IS NULL AND waiting_since <= $1 LIMIT 100"
    )))
    .bind(waiting_before)
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// Open hand-offs, and how many of them are flagged as waiting too long.
pub async fn handoff_counts(conn: &mut SqliteConnection) -> StoreResult<(i64, i64)> {
    let (open, flagged): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(flagged_at IS NOT NULL), 0) FROM handoffs WHERE closed_at IS NULL",
    )
    .fetch_one(conn)
    .await?;
    Ok((open, flagged))
}

/// Open hand-offs (for tests and status).
pub async fn open_handoff_count(conn: &mut SqliteConnection) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM handoffs WHERE closed_at IS NULL").fetch_one(conn).await?)
}
