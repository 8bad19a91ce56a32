//! Read-only views of what happened, for people: the funnel of each rule, messages over time,
//! recent failures, messages waiting for their hour, and one person's history. `recado report`,
//! `recado contact`, the dashboard and `/metrics` all read through here, so they never disagree.
//!
//! The funnel counts a message at every stage it reached: a read message was also sent and
//! delivered. `replied` counts messages that got at least one answer.

use serde::Serialize;
use sqlx::SqliteConnection;

use super::{col, StoreResult};

/// The stages of a rule's funnel, in order.
pub const FUNNEL_STAGES: [&str; 7] = ["queued", "sent", "delivered", "read", "replied", "failed", "skipped"];

/// One rule's funnel: how many of its messages reached each stage.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RuleFunnel {
    /// The rule's id (`flow:<id>` for the messages of a conversation).
    pub rule: String,
    /// All messages of the rule (in the period).
    pub total: i64,
    /// Waiting in the outbox, or being sent.
    pub queued: i64,
    /// Accepted by the provider (and any later stage).
    pub sent: i64,
    pub delivered: i64,
    pub read: i64,
    /// Messages that got at least one answer.
    pub replied: i64,
    pub failed: i64,
    /// Not sent by policy (opted out, no consent, …).
    pub skipped: i64,
}

impl RuleFunnel {
    /// The count of one of [`FUNNEL_STAGES`].
    pub fn stage(&self, stage: &str) -> i64 {
        match stage {
            "queued" => self.queued,
            "sent" => self.sent,
            "delivered" => self.delivered,
            "read" => self.read,
            "replied" => self.replied,
            "failed" => self.failed,
            "skipped" => self.skipped,
            _ => 0,
        }
    }
}

/// The funnel of every rule with messages created at or after `since_ms` (Unix ms), or of
/// `rule` alone, ordered by rule id.
pub async fn funnel(conn: &mut SqliteConnection, since_ms: i64, rule: Option<&str>) -> StoreResult<Vec<RuleFunnel>> {
    let rows = sqlx::query(
        "SELECT rule_id, state, COUNT(*) AS n FROM messages \
         WHERE created_at >= $1 AND ($2 IS NULL OR rule_id = $2) GROUP BY rule_id, state",
    )
    .bind(since_ms)
    .bind(rule)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_rule: std::collections::BTreeMap<String, RuleFunnel> = std::collections::BTreeMap::new();
    for r in &rows {
        let id: String = col(r, "rule_id")?;
        let state: String = col(r, "state")?;
        let n: i64 = col(r, "n")?;
        let f = by_rule.entry(id.clone()).or_insert_with(|| RuleFunnel { rule: id, ..Default::default() });
        f.total += n;
        match state.as_str() {
            "queued" | "sending" => f.queued += n,
            "sent" => f.sent += n,
            "delivered" => {
                f.sent += n;
                f.delivered += n;
            }
            "read" => {
                f.sent += n;
                f.delivered += n;
                f.read += n;
            }
            "failed" => f.failed += n,
            "skipped" => f.skipped += n,
            _ => {}
        }
    }
    let replied = sqlx::query(
        "SELECT m.rule_id AS rule_id, COUNT(DISTINCT i.in_reply_to) AS n FROM inbound i \
         JOIN messages m ON m.id = i.in_reply_to \
         WHERE m.created_at >= $1 AND ($2 IS NULL OR m.rule_id = $2) GROUP BY m.rule_id",
    )
    .bind(since_ms)
    .bind(rule)
    .fetch_all(&mut *conn)
    .await?;
    for r in &replied {
        let id: String = col(r, "rule_id")?;
        if let Some(f) = by_rule.get_mut(&id) {
            f.replied = col(r, "n")?;
        }
    }
    Ok(by_rule.into_values().collect())
}

/// How many messages were created in each period of `bucket_ms` since `since_ms`, by the
/// state they are in now: `(bucket start, state, count)`, oldest first.
pub async fn messages_over_time(
    conn: &mut SqliteConnection,
    since_ms: i64,
    bucket_ms: i64,
) -> StoreResult<Vec<(i64, String, i64)>> {
    let bucket_ms = bucket_ms.max(1);
    let rows = sqlx::query(
        "SELECT (created_at / $2) * $2 AS bucket, state, COUNT(*) AS n FROM messages \
         WHERE created_at >= $1 GROUP BY bucket, state ORDER BY bucket",
    )
    .bind(since_ms)
    .bind(bucket_ms)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok((col(r, "bucket")?, col(r, "state")?, col(r, "n")?))).collect()
}

/// A message as people read about it: never its content's parameters, only what it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageLine {
    pub id: i64,
    pub rule: String,
    pub source: String,
    pub record: String,
    pub provider: String,
    /// The full number; callers mask it unless asked not to.
    pub phone: String,
    pub state: String,
    pub error: Option<String>,
    pub created_at: i64,
    pub state_at: i64,
    /// When a queued message may go next (quiet hours, retries, the pair rate).
    pub next_attempt_at: i64,
    pub attempts: i64,
}

const LINE_COLUMNS: &str =
    "id, rule_id, source_id, record_key, provider_id, phone, state, error, created_at, state_at, next_attempt_at, attempts";

fn line(r: &sqlx::sqlite::SqliteRow) -> StoreResult<MessageLine> {
    Ok(MessageLine {
        id: col(r, "id")?,
        rule: col(r, "rule_id")?,
        source: col(r, "source_id")?,
        record: col(r, "record_key")?,
        provider: col(r, "provider_id")?,
        phone: col(r, "phone")?,
        state: col(r, "state")?,
        error: col(r, "error")?,
        created_at: col(r, "created_at")?,
        state_at: col(r, "state_at")?,
        next_attempt_at: col(r, "next_attempt_at")?,
        attempts: col(r, "attempts")?,
    })
}

/// The most recent failed messages, newest first, with their reasons.
pub async fn recent_failures(conn: &mut SqliteConnection, limit: i64) -> StoreResult<Vec<MessageLine>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {LINE_COLUMNS} FROM messages WHERE state = 'failed' ORDER BY state_at DESC, id DESC LIMIT $1"
    )))
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(line).collect()
}

/// Queued messages that will not go before `after_ms` (quiet hours, a retry, a pause), soonest
/// first.
pub async fn deferred(conn: &mut SqliteConnection, after_ms: i64, limit: i64) -> StoreResult<Vec<MessageLine>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {LINE_COLUMNS} FROM messages WHERE state = 'queued' AND next_attempt_at > $1 \
         ORDER BY next_attempt_at, id LIMIT $2"
    )))
    .bind(after_ms)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(line).collect()
}

/// What one person wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InboundLine {
    pub received_at: i64,
    pub kind: String,
    pub body: String,
    /// The outbox id of the message this answered, when it answered one.
    pub in_reply_to: Option<i64>,
}

/// A person's consent and opt-out as recado holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ContactStanding {
    pub opted_out_at: Option<i64>,
    pub consent: Option<String>,
    pub consent_at: Option<i64>,
    pub consent_method: Option<String>,
    pub consent_version: Option<String>,
    pub language: Option<String>,
    pub last_inbound_at: Option<i64>,
}

/// One person's history: their messages (oldest first), what they wrote, and their standing
/// (`None` when recado holds no contact for the number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactHistory {
    pub messages: Vec<MessageLine>,
    pub replies: Vec<InboundLine>,
    pub standing: Option<ContactStanding>,
}

/// Everything recado holds about the number `phone` (E.164).
pub async fn contact_history(conn: &mut SqliteConnection, phone: &str) -> StoreResult<ContactHistory> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {LINE_COLUMNS} FROM messages WHERE phone = $1 ORDER BY created_at, id"
    )))
    .bind(phone)
    .fetch_all(&mut *conn)
    .await?;
    let messages = rows.iter().map(line).collect::<StoreResult<Vec<_>>>()?;
    let rows = sqlx::query(
        "SELECT received_at, kind, body, in_reply_to FROM inbound WHERE phone = $1 ORDER BY received_at, rowid",
        // (rowid: the order they were applied in, for messages of the same second)
    )
    .bind(phone)
    .fetch_all(&mut *conn)
    .await?;
    let replies = rows
        .iter()
        .map(|r| {
            Ok(InboundLine {
                received_at: col(r, "received_at")?,
                kind: col(r, "kind")?,
                body: col(r, "body")?,
                in_reply_to: col(r, "in_reply_to")?,
            })
        })
        .collect::<StoreResult<Vec<_>>>()?;
    let standing = sqlx::query(
        "SELECT opted_out_at, consent, consent_at, consent_method, consent_version, language, last_inbound_at \
         FROM contacts WHERE phone = $1",
    )
    .bind(phone)
    .fetch_optional(&mut *conn)
    .await?
    .map(|r| {
        Ok::<_, super::StoreError>(ContactStanding {
            opted_out_at: col(&r, "opted_out_at")?,
            consent: col(&r, "consent")?,
            consent_at: col(&r, "consent_at")?,
            consent_method: col(&r, "consent_method")?,
            consent_version: col(&r, "consent_version")?,
            language: col(&r, "language")?,
            last_inbound_at: col(&r, "last_inbound_at")?,
        })
    })
    .transpose()?;
    Ok(ContactHistory { messages, replies, standing })
}

/// Counts the operator watches: `(pending write-back cells, pending timers)`.
pub async fn backlog(conn: &mut SqliteConnection) -> StoreResult<(i64, i64)> {
    let writes = super::pending_write_count(&mut *conn).await?;
    let timers: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM timers WHERE state = 'pending'").fetch_one(&mut *conn).await?;
    Ok((writes, timers))
}
