//! Reading one object: a full read at the first poll after each start, then incremental reads
//! on `SystemModstamp` that never miss and never repeat.
//!
//! * **Watermark.** Each read reaches back to the watermark minus an overlap
//!   (`SystemModstamp >= <watermark − overlap> ORDER BY SystemModstamp, Id`, every page until
//!   `done`): a save whose transaction committed late, or several records sharing one
//!   `SystemModstamp` across a page boundary, are still seen. The watermark is the server's
//!   time (its `Date`) when the read began, never this machine's clock, and it travels to the
//!   poller as the read's version: it moves only when the poll's results are committed.
//! * **De-duplication.** Records whose `(Id, SystemModstamp, content)` was already read are dropped
//!   before anything else, so the overlap costs nothing but its bytes, and an idle poll is one
//!   request. What a read saw becomes "already read" only once the poller has committed it
//!   (the next read is handed that read's version).
//! * **The `where` filter.** The incremental query is not filtered, so a record that stops
//!   meeting the condition is seen; the new records are then checked against the condition
//!   (`Id IN (…) AND (<where>)`) and those that no longer meet it count as removed.
//! * **Related records.** Every `deletions_every`, each object the relationship paths lead to
//!   (the Contact) is asked which of its records changed; the records pointing at them are
//!   read again by id (a full read when there are too many). A full read every
//!   `full_read_every` is the backstop.
//! * **Deletions** come with the changes: incremental reads go through `queryAll`, which
//!   returns records in the Recycle Bin with `IsDeleted = true`. `getDeleted`, every
//!   `deletions_every` of server time, catches records purged before a poll saw them; when
//!   Salesforce's delete log no longer reaches back to the last check, the next read is a
//!   full one.
//! * **Values.** Date-times (`2026-11-24T13:00:00.000+0000`, UTC) become date cells in the
//!   source's time zone; dates (`2026-11-24`, no zone) stay that day. Relationship paths are
//!   flattened (`Contacto__r.MobilePhone`). Conversion runs off the async runtime.
//! * **Limits.** Above `max_api_share` of the org's daily allocation, polls are spaced ten
//!   times further apart (the skipped ones cost nothing), and the log and `/healthz` say so.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;
use tracing::{info, warn};

use super::client::OrgClient;
use super::config::SalesforceConfig;
use super::errors::{api_error, classify};
use crate::domain::{CellValue, RecordKey};
use crate::sources::{
    records_reader, Probe, QuotaState, ReadRecords, ReadSpec, RecordsRead, SourceError, SourceRead, SourceSettings,
    Table,
};

/// Ids per `Id IN (…)` query (an id is 20 characters quoted: well inside SOQL's length limit).
const IDS_PER_QUERY: usize = 200;
/// The part of `max_api_share` at which the log says usage is approaching it.
const APPROACHING: f64 = 0.8;
/// Changed related records looked at by one check; more, and the source is read in full.
const RELATED_CHANGES_MAX: usize = 2_000;
/// Above this many new records, the `where` check reads the whole window's ids instead.
const IDS_BY_LIST_MAX: usize = 400;

/// What readers and writers of one object share: where each key's record is (when the key is
/// not `Id`).
#[derive(Debug, Default)]
pub struct ObjectHint {
    ids: Mutex<HashMap<String, String>>,
    /// Each record's Contact (the interaction log's `contact_field`).
    contacts: Mutex<HashMap<String, String>>,
    /// The records each record's relationship paths lead to, as last read: record key →
    /// (`contacto__r` lowercased, related object, related id). A write to
    /// `Contacto__r.Consentimiento_WhatsApp__c` goes to that record.
    related: Mutex<HashMap<String, Vec<Related>>>,
    /// Whether a full read filled this since the start.
    loaded: std::sync::atomic::AtomicBool,
}

/// A record a relationship path leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Related {
    /// The path to it, lowercased (`contacto__r`, `cuenta__r.owner`).
    pub path: String,
    /// Its object (`Contact`).
    pub object: String,
    /// Its id.
    pub id: String,
}

impl ObjectHint {
    /// The Contact id of the record with `key`, as last read.
    pub fn contact_of(&self, key: &str) -> Option<String> {
        self.contacts.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    /// The record `path` (`Contacto__r`) leads to from the record with `key`, as last read.
    pub fn related_of(&self, key: &str, path: &str) -> Option<Related> {
        let related = self.related.lock().unwrap_or_else(PoisonError::into_inner);
        related.get(key)?.iter().find(|r| r.path.eq_ignore_ascii_case(path)).cloned()
    }

    fn set_related(&self, full: bool, pairs: Vec<(String, Vec<Related>)>) {
        let mut r = self.related.lock().unwrap_or_else(PoisonError::into_inner);
        if full {
            r.clear();
        }
        r.extend(pairs);
        if full {
            self.loaded.store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether the object was read in full since the start (until then, which record a key
    /// or a relationship path leads to is not known).
    pub fn loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_contacts(&self, full: bool, pairs: Vec<(String, String)>) {
        let mut c = self.contacts.lock().unwrap_or_else(PoisonError::into_inner);
        if full {
            c.clear();
        }
        c.extend(pairs);
    }

    /// The record id of `key`.
    pub fn id_of(&self, key: &str) -> Option<String> {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner).get(key).cloned()
    }

    fn update(&self, full: bool, seen: &[(String, String)], gone: &[String]) {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        if full {
            ids.clear();
        }
        for (key, id) in seen {
            ids.insert(key.clone(), id.clone());
        }
        ids.retain(|_, id| !gone.contains(id));
    }
}

/// The poll position, carried as the source's version: `wm=<ms>;del=<ms>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Mark {
    /// Changes at or after this (minus the overlap) are read next.
    watermark_ms: i64,
    /// Deletions after this are asked for next.
    deletions_ms: i64,
    /// Server time of the last full read. A `where` with relative dates (`TODAY`,
    /// `NEXT_N_DAYS:7`) selects other records each day without any record changing, so such a
    /// source is read fully again on the first poll of each day; fields read through a
    /// relationship change without the record's stamp moving, so such a source is read fully
    /// again every `full_read_every`.
    full_ms: Option<i64>,
}

impl Mark {
    fn parse(v: &str) -> Option<Mark> {
        let mut wm = None;
        let mut del = None;
        let mut full = None;
        for part in v.split(';') {
            if let Some(x) = part.strip_prefix("wm=") {
                wm = x.parse().ok();
            } else if let Some(x) = part.strip_prefix("del=") {
                del = x.parse().ok();
            } else if let Some(x) = part.strip_prefix("full=") {
                full = x.parse().ok();
            }
        }
        Some(Mark { watermark_ms: wm?, deletions_ms: del?, full_ms: full })
    }

    fn encode(&self) -> String {
        match self.full_ms {
            Some(full) => format!("wm={};del={};full={full}", self.watermark_ms, self.deletions_ms),
            None => format!("wm={};del={}", self.watermark_ms, self.deletions_ms),
        }
    }
}

/// A read not yet known to be committed: its version, whether it was full, the `(Id,
/// SystemModstamp)` it saw and the ids deleted.
type Pending = (String, bool, Vec<(String, String)>, Vec<String>);

#[derive(Default)]
struct ReaderState {
    /// `(Id → SystemModstamp)` of every record already read and committed.
    seen: HashMap<String, String>,
    /// What the last read saw, with its version: it joins `seen` once a read is handed that
    /// version (the poller committed it).
    pending: Option<Pending>,
    /// The version the last read returned.
    last_version: Option<String>,
    /// The next read is a full one (the delete log no longer reaches back far enough).
    force_full: bool,
    /// Polls are spaced out until then (API usage above the configured share).
    slowed_until: Option<Instant>,
    slowed: bool,
    /// Usage is past [`APPROACHING`] of the share (said once in the log).
    approaching: bool,
}

/// The read side of one configured object.
pub struct RecordReader {
    cfg: Arc<SalesforceConfig>,
    client: OrgClient,
    hint: Arc<ObjectHint>,
    state: Mutex<ReaderState>,
}

impl RecordReader {
    pub fn new(cfg: Arc<SalesforceConfig>, client: OrgClient, hint: Arc<ObjectHint>) -> Self {
        Self { cfg, client, hint, state: Mutex::new(ReaderState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReaderState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn settings(&self) -> &SourceSettings {
        &self.cfg.settings
    }

    /// Costs nothing: a Salesforce source is read at every poll, except while polls are spaced
    /// out for the API allocation or wait after `REQUEST_LIMIT_EXCEEDED` (then the last version
    /// is given back, which the poller takes as "unchanged").
    pub async fn probe(&self) -> Result<Probe, SourceError> {
        let limited = self.client.limited_for().is_some();
        let s = self.lock();
        if limited || s.slowed_until.is_some_and(|u| Instant::now() < u) {
            return Ok(Probe { version: s.last_version.clone() });
        }
        Ok(Probe { version: None })
    }

    /// Who recado is in the org, for a refusal's message (the user that needs access).
    pub fn access_hint(&self) -> String {
        let user = match &self.cfg.auth {
            super::config::AuthConfig::JwtBearer { username, .. } => format!("the integration user {username}"),
            _ => "the connected app's run-as user".to_string(),
        };
        format!("recado signs in as {user}")
    }

    /// The configured time zone, else the org's (`Organization.TimeZoneSidKey`).
    pub async fn time_zone(&self) -> Result<String, SourceError> {
        match &self.cfg.time_zone {
            Some(tz) => Ok(tz.clone()),
            None => self.client.org_time_zone().await,
        }
    }

    async fn tz(&self) -> Result<chrono_tz::Tz, SourceError> {
        source_tz(&self.cfg, &self.client).await
    }

    pub fn quota(&self) -> QuotaState {
        let limited = self.client.limited_for();
        let s = self.lock();
        let slowed = s.slowed_until.and_then(|u| u.checked_duration_since(Instant::now()));
        let paused_for = limited.max(slowed);
        let usage = self.client.usage();
        QuotaState {
            paused_for,
            strikes: 0,
            per_minute: 0,
            used: usage.map(|u| u.used),
            allowed: usage.map(|u| u.max),
            window: "day",
        }
    }

    /// The fields every read selects: `Id`, then the key, phone, consent, time-zone fields,
    /// the fields rules need, and the configured ones (each once; write-back fields never).
    pub fn selected(&self, spec: &ReadSpec) -> Vec<String> {
        let s = &self.cfg.settings;
        let write_back = s.write_back.fields();
        let mut out: Vec<String> = Vec::new();
        let mut add = |name: &str| {
            let name = name.trim();
            if name.is_empty()
                || out.iter().any(|o| o.eq_ignore_ascii_case(name))
                || write_back.iter().any(|w| w.eq_ignore_ascii_case(name))
                || name.eq_ignore_ascii_case("SystemModstamp")
            {
                return;
            }
            out.push(name.to_string());
        };
        add("Id");
        add(&s.key_field);
        add(&s.phone_field);
        if let Some(c) = &s.consent {
            add(&c.field);
        }
        if let Some(t) = &s.time_zone_field {
            add(t);
        }
        if let Some(c) = self.cfg.interaction_log.as_ref().and_then(|l| l.contact_field.as_deref()) {
            add(c);
        }
        for r in &spec.required {
            add(r);
        }
        for f in &self.cfg.fields {
            add(f);
        }
        // Fields only templates and filters name are read too (an undefined name would fail
        // the message); a name the object does not have stops the source with Salesforce's
        // words, as one in `fields:` does.
        for f in spec.referenced.iter().filter(|f| super::config::is_field_path(f)) {
            add(f);
        }
        out
    }

    /// Reads the object: fully when `since` is `None` (or unreadable, or the delete log says
    /// so), else what changed since that version.
    pub async fn read(&self, spec: &ReadSpec, since: Option<&str>) -> Result<SourceRead, SourceError> {
        let tz = self.tz().await?;
        let mark = {
            let mut s = self.lock();
            // The poller committed the previous read: what it saw is now "already read".
            if let Some((version, full, seen, gone)) = s.pending.take() {
                if since == Some(version.as_str()) {
                    if full {
                        s.seen.clear();
                    }
                    for (id, stamp) in seen {
                        s.seen.insert(id, stamp);
                    }
                    for id in gone {
                        s.seen.remove(&id);
                    }
                }
            }
            let mark = since.and_then(Mark::parse);
            if s.force_full || mark.is_none() {
                None
            } else {
                mark
            }
        };
        let selected = self.selected(spec);
        let read = match mark {
            None => self.full_read(spec, &selected, tz).await?,
            Some(m) => self.incremental_read(spec, &selected, tz, m).await?,
        };
        self.watch_usage();
        Ok(read)
    }

    async fn full_read(
        &self,
        spec: &ReadSpec,
        selected: &[String],
        tz: chrono_tz::Tz,
    ) -> Result<SourceRead, SourceError> {
        let soql = match &self.cfg.filter {
            Some(w) => format!("SELECT {}, SystemModstamp FROM {} WHERE {w}", selected.join(", "), self.cfg.object),
            None => format!("SELECT {}, SystemModstamp FROM {}", selected.join(", "), self.cfg.object),
        };
        let (records, _, server_ms) = self.client.query(&soql, &format!("reading {}", self.cfg.object)).await?;
        let started = server_ms.ok_or_else(|| SourceError::Transient("Salesforce's answer had no Date".into()))?;
        // A second's margin: `Date` has whole seconds.
        let mark = Mark { watermark_ms: started - 1_000, deletions_ms: started - 1_000, full_ms: Some(started) };
        let version = mark.encode();
        let seen = id_stamps(&records);
        let pass = Pass { complete: true, seen, deleted: Vec::new(), gone: Vec::new() };
        let read = self.convert(spec, selected, tz, records, pass, version.clone()).await?;
        let mut s = self.lock();
        s.force_full = false;
        s.last_version = Some(version);
        Ok(read)
    }

    async fn incremental_read(
        &self,
        spec: &ReadSpec,
        selected: &[String],
        tz: chrono_tz::Tz,
        mark: Mark,
    ) -> Result<SourceRead, SourceError> {
        let overlap = i64::try_from(self.cfg.overlap.as_millis()).unwrap_or(0);
        let since = soql_datetime(mark.watermark_ms - overlap);
        // Through queryAll: a record deleted since (in the Recycle Bin, its SystemModstamp
        // moved) comes with IsDeleted = true, so a deletion is seen by the next poll at no
        // extra cost; `getDeleted` below only catches records purged before a poll saw them.
        let soql = format!(
            "SELECT {}, SystemModstamp, IsDeleted FROM {} WHERE SystemModstamp >= {since} ORDER BY SystemModstamp, Id",
            selected.join(", "),
            self.cfg.object
        );
        let what = format!("reading changes of {}", self.cfg.object);
        let (mut records, _, server_ms) = self.client.query_all(&soql, &what).await?;
        let now = server_ms.ok_or_else(|| SourceError::Transient("Salesforce's answer had no Date".into()))?;
        let new_day = mark.full_ms.map(|ms| local_day(ms, tz)) != Some(local_day(now, tz));
        if new_day && self.cfg.filter.as_deref().is_some_and(mentions_relative_dates) {
            info!(source = %self.cfg.settings.id, "a new day: the where condition's relative dates select other records, reading them all again");
            return self.full_read(spec, selected, tz).await;
        }
        let every = i64::try_from(self.cfg.full_read_every.as_millis()).unwrap_or(i64::MAX);
        if selected.iter().any(|f| f.contains('.')) && mark.full_ms.is_none_or(|ms| now - ms >= every) {
            info!(source = %self.cfg.settings.id, "reading every record again: fields read through a relationship change without the record's SystemModstamp moving");
            return self.full_read(spec, selected, tz).await;
        }
        let deletions_every = i64::try_from(self.cfg.deletions_every.as_millis()).unwrap_or(300_000);
        if now - mark.deletions_ms >= deletions_every {
            // A record whose Contact changed (a number, the consent) keeps its own stamp: the
            // records whose related records changed since the last check are read again.
            let since_related = soql_datetime(mark.deletions_ms - overlap);
            match self.related_changes(selected, &since_related).await? {
                Some(more) => {
                    let have: HashSet<String> =
                        records.iter().filter_map(|r| r["Id"].as_str().map(String::from)).collect();
                    records.extend(more.into_iter().filter(|r| r["Id"].as_str().is_some_and(|id| !have.contains(id))));
                }
                None => {
                    info!(source = %self.cfg.settings.id, "many related records changed: reading every record again");
                    return self.full_read(spec, selected, tz).await;
                }
            }
        }
        // Drop what was already read (same Id, same SystemModstamp, same content).
        let fresh: Vec<Value> = {
            let s = self.lock();
            records
                .into_iter()
                .filter(|r| {
                    let id = r["Id"].as_str().unwrap_or_default();
                    s.seen.get(id).is_none_or(|seen| *seen != fingerprint(r))
                })
                .collect()
        };
        let seen = id_stamps(&fresh);
        let (binned, fresh): (Vec<Value>, Vec<Value>) = fresh.into_iter().partition(|r| r["IsDeleted"] == true);
        let mut deleted: Vec<String> = binned.iter().filter_map(|r| r["Id"].as_str().map(String::from)).collect();
        // Records deleted, or no longer meeting the `where` condition, count as removed.
        let mut gone: Vec<String> = deleted.clone();
        let mut kept = fresh;
        if let (Some(w), false) = (&self.cfg.filter, kept.is_empty()) {
            let matching = self.matching(w, &kept, &since).await?;
            let (inside, outside): (Vec<Value>, Vec<Value>) =
                kept.into_iter().partition(|r| r["Id"].as_str().is_some_and(|id| matching.contains(id)));
            gone.extend(outside.iter().filter_map(|r| r["Id"].as_str().map(String::from)));
            kept = inside;
        }
        let mut next = Mark { watermark_ms: now - 1_000, deletions_ms: mark.deletions_ms, full_ms: mark.full_ms };
        if now - mark.deletions_ms >= deletions_every {
            match self.deleted_since(mark.deletions_ms, now).await? {
                Deletions::Ids(ids, covered) => {
                    gone.extend(ids.iter().cloned());
                    deleted.extend(ids);
                    next.deletions_ms = covered;
                }
                Deletions::ResyncNeeded => {
                    warn!(source = %self.cfg.settings.id, "Salesforce's delete log no longer reaches back to the last check: reading every record again");
                    self.lock().force_full = true;
                    return self.full_read(spec, selected, tz).await;
                }
            }
        }
        // A record deleted and then seen in the same read: the deletion wins.
        let removed: HashSet<&String> = gone.iter().collect();
        kept.retain(|r| r["Id"].as_str().is_none_or(|id| !removed.contains(&id.to_string())));
        let version = next.encode();
        let read = self
            .convert(spec, selected, tz, kept, Pass { complete: false, seen, deleted, gone }, version.clone())
            .await?;
        self.lock().last_version = Some(version);
        Ok(read)
    }

    /// The records whose related records (through the selected relationship paths) changed
    /// since `since`, read again; `None` when so many changed that a full read is cheaper.
    async fn related_changes(&self, selected: &[String], since: &str) -> Result<Option<Vec<Value>>, SourceError> {
        // Each related object once, with the records that point at each of its ids.
        let mut pointing: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
        {
            let related = self.hint.related.lock().unwrap_or_else(PoisonError::into_inner);
            for (key, list) in related.iter() {
                let Some(own) = self.record_id(key) else { continue };
                for r in list {
                    pointing.entry(r.object.clone()).or_default().entry(r.id.clone()).or_default().push(own.clone());
                }
            }
        }
        if pointing.is_empty() || !selected.iter().any(|f| f.contains('.')) {
            return Ok(Some(Vec::new()));
        }
        let mut ids: Vec<String> = Vec::new();
        for (object, by_id) in &pointing {
            // One page at most: more changes than that, and a full read is cheaper.
            let soql = format!("SELECT Id FROM {object} WHERE SystemModstamp >= {since} LIMIT {RELATED_CHANGES_MAX}");
            let changed = match self.client.query(&soql, &format!("asking {object} what changed")).await {
                Ok((changed, _, _)) => changed,
                Err(
                    e @ (SourceError::RateLimited { .. } | SourceError::Transient(_) | SourceError::Timeout { .. }),
                ) => return Err(e),
                Err(e) => {
                    // Not readable by the integration user: the periodic full read covers it.
                    warn!(source = %self.cfg.settings.id, %object, "cannot ask the related object what changed: {e}");
                    continue;
                }
            };
            if changed.len() >= RELATED_CHANGES_MAX {
                return Ok(None);
            }
            for c in changed {
                if let Some(own) = c["Id"].as_str().and_then(|id| by_id.get(id)) {
                    ids.extend(own.iter().cloned());
                }
            }
        }
        ids.sort();
        ids.dedup();
        if ids.len() > IDS_BY_LIST_MAX {
            return Ok(None);
        }
        let mut out = Vec::new();
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().map(|id| soql_string(id)).collect();
            let soql = format!(
                "SELECT {}, SystemModstamp FROM {} WHERE Id IN ({})",
                selected.join(", "),
                self.cfg.object,
                list.join(", ")
            );
            let (found, _, _) = self.client.query(&soql, &format!("reading {} again", self.cfg.object)).await?;
            out.extend(found);
        }
        Ok(Some(out))
    }

    /// The Salesforce id of the record with `key`.
    fn record_id(&self, key: &str) -> Option<String> {
        if self.cfg.settings.key_field.eq_ignore_ascii_case("Id") {
            Some(key.to_string())
        } else {
            self.hint.id_of(key)
        }
    }

    /// The ids among `records` that meet the `where` condition now.
    async fn matching(&self, filter: &str, records: &[Value], since: &str) -> Result<HashSet<String>, SourceError> {
        let what = format!("checking {}'s where condition", self.cfg.object);
        let ids: Vec<&str> = records.iter().filter_map(|r| r["Id"].as_str()).collect();
        let mut out = HashSet::new();
        if ids.len() > IDS_BY_LIST_MAX {
            let soql = format!("SELECT Id FROM {} WHERE SystemModstamp >= {since} AND ({filter})", self.cfg.object);
            let (found, _, _) = self.client.query(&soql, &what).await?;
            out.extend(found.iter().filter_map(|r| r["Id"].as_str().map(String::from)));
            return Ok(out);
        }
        for chunk in ids.chunks(IDS_PER_QUERY) {
            let list: Vec<String> = chunk.iter().map(|id| soql_string(id)).collect();
            let soql = format!("SELECT Id FROM {} WHERE Id IN ({}) AND ({filter})", self.cfg.object, list.join(", "));
            let (found, _, _) = self.client.query(&soql, &what).await?;
            out.extend(found.iter().filter_map(|r| r["Id"].as_str().map(String::from)));
        }
        Ok(out)
    }

    async fn deleted_since(&self, from_ms: i64, now_ms: i64) -> Result<Deletions, SourceError> {
        let enc = |ms: i64| {
            let t = chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default();
            percent_encoding::utf8_percent_encode(
                &t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string(),
                percent_encoding::NON_ALPHANUMERIC,
            )
            .to_string()
        };
        let path = format!(
            "{}/sobjects/{}/deleted/?start={}&end={}",
            self.client.data_path(),
            self.cfg.object,
            enc(from_ms),
            enc(now_ms)
        );
        let what = format!("asking {} for deletions", self.cfg.object);
        let answer = self.client.call(reqwest::Method::GET, &path, None, &what).await?;
        if answer.status == 400 && api_error(&answer.body).is_some_and(|e| e.code == "INVALID_REPLICATION_DATE") {
            // The last check is older than Salesforce keeps deletions (15 days): whatever was
            // deleted since can only be known by reading everything.
            return Ok(Deletions::ResyncNeeded);
        }
        if !(200..300).contains(&answer.status) {
            return Err(classify(answer.status, &answer.body, &what));
        }
        let v: Value = serde_json::from_slice(&answer.body)
            .map_err(|_| SourceError::Transient(format!("unreadable answer from Salesforce to {what}")))?;
        let parse = |k: &str| v[k].as_str().and_then(parse_sf_datetime);
        if parse("earliestDateAvailable").is_some_and(|earliest| earliest > from_ms) {
            return Ok(Deletions::ResyncNeeded);
        }
        let ids = v["deletedRecords"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["id"].as_str().map(String::from))
            .collect();
        // The next window starts where this one was covered (Salesforce's advice).
        let covered = parse("latestDateCovered").unwrap_or(from_ms).max(from_ms);
        Ok(Deletions::Ids(ids, covered))
    }

    async fn convert(
        &self,
        spec: &ReadSpec,
        selected: &[String],
        tz: chrono_tz::Tz,
        records: Vec<Value>,
        pass: Pass,
        version: String,
    ) -> Result<SourceRead, SourceError> {
        let Pass { complete, seen, deleted, gone } = pass;
        let cfg = Arc::clone(&self.cfg);
        let spec = spec.clone();
        let selected = selected.to_vec();
        // Converting many records is CPU work: off the async runtime.
        let (read, keyed, contacts, related) = tokio::task::spawn_blocking(move || {
            let related = related_records(&cfg.settings.key_field, &selected, &records, tz);
            let table = to_table(&selected, &records, tz, cfg.settings.time_zone_field.as_deref());
            let keyed = key_ids(&cfg.settings.key_field, &selected, &table);
            let contact = cfg.interaction_log.as_ref().and_then(|l| l.contact_field.as_deref());
            let contacts =
                contact.map(|c| column_pairs(&cfg.settings.key_field, c, &selected, &table)).unwrap_or_default();
            let read = to_records(&cfg.settings, &spec, table);
            (read, keyed, contacts, related)
        })
        .await
        .map_err(|e| SourceError::Transient(format!("converting the records failed: {e}")))?;
        let records = read.map_err(SourceError::MissingFields)?;
        let key_is_id = self.cfg.settings.key_field.eq_ignore_ascii_case("Id");
        let deleted_keys = if key_is_id {
            gone.iter().map(|id| RecordKey(id.clone())).collect()
        } else {
            let by_id: HashMap<String, String> = {
                let ids = self.hint.ids.lock().unwrap_or_else(PoisonError::into_inner);
                ids.iter().map(|(k, id)| (id.clone(), k.clone())).collect()
            };
            gone.iter().filter_map(|id| by_id.get(id).map(|k| RecordKey(k.clone()))).collect()
        };
        let read = SourceRead {
            records: ReadRecords::Whole(records),
            complete,
            deleted: deleted_keys,
            version: Some(version.clone()),
        };
        self.hint.update(complete, &keyed, &deleted);
        self.hint.set_contacts(complete, contacts);
        self.hint.set_related(complete, related);
        self.lock().pending = Some((version, complete, seen, deleted));
        Ok(read)
    }

    /// Slows polling down (and says so) while the org's API usage is above the share recado may
    /// use; says so again when it is back under.
    fn watch_usage(&self) {
        let Some(usage) = self.client.usage() else { return };
        let mut s = self.lock();
        if usage.above(self.cfg.max_api_share) {
            let every = (self.cfg.settings.poll_interval * 10).min(Duration::from_secs(3600));
            s.slowed_until = Some(Instant::now() + every);
            if !s.slowed {
                s.slowed = true;
                warn!(
                    source = %self.cfg.settings.id,
                    ours = usage.ours,
                    org_used = usage.used,
                    allocation = usage.max,
                    share = self.cfg.max_api_share,
                    every_s = every.as_secs_f64(),
                    "recado's Salesforce API usage is above its share of the daily allocation (or the org's is nearly spent): polling less often"
                );
            }
        } else if s.slowed {
            s.slowed = false;
            s.slowed_until = None;
            info!(source = %self.cfg.settings.id, ours = usage.ours, org_used = usage.used, allocation = usage.max, "Salesforce API usage back under the share: polling as configured");
        } else if usage.above(self.cfg.max_api_share * APPROACHING) != s.approaching {
            // Said once on the way up (and once on the way down), before polls slow down.
            s.approaching = !s.approaching;
            if s.approaching {
                warn!(source = %self.cfg.settings.id, ours = usage.ours, allocation = usage.max, share = self.cfg.max_api_share, "recado's Salesforce API usage is approaching its share of the daily allocation: polls will slow down when it is reached");
            }
        }
    }
}

/// The local day of a server time.
fn local_day(ms: i64, tz: chrono_tz::Tz) -> chrono::NaiveDate {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default().with_timezone(&tz).date_naive()
}

/// Whether a `where` condition uses SOQL's relative date literals (`TODAY`, `LAST_WEEK`,
/// `NEXT_N_DAYS:7`, `THIS_FISCAL_YEAR`, …), outside quoted strings. A custom field's name
/// (`Last_Visit__c`) is not one.
fn mentions_relative_dates(filter: &str) -> bool {
    let mut unquoted = String::with_capacity(filter.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in filter.chars() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '\'' {
                in_string = false;
            }
            unquoted.push(' ');
        } else if c == '\'' {
            in_string = true;
            unquoted.push(' ');
        } else {
            unquoted.push(c);
        }
    }
    unquoted.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).any(|token| {
        let t = token.to_ascii_uppercase();
        !t.contains("__")
            && (matches!(t.as_str(), "TODAY" | "YESTERDAY" | "TOMORROW")
                || [
                    "THIS_",
                    "LAST_",
                    "NEXT_",
                    "N_DAYS_",
                    "N_WEEKS_",
                    "N_MONTHS_",
                    "N_QUARTERS_",
                    "N_YEARS_",
                    "N_FISCAL_",
                ]
                .iter()
                .any(|p| t.starts_with(p)))
    })
}

/// What one read saw, besides its records.
struct Pass {
    /// Every record is in the read.
    complete: bool,
    /// `(Id, fingerprint)` of every record read (those outside the `where` condition too).
    seen: Vec<(String, String)>,
    /// Ids Salesforce says were deleted.
    deleted: Vec<String>,
    /// Ids that count as removed: deleted, or no longer meeting the condition.
    gone: Vec<String>,
}

/// `(Id, fingerprint)` of each record, to recognise it when the overlap brings it again.
fn id_stamps(records: &[Value]) -> Vec<(String, String)> {
    records.iter().filter_map(|r| Some((r["Id"].as_str()?.to_string(), fingerprint(r)))).collect()
}

/// What makes a record "already read": its `SystemModstamp` and a hash of what it holds.
/// The stamp alone is not enough: it has whole seconds, so a second save within the same
/// second, committed after a poll read the first, carries the same stamp.
fn fingerprint(record: &Value) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    if let Value::Object(m) = record {
        // `IsDeleted` is asked for by incremental reads only: it counts once it is true (a
        // deletion within the second of the last save keeps the stamp).
        for (k, v) in m.iter().filter(|(k, v)| k.as_str() != "IsDeleted" || **v == Value::Bool(true)) {
            k.hash(&mut h);
            v.to_string().hash(&mut h);
        }
    }
    format!("{}#{:016x}", record["SystemModstamp"].as_str().unwrap_or_default(), h.finish())
}

/// The zone a source's dates are read and written in: its `time_zone` (or
/// `defaults.time_zone`, filled in by the configuration), else the org's.
pub async fn source_tz(cfg: &SalesforceConfig, client: &OrgClient) -> Result<chrono_tz::Tz, SourceError> {
    let name = match &cfg.time_zone {
        Some(tz) => tz.clone(),
        None => client.org_time_zone().await?,
    };
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        SourceError::Permanent(format!("the time zone '{name}' is not an IANA time zone; set time_zone in the source"))
    })
}

enum Deletions {
    /// Deleted ids, and up to when the log was read.
    Ids(Vec<String>, i64),
    ResyncNeeded,
}

/// A table turned into records, or the fields it lacks.
fn to_records(settings: &SourceSettings, spec: &ReadSpec, table: Table) -> Result<RecordsRead, Vec<String>> {
    Ok(records_reader(settings, spec, &table.header, |_| None)?.read_whole(table.rows))
}

/// `(key, Id)` of every row (when the key is another field).
fn key_ids(key_field: &str, selected: &[String], table: &Table) -> Vec<(String, String)> {
    if key_field.eq_ignore_ascii_case("Id") {
        return Vec::new();
    }
    column_pairs(key_field, "Id", selected, table)
}

/// `(key, value of field)` of every row that has both.
fn column_pairs(key_field: &str, field: &str, selected: &[String], table: &Table) -> Vec<(String, String)> {
    let (Some(k), Some(i)) =
        (crate::sources::find_field(selected, key_field), crate::sources::find_field(selected, field))
    else {
        return Vec::new();
    };
    table
        .rows
        .iter()
        .filter_map(|r| Some((r.get(k)?.canonical(), r.get(i)?.canonical())))
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .collect()
}

/// For each record, the records its selected relationship paths lead to, from the
/// `attributes` Salesforce sends with each related record (`{"type": "Contact", "url":
/// ".../sobjects/Contact/003…"}`). Records with no relationship path selected give nothing.
fn related_records(
    key_field: &str,
    selected: &[String],
    records: &[Value],
    tz: chrono_tz::Tz,
) -> Vec<(String, Vec<Related>)> {
    let mut paths: Vec<&str> = selected.iter().filter_map(|f| f.rsplit_once('.').map(|(p, _)| p)).collect();
    paths.sort_unstable_by_key(|p| p.to_lowercase());
    paths.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    if paths.is_empty() {
        return Vec::new();
    }
    records
        .iter()
        .filter_map(|r| {
            let key = cell(lookup(r, key_field), tz).canonical();
            let related: Vec<Related> = paths
                .iter()
                .filter_map(|path| {
                    // The object from the URL: a polymorphic relationship (`Owner`, `What`)
                    // says `"type": "Name"`, which cannot be queried.
                    let mut url = lookup(r, path)["attributes"]["url"].as_str()?.rsplit('/');
                    let id = url.next().filter(|id| !id.is_empty())?;
                    let object = url.next().filter(|o| !o.is_empty())?;
                    Some(Related { path: path.to_lowercase(), object: object.to_string(), id: id.to_string() })
                })
                .collect();
            (!key.is_empty() && !related.is_empty()).then_some((key, related))
        })
        .collect()
}

/// Query records → a table whose header is the selected names.
fn to_table(selected: &[String], records: &[Value], tz: chrono_tz::Tz, tz_field: Option<&str>) -> Table {
    let rows = records
        .iter()
        .map(|r| {
            // A record with its own zone has its date-times read in it, the zone its rules use.
            let zone = tz_field
                .and_then(|f| lookup(r, f).as_str())
                .and_then(|name| name.trim().parse::<chrono_tz::Tz>().ok())
                .unwrap_or(tz);
            selected.iter().map(|path| cell(lookup(r, path), zone)).collect()
        })
        .collect();
    Table { header: selected.to_vec(), rows }
}

/// The value at a relationship path, matching names as Salesforce does (ignoring case).
fn lookup<'a>(record: &'a Value, path: &str) -> &'a Value {
    let mut current = record;
    for part in path.split('.') {
        let next = match current {
            Value::Object(m) => {
                m.get(part).or_else(|| m.iter().find(|(k, _)| k.eq_ignore_ascii_case(part)).map(|(_, v)| v))
            }
            _ => None,
        };
        match next {
            Some(v) => current = v,
            None => return &Value::Null,
        }
    }
    current
}

/// A value as Salesforce sends it → a cell: date-times to the source's local time, dates as
/// they are.
fn cell(v: &Value, tz: chrono_tz::Tz) -> CellValue {
    match v {
        Value::Null => CellValue::Empty,
        Value::Bool(b) => CellValue::Bool(*b),
        Value::Number(n) => n.as_f64().map(CellValue::Number).unwrap_or(CellValue::Empty),
        Value::String(s) if s.is_empty() => CellValue::Empty,
        Value::String(s) => {
            if let Some(ms) = is_sf_datetime(s).then(|| parse_sf_datetime(s)).flatten() {
                if let Some(t) = chrono::DateTime::from_timestamp_millis(ms) {
                    return CellValue::Date(serial(t.with_timezone(&tz).naive_local()));
                }
            }
            if s.len() == 10 {
                if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
                    return CellValue::Date(serial(d.and_time(chrono::NaiveTime::MIN)));
                }
            }
            CellValue::Text(s.as_str().into())
        }
        other => CellValue::Text(other.to_string().into()),
    }
}

/// `2026-11-24T13:00:00.000+0000`: exactly how Salesforce writes date-times.
fn is_sf_datetime(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 28 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && (b[23] == b'+' || b[23] == b'-')
}

/// A Salesforce date-time (`…+0000`) in UTC milliseconds.
pub fn parse_sf_datetime(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").ok().map(|t| t.timestamp_millis())
}

/// Days since 1899-12-30, the time of day as the fraction.
fn serial(t: chrono::NaiveDateTime) -> f64 {
    let epoch = chrono::NaiveDate::from_ymd_opt(1899, 12, 30).unwrap_or_default().and_time(chrono::NaiveTime::MIN);
    let d = t - epoch;
    d.num_milliseconds() as f64 / 86_400_000.0
}

/// A SOQL date-time literal (unquoted, whole seconds, UTC): `2026-11-22T13:00:00Z`.
pub fn soql_datetime(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms.div_euclid(1000) * 1000)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".into())
}

/// A SOQL string literal: quoted, with `\` and `'` escaped.
pub fn soql_string(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_become_cells_in_the_sources_time_zone() {
        let tz: chrono_tz::Tz = "America/Santiago".parse().unwrap();
        // 13:00 UTC on 24 Nov 2026 is 10:00 in Santiago (UTC-3 in summer).
        let CellValue::Date(s) = cell(&json!("2026-11-24T13:00:00.000+0000"), tz) else { panic!("date-time") };
        let CellValue::Date(day) = cell(&json!("2026-11-24"), tz) else { panic!("date") };
        assert_eq!(day, 46350.0);
        assert!((s - (46350.0 + 10.0 / 24.0)).abs() < 1e-9, "{s}");
        assert_eq!(cell(&json!("Agendada"), tz), CellValue::Text("Agendada".into()));
        assert_eq!(cell(&json!(null), tz), CellValue::Empty);
        assert_eq!(cell(&json!(true), tz), CellValue::Bool(true));
    }

    #[test]
    fn relationship_paths_are_flattened() {
        let r = json!({"Id": "a01", "Contacto__r": {"attributes": {}, "MobilePhone": "+56 9 1"}, "Otro__r": null});
        assert_eq!(lookup(&r, "Contacto__r.MobilePhone"), &json!("+56 9 1"));
        assert_eq!(lookup(&r, "contacto__r.mobilephone"), &json!("+56 9 1"));
        assert_eq!(lookup(&r, "Otro__r.Name"), &Value::Null);
    }

    #[test]
    fn related_records_come_from_the_attributes_salesforce_sends() {
        let tz: chrono_tz::Tz = "America/Santiago".parse().unwrap();
        let records = [
            json!({"Id": "a01", "Contacto__r": {"attributes": {"type": "Contact", "url": "/services/data/v62.0/sobjects/Contact/003A"}, "MobilePhone": "+56 9 1"}}),
            json!({"Id": "a02", "Contacto__r": null}),
        ];
        let selected = ["Id".to_string(), "Contacto__r.MobilePhone".into(), "Contacto__r.FirstName".into()];
        let related = related_records("Id", &selected, &records, tz);
        assert_eq!(
            related,
            vec![(
                "a01".to_string(),
                vec![Related { path: "contacto__r".into(), object: "Contact".into(), id: "003A".into() }]
            )]
        );
    }

    #[test]
    fn relative_date_literals_are_recognised_outside_strings_and_field_names() {
        assert!(mentions_relative_dates("Fecha__c >= TODAY"));
        assert!(mentions_relative_dates("Fecha__c = next_n_days:7 AND Estado__c = 'Agendada'"));
        assert!(mentions_relative_dates("CreatedDate = LAST_WEEK"));
        assert!(!mentions_relative_dates("Estado__c = 'TODAY'"));
        assert!(!mentions_relative_dates("Last_Visit__c != null AND Fecha__c > 2026-11-01T00:00:00Z"));
        assert!(!mentions_relative_dates("Estado__c IN ('Agendada', 'Reprogramada')"));
    }

    #[test]
    fn marks_and_literals() {
        let m = Mark { watermark_ms: 5, deletions_ms: 7, full_ms: None };
        assert_eq!(Mark::parse(&m.encode()), Some(m));
        let d = Mark { watermark_ms: 5, deletions_ms: 7, full_ms: Some(9) };
        assert_eq!(d.encode(), "wm=5;del=7;full=9");
        assert_eq!(Mark::parse(&d.encode()), Some(d));
        assert_eq!(Mark::parse("garbage"), None);
        assert_eq!(soql_datetime(1_795_352_400_123), "2026-11-22T13:00:00Z");
        assert_eq!(soql_string("O'Higgins"), "'O\\'Higgins'");
    }
}
