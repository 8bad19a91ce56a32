//! The write-back queue: values waiting to be written into their records' fields, coalesced
//! per field (the latest value wins), each with a sequence number so a flush deletes only
//! what it wrote.

use sqlx::SqliteConnection;

use super::{col, StoreError, StoreResult};
use crate::domain::{FieldWrite, PendingWrite, WriteTarget};

/// Queues values, several per statement. A field already queued takes the new value and a new
/// sequence number, so a flush that read the old value does not delete the new one.
pub async fn queue_writes(conn: &mut SqliteConnection, writes: &[FieldWrite]) -> StoreResult<()> {
    if writes.is_empty() {
        return Ok(());
    }
    let next: i64 =
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) + 1 FROM write_queue").fetch_one(&mut *conn).await?;
    // One field may appear twice in a batch: keep the last value, as writing them in order would.
    let mut seen = std::collections::HashSet::new();
    let mut unique: Vec<&FieldWrite> = Vec::with_capacity(writes.len());
    for w in writes.iter().rev() {
        if seen.insert((w.source_id.as_str(), w.target.kind(), w.target.value(), w.field.as_str())) {
            unique.push(w);
        }
    }
    for chunk in unique.chunks(500) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO write_queue (source_id, target_kind, target, field, value, seq) ",
        );
        qb.push_values(chunk, |mut b, w| {
            b.push_bind(w.source_id.as_str())
                .push_bind(w.target.kind())
                .push_bind(w.target.value())
                .push_bind(w.field.as_str())
                .push_bind(w.value.as_str())
                .push_bind(next);
        });
        qb.push(" ON CONFLICT (source_id, target_kind, target, field) DO UPDATE SET value = excluded.value, seq = excluded.seq");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Queued values of these sources, oldest first, at most `limit` of them.
pub async fn pending_writes(
    conn: &mut SqliteConnection,
    source_ids: &[String],
    limit: usize,
) -> StoreResult<Vec<PendingWrite>> {
    if source_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
        "SELECT source_id, target_kind, target, field, value, seq FROM write_queue WHERE source_id IN ",
    );
    super::push_list(&mut qb, source_ids.iter().map(String::as_str));
    qb.push(" ORDER BY seq LIMIT ");
    qb.push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    let rows = qb.build().fetch_all(conn).await?;
    rows.iter()
        .map(|r| {
            let kind: String = col(r, "target_kind")?;
            let target = WriteTarget::from_parts(&kind, col(r, "target")?)
                .ok_or(StoreError::Corrupt { what: "write-back target", detail: format!("unknown kind '{kind}'") })?;
            Ok(PendingWrite {
                write: FieldWrite {
                    source_id: col(r, "source_id")?,
                    target,
                    field: col(r, "field")?,
                    value: col(r, "value")?,
                },
                seq: col(r, "seq")?,
            })
        })
        .collect()
}

/// Deletes flushed values, unless the field was queued again meanwhile (newer seq).
pub async fn delete_writes(conn: &mut SqliteConnection, done: &[&PendingWrite]) -> StoreResult<()> {
    for p in done {
        sqlx::query("DELETE FROM write_queue WHERE source_id = $1 AND target_kind = $2 AND target = $3 AND field = $4 AND seq = $5")
            .bind(&p.write.source_id)
            .bind(p.write.target.kind())
            .bind(p.write.target.value())
            .bind(&p.write.field)
            .bind(p.seq)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

pub async fn pending_write_count(conn: &mut SqliteConnection) -> StoreResult<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM write_queue").fetch_one(conn).await?)
}
