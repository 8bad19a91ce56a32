//! Emulator of the Salesforce REST API, as strict as Salesforce where recado depends on it:
//!
//! * `POST /services/oauth2/token` — the JWT bearer flow (RS256 signature checked against the
//!   connected app's registered certificate, `iss`, `sub`, `aud`, `exp`) and the client
//!   credentials flow (form or HTTP Basic), answered as Salesforce answers (`instance_url`, no
//!   `expires_in`); OAuth errors as `{"error","error_description"}`.
//! * `GET /services/data/vNN.N/query?q=…` (and `queryAll`, with the Recycle Bin) and
//!   `…/query/{locator}-{offset}` — a real SOQL subset
//!   ([`soql`]) resolved against the schema ([`schema`]): relationship paths, typed `WHERE`
//!   literals (a quoted date-time is refused as Salesforce refuses it), `ORDER BY`, `LIMIT`;
//!   `MALFORMED_QUERY` / `INVALID_FIELD` / `INVALID_TYPE` in Salesforce's words; batches of
//!   `Sforce-Query-Options: batchSize` (200–2,000, default 2,000) with `nextRecordsUrl`. A
//!   cursor is a snapshot taken when the query ran: edits made while it is read are not in it.
//! * `PATCH|POST /composite/sobjects` and `PATCH /composite/sobjects/{object}/{externalId}`:
//!   update, create and upsert of up to 200 records (`EXCEEDED_ID_LIMIT` above) with one
//!   SaveResult each (`statusCode`: `ENTITY_IS_DELETED`, `MALFORMED_ID`,
//!   `INVALID_CROSS_REFERENCE_KEY`, `STRING_TOO_LONG`, `REQUIRED_FIELD_MISSING`,
//!   `INVALID_FIELD_FOR_INSERT_UPDATE`, injected `UNABLE_TO_LOCK_ROW` /
//!   `FIELD_CUSTOM_VALIDATION_EXCEPTION`), `allOrNone`; each write moves `SystemModstamp`, and
//!   every record of one call gets the same one, to the millisecond.
//! * `GET /sobjects/{object}/describe`, `…/deleted/?start&end` and `…/updated/?start&end` (seconds
//!   truncated, the window must span more than a minute, 15 and 30 days back at most,
//!   `earliestDateAvailable` once the delete log was purged), `GET /limits`.
//! * Every REST answer carries `Sforce-Limit-Info: api-usage=N/M` and a `Date` from the
//!   emulator's clock (which tests can move forward); above the daily allocation requests get
//!   403 `REQUEST_LIMIT_EXCEEDED`. Sessions expire (401 `INVALID_SESSION_ID`, an array body).
//! * Faults by request kind (status and error code, a session that expires, an answer that
//!   never comes), per-record errors, and an action run right after a request (an edit made
//!   while a query is being paged).

pub mod schema;
pub mod soql;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::{Path, Query as QueryParams, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use schema::{coerce, format_datetime, make_id, normalize_id, parse_datetime};
pub use schema::{FieldDef, FieldKind, ObjectDef};
use soql::{Cond, Literal, Op};

use super::SandboxState;

/// The connected app's consumer key the sandbox registers for the JWT flow.
pub const SANDBOX_CONSUMER_KEY: &str = "3MVG9sandbox.recado.consumer.key";
/// The integration user it is approved for.
pub const SANDBOX_USERNAME: &str = "integracion@salud.sandbox";
/// A client-credentials app.
pub const SANDBOX_CLIENT_ID: &str = "3MVG9sandbox.recado.client.credentials";
pub const SANDBOX_CLIENT_SECRET: &str = "sandbox-salesforce-client-secret";
/// The `aud` a production org expects in a JWT.
pub const PRODUCTION_AUDIENCE: &str = "https://login.salesforce.com";
/// Most records one sObject Collections call takes.
pub const COLLECTION_LIMIT: usize = 200;
/// Largest (and default) query batch.
pub const MAX_BATCH: usize = 2_000;

/// A kind of request, for faults, counts and actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SfKind {
    Token,
    Query,
    QueryMore,
    Composite,
    Deleted,
    Updated,
    Describe,
    Limits,
}

impl SfKind {
    pub const ALL: [SfKind; 8] = [
        SfKind::Token,
        SfKind::Query,
        SfKind::QueryMore,
        SfKind::Composite,
        SfKind::Deleted,
        SfKind::Updated,
        SfKind::Describe,
        SfKind::Limits,
    ];
}

/// A fault for the next `count` requests of `kind` (every kind when absent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SfFault {
    #[serde(default)]
    pub kind: Option<SfKind>,
    /// HTTP status of the error answer (ignored with `expire_session` or `timeout`).
    #[serde(default = "default_fault_status")]
    pub status: u16,
    #[serde(default)]
    pub error_code: String,
    #[serde(default)]
    pub message: String,
    /// Every session ends before this request is served (it gets 401 INVALID_SESSION_ID).
    #[serde(default)]
    pub expire_session: bool,
    /// The answer never comes.
    #[serde(default)]
    pub timeout: bool,
    /// The call is carried out, then its answer is lost (this error instead, or a hang with
    /// `timeout`): sObject Collections calls only.
    #[serde(default)]
    pub applied: bool,
    /// Only sObject Collections calls that carry this record fail (a value Salesforce
    /// cannot parse fails the whole call, whatever `allOrNone` says).
    #[serde(default)]
    pub record: Option<String>,
    #[serde(default = "one")]
    pub count: u32,
}

fn default_fault_status() -> u16 {
    500
}

fn one() -> u32 {
    1
}

/// A per-record error for the next `count` writes of record `id` (any record when absent).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecordFault {
    #[serde(default)]
    pub id: Option<String>,
    pub status_code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default = "one")]
    pub count: u32,
}

/// Something staff do, run right after the next request of a kind.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum SfAction {
    Update { object: String, id: String, fields: Map<String, Value> },
    Delete { object: String, id: String },
    Create { object: String, fields: Map<String, Value> },
}

#[derive(Debug, Clone)]
struct Rec {
    values: HashMap<String, Value>,
    deleted_at: Option<i64>,
    /// Deleted and emptied from the Recycle Bin: `queryAll` no longer sees it; the delete log
    /// still has it.
    emptied: bool,
}

struct Obj {
    def: ObjectDef,
    records: BTreeMap<String, Rec>,
}

struct Cursor {
    records: Arc<Vec<Value>>,
    batch: usize,
    total: usize,
}

struct Inner {
    objects: BTreeMap<String, Obj>,
    next_id: u64,
    /// Consumer key → approved usernames.
    jwt_apps: HashMap<String, Vec<String>>,
    client_apps: HashMap<String, String>,
    /// Access token → when it stops working (emulator milliseconds).
    sessions: HashMap<String, i64>,
    session_ms: i64,
    cursors: HashMap<String, Cursor>,
    next_cursor: u64,
    api_used: u64,
    /// Calls refused with `REQUEST_LIMIT_EXCEEDED`.
    limit_refusals: u64,
    api_max: u64,
    faults: VecDeque<SfFault>,
    record_faults: VecDeque<RecordFault>,
    after: Vec<(SfKind, SfAction)>,
    counts: HashMap<SfKind, u64>,
    /// Every SOQL text run, in order.
    queries: Vec<String>,
    /// Added to the wall clock: tests move the emulator's time forward.
    offset_ms: i64,
    /// Deletions before this were purged from the delete log.
    purged_before: i64,
    time_zone: String,
    org_id: String,
}

/// The emulator's state.
pub struct SalesforceState {
    inner: Mutex<Inner>,
}

impl Default for SalesforceState {
    fn default() -> Self {
        Self::new()
    }
}

/// A write refused for the whole request (HTTP 400 with an error array).
struct RequestError {
    code: &'static str,
    message: String,
}

impl SalesforceState {
    pub fn new() -> Self {
        let mut objects = BTreeMap::new();
        for def in schema::standard_objects() {
            objects.insert(def.name.to_lowercase(), Obj { def, records: BTreeMap::new() });
        }
        let mut jwt_apps = HashMap::new();
        jwt_apps.insert(SANDBOX_CONSUMER_KEY.to_string(), vec![SANDBOX_USERNAME.to_string()]);
        let mut client_apps = HashMap::new();
        client_apps.insert(SANDBOX_CLIENT_ID.to_string(), SANDBOX_CLIENT_SECRET.to_string());
        let state = Self {
            inner: Mutex::new(Inner {
                objects,
                next_id: 1,
                jwt_apps,
                client_apps,
                sessions: HashMap::new(),
                session_ms: 2 * 3600 * 1000,
                cursors: HashMap::new(),
                next_cursor: 1,
                api_used: 0,
                limit_refusals: 0,
                api_max: 15_000,
                faults: VecDeque::new(),
                record_faults: VecDeque::new(),
                after: Vec::new(),
                counts: HashMap::new(),
                queries: Vec::new(),
                offset_ms: 0,
                purged_before: 0,
                time_zone: "America/Santiago".into(),
                org_id: String::new(),
            }),
        };
        {
            let mut g = state.lock();
            let now = g.now_ms();
            g.purged_before = now - 15 * 86_400_000;
            let org = g.insert(
                "Organization",
                HashMap::from([
                    ("Name".to_string(), json!("Programa Salud Familiar")),
                    ("TimeZoneSidKey".to_string(), json!("America/Santiago")),
                    ("IsSandbox".to_string(), json!(false)),
                ]),
                now,
            );
            g.org_id = org;
        }
        state
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (or replaces) an object; the system fields are added to `def`.
    pub fn define_object(&self, def: ObjectDef) {
        let def = ObjectDef { activities: def.activities, ..ObjectDef::new(&def.name, &def.prefix, def.fields) };
        self.lock().objects.insert(def.name.to_lowercase(), Obj { def, records: BTreeMap::new() });
    }

    /// Adds a field to an object (a custom field on a standard object, say); false when the
    /// object does not exist.
    pub fn add_field(&self, object: &str, field: FieldDef) -> bool {
        let mut g = self.lock();
        let Some(obj) = g.objects.get_mut(&object.to_lowercase()) else { return false };
        obj.def.fields.retain(|f| !f.name.eq_ignore_ascii_case(&field.name));
        obj.def.fields.push(field);
        true
    }

    /// Ticks or unticks *Allow Activities* on an object.
    pub fn set_activities(&self, object: &str, on: bool) -> bool {
        let mut g = self.lock();
        let Some(obj) = g.objects.get_mut(&object.to_lowercase()) else { return false };
        obj.def.activities = on;
        true
    }

    /// Deletes a field from an object (an administrator removing it while recado runs).
    pub fn remove_field(&self, object: &str, field: &str) -> bool {
        let mut g = self.lock();
        let Some(obj) = g.objects.get_mut(&object.to_lowercase()) else { return false };
        let before = obj.def.fields.len();
        obj.def.fields.retain(|f| !f.name.eq_ignore_ascii_case(field));
        for r in obj.records.values_mut() {
            r.values.retain(|k, _| !k.eq_ignore_ascii_case(field));
        }
        obj.def.fields.len() < before
    }

    /// The org's time zone (`TimeZoneSidKey` of `Organization`).
    pub fn set_time_zone(&self, tz: &str) {
        let mut g = self.lock();
        g.time_zone = tz.into();
        let org = g.org_id.clone();
        if let Some(rec) = g.objects.get_mut("organization").and_then(|o| o.records.get_mut(&org)) {
            rec.values.insert("TimeZoneSidKey".into(), json!(tz));
        }
    }

    /// Records created as staff would (one save: they share one `SystemModstamp`).
    pub fn create_many(&self, object: &str, records: Vec<Map<String, Value>>) -> Result<Vec<String>, String> {
        let mut g = self.lock();
        let now = g.now_ms();
        let mut ids = Vec::new();
        for fields in records {
            ids.push(g.staff_create(object, fields, now)?);
        }
        Ok(ids)
    }

    pub fn create(&self, object: &str, fields: Map<String, Value>) -> Result<String, String> {
        Ok(self.create_many(object, vec![fields])?.remove(0))
    }

    /// A record deleted and emptied from the Recycle Bin at once (a hard delete): only the
    /// delete log (`getDeleted`) knows it.
    pub fn hard_delete(&self, object: &str, id: &str) -> bool {
        let mut g = self.lock();
        let now = g.now_ms();
        if !g.staff_delete(object, id, now) {
            return false;
        }
        let rec = normalize_id(id).and_then(|id| g.objects.get_mut(&object.to_lowercase())?.records.get_mut(&id));
        if let Some(rec) = rec {
            rec.emptied = true;
        }
        true
    }

    /// An edit made as staff would.
    pub fn update(&self, object: &str, id: &str, fields: Map<String, Value>) -> Result<(), String> {
        let mut g = self.lock();
        let now = g.now_ms();
        g.staff_update(object, id, fields, now)
    }

    /// A record deleted as staff would (it goes to the recycle bin and the delete log).
    pub fn delete(&self, object: &str, id: &str) -> bool {
        let mut g = self.lock();
        let now = g.now_ms();
        g.staff_delete(object, id, now)
    }

    /// A live record's fields (none for a deleted one).
    pub fn get(&self, object: &str, id: &str) -> Option<Map<String, Value>> {
        let g = self.lock();
        let id = normalize_id(id)?;
        let rec = g.objects.get(&object.to_lowercase())?.records.get(&id)?;
        if rec.deleted_at.is_some() {
            return None;
        }
        Some(rec.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    /// Every live record of an object.
    pub fn records(&self, object: &str) -> Vec<Map<String, Value>> {
        let g = self.lock();
        g.objects
            .get(&object.to_lowercase())
            .map(|o| {
                o.records
                    .values()
                    .filter(|r| r.deleted_at.is_none())
                    .map(|r| r.values.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Moves the emulator's clock forward.
    pub fn advance(&self, by: Duration) {
        self.lock().offset_ms += i64::try_from(by.as_millis()).unwrap_or(i64::MAX / 4);
    }

    /// The emulator's clock, in milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.lock().now_ms()
    }

    /// API requests used in the rolling day, and the allocation.
    pub fn usage(&self) -> (u64, u64) {
        let g = self.lock();
        (g.api_used, g.api_max)
    }

    pub fn set_usage(&self, used: u64, max: u64) {
        let mut g = self.lock();
        g.api_used = used;
        g.api_max = max;
    }

    /// How long a session lasts.
    pub fn set_session_lifetime(&self, d: Duration) {
        self.lock().session_ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
    }

    /// Forgets deletions older than `before` (the delete log was purged).
    pub fn purge_delete_log(&self, before_ms: i64) {
        self.lock().purged_before = before_ms;
    }

    pub fn inject(&self, f: SfFault) {
        self.lock().faults.push_back(f);
    }

    pub fn inject_record_error(&self, f: RecordFault) {
        self.lock().record_faults.push_back(f);
    }

    pub fn clear_faults(&self) {
        let mut g = self.lock();
        g.faults.clear();
        g.record_faults.clear();
    }

    /// Runs `action` right after the next request of `kind` is answered.
    pub fn after_next(&self, kind: SfKind, action: SfAction) {
        self.lock().after.push((kind, action));
    }

    /// Requests served, by kind.
    pub fn count(&self, kind: SfKind) -> u64 {
        self.lock().counts.get(&kind).copied().unwrap_or(0)
    }

    /// Requests served, every kind (refused ones too).
    pub fn total_requests(&self) -> u64 {
        self.lock().counts.values().sum()
    }

    /// Calls refused because the daily allocation was spent.
    pub fn limit_refusals(&self) -> u64 {
        self.lock().limit_refusals
    }

    pub fn counts(&self) -> BTreeMap<String, u64> {
        let g = self.lock();
        SfKind::ALL
            .iter()
            .map(|k| {
                (
                    serde_json::to_value(k).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
                    g.counts.get(k).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Every SOQL text run so far.
    pub fn queries(&self) -> Vec<String> {
        self.lock().queries.clone()
    }
}

impl Inner {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.offset_ms
    }

    fn tz(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }

    fn object(&self, name: &str) -> Option<&Obj> {
        self.objects.get(&name.to_lowercase())
    }

    fn object_of_id(&self, id: &str) -> Option<&Obj> {
        self.objects.values().find(|o| id.starts_with(&o.def.prefix))
    }

    fn insert(&mut self, object: &str, mut values: HashMap<String, Value>, now: i64) -> String {
        let n = self.next_id;
        self.next_id += 1;
        let Some(obj) = self.objects.get_mut(&object.to_lowercase()) else { return String::new() };
        let id = make_id(&obj.def.prefix, n);
        let stamp = json!(format_datetime(whole_second(now)));
        values.insert("Id".into(), json!(id));
        values.insert("IsDeleted".into(), json!(false));
        values.insert("CreatedDate".into(), stamp.clone());
        values.insert("LastModifiedDate".into(), stamp.clone());
        values.insert("SystemModstamp".into(), stamp);
        if obj.def.name == "Contact" {
            let name = [values.get("FirstName"), values.get("LastName")]
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" ");
            values.insert("Name".into(), json!(name));
        }
        obj.records.insert(id.clone(), Rec { values, deleted_at: None, emptied: false });
        id
    }

    /// Checks and converts fields for a write; `Err` is a request-level refusal.
    fn convert(
        &self,
        object: &str,
        fields: &Map<String, Value>,
    ) -> Result<(HashMap<String, Value>, Vec<String>), RequestError> {
        let Some(obj) = self.object(object) else {
            return Err(RequestError { code: "NOT_FOUND", message: "The requested resource does not exist".into() });
        };
        let mut out = HashMap::new();
        let mut read_only = Vec::new();
        for (k, v) in fields {
            if k == "attributes" || k.eq_ignore_ascii_case("id") {
                continue;
            }
            let Some(def) = obj.def.field(k) else {
                return Err(RequestError {
                    code: "INVALID_FIELD",
                    message: format!("No such column '{k}' on sobject of type {}", obj.def.name),
                });
            };
            if !def.updateable {
                read_only.push(def.name.clone());
                continue;
            }
            let value = coerce(def.kind, v).map_err(|e| RequestError { code: "JSON_PARSER_ERROR", message: e })?;
            out.insert(def.name.clone(), value);
        }
        Ok((out, read_only))
    }

    /// Per-record checks: lengths, references.
    fn check_values(&self, object: &str, values: &HashMap<String, Value>) -> Result<(), (String, String, Vec<String>)> {
        let Some(obj) = self.object(object) else { return Ok(()) };
        for (name, v) in values {
            let Some(def) = obj.def.field(name) else { continue };
            if let Some(s) = v.as_str() {
                if def.kind.is_text() && s.chars().count() > def.length {
                    let shown: String = s.chars().take(20).collect();
                    return Err((
                        "STRING_TOO_LONG".into(),
                        format!("{}: data value too large: {shown}... (max length={})", def.name, def.length),
                        vec![def.name.clone()],
                    ));
                }
                if def.kind == FieldKind::Reference && !s.is_empty() {
                    let target_ok = normalize_id(s).and_then(|id| {
                        let target = self.object_of_id(&id)?;
                        let wanted = def.reference_to.as_deref().unwrap_or("*");
                        let live = target.records.get(&id).is_some_and(|r| r.deleted_at.is_none());
                        // A polymorphic `WhatId` takes objects with Allow Activities only.
                        let fits = if wanted == "*" {
                            target.def.activities
                        } else {
                            target.def.name.eq_ignore_ascii_case(wanted)
                        };
                        (live && fits).then_some(())
                    });
                    let deleted = normalize_id(s).is_some_and(|id| {
                        self.object_of_id(&id).and_then(|o| o.records.get(&id)).is_some_and(|r| r.deleted_at.is_some())
                    });
                    if deleted {
                        return Err(("ENTITY_IS_DELETED".into(), "entity is deleted".into(), vec![def.name.clone()]));
                    }
                    if target_ok.is_none() {
                        return Err((
                            "FIELD_INTEGRITY_EXCEPTION".into(),
                            format!("{}: id value of incorrect type: {s}", def.name),
                            vec![def.name.clone()],
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn staff_create(&mut self, object: &str, fields: Map<String, Value>, now: i64) -> Result<String, String> {
        let (values, _) = self.convert(object, &fields).map_err(|e| e.message)?;
        self.check_values(object, &values).map_err(|e| e.1)?;
        Ok(self.insert(object, values, now))
    }

    fn staff_update(&mut self, object: &str, id: &str, fields: Map<String, Value>, now: i64) -> Result<(), String> {
        let (values, _) = self.convert(object, &fields).map_err(|e| e.message)?;
        self.check_values(object, &values).map_err(|e| e.1)?;
        let id = normalize_id(id).ok_or("malformed id")?;
        let rec = self
            .objects
            .get_mut(&object.to_lowercase())
            .and_then(|o| o.records.get_mut(&id))
            .filter(|r| r.deleted_at.is_none())
            .ok_or("no such record")?;
        rec.values.extend(values);
        touch(rec, now);
        Ok(())
    }

    fn staff_delete(&mut self, object: &str, id: &str, now: i64) -> bool {
        let Some(id) = normalize_id(id) else { return false };
        let Some(rec) = self.objects.get_mut(&object.to_lowercase()).and_then(|o| o.records.get_mut(&id)) else {
            return false;
        };
        if rec.deleted_at.is_some() {
            return false;
        }
        rec.deleted_at = Some(now);
        rec.values.insert("IsDeleted".into(), json!(true));
        touch(rec, now);
        // Its activities go with it, as in Salesforce.
        if let Some(tasks) = self.objects.get_mut("task") {
            for task in tasks.records.values_mut().filter(|t| t.deleted_at.is_none()) {
                if task.values.get("WhatId").and_then(Value::as_str) == Some(id.as_str()) {
                    task.deleted_at = Some(now);
                    task.values.insert("IsDeleted".into(), json!(true));
                    touch(task, now);
                }
            }
        }
        true
    }

    fn run_action(&mut self, action: SfAction) {
        let now = self.now_ms();
        let _ = match action {
            SfAction::Update { object, id, fields } => self.staff_update(&object, &id, fields, now),
            SfAction::Delete { object, id } => {
                self.staff_delete(&object, &id, now);
                Ok(())
            }
            SfAction::Create { object, fields } => self.staff_create(&object, fields, now).map(|_| ()),
        };
    }

    fn take_fault(&mut self, kind: SfKind) -> Option<SfFault> {
        super::take_fault(
            &mut self.faults,
            |f| f.record.is_none() && !f.applied && f.kind.is_none_or(|k| k == kind),
            |f| &mut f.count,
        )
    }

    /// A fault that lets a collection call be carried out and then loses its answer.
    fn take_lost_answer(&mut self) -> Option<SfFault> {
        super::take_fault(
            &mut self.faults,
            |f| f.applied && f.kind.is_none_or(|k| k == SfKind::Composite),
            |f| &mut f.count,
        )
    }

    /// A fault for a collection call that carries one of `ids`.
    fn take_call_fault(&mut self, ids: &[String]) -> Option<SfFault> {
        super::take_fault(
            &mut self.faults,
            |f| f.record.as_deref().and_then(normalize_id).is_some_and(|r| ids.contains(&r)),
            |f| &mut f.count,
        )
    }

    fn take_record_fault(&mut self, id: &str) -> Option<RecordFault> {
        super::take_fault(
            &mut self.record_faults,
            |f| f.id.as_deref().is_none_or(|x| normalize_id(x).as_deref() == Some(id)),
            |f| &mut f.count,
        )
    }
}

/// Salesforce keeps date-times to the second (`…:07.000+0000`): two saves within one second
/// carry the same `SystemModstamp`.
fn whole_second(ms: i64) -> i64 {
    ms - ms.rem_euclid(1000)
}

fn touch(rec: &mut Rec, now: i64) {
    let stamp = json!(format_datetime(whole_second(now)));
    rec.values.insert("LastModifiedDate".into(), stamp.clone());
    rec.values.insert("SystemModstamp".into(), stamp);
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Salesforce's error array.
fn error_array(status: StatusCode, code: &str, message: &str) -> (StatusCode, Value) {
    (status, json!([{ "message": message, "errorCode": code }]))
}

/// Answers a REST request: the `Date` of the emulator's clock and the usage header.
fn reply(g: &Inner, status: StatusCode, body: Value) -> Response {
    let mut r = (status, axum::Json(body)).into_response();
    let date = chrono::DateTime::from_timestamp_millis(g.now_ms())
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&date) {
        r.headers_mut().insert("date", v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("api-usage={}/{}", g.api_used, g.api_max)) {
        r.headers_mut().insert("sforce-limit-info", v);
    }
    r
}

/// What every REST handler does first: count, faults, version, session, allocation. `Ok`
/// hands the handler the locked state.
enum Gate<'a> {
    Pass(std::sync::MutexGuard<'a, Inner>),
    Answer(Response),
    Hang,
}

fn gate<'a>(sf: &'a SalesforceState, kind: SfKind, version: &str, headers: &HeaderMap) -> Gate<'a> {
    let mut g = sf.lock();
    *g.counts.entry(kind).or_default() += 1;
    if !valid_version(version) {
        let (s, b) = error_array(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist");
        return Gate::Answer(reply(&g, s, b));
    }
    let fault = g.take_fault(kind);
    if let Some(f) = &fault {
        if f.timeout {
            return Gate::Hang;
        }
        if f.expire_session {
            g.sessions.clear();
        }
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("OAuth ")))
        .unwrap_or("")
        .to_string();
    let now = g.now_ms();
    if g.sessions.get(&token).is_none_or(|until| *until <= now) {
        let (s, b) = error_array(StatusCode::UNAUTHORIZED, "INVALID_SESSION_ID", "Session expired or invalid");
        return Gate::Answer((s, axum::Json(b)).into_response());
    }
    if let Some(f) = fault.filter(|f| !f.expire_session) {
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (s, b) = error_array(status, &f.error_code, &f.message);
        return Gate::Answer(reply(&g, s, b));
    }
    if g.api_used >= g.api_max {
        g.limit_refusals += 1;
        let (s, b) = error_array(StatusCode::FORBIDDEN, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.");
        return Gate::Answer(reply(&g, s, b));
    }
    g.api_used += 1;
    Gate::Pass(g)
}

fn valid_version(v: &str) -> bool {
    v.strip_prefix('v')
        .and_then(|n| n.split_once('.'))
        .is_some_and(|(a, b)| a.parse::<u32>().is_ok_and(|a| (20..=99).contains(&a)) && b == "0")
}

async fn hang() -> Response {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    StatusCode::GATEWAY_TIMEOUT.into_response()
}

fn after(sf: &SalesforceState, kind: SfKind) {
    let mut g = sf.lock();
    let due: Vec<SfAction> = {
        let mut keep = Vec::new();
        let mut run = Vec::new();
        for (k, a) in g.after.drain(..) {
            if k == kind {
                run.push(a);
            } else {
                keep.push((k, a));
            }
        }
        g.after = keep;
        run
    };
    for a in due {
        g.run_action(a);
    }
}

pub struct TokenForm {
    grant_type: Option<String>,
    assertion: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({ "error": error, "error_description": description }))).into_response()
}

/// `POST /services/oauth2/token`.
pub async fn token(State(st): State<SandboxState>, headers: HeaderMap, body: String) -> Response {
    let sf = &st.salesforce;
    let fault = {
        let mut g = sf.lock();
        *g.counts.entry(SfKind::Token).or_default() += 1;
        g.take_fault(SfKind::Token)
    };
    if let Some(f) = fault {
        if f.timeout {
            return hang().await;
        }
        let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return oauth_error(status, &f.error_code, &f.message);
    }
    let form = token_form(&body);
    let base = format!("{}/salesforce", st.base_url());
    let mut g = sf.lock();
    let now = g.now_ms();
    match form.grant_type.as_deref() {
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let Some(assertion) = form.assertion else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "invalid assertion");
            };
            // The assertion's `exp` is checked against the wall clock: moving the org's clock
            // forward (tests do) must not make the daemon's fresh assertions look expired.
            if let Err((error, description)) = check_jwt(&g, &assertion, chrono::Utc::now().timestamp_millis()) {
                return oauth_error(StatusCode::BAD_REQUEST, error, description);
            }
        }
        Some("client_credentials") => {
            let (id, secret) = match (form.client_id, form.client_secret) {
                (Some(i), Some(s)) => (i, s),
                _ => match basic_credentials(&headers) {
                    Some(pair) => pair,
                    None => {
                        return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "invalid client credentials")
                    }
                },
            };
            if g.client_apps.get(&id) != Some(&secret) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_client", "invalid client credentials");
            }
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant type not supported"),
    }
    let token = format!("{}!AR{}", &g.org_id[..15], hex::encode(rand::random::<[u8; 24]>()));
    let until = now + g.session_ms;
    g.sessions.insert(token.clone(), until);
    let signature = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    axum::Json(json!({
        "access_token": token,
        "signature": signature,
        "scope": "api",
        "instance_url": base,
        "id": format!("{base}/id/{}/005000000000001AAA", g.org_id),
        "token_type": "Bearer",
        "issued_at": now.to_string(),
    }))
    .into_response()
}

fn token_form(body: &str) -> TokenForm {
    let pairs = crate::providers::form_pairs(body);
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    TokenForm {
        grant_type: get("grant_type"),
        assertion: get("assertion"),
        client_id: get("client_id"),
        client_secret: get("client_secret"),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get("authorization")?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(v.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (a, b) = text.split_once(':')?;
    Some((a.to_string(), b.to_string()))
}

/// The JWT bearer checks Salesforce makes, with its error strings.
fn check_jwt(g: &Inner, assertion: &str, now_ms: i64) -> Result<(), (&'static str, &'static str)> {
    let invalid = ("invalid_grant", "invalid assertion");
    let parts: Vec<&str> = assertion.split('.').collect();
    if parts.len() != 3 {
        return Err(invalid);
    }
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
    let (Ok(header), Ok(claims), Ok(sig)) = (b64(parts[0]), b64(parts[1]), b64(parts[2])) else {
        return Err(invalid);
    };
    let (Ok(header), Ok(claims)) = (serde_json::from_slice::<Value>(&header), serde_json::from_slice::<Value>(&claims))
    else {
        return Err(invalid);
    };
    if header["alg"] != "RS256" {
        return Err(("invalid_grant", "invalid assertion: unsupported algorithm"));
    }
    let iss = claims["iss"].as_str().unwrap_or_default();
    let Some(users) = g.jwt_apps.get(iss) else {
        return Err(("invalid_client_id", "client identifier invalid"));
    };
    let key = base64::engine::general_purpose::STANDARD.decode(super::keys::PUBLIC_KEY_DER_B64).unwrap_or_default();
    let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key);
    if pk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).is_err() {
        return Err(invalid);
    }
    if claims["aud"].as_str() != Some(PRODUCTION_AUDIENCE) {
        return Err(("invalid_grant", "audience is invalid"));
    }
    // simple-salesforce sends `exp` as a string: Salesforce takes both.
    let exp = claims["exp"].as_i64().or_else(|| claims["exp"].as_str().and_then(|s| s.parse().ok()));
    let now = now_ms / 1000;
    match exp {
        Some(e) if e > now && e <= now + 300 => {}
        _ => return Err(("invalid_grant", "expired authorization code")),
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    if !users.iter().any(|u| u == sub) {
        return Err(("invalid_grant", "user hasn't approved this consumer"));
    }
    Ok(())
}

/// `GET /services/data/{version}/query?q=`.
pub async fn query(
    State(st): State<SandboxState>,
    Path(version): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    query_either(&st, &version, &headers, raw, false).await
}

/// A query, or a queryAll (`all`): the Recycle Bin too.
async fn query_either(
    st: &SandboxState,
    version: &str,
    headers: &HeaderMap,
    raw: Option<String>,
    all: bool,
) -> Response {
    // Salesforce refuses a request line longer than 16,384 bytes (URI and headers).
    if raw.as_ref().is_some_and(|q| q.len() + version.len() + 40 > MAX_URI_BYTES) {
        return (StatusCode::URI_TOO_LONG, "414 Request-URI Too Long").into_response();
    }
    or_hang(query_now(st, version, headers, raw, all)).await
}

/// `GET /services/data/{version}/queryAll?q=`: as `query`, with the records in the Recycle Bin
/// (`IsDeleted = true`) too.
pub async fn query_all(
    State(st): State<SandboxState>,
    Path(version): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    query_either(&st, &version, &headers, raw, true).await
}

/// The longest request URI Salesforce accepts.
pub const MAX_URI_BYTES: usize = 16_384;

/// Marks an answer that a fault says never comes.
#[derive(Clone, Copy)]
struct Hang;

fn hang_marker() -> Response {
    let mut r = StatusCode::GATEWAY_TIMEOUT.into_response();
    r.extensions_mut().insert(Hang);
    r
}

/// The answer, unless it is marked as one that never comes. (Handlers compute answers in
/// plain functions so the state's lock is never held across an await.)
async fn or_hang(answer: Response) -> Response {
    if answer.extensions().get::<Hang>().is_some() {
        return hang().await;
    }
    answer
}

fn query_now(st: &SandboxState, version: &str, headers: &HeaderMap, raw: Option<String>, all: bool) -> Response {
    let (version, headers) = (version.to_string(), headers.clone());
    let sf = &st.salesforce;
    let mut g = match gate(sf, SfKind::Query, &version, &headers) {
        Gate::Pass(g) => g,
        Gate::Answer(r) => return r,
        Gate::Hang => return hang_marker(),
    };
    let pairs = crate::providers::form_pairs(&raw.unwrap_or_default());
    let q = pairs.iter().find(|(k, _)| k == "q").map(|(_, v)| v.clone()).unwrap_or_default();
    g.queries.push(q.clone());
    let batch = headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').find_map(|p| p.trim().strip_prefix("batchSize=")?.parse::<usize>().ok()))
        .filter(|n| (200..=MAX_BATCH).contains(n))
        .unwrap_or(MAX_BATCH);
    let answer = match run_query(&g, &q, &version, all) {
        Ok(records) => {
            let total = records.len();
            let records = Arc::new(records);
            let locator = format!("01gSB{:010}", g.next_cursor);
            g.next_cursor += 1;
            let body = page(&records, 0, batch, total, &locator, &version);
            if total > batch {
                g.cursors.insert(locator, Cursor { records, batch, total });
            }
            reply(&g, StatusCode::OK, body)
        }
        Err(e) => {
            let (s, b) = error_array(StatusCode::BAD_REQUEST, e.code, &e.message);
            reply(&g, s, b)
        }
    };
    drop(g);
    after(sf, SfKind::Query);
    answer
}

/// `GET /services/data/{version}/query/{locator}-{offset}`.
pub async fn query_more(
    State(st): State<SandboxState>,
    Path((version, next)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    or_hang(query_more_now(&st, &version, &next, &headers)).await
}

fn query_more_now(st: &SandboxState, version: &str, next: &str, headers: &HeaderMap) -> Response {
    let sf = &st.salesforce;
    let g = match gate(sf, SfKind::QueryMore, version, headers) {
        Gate::Pass(g) => g,
        Gate::Answer(r) => return r,
        Gate::Hang => return hang_marker(),
    };
    let parsed = next.rsplit_once('-').and_then(|(l, o)| Some((l.to_string(), o.parse::<usize>().ok()?)));
    let answer = match parsed.and_then(|(l, o)| g.cursors.get(&l).map(|c| (l.clone(), o, c))) {
        Some((locator, offset, c)) if offset < c.total && offset % c.batch == 0 => {
            let body = page(&c.records, offset, c.batch, c.total, &locator, version);
            reply(&g, StatusCode::OK, body)
        }
        _ => {
            let (s, b) = error_array(StatusCode::BAD_REQUEST, "INVALID_QUERY_LOCATOR", "invalid query locator");
            reply(&g, s, b)
        }
    };
    drop(g);
    after(sf, SfKind::QueryMore);
    answer
}

fn page(records: &[Value], offset: usize, batch: usize, total: usize, locator: &str, version: &str) -> Value {
    let end = (offset + batch).min(total);
    let slice = records.get(offset..end).unwrap_or_default();
    let mut body = json!({ "totalSize": total, "done": end >= total, "records": slice });
    if end < total {
        body["nextRecordsUrl"] = json!(format!("/services/data/{version}/query/{locator}-{end}"));
    }
    body
}

/// A selected path resolved against the schema.
struct Resolved {
    /// Reference fields followed, with the relationship name each one is shown under.
    hops: Vec<(String, String)>,
    field: String,
    kind: FieldKind,
    filterable: bool,
}

fn resolve(g: &Inner, object: &ObjectDef, path: &str, q: &str, column: usize) -> Result<Resolved, soql::QueryError> {
    let parts: Vec<&str> = path.split('.').collect();
    let mut current = object.clone();
    let mut hops = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            let Some(def) = current.field(part) else {
                return Err(soql::invalid_field(
                    q,
                    column,
                    &format!(
                        "No such column '{part}' on entity '{}'. If you are attempting to use a custom field, be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names.",
                        current.name
                    ),
                ));
            };
            return Ok(Resolved { hops, field: def.name.clone(), kind: def.kind, filterable: def.filterable() });
        }
        let Some(rel) = current.relationship(part) else {
            return Err(soql::invalid_field(
                q,
                column,
                &format!(
                    "Didn't understand relationship '{part}' in field path. If you are attempting to use a custom relationship, be sure to append the '__r' after the custom relationship name. Please reference your WSDL or the describe call for the appropriate names."
                ),
            ));
        };
        let target = rel.reference_to.clone().unwrap_or_default();
        let Some(next) = g.object(&target).map(|o| o.def.clone()) else {
            // Polymorphic references (`What`) only offer the fields every target has.
            let rel_name = rel.relationship_name().unwrap_or_default();
            hops.push((rel.name.clone(), rel_name));
            current = ObjectDef::new("Name", "000", vec![FieldDef::new("Name", FieldKind::String)]);
            continue;
        };
        hops.push((rel.name.clone(), rel.relationship_name().unwrap_or_default()));
        current = next;
    }
    Err(soql::malformed(q, column, "unexpected token: ."))
}

/// A record's value at a resolved path (`None` when a hop is empty).
fn value_at<'a>(g: &'a Inner, rec: &'a Rec, r: &Resolved) -> Option<&'a Value> {
    let mut current = rec;
    for (field, _) in &r.hops {
        let id = current.values.get(field)?.as_str()?;
        let obj = g.object_of_id(id)?;
        current = obj.records.get(id).filter(|x| x.deleted_at.is_none())?;
    }
    current.values.get(&r.field).filter(|v| !v.is_null())
}

fn run_query(g: &Inner, q: &str, version: &str, all: bool) -> Result<Vec<Value>, soql::QueryError> {
    let parsed = soql::parse(q)?;
    let Some(obj) = g.object(&parsed.object) else {
        let mut e = soql::invalid_field(
            q,
            parsed.object_column,
            &format!(
                "sObject type '{}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name. Please reference your WSDL or the describe call for the appropriate names.",
                parsed.object
            ),
        );
        e.code = "INVALID_TYPE";
        return Err(e);
    };
    let mut selected = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (name, column) in &parsed.fields {
        if !seen.insert(name.to_lowercase()) {
            return Err(soql::malformed(q, *column, &format!("duplicate field selected: {name}")));
        }
        selected.push(resolve(g, &obj.def, name, q, *column)?);
    }
    let filter = match &parsed.filter {
        Some(c) => Some(check_cond(g, &obj.def, c, q)?),
        None => None,
    };
    let mut order = Vec::new();
    for o in &parsed.order {
        order.push((resolve(g, &obj.def, &o.field, q, 1)?, o.descending, o.nulls_last));
    }
    let tz = g.tz();
    let today = chrono::Utc::now().with_timezone(&tz).date_naive() + chrono::Duration::milliseconds(g.offset_ms);
    // A deleted record stays in the Recycle Bin (seen by queryAll) until it is purged.
    let mut rows: Vec<&Rec> = obj
        .records
        .values()
        .filter(|r| r.deleted_at.is_none_or(|t| all && !r.emptied && t >= g.purged_before))
        .filter(|r| filter.as_ref().is_none_or(|f| eval(g, r, f, today, tz)))
        .collect();
    if !order.is_empty() {
        rows.sort_by(|a, b| {
            for (r, desc, nulls_last) in &order {
                let (va, vb) = (value_at(g, a, r), value_at(g, b, r));
                let ord = match (va, vb) {
                    (None, None) => std::cmp::Ordering::Equal,
                    (None, Some(_)) => {
                        if *nulls_last {
                            std::cmp::Ordering::Greater
                        } else {
                            std::cmp::Ordering::Less
                        }
                    }
                    (Some(_), None) => {
                        if *nulls_last {
                            std::cmp::Ordering::Less
                        } else {
                            std::cmp::Ordering::Greater
                        }
                    }
                    (Some(x), Some(y)) => {
                        let o = compare_values(x, y);
                        if *desc {
                            o.reverse()
                        } else {
                            o
                        }
                    }
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
            std::cmp::Ordering::Equal
        });
    }
    if let Some(n) = parsed.limit {
        rows.truncate(n);
    }
    let url = |object: &str, id: &str| format!("/services/data/{version}/sobjects/{object}/{id}");
    Ok(rows
        .into_iter()
        .map(|rec| {
            let mut out = Map::new();
            let id = rec.values.get("Id").and_then(Value::as_str).unwrap_or_default();
            out.insert("attributes".into(), json!({ "type": obj.def.name, "url": url(&obj.def.name, id) }));
            for r in &selected {
                insert_path(g, rec, r, &mut out, version);
            }
            Value::Object(out)
        })
        .collect())
}

/// Puts a selected value into a result record, nesting relationship paths as Salesforce does
/// (`"Contacto__r": {"attributes": …, "MobilePhone": …}`, or `null` when the lookup is empty).
fn insert_path(g: &Inner, rec: &Rec, r: &Resolved, out: &mut Map<String, Value>, version: &str) {
    let mut target = out;
    let mut current = Some(rec);
    for (field, rel) in &r.hops {
        let next = current
            .and_then(|c| c.values.get(field))
            .and_then(Value::as_str)
            .and_then(|id| Some((g.object_of_id(id)?, id)))
            .and_then(|(o, id)| Some((o, o.records.get(id).filter(|x| x.deleted_at.is_none())?)));
        match next {
            None => {
                target.entry(rel.clone()).or_insert(Value::Null);
                return;
            }
            Some((obj, next_rec)) => {
                let id = next_rec.values.get("Id").and_then(Value::as_str).unwrap_or_default().to_string();
                let entry = target.entry(rel.clone()).or_insert_with(|| {
                    json!({ "attributes": { "type": obj.def.name, "url": format!("/services/data/{version}/sobjects/{}/{id}", obj.def.name) } })
                });
                let Value::Object(m) = entry else { return };
                target = m;
                current = Some(next_rec);
            }
        }
    }
    let v = current.and_then(|c| c.values.get(&r.field)).cloned().unwrap_or(Value::Null);
    target.insert(r.field.clone(), v);
}

/// A condition with its fields resolved and literals checked against their types.
enum Checked {
    Compare(Resolved, Op, Literal),
    In(Resolved, Vec<Literal>, bool),
    And(Vec<Checked>),
    Or(Vec<Checked>),
    Not(Box<Checked>),
}

fn check_cond(g: &Inner, obj: &ObjectDef, c: &Cond, q: &str) -> Result<Checked, soql::QueryError> {
    Ok(match c {
        Cond::Compare { field, op, value, column } => {
            let r = resolve(g, obj, field, q, *column)?;
            check_literal(&r, value, q, *column)?;
            if *op == Op::Like && !r.kind.is_text() {
                return Err(soql::invalid_field(
                    q,
                    *column,
                    &format!("invalid operator on {} field: LIKE", type_name(r.kind)),
                ));
            }
            Checked::Compare(r, *op, value.clone())
        }
        Cond::In { field, values, negated, column } => {
            let r = resolve(g, obj, field, q, *column)?;
            for v in values {
                check_literal(&r, v, q, *column)?;
            }
            Checked::In(r, values.clone(), *negated)
        }
        Cond::And(parts) => Checked::And(parts.iter().map(|p| check_cond(g, obj, p, q)).collect::<Result<_, _>>()?),
        Cond::Or(parts) => Checked::Or(parts.iter().map(|p| check_cond(g, obj, p, q)).collect::<Result<_, _>>()?),
        Cond::Not(inner) => Checked::Not(Box::new(check_cond(g, obj, inner, q)?)),
    })
}

fn type_name(k: FieldKind) -> &'static str {
    match k {
        FieldKind::Date => "date",
        FieldKind::Datetime => "dateTime",
        FieldKind::Boolean => "boolean",
        FieldKind::Double => "double",
        FieldKind::Id | FieldKind::Reference => "id",
        _ => "string",
    }
}

fn check_literal(r: &Resolved, v: &Literal, q: &str, column: usize) -> Result<(), soql::QueryError> {
    if !r.filterable {
        return Err(soql::invalid_field(
            q,
            column,
            &format!("field '{}' can not be filtered in a query call", r.field),
        ));
    }
    let ok = match (r.kind, v) {
        (_, Literal::Null) => true,
        (FieldKind::Date, Literal::Date(_) | Literal::RelativeDay(_)) => true,
        (FieldKind::Datetime, Literal::DateTime(_) | Literal::RelativeDay(_)) => true,
        (FieldKind::Boolean, Literal::Bool(_)) => true,
        (FieldKind::Double, Literal::Num(_)) => true,
        (k, Literal::Str(_)) if k.is_text() => true,
        _ => false,
    };
    if ok {
        return Ok(());
    }
    let quoted = if r.kind.is_text() { "should be enclosed in quotes" } else { "should not be enclosed in quotes" };
    Err(soql::invalid_field(
        q,
        column,
        &format!(
            "value of filter criterion for field '{}' must be of type {} and {quoted}",
            r.field,
            type_name(r.kind)
        ),
    ))
}

fn eval(g: &Inner, rec: &Rec, c: &Checked, today: chrono::NaiveDate, tz: chrono_tz::Tz) -> bool {
    match c {
        Checked::And(p) => p.iter().all(|x| eval(g, rec, x, today, tz)),
        Checked::Or(p) => p.iter().any(|x| eval(g, rec, x, today, tz)),
        Checked::Not(x) => !eval(g, rec, x, today, tz),
        Checked::In(r, values, negated) => {
            let v = value_at(g, rec, r);
            let hit = values.iter().any(|l| compare_literal(v, r.kind, Op::Eq, l, today, tz));
            hit != *negated
        }
        Checked::Compare(r, op, l) => compare_literal(value_at(g, rec, r), r.kind, *op, l, today, tz),
    }
}

fn compare_values(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x.as_f64().unwrap_or(0.0).partial_cmp(&y.as_f64().unwrap_or(0.0)).unwrap_or(std::cmp::Ordering::Equal)
        }
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::String(x), Value::String(y)) => x.to_lowercase().cmp(&y.to_lowercase()).then_with(|| x.cmp(y)),
        _ => std::cmp::Ordering::Equal,
    }
}

fn compare_literal(
    v: Option<&Value>,
    kind: FieldKind,
    op: Op,
    l: &Literal,
    today: chrono::NaiveDate,
    tz: chrono_tz::Tz,
) -> bool {
    use std::cmp::Ordering;
    let Some(v) = v else {
        // A null field equals null and differs from everything else.
        return match (op, l) {
            (Op::Eq, Literal::Null) => true,
            (Op::Ne, Literal::Null) => false,
            (Op::Ne, _) => true,
            _ => false,
        };
    };
    if let Literal::Null = l {
        return op == Op::Ne;
    }
    if op == Op::Like {
        return match (v.as_str(), l) {
            (Some(s), Literal::Str(p)) => soql::like(s, p),
            _ => false,
        };
    }
    let ord = match (kind, l) {
        (FieldKind::Datetime, Literal::RelativeDay(d)) => {
            let Some(ms) = v.as_str().and_then(parse_datetime) else { return false };
            let day = today + chrono::Duration::days(*d);
            let start = day_start_ms(day, tz);
            let end = day_start_ms(day + chrono::Duration::days(1), tz);
            // The literal is the whole day: equal inside it.
            if ms < start {
                Ordering::Less
            } else if ms >= end {
                Ordering::Greater
            } else {
                Ordering::Equal
            }
        }
        (FieldKind::Datetime, Literal::DateTime(t)) => {
            let Some(ms) = v.as_str().and_then(parse_datetime) else { return false };
            ms.cmp(t)
        }
        (FieldKind::Date, Literal::Date(_) | Literal::RelativeDay(_)) => {
            let target = match l {
                Literal::RelativeDay(n) => today + chrono::Duration::days(*n),
                Literal::Date(d) => *d,
                _ => today,
            };
            let Some(x) = v.as_str().and_then(|s| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()) else {
                return false;
            };
            x.cmp(&target)
        }
        (FieldKind::Boolean, Literal::Bool(b)) => v.as_bool().unwrap_or(false).cmp(b),
        (FieldKind::Double, Literal::Num(n)) => v.as_f64().unwrap_or(0.0).partial_cmp(n).unwrap_or(Ordering::Equal),
        (_, Literal::Str(s)) => {
            let x = v.as_str().unwrap_or_default();
            if matches!(kind, FieldKind::Id | FieldKind::Reference) {
                let want = normalize_id(s).unwrap_or_else(|| s.clone());
                x.cmp(want.as_str())
            } else {
                x.to_lowercase().cmp(&s.to_lowercase())
            }
        }
        _ => return false,
    };
    match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
        Op::Like => false,
    }
}

fn day_start_ms(day: chrono::NaiveDate, tz: chrono_tz::Tz) -> i64 {
    use chrono::TimeZone;
    tz.from_local_datetime(&day.and_time(chrono::NaiveTime::MIN)).earliest().map(|t| t.timestamp_millis()).unwrap_or(0)
}

#[derive(Deserialize)]
struct CollectionIn {
    #[serde(default, rename = "allOrNone")]
    all_or_none: bool,
    records: Vec<Value>,
}

/// `PATCH /composite/sobjects` (update) and `POST` (create).
pub async fn collection(
    State(st): State<SandboxState>,
    Path(version): Path<String>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let create = method == axum::http::Method::POST;
    or_hang(write_collection(&st, &version, &headers, &body, if create { Write::Create } else { Write::Update })).await
}

/// `PATCH /composite/sobjects/{object}/{externalIdField}` (upsert).
pub async fn upsert(
    State(st): State<SandboxState>,
    Path((version, object, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    or_hang(write_collection(&st, &version, &headers, &body, Write::Upsert { object, field })).await
}

/// A write that passed its checks, applied once the whole call is known to go through (it
/// returns the record's id).
type Apply = Box<dyn FnOnce(&mut Inner) -> String>;

enum Write {
    Update,
    Create,
    Upsert { object: String, field: String },
}

fn write_collection(st: &SandboxState, version: &str, headers: &HeaderMap, body: &[u8], w: Write) -> Response {
    let sf = &st.salesforce;
    let mut g = match gate(sf, SfKind::Composite, version, headers) {
        Gate::Pass(g) => g,
        Gate::Answer(r) => return r,
        Gate::Hang => return hang_marker(),
    };
    let bad = |g: &Inner, code: &str, message: &str| {
        let (s, b) = error_array(StatusCode::BAD_REQUEST, code, message);
        reply(g, s, b)
    };
    let input: CollectionIn = match serde_json::from_slice(body) {
        Ok(i) => i,
        Err(e) => {
            return bad(
                &g,
                "JSON_PARSER_ERROR",
                &format!("Unexpected parameter encountered during deserialization: {e}"),
            )
        }
    };
    if input.records.len() > COLLECTION_LIMIT {
        return bad(
            &g,
            "EXCEEDED_ID_LIMIT",
            "record limit reached. cannot submit more than 200 records into this call",
        );
    }
    let ids: Vec<String> = input
        .records
        .iter()
        .filter_map(|r| r.get("id").or(r.get("Id")).and_then(Value::as_str).and_then(normalize_id))
        .collect();
    if let Some(f) = g.take_call_fault(&ids) {
        let (s, b) =
            error_array(StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST), &f.error_code, &f.message);
        return reply(&g, s, b);
    }
    // Whole-request checks first (unknown fields, values of the wrong shape): 400, nothing saved.
    let mut prepared = Vec::new();
    for r in &input.records {
        let Some(fields) = r.as_object() else { return bad(&g, "JSON_PARSER_ERROR", "records must be objects") };
        let Some(object) = r["attributes"]["type"].as_str().map(String::from) else {
            return bad(&g, "INVALID_TYPE", "Must send a concrete entity type.");
        };
        if let Write::Upsert { object: o, .. } = &w {
            if !o.eq_ignore_ascii_case(&object) {
                return bad(&g, "INVALID_TYPE", &format!("Record type {object} does not match {o}"));
            }
        }
        match g.convert(&object, fields) {
            Ok((values, read_only)) => {
                prepared.push((object, fields.get("id").or(fields.get("Id")).cloned(), values, read_only))
            }
            Err(e) => return bad(&g, e.code, &e.message),
        }
    }
    if let Write::Upsert { object, field } = &w {
        let ext = g.object(object).and_then(|o| o.def.field(field).cloned());
        match ext {
            Some(f) if f.external_id => {}
            _ => {
                return bad(
                    &g,
                    "INVALID_FIELD",
                    &format!("Field name provided, {field} is not an External ID or indexed field for {object}"),
                )
            }
        }
    }
    let now = g.now_ms();
    let mut results: Vec<Value> = Vec::new();
    let mut applied: Vec<Apply> = Vec::new();
    let failure = |code: &str, message: &str, fields: Vec<String>| json!({ "success": false, "errors": [{ "statusCode": code, "message": message, "fields": fields }] });
    for (object, id, values, read_only) in prepared {
        if !read_only.is_empty() {
            results.push(failure(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                &format!("Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.", read_only.join(", ")),
                read_only,
            ));
            applied.push(Box::new(|_| String::new()));
            continue;
        }
        if let Err((code, message, fields)) = g.check_values(&object, &values) {
            results.push(failure(&code, &message, fields));
            applied.push(Box::new(|_| String::new()));
            continue;
        }
        // The record this write goes to, when it exists.
        let existing: Result<Option<String>, Value> = match &w {
            Write::Create => {
                if id.is_some() {
                    Err(failure(
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        "cannot specify Id in an insert call",
                        vec!["Id".into()],
                    ))
                } else {
                    Ok(None)
                }
            }
            Write::Update => {
                let raw = id.as_ref().and_then(Value::as_str).unwrap_or_default().to_string();
                match normalize_id(&raw).filter(|n| g.object(&object).is_some_and(|o| n.starts_with(&o.def.prefix))) {
                    None => Err(failure(
                        "MALFORMED_ID",
                        &format!("{object} ID: id value of incorrect type: {raw}"),
                        vec!["Id".into()],
                    )),
                    Some(n) => match g.object(&object).and_then(|o| o.records.get(&n)) {
                        None => Err(failure("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", vec![])),
                        Some(r) if r.deleted_at.is_some() => {
                            Err(failure("ENTITY_IS_DELETED", "entity is deleted", vec![]))
                        }
                        Some(_) => Ok(Some(n)),
                    },
                }
            }
            Write::Upsert { field, .. } => {
                let ext = values.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).map(|(_, v)| v.clone());
                match ext {
                    None | Some(Value::Null) => Err(failure(
                        "REQUIRED_FIELD_MISSING",
                        &format!("Required fields are missing: [{field}]"),
                        vec![field.clone()],
                    )),
                    Some(key) => {
                        let hits: Vec<String> = g
                            .object(&object)
                            .map(|o| {
                                o.records
                                    .iter()
                                    .filter(|(_, r)| r.deleted_at.is_none())
                                    .filter(|(_, r)| {
                                        r.values.iter().any(|(k, v)| k.eq_ignore_ascii_case(field) && *v == key)
                                    })
                                    .map(|(i, _)| i.clone())
                                    .collect()
                            })
                            .unwrap_or_default();
                        match hits.len() {
                            0 => Ok(None),
                            1 => Ok(hits.into_iter().next()),
                            _ => Err(failure(
                                "DUPLICATE_EXTERNAL_ID",
                                &format!("{field}: more than one record found for external id field: {hits:?}"),
                                vec![field.clone()],
                            )),
                        }
                    }
                }
            }
        };
        let target = match existing {
            Err(f) => {
                results.push(f);
                applied.push(Box::new(|_| String::new()));
                continue;
            }
            Ok(t) => t,
        };
        let fault_id = target.clone().unwrap_or_default();
        if let Some(f) = g.take_record_fault(&fault_id) {
            results.push(failure(&f.status_code, &f.message, vec![]));
            applied.push(Box::new(|_| String::new()));
            continue;
        }
        if target.is_none() {
            if let Some(obj) = g.object(&object) {
                let missing: Vec<String> = obj
                    .def
                    .fields
                    .iter()
                    .filter(|f| f.required && values.get(&f.name).is_none_or(Value::is_null))
                    .map(|f| f.name.clone())
                    .collect();
                if !missing.is_empty() {
                    results.push(failure(
                        "REQUIRED_FIELD_MISSING",
                        &format!("Required fields are missing: [{}]", missing.join(", ")),
                        missing,
                    ));
                    applied.push(Box::new(|_| String::new()));
                    continue;
                }
            }
        }
        let created = target.is_none();
        let mut ok = json!({ "id": target.clone().unwrap_or_default(), "success": true, "errors": [] });
        if matches!(w, Write::Upsert { .. }) {
            ok["created"] = json!(created);
        }
        results.push(ok);
        applied.push(Box::new(move |g: &mut Inner| match target {
            Some(id) => {
                if let Some(rec) = g.objects.get_mut(&object.to_lowercase()).and_then(|o| o.records.get_mut(&id)) {
                    rec.values.extend(values);
                    touch(rec, now);
                }
                id
            }
            None => g.insert(&object, values, now),
        }));
    }
    let failed = results.iter().any(|r| r["success"] != true);
    if input.all_or_none && failed {
        for r in results.iter_mut() {
            if r["success"] == true {
                *r = json!({ "id": r["id"], "success": false, "errors": [{ "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "message": "Record rolled back because not all records were valid and the request was using AllOrNone header", "fields": [] }] });
            }
        }
    } else {
        for (r, apply) in results.iter_mut().zip(applied) {
            let id = apply(&mut g);
            if r["success"] == true {
                r["id"] = json!(id);
            }
        }
    }
    let lost = g.take_lost_answer();
    let answer = match lost {
        Some(f) if f.timeout => hang_marker(),
        Some(f) => {
            let status = StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let (s, b) = error_array(status, &f.error_code, &f.message);
            reply(&g, s, b)
        }
        None => reply(&g, StatusCode::OK, Value::Array(results)),
    };
    drop(g);
    after(sf, SfKind::Composite);
    answer
}

/// `GET /sobjects/{object}/describe`.
pub async fn describe(
    State(st): State<SandboxState>,
    Path((version, object)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    or_hang(describe_now(&st, &version, &object, &headers)).await
}

fn describe_now(st: &SandboxState, version: &str, object: &str, headers: &HeaderMap) -> Response {
    let g = match gate(&st.salesforce, SfKind::Describe, version, headers) {
        Gate::Pass(g) => g,
        Gate::Answer(r) => return r,
        Gate::Hang => return hang_marker(),
    };
    let Some(obj) = g.object(object) else {
        let (s, b) = error_array(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist");
        return reply(&g, s, b);
    };
    let fields: Vec<Value> = obj
        .def
        .fields
        .iter()
        .map(|f| {
            json!({
                "name": f.name,
                "type": f.kind,
                "length": if f.kind.is_text() { f.length } else { 0 },
                "updateable": f.updateable,
                "createable": f.updateable,
                "nillable": !f.required && f.updateable,
                "externalId": f.external_id,
                "filterable": f.filterable(),
                "referenceTo": f.reference_to.iter().filter(|r| *r != "*").collect::<Vec<_>>(),
                "relationshipName": f.relationship_name(),
            })
        })
        .collect();
    let body = json!({ "name": obj.def.name, "keyPrefix": obj.def.prefix, "queryable": true, "updateable": true, "fields": fields });
    reply(&g, StatusCode::OK, body)
}

#[derive(Deserialize)]
pub struct Window {
    start: Option<String>,
    end: Option<String>,
}

/// `GET /sobjects/{object}/deleted/` and `…/updated/`.
fn replication(
    st: &SandboxState,
    version: &str,
    object: &str,
    headers: &HeaderMap,
    w: Window,
    deleted: bool,
) -> Response {
    let kind = if deleted { SfKind::Deleted } else { SfKind::Updated };
    let g = match gate(&st.salesforce, kind, version, headers) {
        Gate::Pass(g) => g,
        Gate::Answer(r) => return r,
        Gate::Hang => return hang_marker(),
    };
    let bad = |g: &Inner, code: &str, msg: &str| {
        let (s, b) = error_array(StatusCode::BAD_REQUEST, code, msg);
        reply(g, s, b)
    };
    let Some(obj) = g.object(object) else {
        let (s, b) = error_array(StatusCode::NOT_FOUND, "NOT_FOUND", "The requested resource does not exist");
        return reply(&g, s, b);
    };
    let (Some(start), Some(end)) =
        (w.start.as_deref().and_then(parse_datetime), w.end.as_deref().and_then(parse_datetime))
    else {
        return bad(&g, "MISSING_ARGUMENT", "start and end date-times are required (YYYY-MM-DDThh:mm:ss+hh:mm)");
    };
    // Seconds are truncated; the window must span more than a minute.
    let (start, end) = (start - start.rem_euclid(60_000), end - end.rem_euclid(60_000));
    if end - start < 60_000 {
        return bad(
            &g,
            "INVALID_REPLICATION_DATE",
            "startDate must chronologically precede endDate by more than one minute",
        );
    }
    let now = g.now_ms();
    let days = if deleted { 15 } else { 30 };
    if start < now - days * 86_400_000 {
        return bad(&g, "INVALID_REPLICATION_DATE", &format!("startDate cannot be more than {days} days ago"));
    }
    let covered = end.min(now - now.rem_euclid(60_000));
    let body = if deleted {
        let records: Vec<Value> = obj
            .records
            .values()
            .filter_map(|r| {
                r.deleted_at.filter(|t| *t >= start && *t < covered && *t >= g.purged_before).map(|t| (r, t))
            })
            .map(|(r, t)| json!({ "id": r.values.get("Id"), "deletedDate": format_datetime(t) }))
            .collect();
        json!({ "deletedRecords": records, "earliestDateAvailable": format_datetime(g.purged_before - g.purged_before.rem_euclid(60_000)), "latestDateCovered": format_datetime(covered) })
    } else {
        let ids: Vec<Value> = obj
            .records
            .values()
            .filter(|r| r.deleted_at.is_none())
            .filter(|r| {
                r.values
                    .get("SystemModstamp")
                    .and_then(Value::as_str)
                    .and_then(parse_datetime)
                    .is_some_and(|t| t >= start && t < covered)
            })
            .filter_map(|r| r.values.get("Id").cloned())
            .collect();
        json!({ "ids": ids, "latestDateCovered": format_datetime(covered) })
    };
    reply(&g, StatusCode::OK, body)
}

pub async fn deleted(
    State(st): State<SandboxState>,
    Path((version, object)): Path<(String, String)>,
    headers: HeaderMap,
    QueryParams(w): QueryParams<Window>,
) -> Response {
    or_hang(replication(&st, &version, &object, &headers, w, true)).await
}

pub async fn updated(
    State(st): State<SandboxState>,
    Path((version, object)): Path<(String, String)>,
    headers: HeaderMap,
    QueryParams(w): QueryParams<Window>,
) -> Response {
    or_hang(replication(&st, &version, &object, &headers, w, false)).await
}

/// `GET /limits`.
pub async fn limits(State(st): State<SandboxState>, Path(version): Path<String>, headers: HeaderMap) -> Response {
    or_hang(limits_now(&st, &version, &headers)).await
}

fn limits_now(st: &SandboxState, version: &str, headers: &HeaderMap) -> Response {
    let g = match gate(&st.salesforce, SfKind::Limits, version, headers) {
        Gate::Pass(g) => g,
        Gate::Answer(r) => return r,
        Gate::Hang => return hang_marker(),
    };
    let body = json!({ "DailyApiRequests": { "Max": g.api_max, "Remaining": g.api_max.saturating_sub(g.api_used) } });
    reply(&g, StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> SalesforceState {
        let sf = SalesforceState::new();
        sf.define_object(ObjectDef::new(
            "Cita__c",
            "a01",
            vec![
                FieldDef::reference("Contacto__c", "Contact"),
                FieldDef::new("Fecha__c", FieldKind::Datetime),
                FieldDef::new("Estado__c", FieldKind::Picklist),
            ],
        ));
        sf
    }

    fn fields(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn queries_follow_relationships_and_refuse_what_salesforce_refuses() {
        let sf = org();
        let ana = sf
            .create("Contact", fields(json!({"LastName": "Rojas", "FirstName": "Ana", "MobilePhone": "+56987650001"})))
            .unwrap();
        sf.create(
            "Cita__c",
            fields(json!({"Contacto__c": ana, "Fecha__c": "2026-11-24T13:00:00.000+0000", "Estado__c": "Agendada"})),
        )
        .unwrap();
        sf.create("Cita__c", fields(json!({"Fecha__c": "2026-11-25T13:00:00Z", "Estado__c": "Cancelada"}))).unwrap();
        let g = sf.lock();
        let rows = run_query(&g, "SELECT Id, Contacto__r.MobilePhone, Contacto__r.Name, Fecha__c FROM Cita__c WHERE Estado__c != 'cancelada' AND Fecha__c >= 2026-11-24T00:00:00Z", "v62.0", false).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["Contacto__r"]["MobilePhone"], "+56987650001");
        assert_eq!(rows[0]["Contacto__r"]["Name"], "Ana Rojas");
        assert_eq!(rows[0]["Fecha__c"], "2026-11-24T13:00:00.000+0000");
        let all =
            run_query(&g, "SELECT Id, Contacto__r.Name FROM Cita__c ORDER BY Fecha__c DESC", "v62.0", false).unwrap();
        assert_eq!(all[0]["Contacto__r"], Value::Null, "an empty lookup is null");

        let e = run_query(&g, "SELECT Id FROM Cita__c WHERE SystemModstamp >= '2026-11-24T00:00:00Z'", "v62.0", false)
            .unwrap_err();
        assert_eq!(e.code, "INVALID_FIELD");
        assert!(e.message.contains("must be of type dateTime and should not be enclosed in quotes"), "{}", e.message);
        let e = run_query(&g, "SELECT Id, Telefono__c FROM Cita__c", "v62.0", false).unwrap_err();
        assert!(e.message.contains("No such column 'Telefono__c' on entity 'Cita__c'"), "{}", e.message);
        let e = run_query(&g, "SELECT Contact__r.Name FROM Cita__c", "v62.0", false).unwrap_err();
        assert!(e.message.contains("Didn't understand relationship 'Contact__r'"), "{}", e.message);
        let e = run_query(&g, "SELECT Id FROM Cita", "v62.0", false).unwrap_err();
        assert_eq!(e.code, "INVALID_TYPE");
        let e = run_query(&g, "SELECT Id FROM Cita__c WHERE Estado__c = 3", "v62.0", false).unwrap_err();
        assert!(e.message.contains("should be enclosed in quotes"), "{}", e.message);
    }
}
