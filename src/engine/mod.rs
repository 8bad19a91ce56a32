//! The loops that connect sources, the store and providers.
//!
//! * [`poller`]: per source, probe → read → diff → rules → one transaction (snapshot + intents).
//! * [`dispatcher`]: per provider, due outbox messages → policy checks → throughput budget →
//!   `sending` committed → HTTP → `sent` or classified error.
//! * [`inbox`]: verified webhook bodies from the store → status transitions, replies, opt-outs.
//! * [`flusher`]: per spreadsheet, the coalesced write-back queue → one key read + one write.
//!
//! Every loop is `run(self, shutdown)`, started from `app`, and stops when [`Shutdown`] fires.

pub mod dispatcher;
pub mod flusher;
pub mod inbox;
pub mod poller;
pub mod timers;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use chrono::TimeZone;
use tokio::sync::{watch, Notify};

use crate::config::{Config, SourceConfig, WriteBackColumns};
use crate::domain::MessageState;
use crate::rules::RuleSet;
use crate::store::{CellWrite, OutboxMessage, Store, WriteTarget};

/// Milliseconds since the Unix epoch, from the system clock (the edges read the clock; the
/// core gets `now` passed in).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The shutdown signal every loop listens to (mini-redis style).
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

/// State shared by the loops.
pub struct EngineCtx {
    pub store: Store,
    pub config: Arc<Config>,
    pub rules: Arc<RuleSet>,
    /// Wakes a provider's dispatcher when messages are queued.
    pub dispatch_wake: HashMap<String, Arc<Notify>>,
    /// Wakes the inbox processor when a webhook was stored.
    pub inbox_wake: Arc<Notify>,
    /// Wakes a spreadsheet's flusher (by source id) when write-back was queued.
    pub flush_wake: HashMap<String, Arc<Notify>>,
    /// Time zone of each source (spreadsheet), for the times written back.
    pub time_zones: RwLock<HashMap<String, chrono_tz::Tz>>,
    /// Column position of each source's key column, learnt by the poller, used by the flusher
    /// to read only that column.
    pub key_columns: RwLock<HashMap<String, usize>>,
    /// Bumped on every opt-out, so dispatchers re-check contacts they read before it.
    pub opt_out_epoch: AtomicU64,
    /// Wakes the timer loop when timers were planned.
    pub timers_wake: Arc<Notify>,
    /// Parsed phone numbers by (cell text, region); bounded.
    pub phone_cache: std::sync::Mutex<PhoneCache>,
}

type PhoneCache =
    HashMap<(String, phonenumber::country::Id), Result<crate::domain::PhoneNumber, crate::domain::PhoneError>>;

impl EngineCtx {
    pub fn new(store: Store, config: Arc<Config>, rules: Arc<RuleSet>) -> Arc<Self> {
        let dispatch_wake = config.providers.iter().map(|p| (p.id().to_string(), Arc::new(Notify::new()))).collect();
        // One flusher per spreadsheet: its tabs share one wake-up.
        let mut by_sheet: HashMap<String, Arc<Notify>> = HashMap::new();
        let flush_wake = config
            .sources
            .iter()
            .map(|s| {
                let SourceConfig::GoogleSheets(g) = s;
                (s.id().to_string(), by_sheet.entry(g.spreadsheet_id.clone()).or_default().clone())
            })
            .collect();
        Arc::new(Self {
            store,
            config,
            rules,
            dispatch_wake,
            inbox_wake: Arc::new(Notify::new()),
            flush_wake,
            time_zones: RwLock::new(HashMap::new()),
            key_columns: RwLock::new(HashMap::new()),
            opt_out_epoch: AtomicU64::new(0),
            timers_wake: Arc::new(Notify::new()),
            phone_cache: std::sync::Mutex::new(HashMap::new()),
        })
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

    fn source(&self, source_id: &str) -> Option<&SourceConfig> {
        self.config.sources.iter().find(|s| s.id() == source_id)
    }

    pub fn write_back_columns(&self, source_id: &str) -> WriteBackColumns {
        match self.source(source_id) {
            Some(SourceConfig::GoogleSheets(g)) => g.write_back.clone(),
            None => WriteBackColumns::default(),
        }
    }

    /// `2026-11-21 10:32:05` in the source's time zone (UTC until the zone is known).
    pub fn format_time(&self, source_id: &str, at_ms: i64) -> String {
        let tz = self.time_zones.read().ok().and_then(|m| m.get(source_id).copied()).unwrap_or(chrono_tz::UTC);
        match tz.timestamp_millis_opt(at_ms).single() {
            Some(t) => t.format("%Y-%m-%d %H:%M:%S").to_string(),
            None => String::new(),
        }
    }

    /// Cells that show a message's state on its row. `error`: `Some(text)` writes it,
    /// `Some("")` clears it, `None` leaves it.
    pub fn status_writes(
        &self,
        m: &OutboxMessage,
        state: MessageState,
        at_ms: i64,
        error: Option<&str>,
    ) -> Vec<CellWrite> {
        self.record_status_writes(&m.source_id, &m.record_key, state, at_ms, error)
    }

    /// The same for a record, without the message at hand.
    pub fn record_status_writes(
        &self,
        source_id: &str,
        key: &crate::domain::RecordKey,
        state: MessageState,
        at_ms: i64,
        error: Option<&str>,
    ) -> Vec<CellWrite> {
        let Some(cfg) = self.sheet_config(source_id) else { return Vec::new() };
        let cols = &cfg.write_back;
        let target = WriteTarget::Record(key.clone());
        let mut out = Vec::new();
        let mut push = |col: &Option<String>, value: String| {
            if let Some(c) = col {
                out.push(CellWrite {
                    source_id: source_id.to_string(),
                    target: target.clone(),
                    column: c.clone(),
                    value,
                });
            }
        };
        push(&cols.status, state.as_str().to_string());
        push(&cols.status_at, self.format_time(source_id, at_ms));
        if let Some(e) = error {
            push(&cols.error, e.to_string());
        }
        out
    }

    /// The error cell of a row.
    pub fn error_write(&self, source_id: &str, target: WriteTarget, text: &str) -> Option<CellWrite> {
        self.write_back_columns(source_id).error.map(|column| CellWrite {
            source_id: source_id.to_string(),
            target,
            column,
            value: text.to_string(),
        })
    }
}

/// A record with what rules need to know about it besides its fields.
pub struct RecordView {
    pub record: crate::domain::Record,
    pub phone: Result<crate::domain::PhoneNumber, crate::domain::PhoneError>,
    pub consent: Option<bool>,
    /// From the source's time-zone column, when it holds a valid zone.
    pub tz: Option<chrono_tz::Tz>,
}

impl RecordView {
    pub fn new(cfg: &crate::config::GoogleSheetsConfig, record: crate::domain::Record) -> Self {
        let phone = crate::domain::PhoneNumber::parse(&record.text(&cfg.phone_column), cfg.default_region);
        Self::with_phone(cfg, record, phone)
    }

    fn with_phone(
        cfg: &crate::config::GoogleSheetsConfig,
        record: crate::domain::Record,
        phone: Result<crate::domain::PhoneNumber, crate::domain::PhoneError>,
    ) -> Self {
        let consent = cfg.consent.as_ref().map(|c| c.is_granted(&record.text(&c.column)));
        let tz = cfg.time_zone_column.as_ref().and_then(|c| record.text(c).parse::<chrono_tz::Tz>().ok());
        Self { record, phone, consent, tz }
    }

    pub fn facts<'a>(&'a self, gates: &'a [&'a str]) -> crate::rules::RecordFacts<'a> {
        crate::rules::RecordFacts { phone: &self.phone, consent: self.consent, gate_columns: gates }
    }
}

/// Rebuilds a record from its stored snapshot (canonical text; numbers become numbers again
/// when that is exactly how they print, so `007` stays text).
pub fn record_from_snapshot(key: crate::domain::RecordKey, row: &crate::diff::SnapshotRow) -> crate::domain::Record {
    use crate::domain::{CellValue, Record};
    let fields = row
        .fields
        .iter()
        .map(|(k, v)| {
            let cell = match v.parse::<f64>() {
                _ if v.is_empty() => CellValue::Empty,
                Ok(n) if crate::domain::record::format_number(n) == *v => CellValue::Number(n),
                _ => CellValue::Text(v.clone()),
            };
            (k.clone(), cell)
        })
        .collect();
    Record { key, fields }
}

impl EngineCtx {
    pub fn sheet_config(&self, source_id: &str) -> Option<&crate::config::GoogleSheetsConfig> {
        self.source(source_id).map(|s| {
            let SourceConfig::GoogleSheets(g) = s;
            g
        })
    }

    /// The spreadsheet's time zone (UTC until the poller has read it).
    pub fn source_tz(&self, source_id: &str) -> chrono_tz::Tz {
        self.time_zones.read().ok().and_then(|m| m.get(source_id).copied()).unwrap_or(chrono_tz::UTC)
    }

    pub fn time_context(
        &self,
        source_id: &str,
        record_tz: Option<chrono_tz::Tz>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> crate::rules::TimeContext<'_> {
        crate::rules::TimeContext {
            now,
            source_tz: self.source_tz(source_id),
            record_tz,
            defaults: &self.config.defaults,
            date_order: self.sheet_config(source_id).map(|g| g.date_order).unwrap_or_default(),
        }
    }

    /// A record view whose phone parse is cached: campaigns and timers parse the same numbers
    /// over and over, and parsing is the dearest part of looking at a record.
    pub fn view(&self, cfg: &crate::config::GoogleSheetsConfig, record: crate::domain::Record) -> RecordView {
        let raw = record.text(&cfg.phone_column);
        let cached = self.phone_cache.lock().ok().and_then(|c| c.get(&(raw.clone(), cfg.default_region)).cloned());
        let phone = match cached {
            Some(p) => p,
            None => {
                let p = crate::domain::PhoneNumber::parse(&raw, cfg.default_region);
                if let Ok(mut c) = self.phone_cache.lock() {
                    if c.len() > 500_000 {
                        c.clear();
                    }
                    c.insert((raw, cfg.default_region), p.clone());
                }
                p
            }
        };
        RecordView::with_phone(cfg, record, phone)
    }

    /// Wakes the timer loop (new or moved timers).
    pub fn wake_timers(&self) {
        self.timers_wake.notify_one();
    }
}
