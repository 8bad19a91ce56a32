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
    /// The interaction log's entry for one message (`out:…`) or reply (`in:…`) about a record:
    /// sources that keep a log write it as a record of its own (see [`interaction`]).
    Interaction { record: RecordKey, entry: String },
    /// A record this write creates (a report a conversation took, say), under a key recado
    /// chose: the source adds it once, and a repeat of the write finds it by that key.
    NewRecord(RecordKey),
    /// The record with this key, for emptying a field people fill (a staff reply in a hand-off
    /// inbox) once recado took `text` from it: written only while the field still holds
    /// `text`, so a newer text written meanwhile stays for the next read. Never repaired.
    Taken { record: RecordKey, text: String },
}

/// Separates a taken field's record key from its text in the stored form.
const TAKEN_SEPARATOR: char = '\u{1f}';

/// The fields of an interaction log entry, in neutral names: each source maps them to its own.
pub mod interaction {
    /// `outbound` or `inbound`.
    pub const DIRECTION: &str = "direction";
    /// What was said: a template's name and parameters, or the text.
    pub const CONTENT: &str = "content";
    /// The rule that sent it (outbound).
    pub const RULE: &str = "rule";
    /// The message's state (`sent`, `delivered`, `read`, `failed`, `skipped`; `received`).
    pub const STATUS: &str = "status";
    pub const STATUS_AT: &str = "status_at";
    pub const SENT_AT: &str = "sent_at";
    pub const DELIVERED_AT: &str = "delivered_at";
    pub const READ_AT: &str = "read_at";
    pub const ERROR: &str = "error";
    /// The provider's id for the message.
    pub const MESSAGE_ID: &str = "message_id";
    /// Every neutral field name.
    pub const ALL: [&str; 10] =
        [DIRECTION, CONTENT, RULE, STATUS, STATUS_AT, SENT_AT, DELIVERED_AT, READ_AT, ERROR, MESSAGE_ID];
}

impl WriteTarget {
    /// The stored form: a kind and a value (see the `writeback` table).
    pub fn kind(&self) -> &'static str {
        match self {
            WriteTarget::Record(_) => "record",
            WriteTarget::EveryCopyOf(_) => "every_copy",
            WriteTarget::Unkeyed(_) => "unkeyed",
            WriteTarget::Interaction { .. } => "interaction",
            WriteTarget::NewRecord(_) => "new_record",
            WriteTarget::Taken { .. } => "taken",
        }
    }

    pub fn value(&self) -> String {
        match self {
            WriteTarget::Record(k) | WriteTarget::EveryCopyOf(k) | WriteTarget::NewRecord(k) => k.0.clone(),
            WriteTarget::Unkeyed(l) => l.clone(),
            // The entry never holds `|`; a record key may.
            WriteTarget::Interaction { record, entry } => format!("{entry}|{}", record.0),
            WriteTarget::Taken { record, text } => format!("{}{TAKEN_SEPARATOR}{text}", record.0),
        }
    }

    /// Back from the stored form; `None` for a kind this version does not know.
    pub fn from_parts(kind: &str, value: String) -> Option<Self> {
        match kind {
            "record" => Some(WriteTarget::Record(RecordKey(value))),
            "every_copy" => Some(WriteTarget::EveryCopyOf(RecordKey(value))),
            "unkeyed" => Some(WriteTarget::Unkeyed(value)),
            "new_record" => Some(WriteTarget::NewRecord(RecordKey(value))),
            "interaction" => {
                let (entry, record) = value.split_once('|')?;
                Some(WriteTarget::Interaction { record: RecordKey(record.to_string()), entry: entry.to_string() })
            }
            "taken" => {
                let (record, text) = value.split_once(TAKEN_SEPARATOR)?;
                Some(WriteTarget::Taken { record: RecordKey(record.to_string()), text: text.to_string() })
            }
            _ => None,
        }
    }

    /// The record key, when the target has one.
    pub fn record_key(&self) -> Option<&RecordKey> {
        match self {
            WriteTarget::Record(k) | WriteTarget::EveryCopyOf(k) | WriteTarget::NewRecord(k) => Some(k),
            WriteTarget::Interaction { record, .. } | WriteTarget::Taken { record, .. } => Some(record),
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
            WriteTarget::Interaction { record, entry } => write!(f, "log entry {entry} of record {record}"),
            WriteTarget::NewRecord(k) => write!(f, "new record {k}"),
            WriteTarget::Taken { record, .. } => write!(f, "record {record} (a text recado took)"),
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
            WriteTarget::NewRecord(RecordKey("R-1a2b".into())),
            WriteTarget::Taken { record: RecordKey("H-1a2b".into()), text: "Hola | mañana".into() },
        ] {
            assert_eq!(WriteTarget::from_parts(t.kind(), t.value().to_string()), Some(t.clone()));
        }
        assert_eq!(WriteTarget::from_parts("row", "1".into()), None);
    }
}
