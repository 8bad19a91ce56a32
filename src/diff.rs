//! Change detection: compares a read of a source with the stored snapshot (pure).
//!
//! The store keeps, per record key, a 64-bit fingerprint of its fields and their canonical
//! text ([`SnapshotRow`]). Memory keeps only the fingerprint ([`Fingerprint`]): a million
//! records cost tens of megabytes, not gigabytes. Unchanged rows cost one hash comparison; the
//! stored text of the few rows whose fingerprint moved ([`moved_rows`]) is read back and compared
//! field by field, so a diff reports exactly which fields changed and what they held. The
//! fingerprint is FNV-1a: stable across Rust versions (it is persisted), and a collision can
//! only hide a change, never invent one, because changes are confirmed field by field.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use crate::domain::{CellValue, Record, RecordKey};

/// What the store remembers of one record between polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub hash: u64,
    /// Canonical text by field name; write-back fields are never in here.
    pub fields: BTreeMap<String, String>,
    /// Fields that hold dates (their text is a serial number): shown as dates in messages.
    pub dates: BTreeSet<String>,
    /// The record was part of the source's first read (the baseline): it was never news, and
    /// fixing its phone or consent later does not make it news either.
    pub from_baseline: bool,
}

impl SnapshotRow {
    /// `recado forget` erased this copy but its fingerprint: a record always has fields (a
    /// table's every column, an object's selected fields), so none means erased. The record
    /// read again is not news: its fields are taken as they are, without firing rules.
    pub fn is_erased(&self) -> bool {
        self.fields.is_empty()
    }

    pub fn of(record: &Record) -> Self {
        Self::with_hash(record, record_fingerprint(record))
    }

    /// The same, with the record's fingerprint already computed.
    pub fn with_hash(record: &Record, hash: u64) -> Self {
        let fields: BTreeMap<String, String> = record.fields.iter().map(|(k, v)| (k.clone(), v.canonical())).collect();
        let dates =
            record.fields.iter().filter(|(_, v)| matches!(v, CellValue::Date(_))).map(|(k, _)| k.clone()).collect();
        Self { hash, fields, dates, from_baseline: false }
    }
}

/// What memory keeps of one record between polls: enough to tell that it did not change, and
/// whether the read under way has had it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    pub hash: u64,
    /// See [`SnapshotRow::from_baseline`].
    pub from_baseline: bool,
    /// See [`SnapshotRow::is_erased`].
    pub erased: bool,
    /// The row (plus one) where the read under way had this record; 0 while it has not. A read
    /// that arrives in parts is never held whole, so this is how it knows, without a set of
    /// its keys, which records it had (the rest were removed) and which key a later row
    /// repeats (in the room the struct's alignment leaves anyway).
    seen: u32,
}

impl Fingerprint {
    pub fn new(hash: u64, from_baseline: bool, erased: bool) -> Self {
        Self { hash, from_baseline, erased, seen: 0 }
    }

    pub fn of(row: &SnapshotRow) -> Self {
        Self::new(row.hash, row.from_baseline, row.is_erased())
    }

    /// The row where the read under way had this record, if it had it yet.
    pub fn seen_at(&self) -> Option<usize> {
        self.seen.checked_sub(1).map(|row| row as usize)
    }

    /// The read under way has this record at `row`.
    pub fn see(&mut self, row: usize) {
        self.seen = u32::try_from(row).ok().and_then(|r| r.checked_add(1)).unwrap_or(u32::MAX);
    }

    /// A new read begins: it has had nothing yet.
    pub fn unsee(&mut self) {
        self.seen = 0;
    }
}

/// The records a finished read removed: with `complete`, every record of the snapshot it did not
/// have ([`Fingerprint::seen_at`]); else the `deleted` keys still in the snapshot that it did not
/// have again. In key order, so the result is deterministic.
pub fn removed_keys(old: &Snapshot, complete: bool, deleted: &[RecordKey]) -> Vec<RecordKey> {
    let mut removed: Vec<RecordKey> = if complete {
        old.iter().filter(|(_, fp)| fp.seen_at().is_none()).map(|(k, _)| k.clone()).collect()
    } else {
        deleted.iter().filter(|k| old.get(*k).is_some_and(|fp| fp.seen_at().is_none())).cloned().collect()
    };
    removed.sort();
    removed.dedup();
    removed
}

/// A source's records as memory keeps them: the committed ones, and during a read those of
/// the part being committed and the next (a failed commit has memory loaded again from the
/// store before any other read).
pub type Snapshot = FxHashMap<RecordKey, Fingerprint>;

/// Stored rows of some records (those whose fingerprint moved), read back to tell which of
/// their fields changed.
pub type StoredRows = FxHashMap<RecordKey, SnapshotRow>;

/// The fingerprints of stored rows.
pub fn fingerprints<'a>(rows: impl IntoIterator<Item = (&'a RecordKey, &'a SnapshotRow)>) -> Snapshot {
    rows.into_iter().map(|(k, r)| (k.clone(), Fingerprint::of(r))).collect()
}

/// One field that changed in one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldChange {
    pub field: String,
    pub old: String,
    pub new: String,
}

/// One difference between the snapshot and the fresh read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(RecordKey),
    Changed { key: RecordKey, fields: Vec<FieldChange> },
    Removed(RecordKey),
}

impl Change {
    pub fn key(&self) -> &RecordKey {
        match self {
            Change::Added(k) | Change::Removed(k) => k,
            Change::Changed { key, .. } => key,
        }
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// FNV-1a of a text (stable across versions: used in persisted keys).
pub fn text_fingerprint(text: &str) -> u64 {
    fnv(FNV_OFFSET, text.as_bytes())
}

/// FNV-1a over `name \0 value \0` pairs in name order.
pub fn fingerprint(fields: &BTreeMap<String, String>) -> u64 {
    fields
        .iter()
        .fold(FNV_OFFSET, |h, (name, value)| fnv(fnv(fnv(fnv(h, name.as_bytes()), &[0]), value.as_bytes()), &[0]))
}

/// The same fingerprint computed straight from a record, without building the field map
/// (this is the hot path: every row of every read).
pub fn record_fingerprint(record: &Record) -> u64 {
    let mut buf = String::new();
    record.fields.iter().fold(FNV_OFFSET, |h, (name, value)| {
        buf.clear();
        value.write_canonical(&mut buf);
        fnv(fnv(fnv(fnv(h, name.as_bytes()), &[0]), buf.as_bytes()), &[0])
    })
}

/// The records of a read (each with its fingerprint) that the snapshot holds with another
/// fingerprint, by position in the read: their stored rows must be read back before
/// [`added_or_changed`].
pub fn moved_rows<'a>(old: &Snapshot, fresh: impl IntoIterator<Item = (&'a Record, u64)>) -> Vec<usize> {
    fresh
        .into_iter()
        .enumerate()
        .filter(|(_, (record, hash))| old.get(&record.key).is_some_and(|prev| prev.hash != *hash))
        .map(|(i, _)| i)
        .collect()
}

/// Compares a full read (records in the source's order) with the snapshot. Changes come in
/// read order, removals last in key order, so the result is deterministic. Only records whose
/// fingerprint moved are compared field by field, against their stored rows in `stored`.
pub fn diff<'a>(old: &mut Snapshot, stored: &StoredRows, fresh: impl IntoIterator<Item = &'a Record>) -> Vec<Change> {
    diff_read(old, stored, fresh.into_iter().map(|r| (r, record_fingerprint(r))), true, &[])
}

/// The same for any read, each record with its fingerprint, as the poller does it over the
/// parts of a read: the snapshot's marks are reset, each record of the read is marked, and
/// what was not marked is removed ([`removed_keys`]). With `complete` false (an incremental
/// read), a record absent from the read is unchanged, not removed; removals are the `deleted`
/// keys still in the snapshot. A moved record missing from `stored` is compared with an empty
/// row (every field it has is reported, from empty).
pub fn diff_read<'a>(
    old: &mut Snapshot,
    stored: &StoredRows,
    fresh: impl IntoIterator<Item = (&'a Record, u64)>,
    complete: bool,
    deleted: &[RecordKey],
) -> Vec<Change> {
    let fresh: Vec<(&Record, u64)> = fresh.into_iter().collect();
    for fingerprint in old.values_mut() {
        fingerprint.unsee();
    }
    for (i, (record, _)) in fresh.iter().enumerate() {
        if let Some(fingerprint) = old.get_mut(&record.key) {
            fingerprint.see(i);
        }
    }
    let changes = added_or_changed(old, stored, fresh.iter().copied());
    let record_at = |i: usize| fresh.get(i).map(|(r, _)| *r);
    let mut changes: Vec<Change> = changes.iter().filter_map(|c| c.change(record_at)).collect();
    changes.extend(removed_keys(old, complete, deleted).into_iter().map(Change::Removed));
    changes
}

/// A record of a read that is new or changed, by its position in the read (no copy of its key:
/// a first read of a million rows is a million of these); removals are [`removed_keys`]'s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowChange {
    Added(usize),
    Changed(usize, Vec<FieldChange>),
}

impl RowChange {
    /// The record's position in the read.
    pub fn row(&self) -> usize {
        match self {
            RowChange::Added(i) | RowChange::Changed(i, _) => *i,
        }
    }

    /// The [`Change`] rules look at, its record found by position.
    pub fn change<'r>(&self, record_at: impl Fn(usize) -> Option<&'r Record>) -> Option<Change> {
        Some(match self {
            RowChange::Added(i) => Change::Added(record_at(*i)?.key.clone()),
            RowChange::Changed(i, fields) => {
                Change::Changed { key: record_at(*i)?.key.clone(), fields: fields.clone() }
            }
        })
    }
}

/// The records of a read (or of one part of it) that are new or whose fields changed, by
/// position, in read order; removals are [`removed_keys`]'s, once the read is over.
pub fn added_or_changed<'a>(
    old: &Snapshot,
    stored: &StoredRows,
    fresh: impl IntoIterator<Item = (&'a Record, u64)>,
) -> Vec<RowChange> {
    let mut changes = Vec::new();
    let nothing = BTreeMap::new();
    for (i, (record, hash)) in fresh.into_iter().enumerate() {
        match old.get(&record.key) {
            None => changes.push(RowChange::Added(i)),
            Some(prev) if prev.hash != hash => {
                let before = stored.get(&record.key).map_or(&nothing, |row| &row.fields);
                let fields = field_changes(before, record);
                if !fields.is_empty() {
                    changes.push(RowChange::Changed(i, fields));
                }
            }
            Some(_) => {}
        }
    }
    changes
}

fn field_changes(old: &BTreeMap<String, String>, record: &Record) -> Vec<FieldChange> {
    let mut out = Vec::new();
    for (name, value) in &record.fields {
        let new = value.canonical();
        let before = old.get(name).map(String::as_str).unwrap_or("");
        if before != new {
            out.push(FieldChange { field: name.clone(), old: before.to_string(), new });
        }
    }
    for (name, value) in old {
        if !record.fields.contains_key(name) && !value.is_empty() {
            out.push(FieldChange { field: name.clone(), old: value.clone(), new: String::new() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(key: &str, fields: &[(&str, &str)]) -> Record {
        Record {
            key: RecordKey(key.into()),
            fields: fields.iter().map(|(k, v)| (k.to_string(), CellValue::Text((*v).into()))).collect(),
        }
    }

    fn rec(key: &str, fields: &[(&str, &str)]) -> (RecordKey, SnapshotRow) {
        let r = record(key, fields);
        (r.key.clone(), SnapshotRow::of(&r))
    }

    /// Memory's snapshot and the store's rows of the same table.
    fn both(rows: impl IntoIterator<Item = (RecordKey, SnapshotRow)>) -> (Snapshot, StoredRows) {
        let stored: StoredRows = rows.into_iter().collect();
        (fingerprints(&stored), stored)
    }

    #[test]
    fn added_changed_removed() {
        let (mut old, stored) = both([rec("1", &[("Estado", "Activo")]), rec("2", &[("Estado", "Activo")])]);
        let fresh = [record("1", &[("Estado", "Egresado")]), record("3", &[("Estado", "Activo")])];
        let changes = diff(&mut old, &stored, &fresh);
        assert_eq!(
            changes,
            vec![
                Change::Changed {
                    key: RecordKey("1".into()),
                    fields: vec![FieldChange { field: "Estado".into(), old: "Activo".into(), new: "Egresado".into() }]
                },
                Change::Added(RecordKey("3".into())),
                Change::Removed(RecordKey("2".into())),
            ]
        );
    }

    #[test]
    fn an_incremental_read_removes_only_what_was_deleted() {
        let (mut old, stored) = both([
            rec("1", &[("Estado", "Activo")]),
            rec("2", &[("Estado", "Activo")]),
            rec("3", &[("Estado", "Activo")]),
        ]);
        let fresh = [record("1", &[("Estado", "Egresado")])];
        let changes = diff_read(
            &mut old,
            &stored,
            fresh.iter().map(|r| (r, record_fingerprint(r))),
            false,
            &[RecordKey("3".into()), RecordKey("9".into())],
        );
        assert_eq!(changes.len(), 2, "{changes:?}");
        assert!(matches!(&changes[0], Change::Changed { key, .. } if key.0 == "1"));
        assert_eq!(changes[1], Change::Removed(RecordKey("3".into())), "2 is unchanged, 9 was never there");
    }

    #[test]
    fn a_new_empty_column_is_not_a_change() {
        let (mut old, stored) = both([rec("1", &[("A", "x")])]);
        let fresh = [record("1", &[("A", "x"), ("B", "")])];
        assert!(diff(&mut old, &stored, &fresh).is_empty());
    }

    #[test]
    fn whitespace_and_number_forms_are_not_changes() {
        let a = Record { key: RecordKey("1".into()), fields: [("N".to_string(), CellValue::Number(3.0))].into() };
        let b =
            Record { key: RecordKey("1".into()), fields: [("N".to_string(), CellValue::Text(" 3 ".into()))].into() };
        let (mut old, stored) = both([(a.key.clone(), SnapshotRow::of(&a))]);
        assert!(diff(&mut old, &stored, [&b]).is_empty());
        assert_eq!(record_fingerprint(&b), fingerprint(&SnapshotRow::of(&b).fields));
    }

    fn table() -> impl Strategy<Value = BTreeMap<String, (String, String)>> {
        proptest::collection::btree_map("[a-e]{1,2}", ("[xyz]{0,2}", "[xyz]{0,2}"), 0..30)
    }

    proptest! {
        /// Applying the reported changes to the old table yields the new one.
        #[test]
        fn diff_is_complete_and_exact(old_t in table(), new_t in table()) {
            let (mut old, stored) = both(old_t.iter().map(|(k, (a, b))| rec(k, &[("A", a), ("B", b)])));
            let records: Vec<Record> = new_t.iter().map(|(k, (a, b))| record(k, &[("A", a), ("B", b)])).collect();
            let moved = moved_rows(&old, records.iter().map(|r| (r, record_fingerprint(r))));
            // Only the moved rows are read back from the store, as the poller does.
            let read_back: StoredRows = moved.iter().map(|&i| &records[i].key).map(|k| (k.clone(), stored[k].clone())).collect();
            let changes = diff(&mut old, &read_back, &records);
            let fresh: Vec<(RecordKey, SnapshotRow)> = records.iter().map(|r| (r.key.clone(), SnapshotRow::of(r))).collect();
            let mut state = stored.clone();
            for c in &changes {
                match c {
                    Change::Added(k) => { let row = fresh.iter().find(|(fk, _)| fk == k).unwrap().1.clone(); prop_assert!(state.insert(k.clone(), row).is_none()); }
                    Change::Removed(k) => { prop_assert!(state.remove(k).is_some()); }
                    Change::Changed { key, fields } => {
                        prop_assert!(!fields.is_empty());
                        let row = state.get_mut(key).unwrap();
                        for f in fields { prop_assert_eq!(row.fields.get(&f.field).cloned().unwrap_or_default(), f.old.clone()); row.fields.insert(f.field.clone(), f.new.clone()); }
                        row.hash = fingerprint(&row.fields);
                    }
                }
            }
            let want: StoredRows = fresh.into_iter().collect();
            prop_assert_eq!(state, want);
        }
    }
}
