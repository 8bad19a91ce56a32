//! What the store remembers of each source between polls: its state (baseline taken, last
//! version read, time zone), the snapshot of its records, and which records hold which phone
//! number (so a person who writes first, or says stop, is found in every source).
//!
//! Writes go several rows per statement: a baseline of a million records must not hold the
//! write lock for long.

use sqlx::SqliteConnection;

use super::{col, StoreError, StoreResult};
use crate::diff::{Fingerprint, Snapshot, SnapshotRow, StoredRows};
use crate::domain::RecordKey;

/// Rows per multi-row statement (SQLite allows 32,766 parameters).
const ROWS_PER_STATEMENT: usize = 500;

/// What the store remembers of a source between polls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceState {
    /// The first full read was committed (as a baseline or processed).
    pub baseline_done: bool,
    /// The source's change token at the last full read.
    pub version: Option<String>,
    pub time_zone: Option<String>,
}

pub async fn source_state(conn: &mut SqliteConnection, source_id: &str) -> StoreResult<SourceState> {
    let row = sqlx::query("SELECT baseline_done, version, time_zone FROM source_state WHERE source_id = $1")
        .bind(source_id)
        .fetch_optional(conn)
        .await?;
    match row {
        None => Ok(SourceState::default()),
        Some(r) => Ok(SourceState {
            baseline_done: col::<i64>(&r, "baseline_done")? != 0,
            version: col(&r, "version")?,
            time_zone: col(&r, "time_zone")?,
        }),
    }
}

pub async fn save_source_state(
    conn: &mut SqliteConnection,
    source_id: &str,
    s: &SourceState,
    now: i64,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO source_state (source_id, baseline_done, version, time_zone, updated_at) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (source_id) DO UPDATE SET baseline_done = excluded.baseline_done, version = excluded.version,
         time_zone = excluded.time_zone, updated_at = excluded.updated_at",
    )
    .bind(source_id)
    .bind(i64::from(s.baseline_done))
    .bind(&s.version)
    .bind(&s.time_zone)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

fn snapshot_row(r: &sqlx::sqlite::SqliteRow) -> StoreResult<SnapshotRow> {
    let corrupt = |e: serde_json::Error| StoreError::Corrupt { what: "snapshot row", detail: e.to_string() };
    let fields: String = col(r, "fields")?;
    let dates: Option<String> = col(r, "date_fields")?;
    Ok(SnapshotRow {
        from_baseline: col::<i64>(r, "from_baseline")? != 0,
        hash: col::<i64>(r, "row_hash")? as u64,
        fields: serde_json::from_str(&fields).map_err(corrupt)?,
        dates: dates.map(|d| serde_json::from_str(&d)).transpose().map_err(corrupt)?.unwrap_or_default(),
    })
}

/// The fingerprints of a source's stored snapshot (memory keeps no field text: see
/// [`crate::diff`]). Rows that cannot be read are left out and named, so one damaged row does
/// not stop the source (it reads as new, and idempotency keys stop a second message).
pub async fn load_snapshot(conn: &mut SqliteConnection, source_id: &str) -> StoreResult<(Snapshot, Vec<String>)> {
    use futures_util::TryStreamExt;
    // Streamed, and the field text never leaves SQLite: only its validity and emptiness.
    let mut rows = sqlx::query(
        "SELECT record_key, row_hash, from_baseline, fields = '{}' AS erased,
                json_valid(fields) AND (date_fields IS NULL OR json_valid(date_fields)) AS readable
         FROM snapshot_rows WHERE source_id = $1",
    )
    .bind(source_id)
    .fetch(conn);
    let mut snap = Snapshot::default();
    let mut damaged = Vec::new();
    while let Some(r) = rows.try_next().await? {
        let key: String = col(&r, "record_key")?;
        if col::<i64>(&r, "readable")? == 0 {
            damaged.push(key);
            continue;
        }
        let fingerprint = Fingerprint::new(
            col::<i64>(&r, "row_hash")? as u64,
            col::<i64>(&r, "from_baseline")? != 0,
            col::<i64>(&r, "erased")? != 0,
        );
        snap.insert(RecordKey(key), fingerprint);
    }
    Ok((snap, damaged))
}

/// The stored rows of these records (those whose fingerprint moved), read back to tell which
/// fields changed. A record without a readable row is left out.
pub async fn snapshot_rows_of(
    conn: &mut SqliteConnection,
    source_id: &str,
    keys: &[RecordKey],
) -> StoreResult<StoredRows> {
    let mut out = StoredRows::with_capacity_and_hasher(keys.len(), Default::default());
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "SELECT record_key, row_hash, fields, date_fields, from_baseline FROM snapshot_rows WHERE source_id = ",
        );
        qb.push_bind(source_id).push(" AND record_key IN ");
        super::push_list(&mut qb, chunk.iter().map(|k| k.0.as_str()));
        for r in qb.build().fetch_all(&mut *conn).await? {
            match snapshot_row(&r) {
                Ok(row) => {
                    out.insert(RecordKey(col(&r, "record_key")?), row);
                }
                Err(e) => {
                    // Compared as empty: every field it has reads as changed from nothing.
                    tracing::warn!(source = %source_id, "a stored snapshot row could not be read; its record is compared with an empty one: {e}");
                }
            }
        }
    }
    Ok(out)
}

/// Writes snapshot rows (new or changed), many per statement.
pub async fn upsert_snapshot_rows(
    conn: &mut SqliteConnection,
    source_id: &str,
    rows: &[(RecordKey, SnapshotRow)],
) -> StoreResult<()> {
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut encoded = Vec::with_capacity(chunk.len());
        for (k, r) in chunk {
            let corrupt = |e: serde_json::Error| StoreError::Corrupt { what: "snapshot row", detail: e.to_string() };
            let fields = serde_json::to_string(&r.fields).map_err(corrupt)?;
            let dates = if r.dates.is_empty() { None } else { Some(serde_json::to_string(&r.dates).map_err(corrupt)?) };
            encoded.push((k, r.hash as i64, fields, dates, i64::from(r.from_baseline)));
        }
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO snapshot_rows (source_id, record_key, row_hash, fields, date_fields, from_baseline) ",
        );
        qb.push_values(encoded, |mut b, (k, hash, fields, dates, from_baseline)| {
            b.push_bind(source_id)
                .push_bind(k.0.as_str())
                .push_bind(hash)
                .push_bind(fields)
                .push_bind(dates)
                .push_bind(from_baseline);
        });
        qb.push(
            " ON CONFLICT (source_id, record_key) DO UPDATE SET row_hash = excluded.row_hash, fields = excluded.fields,
              date_fields = excluded.date_fields, from_baseline = excluded.from_baseline",
        );
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Deletes snapshot rows (removed records) and their phone index entries.
pub async fn delete_snapshot_rows(conn: &mut SqliteConnection, source_id: &str, keys: &[RecordKey]) -> StoreResult<()> {
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        for table in ["snapshot_rows", "contact_records"] {
            let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(format!("DELETE FROM {table} WHERE source_id = "));
            qb.push_bind(source_id).push(" AND record_key IN ");
            super::push_list(&mut qb, chunk.iter().map(|k| k.0.as_str()));
            qb.build().execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// The stored snapshot row of one record (its state as of the last committed poll).
pub async fn snapshot_row_of(
    conn: &mut SqliteConnection,
    source_id: &str,
    key: &str,
) -> StoreResult<Option<SnapshotRow>> {
    let row =
        sqlx::query("SELECT row_hash, fields, date_fields, from_baseline FROM snapshot_rows WHERE source_id = $1 AND record_key = $2")
            .bind(source_id)
            .bind(key)
            .fetch_optional(conn)
            .await?;
    row.as_ref().map(snapshot_row).transpose()
}

/// A page of a source's snapshot in key order, after `after` (campaigns walk it page by page),
/// each record with the phone number the phone index holds for it (`None`: none valid, or not
/// indexed), so a campaign does not parse 100,000 numbers the poller already parsed.
pub async fn snapshot_page(
    conn: &mut SqliteConnection,
    source_id: &str,
    after: &str,
    limit: i64,
) -> StoreResult<Vec<(RecordKey, SnapshotRow, Option<String>)>> {
    let rows = sqlx::query(
        "SELECT s.record_key, s.row_hash, s.fields, s.date_fields, s.from_baseline,
                (SELECT c.phone FROM contact_records c WHERE c.source_id = s.source_id AND c.record_key = s.record_key
                 LIMIT 1) AS phone
         FROM snapshot_rows s WHERE s.source_id = $1 AND s.record_key > $2 ORDER BY s.record_key LIMIT $3",
    )
    .bind(source_id)
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push((RecordKey(col(&r, "record_key")?), snapshot_row(&r)?, col(&r, "phone")?));
    }
    Ok(out)
}

/// Records which phone number each of these records holds now (`None`: no valid number).
pub async fn set_contact_records(
    conn: &mut SqliteConnection,
    source_id: &str,
    records: &[(RecordKey, Option<String>)],
) -> StoreResult<()> {
    let keys: Vec<RecordKey> = records.iter().map(|(k, _)| k.clone()).collect();
    for chunk in keys.chunks(ROWS_PER_STATEMENT) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new("DELETE FROM contact_records WHERE source_id = ");
        qb.push_bind(source_id).push(" AND record_key IN ");
        super::push_list(&mut qb, chunk.iter().map(|k| k.0.as_str()));
        qb.build().execute(&mut *conn).await?;
    }
    let with_phone: Vec<(&RecordKey, &String)> =
        records.iter().filter_map(|(k, p)| p.as_ref().map(|p| (k, p))).collect();
    for chunk in with_phone.chunks(ROWS_PER_STATEMENT) {
        let mut qb =
            sqlx::QueryBuilder::<sqlx::Sqlite>::new("INSERT INTO contact_records (phone, source_id, record_key) ");
        qb.push_values(chunk, |mut b, (k, p)| {
            b.push_bind(p.as_str()).push_bind(source_id).push_bind(k.0.as_str());
        });
        qb.push(" ON CONFLICT DO NOTHING");
        qb.build().execute(&mut *conn).await?;
    }
    Ok(())
}

/// Every record, in every source, that holds this phone number.
pub async fn records_with_phone(conn: &mut SqliteConnection, phone: &str) -> StoreResult<Vec<(String, RecordKey)>> {
    let rows = sqlx::query(
        "SELECT source_id, record_key FROM contact_records WHERE phone = $1 ORDER BY source_id, record_key",
    )
    .bind(phone)
    .fetch_all(conn)
    .await?;
    rows.iter().map(|r| Ok((col(r, "source_id")?, RecordKey(col(r, "record_key")?)))).collect()
}
