//! Turning a table (a header and rows) into records: the pure step every tabular source shares.
//!
//! Fields are found by name with [`find_field`] — exact first, then ignoring case and
//! surrounding spaces — the same rule as [`Record::get`](crate::domain::Record::get), which
//! every later lookup (phone, consent, rule fields, templates) goes through. Per-record problems
//! (blank or duplicate key, unreadable phone) become [`RecordIssue`]s that are written to the
//! record once; the rest of the table keeps working.

use std::collections::hash_map::Entry;
use std::collections::HashSet;

use rustc_hash::FxHashMap;

use crate::domain::{CellValue, Fields, PhoneError, PhoneNumber, Record, RecordKey, WriteTarget};

/// A table as read: the header row and the data rows (in a sheet, row numbers start at 2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<CellValue>>,
}

impl Table {
    /// Index of a column by name (see [`find_field`]).
    pub fn column(&self, name: &str) -> Option<usize> {
        find_field(&self.header, name)
    }
}

/// The one field lookup: exact (trimmed) first, then ignoring case.
pub fn find_field<S: AsRef<str>>(names: &[S], wanted: &str) -> Option<usize> {
    let wanted = wanted.trim();
    names.iter().position(|h| h.as_ref().trim() == wanted).or_else(|| {
        let lower = wanted.to_lowercase();
        names.iter().position(|h| h.as_ref().trim().to_lowercase() == lower)
    })
}

/// Phone numbers parsed from cell texts, kept from one read to the next: a poll that finds
/// one changed cell parses at most that one number, not every row's (parsing is the dearest
/// part of turning a large sheet into records). One per source (its default region).
#[derive(Default)]
pub struct PhoneCache {
    inner: std::sync::Mutex<PhoneCacheInner>,
}

impl std::fmt::Debug for PhoneCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the numbers themselves.
        let n = self.inner.lock().map(|i| i.parsed.len()).unwrap_or(0);
        write!(f, "PhoneCache({n} numbers)")
    }
}

#[derive(Default)]
struct PhoneCacheInner {
    /// Cell text → (the read that last saw it, the parse).
    parsed: FxHashMap<String, (u64, Result<PhoneNumber, PhoneError>)>,
    read: u64,
}

/// Most numbers kept for a source that is only read in part (an incremental read cannot tell
/// which numbers are gone).
const PHONE_CACHE_MOST: usize = 2_000_000;

impl PhoneCache {
    /// Parses `text`, or gives the parse of the same text in an earlier read; counts parses.
    fn parse(
        inner: &mut PhoneCacheInner,
        text: &str,
        region: phonenumber::country::Id,
        parses: &mut usize,
    ) -> Result<PhoneNumber, PhoneError> {
        let read = inner.read;
        if let Some((seen, p)) = inner.parsed.get_mut(text) {
            *seen = read;
            return p.clone();
        }
        *parses += 1;
        let p = PhoneNumber::parse(text, region);
        inner.parsed.insert(text.to_string(), (read, p.clone()));
        p
    }
}

/// The hash `read_records` finds a key's first row by.
fn key_hash(key: &str) -> u64 {
    #[cfg(test)]
    if tests::EVERY_KEY_COLLIDES.with(std::cell::Cell::get) {
        return 0;
    }
    std::hash::BuildHasher::hash_one(&rustc_hash::FxBuildHasher, key)
}

/// What the reader needs to know about a source's fields.
#[derive(Debug, Clone)]
pub struct ColumnSpec<'a> {
    pub key: &'a str,
    pub phone: &'a str,
    /// Fields recado writes: excluded from records (our writes are not changes).
    pub write_back: &'a [&'a str],
    /// Fields rules cannot work without (a trigger's field, consent): missing ones stop the read.
    pub required: &'a [&'a str],
    /// Other names the configuration uses (template parameters, filters, the time-zone field).
    pub referenced: &'a [&'a str],
    pub default_region: phonenumber::country::Id,
    /// Where a record without key is: `row:N` for the N-th sheet row. `None`: such records are
    /// reported without a place to write the report.
    pub locator: fn(usize) -> Option<String>,
    /// The source's numbers from earlier reads.
    pub phones: &'a PhoneCache,
    /// The table holds every record (a full read): numbers it no longer has are forgotten.
    pub complete: bool,
}

/// A problem with one record, written to it once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordIssue {
    /// Stable identity, so the same problem is reported once.
    pub issue_key: String,
    pub target: WriteTarget,
    /// The record the issue belongs to (empty for records without key).
    pub record_key: String,
    /// What the record shows, and the log says.
    pub message: String,
}

/// A read turned into records.
#[derive(Debug, Default)]
pub struct RecordsRead {
    /// Records in the source's order.
    pub records: Vec<Record>,
    /// Each record's phone, in the order of `records`.
    pub phones: Vec<Result<PhoneNumber, PhoneError>>,
    pub issues: Vec<RecordIssue>,
    /// Phone numbers parsed by this read (the rest came from [`PhoneCache`]).
    pub phone_parses: usize,
}

/// Turns a table into records. Fails only when required fields are missing (nothing can be
/// trusted then); every other problem is a [`RecordIssue`] and the rest of the rows are kept.
pub fn read_records(table: Table, spec: &ColumnSpec<'_>) -> Result<RecordsRead, Vec<String>> {
    let mut missing = Vec::new();
    for name in [spec.key, spec.phone].iter().chain(spec.required.iter()) {
        if table.column(name).is_none() && !missing.contains(&name.to_string()) {
            missing.push(name.to_string());
        }
    }
    if !missing.is_empty() {
        // Named as the configuration writes them, with the header meant when one is close: a
        // misspelt consent column must not read as "nobody consented".
        let names: Vec<String> = table.header.iter().map(|h| h.trim().to_string()).collect();
        return Err(missing
            .into_iter()
            .map(|m| match crate::domain::spelling::closest(&m, &names) {
                Some(c) => format!("'{m}' (did you mean '{c}'?)"),
                None => format!("'{m}'"),
            })
            .collect());
    }
    let key_col = table.column(spec.key).unwrap_or(0);
    let phone_col = table.column(spec.phone).unwrap_or(0);
    let excluded: HashSet<usize> = spec.write_back.iter().filter_map(|w| table.column(w)).collect();
    let fields: Vec<(usize, String)> = table
        .header
        .iter()
        .enumerate()
        .filter(|(i, h)| !excluded.contains(i) && !h.trim().is_empty())
        .map(|(i, h)| (i, h.trim().to_string()))
        .collect();
    // Records share one list of names, in name order; a name in two columns keeps the later
    // column, as a map would.
    let mut by_name = fields.clone();
    by_name.sort_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
    by_name.dedup_by(|later, kept| later.1 == kept.1);
    let names: std::sync::Arc<[String]> = by_name.iter().map(|(_, h)| h.clone()).collect();
    let columns: Vec<usize> = by_name.iter().map(|(c, _)| *c).collect();

    let mut out = RecordsRead::default();
    // One lock for the whole read: a read runs on one thread, and reads of a source do not
    // overlap.
    let mut cache = spec.phones.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    cache.read += 1;
    // The first row of each key, found by the key's hash, so a large read holds no second copy
    // of its keys: hash → (its record, its row). A key whose hash another key already took is
    // kept whole in `collided`; a hit is always compared with the record's own key.
    let mut first_of: FxHashMap<u64, (usize, usize)> = FxHashMap::default();
    let mut collided: FxHashMap<String, usize> = FxHashMap::default();
    let mut duplicates: FxHashMap<String, Vec<usize>> = FxHashMap::default();
    out.records.reserve_exact(table.rows.len());
    out.phones.reserve_exact(table.rows.len());
    // The rows are consumed: each record takes its cells instead of copying them, so a large
    // read is not held twice.
    for (i, mut row) in table.rows.into_iter().enumerate() {
        let text = |row: &Vec<CellValue>, c: usize| row.get(c).map(CellValue::canonical).unwrap_or_default();
        if fields.iter().all(|(c, _)| row.get(*c).is_none_or(CellValue::is_empty)) {
            continue;
        }
        let key = text(&row, key_col);
        if key.is_empty() {
            let fingerprint =
                crate::diff::fingerprint(&fields.iter().map(|(c, h)| (h.clone(), text(&row, *c))).collect());
            let place = (spec.locator)(i);
            let at = place.as_deref().map(|p| format!(" ({})", p.replace(':', " "))).unwrap_or_default();
            out.issues.push(RecordIssue {
                issue_key: format!("blank:{fingerprint:016x}"),
                target: WriteTarget::Unkeyed(place.unwrap_or_default()),
                record_key: String::new(),
                message: format!("a record{at} has no {}: recado ignores it until it has one", spec.key),
            });
            continue;
        }
        // One lookup: the key's first row if it was seen, else it is recorded as the first.
        let first = match first_of.entry(key_hash(&key)) {
            Entry::Vacant(e) => {
                e.insert((out.records.len(), i));
                None
            }
            Entry::Occupied(e) => {
                let (record, row) = *e.get();
                if out.records.get(record).is_some_and(|r| r.key.0 == key) {
                    Some(row)
                } else if let Some(&row) = collided.get(&key) {
                    Some(row)
                } else {
                    collided.insert(key.clone(), i);
                    None
                }
            }
        };
        if let Some(first) = first {
            duplicates.entry(key).or_insert_with(|| vec![first]).push(i);
            continue;
        }
        let phone_text = text(&row, phone_col);
        let mut take =
            |c: usize| row.get_mut(c).map(|v| std::mem::replace(v, CellValue::Empty)).unwrap_or(CellValue::Empty);
        let values = columns.iter().map(|c| take(*c)).collect();
        let record = Record { key: RecordKey(key), fields: Fields::shared(std::sync::Arc::clone(&names), values) };
        let phone = PhoneCache::parse(&mut cache, &phone_text, spec.default_region, &mut out.phone_parses);
        if let Err(e) = &phone {
            out.issues.push(RecordIssue {
                issue_key: format!("phone:{}:{:016x}", record.key, crate::diff::text_fingerprint(&phone_text)),
                target: WriteTarget::Record(record.key.clone()),
                record_key: record.key.0.clone(),
                message: format!("invalid phone: {e}"),
            });
        }
        out.phones.push(phone);
        out.records.push(record);
    }
    let read = cache.read;
    if spec.complete {
        cache.parsed.retain(|_, (seen, _)| *seen == read);
    } else if cache.parsed.len() > PHONE_CACHE_MOST {
        cache.parsed.clear();
    }
    drop(cache);
    let mut dup_keys: Vec<_> = duplicates.into_iter().collect();
    dup_keys.sort();
    for (key, rows) in dup_keys {
        let places: Vec<String> =
            rows.iter().filter_map(|i| (spec.locator)(*i)).map(|p| p.replace("row:", "")).collect();
        let where_ = if places.is_empty() { String::new() } else { format!(" in rows {}", places.join(", ")) };
        out.issues.push(RecordIssue {
            issue_key: format!("duplicate:{key}:{}", rows.len()),
            target: WriteTarget::EveryCopyOf(RecordKey(key.clone())),
            record_key: key.clone(),
            message: format!(
                "duplicate {} '{}'{where_}: only the first is used; give each record its own {}",
                spec.key,
                RecordKey::shown(&key),
                spec.key
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> CellValue {
        if s.is_empty() {
            CellValue::Empty
        } else {
            CellValue::Text(s.into())
        }
    }

    fn table() -> Table {
        Table {
            header: vec![
                "ID".into(),
                "Nombre".into(),
                "Teléfono".into(),
                "Consentimiento".into(),
                "Estado WhatsApp".into(),
            ],
            rows: vec![
                vec![t("1"), t("Ana"), t("+56 9 8765 4321"), t("Sí"), t("read")],
                vec![t(""), t("Sin ID"), t("+56 9 1111 1111")],
                vec![t("2"), t("Beto"), t("no tengo")],
                vec![],
                vec![t("1"), t("Ana bis"), t("+56 9 2222 2222")],
                vec![CellValue::Number(3.0), t("Caro"), CellValue::Number(56987654321.0)],
            ],
        }
    }

    fn row_locator(i: usize) -> Option<String> {
        Some(format!("row:{}", i + 2))
    }

    fn spec<'a>(required: &'a [&'a str], referenced: &'a [&'a str]) -> ColumnSpec<'a> {
        ColumnSpec {
            key: "ID",
            phone: "teléfono",
            write_back: &["Estado WhatsApp"],
            required,
            referenced,
            default_region: phonenumber::country::Id::CL,
            locator: row_locator,
            phones: Box::leak(Box::default()),
            complete: true,
        }
    }

    #[test]
    fn records_and_issues() {
        let read = read_records(table(), &spec(&[], &[])).unwrap();
        let keys: Vec<&str> = read.records.iter().map(|r| r.key.0.as_str()).collect();
        assert_eq!(keys, vec!["1", "2", "3"]);
        assert!(!read.records[0].fields.contains_key("Estado WhatsApp"), "write-back fields are not fields");
        assert_eq!(read.records[2].key.0, "3");
        assert_eq!(read.phones[2].as_ref().unwrap().as_str(), "+56987654321");
        let kinds: Vec<&str> = read.issues.iter().map(|i| i.issue_key.split(':').next().unwrap()).collect();
        assert_eq!(kinds, vec!["blank", "phone", "duplicate"]);
        assert_eq!(read.issues[0].target, WriteTarget::Unkeyed("row:3".into()));
        assert!(read.issues[2].message.contains("rows 2, 6"), "{}", read.issues[2].message);
        assert!(!read.issues[1].message.contains("no tengo"), "the cell's text is masked: {}", read.issues[1].message);
    }

    thread_local! {
        /// Makes every key hash the same, so the exact comparison behind the hash is what
        /// tells keys apart.
        pub(super) static EVERY_KEY_COLLIDES: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn keys_whose_hashes_collide_are_still_told_apart() {
        let plain = read_records(table(), &spec(&[], &[])).unwrap();
        EVERY_KEY_COLLIDES.with(|c| c.set(true));
        let collided = read_records(table(), &spec(&[], &[])).unwrap();
        EVERY_KEY_COLLIDES.with(|c| c.set(false));
        let keys = |r: &RecordsRead| r.records.iter().map(|r| r.key.0.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&collided), vec!["1", "2", "3"]);
        assert_eq!(keys(&collided), keys(&plain));
        let issues =
            |r: &RecordsRead| r.issues.iter().map(|i| (i.issue_key.clone(), i.message.clone())).collect::<Vec<_>>();
        assert_eq!(issues(&collided), issues(&plain), "the duplicate of key 1 is found, and only it");
        // Three copies of a key whose hash another key took first.
        let table = Table {
            header: vec!["ID".into(), "Teléfono".into()],
            rows: vec![
                // An empty row first: a row is not its record's place in the read.
                vec![],
                vec![t("a"), t("+56 9 8765 4321")],
                vec![t("b"), t("+56 9 8765 4322")],
                vec![t("b"), t("+56 9 8765 4323")],
                vec![t("c"), t("+56 9 8765 4324")],
                vec![t("b"), t("+56 9 8765 4325")],
            ],
        };
        EVERY_KEY_COLLIDES.with(|c| c.set(true));
        let read = read_records(table, &spec(&[], &[])).unwrap();
        EVERY_KEY_COLLIDES.with(|c| c.set(false));
        assert_eq!(keys(&read), vec!["a", "b", "c"]);
        assert_eq!(read.phones[1].as_ref().unwrap().as_str(), "+56987654322", "the first row of b is used");
        assert_eq!(read.issues.len(), 1);
        assert!(read.issues[0].message.contains("rows 4, 5, 7"), "{}", read.issues[0].message);
    }

    #[test]
    fn records_share_their_field_names_and_a_repeated_column_keeps_the_later_one() {
        let table = Table {
            header: vec!["ID".into(), "Teléfono".into(), "Nota".into(), "Nota".into()],
            rows: vec![vec![t("1"), t("+56 9 8765 4321"), t("antes"), t("después")], vec![t("2"), t(""), t("x")]],
        };
        let read = read_records(table, &spec(&[], &[])).unwrap();
        let names: Vec<&String> = read.records[0].fields.keys().collect();
        assert_eq!(names, ["ID", "Nota", "Teléfono"], "in name order, once");
        assert_eq!(read.records[0].text("Nota"), "después", "as a map collects it");
        assert_eq!(read.records[1].text("Nota"), "", "the later column is empty on row 2");
        let order: Vec<(&String, &CellValue)> = read.records[1].fields.iter().collect();
        assert_eq!(order.len(), 3);
        let mut edited = read.records[1].clone();
        edited.fields.insert("Extra".into(), t("y"));
        assert_eq!(edited.text("Extra"), "y");
        assert_eq!(read.records[1].fields.len(), 3, "the other records' names are untouched");
    }

    #[test]
    fn missing_fields_are_all_named() {
        let err = read_records(table(), &spec(&["Curso", "Mentor", "Consentimento"], &[])).unwrap_err();
        assert_eq!(err, ["'Curso'", "'Mentor'", "'Consentimento' (did you mean 'Consentimiento'?)"]);
    }

    #[test]
    fn a_configured_name_that_differs_by_case_is_found() {
        let read = read_records(table(), &spec(&["consentimiento"], &["nombre"])).unwrap();
        let ana = &read.records[0];
        assert_eq!(ana.text("consentimiento"), "Sí", "the rule's spelling reads the value");
        assert_eq!(ana.text("nombre"), "Ana");
        assert_eq!(ana.text("teléfono"), "+56 9 8765 4321");
    }
}
