//! Records: one row of a table or one object of a system of record, as named fields.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The stable identity of a record inside its source (the value of its key field).
///
/// Shown (`Display`, as logs do) masked when it looks like a phone number: some teams key
/// their records by the phone, and a full number must never reach a log line. The raw key is
/// `.0`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey(pub String);

impl RecordKey {
    /// How a raw key is shown in logs and messages: as is, or masked if it looks like a phone
    /// number.
    pub fn shown(raw: &str) -> std::borrow::Cow<'_, str> {
        super::phone::mask_if_phone(raw)
    }
}

/// A map of keys is looked up by a cell's text without making a key of it (the derived `Hash`
/// and `Eq` are the `String`'s, so they agree with `str`'s).
impl std::borrow::Borrow<str> for RecordKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&RecordKey::shown(&self.0))
    }
}

/// A cell's text: held inline up to 24 bytes, on the heap beyond. Nearly every cell of a table
/// (a name, a phone, a status) fits, so a read of a million rows is not millions of small
/// allocations, made by the decoder and freed on another thread once the read is diffed.
pub type CellText = compact_str::CompactString;

/// One field value, as the source gave it (unformatted).
#[derive(Debug, Clone, PartialEq)]
pub enum CellValue {
    Empty,
    Text(CellText),
    Number(f64),
    Bool(bool),
    /// A date or date-time, as a serial number of days since 1899-12-30 with the time of day as
    /// the fraction (the usual serial day count; sources that send ISO text convert to it). Its
    /// canonical text is the serial, so scheduling maths and change detection see a number;
    /// messages show it as a readable date.
    Date(f64),
}

impl CellValue {
    /// The canonical text used for diffing, comparisons and templates: numbers without a
    /// trailing `.0`, text trimmed.
    pub fn canonical(&self) -> String {
        let mut s = String::new();
        self.write_canonical(&mut s);
        s
    }

    /// Appends the canonical text to `out` (no allocation for text cells).
    pub fn write_canonical(&self, out: &mut String) {
        match self {
            CellValue::Empty => {}
            CellValue::Text(s) => out.push_str(trim_cell(s)),
            CellValue::Number(n) | CellValue::Date(n) => write_number(*n, out),
            CellValue::Bool(b) => out.push_str(if *b { "TRUE" } else { "FALSE" }),
        }
    }

    pub fn is_empty(&self) -> bool {
        match self {
            CellValue::Empty => true,
            CellValue::Text(s) => trim_cell(s).is_empty(),
            _ => false,
        }
    }
}

/// Integers print without a decimal point; other numbers in their shortest form.
pub fn format_number(n: f64) -> String {
    let mut s = String::new();
    write_number(n, &mut s);
    s
}

/// [`format_number`] appended to `out`: no allocation of its own (every number cell of every
/// read is fingerprinted through this).
pub fn write_number(n: f64, out: &mut String) {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        out.push_str(itoa::Buffer::new().format(n as i64));
    } else {
        use std::fmt::Write;
        // Writing to a `String` cannot fail.
        let _ = write!(out, "{n}");
    }
}

/// A cell's text without surrounding whitespace, as `str::trim` has it. Most cells neither
/// start nor end with a space: two byte checks answer for them, without decoding characters
/// from both ends (every text cell of every read is trimmed for its fingerprint).
pub fn trim_cell(s: &str) -> &str {
    // An ASCII byte that is not whitespace is a whole character that is not whitespace (a
    // non-ASCII character's bytes are all 0x80 or above).
    let solid = |b: u8| b.is_ascii() && !matches!(b, b' ' | b'\t'..=b'\r');
    match (s.as_bytes().first(), s.as_bytes().last()) {
        (Some(&a), Some(&z)) if solid(a) && solid(z) => s,
        _ => s.trim(),
    }
}

/// A record: its key and its fields by name (write-back fields excluded).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub key: RecordKey,
    pub fields: Fields,
}

/// A record's fields, in name order. The names are shared by every record of a read (one
/// list, not a copy per record): a million-row read holds each column name once, and a record
/// costs its values only. Read like a map (`get`, `iter` in name order, as the persisted
/// fingerprint needs).
#[derive(Clone, Default)]
pub struct Fields {
    /// Sorted, without repeats.
    names: Arc<[String]>,
    /// One per name, in the same order.
    values: Vec<CellValue>,
}

impl Fields {
    /// Fields of a read: `names` sorted without repeats, shared by its records, and this
    /// record's values in that order. Values beyond the names are dropped; missing ones are
    /// empty.
    pub fn shared(names: Arc<[String]>, mut values: Vec<CellValue>) -> Self {
        debug_assert!(names.windows(2).all(|w| w[0] < w[1]), "field names must be sorted and unique");
        values.resize(names.len(), CellValue::Empty);
        Self { names, values }
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok()
    }

    /// A field by its exact name.
    pub fn get(&self, name: &str) -> Option<&CellValue> {
        self.position(name).and_then(|i| self.values.get(i))
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.position(name).is_some()
    }

    /// Fields in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &CellValue)> {
        self.names.iter().zip(self.values.iter())
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.names.iter()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Sets a field (the record's own copy of the names is made when it gains a new one).
    pub fn insert(&mut self, name: String, value: CellValue) -> Option<CellValue> {
        match self.names.binary_search_by(|n| n.as_str().cmp(&name)) {
            Ok(i) => self.values.get_mut(i).map(|v| std::mem::replace(v, value)),
            Err(i) => {
                let mut names = self.names.to_vec();
                names.insert(i, name);
                self.names = names.into();
                self.values.insert(i, value);
                None
            }
        }
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl PartialEq for Fields {
    fn eq(&self, other: &Self) -> bool {
        self.names == other.names && self.values == other.values
    }
}

impl FromIterator<(String, CellValue)> for Fields {
    /// As a map is collected: a name given twice keeps its last value.
    fn from_iter<I: IntoIterator<Item = (String, CellValue)>>(iter: I) -> Self {
        let map: BTreeMap<String, CellValue> = iter.into_iter().collect();
        let (names, values): (Vec<String>, Vec<CellValue>) = map.into_iter().unzip();
        Self { names: names.into(), values }
    }
}

impl<const N: usize> From<[(String, CellValue); N]> for Fields {
    fn from(pairs: [(String, CellValue); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Fields {
    type Item = (&'a String, &'a CellValue);
    type IntoIter = std::iter::Zip<std::slice::Iter<'a, String>, std::slice::Iter<'a, CellValue>>;

    fn into_iter(self) -> Self::IntoIter {
        self.names.iter().zip(self.values.iter())
    }
}

impl Record {
    /// A field by name: the one lookup everything uses — exact first, then ignoring case and
    /// surrounding spaces (a rule may write `consentimiento` for the header `Consentimiento`).
    pub fn get(&self, field: &str) -> Option<&CellValue> {
        if let Some(v) = self.fields.get(field) {
            return Some(v);
        }
        let wanted = field.trim().to_lowercase();
        self.fields.iter().find(|(k, _)| k.trim().to_lowercase() == wanted).map(|(_, v)| v)
    }

    /// The canonical text of a field; empty when the field does not exist.
    pub fn text(&self, field: &str) -> String {
        self.get(field).map(CellValue::canonical).unwrap_or_default()
    }
}

/// Whether two field names are the same field (the rule of [`Record::get`]).
pub fn same_field(a: &str, b: &str) -> bool {
    a == b || a.trim().to_lowercase() == b.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_are_phone_numbers_are_shown_masked() {
        assert_eq!(RecordKey("+56 9 8765 4321".into()).to_string(), "+56 9 **** *321");
        assert_eq!(RecordKey("56987654321".into()).to_string(), "569*****321");
        assert_eq!(RecordKey("1234".into()).to_string(), "1234");
        assert_eq!(RecordKey("INS-2024-000123".into()).to_string(), "INS-2024-000123");
        assert_eq!(RecordKey("a0B5g00000XyZ12EAF".into()).to_string(), "a0B5g00000XyZ12EAF");
    }

    #[test]
    fn fields_are_found_whatever_their_case() {
        let r = Record {
            key: RecordKey("1".into()),
            fields: [("Consentimiento".to_string(), CellValue::Text("Sí".into()))].into_iter().collect(),
        };
        assert_eq!(r.text("Consentimiento"), "Sí");
        assert_eq!(r.text("consentimiento "), "Sí");
        assert_eq!(r.text("Otro"), "");
        assert!(same_field("Estado", " estado"));
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(CellValue::Number(12.0).canonical(), "12");
        assert_eq!(CellValue::Number(1.5).canonical(), "1.5");
        assert_eq!(CellValue::Text("  Sí ".into()).canonical(), "Sí");
        assert_eq!(CellValue::Bool(true).canonical(), "TRUE");
        assert!(CellValue::Text("   ".into()).is_empty());
    }

    // The canonical text is what persisted fingerprints are made of: the fast paths must give
    // the very text the plain ones gave, or every record would read as changed after an
    // upgrade.
    proptest::proptest! {
        #[test]
        fn a_trimmed_cell_is_what_str_trim_gives(s in "[ \t\n\x0B\x0C\ra-zé\u{85}\u{A0}\u{3000}]{0,6}") {
            proptest::prop_assert_eq!(trim_cell(&s), s.trim());
        }

        #[test]
        fn a_number_is_written_as_before(n in proptest::num::f64::ANY, i in -999_999_999_999_999i64..=999_999_999_999_999, far in -2_000_000_000_000_000i64..2_000_000_000_000_000) {
            let before = |n: f64| if n.fract() == 0.0 && n.abs() < 1e15 { format!("{}", n as i64) } else { format!("{n}") };
            proptest::prop_assert_eq!(format_number(n), before(n));
            proptest::prop_assert_eq!(format_number(i as f64), before(i as f64));
            proptest::prop_assert_eq!(format_number(far as f64), before(far as f64));
            for edge in [999_999_999_999_999.0, -999_999_999_999_999.0, 1e15, -1e15, 1e15 - 0.5, -1.0, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 46349.4375] {
                proptest::prop_assert_eq!(format_number(edge), before(edge));
            }
            let mut out = String::from("x");
            write_number(n, &mut out);
            proptest::prop_assert_eq!(out, format!("x{}", before(n)));
        }
    }
}
