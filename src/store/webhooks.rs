//! Raw webhook bodies: stored (verified) before the provider is answered, applied later from
//! here. A delivery that cannot be applied is parked with its reason; the others go on.

use sqlx::SqliteConnection;

use super::{col, StoreResult};

/// A stored delivery waiting to be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredWebhook {
    pub id: i64,
    pub provider_id: String,
    pub body: String,
    /// The query string of the URL the vendor called (empty when it had none).
    pub query: String,
    /// Times applying it failed already.
    pub attempts: u32,
    pub received_at: i64,
}

/// Persists a verified webhook: its body and the query string of the URL it was sent to.
pub async fn insert_webhook(
    conn: &mut SqliteConnection,
    provider_id: &str,
    query: &str,
    body: &str,
    now: i64,
) -> StoreResult<i64> {
    insert(conn, provider_id, query, body, now, false).await
}

/// A verified delivery to store (see [`insert_webhooks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWebhook {
    pub provider_id: String,
    /// The query string of the URL the vendor called (empty when it had none).
    pub query: String,
    pub body: String,
    pub received_at: i64,
}

/// Most deliveries one statement stores (5 parameters each, far under SQLite's limit).
pub const MAX_WEBHOOKS_PER_INSERT: usize = 256;

/// Persists verified deliveries in one statement, in order (a group commit of concurrent
/// requests). At most [`MAX_WEBHOOKS_PER_INSERT`] at a time.
pub async fn insert_webhooks(conn: &mut SqliteConnection, deliveries: &[NewWebhook]) -> StoreResult<()> {
    for chunk in deliveries.chunks(MAX_WEBHOOKS_PER_INSERT) {
        let mut q = sqlx::QueryBuilder::new("INSERT INTO webhooks (provider_id, received_at, body, query, fetched) ");
        q.push_values(chunk, |mut row, d| {
            row.push_bind(&d.provider_id)
                .push_bind(d.received_at)
                .push_bind(&d.body)
                .push_bind(&d.query)
                .push_bind(0_i64);
        });
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Stores deliveries recado fetched from the provider's API (see [`latest_webhook_at`]).
pub async fn insert_fetched_webhook(
    conn: &mut SqliteConnection,
    provider_id: &str,
    query: &str,
    body: &str,
    now: i64,
) -> StoreResult<i64> {
    insert(conn, provider_id, query, body, now, true).await
}

async fn insert(
    conn: &mut SqliteConnection,
    provider_id: &str,
    query: &str,
    body: &str,
    now: i64,
    fetched: bool,
) -> StoreResult<i64> {
    Ok(sqlx::query_scalar(
        "INSERT INTO webhooks (provider_id, received_at, body, query, fetched) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(provider_id)
    .bind(now)
    .bind(body)
    .bind(query)
    .bind(i64::from(fetched))
    .fetch_one(conn)
    .await?)
}

/// When the provider last reached recado with a delivery of its own (fetched ones excluded).
pub async fn latest_webhook_at(conn: &mut SqliteConnection, provider_id: &str) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT MAX(received_at) FROM webhooks WHERE provider_id = $1 AND fetched = 0")
        .bind(provider_id)
        .fetch_one(conn)
        .await?)
}

/// Deliveries not yet applied (nor parked), oldest first.
pub async fn pending_webhooks(conn: &mut SqliteConnection, limit: i64) -> StoreResult<Vec<StoredWebhook>> {
    let rows = sqlx::query(
        "SELECT id, provider_id, body, query, attempts, received_at FROM webhooks WHERE processed_at IS NULL ORDER BY id LIMIT $1",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(StoredWebhook {
                id: col(r, "id")?,
                provider_id: col(r, "provider_id")?,
                body: col(r, "body")?,
                query: col(r, "query")?,
                attempts: col::<i64>(r, "attempts")?.clamp(0, 1000) as u32,
                received_at: col(r, "received_at")?,
            })
        })
        .collect()
}

/// Marks a delivery applied, with what it did.
pub async fn finish_webhook(conn: &mut SqliteConnection, id: i64, outcome: &str, now: i64) -> StoreResult<()> {
    finish_webhooks(conn, &[id], outcome, now).await
}

/// Marks deliveries applied with the same outcome, in one statement.
pub async fn finish_webhooks(conn: &mut SqliteConnection, ids: &[i64], outcome: &str, now: i64) -> StoreResult<()> {
    update_deliveries(conn, ids, || {
        let mut q = sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE webhooks SET processed_at = ");
        q.push_bind(now).push(", outcome = ").push_bind(outcome);
        q
    })
    .await
}

/// Erases the raw bodies of applied deliveries whose sender's words recado must not keep (the
/// row stays, with its outcome).
pub async fn erase_webhook_bodies(conn: &mut SqliteConnection, ids: &[i64]) -> StoreResult<()> {
    update_deliveries(conn, ids, || sqlx::QueryBuilder::<sqlx::Sqlite>::new("UPDATE webhooks SET body = ''")).await
}

/// Runs the `UPDATE … SET …` that `update` starts on the deliveries `ids`, 500 a statement.
async fn update_deliveries(
    conn: &mut SqliteConnection,
    ids: &[i64],
    update: impl Fn() -> sqlx::QueryBuilder<sqlx::Sqlite>,
) -> StoreResult<()> {
    for chunk in ids.chunks(500) {
        let mut q = update();
        q.push(" WHERE id IN ");
        super::push_list(&mut q, chunk.iter().copied());
        q.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Parks a delivery that cannot be applied: kept with its reason, never retried.
pub async fn park_webhook(conn: &mut SqliteConnection, id: i64, reason: &str, now: i64) -> StoreResult<()> {
    sqlx::query("UPDATE webhooks SET processed_at = $2, parked_at = $2, outcome = $3 WHERE id = $1")
        .bind(id)
        .bind(now)
        .bind(format!("parked: {reason}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Counts one more failed attempt to apply a delivery.
pub async fn count_webhook_attempt(conn: &mut SqliteConnection, id: i64) -> StoreResult<()> {
    sqlx::query("UPDATE webhooks SET attempts = attempts + 1 WHERE id = $1").bind(id).execute(conn).await?;
    Ok(())
}

pub async fn pending_webhook_count(conn: &mut SqliteConnection) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE processed_at IS NULL").fetch_one(conn).await?)
}

pub async fn parked_webhook_count(conn: &mut SqliteConnection) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE parked_at IS NOT NULL").fetch_one(conn).await?)
}

/// Records that a provider reported `status` for a message. False when already seen.
/// Whether this status of this provider message was already recorded (within the retention
/// of status events).
pub async fn status_event_seen(
    conn: &mut SqliteConnection,
    provider_message_id: &str,
    status: &str,
) -> StoreResult<bool> {
    let n: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM status_events WHERE provider_message_id = $1 AND status = $2")
            .bind(provider_message_id)
            .bind(status)
            .fetch_one(conn)
            .await?;
    Ok(n > 0)
}

/// Which statuses of these provider messages were already recorded, as (provider id,
/// status) ([`status_event_seen`] for a batch).
pub async fn status_events_of(
    conn: &mut SqliteConnection,
    provider_message_ids: &[&str],
) -> StoreResult<std::collections::HashSet<(String, String)>> {
    let mut seen = std::collections::HashSet::new();
    for chunk in provider_message_ids.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT provider_message_id, status FROM status_events WHERE provider_message_id IN ",
        );
        super::push_list(&mut qb, chunk.iter().copied());
        for r in qb.build().fetch_all(&mut *conn).await? {
            seen.insert((col(&r, "provider_message_id")?, col(&r, "status")?));
        }
    }
    Ok(seen)
}

/// Records statuses heard, (provider id, status), in one statement a 500 (those already
/// recorded are left as they are).
pub async fn record_status_events(conn: &mut SqliteConnection, events: &[(&str, &str)], now: i64) -> StoreResult<()> {
    for chunk in events.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO status_events (provider_message_id, status, received_at) ",
        );
        qb.push_values(chunk, |mut row, (id, status)| {
            row.push_bind(*id).push_bind(*status).push_bind(now);
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

pub async fn record_status_event(
    conn: &mut SqliteConnection,
    provider_message_id: &str,
    status: &str,
    now: i64,
) -> StoreResult<bool> {
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
