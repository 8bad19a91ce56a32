//! Write-back in domain terms: which record a value goes to, in which field.
//!
//! A source resolves a [`WriteTarget`] to wherever the record is *at the moment it writes*
//! (a row number, an object id): nothing outside the source ever holds a position.

use std::fmt;

use super::RecordKey;

/// Which record a write-back value belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WriteTarget {
    /// The record with this key.
    Record(RecordKey),
    /// Every record that holds this key (a key used twice: each copy gets the warning).
    EveryCopyOf(RecordKey),
    /// A record that has no key, so only its source can find it: `locator` is opaque outside the
    /// source (for a table, a row number that is written only if that row still has no key).
    Unkeyed(String),
}

impl WriteTarget {
    /// The stored form: a kind and a value (see the `writeback` table).
    pub fn kind(&self) -> &'static str {
        match self {
            WriteTarget::Record(_) => "record",
            WriteTarget::EveryCopyOf(_) => "every_copy",
            WriteTarget::Unkeyed(_) => "unkeyed",
        }
    }

    pub fn value(&self) -> &str {
        match self {
            WriteTarget::Record(k) | WriteTarget::EveryCopyOf(k) => &k.0,
            WriteTarget::Unkeyed(l) => l,
        }
    }

    /// Back from the stored form; `None` for a kind this version does not know.
    pub fn from_parts(kind: &str, value: String) -> Option<Self> {
        match kind {
            "record" => Some(WriteTarget::Record(RecordKey(value))),
            "every_copy" => Some(WriteTarget::EveryCopyOf(RecordKey(value))),
            "unkeyed" => Some(WriteTarget::Unkeyed(value)),
            _ => None,
        }
    }

    /// The record key, when the target has one.
    pub fn record_key(&self) -> Option<&RecordKey> {
        match self {
            WriteTarget::Record(k) | WriteTarget::EveryCopyOf(k) => Some(k),
            WriteTarget::Unkeyed(_) => None,
        }
    }
}

impl fmt::Display for WriteTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteTarget::Record(k) => write!(f, "record {k}"),
            WriteTarget::EveryCopyOf(k) => write!(f, "every record keyed {k}"),
            WriteTarget::Unkeyed(l) => write!(f, "unkeyed record at {l}"),
        }
    }
}

/// One value to write back into a field of a record. Later writes to the same field of the
/// same target replace earlier ones (the queue coalesces them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldWrite {
    pub source_id: String,
    pub target: WriteTarget,
    /// The field (a column header, a field name).
    pub field: String,
    pub value: String,
}

/// A queued write with its sequence number, so that a flush deletes only what it wrote and
/// never a newer value queued meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    pub write: FieldWrite,
    pub seq: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_round_trips() {
        for t in [
            WriteTarget::Record(RecordKey("A-7".into())),
            WriteTarget::EveryCopyOf(RecordKey("7".into())),
            WriteTarget::Unkeyed("row:12".into()),
        ] {
            assert_eq!(WriteTarget::from_parts(t.kind(), t.value().to_string()), Some(t.clone()));
        }
        assert_eq!(WriteTarget::from_parts("row", "1".into()), None);
    }
}
