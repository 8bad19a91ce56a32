//! Pruning what the store no longer needs: applied raw webhooks, old status de-duplication
//! entries and old inbound messages, each after its configured retention.

use std::time::Duration;

use sqlx::SqliteConnection;

use super::StoreResult;

/// How many rows one pass removed, by table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    pub webhooks: u64,
    pub status_events: u64,
    pub inbound: u64,
    /// Files people sent (counted by the retention loop, which removes their bytes).
    pub media: u64,
}

/// Rows deleted per statement, so pruning never holds the write lock for long.
const PRUNE_BATCH: i64 = 5_000;

/// Deletes one batch of rows older than their retention. Call until it returns all zeros.
pub async fn prune(
    conn: &mut SqliteConnection,
    now: i64,
    webhooks: Duration,
    status_events: Duration,
    inbound: Duration,
) -> StoreResult<Pruned> {
    let before = |d: Duration| now.saturating_sub(d.as_millis().min(i64::MAX as u128) as i64);
    let w = sqlx::query(
        "DELETE FROM webhooks WHERE id IN (SELECT id FROM webhooks WHERE processed_at IS NOT NULL AND received_at < $1 LIMIT $2)",
    )
    .bind(before(webhooks))
    .bind(PRUNE_BATCH)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let s = sqlx::query(
        "DELETE FROM status_events WHERE provider_message_id IN
           (SELECT provider_message_id FROM status_events WHERE received_at < $1 LIMIT $2) AND received_at < $1",
    )
    .bind(before(status_events))
    .bind(PRUNE_BATCH)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    let i = sqlx::query(
        "DELETE FROM inbound WHERE provider_message_id IN (SELECT provider_message_id FROM inbound WHERE received_at < $1 LIMIT $2)",
    )
    .bind(before(inbound))
    .bind(PRUNE_BATCH)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(Pruned { webhooks: w, status_events: s, inbound: i, media: 0 })
}
