//! The source poller: one loop per source.
//!
//! Each tick: probe Drive's version (one request when nothing changed); otherwise read the tab,
//! turn rows into records, diff against the snapshot, evaluate rules, and commit the new
//! snapshot together with the queued messages, row issues and write-back in ONE transaction.
//! The in-memory snapshot moves only after that commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tracing::{debug, error, info, warn};

use super::timers::sync_timers;
use super::{now_ms, EngineCtx, Shutdown};
use crate::config::{FirstStart, GoogleSheetsConfig, Trigger};
use crate::diff::{diff, Change, Snapshot, SnapshotRow};
use crate::domain::{MessageState, RecordKey};
use crate::rules::{RecordFacts, TimerPlan};
use crate::sources::google_sheets::{GoogleError, GoogleSheets};
use crate::sources::{read_records, ColumnSpec, RowIssue};
use crate::store::{self, CellWrite, SourceState, WriteTarget};

/// What one poll did (for logs, the demo and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    pub unchanged: bool,
    pub baseline: bool,
    pub changes: usize,
    pub queued: usize,
    pub blocked: usize,
    pub new_issues: usize,
}

pub struct SheetPoller {
    cfg: GoogleSheetsConfig,
    client: GoogleSheets,
    ctx: Arc<EngineCtx>,
    snapshot: Snapshot,
    state: SourceState,
    /// Columns rules of this source refer to.
    required: Vec<String>,
    /// Last missing-columns complaint, so it is logged once.
    missing_reported: Option<Vec<String>>,
    /// Timers are planned for every record at the first full read after start (the
    /// configuration may have changed while stopped), then only for changed records.
    timers_synced: bool,
}

impl SheetPoller {
    pub async fn new(cfg: GoogleSheetsConfig, client: GoogleSheets, ctx: Arc<EngineCtx>) -> anyhow::Result<Self> {
        let mut conn = ctx.store.conn().await?;
        let state = store::source_state(&mut conn, &cfg.id).await?;
        let snapshot = store::load_snapshot(&mut conn, &cfg.id).await?;
        drop(conn);
        if let Some(tz) = state.time_zone.as_deref().and_then(|t| t.parse::<chrono_tz::Tz>().ok()) {
            if let Ok(mut m) = ctx.time_zones.write() {
                m.insert(cfg.id.clone(), tz);
            }
        }
        let mut required: Vec<String> = Vec::new();
        for r in ctx.rules.for_source(&cfg.id) {
            match &r.trigger {
                Trigger::Changed { field, .. } | Trigger::Date { field, .. } => required.push(field.clone()),
                Trigger::RowAdded | Trigger::Cron { .. } => {}
            }
        }
        if let Some(c) = &cfg.consent {
            required.push(c.column.clone());
        }
        required.sort();
        required.dedup();
        Ok(Self { cfg, client, ctx, snapshot, state, required, missing_reported: None, timers_synced: false })
    }

    pub async fn run(mut self, mut shutdown: Shutdown) {
        info!(source = %self.cfg.id, records = self.snapshot.len(), "poller started");
        loop {
            if shutdown.is_set() {
                break;
            }
            match self.poll_once().await {
                Ok(r) if !r.unchanged => debug!(source = %self.cfg.id, ?r, "poll done"),
                Ok(_) => {}
                Err(PollError::Google(GoogleError::RateLimited(e))) => {
                    warn!(source = %self.cfg.id, "poll delayed: {e}")
                }
                Err(e) => error!(source = %self.cfg.id, "poll failed: {e}"),
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                _ = shutdown.wait() => break,
            }
        }
        info!(source = %self.cfg.id, "poller stopped");
    }

    /// One poll. Public for tests and the `plan` command.
    pub async fn poll_once(&mut self) -> Result<PollReport, PollError> {
        let version = self.client.probe_version().await?;
        if self.timers_synced && self.state.baseline_done && self.state.version.as_deref() == Some(version.as_str()) {
            return Ok(PollReport { unchanged: true, ..Default::default() });
        }
        if self.state.time_zone.is_none() {
            let tz = self.client.time_zone().await?;
            if let Ok(parsed) = tz.parse::<chrono_tz::Tz>() {
                if let Ok(mut m) = self.ctx.time_zones.write() {
                    m.insert(self.cfg.id.clone(), parsed);
                }
            }
            self.state.time_zone = Some(tz);
        }
        let table = self.client.read_tab(&self.cfg.tab).await?;
        let wb_headers = self.cfg.write_back.headers();
        let required: Vec<&str> = self.required.iter().map(String::as_str).collect();
        let spec = ColumnSpec {
            key: &self.cfg.key_column,
            phone: &self.cfg.phone_column,
            write_back: &wb_headers,
            required: &required,
            default_region: self.cfg.default_region,
        };
        let read = match read_records(&table, &spec) {
            Ok(r) => r,
            Err(missing) => {
                if self.missing_reported.as_ref() != Some(&missing) {
                    error!(source = %self.cfg.id, tab = %self.cfg.tab, missing = ?missing, "columns missing from the header row: this source is paused until they exist");
                    self.missing_reported = Some(missing.clone());
                }
                return Err(PollError::MissingColumns(missing));
            }
        };
        self.missing_reported = None;
        if let Some(k) = table.column(&self.cfg.key_column) {
            if let Ok(mut m) = self.ctx.key_columns.write() {
                m.insert(self.cfg.id.clone(), k);
            }
        }

        let changes = diff(&self.snapshot, read.records.iter().map(|(r, _)| r));
        let baseline = !self.state.baseline_done && self.cfg.first_start == FirstStart::Baseline;
        let now = now_ms();

        // Rules (pure) before the transaction.
        let index: HashMap<&RecordKey, usize> =
            read.records.iter().enumerate().map(|(i, (r, _))| (&r.key, i)).collect();
        let gates: Vec<&str> =
            [Some(self.cfg.phone_column.as_str()), self.cfg.consent.as_ref().map(|c| c.column.as_str())]
                .into_iter()
                .flatten()
                .collect();
        let mut intents = Vec::new();
        let mut blocked = Vec::new();
        if !baseline {
            for change in &changes {
                let Some(&i) = index.get(change.key()) else { continue };
                let record = &read.records[i].0;
                let consent = self.cfg.consent.as_ref().map(|c| c.is_granted(&record.text(&c.column)));
                let Some(phone) = read.phones.get(&record.key) else { continue };
                let facts = RecordFacts { phone, consent, gate_columns: &gates };
                let out = self.ctx.rules.evaluate(&self.cfg.id, change, record, &facts);
                intents.extend(out.intents);
                blocked.extend(out.blocked);
            }
        }

        // Date rules: plan every record at the first read after start (the configuration may
        // have changed while stopped), then only the records that changed.
        let chrono_now = chrono::Utc::now();
        let mut plans = Vec::new();
        let mut issues = read.issues.clone();
        let has_date_rules = self.ctx.rules.for_source(&self.cfg.id).any(|r| matches!(r.trigger, Trigger::Date { .. }));
        let changed_keys: Vec<&str> = changes.iter().map(|c| c.key().0.as_str()).collect();
        let planned: HashSet<&str> =
            if self.timers_synced { changed_keys.iter().copied().collect() } else { HashSet::new() };
        let in_scope = |k: &RecordKey| !self.timers_synced || planned.contains(k.0.as_str());
        if has_date_rules {
            for (record, _) in read.records.iter().filter(|(r, _)| in_scope(&r.key)) {
                let Some(phone) = read.phones.get(&record.key) else { continue };
                let consent = self.cfg.consent.as_ref().map(|c| c.is_granted(&record.text(&c.column)));
                let facts = RecordFacts { phone, consent, gate_columns: &gates };
                let time = self.ctx.time_context(&self.cfg.id, self.record_tz(record), chrono_now);
                for plan in self.ctx.rules.plan_timers(&self.cfg.id, record, &facts, &time) {
                    if let TimerPlan::BadDate { rule_id, reason } = &plan {
                        issues.push(RowIssue {
                            issue_key: format!("{DATE_ISSUE}{rule_id}:{}:{reason}", record.key),
                            target: WriteTarget::Record(record.key.clone()),
                            record_key: record.key.0.clone(),
                            message: format!("date unreadable: {reason}"),
                        });
                    }
                    plans.push(plan);
                }
            }
        }

        let mut report = PollReport { baseline, changes: changes.len(), ..Default::default() };
        let mut tx = self.ctx.store.begin().await.map_err(anyhow::Error::from)?;
        let mut writes: Vec<CellWrite> = Vec::new();
        let timers_changed = match (has_date_rules, self.timers_synced) {
            (false, true) => 0,
            (_, true) => sync_timers(&mut tx, &self.cfg.id, &plans, Some(&changed_keys), now).await?,
            (_, false) => sync_timers(&mut tx, &self.cfg.id, &plans, None, now).await?,
        };

        // Row issues: new ones are logged and written once; fixed ones are cleared.
        let open: Vec<(String, String)> = store::issues(&mut tx, &self.cfg.id).await.map_err(anyhow::Error::from)?;
        let current: HashSet<&str> = issues.iter().map(|i| i.issue_key.as_str()).collect();
        for issue in &issues {
            if store::note_issue(&mut tx, &self.cfg.id, &issue.issue_key, &issue.record_key, &issue.message, now)
                .await
                .map_err(anyhow::Error::from)?
            {
                warn!(source = %self.cfg.id, record = %issue.record_key, "row problem: {}", issue.message);
                writes.extend(self.ctx.error_write(&self.cfg.id, issue.target.clone(), &issue.message));
                report.new_issues += 1;
            }
        }
        for (issue_key, record_key) in open {
            // A date problem of a record that was not planned this time (unchanged) still stands.
            let key = RecordKey(record_key.clone());
            let unplanned = issue_key.starts_with(DATE_ISSUE) && index.contains_key(&key) && !in_scope(&key);
            if !current.contains(issue_key.as_str()) && !unplanned {
                store::resolve_issue(&mut tx, &self.cfg.id, &issue_key).await.map_err(anyhow::Error::from)?;
                if !record_key.is_empty() && index.contains_key(&RecordKey(record_key.clone())) {
                    writes.extend(self.ctx.error_write(
                        &self.cfg.id,
                        WriteTarget::Record(RecordKey(record_key.clone())),
                        "",
                    ));
                }
                info!(source = %self.cfg.id, record = %record_key, "row problem fixed");
            }
        }

        let mut providers = HashSet::new();
        for intent in &intents {
            // Quiet hours: a message created now goes out when the window allows.
            let due = match (self.ctx.rules.rule(&intent.rule_id), index.get(&intent.record_key)) {
                (Some(rule), Some(&i)) => self
                    .ctx
                    .time_context(&self.cfg.id, self.record_tz(&read.records[i].0), chrono_now)
                    .send_at(rule)
                    .timestamp_millis(),
                _ => now,
            };
            if let Some(id) = store::insert_intent(&mut tx, intent, due, now).await? {
                info!(rule = %intent.rule_id, record = %intent.record_key, to = %intent.phone, message = id, "message queued");
                providers.insert(intent.provider_id.clone());
                report.queued += 1;
                writes.extend(self.ctx.record_status_writes(
                    &self.cfg.id,
                    &intent.record_key,
                    MessageState::Queued,
                    now,
                    None,
                ));
            }
        }
        for b in &blocked {
            warn!(rule = %b.rule_id, record = %b.record_key, "{}", b.reason);
            writes.extend(self.ctx.record_status_writes(
                &self.cfg.id,
                &b.record_key,
                MessageState::Skipped,
                now,
                Some(&b.reason),
            ));
            report.blocked += 1;
        }
        store::queue_writes(&mut tx, &writes).await.map_err(anyhow::Error::from)?;

        // The snapshot moves with its consequences: every row at the first read, then only the
        // rows that changed.
        let mut upserts: Vec<(RecordKey, SnapshotRow)> = Vec::new();
        let mut removals: Vec<&RecordKey> = Vec::new();
        if !self.state.baseline_done {
            upserts.extend(read.records.iter().map(|(r, _)| (r.key.clone(), SnapshotRow::of(r))));
        } else {
            for c in &changes {
                match c {
                    Change::Added(k) | Change::Changed { key: k, .. } => {
                        if let Some(&i) = index.get(k) {
                            upserts.push((k.clone(), SnapshotRow::of(&read.records[i].0)));
                        }
                    }
                    Change::Removed(k) => removals.push(k),
                }
            }
        }
        let upsert_refs: Vec<(&RecordKey, &SnapshotRow)> = upserts.iter().map(|(k, r)| (k, r)).collect();
        store::apply_snapshot_delta(&mut tx, &self.cfg.id, &upsert_refs, &removals)
            .await
            .map_err(anyhow::Error::from)?;
        let mut next_state = self.state.clone();
        next_state.baseline_done = true;
        next_state.version = Some(version);
        store::save_source_state(&mut tx, &self.cfg.id, &next_state, now).await.map_err(anyhow::Error::from)?;
        tx.commit().await.map_err(anyhow::Error::from)?;

        // Committed: now memory may follow.
        for k in removals {
            self.snapshot.remove(k);
        }
        let records = read.records.len();
        self.snapshot.extend(upserts);
        if baseline {
            info!(source = %self.cfg.id, records, "first read taken as the baseline: existing rows are not new");
        }
        self.state = next_state;
        self.timers_synced = true;
        if timers_changed > 0 {
            self.ctx.wake_timers();
        }
        for p in providers {
            self.ctx.wake_dispatcher(&p);
        }
        if !writes.is_empty() {
            self.ctx.wake_flusher(&self.cfg.id);
        }
        Ok(report)
    }
}

/// Prefix of the row-issue keys of unreadable dates.
const DATE_ISSUE: &str = "date:";

impl SheetPoller {
    /// The record's own time zone, from the source's time-zone column.
    fn record_tz(&self, record: &crate::domain::Record) -> Option<chrono_tz::Tz> {
        self.cfg.time_zone_column.as_ref().and_then(|c| record.text(c).parse().ok())
    }
}

/// Why a poll did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Google(#[from] GoogleError),
    #[error("columns missing from the header row: {}", .0.join(", "))]
    MissingColumns(Vec<String>),
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}
