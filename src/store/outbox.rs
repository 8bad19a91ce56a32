//! The outbox: every message, from `queued` (committed before any network call) through
//! `sending` (committed before the call) to its final state. The idempotency key
//! (`rule:record:occurrence`) is UNIQUE: a record gets a rule's message once per occurrence.

use std::collections::HashMap;
use std::str::FromStr;

use sqlx::sqlite::SqliteRow;
use sqlx::SqliteConnection;

use super::{col, StoreError, StoreResult};
use crate::domain::{Intent, MessageContent, MessageState, PhoneNumber, RecordKey};

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
    /// The provider's id for the recipient, as it answered the send.
    pub recipient_id: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub state_at: i64,
}

const MESSAGE_COLUMNS: &str = "id, idempotency_key, rule_id, source_id, record_key, provider_id, phone, content, fallback, state, attempts, next_attempt_at, provider_message_id, recipient_id, error, created_at, updated_at, state_at";

fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what, detail: e.to_string() }
}

fn message_from_row(r: &SqliteRow) -> StoreResult<OutboxMessage> {
    let content: String = col(r, "content")?;
    let fallback: Option<String> = col(r, "fallback")?;
    let state: String = col(r, "state")?;
    Ok(OutboxMessage {
        id: col(r, "id")?,
        idempotency_key: col(r, "idempotency_key")?,
        rule_id: col(r, "rule_id")?,
        source_id: col(r, "source_id")?,
        record_key: RecordKey(col(r, "record_key")?),
        provider_id: col(r, "provider_id")?,
        phone: PhoneNumber::from_e164_unchecked(col::<String>(r, "phone")?),
        content: serde_json::from_str(&content).map_err(|e| corrupt("message content", e))?,
        fallback: fallback.map(|f| serde_json::from_str(&f)).transpose().map_err(|e| corrupt("message fallback", e))?,
        state: MessageState::from_str(&state).map_err(|e| corrupt("message state", e))?,
        attempts: col::<i64>(r, "attempts")?.clamp(0, i64::from(u32::MAX)) as u32,
        next_attempt_at: col(r, "next_attempt_at")?,
        provider_message_id: col(r, "provider_message_id")?,
        recipient_id: col(r, "recipient_id")?,
        error: col(r, "error")?,
        created_at: col(r, "created_at")?,
        updated_at: col(r, "updated_at")?,
        state_at: col(r, "state_at")?,
    })
}

fn messages_from_rows(rows: Vec<SqliteRow>) -> StoreResult<Vec<OutboxMessage>> {
    rows.iter().map(message_from_row).collect()
}

fn encode(content: &MessageContent) -> StoreResult<String> {
    serde_json::to_string(content).map_err(|e| corrupt("message content", e))
}

/// Commits an intent as `queued`, due at `due_at`. Returns the new id, or `None` when a message
/// with the same idempotency key already exists (it is never sent twice).
pub async fn insert_intent(
    conn: &mut SqliteConnection,
    intent: &Intent,
    due_at: i64,
    now: i64,
) -> StoreResult<Option<i64>> {
    let content = encode(&intent.content)?;
    let fallback = intent.fallback.as_ref().map(encode).transpose()?;
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

/// Commits many intents at once (campaigns), `queued`, skipping idempotency keys that exist.
/// Returns the idempotency keys that were new, so that only those show `queued` on their row.
pub async fn insert_intents(
    conn: &mut SqliteConnection,
    intents: &[(Intent, i64)],
    now: i64,
) -> StoreResult<Vec<String>> {
    let mut inserted = Vec::new();
    for chunk in intents.chunks(500) {
        let mut rows = Vec::with_capacity(chunk.len());
        for (intent, due) in chunk {
            rows.push((intent, *due, encode(&intent.content)?, intent.fallback.as_ref().map(encode).transpose()?));
        }
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO messages (idempotency_key, rule_id, source_id, record_key, provider_id, phone, content, fallback,
                                   state, attempts, next_attempt_at, created_at, updated_at, state_at) ",
        );
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
        qb.push(" ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key");
        let rows = qb.build().fetch_all(&mut *conn).await?;
        for r in &rows {
            inserted.push(col::<String>(r, "idempotency_key")?);
        }
    }
    Ok(inserted)
}

/// Queued messages of `provider_id` whose time has come, oldest first.
pub async fn due_messages(
    conn: &mut SqliteConnection,
    provider_id: &str,
    now: i64,
    limit: i64,
) -> StoreResult<Vec<OutboxMessage>> {
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
pub async fn next_due_at(conn: &mut SqliteConnection, provider_id: &str) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT MIN(next_attempt_at) FROM messages WHERE provider_id = $1 AND state = 'queued'")
        .bind(provider_id)
        .fetch_one(conn)
        .await?)
}

/// Messages left `sending` (a send whose outcome is unknown) since before `before`.
pub async fn in_doubt(conn: &mut SqliteConnection, provider_id: &str, before: i64) -> StoreResult<Vec<OutboxMessage>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE provider_id = $1 AND state = 'sending' AND updated_at < $2 ORDER BY id"
    )))
    .bind(provider_id)
    .bind(before)
    .fetch_all(conn)
    .await?;
    messages_from_rows(rows)
}

/// Provider message ids already recorded on this provider's messages to `phone` created since
/// `since` (Unix ms): a lookup of a send in doubt must not claim one of them.
pub async fn provider_ids_to(
    conn: &mut SqliteConnection,
    provider_id: &str,
    phone: &str,
    since: i64,
) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT provider_message_id FROM messages
         WHERE provider_id = $1 AND phone = $2 AND provider_message_id IS NOT NULL AND updated_at >= $3",
    )
    .bind(provider_id)
    .bind(phone)
    .bind(since)
    .fetch_all(conn)
    .await?)
}

/// The creation time (Unix ms) of this provider's oldest message created since `since` that
/// may still hear news (in doubt, sent or delivered).
pub async fn oldest_unsettled_at(
    conn: &mut SqliteConnection,
    provider_id: &str,
    since: i64,
) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar(
        "SELECT MIN(created_at) FROM messages
         WHERE provider_id = $1 AND state IN ('sending', 'sent', 'delivered') AND created_at >= $2",
    )
    .bind(provider_id)
    .bind(since)
    .fetch_one(conn)
    .await?)
}

/// Provider id → state of this provider's messages touched (sent, or heard of) since `since`
/// (Unix ms).
pub async fn provider_states_since(
    conn: &mut SqliteConnection,
    provider_id: &str,
    since: i64,
) -> StoreResult<std::collections::HashMap<String, MessageState>> {
    let rows = sqlx::query(
        "SELECT provider_message_id, state FROM messages
         WHERE provider_id = $1 AND provider_message_id IS NOT NULL AND updated_at >= $2",
    )
    .bind(provider_id)
    .bind(since)
    .fetch_all(conn)
    .await?;
    let mut out = std::collections::HashMap::with_capacity(rows.len());
    for r in &rows {
        let id: String = col(r, "provider_message_id")?;
        let state: String = col(r, "state")?;
        if let Ok(s) = state.parse::<MessageState>() {
            out.insert(id, s);
        }
    }
    Ok(out)
}

pub async fn message_by_id(conn: &mut SqliteConnection, id: i64) -> StoreResult<Option<OutboxMessage>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1")))
        .bind(id)
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(message_from_row).transpose()
}

pub async fn message_by_provider_id(
    conn: &mut SqliteConnection,
    provider_message_id: &str,
) -> StoreResult<Option<OutboxMessage>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE provider_message_id = $1"
    )))
    .bind(provider_message_id)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// The most recent message of a rule that reached the provider for a phone number (a
/// conversation's answers belong to no record's message).
pub async fn latest_sent_to(conn: &mut SqliteConnection, phone: &str) -> StoreResult<Option<OutboxMessage>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE phone = $1 AND provider_message_id IS NOT NULL AND source_id <> '' ORDER BY id DESC LIMIT 1"
    )))
    .bind(phone)
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(message_from_row).transpose()
}

/// The provider's id of the last question with options a conversation sent to a phone (its
/// buttons are the ones a tap should come from).
pub async fn latest_choice_to(conn: &mut SqliteConnection, phone: &str) -> StoreResult<Option<String>> {
    let id: Option<String> = sqlx::query_scalar(
        "SELECT provider_message_id FROM messages
         WHERE phone = $1 AND rule_id LIKE 'flow:%' AND json_extract(content, '$.type') = 'choice'
           AND provider_message_id IS NOT NULL
         ORDER BY id DESC LIMIT 1",
    )
    .bind(phone)
    .fetch_optional(conn)
    .await?;
    Ok(id)
}

/// The rules of the messages for the same record newer than `m` (a newer message's status
/// owns the status fields it shares with `m`).
pub async fn newer_rules_for_record(conn: &mut SqliteConnection, m: &OutboxMessage) -> StoreResult<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT DISTINCT rule_id FROM messages WHERE source_id = $1 AND record_key = $2 AND id > $3")
        .bind(&m.source_id)
        .bind(&m.record_key.0)
        .bind(m.id)
        .fetch_all(conn)
        .await?)
}

/// The messages these provider ids belong to, by provider id ([`message_by_provider_id`] for
/// a batch, in one query a 500 ids).
pub async fn messages_by_provider_ids(
    conn: &mut SqliteConnection,
    provider_message_ids: &[&str],
) -> StoreResult<HashMap<String, OutboxMessage>> {
    let mut out = HashMap::with_capacity(provider_message_ids.len());
    for chunk in provider_message_ids.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE provider_message_id IN "
        ));
        super::push_list(&mut qb, chunk.iter().copied());
        for r in qb.build().fetch_all(&mut *conn).await? {
            let m = message_from_row(&r)?;
            if let Some(id) = m.provider_message_id.clone() {
                out.insert(id, m);
            }
        }
    }
    Ok(out)
}

/// Saves what statuses changed in these messages, as they now are in memory: their state,
/// provider id, recipient id, error and when the state was reached (one statement a 500
/// messages instead of one a status).
pub async fn save_status_moves(conn: &mut SqliteConnection, moved: &[&OutboxMessage], now: i64) -> StoreResult<()> {
    for chunk in moved.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE messages SET updated_at = ");
        qb.push_bind(now);
        super::push_case_by_id(&mut qb, "state", chunk.iter().map(|m| (m.id, m.state.as_str())));
        super::push_case_by_id(&mut qb, "state_at", chunk.iter().map(|m| (m.id, m.state_at)));
        super::push_case_by_id(&mut qb, "provider_message_id", chunk.iter().map(|m| (m.id, &m.provider_message_id)));
        super::push_case_by_id(&mut qb, "recipient_id", chunk.iter().map(|m| (m.id, &m.recipient_id)));
        super::push_case_by_id(&mut qb, "error", chunk.iter().map(|m| (m.id, &m.error)));
        qb.push(" WHERE id IN ");
        super::push_list(&mut qb, chunk.iter().map(|m| m.id));
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// A change to one outbox message; `None` fields are left as they are.
#[derive(Debug, Clone, Default)]
pub struct MessageUpdate {
    pub state: Option<MessageState>,
    pub attempts: Option<u32>,
    pub next_attempt_at: Option<i64>,
    pub provider_message_id: Option<String>,
    pub recipient_id: Option<String>,
    /// `Some(None)` clears the error.
    pub error: Option<Option<String>>,
    pub state_at: Option<i64>,
    /// Replace the content (free text switched to its fallback template).
    pub content: Option<MessageContent>,
}

pub async fn update_message(conn: &mut SqliteConnection, id: i64, u: &MessageUpdate, now: i64) -> StoreResult<()> {
    let content = u.content.as_ref().map(encode).transpose()?;
    sqlx::query(
        "UPDATE messages SET
            state = COALESCE($2, state),
            attempts = COALESCE($3, attempts),
            next_attempt_at = COALESCE($4, next_attempt_at),
            provider_message_id = COALESCE($5, provider_message_id),
            recipient_id = COALESCE($6, recipient_id),
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
    .bind(&u.recipient_id)
    .bind(i64::from(u.error.is_some()))
    .bind(u.error.clone().flatten())
    .bind(u.state_at)
    .bind(content)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A message sent again after its provider reported it failed (retryable): it gets a fresh
/// provider id when it goes out, so the old one is forgotten.
pub async fn requeue_failed_send(
    conn: &mut SqliteConnection,
    id: i64,
    due_at: i64,
    attempts: u32,
    content: Option<&MessageContent>,
    reason: &str,
    now: i64,
) -> StoreResult<()> {
    let content = content.map(encode).transpose()?;
    sqlx::query(
        "UPDATE messages SET state = 'queued', provider_message_id = NULL, next_attempt_at = $2, attempts = $3,
            content = COALESCE($4, content), error = $5, updated_at = $6
         WHERE id = $1",
    )
    .bind(id)
    .bind(due_at)
    .bind(i64::from(attempts))
    .bind(content)
    .bind(reason)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks queued messages `sending` (id, attempts counted, content switched to its fallback
/// when given), in one statement a 500, only those still queued: the others were withdrawn
/// since they were read (an edit of their record, an opt-out) and must not be sent. Returns
/// the ids marked.
pub async fn mark_sending(
    conn: &mut SqliteConnection,
    messages: &[(i64, u32, Option<&MessageContent>)],
    now: i64,
) -> StoreResult<std::collections::HashSet<i64>> {
    let mut marked = std::collections::HashSet::with_capacity(messages.len());
    for chunk in messages.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE messages SET state = 'sending', updated_at = ");
        qb.push_bind(now);
        super::push_case_by_id(&mut qb, "attempts", chunk.iter().map(|(id, attempts, _)| (*id, i64::from(*attempts))));
        let switched: Vec<(i64, String)> = chunk
            .iter()
            .filter_map(|(id, _, content)| content.map(|c| encode(c).map(|e| (*id, e))))
            .collect::<StoreResult<_>>()?;
        if !switched.is_empty() {
            super::push_case_by_id(&mut qb, "content", switched);
        }
        qb.push(" WHERE state = 'queued' AND id IN ");
        super::push_list(&mut qb, chunk.iter().map(|(id, _, _)| *id));
        qb.push(" RETURNING id");
        let ids: Vec<i64> = qb.build_query_scalar().fetch_all(&mut *conn).await?;
        marked.extend(ids);
    }
    Ok(marked)
}

/// Queued messages of these records of a source.
pub async fn queued_for_records(
    conn: &mut SqliteConnection,
    source_id: &str,
    keys: &[&str],
) -> StoreResult<Vec<OutboxMessage>> {
    let mut out = Vec::new();
    for chunk in keys.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE state = 'queued' AND "
        ));
        super::push_records_of(&mut qb, source_id, chunk);
        qb.push(" ORDER BY id");
        out.extend(messages_from_rows(qb.build().fetch_all(&mut *conn).await?)?);
    }
    Ok(out)
}

/// Withdraws a message still queued (`skipped`, with the reason) and frees its idempotency
/// key, so that the rule may queue it afresh once the record calls for it again (a phone
/// corrected, consent given back, a row pasted back). False when it was no longer queued.
pub async fn withdraw_queued(conn: &mut SqliteConnection, id: i64, reason: &str, now: i64) -> StoreResult<bool> {
    let r = sqlx::query(
        "UPDATE messages SET state = 'skipped', error = $2, state_at = $3, updated_at = $3,
            idempotency_key = idempotency_key || '~withdrawn:' || id
         WHERE id = $1 AND state = 'queued'",
    )
    .bind(id)
    .bind(reason)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Queued messages to `phone` (used to skip them all on opt-out).
pub async fn queued_for_phone(conn: &mut SqliteConnection, phone: &str) -> StoreResult<Vec<OutboxMessage>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {MESSAGE_COLUMNS} FROM messages WHERE phone = $1 AND state = 'queued' ORDER BY id"
    )))
    .bind(phone)
    .fetch_all(conn)
    .await?;
    messages_from_rows(rows)
}

/// Message counts by state.
pub async fn counts_by_state(conn: &mut SqliteConnection) -> StoreResult<Vec<(String, i64)>> {
    let rows =
        sqlx::query("SELECT state, COUNT(*) AS n FROM messages GROUP BY state ORDER BY state").fetch_all(conn).await?;
    rows.iter().map(|r| Ok((col(r, "state")?, col(r, "n")?))).collect()
}

/// Every message, oldest first (for summaries and tests).
pub async fn all_messages(conn: &mut SqliteConnection) -> StoreResult<Vec<OutboxMessage>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY id")))
        .fetch_all(conn)
        .await?;
    messages_from_rows(rows)
}

/// Which of these idempotency keys have a message already.
pub async fn existing_idempotency_keys(
    conn: &mut SqliteConnection,
    keys: &[String],
) -> StoreResult<std::collections::HashSet<String>> {
    let mut out = std::collections::HashSet::new();
    for chunk in keys.chunks(500) {
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT idempotency_key FROM messages WHERE idempotency_key IN ");
        super::push_list(&mut qb, chunk.iter().map(|k| k.as_str()));
        for r in qb.build().fetch_all(&mut *conn).await? {
            out.insert(col::<String>(&r, "idempotency_key")?);
        }
    }
    Ok(out)
}

/// Whether a message with this idempotency key exists (used by `plan` and tests).
pub async fn message_exists(conn: &mut SqliteConnection, idempotency_key: &str) -> StoreResult<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE idempotency_key = $1")
        .bind(idempotency_key)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// The states of these messages, by id (the recorder's batch, read at once).
pub async fn message_states(conn: &mut SqliteConnection, ids: &[i64]) -> StoreResult<HashMap<i64, MessageState>> {
    let mut out = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT id, state FROM messages WHERE id IN ");
        super::push_list(&mut qb, chunk.iter().copied());
        for r in qb.build().fetch_all(&mut *conn).await? {
            let state: String = col(&r, "state")?;
            out.insert(col(&r, "id")?, MessageState::from_str(&state).map_err(|e| corrupt("message state", e))?);
        }
    }
    Ok(out)
}

/// For each of `messages`, the rules of later messages of its record
/// ([`newer_rules_for_record`] for a batch, in one query a 500 records of a source).
pub async fn newer_rules_for_records(
    conn: &mut SqliteConnection,
    messages: &[&OutboxMessage],
) -> StoreResult<HashMap<i64, Vec<String>>> {
    let Some(min) = messages.iter().map(|m| m.id).min() else { return Ok(HashMap::new()) };
    let records = messages.iter().map(|m| (m.source_id.as_str(), m.record_key.0.as_str()));
    // Messages after the batch's first, by record: (id, rule).
    let mut later: HashMap<(String, String), Vec<(i64, String)>> = HashMap::new();
    for (source, keys) in super::records_by_source(records) {
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT record_key, id, rule_id FROM messages WHERE id > ");
        qb.push_bind(min).push(" AND ");
        super::push_records_of(&mut qb, source, &keys);
        for r in qb.build().fetch_all(&mut *conn).await? {
            later
                .entry((source.to_string(), col(&r, "record_key")?))
                .or_default()
                .push((col(&r, "id")?, col(&r, "rule_id")?));
        }
    }
    Ok(messages
        .iter()
        .map(|m| {
            let mut rules: Vec<String> = later
                .get(&(m.source_id.clone(), m.record_key.0.clone()))
                .into_iter()
                .flatten()
                .filter(|(id, _)| *id > m.id)
                .map(|(_, rule)| rule.clone())
                .collect();
            rules.sort_unstable();
            rules.dedup();
            (m.id, rules)
        })
        .collect())
}

/// What the provider's acceptance of one send changes in its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedSend {
    pub id: i64,
    pub provider_message_id: String,
    pub recipient_id: Option<String>,
}

/// Records a batch of accepted sends, in one statement a 500: the provider's id, the
/// recipient's, and for a message still `queued` or `sending` (as `MessageState::advance` to
/// `sent` has it; decided in SQL, so a status committed since its state was read is not
/// overwritten), `sent` and no error.
pub async fn record_accepted_sends(conn: &mut SqliteConnection, sends: &[AcceptedSend], now: i64) -> StoreResult<()> {
    for chunk in sends.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE messages SET updated_at = ");
        qb.push_bind(now);
        super::push_case_by_id(&mut qb, "provider_message_id", chunk.iter().map(|s| (s.id, &s.provider_message_id)));
        // Every right-hand side reads the row as it was: `state` here is the old state.
        let earlier = "state IN ('queued', 'sending')";
        qb.push(format!(", state = CASE WHEN {earlier} THEN "));
        qb.push_bind(MessageState::Sent.as_str()).push(" ELSE state END");
        qb.push(format!(", state_at = CASE WHEN {earlier} THEN "));
        qb.push_bind(now).push(" ELSE state_at END");
        qb.push(format!(", error = CASE WHEN {earlier} THEN NULL ELSE error END"));
        let recipients: Vec<(i64, &str)> =
            chunk.iter().filter_map(|s| s.recipient_id.as_deref().map(|r| (s.id, r))).collect();
        if !recipients.is_empty() {
            super::push_case_by_id(&mut qb, "recipient_id", recipients);
        }
        qb.push(" WHERE id IN ");
        super::push_list(&mut qb, chunk.iter().map(|s| s.id));
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intent(key: &str, record: &str, rule: &str) -> Intent {
        Intent {
            rule_id: rule.to_string(),
            source_id: "s".to_string(),
            record_key: RecordKey(record.to_string()),
            provider_id: "p".to_string(),
            idempotency_key: key.to_string(),
            phone: PhoneNumber::from_e164_unchecked("+5491100000001"),
            content: MessageContent::Text { body: "hola".to_string() },
            fallback: None,
            adjustments: Vec::new(),
        }
    }

    /// The dispatcher's statements for a whole chunk or batch do what one a message did.
    #[tokio::test]
    async fn chunk_statements_act_as_one_a_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(&dir.path().join("o.db")).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let a = insert_intent(&mut tx, &intent("r1:a:1", "a", "r1"), 0, 1).await.unwrap().unwrap();
        let b = insert_intent(&mut tx, &intent("r1:b:1", "b", "r1"), 0, 1).await.unwrap().unwrap();
        let withdrawn = insert_intent(&mut tx, &intent("r1:c:1", "c", "r1"), 0, 1).await.unwrap().unwrap();
        let later = insert_intent(&mut tx, &intent("r2:a:1", "a", "r2"), 0, 1).await.unwrap().unwrap();
        update_message(
            &mut tx,
            withdrawn,
            &MessageUpdate { state: Some(MessageState::Skipped), ..Default::default() },
            1,
        )
        .await
        .unwrap();

        // Marked: only what is still queued; attempts and a switched content per message.
        let switched = MessageContent::Text { body: "plantilla".to_string() };
        let marked =
            mark_sending(&mut tx, &[(a, 1, None), (b, 2, Some(&switched)), (withdrawn, 1, None)], 5).await.unwrap();
        assert_eq!(marked, [a, b].into_iter().collect());
        let (ma, mb) =
            (message_by_id(&mut tx, a).await.unwrap().unwrap(), message_by_id(&mut tx, b).await.unwrap().unwrap());
        assert_eq!((ma.state, ma.attempts, &ma.content), (MessageState::Sending, 1, &intent("", "", "").content));
        assert_eq!((mb.state, mb.attempts, &mb.content), (MessageState::Sending, 2, &switched));
        assert_eq!(message_by_id(&mut tx, withdrawn).await.unwrap().unwrap().state, MessageState::Skipped);

        // Rules of later messages of each one's record.
        let (ma, mb) =
            (message_by_id(&mut tx, a).await.unwrap().unwrap(), message_by_id(&mut tx, b).await.unwrap().unwrap());
        let newer = newer_rules_for_records(&mut tx, &[&ma, &mb]).await.unwrap();
        assert_eq!(newer.get(&a), Some(&vec!["r2".to_string()]));
        assert_eq!(newer.get(&b), Some(&Vec::new()));
        assert!(later > a);

        // Accepted: `sent` with no error, the recipient kept where none came.
        let seen_before = MessageUpdate {
            recipient_id: Some("u-b".into()),
            error: Some(Some("intento anterior".into())),
            ..Default::default()
        };
        update_message(&mut tx, b, &seen_before, 5).await.unwrap();
        let sends = [
            AcceptedSend { id: a, provider_message_id: "pm-a".into(), recipient_id: Some("u-a".into()) },
            AcceptedSend { id: b, provider_message_id: "pm-b".into(), recipient_id: None },
        ];
        record_accepted_sends(&mut tx, &sends, 9).await.unwrap();
        let (ma, mb) =
            (message_by_id(&mut tx, a).await.unwrap().unwrap(), message_by_id(&mut tx, b).await.unwrap().unwrap());
        assert_eq!(
            (ma.state, ma.state_at, ma.provider_message_id.as_deref(), ma.recipient_id.as_deref()),
            (MessageState::Sent, 9, Some("pm-a"), Some("u-a"))
        );
        assert_eq!(
            (mb.state, mb.state_at, mb.error.as_deref(), mb.provider_message_id.as_deref(), mb.recipient_id.as_deref()),
            (MessageState::Sent, 9, None, Some("pm-b"), Some("u-b"))
        );
        let states = message_states(&mut tx, &[a, b, withdrawn]).await.unwrap();
        assert_eq!(states.get(&b), Some(&MessageState::Sent));
        assert_eq!(states.get(&withdrawn), Some(&MessageState::Skipped));

        // A status moved it further after its state was read: its state and reason stay.
        let failed = MessageUpdate {
            state: Some(MessageState::Failed),
            error: Some(Some("no es un número de WhatsApp".into())),
            state_at: Some(10),
            ..Default::default()
        };
        update_message(&mut tx, later, &failed, 10).await.unwrap();
        let late = AcceptedSend { id: later, provider_message_id: "pm-l".into(), recipient_id: None };
        record_accepted_sends(&mut tx, &[late], 11).await.unwrap();
        let ml = message_by_id(&mut tx, later).await.unwrap().unwrap();
        assert_eq!(
            (ml.state, ml.state_at, ml.error.as_deref(), ml.provider_message_id.as_deref()),
            (MessageState::Failed, 10, Some("no es un número de WhatsApp"), Some("pm-l"))
        );
    }
}
