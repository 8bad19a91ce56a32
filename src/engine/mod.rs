//! The loops that connect sources, the store and providers. They name no vendor: sources and
//! providers are the closed enums of `sources` and `providers`.
//!
//! * [`poller`]: per source, probe → read → diff → rules → commits (snapshot + consequences).
//! * [`timers`]: date reminders and cron campaigns, fired when due.
//! * [`dispatcher`]: per provider, due outbox messages → policy checks → throughput budget →
//!   `sending` committed → send → `sent` or the classified error.
//! * [`inbox`]: verified webhook bodies from the store → statuses, replies, opt-outs.
//! * [`flusher`]: per write group, the coalesced write-back queue → the source's writer.
//! * [`retention`]: prunes what the store no longer needs.
//!
//! Every loop is `run(self, shutdown)`, started from `app` inside a [`supervisor`], reads time
//! from the shared [`Clock`], and reports to [`Health`].

pub mod clock;
pub mod dispatcher;
pub mod flusher;
pub mod handoff;
pub mod health;
pub mod inbox;
pub mod media;
pub mod poller;
pub mod retention;
mod status_batch;
pub mod supervisor;
pub mod timers;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use chrono::TimeZone;
use tokio::sync::{watch, Notify};

pub use clock::Clock;
pub use health::{Health, STUCK_AFTER};

use crate::config::Config;
use crate::diff::SnapshotRow;
use crate::domain::{
    interaction, CellValue, FieldWrite, MessageContent, MessageState, PhoneError, PhoneNumber, Record, RecordKey,
    WriteTarget,
};
use crate::rules::{RecordFacts, RuleSet, TimeContext};
use crate::sources::SourceSettings;
use crate::store::{OutboxMessage, Store};

/// The shutdown signal a loop listens to (mini-redis style). The daemon stops in stages, each
/// with its own signal: intake, then senders, then the inbox, then write-back.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    pub fn new() -> (watch::Sender<bool>, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (tx, Shutdown(rx))
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes when shutdown is requested.
    pub async fn wait(&mut self) {
        while !*self.0.borrow() {
            if self.0.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Parsed phone numbers by (field text, region); bounded.
type PhoneCache = HashMap<(String, phonenumber::country::Id), Result<PhoneNumber, PhoneError>>;

/// Most phone parses remembered.
const PHONE_CACHE_LIMIT: usize = 500_000;
/// A message queued to go later than this shows `queued until <time>` on its record.
const QUEUED_UNTIL_AFTER_MS: i64 = 60_000;

/// What a message said, for the interaction log: a template's name and parameters, or the
/// text.
fn describe_content(c: &MessageContent) -> String {
    match c {
        MessageContent::Template(_) => format!("template {}", c.readable_text()),
        _ => c.readable_text(),
    }
}

/// State shared by the loops.
pub struct EngineCtx {
    pub store: Store,
    pub config: Arc<Config>,
    pub rules: Arc<RuleSet>,
    pub clock: Arc<Clock>,
    pub health: Arc<Health>,
    /// The Prometheus metrics the loops count into (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Source-neutral settings of each source, by id.
    pub sources: HashMap<String, SourceSettings>,
    /// Wakes a provider's dispatcher when messages are queued.
    pub dispatch_wake: HashMap<String, Arc<Notify>>,
    /// Wakes the inbox processor when a webhook was stored.
    pub inbox_wake: Arc<Notify>,
    /// Wakes the flusher that writes a source's write-back (sources of one write group share one).
    pub flush_wake: HashMap<String, Arc<Notify>>,
    /// Wakes the timer loop when timers were planned.
    pub timers_wake: Arc<Notify>,
    /// Wakes the media loop when a person sent a file.
    pub media_wake: Arc<Notify>,
    /// Time zone of each source, for times written back.
    pub time_zones: RwLock<HashMap<String, chrono_tz::Tz>>,
    /// Until when each provider's sends are paused (it asked us to slow down), shared by its
    /// dispatcher and the inbox, which hears of throttling from status webhooks.
    pub provider_pauses: HashMap<String, Arc<Mutex<Option<tokio::time::Instant>>>>,
    /// Bumped on every opt-out, so dispatchers re-check contacts they read before it.
    pub opt_out_epoch: AtomicU64,
    phone_cache: Mutex<PhoneCache>,
    /// When this process started (Unix ms): in-doubt sends wait for the provider from here too.
    pub started_at: i64,
}

impl EngineCtx {
    /// `write_groups`: the source ids each writer carries.
    pub fn new(
        store: Store,
        config: Arc<Config>,
        rules: Arc<RuleSet>,
        clock: Arc<Clock>,
        write_groups: &[Vec<String>],
    ) -> Arc<Self> {
        let dispatch_wake = config.providers.iter().map(|p| (p.id().to_string(), Arc::new(Notify::new()))).collect();
        let mut flush_wake = HashMap::new();
        for group in write_groups {
            let n = Arc::new(Notify::new());
            for id in group {
                flush_wake.insert(id.clone(), Arc::clone(&n));
            }
        }
        let sources = config.sources.iter().map(|s| (s.id().to_string(), s.settings().clone())).collect();
        let provider_pauses =
            config.providers.iter().map(|p| (p.id().to_string(), Arc::new(Mutex::new(None)))).collect();
        let started_at = clock.now_ms();
        Arc::new(Self {
            store,
            config,
            rules,
            clock,
            health: Arc::new(Health::default()),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            sources,
            dispatch_wake,
            inbox_wake: Arc::new(Notify::new()),
            flush_wake,
            timers_wake: Arc::new(Notify::new()),
            media_wake: Arc::new(Notify::new()),
            time_zones: RwLock::new(HashMap::new()),
            provider_pauses,
            opt_out_epoch: AtomicU64::new(0),
            phone_cache: Mutex::new(HashMap::new()),
            started_at,
        })
    }

    /// Pauses a provider's sends for `d` (a longer pause already in force stays).
    pub fn pause_provider(&self, provider_id: &str, d: std::time::Duration) {
        if let Some(p) = self.provider_pauses.get(provider_id) {
            let mut p = p.lock().unwrap_or_else(PoisonError::into_inner);
            let until = tokio::time::Instant::now() + d;
            if p.is_none_or(|cur| cur < until) {
                *p = Some(until);
            }
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The time zone of the first configured source that has one (for pages people read).
    pub fn time_zones_first(&self) -> Option<chrono_tz::Tz> {
        let zones = self.time_zones.read().unwrap_or_else(PoisonError::into_inner);
        self.config.sources.iter().find_map(|s| zones.get(s.id()).copied())
    }

    pub fn wake_dispatcher(&self, provider_id: &str) {
        if let Some(n) = self.dispatch_wake.get(provider_id) {
            n.notify_one();
        }
    }

    pub fn wake_flusher(&self, source_id: &str) {
        if let Some(n) = self.flush_wake.get(source_id) {
            n.notify_one();
        }
    }

    /// Wakes the timer loop (new or moved timers).
    pub fn wake_timers(&self) {
        self.timers_wake.notify_one();
    }

    pub fn source(&self, source_id: &str) -> Option<&SourceSettings> {
        self.sources.get(source_id)
    }

    /// The source's time zone (UTC until the poller has read it).
    pub fn source_tz(&self, source_id: &str) -> chrono_tz::Tz {
        self.time_zones.read().unwrap_or_else(PoisonError::into_inner).get(source_id).copied().unwrap_or(chrono_tz::UTC)
    }

    pub fn set_source_tz(&self, source_id: &str, tz: chrono_tz::Tz) {
        self.time_zones.write().unwrap_or_else(PoisonError::into_inner).insert(source_id.to_string(), tz);
    }

    /// `2026-11-21 10:32:05` in the source's time zone (UTC until the zone is known).
    pub fn format_time(&self, source_id: &str, at_ms: i64) -> String {
        match self.source_tz(source_id).timestamp_millis_opt(at_ms).single() {
            Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
            None => String::new(),
        }
    }

    /// Fields that show a message's state on its record. `error`: `Some(text)` writes it,
    /// `Some("")` clears it, `None` leaves it.
    pub fn status_writes(
        &self,
        m: &OutboxMessage,
        state: MessageState,
        at_ms: i64,
        error: Option<&str>,
    ) -> Vec<FieldWrite> {
        self.record_status_writes(&m.source_id, &m.rule_id, &m.record_key, state, at_ms, error)
    }

    /// The same for a record and the rule whose message it is, without the message at hand.
    pub fn record_status_writes(
        &self,
        source_id: &str,
        rule_id: &str,
        key: &RecordKey,
        state: MessageState,
        at_ms: i64,
        error: Option<&str>,
    ) -> Vec<FieldWrite> {
        self.write_status(source_id, rule_id, key, state.as_str().to_string(), at_ms, error)
    }

    /// `queued` for a message just queued, or `queued until 2026-11-23 09:00` when it will wait
    /// more than a minute for its time (quiet hours, a reminder's hour), so the row does not
    /// look stuck. The time is in the zone the rule's hours are in, named when it is not the
    /// source's own (whose zone every other time on the row is in).
    pub fn queued_writes(
        &self,
        source_id: &str,
        rule_id: &str,
        key: &RecordKey,
        now_ms: i64,
        due_ms: i64,
    ) -> Vec<FieldWrite> {
        let source_tz = self.source_tz(source_id);
        let rule_tz = self
            .config
            .rules
            .iter()
            .find(|r| r.id == rule_id)
            .and_then(|r| r.time_zone)
            .or(self.config.defaults.time_zone)
            .unwrap_or(source_tz);
        let status = match rule_tz.timestamp_millis_opt(due_ms).single() {
            Some(due) if due_ms > now_ms + QUEUED_UNTIL_AFTER_MS => {
                let zone = if rule_tz == source_tz { String::new() } else { format!(" ({})", rule_tz.name()) };
                format!("{} until {}{zone}", MessageState::Queued.as_str(), due.format("%Y-%m-%d %H:%M"))
            }
            _ => MessageState::Queued.as_str().to_string(),
        };
        self.write_status(source_id, rule_id, key, status, now_ms, None)
    }

    /// The fields that show `rule_id`'s status on its records (status, its time, its error):
    /// its own, else its source's.
    fn status_fields(&self, source_id: &str, rule_id: &str) -> Vec<&String> {
        let (status, at, error) =
            match self.config.rules.iter().find(|r| r.id == rule_id).and_then(|r| r.write_back.as_ref()) {
                Some(w) => (&w.status, &w.status_at, &w.error),
                None => match self.source(source_id) {
                    Some(s) => (&s.write_back.status, &s.write_back.status_at, &s.write_back.error),
                    None => return Vec::new(),
                },
            };
        [status, at, error].into_iter().flatten().collect()
    }

    /// The status fields `m` may still write on its record: those no newer message for the
    /// record writes (the newest message owns shared status fields; a rule with fields of its
    /// own owns them alone).
    pub async fn owned_status_fields(
        &self,
        conn: &mut sqlx::SqliteConnection,
        m: &OutboxMessage,
    ) -> Result<Vec<String>, crate::store::StoreError> {
        let newer = crate::store::newer_rules_for_record(conn, m).await?;
        Ok(self.status_fields_not_taken(m, &newer))
    }

    /// `m`'s status fields that none of the `newer` rules (of later messages of its record)
    /// has taken over.
    pub fn status_fields_not_taken(&self, m: &OutboxMessage, newer: &[String]) -> Vec<String> {
        let taken: Vec<&String> = newer.iter().flat_map(|r| self.status_fields(&m.source_id, r)).collect();
        self.status_fields(&m.source_id, &m.rule_id).into_iter().filter(|f| !taken.contains(f)).cloned().collect()
    }

    /// [`Self::status_writes`] limited to the fields `m` still owns.
    pub async fn owned_status_writes(
        &self,
        conn: &mut sqlx::SqliteConnection,
        m: &OutboxMessage,
        state: MessageState,
        at_ms: i64,
        error: Option<&str>,
    ) -> Result<Vec<FieldWrite>, crate::store::StoreError> {
        let owned = self.owned_status_fields(conn, m).await?;
        Ok(self.status_writes(m, state, at_ms, error).into_iter().filter(|w| owned.contains(&w.field)).collect())
    }

    /// The status fields of `rule_id` (its own `write_back`, else its source's) set to
    /// `status` at `at_ms`, with `error` as in [`Self::status_writes`].
    fn write_status(
        &self,
        source_id: &str,
        rule_id: &str,
        key: &RecordKey,
        status: String,
        at_ms: i64,
        error: Option<&str>,
    ) -> Vec<FieldWrite> {
        let Some(settings) = self.source(source_id) else { return Vec::new() };
        let own = self.config.rules.iter().find(|r| r.id == rule_id).and_then(|r| r.write_back.as_ref());
        let (status_field, status_at_field, error_field) = match own {
            Some(w) => (&w.status, &w.status_at, &w.error),
            None => (&settings.write_back.status, &settings.write_back.status_at, &settings.write_back.error),
        };
        let mut out = Vec::new();
        let mut push = |field: &Option<String>, value: String| {
            if let Some(f) = field {
                out.push(FieldWrite {
                    source_id: source_id.to_string(),
                    target: WriteTarget::Record(key.clone()),
                    field: f.clone(),
                    value,
                });
            }
        };
        push(status_field, status);
        push(status_at_field, self.format_time(source_id, at_ms));
        if let Some(e) = error {
            push(error_field, e.to_string());
        }
        out
    }

    /// The interaction log entry of an outbound message, for sources that keep a log: its
    /// content and rule, its state with the time of each step, its error and the provider's
    /// id. Every change of the message rewrites the same entry (the queue coalesces).
    pub fn interaction_writes(
        &self,
        m: &OutboxMessage,
        state: MessageState,
        at_ms: i64,
        error: Option<&str>,
        provider_message_id: Option<&str>,
    ) -> Vec<FieldWrite> {
        if !self.source(&m.source_id).is_some_and(|s| s.logs_interactions) {
            return Vec::new();
        }
        let target = WriteTarget::Interaction {
            record: m.record_key.clone(),
            // The outbox id with its creation time: unique even across a new state file.
            entry: format!("out:{}-{}", m.id, m.created_at),
        };
        let time = self.format_time(&m.source_id, at_ms);
        let mut fields: Vec<(&str, String)> = vec![
            (interaction::DIRECTION, "outbound".into()),
            (interaction::CONTENT, describe_content(&m.content)),
            (interaction::RULE, m.rule_id.clone()),
            (interaction::STATUS, state.as_str().into()),
            (interaction::STATUS_AT, time.clone()),
        ];
        match state {
            MessageState::Sent => fields.push((interaction::SENT_AT, time)),
            MessageState::Delivered => fields.push((interaction::DELIVERED_AT, time)),
            MessageState::Read => fields.push((interaction::READ_AT, time)),
            _ => {}
        }
        if let Some(e) = error {
            fields.push((interaction::ERROR, e.to_string()));
        }
        if let Some(id) = provider_message_id.or(m.provider_message_id.as_deref()) {
            fields.push((interaction::MESSAGE_ID, id.to_string()));
        }
        fields
            .into_iter()
            .map(|(field, value)| FieldWrite {
                source_id: m.source_id.clone(),
                target: target.clone(),
                field: field.to_string(),
                value,
            })
            .collect()
    }

    /// The interaction log entry of a reply about a record.
    pub fn reply_log_writes(
        &self,
        source_id: &str,
        key: &RecordKey,
        provider_message_id: &str,
        text: &str,
        at_ms: i64,
    ) -> Vec<FieldWrite> {
        if !self.source(source_id).is_some_and(|s| s.logs_interactions) {
            return Vec::new();
        }
        let target = WriteTarget::Interaction { record: key.clone(), entry: format!("in:{provider_message_id}") };
        [
            (interaction::DIRECTION, "inbound".to_string()),
            (interaction::CONTENT, text.to_string()),
            (interaction::STATUS, "received".to_string()),
            (interaction::STATUS_AT, self.format_time(source_id, at_ms)),
            (interaction::MESSAGE_ID, provider_message_id.to_string()),
        ]
        .into_iter()
        .map(|(field, value)| FieldWrite {
            source_id: source_id.to_string(),
            target: target.clone(),
            field: field.to_string(),
            value,
        })
        .collect()
    }

    /// The error field of a record.
    pub fn error_write(&self, source_id: &str, target: WriteTarget, text: &str) -> Option<FieldWrite> {
        let field = self.source(source_id)?.write_back.error.clone()?;
        Some(FieldWrite { source_id: source_id.to_string(), target, field, value: text.to_string() })
    }

    pub fn time_context(
        &self,
        source_id: &str,
        record_tz: Option<chrono_tz::Tz>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> TimeContext<'_> {
        TimeContext {
            now,
            source_tz: self.source_tz(source_id),
            record_tz,
            defaults: &self.config.defaults,
            date_order: self.source(source_id).map(|s| s.dates.order).unwrap_or_default(),
        }
    }

    /// A record view whose phone parse is cached: campaigns and timers parse the same numbers
    /// over and over, and parsing is the dearest part of looking at a record.
    pub fn view(&self, settings: &SourceSettings, record: Record) -> RecordView {
        let raw = record.text(&settings.phone_field);
        let key = (raw, settings.default_region);
        let cached = self.phone_cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key).cloned();
        let phone = match cached {
            Some(p) => p,
            None => {
                let p = PhoneNumber::parse(&key.0, settings.default_region);
                let mut c = self.phone_cache.lock().unwrap_or_else(PoisonError::into_inner);
                if c.len() >= PHONE_CACHE_LIMIT {
                    c.clear();
                }
                c.insert(key, p.clone());
                p
            }
        };
        RecordView::with_phone(settings, record, phone)
    }

    /// Like [`EngineCtx::view`], for a record whose number the phone index already holds:
    /// that number was normalised by recado from this record's current field (the poller
    /// writes the index with the snapshot), so it is not parsed again. A record without one is
    /// parsed, which also gives the reason its number is not valid.
    pub fn view_indexed(&self, settings: &SourceSettings, record: Record, indexed_phone: Option<String>) -> RecordView {
        match indexed_phone {
            Some(e164) => RecordView::with_phone(settings, record, Ok(PhoneNumber::from_e164_unchecked(e164))),
            None => self.view(settings, record),
        }
    }
}

/// Says at debug level what was changed in a queued message's parameters so WhatsApp accepts
/// them (the message itself shows the result; `recado plan` too).
pub fn log_adjustments(intent: &crate::domain::Intent, message_id: i64) {
    if !intent.adjustments.is_empty() {
        tracing::debug!(rule = %intent.rule_id, record = %intent.record_key, message_id, adjustments = %intent.adjustments.join("; "), "parameters adjusted for WhatsApp");
    }
}

/// A record with what rules need to know about it besides its fields.
pub struct RecordView {
    pub record: Record,
    pub phone: Result<PhoneNumber, PhoneError>,
    pub consent: Option<bool>,
    /// From the source's time-zone field, when it holds a valid zone.
    pub tz: Option<chrono_tz::Tz>,
    pub dates: crate::expressions::DateStyle,
}

impl RecordView {
    pub fn new(settings: &SourceSettings, record: Record) -> Self {
        let phone = PhoneNumber::parse(&record.text(&settings.phone_field), settings.default_region);
        Self::with_phone(settings, record, phone)
    }

    pub fn with_phone(settings: &SourceSettings, record: Record, phone: Result<PhoneNumber, PhoneError>) -> Self {
        let consent = settings.consent.as_ref().map(|c| c.is_granted(&record.text(&c.field)));
        let tz = settings.time_zone_field.as_ref().and_then(|c| record.text(c).parse::<chrono_tz::Tz>().ok());
        Self { record, phone, consent, tz, dates: settings.dates.clone() }
    }

    pub fn facts<'a>(&'a self, gates: &'a [&'a str]) -> RecordFacts<'a> {
        RecordFacts { phone: &self.phone, consent: self.consent, gate_columns: gates, dates: &self.dates }
    }
}

/// Rebuilds a record from its stored snapshot (canonical text; numbers become numbers again
/// when that is exactly how they print, so `007` stays text).
pub fn record_from_snapshot(key: RecordKey, row: &SnapshotRow) -> Record {
    let fields = row
        .fields
        .iter()
        .map(|(k, v)| {
            let cell = match v.parse::<f64>() {
                _ if v.is_empty() => CellValue::Empty,
                Ok(n) if row.dates.contains(k) => CellValue::Date(n),
                Ok(n) if crate::domain::record::format_number(n) == *v => CellValue::Number(n),
                _ => CellValue::Text(v.as_str().into()),
            };
            (k.clone(), cell)
        })
        .collect();
    Record { key, fields }
}

/// How a conversation is stored after a turn at `now`: its reminder (once per conversation)
/// and its expiry come from the flow.
pub fn conversation_row(
    flow: &crate::flows::Flow,
    phone: &str,
    conversation: crate::flows::Conversation,
    provider_id: &str,
    record: Option<(String, RecordKey)>,
    started_at: i64,
    now: i64,
) -> crate::store::StoredConversation {
    let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4);
    let remind_at = flow.reminder.as_ref().filter(|_| !conversation.reminded).map(|(after, _)| now + ms(*after));
    crate::store::StoredConversation {
        phone: phone.to_string(),
        conversation,
        provider_id: provider_id.to_string(),
        record,
        started_at,
        updated_at: now,
        remind_at,
        expires_at: Some(now + ms(flow.expires_after)),
    }
}

/// Where a flow stands, for its `progress` field on the contact's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowProgress {
    Started,
    Completed,
    Expired,
}

/// The write of a flow's progress to the contact's record, when the flow has one for it.
pub fn progress_write(
    flow: &crate::flows::Flow,
    record: Option<&(String, RecordKey)>,
    stage: FlowProgress,
) -> Option<FieldWrite> {
    let p = flow.progress.as_ref()?;
    let (source_id, key) = record?;
    let value = match stage {
        FlowProgress::Started => p.started.clone(),
        FlowProgress::Completed => p.completed.clone(),
        FlowProgress::Expired => p.expired.clone(),
    }?;
    Some(FieldWrite {
        source_id: source_id.clone(),
        target: WriteTarget::Record(key.clone()),
        field: p.field.clone(),
        value,
    })
}

/// What a flow's texts and saved values may use: the contact's record's fields,
/// `contact.phone`, and `now` (local time in `defaults.time_zone`, else in the zone of the
/// record's source, else of the first source). Shared by conversations and hand-offs (a
/// template's parameters).
pub async fn turn_context(
    ctx: &EngineCtx,
    tx: &mut crate::store::Tx,
    phone: &str,
    record: Option<&(String, crate::domain::RecordKey)>,
    now: i64,
) -> Result<crate::flows::TurnContext, crate::store::StoreError> {
    let mut context = crate::flows::TurnContext::default();
    context.record.insert("contact".into(), serde_json::json!({ "phone": phone }));
    // The programme's zone when configured; else the record's source's, else the first
    // source's (a report's time in the tab of a municipality is its local time).
    let zone = ctx.config.defaults.time_zone.or_else(|| {
        let source = record.map(|(s, _)| s.as_str()).or(ctx.config.sources.first().map(|s| s.id()))?;
        Some(ctx.source_tz(source))
    });
    if let Some(t) = zone.and_then(|z| chrono::TimeZone::timestamp_millis_opt(&z, now).single()) {
        context.record.insert("now".into(), serde_json::Value::String(t.format("%Y-%m-%d %H:%M:%S").to_string()));
    }
    if let Some((source, key)) = record {
        if let Some(row) = crate::store::snapshot_row_of(tx, source, &key.0).await? {
            for (k, v) in row.fields {
                context.record.insert(k, serde_json::Value::String(v));
            }
        }
    }
    Ok(context)
}

/// A message of no record (the bot's, an automatic answer): its statuses are no rule's, and
/// its idempotency key says what it answers.
pub fn recordless_intent(
    rule_id: &str,
    provider_id: &str,
    idempotency_key: String,
    phone: &str,
    content: crate::domain::MessageContent,
) -> crate::domain::Intent {
    crate::domain::Intent {
        rule_id: rule_id.to_string(),
        source_id: String::new(),
        record_key: RecordKey(String::new()),
        provider_id: provider_id.to_string(),
        idempotency_key,
        phone: crate::domain::PhoneNumber::from_e164_unchecked(phone),
        content,
        fallback: None,
        adjustments: Vec::new(),
    }
}
