//! Conversations in progress: one per contact, with the flow, the step waiting for an answer
//! and the answers so far (a JSON document), so they survive restarts.

use sqlx::SqliteConnection;

use super::{col, StoreError, StoreResult};
use crate::domain::RecordKey;
use crate::flows::Conversation;

/// A stored conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredConversation {
    pub phone: String,
    pub conversation: Conversation,
    /// The provider the contact writes through (answers go back through it).
    pub provider_id: String,
    /// The contact's record, when they have one.
    pub record: Option<(String, RecordKey)>,
    pub started_at: i64,
    pub updated_at: i64,
    /// When the flow's reminder is due (`None`: no reminder, or already sent).
    pub remind_at: Option<i64>,
    /// When the conversation is over if nobody answers.
    pub expires_at: Option<i64>,
}

pub async fn conversation(conn: &mut SqliteConnection, phone: &str) -> StoreResult<Option<StoredConversation>> {
    let row = sqlx::query(
        "SELECT phone, state, provider_id, source_id, record_key, started_at, updated_at, remind_at, expires_at FROM conversations WHERE phone = $1",
    )
    .bind(phone)
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    from_row(&r)
}

fn from_row(r: &sqlx::sqlite::SqliteRow) -> StoreResult<Option<StoredConversation>> {
    let state: String = col(r, "state")?;
    // A state this build cannot read (written by another version) is a conversation over.
    let Ok(conversation) = serde_json::from_str::<Conversation>(&state) else { return Ok(None) };
    let source: Option<String> = col(r, "source_id")?;
    let key: Option<String> = col(r, "record_key")?;
    Ok(Some(StoredConversation {
        phone: col(r, "phone")?,
        conversation,
        provider_id: col(r, "provider_id")?,
        record: source.zip(key).map(|(s, k)| (s, RecordKey(k))),
        started_at: col(r, "started_at")?,
        updated_at: col(r, "updated_at")?,
        remind_at: col(r, "remind_at")?,
        expires_at: col(r, "expires_at")?,
    }))
}

/// Conversations whose reminder is due or that expired, by `now`.
pub async fn conversations_due(
    conn: &mut SqliteConnection,
    now: i64,
    limit: i64,
) -> StoreResult<Vec<StoredConversation>> {
    let rows = sqlx::query(
        "SELECT phone, state, provider_id, source_id, record_key, started_at, updated_at, remind_at, expires_at FROM conversations
         WHERE remind_at <= $1 OR expires_at <= $1 ORDER BY phone LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        match from_row(r)? {
            Some(c) => out.push(c),
            // Unreadable (another build's state): over, so it does not come back every round.
            None => {
                let phone: String = col(r, "phone")?;
                end_conversation(&mut *conn, &phone).await?;
            }
        }
    }
    Ok(out)
}

/// The earliest reminder or expiry of any conversation.
pub async fn next_conversation_due(conn: &mut SqliteConnection) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT MIN(t) FROM (SELECT MIN(remind_at) AS t FROM conversations UNION ALL SELECT MIN(expires_at) FROM conversations)",
    )
    .fetch_one(conn)
    .await?)
}

/// Saves a conversation (a new one, or the next step of one).
pub async fn save_conversation(conn: &mut SqliteConnection, c: &StoredConversation) -> StoreResult<()> {
    let state = serde_json::to_string(&c.conversation)
        .map_err(|e| StoreError::Corrupt { what: "conversation", detail: e.to_string() })?;
    sqlx::query(
        "INSERT INTO conversations (phone, flow_id, state, provider_id, source_id, record_key, started_at, updated_at, remind_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (phone) DO UPDATE SET flow_id = excluded.flow_id, state = excluded.state,
             provider_id = excluded.provider_id, source_id = excluded.source_id, record_key = excluded.record_key,
             started_at = excluded.started_at, updated_at = excluded.updated_at,
             remind_at = excluded.remind_at, expires_at = excluded.expires_at",
    )
    .bind(&c.phone)
    .bind(&c.conversation.flow)
    .bind(state)
    .bind(&c.provider_id)
    .bind(c.record.as_ref().map(|(s, _)| s.as_str()))
    .bind(c.record.as_ref().map(|(_, k)| k.0.as_str()))
    .bind(c.started_at)
    .bind(c.updated_at)
    .bind(c.remind_at)
    .bind(c.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends a contact's conversation.
pub async fn end_conversation(conn: &mut SqliteConnection, phone: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM conversations WHERE phone = $1").bind(phone).execute(conn).await?;
    Ok(())
}

/// Conversations in progress (for tests and status).
pub async fn conversation_count(conn: &mut SqliteConnection) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM conversations").fetch_one(conn).await?)
}
