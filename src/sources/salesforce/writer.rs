//! Write-back to the fields of the records themselves, through sObject Collections
//! (`PATCH composite/sobjects`, up to 200 records a call, `allOrNone: false`).
//!
//! Values queued for one record are coalesced into one record of the call. Each value is
//! converted to its field's type first, as `describe` gives it (read once): the engine's local
//! times (`2026-11-24 10:00:00`, in the source's time zone) become UTC date-times, text is cut
//! to the field's length, so Salesforce never refuses a whole call for one value's shape. Then
//! each record's SaveResult is handled on its own: written, gone (`ENTITY_IS_DELETED`: dropped
//! with a log line), refused for good (a validation rule: reported once and dropped), or
//! transient (`UNABLE_TO_LOCK_ROW`: left queued for the next flush). One record never blocks
//! the others.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use super::client::OrgClient;
use super::config::SalesforceConfig;
use super::errors::{classify, one_line, record_outcome, RecordOutcome};
use super::reader::ObjectHint;
use crate::domain::{PendingWrite, WriteTarget};
use crate::sources::{SourceError, WriteReport};

/// Records per sObject Collections call (Salesforce's limit).
pub const RECORDS_PER_CALL: usize = 200;
/// Calls one flush makes at most (10,000 records); the rest waits for the next flush.
pub const CALLS_PER_FLUSH: usize = 50;

/// A field as `describe` gives it.
#[derive(Debug, Clone)]
struct FieldMeta {
    name: String,
    kind: String,
    length: usize,
    updateable: bool,
}

/// The write side of one configured object.
pub struct RecordWriter {
    cfg: Arc<SalesforceConfig>,
    client: OrgClient,
    hint: Arc<ObjectHint>,
    fields: Mutex<Option<HashMap<String, FieldMeta>>>,
    /// The time zone the engine's times are written in.
    time_zone: Mutex<Option<chrono_tz::Tz>>,
}

impl RecordWriter {
    pub fn new(cfg: Arc<SalesforceConfig>, client: OrgClient, hint: Arc<ObjectHint>) -> Self {
        Self { cfg, client, hint, fields: Mutex::new(None), time_zone: Mutex::new(None) }
    }

    pub fn label(&self) -> String {
        format!("salesforce {} ({})", self.cfg.object, self.cfg.settings.id)
    }

    pub fn source_ids(&self) -> Vec<String> {
        vec![self.cfg.settings.id.clone()]
    }

    pub fn flush_interval(&self) -> Duration {
        self.cfg.settings.flush_interval
    }

    /// Every write is checked by its SaveResult: nothing to verify afterwards.
    pub fn needs_check(&self) -> bool {
        false
    }

    async fn describe(&self) -> Result<HashMap<String, FieldMeta>, SourceError> {
        if let Some(f) = self.fields.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Ok(f);
        }
        let path = format!("{}/sobjects/{}/describe", self.client.data_path(), self.cfg.object);
        let (v, _) = self.client.get_json(&path, &format!("describing {}", self.cfg.object)).await?;
        let fields: HashMap<String, FieldMeta> = v["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| {
                let name = f["name"].as_str()?.to_string();
                Some((
                    name.to_lowercase(),
                    FieldMeta {
                        name,
                        kind: f["type"].as_str().unwrap_or("string").to_string(),
                        length: f["length"].as_u64().unwrap_or(0) as usize,
                        updateable: f["updateable"].as_bool().unwrap_or(false),
                    },
                ))
            })
            .collect();
        *self.fields.lock().unwrap_or_else(PoisonError::into_inner) = Some(fields.clone());
        Ok(fields)
    }

    async fn tz(&self) -> Result<chrono_tz::Tz, SourceError> {
        if let Some(tz) = *self.time_zone.lock().unwrap_or_else(PoisonError::into_inner) {
            return Ok(tz);
        }
        let name = match &self.cfg.time_zone {
            Some(t) => t.clone(),
            None => {
                let (records, _, _) =
                    self.client.query("SELECT TimeZoneSidKey FROM Organization", "the org's time zone").await?;
                records.first().and_then(|r| r["TimeZoneSidKey"].as_str()).unwrap_or("UTC").to_string()
            }
        };
        let tz = name.parse().unwrap_or(chrono_tz::UTC);
        *self.time_zone.lock().unwrap_or_else(PoisonError::into_inner) = Some(tz);
        Ok(tz)
    }

    /// The record id a target writes to, if there is one.
    fn id_of(&self, target: &WriteTarget) -> Option<String> {
        let key = match target {
            WriteTarget::Record(k) | WriteTarget::EveryCopyOf(k) => &k.0,
            WriteTarget::Unkeyed(_) => return None,
        };
        if self.cfg.settings.key_field.eq_ignore_ascii_case("Id") {
            let ok = (key.len() == 15 || key.len() == 18) && key.chars().all(|c| c.is_ascii_alphanumeric());
            ok.then(|| key.clone())
        } else {
            self.hint.id_of(key)
        }
    }

    pub async fn write(&self, batch: &[PendingWrite]) -> Result<WriteReport, SourceError> {
        let mut report = WriteReport::default();
        if batch.is_empty() {
            return Ok(report);
        }
        let fields = self.describe().await?;
        let tz = self.tz().await?;
        // Per record: field → value, and the batch indices the record carries.
        let mut records: BTreeMap<String, (Map<String, Value>, Vec<usize>)> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        for (i, p) in batch.iter().enumerate() {
            let Some(id) = self.id_of(&p.write.target) else {
                debug!(source = %self.cfg.settings.id, target = %p.write.target, "no record to write to");
                report.dropped.push(i);
                continue;
            };
            let Some(meta) = fields.get(&p.write.field.to_lowercase()) else {
                report.rejected.push((
                    i,
                    format!("{} has no field '{}': create it or fix write_back", self.cfg.object, p.write.field),
                ));
                continue;
            };
            if !meta.updateable {
                report.rejected.push((
                    i,
                    format!("the field '{}' of {} is not writable by the integration user", meta.name, self.cfg.object),
                ));
                continue;
            }
            let value = match field_value(meta, &p.write.value, tz) {
                Ok(v) => v,
                Err(e) => {
                    report.rejected.push((i, e));
                    continue;
                }
            };
            let entry = records.entry(id.clone()).or_insert_with(|| {
                order.push(id.clone());
                (Map::new(), Vec::new())
            });
            // The queue is in order: a later value for the same field wins.
            entry.0.insert(meta.name.clone(), value);
            entry.1.push(i);
        }
        for chunk in order.chunks(RECORDS_PER_CALL).take(CALLS_PER_FLUSH) {
            let body_records: Vec<Value> = chunk
                .iter()
                .filter_map(|id| {
                    let (values, _) = records.get(id)?;
                    let mut r = values.clone();
                    r.insert("attributes".into(), json!({ "type": self.cfg.object }));
                    r.insert("id".into(), json!(id));
                    Some(Value::Object(r))
                })
                .collect();
            let body = json!({ "allOrNone": false, "records": body_records });
            let path = format!("{}/composite/sobjects", self.client.data_path());
            let what = format!("writing back to {}", self.cfg.object);
            let answer = self.client.call(reqwest::Method::PATCH, &path, Some(&body), &what).await?;
            report.writes += 1;
            if answer.status != 200 {
                return Err(classify(answer.status, &answer.body, &what));
            }
            let results: Vec<Value> = serde_json::from_slice(&answer.body)
                .map_err(|_| SourceError::Transient(format!("unreadable answer from Salesforce to {what}")))?;
            for (n, id) in chunk.iter().enumerate() {
                let Some((_, indices)) = records.get(id) else { continue };
                // Salesforce answers one result per record, in order; a missing one stays queued.
                let Some(result) = results.get(n) else { continue };
                if result["success"] == true {
                    report.done.extend(indices);
                    continue;
                }
                let error = &result["errors"][0];
                let code = error["statusCode"].as_str().unwrap_or("UNKNOWN");
                let message = error["message"].as_str().unwrap_or("");
                match record_outcome(code, message) {
                    RecordOutcome::Retry => {
                        debug!(source = %self.cfg.settings.id, record = %id, code, "write-back to a record will be retried");
                    }
                    RecordOutcome::Gone => {
                        warn!(source = %self.cfg.settings.id, record = %id, code, "the record is gone: its write-back is dropped");
                        report.dropped.extend(indices);
                    }
                    RecordOutcome::Refused(reason) => {
                        report.rejected.extend(indices.iter().map(|i| (*i, reason.clone())));
                    }
                }
            }
        }
        Ok(report)
    }
}

/// A queued value as the field's type wants it.
fn field_value(meta: &FieldMeta, value: &str, tz: chrono_tz::Tz) -> Result<Value, String> {
    if value.is_empty() {
        return Ok(Value::Null);
    }
    let refuse =
        |what: &str| Err(format!("'{}' is a {what} field: recado cannot write '{}' to it", meta.name, one_line(value)));
    match meta.kind.as_str() {
        "datetime" => {
            use chrono::TimeZone;
            let local = chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").map_err(|_| ());
            match local.ok().and_then(|l| tz.from_local_datetime(&l).earliest()) {
                Some(t) => Ok(json!(t.with_timezone(&chrono::Utc).format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())),
                None => refuse("date-time"),
            }
        }
        "date" => match value.get(..10).and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()) {
            Some(d) => Ok(json!(d.format("%Y-%m-%d").to_string())),
            None => refuse("date"),
        },
        "boolean" => match value.to_lowercase().as_str() {
            "true" | "1" | "sí" | "si" | "yes" => Ok(json!(true)),
            "false" | "0" | "no" => Ok(json!(false)),
            _ => refuse("checkbox"),
        },
        "double" | "currency" | "percent" | "int" => match value.parse::<f64>() {
            Ok(n) => Ok(json!(n)),
            Err(_) => refuse("number"),
        },
        _ => {
            // Text longer than the field would be refused: keep what fits, marked as cut.
            if meta.length > 0 && value.chars().count() > meta.length {
                let cut: String = value.chars().take(meta.length.saturating_sub(1)).collect();
                Ok(json!(format!("{cut}…")))
            } else {
                Ok(json!(value))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(kind: &str, length: usize) -> FieldMeta {
        FieldMeta { name: "F__c".into(), kind: kind.into(), length, updateable: true }
    }

    #[test]
    fn values_take_their_fields_type() {
        let tz: chrono_tz::Tz = "America/Santiago".parse().unwrap();
        assert_eq!(
            field_value(&meta("datetime", 0), "2026-11-24 10:00:00", tz).unwrap(),
            json!("2026-11-24T13:00:00.000Z")
        );
        assert_eq!(field_value(&meta("date", 0), "2026-11-24 10:00:00", tz).unwrap(), json!("2026-11-24"));
        assert_eq!(field_value(&meta("string", 5), "delivered", tz).unwrap(), json!("deli…"));
        assert_eq!(field_value(&meta("string", 5), "", tz).unwrap(), Value::Null);
        assert!(field_value(&meta("double", 0), "read", tz).is_err());
    }
}
