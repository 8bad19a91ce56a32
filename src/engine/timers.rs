//! Time as a trigger: durable timers of date rules and recurring (cron) campaigns.
//!
//! The poller plans timers (one per rule, record and offset) in the same transaction as the
//! records they belong to, with [`sync_timers`]. This loop sleeps until the earliest pending
//! timer or campaign occurrence (no polling of the store in a busy loop; woken when timers are
//! planned or the clock is moved), and when one is due re-reads the record as last committed,
//! checks it again (filter, consent, phone, date), and queues the message — or, if it was
//! missed by more than the rule's lateness while recado was not running, records it as
//! skipped with the reason on the record. A campaign walks the source page by page, each page
//! one transaction, idempotent per (rule, record, occurrence): a restart half-way neither
//! duplicates nor skips, and only records whose message was really queued show `queued`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tracing::{debug, error, info, warn};

use super::{record_from_snapshot, EngineCtx, RecordView, Shutdown};
use crate::config::{RuleConfig, Trigger};
use crate::domain::{MessageState, RecordKey};
use crate::rules::TimerPlan;
use crate::schedule::{too_late, CronSchedule};
use crate::store::{self, StoreError, TimerRow, Tx};

/// Records a campaign handles per transaction.
const CAMPAIGN_PAGE: i64 = 5000;

/// Brings the stored timers of these records of `source_id` in line with `plans` (the plans of
/// exactly these records). Timers no longer planned are cancelled. Returns how many timers
/// were created, moved or cancelled.
pub async fn sync_timers(
    tx: &mut Tx,
    source_id: &str,
    plans: &[TimerPlan],
    keys: &[&str],
    now: i64,
) -> Result<usize, StoreError> {
    let existing = store::timers_of(tx, source_id, Some(keys)).await?;
    let mut by_slot: HashMap<(String, String, String), TimerRow> =
        existing.into_iter().map(|t| ((t.rule_id.clone(), t.record_key.clone(), t.slot.clone()), t)).collect();
    let mut changes: Vec<TimerRow> = Vec::new();
    for plan in plans {
        let (p, late) = match plan {
            TimerPlan::Due(p) => (p, false),
            TimerPlan::TooLate(p) => (p, true),
            _ => continue,
        };
        let id = (p.rule_id.clone(), p.record_key.0.clone(), p.slot.clone());
        let row = |state: &str| TimerRow {
            rule_id: p.rule_id.clone(),
            source_id: source_id.to_string(),
            record_key: p.record_key.0.clone(),
            slot: p.slot.clone(),
            occurrence: p.occurrence.clone(),
            due_at: p.due_at.timestamp_millis(),
            state: state.to_string(),
        };
        match by_slot.remove(&id) {
            // A missed timer stays pending: the loop records it as skipped, with the reason.
            Some(e) if e.occurrence == p.occurrence && e.state == "pending" => {
                if e.due_at != p.due_at.timestamp_millis() && !late {
                    changes.push(row("pending"));
                }
            }
            Some(e) if e.occurrence == p.occurrence && e.state != "cancelled" => {}
            _ if late => {}
            _ => changes.push(row("pending")),
        }
    }
    for (_, mut e) in by_slot {
        if e.state == "pending" {
            e.state = "cancelled".into();
            changes.push(e);
        }
    }
    store::upsert_timers(tx, &changes, now).await?;
    Ok(changes.len())
}

pub struct TimerLoop {
    ctx: Arc<EngineCtx>,
}

impl TimerLoop {
    pub fn new(ctx: Arc<EngineCtx>) -> Self {
        Self { ctx }
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        info!("timer loop started");
        let health = "loop:timers";
        loop {
            if shutdown.is_set() {
                break;
            }
            let now = self.ctx.clock.now();
            let round = async {
                self.fire_due(now).await?;
                let next_campaign = self.run_campaigns(now, &shutdown).await?;
                let mut c = self.ctx.store.conn().await?;
                let next_timer = store::next_timer_at(&mut c).await?;
                Ok::<_, StoreError>([next_timer, next_campaign].into_iter().flatten().min())
            };
            let busy = self.ctx.health.busy(health);
            let outcome = round.await;
            drop(busy);
            let next = match outcome {
                Ok(n) => {
                    self.ctx.health.ok(health, "loop", self.ctx.now_ms());
                    n
                }
                Err(e) => {
                    error!("firing timers failed, retrying in 1 s: {e}");
                    self.ctx.health.failed(health, "loop", &e.to_string());
                    Some(self.ctx.now_ms() + 1_000)
                }
            };
            // Sleep until the next thing is due (woken early when timers are planned or the
            // clock moves); an hour at most so a clock change is noticed.
            let at = next.unwrap_or(i64::MAX);
            if at <= self.ctx.now_ms() {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = self.ctx.clock.sleep_until(at, Duration::from_secs(3600)) => {}
                _ = self.ctx.timers_wake.notified() => {}
                _ = shutdown.wait() => break,
            }
        }
        info!("timer loop stopped");
    }

    /// Fires every pending timer that is due. Public for tests.
    pub async fn fire_due(&self, now: DateTime<Utc>) -> Result<usize, StoreError> {
        let mut fired = 0;
        loop {
            let mut tx = self.ctx.store.begin().await?;
            let due = store::due_timers(&mut tx, now.timestamp_millis(), 500).await?;
            if due.is_empty() {
                return Ok(fired);
            }
            let mut sources = HashSet::new();
            let mut providers = HashSet::new();
            for t in &due {
                if let Some(provider) = self.fire_one(&mut tx, t, now).await? {
                    providers.insert(provider);
                    fired += 1;
                }
                sources.insert(t.source_id.clone());
            }
            tx.commit().await?;
            for p in providers {
                self.ctx.wake_dispatcher(&p);
            }
            for s in sources {
                self.ctx.wake_flusher(&s);
            }
        }
    }

    /// One due timer: re-check, then queue, skip or cancel. Returns the provider woken.
    async fn fire_one(&self, tx: &mut Tx, t: &TimerRow, now: DateTime<Utc>) -> Result<Option<String>, StoreError> {
        let now_ms = now.timestamp_millis();
        let set_state = |state: &str| {
            let mut row = t.clone();
            row.state = state.into();
            row
        };
        let (Some(settings), Some(rule)) = (self.ctx.source(&t.source_id), self.ctx.rules.rule(&t.rule_id)) else {
            store::upsert_timer(tx, &set_state("cancelled"), now_ms).await?;
            return Ok(None);
        };
        let Some(row) = store::snapshot_row_of(tx, &t.source_id, &t.record_key).await? else {
            info!(rule = %t.rule_id, record = %t.record_key, "reminder cancelled: the record is gone");
            store::upsert_timer(tx, &set_state("cancelled"), now_ms).await?;
            return Ok(None);
        };
        let view = self.ctx.view(settings, record_from_snapshot(RecordKey(t.record_key.clone()), &row));
        let time = self.ctx.time_context(&t.source_id, view.tz, now);
        let plans = self.ctx.rules.plan_timers(&t.source_id, &view.record, &view.facts(&[]), &time);
        let mine = plans.iter().find_map(|p| match p {
            TimerPlan::Due(p) | TimerPlan::TooLate(p)
                if p.rule_id == t.rule_id && p.slot == t.slot && p.occurrence == t.occurrence =>
            {
                Some(p)
            }
            _ => None,
        });
        let Some(plan) = mine else {
            info!(rule = %t.rule_id, record = %t.record_key, "reminder cancelled: the record no longer calls for it");
            store::upsert_timer(tx, &set_state("cancelled"), now_ms).await?;
            return Ok(None);
        };
        let lateness = rule.lateness.unwrap_or(self.ctx.config.defaults.lateness);
        if too_late(Utc.timestamp_millis_opt(t.due_at).single().unwrap_or(now), now, lateness) {
            let local = plan.due_at.with_timezone(&time.zone_for(rule)).format("%Y-%m-%d %H:%M");
            let reason = format!(
                "not sent: the reminder was due at {local} while recado was not running, more than {} ago",
                human(lateness)
            );
            warn!(rule = %t.rule_id, record = %t.record_key, "{reason}");
            store::upsert_timer(tx, &set_state("skipped"), now_ms).await?;
            let writes = self.ctx.record_status_writes(
                &t.source_id,
                &t.rule_id,
                &view.record.key,
                MessageState::Skipped,
                now_ms,
                Some(&reason),
            );
            store::queue_writes(tx, &writes).await?;
            return Ok(None);
        }
        self.queue(tx, rule, plan.occurrence_key(), &view, &time).await?;
        store::upsert_timer(tx, &set_state("fired"), now_ms).await?;
        Ok(Some(rule.provider.clone()))
    }

    /// Queues the message a rule wants for a record, or reports why not. True when queued.
    async fn queue(
        &self,
        tx: &mut Tx,
        rule: &RuleConfig,
        occurrence: String,
        view: &RecordView,
        time: &crate::rules::TimeContext<'_>,
    ) -> Result<bool, StoreError> {
        let now_ms = time.now.timestamp_millis();
        match self.ctx.rules.intent_for(&rule.id, &occurrence, &view.record, &view.facts(&[])) {
            None => Ok(false),
            Some(Err(reason)) => {
                info!(rule = %rule.id, record = %view.record.key, "{reason}");
                Ok(false)
            }
            Some(Ok(intent)) => {
                let due = time.send_at(rule).timestamp_millis();
                if let Some(id) = store::insert_intent(tx, &intent, due, now_ms).await? {
                    info!(rule = %intent.rule_id, record = %intent.record_key, to = %intent.phone, message_id = id, "message queued");
                    super::log_adjustments(&intent, id);
                    let writes =
                        self.ctx.queued_writes(&intent.source_id, &intent.rule_id, &intent.record_key, now_ms, due);
                    store::queue_writes(tx, &writes).await?;
                    return Ok(true);
                }
                Ok(false)
            }
        }
    }

    /// Runs campaign occurrences that are due. Returns when the next one is due.
    pub async fn run_campaigns(&self, now: DateTime<Utc>, shutdown: &Shutdown) -> Result<Option<i64>, StoreError> {
        let mut earliest: Option<i64> = None;
        let rules: Vec<RuleConfig> =
            self.ctx.config.rules.iter().filter(|r| matches!(r.trigger, Trigger::Cron { .. })).cloned().collect();
        for rule in rules {
            let Trigger::Cron { expr } = &rule.trigger else { continue };
            let Ok(schedule) = CronSchedule::parse(expr) else { continue };
            let tz = rule
                .time_zone
                .or(self.ctx.config.defaults.time_zone)
                .unwrap_or_else(|| self.ctx.source_tz(&rule.source));
            let mut conn = self.ctx.store.conn().await?;
            let stored = store::campaign_next(&mut conn, &rule.id).await?;
            drop(conn);
            let next = match stored {
                Some(n) => n,
                None => {
                    // First sight of this campaign: from now on (past occurrences are not run).
                    let Some(first) = schedule.next_after(now, tz) else { continue };
                    let mut tx = self.ctx.store.begin().await?;
                    store::set_campaign_next(&mut tx, &rule.id, first.timestamp_millis(), now.timestamp_millis())
                        .await?;
                    tx.commit().await?;
                    info!(rule = %rule.id, next = %first.with_timezone(&tz), "campaign scheduled");
                    first.timestamp_millis()
                }
            };
            if next > now.timestamp_millis() {
                earliest = Some(earliest.map_or(next, |e| e.min(next)));
                continue;
            }
            if shutdown.is_set() {
                return Ok(earliest);
            }
            let occurrence = Utc.timestamp_millis_opt(next).single().unwrap_or(now);
            let lateness = rule.lateness.unwrap_or(self.ctx.config.defaults.lateness);
            let late = too_late(occurrence, now, lateness);
            let n = self.run_occurrence(&rule, occurrence, late, now, tz).await?;
            // After a long downtime every missed occurrence is the same story: skip to the next
            // one from now rather than replaying each.
            let from = if late { now } else { occurrence };
            let following = schedule.next_after(from, tz).map(|t| t.timestamp_millis()).unwrap_or(i64::MAX);
            let mut tx = self.ctx.store.begin().await?;
            store::set_campaign_next(&mut tx, &rule.id, following, now.timestamp_millis()).await?;
            tx.commit().await?;
            if late {
                warn!(rule = %rule.id, occurrence = %occurrence.with_timezone(&tz), records = n, "campaign occurrence missed while recado was not running: skipped");
            } else {
                info!(rule = %rule.id, occurrence = %occurrence.with_timezone(&tz), queued = n, "campaign occurrence queued");
            }
            earliest = Some(earliest.map_or(following, |e| e.min(following)));
        }
        Ok(earliest)
    }

    /// Every record of the rule's source, page by page: queue (or, when `late`, write back the
    /// skip reason). Idempotent per (rule, record, occurrence).
    async fn run_occurrence(
        &self,
        rule: &RuleConfig,
        occurrence: DateTime<Utc>,
        late: bool,
        now: DateTime<Utc>,
        tz: chrono_tz::Tz,
    ) -> Result<usize, StoreError> {
        let Some(settings) = self.ctx.source(&rule.source) else { return Ok(0) };
        let occ_key = format!("cron@{}", occurrence.format("%Y-%m-%dT%H:%MZ"));
        let now_ms = now.timestamp_millis();
        let mut after = String::new();
        let mut count = 0;
        loop {
            let mut tx = self.ctx.store.begin().await?;
            let page = store::snapshot_page(&mut tx, &rule.source, &after, CAMPAIGN_PAGE).await?;
            let Some((last, _, _)) = page.last() else { break };
            after = last.0.clone();
            let mut intents = Vec::new();
            let mut missed = Vec::new();
            let mut writes = Vec::new();
            for (key, row, indexed_phone) in &page {
                let view =
                    self.ctx.view_indexed(settings, record_from_snapshot(key.clone(), row), indexed_phone.clone());
                match self.ctx.rules.intent_for(&rule.id, &occ_key, &view.record, &view.facts(&[])) {
                    Some(Ok(intent)) if late => missed.push(intent),
                    Some(Ok(intent)) => {
                        let due = self.ctx.time_context(&rule.source, view.tz, now).send_at(rule).timestamp_millis();
                        intents.push((intent, due));
                    }
                    // A record the campaign is for but cannot reach says why on its row, as
                    // a new row that cannot be messaged does.
                    Some(Err(reason)) => {
                        info!(rule = %rule.id, record = %key, "{reason}");
                        writes.extend(self.ctx.record_status_writes(
                            &rule.source,
                            &rule.id,
                            key,
                            MessageState::Skipped,
                            now_ms,
                            Some(&reason),
                        ));
                    }
                    None => {}
                }
            }
            // Missed, except for the records this occurrence did reach before an interruption:
            // their rows keep the state their message got to.
            if !missed.is_empty() {
                let keys: Vec<String> = missed.iter().map(|i| i.idempotency_key.clone()).collect();
                let reached = store::existing_idempotency_keys(&mut tx, &keys).await?;
                let reason = format!(
                    "not sent: the campaign of {} was missed while recado was not running",
                    occurrence.with_timezone(&tz).format("%Y-%m-%d %H:%M")
                );
                for intent in missed.iter().filter(|i| !reached.contains(&i.idempotency_key)) {
                    writes.extend(self.ctx.record_status_writes(
                        &rule.source,
                        &rule.id,
                        &intent.record_key,
                        MessageState::Skipped,
                        now_ms,
                        Some(&reason),
                    ));
                    count += 1;
                }
            }
            // Many rows per statement: a campaign is the one place where thousands of messages
            // are queued at once. Only messages really inserted show `queued`: an occurrence
            // run again after an interruption must not overwrite `read` with `queued`.
            let inserted: HashSet<String> =
                store::insert_intents(&mut tx, &intents, now_ms).await?.into_iter().collect();
            for (intent, due) in intents.iter().filter(|(i, _)| inserted.contains(&i.idempotency_key)) {
                if !intent.adjustments.is_empty() {
                    debug!(rule = %intent.rule_id, record = %intent.record_key, adjustments = %intent.adjustments.join("; "), "parameters adjusted for WhatsApp");
                }
                writes.extend(self.ctx.queued_writes(&rule.source, &rule.id, &intent.record_key, now_ms, *due));
            }
            count += inserted.len();
            store::queue_writes(&mut tx, &writes).await?;
            tx.commit().await?;
            if page.len() < CAMPAIGN_PAGE as usize {
                break;
            }
        }
        self.ctx.wake_dispatcher(&rule.provider);
        self.ctx.wake_flusher(&rule.source);
        Ok(count)
    }
}

fn human(d: Duration) -> String {
    let mins = d.as_secs() / 60;
    match (mins / 60, mins % 60) {
        (0, m) => format!("{m} min"),
        (h, 0) => format!("{h} h"),
        (h, m) => format!("{h} h {m} min"),
    }
}
