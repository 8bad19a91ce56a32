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
}

pub async fn conversation(conn: &mut SqliteConnection, phone: &str) -> StoreResult<Option<StoredConversation>> {
    let row = sqlx::query(
        "SELECT phone, state, provider_id, source_id, record_key, started_at, updated_at FROM conversations WHERE phone = $1",
    )
    .bind(phone)
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let state: String = col(&r, "state")?;
    // A state this build cannot read (written by another version) is a conversation over.
    let Ok(conversation) = serde_json::from_str::<Conversation>(&state) else { return Ok(None) };
    let source: Option<String> = col(&r, "source_id")?;
    let key: Option<String> = col(&r, "record_key")?;
    Ok(Some(StoredConversation {
        phone: col(&r, "phone")?,
        conversation,
        provider_id: col(&r, "provider_id")?,
        record: source.zip(key).map(|(s, k)| (s, RecordKey(k))),
        started_at: col(&r, "started_at")?,
        updated_at: col(&r, "updated_at")?,
    }))
}

/// Saves a conversation (a new one, or the next step of one).
pub async fn save_conversation(conn: &mut SqliteConnection, c: &StoredConversation) -> StoreResult<()> {
    let state = serde_json::to_string(&c.conversation)
        .map_err(|e| StoreError::Corrupt { what: "conversation", detail: e.to_string() })?;
    sqlx::query(
        "INSERT INTO conversations (phone, flow_id, state, provider_id, source_id, record_key, started_at, updated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (phone) DO UPDATE SET flow_id = excluded.flow_id, state = excluded.state,
             provider_id = excluded.provider_id, source_id = excluded.source_id, record_key = excluded.record_key,
             started_at = excluded.started_at, updated_at = excluded.updated_at",
    )
    .bind(&c.phone)
    .bind(&c.conversation.flow)
    .bind(state)
    .bind(&c.provider_id)
    .bind(c.record.as_ref().map(|(s, _)| s.as_str()))
    .bind(c.record.as_ref().map(|(_, k)| k.0.as_str()))
    .bind(c.started_at)
    .bind(c.updated_at)
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
