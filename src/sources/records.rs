//! Turning a table (a header and rows) into records: the pure step every tabular source shares.
//!
//! Fields are found by name with [`find_field`] — exact first, then ignoring case and
//! surrounding spaces — the same rule as [`Record::get`](crate::domain::Record::get), which
//! every later lookup (phone, consent, rule fields, templates) goes through. Per-record problems
//! (blank or duplicate key, unreadable phone) become [`RecordIssue`]s that are written to the
//! record once; the rest of the table keeps working.

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

/// A record's phone, parsed from its phone field, and the problem to report when it is not a
/// number. Parsing is the dearest part of a record, so it is done only for the records that
/// need it (new or changed ones, and every one at the first read after start), not by the
/// reader for every row of every read.
pub fn phone_of(
    record: &Record,
    phone_field: &str,
    region: phonenumber::country::Id,
) -> (Result<PhoneNumber, PhoneError>, Option<RecordIssue>) {
    let text = record.text(phone_field);
    let phone = PhoneNumber::parse(&text, region);
    let issue = phone.as_ref().err().map(|e| RecordIssue {
        issue_key: format!("{PHONE_ISSUE}{}:{:016x}", record.key, crate::diff::text_fingerprint(&text)),
        target: WriteTarget::Record(record.key.clone()),
        record_key: record.key.0.clone(),
        message: format!("invalid phone: {e}"),
    });
    (phone, issue)
}

/// Prefix of the issue keys of unreadable phones.
pub const PHONE_ISSUE: &str = "phone:";

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
    /// Where a record without key is: `row:N` for the N-th sheet row. `None`: such records are
    /// reported without a place to write the report.
    pub locator: fn(usize) -> Option<String>,
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

/// A read (or one part of it) turned into records.
#[derive(Debug, Default)]
pub struct RecordsRead {
    /// Records in the source's order.
    pub records: Vec<Record>,
    /// Each record's row in the table (its place in the whole read), in the order of `records`.
    pub rows: Vec<usize>,
    /// Rows without key, and (once the read is over) keys on more than one row.
    pub issues: Vec<RecordIssue>,
}

/// Which keys a read has had so far: a key's first row wins, a later row with the same key is
/// a duplicate. A read that arrives in parts is not held whole, so this is kept by whoever
/// holds every key anyway (the poller's snapshot); [`FirstRows`] serves a read held whole.
pub trait KeyLedger {
    /// The row where this read first had `key`, if an earlier row had it; else `row` is noted
    /// as its first.
    fn first_row(&mut self, key: &str, row: usize) -> Option<usize>;
}

/// The keys of one read held whole, each with its first row.
#[derive(Debug, Default)]
pub struct FirstRows(FxHashMap<String, usize>);

impl KeyLedger for FirstRows {
    fn first_row(&mut self, key: &str, row: usize) -> Option<usize> {
        if let Some(&first) = self.0.get(key) {
            return Some(first);
        }
        self.0.insert(key.to_string(), row);
        None
    }
}

/// Turns a whole table into records (see [`RecordsReader`]).
pub fn read_records(table: Table, spec: &ColumnSpec<'_>) -> Result<RecordsRead, Vec<String>> {
    Ok(RecordsReader::new(&table.header, spec)?.read_whole(table.rows))
}

/// Turns a table into records, a part of its rows at a time, so a large read is never held
/// whole. Fails only when required fields are missing (nothing can be trusted then); every
/// other problem is a [`RecordIssue`] and the rest of the rows are kept. A key's first row is
/// its record; later rows with that key are reported together when the read ends.
pub struct RecordsReader {
    key_name: String,
    key_col: usize,
    /// The columns that are fields (not write-back, not headerless), with their names.
    fields: Vec<(usize, String)>,
    /// Records share one list of names, in name order, and take their values from `columns`.
    names: std::sync::Arc<[String]>,
    columns: Vec<usize>,
    locator: fn(usize) -> Option<String>,
    /// Keys found on more than one row: every row, the first one first.
    duplicates: FxHashMap<String, Vec<usize>>,
}

impl std::fmt::Debug for RecordsReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordsReader").field("fields", &self.fields).finish_non_exhaustive()
    }
}

impl RecordsReader {
    /// A reader for rows under `header`, or every field the configuration needs that the header
    /// lacks.
    pub fn new(header: &[String], spec: &ColumnSpec<'_>) -> Result<Self, Vec<String>> {
        let column = |name: &str| find_field(header, name);
        let mut missing = Vec::new();
        for name in [spec.key, spec.phone].iter().chain(spec.required.iter()) {
            if column(name).is_none() && !missing.contains(&name.to_string()) {
                missing.push(name.to_string());
            }
        }
        if !missing.is_empty() {
            // Named as the configuration writes them, with the header meant when one is close:
            // a misspelt consent column must not read as "nobody consented".
            let names: Vec<String> = header.iter().map(|h| h.trim().to_string()).collect();
            return Err(missing
                .into_iter()
                .map(|m| match crate::domain::spelling::closest(&m, &names) {
                    Some(c) => format!("'{m}' (did you mean '{c}'?)"),
                    None => format!("'{m}'"),
                })
                .collect());
        }
        let excluded: HashSet<usize> = spec.write_back.iter().filter_map(|w| column(w)).collect();
        let fields: Vec<(usize, String)> = header
            .iter()
            .enumerate()
            .filter(|(i, h)| !excluded.contains(i) && !h.trim().is_empty())
            .map(|(i, h)| (i, h.trim().to_string()))
            .collect();
        // A name in two columns keeps the later column, as a map would.
        let mut by_name = fields.clone();
        by_name.sort_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
        by_name.dedup_by(|later, kept| later.1 == kept.1);
        let names: std::sync::Arc<[String]> = by_name.iter().map(|(_, h)| h.clone()).collect();
        let columns: Vec<usize> = by_name.iter().map(|(c, _)| *c).collect();
        Ok(Self {
            key_name: spec.key.to_string(),
            key_col: column(spec.key).unwrap_or(0),
            fields,
            names,
            columns,
            locator: spec.locator,
            duplicates: FxHashMap::default(),
        })
    }

    /// The records of `rows`, the first of which is the table's row `first`. The rows are
    /// consumed: each record takes its cells instead of copying them.
    pub fn push(&mut self, rows: Vec<Vec<CellValue>>, first: usize, seen: &mut dyn KeyLedger) -> RecordsRead {
        let mut out = RecordsRead::default();
        out.records.reserve_exact(rows.len());
        out.rows.reserve_exact(rows.len());
        for (i, mut row) in rows.into_iter().enumerate() {
            let i = first + i;
            let text = |row: &Vec<CellValue>, c: usize| row.get(c).map(CellValue::canonical).unwrap_or_default();
            if self.fields.iter().all(|(c, _)| row.get(*c).is_none_or(CellValue::is_empty)) {
                continue;
            }
            let key = text(&row, self.key_col);
            if key.is_empty() {
                let fingerprint =
                    crate::diff::fingerprint(&self.fields.iter().map(|(c, h)| (h.clone(), text(&row, *c))).collect());
                let place = (self.locator)(i);
                let at = place.as_deref().map(|p| format!(" ({})", p.replace(':', " "))).unwrap_or_default();
                out.issues.push(RecordIssue {
                    issue_key: format!("blank:{fingerprint:016x}"),
                    target: WriteTarget::Unkeyed(place.unwrap_or_default()),
                    record_key: String::new(),
                    message: format!("a record{at} has no {}: recado ignores it until it has one", self.key_name),
                });
                continue;
            }
            if let Some(first) = seen.first_row(&key, i) {
                self.duplicates.entry(key).or_insert_with(|| vec![first]).push(i);
                continue;
            }
            let mut take =
                |c: usize| row.get_mut(c).map(|v| std::mem::replace(v, CellValue::Empty)).unwrap_or(CellValue::Empty);
            let values = self.columns.iter().map(|c| take(*c)).collect();
            let record =
                Record { key: RecordKey(key), fields: Fields::shared(std::sync::Arc::clone(&self.names), values) };
            out.records.push(record);
            out.rows.push(i);
        }
        out
    }

    /// Every row of a table held whole, and the duplicates among them.
    pub fn read_whole(mut self, rows: Vec<Vec<CellValue>>) -> RecordsRead {
        let mut read = self.push(rows, 0, &mut FirstRows::default());
        read.issues.extend(self.finish());
        read
    }

    /// The read is over: the duplicates it found.
    pub fn finish(self) -> Vec<RecordIssue> {
        let mut dup_keys: Vec<_> = self.duplicates.into_iter().collect();
        dup_keys.sort();
        dup_keys
            .into_iter()
            .map(|(key, rows)| {
                let places: Vec<String> =
                    rows.iter().filter_map(|i| (self.locator)(*i)).map(|p| p.replace("row:", "")).collect();
                let where_ = if places.is_empty() { String::new() } else { format!(" in rows {}", places.join(", ")) };
                RecordIssue {
                    issue_key: format!("duplicate:{key}:{}", rows.len()),
                    target: WriteTarget::EveryCopyOf(RecordKey(key.clone())),
                    record_key: key.clone(),
                    message: format!(
                        "duplicate {} '{}'{where_}: only the first is used; give each record its own {}",
                        self.key_name,
                        RecordKey::shown(&key),
                        self.key_name
                    ),
                }
            })
            .collect()
    }
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
            locator: row_locator,
        }
    }

    #[test]
    fn records_and_issues() {
        let read = read_records(table(), &spec(&[], &[])).unwrap();
        let keys: Vec<&str> = read.records.iter().map(|r| r.key.0.as_str()).collect();
        assert_eq!(keys, vec!["1", "2", "3"]);
        assert!(!read.records[0].fields.contains_key("Estado WhatsApp"), "write-back fields are not fields");
        assert_eq!(read.records[2].key.0, "3");
        let phone = |i: usize| phone_of(&read.records[i], "teléfono", phonenumber::country::Id::CL);
        assert_eq!(phone(2).0.unwrap().as_str(), "+56987654321");
        let kinds: Vec<&str> = read.issues.iter().map(|i| i.issue_key.split(':').next().unwrap()).collect();
        assert_eq!(kinds, vec!["blank", "duplicate"]);
        assert_eq!(read.issues[0].target, WriteTarget::Unkeyed("row:3".into()));
        assert!(read.issues[1].message.contains("rows 2, 6"), "{}", read.issues[1].message);
        let (bad, issue) = phone(1);
        assert!(bad.is_err());
        let issue = issue.unwrap();
        assert!(issue.issue_key.starts_with(PHONE_ISSUE));
        assert_eq!(issue.target, WriteTarget::Record(RecordKey("2".into())));
        assert!(!issue.message.contains("no tengo"), "the cell's text is masked: {}", issue.message);
        assert!(phone(0).1.is_none(), "a number is no problem");
    }

    /// A table read in parts, its keys kept by a ledger that outlives each part.
    #[test]
    fn a_table_read_in_parts_reads_as_the_whole_and_finds_duplicates_across_parts() {
        let whole = read_records(table(), &spec(&[], &[])).unwrap();
        let t = table();
        let mut reader = RecordsReader::new(&t.header, &spec(&[], &[])).unwrap();
        let mut seen = FirstRows::default();
        let mut records = Vec::new();
        let mut rows = Vec::new();
        let mut issues = Vec::new();
        let mut at = 0;
        for part in t.rows.chunks(2) {
            let read = reader.push(part.to_vec(), at, &mut seen);
            at += part.len();
            records.extend(read.records);
            rows.extend(read.rows);
            issues.extend(read.issues);
        }
        issues.extend(reader.finish());
        assert_eq!(records, whole.records);
        assert_eq!(rows, whole.rows);
        assert_eq!(rows, vec![0, 2, 5], "each record's row in the table");
        assert_eq!(issues, whole.issues, "the duplicate of key 1 (rows 2 and 6) is found across parts");
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
