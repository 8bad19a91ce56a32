//! The dispatcher: one loop per provider, from the outbox to the provider.
//!
//! For each due message, in order: skip it if the contact opted out; switch free text to its
//! template fallback (or skip it) outside the 24-hour window; respect the per-recipient pair
//! interval; commit `sending` (a chunk at a time); wait for the provider's throughput budget
//! and a free in-flight slot; check the opt-out once more, at the last moment; send; record
//! `sent` (with the provider's id) or the classified error.
//!
//! The next chunk is prepared and marked while the one before it is sent, so the sends keep
//! their pace while its transaction waits for the store. Accepted sends go to one recorder
//! task, which records everything that arrived while its last commit ran in one transaction,
//! with a statement per kind of change for the whole batch (a statement is a hand-off to
//! SQLite's thread: one per message and kind was most of the dispatcher's CPU).
//!
//! A send whose answer was lost stays `sending` ("in doubt"): the provider is asked about it
//! where it can be, and otherwise its status webhooks — which carry our outbox id — are awaited
//! for the provider's grace, counted from the send and also from this process's start (after
//! downtime, the provider's retried webhooks need time to arrive). Only then is it sent again.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{EngineCtx, Shutdown};
use crate::domain::{MessageContent, MessageState};
use crate::metrics::ProviderLabel;
use crate::providers::{Accepted, CatchUp, InDoubtSend, Provider, Reconciliation, SendError};
use crate::store::{self, MessageUpdate, OutboxMessage, StoreError};

/// The 24-hour customer-service window.
pub const SERVICE_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// How often a message held back by an open hand-off looks again.
const HANDOFF_RECHECK_MS: i64 = 60_000;

/// Can free text be sent to a contact whose last inbound message was at `last_inbound`? (pure)
pub fn inside_service_window(last_inbound: Option<i64>, now: i64) -> bool {
    last_inbound.is_some_and(|t| now - t < SERVICE_WINDOW_MS)
}

/// Backoff before retry number `attempt` (1-based): 2 s, 4 s, 8 s … capped at 5 minutes.
pub fn retry_delay(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.clamp(1, 9);
    Duration::from_secs(secs.min(300))
}

/// How often the provider is asked what its webhooks said (for vendors that do not redeliver
/// them after an outage).
const CATCH_UP_EVERY_MS: i64 = 10 * 60 * 1000;
/// How far back catching up looks at most: news of older messages is not looked for.
const CATCH_UP_HORIZON_MS: i64 = 24 * 3600 * 1000;
/// How far the daemon's clock and the provider's may disagree about when a message was sent.
const CATCH_UP_SLACK_MS: i64 = 10 * 60 * 1000;
/// Messages marked `sending` together, in one transaction: a quarter of a second of the
/// provider's rate, within these bounds. While a poll commits a large read, the dispatcher
/// gets one transaction between two of the poll's (the store's write gate takes turns), so a
/// smaller chunk made sending fall behind the rate then (BENCHMARKS.md).
const CHUNK_MIN: usize = 32;
const CHUNK_MAX: usize = 256;
/// Other sends to the same person recorded within this long before a send in doubt are not it.
const KNOWN_IDS_WINDOW_MS: i64 = 24 * 3600 * 1000;
/// A send in doubt whose lookup keeps failing is given up (failed, never re-sent) after a day.
const UNDECIDED_GIVE_UP_MS: i64 = 24 * 3600 * 1000;
/// Accepted sends waiting to be recorded; senders wait when it is full.
const RECORDER_QUEUE: usize = 1024;
/// Recipients remembered for the pair interval; older entries are dropped beyond this.
const PAIR_MEMORY: usize = 20_000;

/// A chunk marked `sending`, waiting to be sent.
struct Prepared {
    messages: Vec<OutboxMessage>,
    /// The opt-out epoch its contacts were read at: an opt-out after it is looked up again.
    epoch: u64,
    /// When it was marked, on the daemon's clock and as an instant: a send's time is the first
    /// plus the time since the second (a clock moved meanwhile does not move it).
    marked_ms: i64,
    marked: Instant,
}

/// An accepted send for the recorder, or `None`: commit what you have and stop.
type Recorded = Option<(OutboxMessage, Accepted)>;

pub struct Dispatcher {
    provider: Provider,
    ctx: Arc<EngineCtx>,
    limiter: DefaultDirectRateLimiter,
    /// The most turns the limiter holds at once.
    burst: NonZeroU32,
    /// Messages marked `sending` in one transaction (see [`CHUNK_MIN`]).
    chunk: usize,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    max_attempts: u32,
    pair_interval: Duration,
    paused_until: Arc<Mutex<Option<Instant>>>,
    last_sent: Mutex<HashMap<String, Instant>>,
    /// Messages this process marked `sending` and has not settled yet: prepared, waiting for
    /// their turn, in flight, or accepted and not recorded yet. Never taken for sends in doubt
    /// (their grace would count from their marking, not from their send).
    held: Mutex<HashSet<i64>>,
    accepted: mpsc::Sender<Recorded>,
    accepted_rx: Mutex<Option<mpsc::Receiver<Recorded>>>,
    health_name: String,
}

impl Dispatcher {
    pub fn new(provider: Provider, ctx: Arc<EngineCtx>) -> Arc<Self> {
        let s = provider.settings().clone();
        // Bursts of at most 1/50 s worth of messages (and at least 2, so that a timer firing late
        // can be made up by the next send) keep every one-second window within about 2% of the
        // configured rate, below the provider's ceiling.
        let per_sec = s.throughput.messages_per_second;
        let period = Duration::from_secs_f64(1.0 / per_sec.max(0.001));
        let burst = NonZeroU32::new(((per_sec / 50.0).floor() as u32).max(2)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
        let (accepted, rx) = mpsc::channel(RECORDER_QUEUE);
        let health_name = format!("provider:{}", s.id);
        ctx.health.register(&health_name, "provider");
        let paused_until = ctx.provider_pauses.get(&s.id).cloned().unwrap_or_default();
        Arc::new(Self {
            provider,
            ctx,
            limiter: RateLimiter::direct(quota),
            burst,
            chunk: ((per_sec / 4.0) as usize).clamp(CHUNK_MIN, CHUNK_MAX),
            in_flight: Arc::new(Semaphore::new(s.max_in_flight)),
            max_in_flight: s.max_in_flight,
            max_attempts: s.max_attempts,
            pair_interval: s.throughput.pair_interval,
            paused_until,
            last_sent: Mutex::new(HashMap::new()),
            held: Mutex::new(HashSet::new()),
            accepted,
            accepted_rx: Mutex::new(Some(rx)),
            health_name,
        })
    }

    fn now_ms(&self) -> i64 {
        self.ctx.now_ms()
    }

    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let id = self.provider.id().to_string();
        info!(provider = %id, "dispatcher started");
        let recorder = self
            .accepted_rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(|rx| tokio::spawn(Arc::clone(&self).record_accepted(rx)));
        let wake = self.ctx.dispatch_wake.get(&id).cloned().unwrap_or_default();
        // Catching up lists pages of the provider's messages: its own task, so sending never
        // waits for it.
        let catching_up = tokio::spawn(Arc::clone(&self).catch_up_loop(shutdown.clone()));
        let mut last_doubt_check: Option<i64> = None;
        // The chunk marked `sending` while the one before it was sent, waiting for its turn.
        let mut prepared: Option<Prepared> = None;
        loop {
            if shutdown.is_set() {
                break;
            }
            let busy = self.ctx.health.busy(&self.health_name);
            if last_doubt_check.is_none_or(|t| self.now_ms() - t >= 5_000) {
                last_doubt_check = Some(self.now_ms());
                if let Err(e) = self.settle_in_doubt().await {
                    self.ctx.health.failed(&self.health_name, "provider", &format!("checking sends in doubt: {e}"));
                    error!(provider = %id, "checking sends in doubt failed: {e}");
                }
            }
            let batch = match self.due_batch().await {
                Ok(b) => b,
                Err(e) => {
                    self.ctx.health.failed(&self.health_name, "provider", &format!("reading the outbox: {e}"));
                    error!(provider = %id, "reading the outbox failed: {e}");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                if let Some(p) = prepared.take() {
                    if let Err(e) = self.send_prepared(p, &mut shutdown).await {
                        self.dispatch_failed(&e).await;
                    }
                    continue;
                }
                let next = self.next_due().await;
                drop(busy);
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = self.ctx.clock.sleep_until(next, Duration::from_secs(5)) => {}
                    _ = shutdown.wait() => break,
                }
                continue;
            }
            // A chunk is marked `sending` (a transaction, which may wait for the store's write
            // gate behind a poll's commit) while the one before it is sent: the sends keep
            // their pace while the next chunk waits for its turn.
            for chunk in batch.chunks(self.chunk) {
                if shutdown.is_set() {
                    break;
                }
                let (sent, next) = match prepared.take() {
                    Some(p) => {
                        let sending: HashSet<String> =
                            p.messages.iter().map(|m| m.phone.as_str().to_string()).collect();
                        tokio::join!(self.send_prepared(p, &mut shutdown), self.prepare_chunk(chunk.to_vec(), &sending))
                    }
                    None => (Ok(()), self.prepare_chunk(chunk.to_vec(), &HashSet::new()).await),
                };
                if let Err(e) = sent {
                    self.dispatch_failed(&e).await;
                }
                match next {
                    Ok(p) => prepared = Some(p),
                    Err(e) => self.dispatch_failed(&e).await,
                }
            }
            self.forget_old_recipients();
        }
        // Stopping: a chunk marked but not sent goes back to the queue.
        if let Some(p) = prepared.take() {
            if let Err(e) = self.unmark(&p.messages).await {
                // Never sent: settled as sends in doubt after their grace, and sent then.
                error!(provider = %id, "putting unsent messages back in the queue failed: {e}");
            }
            self.release(p.messages.iter().map(|m| m.id));
        }
        // Let in-flight sends finish, then their outcomes be recorded, before returning.
        let _all = self.in_flight.acquire_many(self.max_in_flight as u32).await;
        let _ = self.accepted.send(None).await;
        if let Some(r) = recorder {
            let _ = r.await;
        }
        let _ = catching_up.await;
        info!(provider = %id, "dispatcher stopped");
    }

    /// Catches up at start, then every [`CATCH_UP_EVERY_MS`] on the daemon's clock.
    async fn catch_up_loop(self: Arc<Self>, mut shutdown: Shutdown) {
        loop {
            let started = self.now_ms();
            let round = tokio::select! {
                r = self.catch_up() => r,
                _ = shutdown.wait() => return,
            };
            if let Err(e) = round {
                self.ctx.health.failed(&self.health_name, "provider", &format!("catching up: {e}"));
                warn!(provider = %self.provider.id(), "catching up on what the provider said while recado could not hear failed: {e}");
            }
            let next = started + CATCH_UP_EVERY_MS;
            while self.now_ms() < next {
                tokio::select! {
                    _ = self.ctx.clock.sleep_until(next, Duration::from_secs(60)) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    }

    async fn due_batch(&self) -> Result<Vec<OutboxMessage>, StoreError> {
        let mut conn = self.ctx.store.conn().await?;
        // Whole chunks, so that each is prepared beside a whole chunk's sends.
        let limit = i64::try_from(self.chunk * 4).unwrap_or(i64::MAX);
        store::due_messages(&mut conn, self.provider.id(), self.now_ms(), limit).await
    }

    /// When the next queued message is due (Unix ms).
    async fn next_due(&self) -> i64 {
        let next = match self.ctx.store.conn().await {
            Ok(mut c) => store::next_due_at(&mut c, self.provider.id()).await.ok().flatten(),
            Err(_) => None,
        };
        next.unwrap_or(i64::MAX)
    }

    /// Asks the provider what its webhooks said since the last delivery stored (a day back at
    /// the first start) and stores it as deliveries: the inbox applies them like any other, and
    /// de-duplicates what was heard already. A no-op for providers that redeliver webhooks.
    async fn catch_up(&self) -> anyhow::Result<()> {
        let id = self.provider.id();
        let now = self.now_ms();
        let horizon = now - CATCH_UP_HORIZON_MS;
        let ask = {
            let mut c = self.ctx.store.conn().await?;
            // From when the provider last reached recado, or from the oldest message that may
            // still hear news (its `delivered` or `read` may have come while recado could not
            // hear), whichever is earlier; never more than the horizon back.
            let heard = store::latest_webhook_at(&mut c, id).await?.unwrap_or(horizon);
            let unsettled = store::oldest_unsettled_at(&mut c, id, horizon).await?.unwrap_or(heard);
            let since_ms = heard.min(unsettled).max(horizon);
            // A message the provider lists from `since_ms` on was sent (or received) then or
            // later, so recado touched its row then or later too; the slack covers the two
            // clocks.
            let known_since = since_ms - CATCH_UP_SLACK_MS;
            CatchUp {
                since_ms,
                known_states: store::provider_states_since(&mut c, id, known_since).await?,
                known_inbound: store::inbound_ids_since(&mut c, id, known_since).await?,
            }
        };
        let fetched = self.provider.catch_up(&ask).await.map_err(anyhow::Error::msg)?;
        if fetched.is_empty() {
            return Ok(());
        }
        let mut tx = self.ctx.store.begin().await?;
        for d in &fetched {
            store::insert_fetched_webhook(&mut tx, id, &d.query, &d.body, now).await?;
        }
        tx.commit().await?;
        debug!(provider = %self.provider.id(), deliveries = fetched.len(), "caught up from the provider's API");
        self.ctx.inbox_wake.notify_one();
        Ok(())
    }

    /// Sends in doubt past their grace: asked about where the provider can say, else sent
    /// again. The grace counts from the send and from this process's start. Messages this
    /// process still holds (see `held`) are not in doubt.
    async fn settle_in_doubt(&self) -> Result<(), StoreError> {
        let grace = self.provider.settings().in_doubt_grace.as_millis().min(i64::MAX as u128) as i64;
        let now = self.now_ms();
        if now - self.ctx.started_at < grace {
            return Ok(());
        }
        let stale = {
            let mut c = self.ctx.store.conn().await?;
            let mut stale = store::in_doubt(&mut c, self.provider.id(), now - grace).await?;
            let held = self.held();
            stale.retain(|m| !held.contains(&m.id));
            stale
        };
        for m in stale {
            let known_ids = {
                let mut c = self.ctx.store.conn().await?;
                store::provider_ids_to(&mut c, self.provider.id(), m.phone.as_str(), m.updated_at - KNOWN_IDS_WINDOW_MS)
                    .await?
            };
            let ask = InDoubtSend {
                callback_data: m.id.to_string(),
                to: m.phone.clone(),
                content: m.content.clone(),
                marked_at: m.updated_at,
                known_ids,
            };
            match self.provider.reconcile(&ask).await {
                Reconciliation::Undecided(why) if now - m.updated_at < UNDECIDED_GIVE_UP_MS => {
                    // Sending again on a lookup that did not conclude could send twice.
                    self.ctx.health.failed(
                        &self.health_name,
                        "provider",
                        &format!("looking up a send in doubt: {why}"),
                    );
                    warn!(message_id = m.id, record = %m.record_key, "a send in doubt could not be looked up; asking again later: {why}");
                }
                Reconciliation::Undecided(why) => {
                    let reason = format!(
                        "outcome unknown: the provider could not say for a day whether it accepted this send ({why}); not sent again"
                    );
                    warn!(message_id = m.id, record = %m.record_key, "{reason}");
                    self.finish(&m, MessageState::Failed, &reason).await?;
                }
                Reconciliation::Accepted(acc) => {
                    info!(message_id = m.id, record = %m.record_key, "a send in doubt was accepted by the provider: recorded, not sent again");
                    self.commit_accepted(&[(m, acc)]).await;
                }
                Reconciliation::NotSent | Reconciliation::Unknown if m.attempts >= self.max_attempts => {
                    // Every attempt went unanswered and no status ever came: sending more
                    // would only risk duplicates (the usual cause is webhooks that do not
                    // reach recado).
                    let reason = format!(
                        "outcome unknown: {} sends got no answer and no status from the provider; not sent again (check that the provider's webhooks reach recado)",
                        m.attempts
                    );
                    warn!(message_id = m.id, record = %m.record_key, attempts = m.attempts, "{reason}");
                    self.finish(&m, MessageState::Failed, &reason).await?;
                }
                Reconciliation::NotSent | Reconciliation::Unknown => {
                    warn!(message_id = m.id, record = %m.record_key, to = %m.phone, "send outcome unknown and the provider never confirmed it: sending again");
                    let mut tx = self.ctx.store.begin().await?;
                    let u = MessageUpdate {
                        state: Some(MessageState::Queued),
                        next_attempt_at: Some(now),
                        ..Default::default()
                    };
                    store::update_message(&mut tx, m.id, &u, now).await?;
                    tx.commit().await?;
                    self.ctx.wake_dispatcher(self.provider.id());
                }
            }
        }
        Ok(())
    }

    /// The language a message's record gives in `inbound.language_field`, if any.
    async fn record_language(&self, m: &OutboxMessage) -> Result<Option<String>, StoreError> {
        let Some(field) = &self.ctx.config.inbound.language_field else { return Ok(None) };
        let mut conn = self.ctx.store.conn().await?;
        let row = store::snapshot_row_of(&mut conn, &m.source_id, &m.record_key.0).await?;
        Ok(row.and_then(|r| r.fields.get(field).map(|v| v.trim().to_lowercase())).filter(|v| !v.is_empty()))
    }

    /// Reports a failure to read or mark the outbox and waits a little before going on.
    async fn dispatch_failed(&self, e: &StoreError) {
        self.ctx.health.failed(&self.health_name, "provider", &format!("dispatching: {e}"));
        error!(provider = %self.provider.id(), "dispatch failed: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    /// Decides what becomes of each message of a chunk (skipped, put off, sent in another
    /// language or as its fallback) and marks the ones to send `sending`, committed before any
    /// network call. `sending` are the numbers of the chunk being sent meanwhile: a message to
    /// one of them waits for the pair interval, as two to one number in a chunk do.
    async fn prepare_chunk(
        &self,
        chunk: Vec<OutboxMessage>,
        sending: &HashSet<String>,
    ) -> Result<Prepared, StoreError> {
        let now = self.now_ms();
        let epoch = self.ctx.opt_out_epoch.load(Ordering::Acquire);
        let phones: Vec<&str> = chunk.iter().map(|m| m.phone.as_str()).collect();
        let (contacts, in_handoff) = {
            let mut conn = self.ctx.store.conn().await?;
            let contacts = store::contacts_for(&mut conn, &phones).await?;
            let in_handoff = match &self.ctx.config.handoff {
                Some(h) if h.pause_scheduled => store::phones_in_handoff(&mut conn, &phones).await?,
                _ => Default::default(),
            };
            (contacts, in_handoff)
        };
        let mut ready: Vec<(OutboxMessage, Option<MessageContent>)> = Vec::new();
        let mut later: Vec<(i64, i64)> = Vec::new();
        let chunk_instant = Instant::now();
        for mut m in chunk {
            let contact = contacts.get(m.phone.as_str());
            // The confirmation of an opt-out is the one message an opted-out person gets.
            if contact.is_some_and(|c| c.opted_out_at.is_some()) && m.rule_id != super::inbox::OPT_OUT_REPLY_RULE {
                self.finish(&m, MessageState::Skipped, "not sent: the contact opted out").await?;
                continue;
            }
            let rule = self.ctx.config.rules.iter().find(|r| r.id == m.rule_id);
            // A person is taking care of them: reminders and campaigns wait until the hand-off
            // closes (then they go out if still on time, like any message put off).
            if rule.is_some() && in_handoff.contains(m.phone.as_str()) {
                debug!(message_id = m.id, rule = %m.rule_id, "the contact is in a hand-off: the message waits");
                later.push((m.id, now + HANDOFF_RECHECK_MS));
                continue;
            }
            // A rule message whose replies a flow reads (`on_reply`) asks for an answer the bot
            // would not keep from someone who refused the privacy notice: not sent, and the
            // row says why.
            if rule.is_some_and(|r| r.on_reply.is_some())
                && contact.is_some_and(|c| c.refused_notice(self.ctx.config.inbound.consent_version.as_deref()))
            {
                let reason = "not sent: its replies go to a conversation, and the contact refused the privacy notice";
                self.finish(&m, MessageState::Skipped, reason).await?;
                continue;
            }
            // A template approved in the contact's language (chosen in a conversation, else
            // the record's `inbound.language_field`) goes in that language.
            let approved: &[String] = match rule.map(|r| &r.send) {
                Some(crate::config::SendSpec::Template(spec)) => &spec.languages,
                _ => &[],
            };
            if let (MessageContent::Template(_), false) = (&m.content, approved.is_empty()) {
                let language = match contact.and_then(|c| c.language.clone()) {
                    Some(l) => Some(l),
                    None => self.record_language(&m).await?,
                };
                if let (MessageContent::Template(t), Some(language)) = (&mut m.content, language) {
                    if approved.contains(&language) {
                        t.language = language;
                    }
                }
            }
            let mut switched = None;
            if m.content.is_free_form() && !inside_service_window(contact.and_then(|c| c.last_inbound_at), now) {
                match m.fallback.clone() {
                    Some(fb) => {
                        debug!(message_id = m.id, "outside the 24-hour window: using the template fallback");
                        m.content = fb.clone();
                        switched = Some(fb);
                    }
                    None if self.wait_in_handoff(&m).await? => continue,
                    None => {
                        let reason = if m.rule_id == super::handoff::REPLY_RULE {
                            "not sent: the person's 24-hour window closed, and the hand-off closed too"
                        } else {
                            "not sent: free text outside the 24-hour window and no fallback_template (a rule's) to send instead"
                        };
                        self.finish(&m, MessageState::Skipped, reason).await?;
                        continue;
                    }
                }
            }
            // Pair rate: space messages to the same person (also within this chunk). Measured
            // from one instant for the whole chunk, so two messages to one person put off
            // together get the same time, and go in the order they were queued.
            let next_ok = self.last_sent().get(m.phone.as_str()).map(|t| *t + self.pair_interval);
            let twice_in_chunk = ready.iter().any(|(r, _)| r.phone == m.phone) || sending.contains(m.phone.as_str());
            match next_ok {
                Some(t) if t > chunk_instant => {
                    later.push((m.id, now + (t - chunk_instant).as_millis() as i64));
                    continue;
                }
                _ if twice_in_chunk => {
                    later.push((m.id, now + self.pair_interval.as_millis() as i64));
                    continue;
                }
                _ => {}
            }
            m.attempts += 1;
            ready.push((m, switched));
        }
        // Committed before any network call: a crash from here on leaves these in doubt, never
        // silently unsent or sent twice.
        let mut tx = self.ctx.store.begin().await?;
        for (id, at) in &later {
            store::update_message(
                &mut tx,
                *id,
                &MessageUpdate { next_attempt_at: Some(*at), ..Default::default() },
                now,
            )
            .await?;
        }
        let marks: Vec<(i64, u32, Option<&MessageContent>)> =
            ready.iter().map(|(m, switched)| (m.id, m.attempts, switched.as_ref())).collect();
        let marked = store::mark_sending(&mut tx, &marks, now).await?;
        // Withdrawn since the chunk was read (its record changed, its contact opted out): not
        // sent, and its row already says why.
        let (messages, withdrawn): (Vec<_>, Vec<_>) =
            ready.into_iter().map(|(m, _)| m).partition(|m| marked.contains(&m.id));
        for m in &withdrawn {
            debug!(message_id = m.id, "withdrawn while its chunk was prepared: not sent");
        }
        tx.commit().await?;
        self.held().extend(messages.iter().map(|m| m.id));
        Ok(Prepared { messages, epoch, marked_ms: now, marked: Instant::now() })
    }

    /// Sends a prepared chunk at the provider's pace; what the provider answers is recorded by
    /// the recorder, errors each by itself. What is not handed to a send (stopping, or a store
    /// error on the way) goes back to the queue: a message never sent is not left `sending`,
    /// to be taken for a send in doubt.
    async fn send_prepared(
        self: &Arc<Self>,
        mut prepared: Prepared,
        shutdown: &mut Shutdown,
    ) -> Result<(), StoreError> {
        let mut pending: std::collections::VecDeque<OutboxMessage> = std::mem::take(&mut prepared.messages).into();
        let outcome = self.send_each(&mut pending, &prepared, shutdown).await;
        if !pending.is_empty() {
            let rest: Vec<OutboxMessage> = pending.into();
            if let Err(e) = self.unmark(&rest).await {
                // Never sent: settled as sends in doubt after their grace, and sent then.
                error!(provider = %self.provider.id(), messages = rest.len(), "putting unsent messages back in the queue failed: {e}");
            }
            self.release(rest.iter().map(|m| m.id));
        }
        outcome
    }

    /// Sends `pending` from the front, leaving in it what was not handed to a send.
    async fn send_each(
        self: &Arc<Self>,
        pending: &mut std::collections::VecDeque<OutboxMessage>,
        chunk: &Prepared,
        shutdown: &mut Shutdown,
    ) -> Result<(), StoreError> {
        // Turns taken from the throughput budget a few at a time (one wake-up for a burst's
        // worth, not one a message), and given up when the provider asks for a pause.
        let mut turns = 0u32;
        while let Some(m) = pending.pop_front() {
            if shutdown.is_set() {
                pending.push_front(m);
                return Ok(());
            }
            if self.paused().is_some_and(|t| t > Instant::now()) {
                turns = 0;
            }
            if turns == 0 {
                let n = u32::try_from(pending.len() + 1).unwrap_or(u32::MAX).min(self.burst.get());
                if !self.wait_turns(shutdown, n).await {
                    pending.push_front(m);
                    return Ok(());
                }
                turns = n;
            }
            turns -= 1;
            let permit = tokio::select! {
                biased;
                _ = shutdown.wait() => None,
                p = Arc::clone(&self.in_flight).acquire_owned() => p.ok(),
            };
            let Some(permit) = permit else {
                pending.push_front(m);
                return Ok(());
            };
            // The last moment before the call: an opt-out may have arrived while this message
            // waited for its turn or its slot.
            let opted_out = match self.opted_out_since(chunk.epoch, &m).await {
                Ok(o) => o,
                Err(e) => {
                    pending.push_front(m);
                    return Err(e);
                }
            };
            if opted_out {
                drop(permit);
                if let Err(e) = self.finish(&m, MessageState::Skipped, "not sent: the contact opted out").await {
                    // Back in the queue, its next chunk skips it.
                    pending.push_front(m);
                    return Err(e);
                }
                self.release([m.id]);
                continue;
            }
            self.last_sent().insert(m.phone.as_str().to_string(), Instant::now());
            let sent_at = chunk.marked_ms + i64::try_from(chunk.marked.elapsed().as_millis()).unwrap_or(0);
            let this = Arc::clone(self);
            tokio::spawn(async move {
                let started = Instant::now();
                let sent = this.provider.send(&m.phone, &m.content, &m.id.to_string()).await;
                this.ctx
                    .metrics
                    .send_seconds
                    .get_or_create(&ProviderLabel { provider: this.provider.id().to_string() })
                    .observe(started.elapsed().as_secs_f64());
                match sent {
                    Ok(acc) => {
                        this.ctx.health.ok(&this.health_name, "provider", this.now_ms());
                        // Recorded in a batch (which releases it); the permit is released
                        // once it is queued.
                        let id = m.id;
                        if this.accepted.send(Some((m, acc))).await.is_err() {
                            this.release([id]);
                        }
                    }
                    Err(e) => {
                        let (class, code) = e.class_and_code();
                        this.ctx
                            .metrics
                            .provider_errors
                            .get_or_create(&crate::metrics::ProviderError {
                                provider: this.provider.id().to_string(),
                                class: class.to_string(),
                                code: code.map_or_else(|| "none".to_string(), |c| c.to_string()),
                            })
                            .inc();
                        if matches!(
                            e,
                            SendError::Unavailable { .. } | SendError::Retry { .. } | SendError::InDoubt { .. }
                        ) {
                            this.ctx.health.failed(&this.health_name, "provider", &e.describe());
                        }
                        let mut delay = Duration::from_millis(50);
                        for attempt in 1..=20 {
                            match this.handle_error(&m, e.clone(), sent_at).await {
                                Ok(()) => break,
                                Err(err) => {
                                    warn!(
                                        message_id = m.id,
                                        attempt, "recording the send error failed, retrying: {err}"
                                    );
                                    tokio::time::sleep(delay).await;
                                    delay = (delay * 2).min(Duration::from_secs(5));
                                }
                            }
                        }
                        this.release([m.id]);
                    }
                }
                drop(permit);
            });
        }
        Ok(())
    }

    /// True when the contact opted out after `epoch` (read from the store only then).
    async fn opted_out_since(&self, epoch: u64, m: &OutboxMessage) -> Result<bool, StoreError> {
        if self.ctx.opt_out_epoch.load(Ordering::Acquire) == epoch || m.rule_id == super::inbox::OPT_OUT_REPLY_RULE {
            return Ok(false);
        }
        let mut c = self.ctx.store.conn().await?;
        Ok(store::contact(&mut c, m.phone.as_str()).await?.is_some_and(|c| c.opted_out_at.is_some()))
    }

    fn last_sent(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        // A poisoned lock still holds valid times: the pair interval must keep applying.
        self.last_sent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<i64>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Settled: no longer held by this process.
    fn release(&self, ids: impl IntoIterator<Item = i64>) {
        let mut held = self.held();
        for id in ids {
            held.remove(&id);
        }
    }

    fn paused(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        self.paused_until.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Recipients whose pair interval is over are forgotten (memory stays bounded).
    fn forget_old_recipients(&self) {
        let mut l = self.last_sent();
        if l.len() > PAIR_MEMORY / 2 {
            let cutoff = Instant::now().checked_sub(self.pair_interval).unwrap_or_else(Instant::now);
            l.retain(|_, t| *t > cutoff);
        }
        if l.len() > PAIR_MEMORY {
            // Still too many inside the interval: keep the most recent.
            let mut times: Vec<Instant> = l.values().copied().collect();
            times.sort_unstable();
            let cut = times[times.len() - PAIR_MEMORY];
            l.retain(|_, t| *t >= cut);
        }
    }

    /// Waits for a provider pause to end and for `n` slots (at most a burst) in the throughput
    /// budget. False when shutdown came first.
    async fn wait_turns(&self, shutdown: &mut Shutdown, n: u32) -> bool {
        loop {
            let until = *self.paused();
            match until {
                Some(t) if t > Instant::now() => {
                    tokio::select! {
                        biased;
                        _ = shutdown.wait() => return false,
                        _ = tokio::time::sleep_until(t) => {}
                    }
                }
                _ => break,
            }
        }
        let n = NonZeroU32::new(n.min(self.burst.get())).unwrap_or(NonZeroU32::MIN);
        tokio::select! {
            biased;
            _ = shutdown.wait() => false,
            // `n` is at most the burst, so the budget can always hold it (else: one turn).
            r = self.limiter.until_n_ready(n) => {
                if r.is_err() {
                    self.limiter.until_ready().await;
                }
                true
            }
        }
    }

    /// Puts messages marked `sending` but never sent back in the queue.
    async fn unmark(&self, messages: &[OutboxMessage]) -> Result<(), StoreError> {
        let mut tx = self.ctx.store.begin().await?;
        for m in messages {
            let u = MessageUpdate {
                state: Some(MessageState::Queued),
                attempts: Some(m.attempts.saturating_sub(1)),
                ..Default::default()
            };
            store::update_message(&mut tx, m.id, &u, self.now_ms()).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Records accepted sends, many per transaction. The provider has answered: losing that
    /// answer would make a message look in doubt and be sent again, so a failed commit is
    /// retried with the same batch.
    async fn record_accepted(self: Arc<Self>, mut rx: mpsc::Receiver<Recorded>) {
        while let Some(Some(first)) = rx.recv().await {
            let mut batch = vec![first];
            let mut stop = false;
            // What arrived while the last commit ran joins this one, and no more: the
            // provider's answer is recorded as soon as it can be, because a reply (a tapped
            // button) quoting the message is looked up by the provider's id. Under load the
            // batch grows with the commit it waits for.
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(Some(x)) => batch.push(x),
                    Ok(None) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.commit_accepted(&batch).await;
            self.release(batch.iter().map(|(m, _)| m.id));
            if stop {
                break;
            }
        }
    }

    async fn commit_accepted(&self, batch: &[(OutboxMessage, Accepted)]) {
        if batch.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=40 {
            match self.try_commit_accepted(batch).await {
                Ok(()) => return,
                Err(e) => {
                    warn!(attempt, messages = batch.len(), "recording accepted sends failed, retrying: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        error!(
            messages = batch.len(),
            "could not record accepted sends; they stay in doubt until a status webhook names them"
        );
    }

    /// One transaction for the batch, with reads and writes made a batch at a time (a
    /// statement is a hand-off to SQLite's thread: per message, they were most of the
    /// dispatcher's CPU). Only a survey (`on_reply`) reads and saves its conversation per
    /// message.
    async fn try_commit_accepted(&self, batch: &[(OutboxMessage, Accepted)]) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut tx = self.ctx.store.begin().await?;
        let mut sources = std::collections::HashSet::new();
        let ids: Vec<i64> = batch.iter().map(|(m, _)| m.id).collect();
        let mut phones: Vec<&str> = batch.iter().map(|(m, _)| m.phone.as_str()).collect();
        phones.sort_unstable();
        phones.dedup();
        let messages: Vec<&OutboxMessage> = batch.iter().map(|(m, _)| m).collect();
        let records: Vec<(&str, &str)> =
            messages.iter().map(|m| (m.source_id.as_str(), m.record_key.0.as_str())).collect();
        let states = store::message_states(&mut tx, &ids).await?;
        let contacts = store::contacts_for(&mut tx, &phones).await?;
        let newer = store::newer_rules_for_records(&mut tx, &messages).await?;
        let with_issues = store::records_with_open_issues(&mut tx, &records).await?;
        store::upsert_contacts(&mut tx, &phones, &contacts, now).await?;
        let user_ids: Vec<(&str, &str)> = batch
            .iter()
            .flat_map(|(m, acc)| acc.recipient_ids.iter().map(move |id| (m.phone.as_str(), id.as_str())))
            .collect();
        store::add_contact_ids_many(&mut tx, &user_ids, now).await?;
        let mut accepted = Vec::with_capacity(batch.len());
        let mut writes = Vec::new();
        for (m, acc) in batch {
            // A status webhook may already have moved it further (it carries our id).
            let current = states.get(&m.id).copied().unwrap_or(MessageState::Sending);
            let next = current.advance(MessageState::Sent);
            accepted.push(store::AcceptedSend {
                id: m.id,
                provider_message_id: acc.provider_message_id.clone(),
                recipient_id: acc.recipient_ids.first().cloned(),
            });
            // A rule whose replies go to a flow: the conversation waits for the answer to the
            // question the template asked, from now (its reminder and expiry count from here).
            let on_reply = self.ctx.config.rules.iter().find(|r| r.id == m.rule_id).and_then(|r| r.on_reply.as_deref());
            // The survey's question is now the last thing on the person's screen, so their next
            // message answers it: the survey takes over a conversation in progress (its progress
            // is written as expired), except a hand-off to a person or the privacy notice, which
            // it must not cut short. Nor does it start for someone who refused the privacy
            // notice: the bot keeps nothing of theirs. A reply that quotes this message still
            // reaches this flow when it does not start.
            let mut busy = on_reply.is_none();
            let mut superseded = None;
            let contact = contacts.get(m.phone.as_str());
            if contact.is_some_and(|c| c.refused_notice(self.ctx.config.inbound.consent_version.as_deref())) {
                busy = true;
            }
            if let (Some(flow), false) = (on_reply, busy) {
                if let Some(c) = store::conversation(&mut tx, m.phone.as_str())
                    .await?
                    .filter(|c| c.expires_at.is_none_or(|e| e > now))
                {
                    let same =
                        c.conversation.flow == flow && c.record == Some((m.source_id.clone(), m.record_key.clone()));
                    let protected = [super::inbox::HANDOFF_FLOW, crate::flows::config::CONSENT_FLOW]
                        .contains(&c.conversation.flow.as_str());
                    if protected {
                        info!(message_id = m.id, flow = %c.conversation.flow, "survey not started: the person is in a hand-off or the privacy notice; a reply quoting the template still reaches it");
                    }
                    if protected || same {
                        busy = true;
                    } else {
                        superseded = Some(c);
                    }
                }
            }
            if let (Some(flow), MessageState::Queued | MessageState::Sending, false) =
                (on_reply.and_then(|id| self.ctx.config.flows.get(id)), current, busy)
            {
                let language = contact
                    .and_then(|c| c.language.clone())
                    .unwrap_or_else(|| self.ctx.config.inbound.default_language.clone());
                if let Some(conversation) = flow.opening(&language) {
                    if let Some(old) = superseded {
                        info!(message_id = m.id, from = %old.conversation.flow, to = %flow.id, "a survey takes over the conversation in progress");
                        if let Some(old_flow) = self.ctx.config.flows.get(&old.conversation.flow) {
                            writes.extend(super::progress_write(
                                old_flow,
                                old.record.as_ref(),
                                super::FlowProgress::Expired,
                            ));
                            if let Some((source, _)) = &old.record {
                                sources.insert(source.clone());
                            }
                        }
                    }
                    let record = Some((m.source_id.clone(), m.record_key.clone()));
                    let stored = super::conversation_row(
                        flow,
                        m.phone.as_str(),
                        conversation,
                        &m.provider_id,
                        record.clone(),
                        now,
                        now,
                    );
                    store::save_conversation(&mut tx, &stored).await?;
                    writes.extend(super::progress_write(flow, record.as_ref(), super::FlowProgress::Started));
                    sources.insert(m.source_id.clone());
                }
            }
            let logged = next.unwrap_or(current);
            writes.extend(self.ctx.interaction_writes(m, logged, now, None, Some(&acc.provider_message_id)));
            if next.is_some() {
                let later: &[String] = newer.get(&m.id).map(Vec::as_slice).unwrap_or_default();
                let owned = self.ctx.status_fields_not_taken(m, later);
                if !owned.is_empty() {
                    // A successful send clears an old send error, but not a record problem
                    // that is still there (a duplicate key, say).
                    let open = with_issues.contains(&(m.source_id.clone(), m.record_key.0.clone()));
                    writes.extend(
                        self.ctx
                            .status_writes(m, MessageState::Sent, now, (!open).then_some(""))
                            .into_iter()
                            .filter(|w| owned.contains(&w.field)),
                    );
                    sources.insert(m.source_id.clone());
                }
            }
        }
        store::record_accepted_sends(&mut tx, &accepted, now).await?;
        store::queue_writes(&mut tx, &writes).await?;
        tx.commit().await?;
        for (m, _) in batch {
            info!(message_id = m.id, rule = %m.rule_id, record = %m.record_key, to = %m.phone, "message sent");
        }
        for s in sources {
            self.ctx.wake_flusher(&s);
        }
        Ok(())
    }

    /// Records a send's error (`sent_at`: when the call was made).
    async fn handle_error(&self, m: &OutboxMessage, e: SendError, sent_at: i64) -> Result<(), StoreError> {
        let now = self.now_ms();
        let reason = e.describe();
        let requeue = |at: i64, attempts: u32| MessageUpdate {
            state: Some(MessageState::Queued),
            next_attempt_at: Some(at),
            attempts: Some(attempts),
            error: Some(Some(reason.clone())),
            ..Default::default()
        };
        let update = match &e {
            SendError::Retry { .. } if m.attempts >= self.max_attempts => {
                return self
                    .finish(m, MessageState::Failed, &format!("gave up after {} attempts: {reason}", m.attempts))
                    .await;
            }
            SendError::Retry { .. } => {
                let d = retry_delay(m.attempts);
                warn!(message_id = m.id, attempt = m.attempts, retry_in = ?d, "send failed, will retry: {reason}");
                requeue(now + d.as_millis() as i64, m.attempts)
            }
            SendError::Throttled { pause, .. } => {
                warn!(provider = %self.provider.id(), pause = ?pause, "provider throttling: slowing down: {reason}");
                self.pause_for(*pause);
                // Throttling is our pace, not the message's fault: the attempt is not counted.
                requeue(now + pause.as_millis() as i64, m.attempts.saturating_sub(1))
            }
            SendError::PairRate { .. } => {
                debug!(message_id = m.id, "pair rate hit: retrying this recipient later");
                requeue(now + (self.pair_interval.as_millis() as i64).max(1000) * 2, m.attempts.saturating_sub(1))
            }
            SendError::Unavailable { .. } => {
                error!(provider = %self.provider.id(), "provider refused our credentials or account; pausing 60 s: {reason}");
                self.pause_for(Duration::from_secs(60));
                requeue(now + 60_000, m.attempts.saturating_sub(1))
            }
            SendError::InDoubt { .. } => {
                warn!(message_id = m.id, "send outcome unknown ({reason}); waiting for the provider before any retry");
                // Its grace counts from this send, not from when its chunk was marked (a pause
                // may have come between).
                let mut c = self.ctx.store.conn().await?;
                return store::update_message(&mut c, m.id, &MessageUpdate::default(), sent_at).await;
            }
            SendError::WindowClosed { .. } => match (&m.content, &m.fallback) {
                (c, Some(fb)) if c.is_free_form() => MessageUpdate {
                    state: Some(MessageState::Queued),
                    next_attempt_at: Some(now),
                    content: Some(fb.clone()),
                    ..Default::default()
                },
                _ if self.wait_in_handoff(m).await? => return Ok(()),
                _ => return self.finish(m, MessageState::Failed, &reason).await,
            },
            SendError::OptedOut { .. } => {
                let mut tx = self.ctx.store.begin().await?;
                store::upsert_contact(&mut tx, m.phone.as_str(), now).await?;
                store::set_opted_out(&mut tx, m.phone.as_str(), "(opted out at the provider)", now).await?;
                let mut applied = super::handoff::Applied::default();
                if let Some(cfg) = &self.ctx.config.handoff {
                    super::handoff::Handoffs { ctx: &self.ctx, cfg }
                        .opted_out(&mut tx, m.phone.as_str(), now, &mut applied)
                        .await?;
                }
                store::queue_writes(&mut tx, &applied.writes).await?;
                tx.commit().await?;
                if !applied.writes.is_empty() {
                    if let Some(cfg) = &self.ctx.config.handoff {
                        self.ctx.wake_flusher(&cfg.inbox);
                    }
                }
                self.ctx.opt_out_epoch.fetch_add(1, Ordering::AcqRel);
                return self.finish(m, MessageState::Skipped, &format!("not sent: {reason}")).await;
            }
            SendError::Permanent { .. } => return self.finish(m, MessageState::Failed, &reason).await,
        };
        let mut c = self.ctx.store.conn().await?;
        store::update_message(&mut c, m.id, &update, now).await?;
        Ok(())
    }

    fn pause_for(&self, d: Duration) {
        let mut p = self.paused();
        let until = Instant::now() + d;
        if p.is_none_or(|cur| cur < until) {
            *p = Some(until);
        }
    }

    /// A staff reply that meets the person's window closed waits in its open hand-off instead
    /// (the person is invited to write, and it goes out when they do): this message ends
    /// skipped with that reason. False when it is no staff reply or its hand-off has closed.
    async fn wait_in_handoff(&self, m: &OutboxMessage) -> Result<bool, StoreError> {
        let (Some(cfg), MessageContent::Text { body }) = (&self.ctx.config.handoff, &m.content) else {
            return Ok(false);
        };
        if m.rule_id != super::handoff::REPLY_RULE || m.source_id != cfg.inbox {
            return Ok(false);
        }
        let now = self.now_ms();
        let mut tx = self.ctx.store.begin().await?;
        let mut applied = super::handoff::Applied::default();
        let handoffs = super::handoff::Handoffs { ctx: &self.ctx, cfg };
        let Some(reason) = handoffs.reply_missed_window(&mut tx, m, body, now, &mut applied).await? else {
            return Ok(false);
        };
        self.end_in(&mut tx, m, MessageState::Skipped, reason, now).await?;
        store::queue_writes(&mut tx, &applied.writes).await?;
        tx.commit().await?;
        info!(message_id = m.id, record = %m.record_key, "{reason}");
        self.ctx.wake_flusher(&m.source_id);
        for provider in applied.providers {
            self.ctx.wake_dispatcher(&provider);
        }
        Ok(true)
    }

    /// Ends `m` as `state` with `reason` in `tx`, and queues that for its record.
    async fn end_in(
        &self,
        tx: &mut crate::store::Tx,
        m: &OutboxMessage,
        state: MessageState,
        reason: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let u = MessageUpdate {
            state: Some(state),
            error: Some(Some(reason.to_string())),
            state_at: Some(now),
            ..Default::default()
        };
        store::update_message(tx, m.id, &u, now).await?;
        store::queue_writes(tx, &self.ctx.interaction_writes(m, state, now, Some(reason), None)).await?;
        let writes = self.ctx.owned_status_writes(tx, m, state, now, Some(reason)).await?;
        store::queue_writes(tx, &writes).await
    }

    /// Terminal outcome decided here (failed or skipped), written back to the record.
    async fn finish(&self, m: &OutboxMessage, state: MessageState, reason: &str) -> Result<(), StoreError> {
        let now = self.now_ms();
        let mut tx = self.ctx.store.begin().await?;
        self.end_in(&mut tx, m, state, reason, now).await?;
        tx.commit().await?;
        warn!(message_id = m.id, rule = %m.rule_id, record = %m.record_key, to = %m.phone, state = %state, "{reason}");
        self.ctx.wake_flusher(&m.source_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let now = 100 * SERVICE_WINDOW_MS;
        assert!(!inside_service_window(None, now));
        assert!(inside_service_window(Some(now - 1000), now));
        assert!(!inside_service_window(Some(now - SERVICE_WINDOW_MS), now));
    }

    async fn dispatcher(dir: &std::path::Path) -> Arc<Dispatcher> {
        let config = crate::config::one_provider_for_tests(&dir.join("s.db"));
        let provider = config.providers[0].connect(&reqwest::Client::new(), None);
        let store = crate::store::Store::open(&config.state.path).await.unwrap();
        let rules = Arc::new(crate::rules::RuleSet::compile(&config.rules).unwrap());
        let ctx = EngineCtx::new(store, Arc::new(config), rules, Arc::new(super::super::Clock::system()), &[]);
        Dispatcher::new(provider, ctx)
    }

    /// A panic elsewhere while a lock was held must not switch off the pair interval or the
    /// provider's pause (the old `if let Ok(lock)` skipped both silently).
    #[tokio::test]
    async fn a_poisoned_lock_keeps_the_pair_interval_and_the_pause() {
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(dir.path()).await;
        let d2 = Arc::clone(&d);
        let _ = std::thread::spawn(move || {
            let _a = d2.last_sent.lock();
            let _b = d2.paused_until.lock();
            panic!("poison both locks");
        })
        .join();
        assert!(d.last_sent.is_poisoned() && d.paused_until.is_poisoned());
        d.last_sent().insert("+56912345678".into(), Instant::now());
        assert!(d.last_sent().contains_key("+56912345678"), "the pair interval still sees recent sends");
        d.pause_for(Duration::from_secs(30));
        assert!(d.paused().is_some_and(|t| t > Instant::now()), "the pause still holds");
    }

    /// The memory of recent recipients stays bounded, and keeps those still inside the interval.
    #[tokio::test]
    async fn recent_recipients_are_remembered_within_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let d = dispatcher(dir.path()).await;
        let long_ago = Instant::now().checked_sub(Duration::from_secs(60)).unwrap_or_else(Instant::now);
        {
            let mut l = d.last_sent();
            for i in 0..(PAIR_MEMORY + 5_000) {
                l.insert(format!("+5690000{i:05}"), long_ago);
            }
            l.insert("+56911111111".into(), Instant::now());
        }
        d.forget_old_recipients();
        let l = d.last_sent();
        assert_eq!(l.len(), 1, "only the recipient inside its pair interval is left");
        assert!(l.contains_key("+56911111111"));
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(50), Duration::from_secs(300));
    }
}
