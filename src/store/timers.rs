//! Durable timers of date rules (one per rule, record and offset) and the next occurrence of
//! each recurring campaign.

use sqlx::sqlite::SqliteRow;
use sqlx::SqliteConnection;

use super::{col, StoreResult};

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

const TIMER_COLUMNS: &str = "rule_id, source_id, record_key, slot, occurrence, due_at, state";

fn timer_from_row(r: &SqliteRow) -> StoreResult<TimerRow> {
    Ok(TimerRow {
        rule_id: col(r, "rule_id")?,
        source_id: col(r, "source_id")?,
        record_key: col(r, "record_key")?,
        slot: col(r, "slot")?,
        occurrence: col(r, "occurrence")?,
        due_at: col(r, "due_at")?,
        state: col(r, "state")?,
    })
}

/// Timers of a source, all of them or those of some records.
pub async fn timers_of(
    conn: &mut SqliteConnection,
    source_id: &str,
    keys: Option<&[&str]>,
) -> StoreResult<Vec<TimerRow>> {
    match keys {
        None => {
            let rows =
                sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {TIMER_COLUMNS} FROM timers WHERE source_id = $1")))
                    .bind(source_id)
                    .fetch_all(conn)
                    .await?;
            rows.iter().map(timer_from_row).collect()
        }
        Some(keys) => {
            let mut out = Vec::new();
            for chunk in keys.chunks(500) {
                let mut qb =
                    sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!("SELECT {TIMER_COLUMNS} FROM timers WHERE "));
                super::push_records_of(&mut qb, source_id, chunk);
                for r in qb.build().fetch_all(&mut *conn).await? {
                    out.push(timer_from_row(&r)?);
                }
            }
            Ok(out)
        }
    }
}

/// Creates or updates timers, many per statement.
pub async fn upsert_timers(conn: &mut SqliteConnection, timers: &[TimerRow], now: i64) -> StoreResult<()> {
    for chunk in timers.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO timers (rule_id, source_id, record_key, slot, occurrence, due_at, state, updated_at) ",
        );
        qb.push_values(chunk, |mut b, t| {
            b.push_bind(&t.rule_id)
                .push_bind(&t.source_id)
                .push_bind(&t.record_key)
                .push_bind(&t.slot)
                .push_bind(&t.occurrence)
                .push_bind(t.due_at)
                .push_bind(&t.state)
                .push_bind(now);
        });
        qb.push(
            " ON CONFLICT (rule_id, record_key, slot) DO UPDATE SET source_id = excluded.source_id,
               occurrence = excluded.occurrence, due_at = excluded.due_at, state = excluded.state, updated_at = excluded.updated_at",
        );
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

pub async fn upsert_timer(conn: &mut SqliteConnection, t: &TimerRow, now: i64) -> StoreResult<()> {
    upsert_timers(conn, std::slice::from_ref(t), now).await
}

/// Pending timers due at or before `now`, earliest first.
pub async fn due_timers(conn: &mut SqliteConnection, now: i64, limit: i64) -> StoreResult<Vec<TimerRow>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {TIMER_COLUMNS} FROM timers WHERE state = 'pending' AND due_at <= $1 ORDER BY due_at LIMIT $2"
    )))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(timer_from_row).collect()
}

/// When the earliest pending timer is due.
pub async fn next_timer_at(conn: &mut SqliteConnection) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT MIN(due_at) FROM timers WHERE state = 'pending'").fetch_one(conn).await?)
}

/// The next occurrence a campaign waits for.
pub async fn campaign_next(conn: &mut SqliteConnection, rule_id: &str) -> StoreResult<Option<i64>> {
    Ok(sqlx::query_scalar("SELECT next_at FROM campaigns WHERE rule_id = $1")
        .bind(rule_id)
        .fetch_optional(conn)
        .await?)
}

pub async fn set_campaign_next(conn: &mut SqliteConnection, rule_id: &str, next_at: i64, now: i64) -> StoreResult<()> {
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
