//! Files people sent: which inbound message carried one, the provider's reference to it,
//! and whether it was fetched (`pending` → `stored`, or `failed` with the reason). The bytes
//! live in a folder next to the state file, named by the row's id.

use sqlx::SqliteConnection;

use super::{col, StoreResult};

/// A file's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRow {
    pub id: i64,
    pub inbound_id: String,
    pub provider_id: String,
    pub phone: Option<String>,
    pub media_type: String,
    pub media_ref: String,
    pub mime_type: String,
    pub filename: Option<String>,
    /// `pending`, `stored` or `failed`.
    pub state: String,
    pub size: Option<i64>,
    pub error: Option<String>,
    pub attempts: i64,
    pub created_at: i64,
}

const COLUMNS: &str =
    "id, inbound_id, provider_id, phone, media_type, media_ref, mime_type, filename, state, size, error, attempts, created_at";

fn from_row(r: &sqlx::sqlite::SqliteRow) -> StoreResult<MediaRow> {
    Ok(MediaRow {
        id: col(r, "id")?,
        inbound_id: col(r, "inbound_id")?,
        provider_id: col(r, "provider_id")?,
        phone: col(r, "phone")?,
        media_type: col(r, "media_type")?,
        media_ref: col(r, "media_ref")?,
        mime_type: col(r, "mime_type")?,
        filename: col(r, "filename")?,
        state: col(r, "state")?,
        size: col(r, "size")?,
        error: col(r, "error")?,
        attempts: col(r, "attempts")?,
        created_at: col(r, "created_at")?,
    })
}

/// What an inbound message's file is, to record.
pub struct NewMedia<'a> {
    pub inbound_id: &'a str,
    pub provider_id: &'a str,
    pub phone: Option<&'a str>,
    pub media_type: &'a str,
    pub media_ref: &'a str,
    pub mime_type: &'a str,
    pub filename: Option<&'a str>,
}

/// Records a file to fetch (once per inbound message: a redelivery finds the same row).
/// Returns its id and creation time (ids of deleted rows may be used again: a link signs
/// both).
pub async fn record_media(conn: &mut SqliteConnection, m: &NewMedia<'_>, now: i64) -> StoreResult<(i64, i64)> {
    sqlx::query(
        "INSERT INTO media (inbound_id, provider_id, phone, media_type, media_ref, mime_type, filename, next_attempt_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (inbound_id) DO NOTHING",
    )
    .bind(m.inbound_id)
    .bind(m.provider_id)
    .bind(m.phone)
    .bind(m.media_type)
    .bind(m.media_ref)
    .bind(m.mime_type)
    .bind(m.filename)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(sqlx::query_as("SELECT id, created_at FROM media WHERE inbound_id = $1")
        .bind(m.inbound_id)
        .fetch_one(conn)
        .await?)
}

/// Files due for a (first or next) fetch.
pub async fn media_due(conn: &mut SqliteConnection, now: i64, limit: i64) -> StoreResult<Vec<MediaRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM media WHERE state = 'pending' AND next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2"
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(from_row).collect()
}

/// When the next pending file is due.
pub async fn next_media_due(conn: &mut SqliteConnection) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM media WHERE state = 'pending'").fetch_one(conn).await?)
}

/// A file by id.
pub async fn media_by_id(conn: &mut SqliteConnection, id: i64) -> StoreResult<Option<MediaRow>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM media WHERE id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The file is on disk.
pub async fn media_stored(
    conn: &mut SqliteConnection,
    id: i64,
    mime_type: &str,
    size: i64,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE media SET state = 'stored', mime_type = $2, size = $3, error = NULL, stored_at = $4 WHERE id = $1",
    )
    .bind(id)
    .bind(mime_type)
    .bind(size)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The file will not be fetched: why.
pub async fn media_failed(conn: &mut SqliteConnection, id: i64, error: &str) -> StoreResult<()> {
    sqlx::query("UPDATE media SET state = 'failed', error = $2 WHERE id = $1")
        .bind(id)
        .bind(error)
        .execute(conn)
        .await?;
    Ok(())
}

/// Another try later.
pub async fn media_retry(conn: &mut SqliteConnection, id: i64, error: &str, at: i64) -> StoreResult<()> {
    sqlx::query("UPDATE media SET attempts = attempts + 1, error = $2, next_attempt_at = $3 WHERE id = $1")
        .bind(id)
        .bind(error)
        .bind(at)
        .execute(conn)
        .await?;
    Ok(())
}

/// Files older than `before` (their rows go; the caller deletes the bytes first).
/// Files still kept (or never fetched) that arrived before `before`.
pub async fn media_older_than(conn: &mut SqliteConnection, before: i64, limit: i64) -> StoreResult<Vec<i64>> {
    Ok(sqlx::query_scalar("SELECT id FROM media WHERE created_at < $1 AND state <> 'expired' ORDER BY id LIMIT $2")
        .bind(before)
        .bind(limit)
        .fetch_all(conn)
        .await?)
}

/// Marks files whose bytes are gone: the row keeps only what lets its link answer why (410),
/// not whose it was or what it was called.
pub async fn expire_media_rows(conn: &mut SqliteConnection, ids: &[i64], why: &str) -> StoreResult<()> {
    for id in ids {
        sqlx::query(
            "UPDATE media SET state = 'expired', error = CASE WHEN state = 'failed' THEN error ELSE $2 END, \
             phone = NULL, filename = NULL, media_ref = '' WHERE id = $1",
        )
        .bind(id)
        .bind(why)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// Forgets expired rows that arrived before `before`: their links then open nothing (403).
pub async fn delete_expired_media_rows(conn: &mut SqliteConnection, before: i64, limit: i64) -> StoreResult<u64> {
    let r = sqlx::query(
        "DELETE FROM media WHERE id IN (SELECT id FROM media WHERE state = 'expired' AND created_at < $1 LIMIT $2)",
    )
    .bind(before)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// The key that signs media links (created on first use).
pub async fn media_link_key(conn: &mut SqliteConnection) -> StoreResult<Vec<u8>> {
    let existing: Option<String> =
        sqlx::query_scalar("SELECT value FROM store_keys WHERE name = 'media_link'").fetch_optional(&mut *conn).await?;
    if let Some(k) = existing.and_then(|k| hex::decode(k).ok()) {
        return Ok(k);
    }
    let key: [u8; 32] = rand::random();
    sqlx::query("INSERT INTO store_keys (name, value) VALUES ('media_link', $1) ON CONFLICT (name) DO NOTHING")
        .bind(hex::encode(key))
        .execute(&mut *conn)
        .await?;
    let stored: String =
        sqlx::query_scalar("SELECT value FROM store_keys WHERE name = 'media_link'").fetch_one(&mut *conn).await?;
    Ok(hex::decode(stored).unwrap_or_else(|_| key.to_vec()))
}
