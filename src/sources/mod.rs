//! Sources: the systems of record recado watches, and turning their rows into records.
//!
//! [`read_records`] is the pure step shared by every tabular source: header names → columns,
//! the key column → record keys, and per-row problems (blank or duplicate key, unreadable phone)
//! → [`RowIssue`]s that are written to the row once. Vendor clients live in sub-folders.

pub mod google_sheets;

use std::collections::{HashMap, HashSet};

use crate::domain::{CellValue, PhoneError, PhoneNumber, Record, RecordKey};
use crate::store::WriteTarget;

/// A tab as read: the header row and the data rows (sheet row numbers start at 2).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<CellValue>>,
}

impl Table {
    /// Index of a column by header: exact match first, then case-insensitive.
    pub fn column(&self, name: &str) -> Option<usize> {
        let name = name.trim();
        self.header
            .iter()
            .position(|h| h.trim() == name)
            .or_else(|| self.header.iter().position(|h| h.trim().to_lowercase() == name.to_lowercase()))
    }
}

/// What the reader needs to know about a source's columns.
#[derive(Debug, Clone)]
pub struct ColumnSpec<'a> {
    pub key: &'a str,
    pub phone: &'a str,
    /// Columns recado writes: excluded from records (our writes are not changes).
    pub write_back: &'a [&'a str],
    /// Columns rules refer to, which must exist.
    pub required: &'a [&'a str],
    pub default_region: phonenumber::country::Id,
}

/// A problem with one row, written to that row once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowIssue {
    /// Stable identity, so the same problem is reported once.
    pub issue_key: String,
    pub target: WriteTarget,
    /// The record the issue belongs to (empty for rows without key).
    pub record_key: String,
    pub message: String,
}

/// A read turned into records.
#[derive(Debug, Default)]
pub struct RecordsRead {
    /// Records in sheet order with their row number at read time (informational only).
    pub records: Vec<(Record, u32)>,
    pub phones: HashMap<RecordKey, Result<PhoneNumber, PhoneError>>,
    pub issues: Vec<RowIssue>,
}

/// Turns a table into records. Fails only when required columns are missing (nothing can be
/// trusted then); every other problem is a [`RowIssue`] and the rest of the rows are kept.
pub fn read_records(table: &Table, spec: &ColumnSpec<'_>) -> Result<RecordsRead, Vec<String>> {
    let mut missing = Vec::new();
    for name in [spec.key, spec.phone].iter().chain(spec.required.iter()) {
        if table.column(name).is_none() && !missing.contains(&name.to_string()) {
            missing.push(name.to_string());
        }
    }
    if !missing.is_empty() {
        return Err(missing);
    }
    let key_col = table.column(spec.key).unwrap_or(0);
    let phone_col = table.column(spec.phone).unwrap_or(0);
    let excluded: HashSet<usize> = spec.write_back.iter().filter_map(|w| table.column(w)).collect();
    let fields: Vec<(usize, &str)> = table
        .header
        .iter()
        .enumerate()
        .filter(|(i, h)| !excluded.contains(i) && !h.trim().is_empty())
        .map(|(i, h)| (i, h.trim()))
        .collect();

    let mut out = RecordsRead::default();
    let mut first_row: HashMap<String, u32> = HashMap::new();
    let mut duplicates: HashMap<String, Vec<u32>> = HashMap::new();
    for (i, row) in table.rows.iter().enumerate() {
        let row_number = i as u32 + 2;
        let cell = |c: usize| row.get(c).cloned().unwrap_or(CellValue::Empty);
        let content_is_empty = fields.iter().all(|(c, _)| cell(*c).is_empty());
        if content_is_empty {
            continue;
        }
        let key = cell(key_col).canonical();
        if key.is_empty() {
            let fingerprint =
                crate::diff::fingerprint(&fields.iter().map(|(c, h)| (h.to_string(), cell(*c).canonical())).collect());
            out.issues.push(RowIssue {
                issue_key: format!("blank:{fingerprint:016x}"),
                target: WriteTarget::BlankKeyRow(row_number),
                record_key: String::new(),
                message: format!("row {row_number} has no {}: recado ignores it until it has one", spec.key),
            });
            continue;
        }
        if let Some(first) = first_row.get(&key) {
            duplicates.entry(key.clone()).or_insert_with(|| vec![*first]).push(row_number);
            continue;
        }
        first_row.insert(key.clone(), row_number);
        let record =
            Record { key: RecordKey(key), fields: fields.iter().map(|(c, h)| (h.to_string(), cell(*c))).collect() };
        let phone_cell = cell(phone_col);
        let phone = PhoneNumber::parse(&phone_cell.canonical(), spec.default_region);
        if let Err(e) = &phone {
            out.issues.push(RowIssue {
                issue_key: format!("phone:{}:{}", record.key, phone_cell.canonical()),
                target: WriteTarget::Record(record.key.clone()),
                record_key: record.key.0.clone(),
                message: format!("invalid phone: {e}"),
            });
        }
        out.phones.insert(record.key.clone(), phone);
        out.records.push((record, row_number));
    }
    let mut dup_keys: Vec<_> = duplicates.into_iter().collect();
    dup_keys.sort();
    for (key, rows) in dup_keys {
        let list: Vec<String> = rows.iter().map(u32::to_string).collect();
        out.issues.push(RowIssue {
            issue_key: format!("duplicate:{key}:{}", rows.len()),
            target: WriteTarget::AllRowsWithKey(RecordKey(key.clone())),
            record_key: key.clone(),
            message: format!(
                "duplicate {} '{key}' in rows {}: only the first is used; give each row its own {}",
                spec.key,
                list.join(", "),
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
            header: vec!["ID".into(), "Nombre".into(), "Teléfono".into(), "Estado WhatsApp".into()],
            rows: vec![
                vec![t("1"), t("Ana"), t("+56 9 8765 4321"), t("read")],
                vec![t(""), t("Sin ID"), t("+56 9 1111 1111")],
                vec![t("2"), t("Beto"), t("no tengo")],
                vec![],
                vec![t("1"), t("Ana bis"), t("+56 9 2222 2222")],
                vec![CellValue::Number(3.0), t("Caro"), CellValue::Number(56987654321.0)],
            ],
        }
    }

    fn spec<'a>(required: &'a [&'a str]) -> ColumnSpec<'a> {
        ColumnSpec {
            key: "ID",
            phone: "teléfono",
            write_back: &["Estado WhatsApp"],
            required,
            default_region: phonenumber::country::Id::CL,
        }
    }

    #[test]
    fn records_and_issues() {
        let read = read_records(&table(), &spec(&[])).unwrap();
        let keys: Vec<(&str, u32)> = read.records.iter().map(|(r, n)| (r.key.0.as_str(), *n)).collect();
        assert_eq!(keys, vec![("1", 2), ("2", 4), ("3", 7)]);
        assert!(!read.records[0].0.fields.contains_key("Estado WhatsApp"), "write-back columns are not fields");
        assert_eq!(read.phones[&RecordKey("3".into())].as_ref().unwrap().as_str(), "+56987654321");
        let kinds: Vec<&str> = read.issues.iter().map(|i| i.issue_key.split(':').next().unwrap()).collect();
        assert_eq!(kinds, vec!["blank", "phone", "duplicate"]);
        assert_eq!(read.issues[0].target, WriteTarget::BlankKeyRow(3));
        assert!(read.issues[2].message.contains("rows 2, 6"), "{}", read.issues[2].message);
    }

    #[test]
    fn missing_columns_are_all_named() {
        let err = read_records(&table(), &spec(&["Curso", "Mentor"])).unwrap_err();
        assert_eq!(err, vec!["Curso".to_string(), "Mentor".to_string()]);
    }
}
