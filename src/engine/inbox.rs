//! The inbox processor: applies stored webhook deliveries, oldest first, a batch a transaction.
//!
//! Statuses move a message forward only (duplicates and late arrivals are ignored,
//! de-duplicated by provider message id and status). A `failed` status is classified by the
//! provider exactly like a synchronous error: a throughput or pair-rate failure is sent again
//! later, a closed 24-hour window switches free text to its template fallback, anything else
//! fails with the reason on the record. Replies are matched to a record by the message they
//! quote, else by the contact's latest conversation, and written back; an opt-out keyword
//! marks the contact, skips everything still queued for them, and is written to the consent
//! field of every record that holds their number.
//!
//! A delivery that cannot be applied (unreadable, or failing again and again) is parked with
//! its reason and the others go on: one bad delivery never blocks the rest, opt-outs included.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, error, info, warn};

use super::status_batch::StatusBatch;
use super::{EngineCtx, Shutdown};
use crate::domain::{
    mask_phone, FieldWrite, InboundKind, MessageContent, MessageState, ProviderError, ProviderEvent, Sender,
    WriteTarget,
};
use crate::metrics::WebhookEvent;
use crate::providers::{ParsedWebhook, Provider, SendError};
use crate::store::{self, InboundRow, MessageUpdate, OutboxMessage, StoreError, StoredWebhook, Tx};

/// Failed attempts to apply a delivery before it is parked.
const MAX_APPLY_ATTEMPTS: u32 = 3;

/// Deliveries read for one round of applying.
const BATCH: i64 = 200;

/// How long one transaction goes on applying deliveries: long enough that BEGIN and COMMIT
/// cost little per delivery, short enough that webhooks stored meanwhile wait for the write
/// lock only milliseconds.
const TRANSACTION_BUDGET: Duration = Duration::from_millis(5);

/// Status-only deliveries whose reads are made together ([`StatusBatch`]).
const RUN: usize = 64;

/// A stored delivery as its provider read it.
enum Reading {
    NoProvider,
    Unreadable(String),
    Read(ParsedWebhook),
}

impl Reading {
    /// Readable, and every event in it a status.
    fn statuses_only(&self) -> bool {
        matches!(self, Reading::Read(p) if p.events.iter().all(|e| matches!(e, ProviderEvent::Status { .. })))
    }

    fn events(&self) -> &[ProviderEvent] {
        match self {
            Reading::Read(p) => &p.events,
            _ => &[],
        }
    }
}

/// What applying a delivery did beyond the store (acted on after the commit), and the values
/// it writes back (queued once for the whole transaction, in order).
#[derive(Default)]
struct Effects {
    opted_out: bool,
    /// The delivery came from someone who refused the privacy notice (or is refusing it now):
    /// its raw body (their words, their profile name) is not kept either.
    erase_raw: bool,
    sources: HashSet<String>,
    providers: HashSet<String>,
    writes: Vec<FieldWrite>,
    /// A person sent a file: the media loop fetches it.
    media: bool,
}

/// One delivery applied (or parked): what to act on and count once its transaction commits.
#[derive(Default)]
struct Applied {
    provider_id: String,
    effects: Effects,
    /// The delivery's outcome, recorded with the others of its transaction (None: parked).
    finished: Option<(i64, String)>,
    parked: bool,
    statuses: usize,
    messages: usize,
    unreadable: usize,
}

pub struct InboxProcessor {
    ctx: Arc<EngineCtx>,
    providers: HashMap<String, Provider>,
}

impl InboxProcessor {
    pub fn new(ctx: Arc<EngineCtx>, providers: HashMap<String, Provider>) -> Self {
        Self { ctx, providers }
    }

    pub async fn run(self, mut shutdown: Shutdown) {
        info!("inbox processor started");
        let health = "loop:inbox";
        let mut last_sweep =
            std::time::Instant::now().checked_sub(Duration::from_secs(1)).unwrap_or_else(std::time::Instant::now);
        loop {
            // Reminders and expiries also run while deliveries keep arriving.
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                last_sweep = std::time::Instant::now();
                if let Err(e) = self.sweep_conversations().await {
                    warn!("conversation reminders and expiries will be retried: {e}");
                }
                if let Some(cfg) = &self.ctx.config.handoff {
                    let handoffs = super::handoff::Handoffs { ctx: &self.ctx, cfg };
                    if let Err(e) = handoffs.flag_overdue(self.ctx.now_ms()).await {
                        warn!("flagging hand-offs that waited too long will be retried: {e}");
                    }
                }
            }
            let busy = self.ctx.health.busy(health);
            let processed = self.process_pending().await;
            drop(busy);
            match processed {
                Ok(n) => {
                    self.ctx.health.ok(health, "loop", self.ctx.now_ms());
                    if n > 0 {
                        continue;
                    }
                    tokio::select! {
                        _ = self.ctx.inbox_wake.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
                Err(e) => {
                    self.ctx.health.failed(health, "loop", &e.to_string());
                    error!("processing webhooks failed: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait() => break,
                    }
                }
            }
        }
        // Senders have stopped: apply what arrived meanwhile, so the last flush sees it.
        for _ in 0..50 {
            match self.process_pending().await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        info!("inbox processor stopped");
    }

    /// Applies up to [`BATCH`] stored deliveries. Returns how many were looked at.
    ///
    /// Each transaction applies as many as fit in [`TRANSACTION_BUDGET`]: a transaction per
    /// delivery cost two more hand-offs to SQLite's thread each (BEGIN, COMMIT), and the issue
    /// "Scale for real" measured the inbox at a fifth of the rate deliveries are stored. When
    /// one of them fails, its transaction is rolled back and the rest are applied again one
    /// delivery a transaction, so the failing one is counted (and parked after
    /// [`MAX_APPLY_ATTEMPTS`]) and the others go on.
    pub async fn process_pending(&self) -> Result<usize, StoreError> {
        let pending = {
            let mut conn = self.ctx.store.conn().await?;
            store::pending_webhooks(&mut conn, BATCH).await?
        };
        let mut rest = &pending[..];
        while !rest.is_empty() {
            match self.apply_deliveries(rest, TRANSACTION_BUDGET).await {
                Ok(applied) => {
                    rest = rest.get(applied.len()..).unwrap_or_default();
                    self.after_commit(applied);
                }
                // The store is busy: the rest waits for the next round.
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => {
                    debug!(deliveries = rest.len(), "a batch of deliveries failed ({e}): applying them one at a time");
                    for w in rest {
                        match self.apply_deliveries(std::slice::from_ref(w), Duration::ZERO).await {
                            Ok(applied) => self.after_commit(applied),
                            // This delivery and the rest wait for the next round.
                            Err(e) if e.is_transient() => return Err(e),
                            Err(e) => self.count_failure(w, &e).await?,
                        }
                    }
                    break;
                }
            }
        }
        Ok(pending.len())
    }

    /// A delivery that could not be applied: one more attempt counted, or parked.
    async fn count_failure(&self, w: &StoredWebhook, e: &StoreError) -> Result<(), StoreError> {
        warn!(provider = %w.provider_id, webhook = w.id, attempt = w.attempts + 1, "a delivery could not be applied: {e}");
        let mut tx = self.ctx.store.begin().await?;
        if w.attempts + 1 >= MAX_APPLY_ATTEMPTS {
            error!(provider = %w.provider_id, webhook = w.id, "delivery parked after {MAX_APPLY_ATTEMPTS} attempts: {e}");
            store::park_webhook(&mut tx, w.id, &e.to_string(), self.ctx.now_ms()).await?;
        } else {
            store::count_webhook_attempt(&mut tx, w.id).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Acts on what committed deliveries did: wakes the loops that have work now and counts
    /// the events (once committed, so a batch applied again after a failure counts once).
    fn after_commit(&self, applied: Vec<Applied>) {
        let mut sources = HashSet::new();
        let mut providers = HashSet::new();
        let mut opted_out = false;
        let mut media = false;
        for a in applied {
            opted_out |= a.effects.opted_out;
            media |= a.effects.media;
            providers.extend(a.effects.providers);
            sources.extend(a.effects.sources);
            let count = |kind: &str, n: usize| {
                if n > 0 {
                    self.ctx
                        .metrics
                        .webhook_events
                        .get_or_create(&WebhookEvent { provider: a.provider_id.clone(), kind: kind.to_string() })
                        .inc_by(n as u64);
                }
            };
            count("parked", usize::from(a.parked));
            count("status", a.statuses);
            count("message", a.messages);
            count("unreadable", a.unreadable);
        }
        if opted_out {
            self.ctx.opt_out_epoch.fetch_add(1, Ordering::AcqRel);
        }
        if media {
            self.ctx.media_wake.notify_one();
        }
        for p in providers {
            self.ctx.wake_dispatcher(&p);
        }
        for s in sources {
            self.ctx.wake_flusher(&s);
        }
    }

    /// Applies deliveries in order, in one transaction, until `budget` has passed (at least
    /// one). Returns what each applied delivery did; the others are left for the next call.
    async fn apply_deliveries(
        &self,
        deliveries: &[StoredWebhook],
        budget: Duration,
    ) -> Result<Vec<Applied>, StoreError> {
        let started = std::time::Instant::now();
        let mut tx = self.ctx.store.begin().await?;
        let mut applied = Vec::with_capacity(deliveries.len());
        let mut erase = Vec::new();
        // Deliveries read ahead (parsed), up to a run.
        let mut ahead: VecDeque<(&StoredWebhook, Reading)> = VecDeque::with_capacity(RUN);
        let mut rest = deliveries.iter();
        'runs: loop {
            while ahead.len() < RUN {
                let Some(w) = rest.next() else { break };
                ahead.push_back((w, self.read_delivery(w)));
            }
            // A run of deliveries that carry statuses only asks the store once for all of
            // them; any other delivery is applied alone, asking as it goes.
            let run = ahead.iter().take_while(|(_, r)| r.statuses_only()).count();
            let mut batch = if run > 0 {
                let events: Vec<&ProviderEvent> = ahead.iter().take(run).flat_map(|(_, r)| r.events()).collect();
                StatusBatch::read(&mut tx, &events).await?
            } else {
                StatusBatch::direct()
            };
            for _ in 0..run.max(1) {
                let Some((w, reading)) = ahead.pop_front() else { break 'runs };
                let a = self.apply_delivery(&mut tx, w, reading, &mut batch).await?;
                if a.effects.erase_raw {
                    erase.push(w.id);
                }
                applied.push(a);
                if started.elapsed() >= budget {
                    batch.flush(&mut tx, self.ctx.now_ms()).await?;
                    break 'runs;
                }
            }
            batch.flush(&mut tx, self.ctx.now_ms()).await?;
        }
        store::erase_webhook_bodies(&mut tx, &erase).await?;
        // One statement for every value the deliveries write back (the last value of a field
        // wins, as it would written one after the other), and one per outcome.
        let mut writes = Vec::new();
        let mut outcomes: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
        for a in &mut applied {
            a.effects.sources.extend(a.effects.writes.iter().map(|w| w.source_id.clone()));
            writes.append(&mut a.effects.writes);
            if let Some((id, outcome)) = a.finished.take() {
                outcomes.entry(outcome).or_default().push(id);
            }
        }
        store::queue_writes(&mut tx, &writes).await?;
        let now = self.ctx.now_ms();
        for (outcome, ids) in &outcomes {
            store::finish_webhooks(&mut tx, ids, outcome, now).await?;
        }
        tx.commit().await?;
        self.ctx.metrics.inbox_transactions.inc();
        Ok(applied)
    }

    /// Reads (parses) a stored delivery with its provider.
    fn read_delivery(&self, w: &StoredWebhook) -> Reading {
        match self.providers.get(&w.provider_id) {
            None => Reading::NoProvider,
            Some(provider) => match provider.parse_webhook(&w.query, w.body.as_bytes()) {
                Ok(parsed) => Reading::Read(parsed),
                Err(e) => Reading::Unreadable(e),
            },
        }
    }

    async fn apply_delivery(
        &self,
        tx: &mut Tx,
        w: &StoredWebhook,
        reading: Reading,
        batch: &mut StatusBatch,
    ) -> Result<Applied, StoreError> {
        let now = self.ctx.now_ms();
        let mut applied = Applied { provider_id: w.provider_id.clone(), ..Applied::default() };
        let (provider, parsed) = match (self.providers.get(&w.provider_id), reading) {
            (Some(provider), Reading::Read(parsed)) => (provider, parsed),
            (Some(_), Reading::Unreadable(e)) => {
                warn!(provider = %w.provider_id, webhook = w.id, "a signed delivery could not be read; parked: {e}");
                store::park_webhook(tx, w.id, &format!("unreadable: {e}"), now).await?;
                applied.parked = true;
                return Ok(applied);
            }
            _ => {
                store::park_webhook(tx, w.id, &format!("no provider '{}' is configured", w.provider_id), now).await?;
                return Ok(applied);
            }
        };
        for p in &parsed.problems {
            warn!(provider = %w.provider_id, webhook = w.id, "part of a delivery could not be read and was skipped: {p}");
        }
        for ev in &parsed.events {
            self.apply(tx, provider, ev, &mut applied.effects, batch).await?;
        }
        let outcome = match parsed.problems.len() {
            0 => format!("applied {} event(s)", parsed.events.len()),
            n => format!("applied {} event(s); {n} unreadable: {}", parsed.events.len(), parsed.problems.join("; ")),
        };
        applied.finished = Some((w.id, outcome));
        applied.statuses = parsed.events.iter().filter(|e| matches!(e, ProviderEvent::Status { .. })).count();
        applied.messages = parsed.events.len() - applied.statuses;
        applied.unreadable = parsed.problems.len();
        Ok(applied)
    }

    async fn apply(
        &self,
        tx: &mut Tx,
        provider: &Provider,
        ev: &ProviderEvent,
        effects: &mut Effects,
        batch: &mut StatusBatch,
    ) -> Result<(), StoreError> {
        match ev {
            ProviderEvent::Status {
                provider_message_id,
                status,
                timestamp: _,
                recipient_ids,
                callback_data,
                error,
            } => {
                self.apply_status(
                    tx,
                    provider,
                    provider_message_id,
                    *status,
                    recipient_ids,
                    callback_data.as_deref(),
                    error.as_ref(),
                    effects,
                    batch,
                )
                .await
            }
            ProviderEvent::Inbound {
                provider_message_id,
                from,
                profile_name: _,
                timestamp,
                context_message_id,
                kind,
            } => {
                // Whatever this batch holds, the inbound path asks the store itself.
                batch.forget(tx, self.ctx.now_ms()).await?;
                self.apply_inbound(
                    tx,
                    provider,
                    provider_message_id,
                    from,
                    *timestamp,
                    context_message_id.as_deref(),
                    kind,
                    effects,
                )
                .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_status(
        &self,
        tx: &mut Tx,
        provider: &Provider,
        provider_message_id: &str,
        status: MessageState,
        recipient_ids: &[String],
        callback_data: Option<&str>,
        error: Option<&ProviderError>,
        effects: &mut Effects,
        batch: &mut StatusBatch,
    ) -> Result<(), StoreError> {
        let now = self.ctx.now_ms();
        let mut m = batch.message(tx, provider_message_id).await?;
        // A send whose answer was lost: the status carries our outbox id. It belongs to this
        // message only if no other send of it was recorded since, and if this send was not
        // one the provider already reported failed (the message was queued again for a new
        // send: a late `sent` of the failed one must not stand for it).
        if m.is_none()
            && (status == MessageState::Failed
                || !batch.heard(tx, provider_message_id, MessageState::Failed.as_str()).await?)
        {
            if let Some(id) = callback_data.and_then(|c| c.parse::<i64>().ok()) {
                // The store must show the provider ids this run gave already.
                batch.flush(tx, now).await?;
                m = store::message_by_id(tx, id)
                    .await?
                    .filter(|m| m.provider_id == provider.id() && m.provider_message_id.is_none());
            }
        }
        let Some(m) = m else {
            // Not recorded as seen: the message may be a send still in doubt, whose id is
            // learnt later; the status heard again then (caught up from the provider) applies.
            debug!(id = %provider_message_id, "status for a message recado does not know");
            return Ok(());
        };
        if !batch.hear(tx, provider_message_id, status.as_str(), now).await? {
            debug!(id = %provider_message_id, %status, "duplicate status ignored");
            return Ok(());
        }
        // The send recorded this recipient with its contact already (in the same transaction
        // as the recipient id); a later status of it has nothing to add.
        if recipient_ids.is_empty() || m.recipient_id.as_ref().is_none_or(|r| recipient_ids != std::slice::from_ref(r))
        {
            store::upsert_contact(tx, m.phone.as_str(), now).await?;
            store::add_contact_ids(tx, m.phone.as_str(), recipient_ids, now).await?;
        }
        if status == MessageState::Failed && m.state.advance(MessageState::Failed).is_some() {
            let err = error.cloned().unwrap_or(ProviderError {
                code: 0,
                title: "the provider reported a failure".into(),
                details: None,
            });
            // Queuing again or ending a hand-off writes messages and contacts the batch
            // does not follow.
            batch.forget(tx, now).await?;
            if self.retry_failed(tx, provider, &m, &err, provider_message_id, effects).await? {
                return Ok(());
            }
        }
        let Some(next) = m.state.advance(status) else {
            debug!(message_id = m.id, from = %m.state, to = %status, "status ignored (not forward)");
            return Ok(());
        };
        let reason = match (next, error) {
            (MessageState::Failed, Some(e)) => Some(e.describe()),
            (MessageState::Failed, None) => Some("the provider reported a failure".to_string()),
            _ => None,
        };
        batch.move_message(tx, &m, next, provider_message_id, recipient_ids.first(), reason.clone(), now).await?;
        let logs = self.ctx.interaction_writes(&m, next, now, reason.as_deref(), Some(provider_message_id));
        effects.writes.extend(logs);
        let newer = batch.newer_rules(tx, &m).await?;
        let owned = self.ctx.status_fields_not_taken(&m, &newer);
        if !owned.is_empty() {
            let clear = if next == MessageState::Failed {
                reason.as_deref()
            } else if batch.has_open_issue(tx, &m).await? {
                None
            } else {
                Some("")
            };
            effects
                .writes
                .extend(self.ctx.status_writes(&m, next, now, clear).into_iter().filter(|w| owned.contains(&w.field)));
        }
        if next == MessageState::Failed {
            warn!(message_id = m.id, record = %m.record_key, "message failed: {}", reason.unwrap_or_default());
            // The question never reached them: the conversation that waited for its answer is
            // over (the record shows the failure, not a missing answer).
            let on_reply = self.ctx.config.rules.iter().find(|r| r.id == m.rule_id).and_then(|r| r.on_reply.as_deref());
            if let (Some(flow), Some(c)) = (on_reply, store::conversation(tx, m.phone.as_str()).await?) {
                if c.conversation.flow == flow && c.record == Some((m.source_id.clone(), m.record_key.clone())) {
                    store::end_conversation(tx, m.phone.as_str()).await?;
                }
            }
        }
        Ok(())
    }

    /// Someone who opted out: their open hand-off ends.
    async fn end_handoff_of(
        &self,
        tx: &mut Tx,
        phone: &str,
        now: i64,
        effects: &mut Effects,
    ) -> Result<(), StoreError> {
        if let Some(cfg) = &self.ctx.config.handoff {
            let mut applied = super::handoff::Applied::default();
            super::handoff::Handoffs { ctx: &self.ctx, cfg }.opted_out(tx, phone, now, &mut applied).await?;
            absorb(effects, applied);
        }
        Ok(())
    }

    /// A failure reported later, classified like a synchronous one. True when the message was
    /// dealt with here: queued again (sent later, or with its template fallback), or a staff
    /// reply handed back to its hand-off.
    async fn retry_failed(
        &self,
        tx: &mut Tx,
        provider: &Provider,
        m: &OutboxMessage,
        err: &ProviderError,
        provider_message_id: &str,
        effects: &mut Effects,
    ) -> Result<bool, StoreError> {
        let now = self.ctx.now_ms();
        provider.note_failure(err);
        let max_attempts = provider.settings().max_attempts;
        let reason = err.describe();
        let (due, attempts, content): (i64, u32, Option<&MessageContent>) = match provider.classify_failure(err) {
            SendError::Throttled { pause, .. } => {
                // The provider's pace, heard late: every send of this provider waits, as when
                // the send itself was answered with it.
                warn!(provider = %provider.id(), pause = ?pause, "provider throttling reported by webhook: slowing down: {reason}");
                self.ctx.pause_provider(provider.id(), pause);
                (now + pause.as_millis() as i64, m.attempts, None)
            }
            SendError::PairRate { .. } => {
                let pair = provider.settings().throughput.pair_interval.as_millis() as i64;
                (now + pair.max(1000) * 2, m.attempts, None)
            }
            SendError::Retry { .. } if m.attempts < max_attempts => {
                (now + super::dispatcher::retry_delay(m.attempts).as_millis() as i64, m.attempts, None)
            }
            SendError::WindowClosed { .. } => match (&m.content, &m.fallback) {
                (c, Some(fb)) if c.is_free_form() => (now, m.attempts, Some(fb)),
                (MessageContent::Text { body }, None) => {
                    // A staff reply waits in its hand-off for the person to write; this one
                    // ends skipped, saying so.
                    let Some(cfg) = self
                        .ctx
                        .config
                        .handoff
                        .as_ref()
                        .filter(|c| m.rule_id == super::handoff::REPLY_RULE && m.source_id == c.inbox)
                    else {
                        return Ok(false);
                    };
                    let mut applied = super::handoff::Applied::default();
                    let handoffs = super::handoff::Handoffs { ctx: &self.ctx, cfg };
                    let Some(why) = handoffs.reply_missed_window(tx, m, body, now, &mut applied).await? else {
                        return Ok(false);
                    };
                    absorb(effects, applied);
                    let state = MessageState::Skipped;
                    let u = MessageUpdate {
                        state: Some(state),
                        provider_message_id: Some(provider_message_id.to_string()),
                        error: Some(Some(why.to_string())),
                        state_at: Some(now),
                        ..Default::default()
                    };
                    store::update_message(tx, m.id, &u, now).await?;
                    effects.writes.extend(self.ctx.interaction_writes(
                        m,
                        state,
                        now,
                        Some(why),
                        Some(provider_message_id),
                    ));
                    effects.writes.extend(self.ctx.owned_status_writes(tx, m, state, now, Some(why)).await?);
                    effects.sources.insert(m.source_id.clone());
                    info!(message_id = m.id, record = %m.record_key, "{why}");
                    return Ok(true);
                }
                _ => return Ok(false),
            },
            SendError::OptedOut { .. } => {
                store::set_opted_out(tx, m.phone.as_str(), "(opted out at the provider)", now).await?;
                self.end_handoff_of(tx, m.phone.as_str(), now, effects).await?;
                effects.opted_out = true;
                return Ok(false);
            }
            _ => return Ok(false),
        };
        info!(message_id = m.id, record = %m.record_key, id = %provider_message_id, "the provider reported a failure that is worth another try: queued again ({reason})");
        store::requeue_failed_send(tx, m.id, due, attempts, content, &reason, now).await?;
        effects.providers.insert(m.provider_id.clone());
        Ok(true)
    }

    #[allow(clippy::too_many_arguments)]
    async fn apply_inbound(
        &self,
        tx: &mut Tx,
        provider: &Provider,
        provider_message_id: &str,
        from: &Sender,
        timestamp: i64,
        context_message_id: Option<&str>,
        kind: &InboundKind,
        effects: &mut Effects,
    ) -> Result<(), StoreError> {
        let now = self.ctx.now_ms();
        let at = if timestamp > 0 { timestamp.saturating_mul(1000) } else { now };
        // Who: by the provider's id for them (it may differ from the number we send to), else
        // by number.
        let mut phone: Option<String> = None;
        for id in &from.user_ids {
            if let Some(c) = store::contact_by_user_id(tx, id).await? {
                phone = Some(c.phone);
                break;
            }
        }
        if phone.is_none() {
            phone = from.phone.as_ref().map(|p| p.as_str().to_string());
        }
        let who = phone.as_deref().map(mask_phone).unwrap_or_else(|| "a sender without a visible number".into());
        if let Some(p) = &phone {
            store::upsert_contact(tx, p, now).await?;
            store::add_contact_ids(tx, p, &from.user_ids, now).await?;
            store::set_last_inbound(tx, p, at, now).await?;
        }
        // Which record: the quoted message's, else the latest conversation's.
        let mut origin = None;
        if let Some(ctx_id) = context_message_id {
            origin = store::message_by_provider_id(tx, ctx_id).await?;
        }
        if origin.is_none() {
            if let Some(p) = &phone {
                origin = store::latest_sent_to(tx, p).await?;
            }
        }
        // A staff reply of a hand-off is no rule's message: a reply to it is not about a record.
        if origin.as_ref().is_some_and(|m| m.rule_id.starts_with(super::handoff::RULE_PREFIX)) {
            origin = None;
        }
        let mut text = kind.text();
        let inbound = &self.ctx.config.inbound;
        // Typed words (or a template's button) can opt out; a tap on the bot's own options
        // cannot, whatever its title.
        let typed = matches!(kind, InboundKind::Text { .. } | InboundKind::Button { .. });
        let opting_out = typed && crate::flows::is_keyword_message(&text, &inbound.opt_out_keywords);
        let opting_in = typed && !opting_out && crate::flows::is_keyword_message(&text, &inbound.opt_in_keywords);
        // Someone who refused the privacy notice: nothing they write is kept (only that they
        // wrote, for the 24-hour window and deduplication) or written back, except the
        // keywords that change their standing.
        // The contact as this message finds them, read once for everything below.
        let contact = match &phone {
            Some(p) => store::contact(tx, p).await?.unwrap_or_default(),
            None => store::Contact::default(),
        };
        let refused = contact.refused_notice(inbound.consent_version.as_deref());
        let kept = !refused || opting_out || opting_in;
        // A redelivery too: its raw body is the same words.
        effects.erase_raw |= !kept;
        // A file: recorded for the media loop, and its link goes with the text everywhere the
        // message is written (the transcript, the record's last reply). Only from someone
        // who accepted the privacy notice (or whose record says they consent): nobody else's
        // files are fetched.
        let file_kept = match (&phone, kind) {
            (Some(p), InboundKind::Media { .. }) if kept => self.consents(tx, &contact, p).await?,
            _ => false,
        };
        if let (InboundKind::Media { media_type, media, mime_type, filename, .. }, true) = (kind, file_kept) {
            let recorded = store::record_media(
                tx,
                &store::NewMedia {
                    inbound_id: provider_message_id,
                    provider_id: provider.id(),
                    phone: phone.as_deref(),
                    media_type,
                    media_ref: &media.0,
                    mime_type,
                    filename: filename.as_deref(),
                },
                now,
            )
            .await?;
            text = format!("{text} {}", super::media::link(&self.ctx, tx, recorded).await?);
            effects.media = true;
        }
        let fresh = store::insert_inbound(
            tx,
            &InboundRow {
                provider_message_id,
                provider_id: provider.id(),
                sender_id: from.user_ids.first().map(String::as_str),
                phone: phone.as_deref(),
                record: origin.as_ref().map(|m| (m.source_id.as_str(), m.record_key.0.as_str())),
                in_reply_to: origin.as_ref().map(|m| m.id),
                kind: kind.name(),
                body: if kept { &text } else { "" },
                received_at: at,
            },
        )
        .await?;
        if !fresh {
            debug!(id = %provider_message_id, "duplicate inbound message ignored");
            return Ok(());
        }
        let mut writes: Vec<FieldWrite> = Vec::new();
        // The contact's conversation row, read once for this message.
        let stored = match &phone {
            Some(p) if !opting_out => store::conversation(tx, p).await?,
            _ => None,
        };
        let live = stored.clone().filter(|c| self.is_live(c, now));
        // A reply that quotes a rule's message whose replies go to a flow answers that message,
        // whatever conversation is in progress (two appointments on one phone: each reply goes
        // to its own record).
        let quoted_reply = origin.as_ref().is_some_and(|m| {
            let quoted = context_message_id.is_some() && m.provider_message_id.as_deref() == context_message_id;
            let flow = self.ctx.config.rules.iter().find(|r| r.id == m.rule_id).and_then(|r| r.on_reply.as_deref());
            quoted
                && flow.is_some_and(|f| {
                    live.as_ref().is_none_or(|c| {
                        c.conversation.flow != f || c.record != Some((m.source_id.clone(), m.record_key.clone()))
                    })
                })
        });
        // Otherwise a contact inside a conversation is answering the bot, not the rule.
        let conversing = live.is_some() && !quoted_reply;
        // A reply is written to the rule's record unless the person is talking to the bot
        // about something else (a conversation about that same record still counts).
        let about_origin = |m: &OutboxMessage| {
            quoted_reply || live.as_ref().is_none_or(|c| c.record == Some((m.source_id.clone(), m.record_key.clone())))
        };
        if !kept {
            info!(from = %who, "message from a contact who refused the privacy notice: not kept");
        } else if let Some(m) = origin.as_ref().filter(|m| about_origin(m)) {
            if let Some(settings) = self.ctx.source(&m.source_id) {
                let target = WriteTarget::Record(m.record_key.clone());
                if let Some(f) = &settings.write_back.last_reply {
                    writes.push(FieldWrite {
                        source_id: m.source_id.clone(),
                        target: target.clone(),
                        field: f.clone(),
                        value: text.clone(),
                    });
                }
                if let Some(f) = &settings.write_back.last_reply_at {
                    writes.push(FieldWrite {
                        source_id: m.source_id.clone(),
                        target,
                        field: f.clone(),
                        value: self.ctx.format_time(&m.source_id, at),
                    });
                }
                writes.extend(self.ctx.reply_log_writes(&m.source_id, &m.record_key, provider_message_id, &text, at));
            }
            info!(record = %m.record_key, from = %who, "reply received");
        } else {
            info!(from = %who, "message from a contact with no conversation on record");
        }
        if opting_out {
            match &phone {
                Some(p) => {
                    store::set_opted_out(tx, p, &text, now).await?;
                    self.end_handoff_of(tx, p, now, effects).await?;
                    store::end_conversation(tx, p).await?;
                    effects.opted_out = true;
                    info!(from = %who, "contact opted out: nothing more will be sent to them");
                    for q in store::queued_for_phone(tx, p).await? {
                        let reason = "not sent: the contact opted out";
                        let u = MessageUpdate {
                            state: Some(MessageState::Skipped),
                            error: Some(Some(reason.into())),
                            state_at: Some(now),
                            ..Default::default()
                        };
                        store::update_message(tx, q.id, &u, now).await?;
                        writes.extend(self.ctx.status_writes(&q, MessageState::Skipped, now, Some(reason)));
                        writes.extend(self.ctx.interaction_writes(&q, MessageState::Skipped, now, Some(reason), None));
                    }
                    // Their consent field says so, in every record that holds their number.
                    let mut records = store::records_with_phone(tx, p).await?;
                    if let Some(m) = &origin {
                        records.push((m.source_id.clone(), m.record_key.clone()));
                    }
                    records.sort();
                    records.dedup();
                    writes.extend(self.consent_writes(records, |c| c.opted_out_value.clone()));
                }
                None => warn!(
                    "an opt-out from a sender without a visible number that recado does not know: nothing to mark"
                ),
            }
            if let (Some(p), Some(reply)) = (&phone, &inbound.opt_out_reply) {
                let reply = reply.get(contact.language.as_deref().unwrap_or(""), &inbound.default_language);
                self.queue_reply(tx, provider, p, OPT_OUT_REPLY_RULE, provider_message_id, reply, now, effects).await?;
            }
        }
        let mut opted_in = false;
        if let (Some(p), true) = (&phone, opting_in) {
            let c = &contact;
            if c.opted_out_at.is_some() || c.consent.as_deref() == Some("refused") {
                opted_in = true;
                store::clear_opted_out(tx, p, now).await?;
                info!(from = %who, "contact opted back in");
                let records = store::records_with_phone(tx, p).await?;
                writes.extend(self.consent_writes(records, |c| c.granted_value.clone()));
                if let Some(reply) = &inbound.opt_in_reply {
                    let reply = reply.get(c.language.as_deref().unwrap_or(""), &inbound.default_language);
                    self.queue_reply(tx, provider, p, OPT_IN_REPLY_RULE, provider_message_id, reply, now, effects)
                        .await?;
                }
            }
        }
        if let (Some(p), false, false) = (&phone, opting_out, opted_in) {
            // A reply to a rule's recent message is that rule's (its `on_reply` flow, if any);
            // anything else talks to the bot.
            // Only the first reply to a message is that message's; later ones talk to the bot.
            let mut recent = origin
                .as_ref()
                .filter(|m| context_message_id.is_some() || now - m.created_at < super::dispatcher::SERVICE_WINDOW_MS);
            if let Some(m) = recent {
                if store::earlier_replies(tx, m.id, provider_message_id).await? > 0 {
                    recent = None;
                }
            }
            if let (Some(cfg), true) = (&self.ctx.config.handoff, kept) {
                let mut applied = super::handoff::Applied::default();
                let mut handled = false;
                let reaction = matches!(kind, InboundKind::Other { message_type } if message_type == "reaction");
                let open = store::open_handoff_of(tx, p).await?;
                if reaction {
                    // A reaction answers nothing and asks for nothing.
                    handled = open.is_some();
                } else if let Some(h) = open {
                    // Handed to a person: the message goes to the inbox, the bot stays silent.
                    // With the link to a file they sent.
                    let shown = crate::handoff::inbound_text(&text, kind.name());
                    super::handoff::Handoffs { ctx: &self.ctx, cfg }
                        .person_wrote(tx, h, &shown, at, now, &mut applied)
                        .await?;
                    handled = true;
                } else if typed
                    && crate::flows::is_keyword_message(&text, &cfg.keywords)
                    && contact.opted_out_at.is_none()
                    && self.consents(tx, &contact, p).await?
                {
                    // (Someone who has not answered the privacy notice yet is shown it first: the
                    // bot below asks it; their data reaches the inbox only after "Acepto".)
                    let record = self.person_record(tx, p).await?;
                    let talk_language = match &contact.language {
                        Some(l) => l.clone(),
                        None => inbound.default_language.clone(),
                    };
                    if let Some(c) = stored.as_ref().filter(|c| self.is_live(c, now)) {
                        // The conversation in progress gives way: its progress says so.
                        if let Some(flow) = self.ctx.config.flows.get(&c.conversation.flow) {
                            writes.extend(super::progress_write(flow, c.record.as_ref(), super::FlowProgress::Expired));
                        }
                    }
                    let opening = super::handoff::Opening {
                        phone: p,
                        provider_id: provider.id(),
                        inbound_id: provider_message_id,
                        record,
                        topic: None,
                        language: &talk_language,
                        asked: text.clone(),
                    };
                    super::handoff::Handoffs { ctx: &self.ctx, cfg }.open(tx, opening, now, &mut applied).await?;
                    handled = true;
                }
                if handled {
                    absorb(effects, applied);
                    effects.writes.extend(writes);
                    return Ok(());
                }
            }
            let talk = Talk {
                provider,
                phone: p,
                inbound_id: provider_message_id,
                kind,
                origin: if conversing { None } else { recent },
                answers_quoted: quoted_reply,
                stored: stored.clone(),
                context_id: context_message_id,
                contact: &contact,
            };
            writes.extend(self.converse(tx, &talk, now, effects).await?);
        }
        effects.writes.extend(writes);
        Ok(())
    }

    /// Sends the reminders of conversations left unanswered (once, inside the 24-hour window)
    /// and ends those that expired, writing their progress (`incompleta`) to the record.
    pub async fn sweep_conversations(&self) -> Result<usize, StoreError> {
        let now = self.ctx.now_ms();
        let due = {
            let mut conn = self.ctx.store.conn().await?;
            store::conversations_due(&mut conn, now, 100).await?
        };
        let n = due.len();
        for c in due {
            let mut tx = self.ctx.store.begin().await?;
            // An answer applied meanwhile moved it on: nothing to do.
            let Some(cur) = store::conversation(&mut tx, &c.phone).await?.filter(|cur| cur.updated_at == c.updated_at)
            else {
                continue;
            };
            let who = mask_phone(&cur.phone);
            let flow = self.ctx.config.flows.get(&cur.conversation.flow);
            let mut writes = Vec::new();
            match flow {
                Some(f) if cur.expires_at.is_none_or(|e| e > now) => {
                    let contact = store::contact(&mut tx, &cur.phone).await?.unwrap_or_default();
                    let inside = super::dispatcher::inside_service_window(contact.last_inbound_at, now);
                    let refused = contact.refused_notice(self.ctx.config.inbound.consent_version.as_deref());
                    if let (Some((_, text)), true, None, false) = (&f.reminder, inside, contact.opted_out_at, refused) {
                        let body = crate::flows::render(
                            text.get(&cur.conversation.language, &self.ctx.config.inbound.default_language),
                            &cur.conversation.answers,
                            &self.turn_context(&mut tx, &cur.phone, cur.record.as_ref(), now).await?,
                        );
                        let intent = super::recordless_intent(
                            &format!("{FLOW_RULE_PREFIX}{}", f.id),
                            &cur.provider_id,
                            format!("{FLOW_RULE_PREFIX}remind:{}:{}", cur.phone, cur.started_at),
                            &cur.phone,
                            MessageContent::Text { body },
                        );
                        store::insert_intent(&mut tx, &intent, now, now).await?;
                        self.ctx.wake_dispatcher(&cur.provider_id);
                        info!(to = %who, flow = %f.id, "conversation reminder queued");
                    } else {
                        debug!(to = %who, flow = %f.id, "conversation reminder skipped: outside the 24-hour window, opted out or privacy notice refused");
                    }
                    let mut stored = cur.clone();
                    stored.conversation.reminded = true;
                    stored.remind_at = None;
                    store::save_conversation(&mut tx, &stored).await?;
                }
                _ => {
                    info!(to = %who, flow = %cur.conversation.flow, "conversation expired unanswered");
                    if let Some(f) = flow {
                        writes.extend(super::progress_write(f, cur.record.as_ref(), super::FlowProgress::Expired));
                    }
                    store::end_conversation(&mut tx, &cur.phone).await?;
                }
            }
            store::queue_writes(&mut tx, &writes).await?;
            tx.commit().await?;
            for w in &writes {
                self.ctx.wake_flusher(&w.source_id);
            }
        }
        Ok(n)
    }

    /// `value` written to the consent field of each record (of sources that have one).
    fn consent_writes(
        &self,
        records: impl IntoIterator<Item = (String, crate::domain::RecordKey)>,
        value: impl Fn(&crate::sources::ConsentConfig) -> String,
    ) -> Vec<FieldWrite> {
        records
            .into_iter()
            .filter_map(|(source_id, key)| {
                let consent = self.ctx.source(&source_id)?.consent.as_ref()?;
                Some(FieldWrite {
                    field: consent.field.clone(),
                    value: value(consent),
                    target: WriteTarget::Record(key),
                    source_id,
                })
            })
            .collect()
    }

    /// Queues a confirmation (`rule`: opt-out or opt-in) answering inbound message `inbound_id`.
    #[allow(clippy::too_many_arguments)]
    async fn queue_reply(
        &self,
        tx: &mut Tx,
        provider: &Provider,
        phone: &str,
        rule: &str,
        inbound_id: &str,
        text: &str,
        now: i64,
        effects: &mut Effects,
    ) -> Result<(), StoreError> {
        let intent = super::recordless_intent(
            rule,
            provider.id(),
            format!("{rule}:{inbound_id}"),
            phone,
            MessageContent::Text { body: text.to_string() },
        );
        store::insert_intent(tx, &intent, now, now).await?;
        effects.providers.insert(provider.id().to_string());
        Ok(())
    }

    /// Whether a conversation is in progress (not expired, its flow still configured).
    fn is_live(&self, c: &store::StoredConversation, now: i64) -> bool {
        self.ctx.config.flows.get(&c.conversation.flow).is_some_and(|f| !crate::flows::expired(f, c.updated_at, now))
    }

    /// One turn of the contact's conversation: continues it, answers the opening question of
    /// the rule's `on_reply` flow, or starts the privacy notice or the entry flow. Queues the
    /// bot's messages in the outbox and returns the values to save to the contact's record.
    async fn converse(
        &self,
        tx: &mut Tx,
        talk: &Talk<'_>,
        now: i64,
        effects: &mut Effects,
    ) -> Result<Vec<FieldWrite>, StoreError> {
        let flows = &self.ctx.config.flows;
        let inbound = &self.ctx.config.inbound;
        let default_language = inbound.default_language.as_str();
        let who = mask_phone(talk.phone);
        let contact = talk.contact;
        if contact.opted_out_at.is_some() {
            debug!(from = %who, "the contact opted out: the bot does not answer");
            return Ok(Vec::new());
        }
        // A hand-off without an end (the inbox closes it) is silence only while the inbox is
        // configured: removing `handoff:` gives everyone back to the bot.
        if talk.stored.as_ref().is_some_and(|c| {
            c.conversation.flow == HANDOFF_FLOW
                && match c.expires_at {
                    Some(e) => e > now,
                    None => self.ctx.config.handoff.is_some(),
                }
        }) {
            debug!(from = %who, "handed to a person: the bot stays silent");
            return Ok(Vec::new());
        }
        let text = match talk.kind {
            // A reaction answers nothing.
            InboundKind::Other { message_type } if message_type == "reaction" => return Ok(Vec::new()),
            // Media, a location, …: not an answer to any question.
            InboundKind::Other { .. } | InboundKind::Media { .. } | InboundKind::Location { .. } => String::new(),
            other => other.text(),
        };
        let mut input = crate::flows::Input {
            text,
            choice_id: match talk.kind {
                InboundKind::Interactive { id, .. } => Some(id.clone()),
                InboundKind::Button { payload, .. } => Some(payload.clone()),
                _ => None,
            },
        };
        let live = if talk.answers_quoted { None } else { talk.stored.clone().filter(|c| self.is_live(c, now)) };
        if let (Some(tapped), InboundKind::Interactive { .. }, true) = (talk.context_id, talk.kind, live.is_some()) {
            // A button of an earlier question (still on the person's screen) answers that
            // question, not the one waiting: it is not taken as an answer, and the waiting
            // question is asked again.
            if store::latest_choice_to(tx, talk.phone).await?.is_some_and(|latest| latest != tapped) {
                debug!(from = %who, "a tap on an earlier question's button: asking the current one again");
                input = crate::flows::Input { text: String::new(), choice_id: None };
            }
        }
        let fresh = live.is_none();
        let language = match &contact.language {
            Some(l) => l.clone(),
            None => self.record_language(tx, talk).await?.unwrap_or_else(|| default_language.to_string()),
        };
        // Someone who refused this version of the privacy notice gets nothing from the bot and
        // nothing of theirs is kept, a survey a rule sent them included, until they opt in.
        if contact.refused_notice(inbound.consent_version.as_deref()) {
            debug!(from = %who, "the contact refused the privacy notice: the bot does not answer");
            return Ok(Vec::new());
        }
        let (flow, turn, record, started_at) = if let Some(c) = live {
            let Some(flow) = flows.get(&c.conversation.flow) else { return Ok(Vec::new()) };
            let context = self.turn_context(tx, talk.phone, c.record.as_ref(), now).await?;
            let turn = crate::flows::answer(flow, c.conversation, &input, default_language, &context);
            (flow, turn, c.record, c.started_at)
        } else {
            let record = match talk.origin {
                Some(m) => Some((m.source_id.clone(), m.record_key.clone())),
                None => self.person_record(tx, talk.phone).await?,
            };
            let context = self.turn_context(tx, talk.phone, record.as_ref(), now).await?;
            // A reply to a rule's message whose rule hands replies to a flow.
            let origin_rule = talk.origin.and_then(|m| self.ctx.config.rules.iter().find(|r| r.id == m.rule_id));
            let opening = origin_rule.and_then(|r| r.on_reply.as_deref()).and_then(|id| flows.get(id)).and_then(|f| {
                crate::flows::answer_opening(f, &input, &language, default_language, &context).map(|t| (f, t))
            });
            // A reply its flow does not take (or any reply) goes to a person, when the rule says so.
            if let (None, Some(rule), Some(cfg)) =
                (&opening, origin_rule.filter(|r| r.hands_off_other_replies), &self.ctx.config.handoff)
            {
                let mut applied = super::handoff::Applied::default();
                let opening = talk.hand_off(record.clone(), Some(rule.id.clone()), &language);
                info!(from = %who, rule = %rule.id, "a reply the rule's flow does not take: handed to a person");
                super::handoff::Handoffs { ctx: &self.ctx, cfg }.open(tx, opening, now, &mut applied).await?;
                effects.providers.extend(applied.providers);
                return Ok(applied.writes);
            }
            if let Some((flow, turn)) = opening {
                (flow, turn, record, now)
            } else {
                let consent = self.consent_state(tx, contact, record.as_ref()).await?;
                if consent == ConsentState::Refused {
                    debug!(from = %who, "the contact refused the privacy notice: the bot does not answer");
                    return Ok(Vec::new());
                }
                let entry = if consent == ConsentState::Ask {
                    flows.get(crate::flows::config::CONSENT_FLOW)
                } else {
                    inbound.entry_flow.as_deref().and_then(|id| flows.get(id))
                };
                let Some(flow) = entry else {
                    store::end_conversation(tx, talk.phone).await?;
                    return Ok(Vec::new());
                };
                info!(from = %who, flow = %flow.id, %language, "conversation started");
                let turn = crate::flows::start(flow, &language, default_language, &context);
                (flow, turn, record, now)
            }
        };
        let method = if input.choice_id.is_some() { "button" } else { "typed" };
        let mut writes = Vec::new();
        let mut current = Some((flow, turn, started_at, fresh));
        let mut n = 0;
        let mut created = 0;
        while let Some((flow, turn, started_at, fresh)) = current.take() {
            let mut accepted = false;
            let mut handed_off = false;
            let gave_up = turn.gave_up;
            if fresh {
                writes.extend(super::progress_write(flow, record.as_ref(), super::FlowProgress::Started));
            }
            for action in turn.actions {
                match action {
                    crate::flows::Action::Send(out) => {
                        let content = match out {
                            crate::flows::Outgoing::Text(body) => MessageContent::Text { body },
                            crate::flows::Outgoing::Template(t) => MessageContent::Template(t),
                            crate::flows::Outgoing::Choice { body, options, list_button } => MessageContent::Choice {
                                body,
                                options: options
                                    .into_iter()
                                    .map(|(id, title)| crate::domain::ReplyOption { id, title })
                                    .collect(),
                                list_button,
                            },
                            crate::flows::Outgoing::Media { kind, url, caption, filename } => {
                                MessageContent::Media { kind, url, caption, filename }
                            }
                        };
                        self.queue_bot_message(tx, talk, &flow.id, n, content, now, effects).await?;
                        n += 1;
                    }
                    crate::flows::Action::Save { field, value } => match &record {
                        Some((source_id, key)) => writes.push(FieldWrite {
                            source_id: source_id.clone(),
                            target: WriteTarget::Record(key.clone()),
                            field,
                            value,
                        }),
                        None => {
                            info!(from = %who, flow = %flow.id, %field, "an answer to save, but the contact has no record")
                        }
                    },
                    crate::flows::Action::Create { source, fields } => {
                        // A key of its own, the same if this message is handled again: the
                        // source adds the record once and finds it by that key after.
                        let key = new_record_key(talk.inbound_id, created);
                        created += 1;
                        info!(from = %who, flow = %flow.id, %source, record = %key, "a new record from the conversation");
                        let target = WriteTarget::NewRecord(crate::domain::RecordKey(key));
                        writes.extend(fields.into_iter().map(|(field, value)| FieldWrite {
                            source_id: source.clone(),
                            target: target.clone(),
                            field,
                            value,
                        }));
                    }
                    crate::flows::Action::Handoff { topic } if self.ctx.config.handoff.is_some() => {
                        handed_off = true;
                        if let Some(cfg) = &self.ctx.config.handoff {
                            let mut applied = super::handoff::Applied::default();
                            let opening = talk.hand_off(record.clone(), topic, &language);
                            super::handoff::Handoffs { ctx: &self.ctx, cfg }
                                .open(tx, opening, now, &mut applied)
                                .await?;
                            writes.extend(applied.writes);
                            effects.providers.extend(applied.providers);
                        }
                    }
                    crate::flows::Action::Handoff { topic } => {
                        // Without an inbox (`handoff:`) the bot only lets go for a day.
                        info!(from = %who, flow = %flow.id, topic = topic.as_deref().unwrap_or(""), "hand-off requested");
                        handed_off = true;
                        let waiting = crate::flows::Conversation {
                            flow: HANDOFF_FLOW.into(),
                            version: String::new(),
                            step: topic.unwrap_or_default(),
                            attempts: 0,
                            answers: Default::default(),
                            language: language.clone(),
                            reminded: false,
                        };
                        let stored = store::StoredConversation {
                            phone: talk.phone.to_string(),
                            conversation: waiting,
                            provider_id: talk.provider.id().to_string(),
                            record: record.clone(),
                            started_at: now,
                            updated_at: now,
                            remind_at: None,
                            expires_at: Some(now + HANDOFF_SILENCE_MS),
                        };
                        store::save_conversation(tx, &stored).await?;
                    }
                    crate::flows::Action::Consent { granted } => {
                        let version = inbound.consent_version.as_deref().unwrap_or("");
                        store::set_consent(tx, talk.phone, granted, method, version, now).await?;
                        if !granted {
                            // Nothing they wrote is kept: this answer, and what they wrote
                            // before the notice was asked (their deliveries of the last day:
                            // the notice is asked at their first message).
                            effects.erase_raw = true;
                            store::erase_words_of(tx, talk.phone, now - super::dispatcher::SERVICE_WINDOW_MS).await?;
                        }
                        info!(from = %who, granted, version, method, "answer to the privacy notice recorded");
                        writes.extend(self.consent_writes(record.clone(), |c| {
                            if granted {
                                c.granted_value.clone()
                            } else {
                                c.opted_out_value.clone()
                            }
                        }));
                        accepted = granted;
                    }
                    crate::flows::Action::SetLanguage(l) => {
                        store::set_language(tx, talk.phone, &l, now).await?;
                        info!(from = %who, language = %l, "language chosen");
                    }
                }
            }
            match turn.conversation {
                Some(conversation) => {
                    let stored = super::conversation_row(
                        flow,
                        talk.phone,
                        conversation,
                        talk.provider.id(),
                        record.clone(),
                        started_at,
                        now,
                    );
                    store::save_conversation(tx, &stored).await?;
                }
                // A hand-off keeps its own row (the bot's silence).
                None if handed_off => {}
                None => {
                    debug!(from = %who, flow = %flow.id, gave_up, "conversation ended");
                    store::end_conversation(tx, talk.phone).await?;
                    let stage = if gave_up { super::FlowProgress::Expired } else { super::FlowProgress::Completed };
                    writes.extend(super::progress_write(flow, record.as_ref(), stage));
                }
            }
            // Accepted the notice: the menu follows at once.
            if accepted {
                if let Some(entry) = inbound.entry_flow.as_deref().and_then(|id| flows.get(id)) {
                    let context = self.turn_context(tx, talk.phone, record.as_ref(), now).await?;
                    let turn = crate::flows::start(entry, &language, default_language, &context);
                    current = Some((entry, turn, now, true));
                }
            }
        }
        Ok(writes)
    }

    /// Queues one of the bot's messages (number `n` of the turn) for the contact.
    #[allow(clippy::too_many_arguments)]
    async fn queue_bot_message(
        &self,
        tx: &mut Tx,
        talk: &Talk<'_>,
        flow_id: &str,
        n: usize,
        content: MessageContent,
        now: i64,
        effects: &mut Effects,
    ) -> Result<(), StoreError> {
        // Bot messages belong to no record: their statuses are not a rule's.
        let intent = super::recordless_intent(
            &format!("{FLOW_RULE_PREFIX}{flow_id}"),
            talk.provider.id(),
            format!("{FLOW_RULE_PREFIX}{}:{n}", talk.inbound_id),
            talk.phone,
            content,
        );
        store::insert_intent(tx, &intent, now, now).await?;
        effects.providers.insert(talk.provider.id().to_string());
        Ok(())
    }

    /// The language the contact's record gives (`inbound.language_field`), if it is one flows
    /// speak.
    async fn record_language(&self, tx: &mut Tx, talk: &Talk<'_>) -> Result<Option<String>, StoreError> {
        let inbound = &self.ctx.config.inbound;
        let Some(field) = &inbound.language_field else { return Ok(None) };
        let record = match talk.origin {
            Some(m) => Some((m.source_id.clone(), m.record_key.clone())),
            None => self.person_record(tx, talk.phone).await?,
        };
        let Some((source_id, key)) = record else { return Ok(None) };
        let Some(row) = store::snapshot_row_of(tx, &source_id, &key.0).await? else { return Ok(None) };
        let value = row.fields.get(field).map(|v| v.trim().to_lowercase()).unwrap_or_default();
        let known = value == inbound.default_language || inbound.languages.contains(&value);
        Ok(known.then_some(value))
    }

    /// Whether the contact accepted the privacy notice (or needs none, or their record says
    /// they consent): only then does what they send reach anyone.
    async fn consents(&self, tx: &mut Tx, contact: &store::Contact, phone: &str) -> Result<bool, StoreError> {
        let record = self.person_record(tx, phone).await?;
        Ok(self.consent_state(tx, contact, record.as_ref()).await? == ConsentState::Given)
    }

    /// Whether the contact must be shown the privacy notice before the bot answers: not when
    /// no notice is configured, when they accepted this version, or when their record says
    /// they consent; silence when they refused it.
    async fn consent_state(
        &self,
        tx: &mut Tx,
        contact: &store::Contact,
        record: Option<&(String, crate::domain::RecordKey)>,
    ) -> Result<ConsentState, StoreError> {
        let Some(version) = self.ctx.config.inbound.consent_version.as_deref() else { return Ok(ConsentState::Given) };
        if contact.consent_version.as_deref() == Some(version) {
            return Ok(match contact.consent.as_deref() {
                Some("accepted") => ConsentState::Given,
                _ => ConsentState::Refused,
            });
        }
        if let Some((source_id, key)) = record {
            if let Some(c) = self.ctx.source(source_id).and_then(|s| s.consent.as_ref()) {
                if let Some(row) = store::snapshot_row_of(tx, source_id, &key.0).await? {
                    let value = row.fields.get(&c.field).map(String::as_str).unwrap_or("");
                    if c.is_granted(value) {
                        return Ok(ConsentState::Given);
                    }
                }
            }
        }
        Ok(ConsentState::Ask)
    }

    /// What flow texts can use of the contact's record: its fields as last read.
    /// The record a contact's conversation belongs to when no message of a rule says: the first
    /// with their number, in the order the sources are configured, among sources whose rows
    /// are people (not a log of reports).
    async fn person_record(
        &self,
        tx: &mut Tx,
        phone: &str,
    ) -> Result<Option<(String, crate::domain::RecordKey)>, StoreError> {
        let sources = &self.ctx.config.sources;
        let position = |id: &str| sources.iter().position(|s| s.id() == id);
        let mut records: Vec<(String, crate::domain::RecordKey)> = store::records_with_phone(tx, phone)
            .await?
            .into_iter()
            .filter(|(id, _)| self.ctx.source(id).is_some_and(|s| s.person_records != Some(false)))
            .collect();
        records.sort_by_key(|(id, _)| position(id));
        Ok(records.into_iter().next())
    }

    /// What a flow's texts and saved values may use (see [`super::turn_context`]).
    async fn turn_context(
        &self,
        tx: &mut Tx,
        phone: &str,
        record: Option<&(String, crate::domain::RecordKey)>,
        now: i64,
    ) -> Result<crate::flows::TurnContext, StoreError> {
        super::turn_context(&self.ctx, tx, phone, record, now).await
    }
}

/// The key of the `n`-th record a conversation creates while handling one inbound message:
/// `R-` and 10 hex digits of a hash, the same each time that message is handled.
pub fn new_record_key(inbound_id: &str, n: usize) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{inbound_id}:{n}").as_bytes());
    let hex: String = digest.iter().take(5).map(|b| format!("{b:02x}")).collect();
    format!("R-{hex}")
}

/// The conversation row of a contact handed to a person: the bot stays silent until it ends.
pub const HANDOFF_FLOW: &str = "__handoff";
/// How long the bot stays silent after a hand-off (until the hand-off inbox closes it).
const HANDOFF_SILENCE_MS: i64 = 24 * 3600 * 1000;

/// The rule id of a conversation's messages: `flow:<flow id>`.
pub const FLOW_RULE_PREFIX: &str = "flow:";
/// The rule id of the confirmation of an opt-out: the one message an opted-out person gets.
pub const OPT_OUT_REPLY_RULE: &str = "inbound:opt_out";
/// The rule id of the confirmation of an opt-in.
pub const OPT_IN_REPLY_RULE: &str = "inbound:opt_in";

/// What an inbound message shows in a hand-off's transcript: its text, else its kind
/// (`[image]`, `[location]`).
fn transcript_text(kind: &InboundKind) -> String {
    crate::handoff::inbound_text(&kind.text(), kind.name())
}

/// A hand-off step's messages and values, taken into the delivery's effects.
fn absorb(effects: &mut Effects, applied: super::handoff::Applied) {
    effects.writes.extend(applied.writes);
    effects.providers.extend(applied.providers);
}

/// One inbound message, as a conversation sees it.
struct Talk<'a> {
    provider: &'a Provider,
    phone: &'a str,
    inbound_id: &'a str,
    kind: &'a InboundKind,
    /// The rule's message this one replies to (quoted, or sent in the last 24 hours).
    origin: Option<&'a OutboxMessage>,
    /// It answers the quoted rule message (`origin`), not the conversation in progress.
    answers_quoted: bool,
    /// The contact's conversation row as this message found it.
    stored: Option<store::StoredConversation>,
    /// The provider's id of the message this one quotes or whose button it taps.
    context_id: Option<&'a str>,
    /// The contact as this message found them (their opt-out, consent answer, language).
    contact: &'a store::Contact,
}

impl<'a> Talk<'a> {
    /// A hand-off this message opens, about `record`.
    fn hand_off(
        &self,
        record: Option<(String, crate::domain::RecordKey)>,
        topic: Option<String>,
        language: &'a str,
    ) -> super::handoff::Opening<'a> {
        super::handoff::Opening {
            phone: self.phone,
            provider_id: self.provider.id(),
            inbound_id: self.inbound_id,
            record,
            topic,
            language,
            asked: transcript_text(self.kind),
        }
    }
}

/// Where a contact stands with the privacy notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsentState {
    Given,
    Refused,
    Ask,
}
