//! The dispatcher: one loop per provider, from the outbox to the provider's API.
//!
//! For each due message, in order: skip it if the contact opted out; switch free text to its
//! template fallback (or skip it) outside the 24-hour window; respect the per-recipient pair
//! interval; wait for the provider's throughput budget; commit `sending`; call the API; commit
//! `sent` (with the provider id) or the classified error. A send whose answer was lost stays
//! `sending` ("in doubt") until a status webhook names it (we set `biz_opaque_callback_data`
//! to the outbox id) or the grace period passes; only then is it sent again.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::{now_ms, EngineCtx, Shutdown};
use crate::config::ProviderConfig;
use crate::domain::{MessageContent, MessageState};
use crate::providers::{Provider, SendError};
use crate::store::{self, MessageUpdate, OutboxMessage};

/// How long a send may stay in doubt before it is retried (a status webhook normally arrives
/// within seconds of an accepted send).
pub const IN_DOUBT_GRACE: Duration = Duration::from_secs(60);

/// The 24-hour customer-service window.
pub const SERVICE_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Can free text be sent to a contact whose last inbound message was at `last_inbound`? (pure)
pub fn inside_service_window(last_inbound: Option<i64>, now: i64) -> bool {
    last_inbound.is_some_and(|t| now - t < SERVICE_WINDOW_MS)
}

/// Backoff before retry number `attempt` (1-based): 2 s, 4 s, 8 s … capped at 5 minutes.
pub fn retry_delay(attempt: u32) -> Duration {
    let secs = 1u64 << attempt.clamp(1, 9);
    Duration::from_secs(secs.min(300))
}

pub struct Dispatcher {
    provider: Provider,
    ctx: Arc<EngineCtx>,
    limiter: DefaultDirectRateLimiter,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    max_attempts: u32,
    pair_interval: Duration,
    paused_until: Mutex<Option<Instant>>,
    last_sent: Mutex<HashMap<String, Instant>>,
}

impl Dispatcher {
    pub fn new(config: &ProviderConfig, provider: Provider, ctx: Arc<EngineCtx>) -> Arc<Self> {
        let ProviderConfig::MetaCloud(c) = config;
        // Bursts of at most 1/50 s worth of messages keep every one-second window within
        // about 2% of the configured rate, below the provider's ceiling.
        let per_sec = c.messages_per_second;
        let period = Duration::from_secs_f64(1.0 / per_sec);
        let burst = NonZeroU32::new(((per_sec / 50.0).floor() as u32).max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period).unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN)).allow_burst(burst);
        Arc::new(Self {
            provider,
            ctx,
            limiter: RateLimiter::direct(quota),
            in_flight: Arc::new(Semaphore::new(c.max_in_flight)),
            max_in_flight: c.max_in_flight,
            max_attempts: c.max_attempts,
            pair_interval: c.pair_interval,
            paused_until: Mutex::new(None),
            last_sent: Mutex::new(HashMap::new()),
        })
    }

    pub async fn run(self: Arc<Self>, mut shutdown: Shutdown) {
        let id = self.provider.id().to_string();
        info!(provider = %id, "dispatcher started");
        let wake = self.ctx.dispatch_wake.get(&id).cloned().unwrap_or_default();
        let mut last_doubt_check = Instant::now() - IN_DOUBT_GRACE;
        loop {
            if shutdown.is_set() {
                break;
            }
            if last_doubt_check.elapsed() >= Duration::from_secs(5) {
                last_doubt_check = Instant::now();
                if let Err(e) = self.requeue_in_doubt().await {
                    error!(provider = %id, "checking sends in doubt failed: {e:#}");
                }
            }
            let batch = match self.due_batch().await {
                Ok(b) => b,
                Err(e) => {
                    error!(provider = %id, "reading the outbox failed: {e:#}");
                    Vec::new()
                }
            };
            if batch.is_empty() {
                let sleep = self.idle_sleep().await;
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(sleep) => {}
                    _ = shutdown.wait() => break,
                }
                continue;
            }
            for m in batch {
                if shutdown.is_set() {
                    break;
                }
                if let Err(e) = self.dispatch(m, &mut shutdown).await {
                    error!(provider = %id, "dispatch failed: {e:#}");
                }
            }
        }
        // Let in-flight sends finish and commit their outcome before returning.
        let _all = self.in_flight.acquire_many(self.max_in_flight as u32).await;
        info!(provider = %id, "dispatcher stopped");
    }

    async fn due_batch(&self) -> anyhow::Result<Vec<OutboxMessage>> {
        let mut conn = self.ctx.store.conn().await?;
        store::due_messages(&mut conn, self.provider.id(), now_ms(), 256).await
    }

    /// Until the next queued message is due (at most 5 s, so in-doubt checks run).
    async fn idle_sleep(&self) -> Duration {
        let next = match self.ctx.store.conn().await {
            Ok(mut c) => store::next_due_at(&mut c, self.provider.id()).await.ok().flatten(),
            Err(_) => None,
        };
        match next {
            Some(t) => Duration::from_millis((t - now_ms()).clamp(1, 5000) as u64),
            None => Duration::from_secs(5),
        }
    }

    async fn requeue_in_doubt(&self) -> anyhow::Result<()> {
        let mut tx = self.ctx.store.begin().await?;
        let stale = store::in_doubt(&mut tx, self.provider.id(), now_ms() - IN_DOUBT_GRACE.as_millis() as i64).await?;
        for m in &stale {
            warn!(message = m.id, record = %m.record_key, to = %m.phone, "send outcome unknown and no status webhook named it: sending again");
            let u = MessageUpdate {
                state: Some(MessageState::Queued),
                next_attempt_at: Some(now_ms()),
                ..Default::default()
            };
            store::update_message(&mut tx, m.id, &u, now_ms()).await?;
        }
        tx.commit().await?;
        if !stale.is_empty() {
            self.ctx.wake_dispatcher(self.provider.id());
        }
        Ok(())
    }

    /// Policy checks, budget, `sending`, then the HTTP call in its own task.
    async fn dispatch(self: &Arc<Self>, mut m: OutboxMessage, shutdown: &mut Shutdown) -> anyhow::Result<()> {
        let now = now_ms();
        let mut conn = self.ctx.store.conn().await?;
        let contact = store::contact(&mut conn, m.phone.as_str()).await?;
        drop(conn);
        if contact.as_ref().is_some_and(|c| c.opted_out_at.is_some()) {
            return self.finish(&m, MessageState::Skipped, "not sent: the contact opted out").await;
        }
        let mut switched = None;
        if let MessageContent::Text { .. } = m.content {
            if !inside_service_window(contact.as_ref().and_then(|c| c.last_inbound_at), now) {
                match m.fallback.clone() {
                    Some(fb) => {
                        debug!(message = m.id, "outside the 24-hour window: using the template fallback");
                        m.content = fb.clone();
                        switched = Some(fb);
                    }
                    None => {
                        return self
                            .finish(
                                &m,
                                MessageState::Skipped,
                                "not sent: free text outside the 24-hour window and the rule has no fallback_template",
                            )
                            .await
                    }
                }
            }
        }
        // Pair rate: space messages to the same person.
        let wait_until =
            self.last_sent.lock().ok().and_then(|l| l.get(m.phone.as_str()).map(|t| *t + self.pair_interval));
        if let Some(t) = wait_until {
            if t > Instant::now() {
                let later = now + (t - Instant::now()).as_millis() as i64;
                let mut c = self.ctx.store.conn().await?;
                store::update_message(
                    &mut c,
                    m.id,
                    &MessageUpdate { next_attempt_at: Some(later), content: switched, ..Default::default() },
                    now,
                )
                .await?;
                return Ok(());
            }
        }
        // Provider-wide pause (throttling, credentials).
        loop {
            let until = self.paused_until.lock().ok().and_then(|p| *p);
            match until {
                Some(t) if t > Instant::now() => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(t) => {}
                        _ = shutdown.wait() => return Ok(()),
                    }
                }
                _ => break,
            }
        }
        let permit = tokio::select! {
            p = self.in_flight.clone().acquire_owned() => p?,
            _ = shutdown.wait() => return Ok(()),
        };
        tokio::select! {
            _ = self.limiter.until_ready() => {}
            _ = shutdown.wait() => return Ok(()),
        }
        // Committed before the network call: a crash from here on leaves the message in doubt,
        // never silently unsent or sent twice.
        m.attempts += 1;
        let mut c = self.ctx.store.conn().await?;
        let u = MessageUpdate {
            state: Some(MessageState::Sending),
            attempts: Some(m.attempts),
            content: switched,
            ..Default::default()
        };
        store::update_message(&mut c, m.id, &u, now_ms()).await?;
        drop(c);
        if let Ok(mut l) = self.last_sent.lock() {
            l.insert(m.phone.as_str().to_string(), Instant::now());
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let result = this.provider.send(&m.phone, &m.content, &m.id.to_string()).await;
            // The provider has answered: losing that answer would make the message look in
            // doubt and be sent again, so recording it is retried until the store takes it.
            let mut delay = Duration::from_millis(50);
            for attempt in 1.. {
                match this.record_outcome(&m, result.clone()).await {
                    Ok(()) => break,
                    Err(e) if attempt < 20 => {
                        warn!(message = m.id, attempt, "recording the send outcome failed, retrying: {e:#}");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                    Err(e) => {
                        error!(message = m.id, "recording the send outcome failed; it stays in doubt: {e:#}");
                        break;
                    }
                }
            }
            drop(permit);
        });
        Ok(())
    }

    async fn record_outcome(
        &self,
        m: &OutboxMessage,
        result: Result<crate::providers::Accepted, SendError>,
    ) -> anyhow::Result<()> {
        let now = now_ms();
        match result {
            Ok(acc) => {
                let mut tx = self.ctx.store.begin().await?;
                // A status webhook may already have moved it further (it carries our id).
                let current =
                    store::message_by_id(&mut tx, m.id).await?.map(|c| c.state).unwrap_or(MessageState::Sending);
                let next = current.advance(MessageState::Sent);
                let u = MessageUpdate {
                    state: next,
                    provider_message_id: Some(acc.provider_message_id.clone()),
                    wa_id: acc.recipient_id.clone(),
                    error: Some(None),
                    state_at: next.map(|_| now),
                    ..Default::default()
                };
                store::update_message(&mut tx, m.id, &u, now).await?;
                store::upsert_contact(&mut tx, m.phone.as_str(), acc.recipient_id.as_deref(), now).await?;
                if next.is_some() && store::is_latest_for_record(&mut tx, m).await? {
                    // A successful send clears an old send error, but not a row problem that
                    // is still there (a duplicate key, say).
                    let clear = (!store::has_open_issue(&mut tx, &m.source_id, &m.record_key.0).await?).then_some("");
                    let writes = self.ctx.status_writes(m, MessageState::Sent, now, clear);
                    store::queue_writes(&mut tx, &writes).await?;
                }
                tx.commit().await?;
                info!(message = m.id, rule = %m.rule_id, record = %m.record_key, to = %m.phone, id = %acc.provider_message_id, "message sent");
                self.ctx.wake_flusher(&m.source_id);
            }
            Err(e) => self.handle_error(m, e).await?,
        }
        Ok(())
    }

    async fn handle_error(&self, m: &OutboxMessage, e: SendError) -> anyhow::Result<()> {
        let now = now_ms();
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
                warn!(message = m.id, attempt = m.attempts, retry_in = ?d, "send failed, will retry: {reason}");
                requeue(now + d.as_millis() as i64, m.attempts)
            }
            SendError::Throttled { pause, .. } => {
                warn!(provider = %self.provider.id(), pause = ?pause, "provider throttling: slowing down: {reason}");
                self.pause_for(*pause);
                // Throttling is our pace, not the message's fault: the attempt is not counted.
                requeue(now + pause.as_millis() as i64, m.attempts.saturating_sub(1))
            }
            SendError::PairRate { .. } => {
                debug!(message = m.id, "pair rate hit: retrying this recipient later");
                requeue(now + (self.pair_interval.as_millis() as i64).max(1000) * 2, m.attempts.saturating_sub(1))
            }
            SendError::Unavailable { .. } => {
                error!(provider = %self.provider.id(), "provider refused our credentials; pausing 60s: {reason}");
                self.pause_for(Duration::from_secs(60));
                requeue(now + 60_000, m.attempts.saturating_sub(1))
            }
            SendError::InDoubt { .. } => {
                warn!(message = m.id, "send outcome unknown ({reason}); waiting for a status webhook before any retry");
                return Ok(());
            }
            SendError::WindowClosed { .. } => match (&m.content, &m.fallback) {
                (MessageContent::Text { .. }, Some(fb)) => MessageUpdate {
                    state: Some(MessageState::Queued),
                    next_attempt_at: Some(now),
                    content: Some(fb.clone()),
                    ..Default::default()
                },
                _ => return self.finish(m, MessageState::Failed, &reason).await,
            },
            SendError::Permanent { .. } => return self.finish(m, MessageState::Failed, &reason).await,
        };
        let mut c = self.ctx.store.conn().await?;
        store::update_message(&mut c, m.id, &update, now).await?;
        Ok(())
    }

    fn pause_for(&self, d: Duration) {
        if let Ok(mut p) = self.paused_until.lock() {
            let until = Instant::now() + d;
            if p.is_none_or(|cur| cur < until) {
                *p = Some(until);
            }
        }
    }

    /// Terminal outcome decided here (failed or skipped), written back to the row.
    async fn finish(&self, m: &OutboxMessage, state: MessageState, reason: &str) -> anyhow::Result<()> {
        let now = now_ms();
        let mut tx = self.ctx.store.begin().await?;
        let u = MessageUpdate {
            state: Some(state),
            error: Some(Some(reason.to_string())),
            state_at: Some(now),
            ..Default::default()
        };
        store::update_message(&mut tx, m.id, &u, now).await?;
        if store::is_latest_for_record(&mut tx, m).await? {
            store::queue_writes(&mut tx, &self.ctx.status_writes(m, state, now, Some(reason))).await?;
        }
        tx.commit().await?;
        warn!(message = m.id, rule = %m.rule_id, record = %m.record_key, to = %m.phone, state = %state, "{reason}");
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

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(retry_delay(1), Duration::from_secs(2));
        assert_eq!(retry_delay(3), Duration::from_secs(8));
        assert_eq!(retry_delay(50), Duration::from_secs(300));
    }
}
