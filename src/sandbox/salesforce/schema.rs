//! The Salesforce emulator's schema: objects, their fields and field types, record ids, and
//! the wire format of values (`2026-11-24T13:00:00.000+0000`, `2026-11-24`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A field's type, as `describe` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldKind {
    Id,
    String,
    Picklist,
    Phone,
    Email,
    Url,
    Textarea,
    Date,
    Datetime,
    Boolean,
    Double,
    Reference,
}

impl FieldKind {
    pub fn is_text(self) -> bool {
        matches!(
            self,
            FieldKind::Id
                | FieldKind::String
                | FieldKind::Picklist
                | FieldKind::Phone
                | FieldKind::Email
                | FieldKind::Url
                | FieldKind::Textarea
                | FieldKind::Reference
        )
    }
}

/// One field of an object.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FieldDef {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: FieldKind,
    /// Most characters a text field holds (STRING_TOO_LONG above).
    #[serde(default = "default_length")]
    pub length: usize,
    /// For references: the object pointed at (`*` for any, as `WhatId`).
    #[serde(default)]
    pub reference_to: Option<String>,
    #[serde(default)]
    pub external_id: bool,
    #[serde(default)]
    pub required: bool,
    /// System and formula fields cannot be written.
    #[serde(default = "yes")]
    pub updateable: bool,
}

fn default_length() -> usize {
    255
}

fn yes() -> bool {
    true
}

impl FieldDef {
    pub fn new(name: &str, kind: FieldKind) -> Self {
        let length = match kind {
            FieldKind::Textarea => 32_000,
            FieldKind::Id | FieldKind::Reference => 18,
            FieldKind::Phone => 40,
            FieldKind::Email => 80,
            _ => 255,
        };
        Self {
            name: name.into(),
            kind,
            length,
            reference_to: None,
            external_id: false,
            required: false,
            updateable: true,
        }
    }

    pub fn reference(name: &str, to: &str) -> Self {
        Self { reference_to: Some(to.into()), ..Self::new(name, FieldKind::Reference) }
    }

    pub fn with_length(mut self, length: usize) -> Self {
        self.length = length;
        self
    }

    pub fn external_id(mut self) -> Self {
        self.external_id = true;
        self
    }

    pub fn required(mut self) -> Self {
        self.required = true;
        self
    }

    fn read_only(mut self) -> Self {
        self.updateable = false;
        self
    }

    /// `Contacto__c` → `Contacto__r`; `WhoId` → `Who`.
    pub fn relationship_name(&self) -> Option<String> {
        if self.kind != FieldKind::Reference {
            return None;
        }
        if let Some(base) = self.name.strip_suffix("__c") {
            Some(format!("{base}__r"))
        } else {
            self.name.strip_suffix("Id").map(String::from)
        }
    }

    /// Long text areas cannot be filtered on.
    pub fn filterable(&self) -> bool {
        !(self.kind == FieldKind::Textarea && self.length > 255)
    }
}

/// An object: its API name, id prefix and fields (the system fields are added).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ObjectDef {
    pub name: String,
    /// Three characters every id of the object starts with (`003` for Contact).
    pub prefix: String,
    pub fields: Vec<FieldDef>,
    /// *Allow Activities*: Tasks may point at its records (`WhatId`). Off unless asked for,
    /// as on a new custom object.
    #[serde(default)]
    pub activities: bool,
}

impl ObjectDef {
    /// An object with the system fields and `fields`.
    pub fn new(name: &str, prefix: &str, fields: Vec<FieldDef>) -> Self {
        let mut all = vec![
            FieldDef::new("Id", FieldKind::Id).read_only(),
            FieldDef::new("IsDeleted", FieldKind::Boolean).read_only(),
            FieldDef::new("CreatedDate", FieldKind::Datetime).read_only(),
            FieldDef::new("LastModifiedDate", FieldKind::Datetime).read_only(),
            FieldDef::new("SystemModstamp", FieldKind::Datetime).read_only(),
        ];
        for f in fields {
            if !all.iter().any(|a| a.name.eq_ignore_ascii_case(&f.name)) {
                all.push(f);
            }
        }
        Self { name: name.into(), prefix: prefix.into(), fields: all, activities: false }
    }

    /// With *Allow Activities* ticked.
    pub fn with_activities(mut self) -> Self {
        self.activities = true;
        self
    }

    pub fn field(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.name.eq_ignore_ascii_case(name))
    }

    pub fn relationship(&self, name: &str) -> Option<&FieldDef> {
        self.fields.iter().find(|f| f.relationship_name().is_some_and(|r| r.eq_ignore_ascii_case(name)))
    }
}

/// The standard objects every emulated org has.
pub fn standard_objects() -> Vec<ObjectDef> {
    vec![
        ObjectDef::new(
            "Organization",
            "00D",
            vec![
                FieldDef::new("Name", FieldKind::String),
                FieldDef::new("TimeZoneSidKey", FieldKind::Picklist).read_only(),
                FieldDef::new("IsSandbox", FieldKind::Boolean).read_only(),
            ],
        ),
        ObjectDef::new(
            "Contact",
            "003",
            vec![
                FieldDef::new("FirstName", FieldKind::String).with_length(40),
                FieldDef::new("LastName", FieldKind::String).with_length(80).required(),
                FieldDef::new("Name", FieldKind::String).with_length(121).read_only(),
                FieldDef::new("MobilePhone", FieldKind::Phone),
                FieldDef::new("Phone", FieldKind::Phone),
                FieldDef::new("Email", FieldKind::Email),
            ],
        ),
        ObjectDef::new(
            "Task",
            "00T",
            vec![
                FieldDef::new("Subject", FieldKind::Picklist),
                FieldDef::reference("WhoId", "Contact"),
                FieldDef::reference("WhatId", "*"),
                FieldDef::new("Status", FieldKind::Picklist).with_length(40),
                FieldDef::new("Priority", FieldKind::Picklist).with_length(40),
                FieldDef::new("ActivityDate", FieldKind::Date),
                FieldDef::new("Description", FieldKind::Textarea),
                FieldDef::new("Type", FieldKind::Picklist).with_length(40),
            ],
        ),
    ]
}

const CHECKSUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The 18-character id of the `n`-th record with `prefix`: 15 case-sensitive characters and
/// the three-character case checksum Salesforce appends.
pub fn make_id(prefix: &str, n: u64) -> String {
    let mut body = String::new();
    let mut v = n;
    for _ in 0..9 {
        body.insert(0, BASE62[(v % 62) as usize] as char);
        v /= 62;
    }
    let id15 = format!("{prefix}000{body}");
    with_checksum(&id15)
}

/// An id in its 18-character form (15 characters get the checksum); `None` when it is not an
/// id at all.
pub fn normalize_id(id: &str) -> Option<String> {
    if !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    match id.len() {
        15 => Some(with_checksum(id)),
        18 => {
            let expected = with_checksum(&id[..15]);
            (expected.eq_ignore_ascii_case(id)).then_some(expected)
        }
        _ => None,
    }
}

fn with_checksum(id15: &str) -> String {
    let bytes = id15.as_bytes();
    let mut out = id15.to_string();
    for chunk in bytes.chunks(5) {
        let mut bits = 0usize;
        for (i, b) in chunk.iter().enumerate() {
            if b.is_ascii_uppercase() {
                bits |= 1 << i;
            }
        }
        out.push(CHECKSUM[bits] as char);
    }
    out
}

/// `2026-11-24T13:00:00.000+0000`: how Salesforce writes a date-time.
pub fn format_datetime(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string())
        .unwrap_or_default()
}

/// A date-time as Salesforce accepts one in JSON: with or without milliseconds, `Z`, `+0000`
/// or `+00:00`.
pub fn parse_datetime(s: &str) -> Option<i64> {
    let s = s.trim();
    let normalized = if let Some(x) = s.strip_suffix('Z') { format!("{x}+0000") } else { s.replace("+00:00", "+0000") };
    for f in ["%Y-%m-%dT%H:%M:%S%.f%z", "%Y-%m-%dT%H:%M:%S%z"] {
        if let Ok(t) = chrono::DateTime::parse_from_str(&normalized, f) {
            return Some(t.timestamp_millis());
        }
    }
    // Other offsets (`-03:00`).
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// A JSON value converted to how the emulator keeps a field of `kind`, or why not (Salesforce
/// answers a value of the wrong shape with `JSON_PARSER_ERROR` for the whole request).
pub fn coerce(kind: FieldKind, v: &Value) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    let bad = |what: &str| Err(format!("Cannot deserialize instance of {what} from {} value {v}", json_kind(v)));
    match kind {
        FieldKind::Date => match v.as_str().and_then(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()) {
            Some(d) => Ok(Value::String(d.format("%Y-%m-%d").to_string())),
            None => bad("date"),
        },
        FieldKind::Datetime => match v.as_str().and_then(parse_datetime) {
            Some(ms) => Ok(Value::String(format_datetime(ms))),
            None => bad("datetime"),
        },
        FieldKind::Boolean => match v {
            Value::Bool(_) => Ok(v.clone()),
            Value::String(s) if s == "true" || s == "false" => Ok(Value::Bool(s == "true")),
            _ => bad("boolean"),
        },
        FieldKind::Double => match v {
            Value::Number(_) => Ok(v.clone()),
            Value::String(s) => s.parse::<f64>().map(|n| serde_json::json!(n)).or_else(|_| bad("double")),
            _ => bad("double"),
        },
        _ => match v {
            Value::String(s) => Ok(Value::String(s.clone())),
            Value::Number(n) => Ok(Value::String(n.to_string())),
            Value::Bool(b) => Ok(Value::String(b.to_string())),
            _ => bad("string"),
        },
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "VALUE_STRING",
        Value::Number(_) => "VALUE_NUMBER_INT",
        Value::Bool(_) => "VALUE_TRUE",
        Value::Array(_) => "START_ARRAY",
        Value::Object(_) => "START_OBJECT",
        Value::Null => "VALUE_NULL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_salesforces_checksum() {
        // A published example: 001A0000006Vm9r → 001A0000006Vm9rIAC.
        assert_eq!(with_checksum("001A0000006Vm9r"), "001A0000006Vm9rIAC");
        assert_eq!(normalize_id("001A0000006Vm9r").as_deref(), Some("001A0000006Vm9rIAC"));
        assert_eq!(normalize_id("001A0000006Vm9rIAC").as_deref(), Some("001A0000006Vm9rIAC"));
        assert_eq!(normalize_id("001A0000006Vm9rXXX"), None);
        assert_eq!(normalize_id("hello"), None);
        let id = make_id("a01", 1);
        assert_eq!(id.len(), 18);
        assert!(id.starts_with("a01"));
        assert_eq!(normalize_id(&id).as_deref(), Some(id.as_str()));
    }

    #[test]
    fn wire_formats() {
        let ms = parse_datetime("2026-11-24T13:00:00.000+0000").unwrap();
        assert_eq!(format_datetime(ms), "2026-11-24T13:00:00.000+0000");
        assert_eq!(parse_datetime("2026-11-24T10:00:00-03:00"), Some(ms));
        assert_eq!(parse_datetime("2026-11-24T13:00:00Z"), Some(ms));
        assert!(coerce(FieldKind::Date, &serde_json::json!("24/11/2026")).is_err());
        assert_eq!(FieldDef::reference("Contacto__c", "Contact").relationship_name().as_deref(), Some("Contacto__r"));
        assert_eq!(FieldDef::reference("WhoId", "Contact").relationship_name().as_deref(), Some("Who"));
    }
}
