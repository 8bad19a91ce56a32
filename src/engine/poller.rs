//! The source poller: one loop per source.
//!
//! Each round: probe the source (one cheap request when nothing changed); otherwise read it a part
//! at a time — a table's rows arrive in parts while its vendor is still answering — and for each
//! part, off the async runtime (it is CPU work): turn its rows into records, diff them against the
//! snapshot, evaluate the rules and plan date reminders; then commit the part and let it go, so no
//! read is ever held whole. A part is prepared while the one before it is committed, so the CPU
//! work and the database's overlap. A snapshot moves only with its consequences: each transaction
//! carries a bounded set of records' snapshot rows together with the messages, reminders,
//! write-back and phone index entries those records produced, so a large first read never holds the
//! database for long, and a crash between transactions loses nothing and repeats nothing (the
//! records not yet committed are simply seen again). The in-memory snapshot takes each part's
//! records as soon as it is planned (the next part's keys are checked against them); a commit that
//! fails has it loaded again from the store. Once every part is in, the last transaction removes
//! what the read no longer had (the snapshot marks what it had: [`Fingerprint::see`]), settles
//! record problems and commits the version read. A round is abandoned at once on shutdown.

use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::health::QuotaHealth;
use super::timers::sync_timers;
use super::{log_adjustments, EngineCtx, Shutdown};
use crate::config::Trigger;
use crate::diff::{
    added_or_changed, record_fingerprint, Change, Fingerprint, RowChange, Snapshot, SnapshotRow, StoredRows,
};
use crate::domain::{FieldWrite, Intent, MessageState, PhoneError, PhoneNumber, RecordKey, WriteTarget};
use crate::metrics::{SourceLabel, SourceResult};
use crate::rules::{Blocked, RecordFacts, TimerPlan};
use crate::sources::{
    phone_of, FirstStart, KeyLedger, ReadRecords, ReadSpec, RecordIssue, RecordsRead, RecordsReader, Source,
    SourceError, SourceRead, SourceSettings, TableParts, PHONE_ISSUE,
};
use crate::store::{self, SourceState, StoreError};

/// Records committed per transaction.
pub const RECORDS_PER_COMMIT: usize = 2_000;

/// Prefix of the issue keys of unreadable dates.
const DATE_ISSUE: &str = "date:";

/// What one poll did (for logs, the demo and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    pub unchanged: bool,
    pub baseline: bool,
    pub changes: usize,
    pub queued: usize,
    pub blocked: usize,
    pub new_issues: usize,
    /// Queued messages withdrawn because their record no longer calls for them.
    pub withdrawn: usize,
    pub commits: usize,
}

impl PollReport {
    /// Adds what one commit of the poll did.
    fn add(&mut self, part: &PollReport) {
        self.changes += part.changes;
        self.queued += part.queued;
        self.blocked += part.blocked;
        self.new_issues += part.new_issues;
        self.withdrawn += part.withdrawn;
        self.commits += part.commits;
    }
}

/// Why a poll did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("processing the read failed: {0}")]
    Processing(String),
}

pub struct SourcePoller {
    source: Arc<Source>,
    settings: SourceSettings,
    ctx: Arc<EngineCtx>,
    snapshot: Snapshot,
    state: SourceState,
    spec: ReadSpec,
    /// Last missing-fields complaint, so it is logged once.
    missing_reported: Option<Vec<String>>,
    /// Timers (and the phone index) are planned for every record at the first full read after
    /// start (the configuration may have changed while stopped), then only for changed records.
    synced: bool,
    /// A read failed after some of its parts were committed: their record problems were not
    /// settled, so the next read plans every record again (as a full pass does).
    replan: bool,
    /// A commit failed and memory was not loaded again from the store yet: it may hold
    /// records the store does not, so no read is taken before it is.
    stale: bool,
    /// The source's zone changed since the last run (a configured zone, or the org's): every
    /// date-time reads as another local time, so the next read is a baseline, not news.
    zone_changed: bool,
    health_name: String,
}

/// What a poll carries from one part of its read to the next.
struct Pass {
    /// What preparing each part needs (whether this is the baseline, a full pass, its `now`).
    work: PartWork,
    report: PollReport,
    /// Records read.
    records: usize,
    /// Problems found so far (the read's own, unreadable dates), settled when the read is over.
    issues: Vec<RecordIssue>,
    /// When not every record is planned: the keys of those that were.
    planned: HashSet<RecordKey>,
    phone_parses: usize,
}

/// What the last commit of a poll settles besides its records.
struct Last<'a> {
    /// The source's state once the read is committed (its version among it).
    state: SourceState,
    /// The read had every record (else only the changed ones: problems of the others stand).
    complete: bool,
    full_pass: bool,
    planned: &'a HashSet<RecordKey>,
}

/// A read on its way in.
enum Incoming {
    /// Converted by the source, taken as one part.
    Whole(Option<RecordsRead>),
    /// A table in parts, with the reader that turns them into records.
    Parts(TableParts, Option<RecordsReader>),
}

/// One part of a read.
enum Part {
    Converted(RecordsRead),
    Rows { first: usize, rows: Vec<Vec<crate::domain::CellValue>> },
}

/// The keys a read arriving in parts has had: those of the snapshot are marked in it
/// ([`Fingerprint::see`]), new ones of the part under way kept here until it is planned
/// (then the snapshot has them, marked).
struct SeenKeys<'a> {
    snapshot: &'a mut Snapshot,
    new: HashMap<String, usize>,
}

impl KeyLedger for SeenKeys<'_> {
    fn first_row(&mut self, key: &str, row: usize) -> Option<usize> {
        if let Some(fingerprint) = self.snapshot.get_mut(key) {
            if let Some(first) = fingerprint.seen_at() {
                return Some(first);
            }
            fingerprint.see(row);
            return None;
        }
        if let Some(&first) = self.new.get(key) {
            return Some(first);
        }
        self.new.insert(key.to_string(), row);
        None
    }
}

/// One record a commit writes: a record of the read, by position, or a removed one's key.
#[derive(Clone, Copy)]
enum Unit<'a> {
    Row(usize),
    Gone(&'a RecordKey),
}

impl<'a> Unit<'a> {
    fn key(&self, records: &'a [crate::domain::Record]) -> Option<&'a RecordKey> {
        match *self {
            Unit::Row(i) => records.get(i).map(|r| &r.key),
            Unit::Gone(k) => Some(k),
        }
    }
}

/// The pure part of a poll (of one part of its read), computed off the runtime.
#[derive(Default)]
struct Planned {
    /// How many differences the read had.
    changes: usize,
    baseline: bool,
    /// Messages the changes call for (each with when it is due), and why others are not sent.
    intents: Vec<(Intent, i64)>,
    blocked: Vec<Blocked>,
    /// Reminders due (or too late) of the records in `scope`, by position in `read.records`,
    /// in that order.
    plans: Vec<(usize, TimerPlan)>,
    issues: Vec<RecordIssue>,
    /// Per record of `read.records`: its reminders and phone index entry are (re)written this
    /// round (every record on a full pass, else the changed ones).
    in_scope: Vec<bool>,
    /// The read, kept until its snapshot rows are written (built a chunk at a time, so a
    /// baseline's records are not held twice), with each record's fingerprint.
    read: RecordsRead,
    /// Each record's phone, where it was parsed: every record on a full pass, else the new and
    /// moved ones (the only ones whose phone is looked at).
    phones: Vec<Option<Result<PhoneNumber, PhoneError>>>,
    hashes: Vec<u64>,
    /// Records whose snapshot row is (re)written: index into `read.records`, and whether the
    /// row counts as part of the baseline.
    upserts: Vec<(usize, bool)>,
    /// Removed records (the end of a read): their snapshot rows, reminders and phone index
    /// entries go.
    removals: Vec<RecordKey>,
    /// What staff asked in the hand-off inbox, when this source is it.
    staff: Vec<crate::handoff::StaffAction>,
}

impl SourcePoller {
    pub async fn new(source: Arc<Source>, ctx: Arc<EngineCtx>) -> Result<Self, StoreError> {
        let settings = source.settings().clone();
        let mut conn = ctx.store.conn().await?;
        let state = store::source_state(&mut conn, &settings.id).await?;
        let (snapshot, damaged) = store::load_snapshot(&mut conn, &settings.id).await?;
        drop(conn);
        if !damaged.is_empty() {
            warn!(source = %settings.id, records = damaged.len(), "some snapshot rows could not be read; those records will be looked at afresh");
        }
        if let Some(tz) = state.time_zone.as_deref().and_then(|t| t.parse::<chrono_tz::Tz>().ok()) {
            ctx.set_source_tz(&settings.id, tz);
        }
        let required = crate::rules::required_fields(ctx.rules.for_source(&settings.id), &settings);
        let mut referenced = crate::rules::referenced_paths(&ctx.config.rules, &settings.id);
        referenced.extend(settings.time_zone_field.iter().cloned());
        let health_name = format!("source:{}", settings.id);
        ctx.health.register(&health_name, "source");
        Ok(Self {
            source,
            settings,
            ctx,
            snapshot,
            state,
            spec: ReadSpec { required, referenced },
            missing_reported: None,
            synced: false,
            replan: false,
            stale: false,
            zone_changed: false,
            health_name,
        })
    }

    pub async fn run(mut self, mut shutdown: Shutdown) {
        let id = self.settings.id.clone();
        info!(source = %id, records = self.snapshot.len(), "poller started");
        // Polls refused in a row for a reason only a person can fix: each waits longer.
        let mut refusals = 0u32;
        loop {
            if shutdown.is_set() {
                break;
            }
            // Shutdown never waits for a poll: an abandoned round committed nothing, or whole
            // transactions only.
            let busy = self.ctx.health.busy(&self.health_name);
            let started = std::time::Instant::now();
            let outcome = tokio::select! {
                r = self.poll_once() => r,
                _ = shutdown.wait() => break,
            };
            drop(busy);
            self.count_poll(&id, &outcome, started.elapsed());
            let refused = matches!(
                outcome,
                Err(PollError::Source(
                    SourceError::Permanent(_) | SourceError::Denied(_) | SourceError::MissingFields(_)
                ))
            );
            refusals = if refused { refusals + 1 } else { 0 };
            match outcome {
                Ok(r) => {
                    self.ctx.health.ok(&self.health_name, "source", self.ctx.now_ms());
                    if !r.unchanged {
                        debug!(source = %id, took_ms = started.elapsed().as_millis() as u64, ?r, "poll done");
                    }
                }
                Err(PollError::Source(SourceError::RateLimited { detail, pause })) => {
                    warn!(source = %id, pause = ?pause, "poll delayed by the source's quota: {detail}");
                    self.ctx.health.ok(&self.health_name, "source", self.ctx.now_ms());
                }
                Err(e) => {
                    self.ctx.health.failed(&self.health_name, "source", &e.to_string());
                    error!(source = %id, "poll failed: {e}");
                }
            }
            let quota = self.source.quota();
            self.ctx.health.quota(
                &self.health_name,
                QuotaHealth {
                    per_minute: quota.per_minute,
                    rate_limit_strikes: quota.strikes,
                    paused_for_ms: quota.paused_for.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                    used: quota.used,
                    allowed: quota.allowed,
                    window: quota.window,
                },
            );
            // A source refusing for good (a permission, a field gone) is asked again less and
            // less often (up to eight poll intervals or a minute), not every poll.
            let wait = if refusals > 0 {
                super::flusher::refused_backoff(self.settings.poll_interval, refusals)
            } else {
                self.settings.poll_interval
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => break,
            }
        }
        info!(source = %id, "poller stopped");
    }

    /// Counts a poll and its duration for `/metrics`.
    fn count_poll(&self, id: &str, outcome: &Result<PollReport, PollError>, took: Duration) {
        let result = match outcome {
            Ok(_) => "ok",
            Err(PollError::Source(SourceError::RateLimited { .. })) => "rate_limited",
            Err(_) => "failed",
        };
        let m = &self.ctx.metrics;
        m.polls.get_or_create(&SourceResult { source: id.to_string(), result: result.to_string() }).inc();
        m.poll_seconds.get_or_create(&SourceLabel { source: id.to_string() }).observe(took.as_secs_f64());
    }

    /// One poll. Public for tests.
    pub async fn poll_once(&mut self) -> Result<PollReport, PollError> {
        if self.stale {
            self.reload().await?;
        }
        let probe = self.source.probe().await?;
        if self.synced && self.state.baseline_done && probe.version.is_some() && self.state.version == probe.version {
            return Ok(PollReport { unchanged: true, ..Default::default() });
        }
        // Asked again at each start: a zone configured since (or the org's, changed) counts.
        if self.state.time_zone.is_none() || !self.synced {
            let tz = self.source.time_zone().await?;
            if let Ok(parsed) = tz.parse::<chrono_tz::Tz>() {
                self.ctx.set_source_tz(&self.settings.id, parsed);
            }
            if self.state.time_zone.as_ref().is_some_and(|old| *old != tz) {
                warn!(source = %self.settings.id, from = ?self.state.time_zone, to = %tz, "the source's time zone changed: its next read is a baseline (date-times read as other local times are not changes; reminders are planned again)");
                self.zone_changed = true;
            }
            self.state.time_zone = Some(tz);
        }
        // The first poll after each start reads everything; then from the committed version.
        let since = if self.synced { self.state.version.clone() } else { None };
        let read = self.source.read(&self.spec, since.as_deref()).await.map_err(|e| self.refused(e))?;
        let SourceRead { records, complete, deleted, version } = read;
        let mut incoming = match records {
            ReadRecords::Whole(read) => Incoming::Whole(Some(read)),
            ReadRecords::Parts(table) => {
                let reader = table.reader(&self.settings, &self.spec).map_err(|e| self.refused(e))?;
                Incoming::Parts(table, Some(reader))
            }
        };
        self.missing_reported = None;
        let mut pass = Pass {
            work: PartWork {
                ctx: Arc::clone(&self.ctx),
                settings: self.settings.clone(),
                baseline: (!self.state.baseline_done && self.settings.first_start == FirstStart::Baseline)
                    || self.zone_changed,
                full_pass: !self.synced || self.replan,
                now: self.ctx.clock.now(),
            },
            report: PollReport::default(),
            records: 0,
            issues: Vec::new(),
            planned: HashSet::default(),
            phone_parses: 0,
        };
        pass.report.baseline = pass.work.baseline;
        // A new read: it has had no record yet.
        for fingerprint in self.snapshot.values_mut() {
            fingerprint.unsee();
        }
        let outcome = async {
            // Each part is prepared (CPU work, off the runtime) while the one before it is
            // committed (the database's work): at most two parts are held, never the read.
            let mut committing: Option<Planned> = None;
            loop {
                let snapshot = std::mem::take(&mut self.snapshot);
                let this = &*self;
                let commit = async {
                    match &committing {
                        Some(p) => this.commit(p, None, pass.work.now.timestamp_millis()).await.map(Some),
                        None => Ok(None),
                    }
                };
                let ((snapshot, next), committed) =
                    tokio::join!(prepare_next(&pass.work, &mut incoming, snapshot), commit);
                // The snapshot already holds the records of the part just committed (and of
                // the one just prepared): a commit that failed has it loaded again from the
                // store.
                self.snapshot = snapshot;
                if let Some(report) = committed? {
                    pass.report.add(&report);
                }
                let Some(mut planned) = next? else { break };
                pass.records += planned.read.records.len();
                pass.phone_parses += planned.phones.iter().filter(|p| p.is_some()).count();
                pass.issues.append(&mut planned.issues);
                if !pass.work.full_pass {
                    let records = planned.read.records.iter().zip(&planned.in_scope);
                    pass.planned.extend(records.filter(|(_, planned)| **planned).map(|(r, _)| r.key.clone()));
                }
                committing = Some(planned);
            }
            if let Incoming::Parts(_, Some(reader)) = incoming {
                pass.issues.extend(reader.finish());
            }
            self.finish(&mut pass, complete, &deleted, version.or(probe.version)).await
        };
        let outcome = outcome.await;
        // The committed parts' records look unchanged next time: only a full pass looks at
        // their phones and dates again, and settles their problems. A failed commit may have
        // committed some of its chunks (a whole read is one part of many chunks).
        let maybe_committed = pass.report.commits > 0 || matches!(outcome, Err(PollError::Store(_)));
        if outcome.is_err() && maybe_committed {
            self.replan = true;
        }
        self.ctx
            .metrics
            .phone_parses
            .get_or_create(&SourceLabel { source: self.settings.id.clone() })
            .inc_by(pass.phone_parses as u64);
        match outcome {
            Ok(()) => {
                self.synced = true;
                self.replan = false;
                self.zone_changed = false;
                Ok(pass.report)
            }
            // The parts committed stand (their records were read as they are); the rest is read
            // again next time, as the version did not move.
            Err(e @ PollError::Source(_)) => Err(e),
            Err(e) => {
                // A commit failed partway, or a job went with the snapshot: memory may hold
                // records the store does not have, so the store is the truth. Until it is
                // loaded again, no read is taken (such records would look unchanged).
                self.stale = true;
                if let Err(reload) = self.reload().await {
                    error!(source = %self.settings.id, "loading the snapshot again failed (tried again before the next read): {reload}");
                }
                Err(e)
            }
        }
    }

    /// Memory as the store has it: the snapshot and the source's state.
    async fn reload(&mut self) -> Result<(), StoreError> {
        let mut conn = self.ctx.store.conn().await?;
        self.snapshot = store::load_snapshot(&mut conn, &self.settings.id).await?.0;
        self.state = store::source_state(&mut conn, &self.settings.id).await?;
        self.stale = false;
        Ok(())
    }

    /// A read the source refused: fields missing are said once, until they change.
    fn refused(&mut self, e: SourceError) -> PollError {
        if let SourceError::MissingFields(missing) = &e {
            if self.missing_reported.as_ref() != Some(missing) {
                error!(source = %self.settings.id, missing = ?missing, "fields missing from the source: it is paused until they exist");
                self.missing_reported = Some(missing.clone());
            }
        }
        e.into()
    }

    /// The read is over: what it no longer had is removed, the record problems are settled,
    /// and the version read is committed with the last of it.
    async fn finish(
        &mut self,
        pass: &mut Pass,
        complete: bool,
        deleted: &[RecordKey],
        version: Option<String>,
    ) -> Result<(), PollError> {
        let removals = crate::diff::removed_keys(&self.snapshot, complete, deleted);
        let planned = Planned {
            changes: removals.len(),
            baseline: pass.work.baseline,
            removals,
            issues: std::mem::take(&mut pass.issues),
            ..Planned::default()
        };
        let mut state = self.state.clone();
        state.baseline_done = true;
        state.version = version;
        let last = Last { state, complete, full_pass: pass.work.full_pass, planned: &pass.planned };
        let report = self.commit(&planned, Some(&last), pass.work.now.timestamp_millis()).await?;
        pass.report.add(&report);
        self.state = last.state;
        for k in &planned.removals {
            self.snapshot.remove(k);
        }
        if pass.work.baseline {
            info!(source = %self.settings.id, records = pass.records, "first read taken as the baseline: existing records are not new");
        }
        Ok(())
    }

    /// Commits one part of a read (or, with `last`, its end), in chunks.
    async fn commit<'a>(&self, p: &'a Planned, last: Option<&Last<'_>>, now: i64) -> Result<PollReport, StoreError> {
        let id = self.settings.id.clone();
        let mut report = PollReport { baseline: p.baseline, changes: p.changes, ..Default::default() };
        // What each record of the read gets this round, by position (a byte each: a first read
        // of a million rows builds no map of keys).
        let records = &p.read.records;
        let mut upsert_of: Vec<Option<bool>> = vec![None; records.len()];
        for &(i, from_baseline) in &p.upserts {
            if let Some(slot) = upsert_of.get_mut(i) {
                *slot = Some(from_baseline);
            }
        }
        let in_scope = &p.in_scope;
        // The records this round writes, in read order, then the removed ones; committed in
        // chunks.
        let units: Vec<Unit> = (0..records.len())
            .filter(|&i| upsert_of[i].is_some() || in_scope.get(i).copied().unwrap_or(false))
            .map(Unit::Row)
            .chain(p.removals.iter().map(Unit::Gone))
            .collect();
        let key_of = |u: &Unit<'a>| u.key(records);
        let mut by_key_intents: HashMap<&RecordKey, Vec<&(Intent, i64)>> = HashMap::default();
        for i in &p.intents {
            by_key_intents.entry(&i.0.record_key).or_default().push(i);
        }
        let mut by_key_blocked: HashMap<&RecordKey, Vec<&Blocked>> = HashMap::default();
        for b in &p.blocked {
            by_key_blocked.entry(&b.record_key).or_default().push(b);
        }
        let has_date_rules = self.ctx.rules.for_source(&id).any(|r| matches!(r.trigger, Trigger::Date { .. }));
        // `p.plans` is in read order, as the units are: each chunk takes the next ones.
        let mut plans_left = p.plans.iter().peekable();
        let mut providers = HashSet::default();
        let mut wrote = false;
        let mut timers_changed = 0;

        // A part with nothing to write opens no transaction (a poll after one edit of a large
        // tab is hundreds of parts); the end of a read always commits.
        if units.is_empty() && last.is_none() {
            return Ok(report);
        }
        let chunks: Vec<&[Unit]> =
            if units.is_empty() { vec![&[]] } else { units.chunks(RECORDS_PER_COMMIT).collect() };
        let last_chunk = chunks.len() - 1;
        for (n, chunk) in chunks.into_iter().enumerate() {
            let mut tx = self.ctx.store.begin().await?;
            let mut writes: Vec<FieldWrite> = Vec::new();
            let chunk_keys: Vec<&RecordKey> = chunk.iter().filter_map(key_of).collect();
            // Reminders of the records in this chunk.
            let last_row = chunk.iter().filter_map(|u| if let Unit::Row(i) = u { Some(*i) } else { None }).next_back();
            let mut chunk_plans: Vec<TimerPlan> = Vec::new();
            while let Some((_, plan)) = plans_left.next_if(|(i, _)| last_row.is_some_and(|l| *i <= l)) {
                chunk_plans.push(plan.clone());
            }
            if has_date_rules {
                let chunk_planned: Vec<&str> = chunk
                    .iter()
                    .filter(|u| match u {
                        Unit::Row(i) => in_scope[*i],
                        Unit::Gone(_) => true,
                    })
                    .filter_map(key_of)
                    .map(|k| k.0.as_str())
                    .collect();
                if !chunk_planned.is_empty() {
                    timers_changed += sync_timers(&mut tx, &id, &chunk_plans, &chunk_planned, now).await?;
                }
            }
            // Queued messages of records that changed or went: withdrawn when the record no
            // longer calls for them (first, so a rule may queue the corrected one below).
            if !p.baseline {
                let mut touched_at: HashMap<&str, usize> = HashMap::default();
                let mut touched: Vec<&str> = Vec::new();
                for u in chunk {
                    match *u {
                        Unit::Row(i) if upsert_of[i].is_some() => {
                            if let Some(r) = records.get(i) {
                                touched_at.insert(r.key.0.as_str(), i);
                                touched.push(r.key.0.as_str());
                            }
                        }
                        Unit::Row(_) => {}
                        Unit::Gone(k) => touched.push(k.0.as_str()),
                    }
                }
                if !touched.is_empty() {
                    for m in store::queued_for_records(&mut tx, &id, &touched).await? {
                        let upserted = touched_at.get(m.record_key.0.as_str()).copied();
                        let reason = match upserted {
                            None => Some("not sent: the record was removed before it was sent"),
                            Some(i) => {
                                let Some(record) = records.get(i) else { continue };
                                let indexed = p
                                    .phones
                                    .get(i)
                                    .and_then(|phone| phone.as_ref()?.as_ref().ok())
                                    .map(|phone| phone.as_str().to_string());
                                let view = self.ctx.view_indexed(&self.settings, record.clone(), indexed);
                                if view.consent == Some(false) {
                                    Some("not sent: consent was withdrawn before it was sent")
                                } else if view.phone.as_ref().map_or(true, |p| *p != m.phone) {
                                    Some("not sent: the phone changed before it was sent")
                                } else {
                                    None
                                }
                            }
                        };
                        let Some(reason) = reason else { continue };
                        if store::withdraw_queued(&mut tx, m.id, reason, now).await? {
                            info!(message_id = m.id, rule = %m.rule_id, record = %m.record_key, "{reason}");
                            report.withdrawn += 1;
                            if upserted.is_some() {
                                writes.extend(self.ctx.status_writes(&m, MessageState::Skipped, now, Some(reason)));
                            }
                            writes.extend(self.ctx.interaction_writes(
                                &m,
                                MessageState::Skipped,
                                now,
                                Some(reason),
                                None,
                            ));
                        }
                    }
                }
            }
            // Messages: `queued` is written only for those actually inserted.
            for k in &chunk_keys {
                for (intent, due) in by_key_intents.get(*k).into_iter().flatten() {
                    if let Some(mid) = store::insert_intent(&mut tx, intent, *due, now).await? {
                        info!(rule = %intent.rule_id, record = %intent.record_key, to = %intent.phone, message_id = mid, "message queued");
                        log_adjustments(intent, mid);
                        providers.insert(intent.provider_id.clone());
                        report.queued += 1;
                        writes.extend(self.ctx.queued_writes(&id, &intent.rule_id, &intent.record_key, now, *due));
                    }
                }
                for b in by_key_blocked.get(*k).into_iter().flatten() {
                    warn!(rule = %b.rule_id, record = %b.record_key, "{}", b.reason);
                    writes.extend(self.ctx.record_status_writes(
                        &id,
                        &b.rule_id,
                        &b.record_key,
                        MessageState::Skipped,
                        now,
                        Some(&b.reason),
                    ));
                    report.blocked += 1;
                }
            }
            // Snapshot rows and the phone index.
            let rows: Vec<(RecordKey, SnapshotRow)> = chunk
                .iter()
                .filter_map(|u| {
                    let Unit::Row(i) = *u else { return None };
                    let from_baseline = (*upsert_of.get(i)?)?;
                    let record = records.get(i)?;
                    let mut row = SnapshotRow::with_hash(record, *p.hashes.get(i)?);
                    row.from_baseline = from_baseline;
                    Some((record.key.clone(), row))
                })
                .collect();
            store::upsert_snapshot_rows(&mut tx, &id, &rows).await?;
            let gone: Vec<RecordKey> =
                chunk.iter().filter_map(|u| if let Unit::Gone(k) = u { Some((*k).clone()) } else { None }).collect();
            store::delete_snapshot_rows(&mut tx, &id, &gone).await?;
            let index: Vec<(RecordKey, Option<String>)> = chunk
                .iter()
                .filter_map(|u| {
                    let Unit::Row(i) = *u else { return None };
                    if !in_scope.get(i).copied().unwrap_or(false) {
                        return None;
                    }
                    let phone = p.phones.get(i)?.as_ref()?.as_ref().ok().map(|phone| phone.as_str().to_string());
                    Some((records.get(i)?.key.clone(), phone))
                })
                .collect();
            store::set_contact_records(&mut tx, &id, &index).await?;
            // What staff asked in the hand-off inbox, with the records that show it.
            if let (Some(cfg), false) = (&self.ctx.config.handoff, p.staff.is_empty()) {
                let in_chunk: HashSet<&RecordKey> = chunk_keys.iter().copied().collect();
                let mut applied = super::handoff::Applied::default();
                for action in p.staff.iter().filter(|a| in_chunk.contains(a.key())) {
                    super::handoff::Handoffs { ctx: &self.ctx, cfg }
                        .staff_asked(&mut tx, action, now, &mut applied)
                        .await?;
                }
                writes.extend(applied.writes);
                providers.extend(applied.providers);
            }
            if let (true, Some(last)) = (n == last_chunk, last) {
                self.record_issues(&mut tx, p, last, &mut writes, &mut report, now).await?;
                store::save_source_state(&mut tx, &id, &last.state, now).await?;
                store::queue_writes(&mut tx, &writes).await?;
                tx.commit().await?;
            } else {
                store::queue_writes(&mut tx, &writes).await?;
                tx.commit().await?;
            }
            wrote |= !writes.is_empty();
            report.commits += 1;
        }
        if timers_changed > 0 {
            self.ctx.wake_timers();
        }
        for pr in providers {
            self.ctx.wake_dispatcher(&pr);
        }
        if wrote {
            self.ctx.wake_flusher(&id);
        }
        Ok(report)
    }

    /// Record problems: new ones are logged and written once; fixed ones are cleared.
    async fn record_issues(
        &self,
        tx: &mut store::Tx,
        p: &Planned,
        last: &Last<'_>,
        writes: &mut Vec<FieldWrite>,
        report: &mut PollReport,
        now: i64,
    ) -> Result<(), StoreError> {
        let id = &self.settings.id;
        let open = store::issues(tx, id).await?;
        let current: HashSet<&str> = p.issues.iter().map(|i| i.issue_key.as_str()).collect();
        // Whether the read had a record (the snapshot marks it), and whether its reminders were
        // planned this round.
        let present = |key: &RecordKey| self.snapshot.get(key).is_some_and(|f| f.seen_at().is_some());
        let planned = |key: &RecordKey| last.full_pass || last.planned.contains(key);
        for issue in &p.issues {
            if store::note_issue(tx, id, &issue.issue_key, &issue.record_key, &issue.message, now).await? {
                warn!(source = %id, record = %RecordKey::shown(&issue.record_key), "record problem: {}", issue.message);
                writes.extend(self.ctx.error_write(id, issue.target.clone(), &issue.message));
                report.new_issues += 1;
            }
        }
        for (issue_key, record_key) in open {
            let key = RecordKey(record_key.clone());
            // A date or phone problem of a record not planned this time (unchanged: its date was
            // not planned, its phone not parsed) still stands, and so
            // does any problem of a record an incremental read did not bring.
            let unplanned = (issue_key.starts_with(DATE_ISSUE) || issue_key.starts_with(PHONE_ISSUE))
                && present(&key)
                && !planned(&key);
            let unread = !last.complete && !present(&key) && !p.removals.contains(&key);
            if !current.contains(issue_key.as_str()) && !unplanned && !unread {
                store::resolve_issue(tx, id, &issue_key).await?;
                if !record_key.is_empty() && present(&key) {
                    writes.extend(self.ctx.error_write(id, WriteTarget::Record(key), ""));
                }
                info!(source = %id, record = %RecordKey::shown(&record_key), "record problem fixed");
            }
        }
        Ok(())
    }
}

/// What preparing a part of a read needs besides the part.
struct PartWork {
    ctx: Arc<EngineCtx>,
    settings: SourceSettings,
    /// The read is taken as the baseline: existing records are not new.
    baseline: bool,
    /// Every record's reminders and phone index entry are planned (the first read after start).
    full_pass: bool,
    /// The poll's time, the same for every part.
    now: chrono::DateTime<chrono::Utc>,
}

/// Takes the next part of the read and prepares it for its commit: turned into records (its
/// keys checked against the ones seen so far), diffed and planned, off the runtime. The
/// snapshot then holds the part's records, marked, so the next part's keys are checked against
/// them too. `None` once the read is over.
///
/// The snapshot comes back, but for a job that failed (it went with it): that error makes the
/// poll load it again from the store.
async fn prepare_next(
    work: &PartWork,
    incoming: &mut Incoming,
    snapshot: Snapshot,
) -> (Snapshot, Result<Option<Planned>, PollError>) {
    let (reader_slot, part) = match incoming {
        Incoming::Whole(read) => match read.take() {
            Some(read) => (None, Part::Converted(read)),
            None => return (snapshot, Ok(None)),
        },
        Incoming::Parts(table, reader) => match table.next().await {
            Ok(Some((first, rows))) => (Some(reader), Part::Rows { first, rows }),
            Ok(None) => return (snapshot, Ok(None)),
            Err(e) => return (snapshot, Err(e.into())),
        },
    };
    let lost = |e: tokio::task::JoinError| (Snapshot::default(), Err(PollError::Processing(e.to_string())));
    let baseline = work.baseline;
    let mut reader_slot = reader_slot;
    let mut reader_taken = reader_slot.as_mut().and_then(|slot| slot.take());
    // The records, every one's fingerprint, and which moved.
    let job = tokio::task::spawn_blocking(move || {
        let mut snapshot = snapshot;
        let read = match part {
            Part::Converted(read) => {
                for (record, &row) in read.records.iter().zip(&read.rows) {
                    if let Some(fingerprint) = snapshot.get_mut(&record.key) {
                        fingerprint.see(row);
                    }
                }
                read
            }
            Part::Rows { first, rows } => match reader_taken.as_mut() {
                Some(r) => r.push(rows, first, &mut SeenKeys { snapshot: &mut snapshot, new: HashMap::default() }),
                // Never so (the reader comes back with every part); were it lost, the
                // part's records must not read as absent (they would be removed).
                None => return Err(snapshot),
            },
        };
        let hashes: Vec<u64> = read.records.iter().map(record_fingerprint).collect();
        let moved = crate::diff::moved_rows(&snapshot, read.records.iter().zip(hashes.iter().copied()));
        // A baseline fires nothing, so it reads no stored row back (after a zone change,
        // nearly every fingerprint moved: no copy of every key).
        let moved_keys: Vec<RecordKey> = if baseline {
            Vec::new()
        } else {
            moved.iter().filter_map(|&i| read.records.get(i).map(|r| r.key.clone())).collect()
        };
        Ok((snapshot, reader_taken, read, hashes, moved, moved_keys))
    });
    let (snapshot, reader_back, read, hashes, moved, moved_keys) = match job.await {
        Ok(Ok(done)) => done,
        Ok(Err(snapshot)) => {
            return (snapshot, Err(PollError::Processing("a part of the read came without its reader".into())))
        }
        Err(e) => return lost(e),
    };
    if let Some(slot) = reader_slot {
        *slot = reader_back;
    }
    // The stored text of the moved records only: what they held is what changed from. (Not
    // of the part being committed meanwhile: a key is in one part of a read.)
    let stored = match stored_rows(work, &moved_keys).await {
        Ok(stored) => stored,
        Err(e) => return (snapshot, Err(e.into())),
    };
    work.ctx
        .metrics
        .snapshot_reads
        .get_or_create(&SourceLabel { source: work.settings.id.clone() })
        .inc_by(stored.len() as u64);
    let ctx = Arc::clone(&work.ctx);
    let settings = work.settings.clone();
    let (full_pass, now) = (work.full_pass, work.now);
    let job = tokio::task::spawn_blocking(move || {
        let (mut snapshot, planned) =
            plan(&ctx, &settings, snapshot, &stored, &moved, read, hashes, baseline, full_pass, now);
        // The snapshot follows at once, marked as read: the next part is prepared while this
        // one is committed.
        for &(i, from_baseline) in &planned.upserts {
            let (Some(record), Some(&hash), Some(&row)) =
                (planned.read.records.get(i), planned.hashes.get(i), planned.read.rows.get(i))
            else {
                continue;
            };
            let mut fingerprint = Fingerprint::new(hash, from_baseline, false);
            fingerprint.see(row);
            snapshot.insert(record.key.clone(), fingerprint);
        }
        (snapshot, planned)
    });
    match job.await {
        Ok((snapshot, planned)) => (snapshot, Ok(Some(planned))),
        Err(e) => lost(e),
    }
}

/// The stored rows of these records.
async fn stored_rows(work: &PartWork, keys: &[RecordKey]) -> Result<StoredRows, StoreError> {
    if keys.is_empty() {
        return Ok(StoredRows::default());
    }
    let mut conn = work.ctx.store.conn().await?;
    store::snapshot_rows_of(&mut conn, &work.settings.id, keys).await
}

/// The pure part of a poll: diff, rules, reminders, snapshot delta (runs off the runtime).
#[allow(clippy::too_many_arguments)]
fn plan(
    ctx: &EngineCtx,
    settings: &SourceSettings,
    snapshot: Snapshot,
    stored: &StoredRows,
    moved: &[usize],
    read: RecordsRead,
    hashes: Vec<u64>,
    baseline: bool,
    full_pass: bool,
    now: chrono::DateTime<chrono::Utc>,
) -> (Snapshot, Planned) {
    let id = settings.id.as_str();
    let records = &read.records;
    let changes = added_or_changed(&snapshot, stored, records.iter().zip(hashes.iter().copied()));
    // Which records of the read changed, by position (a byte each, not a set of keys).
    let mut changed = vec![false; records.len()];
    for i in changes.iter().map(RowChange::row) {
        if let Some(c) = changed.get_mut(i) {
            *c = true;
        }
    }
    // Phones are parsed only where they are looked at (parsing is the dearest part of a
    // record): every record's on a full pass, else the new, changed and moved ones' (a moved
    // record's snapshot row is rewritten, and its queued messages looked at).
    let mut phone_issues = Vec::new();
    let phones: Vec<Option<Result<PhoneNumber, PhoneError>>> = records
        .iter()
        .enumerate()
        .map(|(i, record)| {
            let wanted = full_pass || changed[i] || moved.binary_search(&i).is_ok();
            wanted.then(|| {
                let (phone, issue) = phone_of(record, &settings.phone_field, settings.default_region);
                phone_issues.extend(issue);
                phone
            })
        })
        .collect();
    let gates: Vec<&str> = [Some(settings.phone_field.as_str()), settings.consent.as_ref().map(|c| c.field.as_str())]
        .into_iter()
        .flatten()
        .collect();
    let consent_of = |r: &crate::domain::Record| settings.consent.as_ref().map(|c| c.is_granted(&r.text(&c.field)));
    let record_tz = |r: &crate::domain::Record| {
        settings.time_zone_field.as_ref().and_then(|c| r.text(c).parse::<chrono_tz::Tz>().ok())
    };
    let now_ms = now.timestamp_millis();

    let mut intents = Vec::new();
    let mut blocked = Vec::new();
    // The changes as rules and the hand-off inbox see them (none on a baseline: it fires
    // nothing, and a first read of a million rows would be a million copies of keys).
    let mut seen: Vec<Change> = Vec::new();
    let mut seen_at: HashMap<&RecordKey, usize> = HashMap::default();
    if !baseline {
        for row_change in &changes {
            let Some(change) = row_change.change(|i| records.get(i)) else { continue };
            seen.push(change);
            let i = row_change.row();
            let phone = phones.get(i).and_then(Option::as_ref);
            let (Some(record), Some(phone), Some(change)) = (records.get(i), phone, seen.last()) else {
                continue;
            };
            seen_at.insert(&record.key, i);
            // Its copy was erased (`recado forget`): what changed since cannot be told.
            if snapshot.get(change.key()).is_some_and(|row| row.erased) {
                continue;
            }
            // A record of the first read was never news: a corrected phone or a consent given
            // later does not send it the welcome meant for new records.
            let gate_columns: &[&str] =
                if snapshot.get(change.key()).is_some_and(|row| row.from_baseline) { &[] } else { &gates };
            let facts = RecordFacts { phone, consent: consent_of(record), gate_columns, dates: &settings.dates };
            let out = ctx.rules.evaluate(id, change, record, &facts);
            for intent in out.intents {
                // Quiet hours: a message created now goes out when the window allows.
                let due = match ctx.rules.rule(&intent.rule_id) {
                    Some(rule) => ctx.time_context(id, record_tz(record), now).send_at(rule).timestamp_millis(),
                    None => now_ms,
                };
                intents.push((intent, due));
            }
            blocked.extend(out.blocked);
        }
    }

    // Reminders and the phone index: every record on a full pass, then the changed ones.
    let in_scope: Vec<bool> = if full_pass { vec![true; records.len()] } else { changed.clone() };
    let mut plans = Vec::new();
    let mut issues = read.issues.clone();
    issues.append(&mut phone_issues);
    let has_date_rules = ctx.rules.for_source(id).any(|r| matches!(r.trigger, Trigger::Date { .. }));
    let planned = in_scope.iter().enumerate().filter(|&(_, &planned)| planned && has_date_rules);
    for (i, _) in planned {
        let (Some(record), Some(phone)) = (records.get(i), phones.get(i).and_then(Option::as_ref)) else { continue };
        let facts = RecordFacts { phone, consent: consent_of(record), gate_columns: &gates, dates: &settings.dates };
        let time = ctx.time_context(id, record_tz(record), now);
        for plan in ctx.rules.plan_timers(id, record, &facts, &time) {
            match plan {
                TimerPlan::BadDate { rule_id, reason } => issues.push(RecordIssue {
                    issue_key: format!("{DATE_ISSUE}{rule_id}:{}:{reason}", record.key.0),
                    target: WriteTarget::Record(record.key.clone()),
                    record_key: record.key.0.clone(),
                    message: format!("date unreadable: {reason}"),
                }),
                TimerPlan::Due(_) | TimerPlan::TooLate(_) => plans.push((i, plan)),
                TimerPlan::Ineligible { .. } => {}
            }
        }
    }

    // The snapshot moves with the changes (at the first read every record is added).
    let mut upserts: Vec<(usize, bool)> = Vec::new();
    for c in &changes {
        match c {
            RowChange::Added(i) => upserts.push((*i, baseline)),
            RowChange::Changed(i, _) => {
                let from_baseline =
                    records.get(*i).and_then(|r| snapshot.get(&r.key)).is_some_and(|old| old.from_baseline);
                upserts.push((*i, from_baseline));
            }
        }
    }
    // Records whose fingerprint moved without a field changing (a column added, empty): the
    // stored fingerprint follows, or every later poll would read their rows back again.
    for &i in moved.iter().filter(|&&i| !changed.get(i).copied().unwrap_or(true)) {
        if let Some(old) = records.get(i).and_then(|r| snapshot.get(&r.key)).filter(|old| !old.erased) {
            upserts.push((i, old.from_baseline));
        }
    }
    // Copies `recado forget` erased of records that did not change: a full read puts them
    // back as they are (the first read after the daemon starts again is one).
    if full_pass {
        for (i, r) in records.iter().enumerate().filter(|(i, _)| !changed[*i]) {
            if let Some(old) = snapshot.get(&r.key).filter(|old| old.erased) {
                upserts.push((i, old.from_baseline));
            }
        }
    }
    let staff = match &ctx.config.handoff {
        Some(cfg) if cfg.inbox == id && !baseline => {
            crate::handoff::staff_actions(cfg, &seen, |k| seen_at.get(k).and_then(|&i| records.get(i)))
        }
        _ => Vec::new(),
    };
    drop(seen_at);
    (
        snapshot,
        Planned {
            changes: changes.len(),
            baseline,
            intents,
            blocked,
            plans,
            issues,
            in_scope,
            read,
            phones,
            hashes,
            upserts,
            removals: Vec::new(),
            staff,
        },
    )
}
