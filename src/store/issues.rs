//! Record problems (blank or duplicate key, unreadable phone or date): each is logged and
//! written to its record once, and cleared when it is fixed.

use sqlx::SqliteConnection;

use super::{col, StoreResult};

/// Records a problem. True when it is new (log it and write it to the record).
pub async fn note_issue(
    conn: &mut SqliteConnection,
    source_id: &str,
    issue_key: &str,
    record_key: &str,
    message: &str,
    now: i64,
) -> StoreResult<bool> {
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

/// All open problems of a source: (issue key, record key).
pub async fn issues(conn: &mut SqliteConnection, source_id: &str) -> StoreResult<Vec<(String, String)>> {
    let rows = sqlx::query("SELECT issue_key, record_key FROM row_issues WHERE source_id = $1")
        .bind(source_id)
        .fetch_all(conn)
        .await?;
    rows.iter().map(|r| Ok((col(r, "issue_key")?, col(r, "record_key")?))).collect()
}

pub async fn resolve_issue(conn: &mut SqliteConnection, source_id: &str, issue_key: &str) -> StoreResult<()> {
    sqlx::query("DELETE FROM row_issues WHERE source_id = $1 AND issue_key = $2")
        .bind(source_id)
        .bind(issue_key)
        .execute(conn)
        .await?;
    Ok(())
}

/// True when the record has an open problem (its error field shows it).
pub async fn has_open_issue(conn: &mut SqliteConnection, source_id: &str, record_key: &str) -> StoreResult<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM row_issues WHERE source_id = $1 AND record_key = $2")
        .bind(source_id)
        .bind(record_key)
        .fetch_one(conn)
        .await?;
    Ok(n > 0)
}

/// Which of these records (source, key) have a problem still open ([`has_open_issue`] for a
/// batch).
pub async fn records_with_open_issues(
    conn: &mut SqliteConnection,
    records: &[(&str, &str)],
) -> StoreResult<std::collections::HashSet<(String, String)>> {
    let mut open = std::collections::HashSet::new();
    for (source, keys) in super::records_by_source(records.iter().copied()) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("SELECT source_id, record_key FROM row_issues WHERE ");
        super::push_records_of(&mut qb, source, &keys);
        for r in qb.build().fetch_all(&mut *conn).await? {
            open.insert((col(&r, "source_id")?, col(&r, "record_key")?));
        }
    }
    Ok(open)
}
