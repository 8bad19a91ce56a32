//! Write-back to the fields of the records themselves, through sObject Collections
//! (`PATCH composite/sobjects`, up to 200 records a call, `allOrNone: false`).
//!
//! A field named by a relationship path (`Contacto__r.Consentimiento_WhatsApp__c`: the consent
//! lives on the Contact) is written to the record the path led to when the record was last
//! read, as Salesforce's `attributes` said; a consent checkbox is ticked or unticked.
//!
//! Values queued for one record are coalesced into one record of the call. Each value is
//! converted to its field's type first, as `describe` gives it (read once): the engine's local
//! times (`2026-11-24 10:00:00`, in the source's time zone) become UTC date-times, text is cut
//! to the field's length, so Salesforce never refuses a whole call for one value's shape. Then
//! each record's SaveResult is handled on its own: written, gone (`ENTITY_IS_DELETED`: dropped
//! with a log line), refused for good (a validation rule: reported once and dropped), or
//! transient (`UNABLE_TO_LOCK_ROW`: left queued for the next flush). One record never blocks
//! the others: a call refused as a whole (400) is first taken as a sign that the object changed
//! (`describe` again next flush), then split in halves until the record it is about is alone.
//! The interaction log is written after the records and apart from them: a log that fails
//! keeps its entries queued without holding back the statuses.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tracing::{debug, warn};

use super::client::OrgClient;
use super::config::SalesforceConfig;
use super::errors::{classify, one_line, record_outcome, RecordOutcome};
use super::reader::ObjectHint;
use crate::domain::{interaction, PendingWrite, WriteTarget};
use crate::sources::{SourceError, WriteReport};

/// Records per sObject Collections call (Salesforce's limit).
pub const RECORDS_PER_CALL: usize = 200;
/// Log record ids kept in memory (about 10 MB at most).
const LOG_IDS_KEPT: usize = 50_000;
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

/// Where one queued value goes.
enum Destination {
    /// This field of this record.
    Record { object: String, id: String, field: String },
    /// Not known until the object is read: the value stays queued.
    Later,
    /// No record: the value is dropped.
    Nowhere,
    /// Never writable, for this reason.
    Refused(String),
}

/// One record of a write-back call.
struct Outgoing {
    object: String,
    values: Map<String, Value>,
    indices: Vec<usize>,
}

/// Queued values with their index in the batch.
type Indexed<'a> = Vec<(usize, &'a PendingWrite)>;
/// A log entry's record key, its neutral values, and the batch indices it carries.
type LogEntry = (String, HashMap<String, String>, Vec<usize>);
/// A log entry's key and the fields of its log record.
type LogBody = (String, Map<String, Value>);

/// The write side of one configured object.
/// A field to empty: (batch index, record id, the text recado took from it).
type TakenField = (usize, String, String);

pub struct RecordWriter {
    cfg: Arc<SalesforceConfig>,
    client: OrgClient,
    hint: Arc<ObjectHint>,
    /// `describe` of each object written to, by name.
    fields: Mutex<HashMap<String, HashMap<String, FieldMeta>>>,
    /// Log entries already in Salesforce: entry key → record id.
    log_ids: Mutex<HashMap<String, String>>,
}

impl RecordWriter {
    pub fn new(cfg: Arc<SalesforceConfig>, client: OrgClient, hint: Arc<ObjectHint>) -> Self {
        Self { cfg, client, hint, fields: Mutex::new(HashMap::new()), log_ids: Mutex::new(HashMap::new()) }
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

    /// What `recado check --online` asks before anything is written (a Salesforce field is
    /// never created by recado, unlike a sheet's column): each write-back field of the object
    /// exists and the integration user may edit it, and each field in `status_fields` is Text,
    /// since it takes values such as `queued until 2026-11-23 09:00`.
    pub async fn write_back_problems(&self, status_fields: &[String]) -> Result<Vec<String>, SourceError> {
        let object = &self.cfg.object;
        let fields = self.describe(object).await?;
        let names: Vec<String> = fields.values().map(|f| f.name.clone()).collect();
        let mut out = Vec::new();
        for f in self.cfg.settings.write_back.fields() {
            // A relationship path writes the related record (e.g. the Contact's consent).
            if f.contains('.') {
                continue;
            }
            match fields.get(&f.to_lowercase()) {
                None => out.push(format!(
                    "'{f}' (named by write_back) is not a field of {object}, and recado does not create fields; {}",
                    crate::domain::spelling::did_you_mean(f, &names)
                )),
                Some(m) if !m.updateable => {
                    out.push(format!("'{f}' (named by write_back) is not editable by the integration user on {object}"))
                }
                Some(m) if status_fields.iter().any(|s| s.eq_ignore_ascii_case(f)) && !matches!(m.kind.as_str(), "string" | "textarea") => {
                    out.push(format!(
                        "'{f}' (a status field) is of type {}, and needs to be Text: it takes values such as 'queued until 2026-11-23 09:00'",
                        m.kind
                    ))
                }
                Some(_) => {}
            }
        }
        Ok(out)
    }

    /// Every write is checked by its SaveResult: nothing to verify afterwards.
    pub fn needs_check(&self) -> bool {
        false
    }

    async fn describe(&self, object: &str) -> Result<HashMap<String, FieldMeta>, SourceError> {
        if let Some(f) = self.fields.lock().unwrap_or_else(PoisonError::into_inner).get(object) {
            return Ok(f.clone());
        }
        let path = format!("{}/sobjects/{object}/describe", self.client.data_path());
        let (v, _) = self.client.get_json(&path, &format!("describing {object}")).await?;
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
                        updateable: f["updateable"].as_bool().unwrap_or(false)
                            || f["createable"].as_bool().unwrap_or(false),
                    },
                ))
            })
            .collect();
        self.fields.lock().unwrap_or_else(PoisonError::into_inner).insert(object.to_string(), fields.clone());
        Ok(fields)
    }

    /// Where a value for `field` of a record goes. A field of the object itself goes to the
    /// record; a relationship path (`Contacto__r.Consentimiento_WhatsApp__c`) goes to the
    /// record the path led to when the record was last read.
    fn destination(&self, target: &WriteTarget, field: &str) -> Destination {
        let key = match target {
            WriteTarget::Record(k) | WriteTarget::EveryCopyOf(k) | WriteTarget::Taken { record: k, .. } => &k.0,
            WriteTarget::Unkeyed(_) | WriteTarget::Interaction { .. } => return Destination::Nowhere,
            WriteTarget::NewRecord(_) => return Destination::Nowhere,
        };
        let own_ids = self.cfg.settings.key_field.eq_ignore_ascii_case("Id");
        let Some((path, name)) = field.rsplit_once('.') else {
            return match self.id_of(target) {
                Some(id) => Destination::Record { object: self.cfg.object.clone(), id, field: field.to_string() },
                None if !own_ids && !self.hint.loaded() => Destination::Later,
                None => Destination::Nowhere,
            };
        };
        if !self.hint.loaded() {
            // Since the start nothing was read: where the path leads is not known yet.
            return Destination::Later;
        }
        if !own_ids && self.hint.id_of(key).is_none() {
            return Destination::Nowhere;
        }
        match self.hint.related_of(key, path) {
            Some(r) => Destination::Record { object: r.object, id: r.id, field: name.to_string() },
            None => Destination::Refused(format!("the record has no {path} to write {name} to: the lookup is empty")),
        }
    }

    /// The record id a target writes to, if there is one.
    fn id_of(&self, target: &WriteTarget) -> Option<String> {
        let key = match target {
            WriteTarget::Record(k) | WriteTarget::EveryCopyOf(k) | WriteTarget::Taken { record: k, .. } => &k.0,
            WriteTarget::Unkeyed(_) | WriteTarget::Interaction { .. } | WriteTarget::NewRecord(_) => return None,
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
        // The engine's times are local to the source's zone.
        let tz = super::reader::source_tz(&self.cfg, &self.client).await?;
        let (logs, records_batch): (Indexed<'_>, Indexed<'_>) =
            batch.iter().enumerate().partition(|(_, p)| matches!(p.write.target, WriteTarget::Interaction { .. }));
        let (new_records, records_batch): (Indexed<'_>, Indexed<'_>) =
            records_batch.into_iter().partition(|(_, p)| matches!(p.write.target, WriteTarget::NewRecord(_)));
        if !new_records.is_empty() {
            match self.create_records(&new_records, tz, &mut report).await {
                Err(e @ SourceError::RateLimited { .. }) => return Err(e),
                Err(e) => report.failed = Some(e),
                Ok(()) => {}
            }
        }
        if !records_batch.is_empty() {
            match self.write_records(&records_batch, tz, &mut report).await {
                Err(e @ SourceError::RateLimited { .. }) => return Err(e),
                Err(e) => report.failed = Some(e),
                Ok(()) => {}
            }
        }
        // The log after the records, and apart: a log that cannot be written (its object
        // refused, its lookup failing) keeps its entries queued and never holds back the
        // statuses on the records.
        if !logs.is_empty() {
            if let Err(e) = self.write_log(&logs, tz, &mut report).await {
                report.failed.get_or_insert(e);
            }
        }
        Ok(report)
    }

    /// One sObject Collections call (`allOrNone: false`) that must succeed as a whole: the
    /// SaveResult of each record, in order.
    async fn collection(
        &self,
        method: reqwest::Method,
        path: &str,
        records: Vec<Value>,
        what: &str,
        report: &mut WriteReport,
    ) -> Result<Vec<Value>, SourceError> {
        let body = json!({ "allOrNone": false, "records": records });
        let answer = self.client.call(method, path, Some(&body), what).await?;
        report.writes += 1;
        if answer.status != 200 {
            return Err(classify(answer.status, &answer.body, what));
        }
        serde_json::from_slice(&answer.body)
            .map_err(|_| SourceError::Transient(format!("unreadable answer from Salesforce to {what}")))
    }

    /// Records a conversation adds: upserted on the key field (an External ID) with recado's
    /// key, so a call whose answer was lost, made again, updates the record it created.
    async fn create_records(
        &self,
        batch: &[(usize, &PendingWrite)],
        tz: chrono_tz::Tz,
        report: &mut WriteReport,
    ) -> Result<(), SourceError> {
        let object = &self.cfg.object;
        let fields = self.describe(object).await?;
        let key_field = &self.cfg.settings.key_field;
        let mut records: BTreeMap<String, Outgoing> = BTreeMap::new();
        for &(i, p) in batch {
            let WriteTarget::NewRecord(key) = &p.write.target else { continue };
            let Some(meta) = fields.get(&p.write.field.to_lowercase()).filter(|m| m.updateable) else {
                report.rejected.push((i, format!("{object} has no field '{}' recado can write", p.write.field)));
                continue;
            };
            match field_value(meta, &p.write.value, tz) {
                Ok(v) => {
                    let r = records.entry(key.0.clone()).or_insert_with(|| Outgoing {
                        object: object.clone(),
                        values: Map::new(),
                        indices: Vec::new(),
                    });
                    r.values.insert(meta.name.clone(), v);
                    r.indices.push(i);
                }
                Err(e) => report.rejected.push((i, e)),
            }
        }
        let keys: Vec<&String> = records.keys().collect();
        let what = format!("adding records to {object}");
        let path = format!("{}/composite/sobjects/{object}/{key_field}", self.client.data_path());
        for chunk in keys.chunks(RECORDS_PER_CALL).take(CALLS_PER_FLUSH) {
            let body_records: Vec<Value> = chunk
                .iter()
                .filter_map(|k| {
                    let mut r = records.get(*k)?.values.clone();
                    r.insert("attributes".into(), json!({ "type": object }));
                    r.insert(key_field.clone(), json!(k));
                    Some(Value::Object(r))
                })
                .collect();
            let results = self.collection(reqwest::Method::PATCH, &path, body_records, &what, report).await?;
            for (k, result) in chunk.iter().zip(results) {
                let Some(Outgoing { indices, .. }) = records.get(*k) else { continue };
                if result["success"] == true {
                    report.done.extend(indices);
                    continue;
                }
                let (code, message) = save_error(&result);
                match record_outcome(code, message) {
                    RecordOutcome::Retry => {}
                    RecordOutcome::Gone | RecordOutcome::Refused(_) => {
                        let reason = format!("Salesforce refused the new record: {code}: {}", one_line(message));
                        report.rejected.extend(indices.iter().map(|i| (*i, reason.clone())));
                    }
                }
            }
        }
        Ok(())
    }

    /// Values for fields of the records (and of the records their relationship paths lead to).
    /// Of the batch's taken fields (a staff reply recado sent), those whose field still holds
    /// the text recado took, read now: only those are emptied.
    async fn fields_still_holding(&self, batch: &[(usize, &PendingWrite)]) -> Result<HashSet<usize>, SourceError> {
        let mut asked: BTreeMap<(String, String), Vec<TakenField>> = BTreeMap::new();
        for &(i, p) in batch {
            let WriteTarget::Taken { text, .. } = &p.write.target else { continue };
            if let Destination::Record { object, id, field } = self.destination(&p.write.target, &p.write.field) {
                asked.entry((object, field)).or_default().push((i, id, text.clone()));
            }
        }
        let mut holding = HashSet::new();
        for ((object, field), items) in asked {
            let ids: Vec<String> = items.iter().map(|(_, id, _)| super::reader::soql_string(id)).collect();
            let soql = format!("SELECT Id, {field} FROM {object} WHERE Id IN ({})", ids.join(", "));
            let (found, _, _) =
                self.client.query(&soql, &format!("reading {object}.{field} before emptying it")).await?;
            for (i, id, text) in items {
                let now = found
                    .iter()
                    .find(|r| r["Id"].as_str().is_some_and(|f| f.get(..15) == id.get(..15)))
                    .and_then(|r| r.as_object())
                    .and_then(|r| r.iter().find(|(k, _)| k.eq_ignore_ascii_case(&field)).map(|(_, v)| v.clone()));
                if now.as_ref().and_then(Value::as_str).is_some_and(|v| v.trim() == text.trim()) {
                    holding.insert(i);
                }
            }
        }
        Ok(holding)
    }

    async fn write_records(
        &self,
        records_batch: &[(usize, &PendingWrite)],
        tz: chrono_tz::Tz,
        report: &mut WriteReport,
    ) -> Result<(), SourceError> {
        // Objects whose `describe` this flush fetched (others come from earlier flushes).
        let mut described_now: HashSet<String> = HashSet::new();
        // Per record: its object, field → value, and the batch indices it carries.
        let mut records: BTreeMap<String, Outgoing> = BTreeMap::new();
        let mut order: Vec<String> = Vec::new();
        let holding = self.fields_still_holding(records_batch).await?;
        for &(i, p) in records_batch {
            if let WriteTarget::Taken { .. } = &p.write.target {
                if !holding.contains(&i) {
                    // People wrote a newer text meanwhile: it stays for the next read.
                    debug!(source = %self.cfg.settings.id, target = %p.write.target, "the field holds a newer text: left for the next read");
                    report.done.push(i);
                    continue;
                }
            }
            let (object, id, name) = match self.destination(&p.write.target, &p.write.field) {
                Destination::Record { object, id, field } => (object, id, field),
                Destination::Later => continue,
                Destination::Nowhere => {
                    debug!(source = %self.cfg.settings.id, target = %p.write.target, "no record to write to");
                    report.dropped.push(i);
                    continue;
                }
                Destination::Refused(reason) => {
                    report.rejected.push((i, reason));
                    continue;
                }
            };
            if !self.fields.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&object) {
                described_now.insert(object.clone());
            }
            let fields = self.describe(&object).await?;
            let Some(meta) = fields.get(&name.to_lowercase()) else {
                report
                    .rejected
                    .push((i, format!("{object} has no field '{name}': create it or fix the source's configuration")));
                continue;
            };
            if !meta.updateable {
                report.rejected.push((
                    i,
                    format!("the field '{}' of {object} is not writable by the integration user", meta.name),
                ));
                continue;
            }
            let consent = self.cfg.settings.consent.as_ref().filter(|c| c.field.eq_ignore_ascii_case(&p.write.field));
            let value = match consent {
                // The consent on a checkbox: ticked when the value grants it ("BAJA" unticks).
                Some(c) if meta.kind == "boolean" => Ok(json!(c.is_granted(&p.write.value))),
                _ => field_value(meta, &p.write.value, tz),
            };
            let value = match value {
                Ok(v) => v,
                Err(e) => {
                    report.rejected.push((i, e));
                    continue;
                }
            };
            let entry = records.entry(id.clone()).or_insert_with(|| {
                order.push(id.clone());
                Outgoing { object: object.clone(), values: Map::new(), indices: Vec::new() }
            });
            // The queue is in order: a later value for the same field wins.
            entry.values.insert(meta.name.clone(), value);
            entry.indices.push(i);
        }
        // One object after the other: Salesforce splits a call into chunks at each change of
        // type, and refuses more than ten.
        order.sort_by_cached_key(|id| records.get(id).map(|r| (r.object != self.cfg.object, r.object.clone())));
        // A call Salesforce refuses as a whole (400: a value of a shape `describe` did not
        // foresee) is split in halves until the record it is about is alone, and that one
        // is reported: one bad record never holds back the others.
        let mut calls: Vec<&[String]> = order.chunks(RECORDS_PER_CALL).take(CALLS_PER_FLUSH).rev().collect();
        let mut made = 0;
        while let Some(chunk) = calls.pop() {
            if made == CALLS_PER_FLUSH * 2 {
                break;
            }
            made += 1;
            let body_records: Vec<Value> = chunk
                .iter()
                .filter_map(|id| {
                    let out = records.get(id)?;
                    let mut r = out.values.clone();
                    r.insert("attributes".into(), json!({ "type": out.object }));
                    r.insert("id".into(), json!(id));
                    Some(Value::Object(r))
                })
                .collect();
            let body = json!({ "allOrNone": false, "records": body_records });
            let path = format!("{}/composite/sobjects", self.client.data_path());
            let what = format!("writing back to {} (and the records it points to)", self.cfg.object);
            let answer = self.client.call(reqwest::Method::PATCH, &path, Some(&body), &what).await?;
            report.writes += 1;
            if answer.status == 400 {
                let refused = classify(answer.status, &answer.body, &what);
                // Most likely a field was deleted or changed since `describe`: describe
                // again on the next flush, where such values are refused one by one.
                let stale: Vec<&String> = chunk
                    .iter()
                    .filter_map(|id| records.get(id).map(|r| &r.object))
                    .filter(|o| !described_now.contains(*o))
                    .collect();
                if !stale.is_empty() {
                    let mut cache = self.fields.lock().unwrap_or_else(PoisonError::into_inner);
                    for object in stale {
                        cache.remove(object);
                    }
                    return Err(refused);
                }
                if let [id] = chunk {
                    let reason = refused.to_string();
                    if let Some(out) = records.get(id) {
                        report.rejected.extend(out.indices.iter().map(|i| (*i, reason.clone())));
                    }
                } else {
                    let (first, second) = chunk.split_at(chunk.len() / 2);
                    calls.push(second);
                    calls.push(first);
                }
                continue;
            }
            if answer.status != 200 {
                return Err(classify(answer.status, &answer.body, &what));
            }
            let results: Vec<Value> = serde_json::from_slice(&answer.body)
                .map_err(|_| SourceError::Transient(format!("unreadable answer from Salesforce to {what}")))?;
            for (n, id) in chunk.iter().enumerate() {
                let Some(Outgoing { indices, .. }) = records.get(id) else { continue };
                // Salesforce answers one result per record, in order; a missing one stays queued.
                let Some(result) = results.get(n) else { continue };
                if result["success"] == true {
                    report.done.extend(indices);
                    continue;
                }
                let (code, message) = save_error(result);
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
        Ok(())
    }
}

impl RecordWriter {
    /// Interaction log entries: one log record per entry, created once and updated after
    /// (upserted on the key field for a custom object; looked up by it, then updated or
    /// created, for a Task, whose fields cannot be external ids).
    async fn write_log(
        &self,
        batch: &[(usize, &PendingWrite)],
        tz: chrono_tz::Tz,
        report: &mut WriteReport,
    ) -> Result<(), SourceError> {
        let Some(log) = &self.cfg.interaction_log else {
            report.dropped.extend(batch.iter().map(|(i, _)| *i));
            return Ok(());
        };
        let fields = self.describe(&log.object).await?;
        // Per entry: its record, its neutral values, and the batch indices it carries.
        let mut entries: BTreeMap<String, LogEntry> = BTreeMap::new();
        for (i, p) in batch {
            let WriteTarget::Interaction { record, entry } = &p.write.target else { continue };
            let key = format!("{}:{entry}", self.cfg.settings.id);
            let e = entries.entry(key).or_insert_with(|| (record.0.clone(), HashMap::new(), Vec::new()));
            e.1.insert(p.write.field.clone(), p.write.value.clone());
            e.2.push(*i);
        }
        let mut bodies: Vec<(String, Map<String, Value>)> = Vec::new();
        for (key, (record, values, indices)) in &entries {
            let mut r = Map::new();
            let mut put = |field: &str, value: &str| -> Result<(), String> {
                let meta = fields.get(&field.to_lowercase()).ok_or_else(|| {
                    format!("{} has no field '{field}': create it or fix interaction_log", log.object)
                })?;
                r.insert(meta.name.clone(), field_value(meta, value, tz)?);
                Ok(())
            };
            // The key finds the entry again after a restart: cut, it would find nothing (or
            // another message's entry). Too long is a configuration problem, said as such.
            let key_fits = fields
                .get(&log.key_field.to_lowercase())
                .is_none_or(|meta| meta.length == 0 || key.chars().count() <= meta.length);
            let mut problem = if key_fits {
                put(&log.key_field, key).err()
            } else {
                Some(format!(
                    "{}.{} is shorter than recado's log keys ({} characters): make it a Text(255)",
                    log.object,
                    log.key_field,
                    key.chars().count()
                ))
            };
            for (neutral, field) in &log.fields {
                if let Some(v) = values.get(neutral) {
                    if let Err(e) = put(field, v) {
                        problem.get_or_insert(e);
                    }
                }
            }
            if let Some(lookup) = &log.record_lookup {
                if let Some(id) = self.id_of(&WriteTarget::Record(crate::domain::RecordKey(record.clone()))) {
                    r.insert(lookup.clone(), json!(id));
                }
            }
            if let (Some(lookup), Some(contact)) = (&log.contact_lookup, self.hint.contact_of(record)) {
                r.insert(lookup.clone(), json!(contact));
            }
            if log.is_task() {
                let get = |k: &str| values.get(k).map(String::as_str).unwrap_or("");
                let subject = log
                    .subject
                    .replace("{direction}", get(interaction::DIRECTION))
                    .replace("{rule}", get(interaction::RULE));
                r.insert("Subject".into(), json!(subject.trim()));
                r.insert("Status".into(), json!("Completed"));
                if let Some(day) = get(interaction::STATUS_AT).get(..10) {
                    r.insert("ActivityDate".into(), json!(day));
                }
            }
            if let Some(reason) = problem {
                report.rejected.extend(indices.iter().map(|i| (*i, reason.clone())));
                continue;
            }
            bodies.push((key.clone(), r));
        }
        let what = format!("logging interactions in {}", log.object);
        for chunk in bodies.chunks(RECORDS_PER_CALL).take(CALLS_PER_FLUSH) {
            let results = if log.is_task() {
                self.write_tasks(log, chunk, &what, report).await?
            } else {
                let records: Vec<Value> = chunk
                    .iter()
                    .map(|(_, r)| {
                        let mut r = r.clone();
                        r.insert("attributes".into(), json!({ "type": log.object }));
                        Value::Object(r)
                    })
                    .collect();
                let path = format!("{}/composite/sobjects/{}/{}", self.client.data_path(), log.object, log.key_field);
                let results = self.collection(reqwest::Method::PATCH, &path, records, &what, report).await?;
                chunk.iter().map(|(k, _)| k.clone()).zip(results).collect()
            };
            for (key, result) in results {
                let Some((_, _, indices)) = entries.get(&key) else { continue };
                if result["success"] == true {
                    if let Some(id) = result["id"].as_str().filter(|id| !id.is_empty()) {
                        self.log_ids.lock().unwrap_or_else(PoisonError::into_inner).insert(key.clone(), id.to_string());
                    }
                    report.done.extend(indices);
                    continue;
                }
                let (code, message) = save_error(&result);
                match record_outcome(code, message) {
                    RecordOutcome::Retry => {}
                    RecordOutcome::Gone => {
                        // An update: the log record itself was deleted by someone, so it is
                        // written afresh next time. A creation: a record it points to (the
                        // appointment, the Contact) is gone, and it never can be: dropped.
                        let known = self.log_ids.lock().unwrap_or_else(PoisonError::into_inner).remove(&key).is_some();
                        if !known && code != "ENTITY_IS_DELETED" {
                            // A reference Salesforce does not accept (no sharing access, a
                            // stale id): said once, not silently lost.
                            let reason = format!("Salesforce refused the log entry: {code}");
                            report.rejected.extend(indices.iter().map(|i| (*i, reason.clone())));
                        } else if !known {
                            warn!(source = %self.cfg.settings.id, code, "a log entry points at a record that is gone: dropped");
                            report.dropped.extend(indices);
                        }
                    }
                    RecordOutcome::Refused(reason) => {
                        report.rejected.extend(indices.iter().map(|i| (*i, reason.clone())));
                    }
                }
            }
        }
        Ok(())
    }

    /// Tasks: the ids of entries not known yet are looked up by the key field (a create whose
    /// answer was lost is found, not repeated), then known ones are updated and new ones
    /// created. Returns each entry's SaveResult.
    async fn write_tasks(
        &self,
        log: &super::config::InteractionLog,
        chunk: &[(String, Map<String, Value>)],
        what: &str,
        report: &mut WriteReport,
    ) -> Result<Vec<(String, Value)>, SourceError> {
        let unknown: Vec<&String> = {
            let mut ids = self.log_ids.lock().unwrap_or_else(PoisonError::into_inner);
            // Ids are kept for the statuses that follow a message; past this many they are
            // forgotten, and looked up again by key when needed.
            if ids.len() >= LOG_IDS_KEPT {
                ids.clear();
            }
            chunk.iter().map(|(k, _)| k).filter(|k| !ids.contains_key(*k)).collect()
        };
        // A GET carries the keys: 40 at a time stays far under Salesforce's 16 KB URI limit
        // (keys are about 100 characters, percent-encoded).
        for keys in unknown.chunks(40) {
            let list: Vec<String> = keys.iter().map(|k| super::reader::soql_string(k)).collect();
            let soql =
                format!("SELECT Id, {0} FROM {1} WHERE {0} IN ({2})", log.key_field, log.object, list.join(", "));
            let (found, requests, _) = self.client.query(&soql, what).await?;
            report.reads += requests;
            let mut ids = self.log_ids.lock().unwrap_or_else(PoisonError::into_inner);
            for r in found {
                // Salesforce names the field in its own casing, whatever the query said.
                let key = r
                    .as_object()
                    .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(&log.key_field)))
                    .and_then(|(_, v)| v.as_str());
                if let (Some(k), Some(id)) = (key, r["Id"].as_str()) {
                    ids.insert(k.to_string(), id.to_string());
                }
            }
        }
        let known: HashMap<String, String> = {
            let ids = self.log_ids.lock().unwrap_or_else(PoisonError::into_inner);
            chunk.iter().filter_map(|(k, _)| Some((k.clone(), ids.get(k)?.clone()))).collect()
        };
        let (updates, creates): (Vec<&LogBody>, Vec<&LogBody>) = chunk.iter().partition(|(k, _)| known.contains_key(k));
        let mut out = Vec::new();
        let path = format!("{}/composite/sobjects", self.client.data_path());
        for (method, group) in [(reqwest::Method::PATCH, updates), (reqwest::Method::POST, creates)] {
            if group.is_empty() {
                continue;
            }
            let records: Vec<Value> = group
                .iter()
                .map(|(k, r)| {
                    let mut r = r.clone();
                    r.insert("attributes".into(), json!({ "type": log.object }));
                    if let Some(id) = known.get(k) {
                        r.insert("id".into(), json!(id));
                    }
                    Value::Object(r)
                })
                .collect();
            let results = self.collection(method, &path, records, what, report).await?;
            out.extend(group.iter().map(|(k, _)| k.clone()).zip(results));
        }
        Ok(out)
    }
}

/// The first error of a failed SaveResult: its `statusCode` and message.
fn save_error(result: &Value) -> (&str, &str) {
    let error = &result["errors"][0];
    (error["statusCode"].as_str().unwrap_or("UNKNOWN"), error["message"].as_str().unwrap_or(""))
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
