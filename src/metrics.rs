//! Prometheus metrics, served at `/metrics` in the text exposition format.
//!
//! Two kinds live here. Events are counted where they happen (a send's latency in the
//! dispatcher, a poll in the poller, a webhook at the door and in the inbox). States are read
//! from the store when Prometheus scrapes (the funnel of each rule, the write-back backlog, the
//! timers pending), so they are never out of step with what `recado report` says, survive
//! restarts, and cost nothing between scrapes.
//!
//! Labels are ids from the configuration (rule, source, provider) and closed sets (states,
//! results, error codes): never a phone number or any other value from a record.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleStage {
    pub rule: String,
    pub stage: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabel {
    pub provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderError {
    pub provider: String,
    /// How recado classified the error (`retry`, `throttled`, `permanent`, …).
    pub class: String,
    /// The vendor's error code, or `none` when the failure had none (a timeout, a 5xx).
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceResult {
    pub source: String,
    /// `ok`, `rate_limited` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceWindow {
    pub source: String,
    /// `minute` or `day`.
    pub window: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookResult {
    pub provider: String,
    /// `accepted`, `unsigned`, `forged`, `not_text` or `not_stored`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookEvent {
    pub provider: String,
    /// `status`, `message`, `unreadable` (a part of a delivery skipped) or `parked` (a
    /// signed delivery that could not be read at all).
    pub kind: String,
}

/// Every metric recado exports.
pub struct Metrics {
    registry: Registry,
    /// Messages by rule and funnel stage (set at scrape from the store).
    pub messages: Family<RuleStage, Gauge>,
    /// Seconds from the send call to the provider's answer.
    pub send_seconds: Family<ProviderLabel, Histogram, fn() -> Histogram>,
    /// Sends the provider refused or that failed, by class and code.
    pub provider_errors: Family<ProviderError, Counter>,
    /// Polls by result.
    pub polls: Family<SourceResult, Counter>,
    /// Seconds a poll took (read, diff, commit).
    pub poll_seconds: Family<SourceLabel, Histogram, fn() -> Histogram>,
    /// Phone numbers parsed by reads: after the first read, only changed cells' (a regression
    /// back to every row's shows here first).
    pub phone_parses: Family<SourceLabel, Counter>,
    /// Stored snapshot rows read back to tell what changed: one per record whose fingerprint
    /// moved (memory keeps no field text; a regression to reading every row shows here).
    pub snapshot_reads: Family<SourceLabel, Counter>,
    /// Requests counted against a source's quota in its window (set at scrape).
    pub quota_used: Family<SourceWindow, Gauge>,
    /// What that window allows (set at scrape).
    pub quota_limit: Family<SourceWindow, Gauge>,
    /// Webhook requests by result at the door.
    pub webhooks: Family<WebhookResult, Counter>,
    /// Events applied from stored webhooks, by kind.
    pub webhook_events: Family<WebhookEvent, Counter>,
    /// Transactions that stored webhook deliveries (concurrent deliveries share one).
    pub webhook_commits: Counter,
    /// Deliveries verified and waiting for their turn to be stored.
    pub webhooks_storing: Gauge,
    /// Transactions the inbox applied stored deliveries in.
    pub inbox_transactions: Counter,
    /// Cells (or fields) waiting to be written back (set at scrape).
    pub write_back_pending: Gauge,
    /// Timers not yet fired (set at scrape).
    pub timers_pending: Gauge,
    /// Webhooks stored and not yet applied (set at scrape).
    pub webhooks_pending: Gauge,
    /// Hand-offs open (set at scrape).
    pub handoffs_open: Gauge,
    /// Open hand-offs whose person has waited longer than `handoff.unanswered_after` (set at
    /// scrape).
    pub handoffs_unanswered: Gauge,
    /// Seconds the store queries of the last scrape took.
    pub scrape_seconds: Gauge<f64, AtomicU64>,
}

fn latency_buckets() -> Histogram {
    Histogram::new([0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("recado");
        let m = Metrics {
            messages: Family::default(),
            send_seconds: Family::new_with_constructor(latency_buckets),
            provider_errors: Family::default(),
            polls: Family::default(),
            poll_seconds: Family::new_with_constructor(latency_buckets),
            phone_parses: Family::default(),
            snapshot_reads: Family::default(),
            quota_used: Family::default(),
            quota_limit: Family::default(),
            webhooks: Family::default(),
            webhook_events: Family::default(),
            webhook_commits: Counter::default(),
            webhooks_storing: Gauge::default(),
            inbox_transactions: Counter::default(),
            write_back_pending: Gauge::default(),
            timers_pending: Gauge::default(),
            webhooks_pending: Gauge::default(),
            handoffs_open: Gauge::default(),
            handoffs_unanswered: Gauge::default(),
            scrape_seconds: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages",
            "Messages by rule and funnel stage (a read message also counts as sent and delivered)",
            m.messages.clone(),
        );
        registry.register("send_seconds", "Seconds from a send call to the provider's answer", m.send_seconds.clone());
        registry.register(
            "provider_errors",
            "Send errors by provider, class and vendor code",
            m.provider_errors.clone(),
        );
        registry.register("polls", "Polls of each source by result", m.polls.clone());
        registry.register("poll_seconds", "Seconds a poll took", m.poll_seconds.clone());
        registry.register(
            "phone_parses",
            "Phone numbers parsed by reads of each source (every record's at the first read after start, then new and changed records' only)",
            m.phone_parses.clone(),
        );
        registry.register(
            "snapshot_reads",
            "Stored snapshot rows read back by polls of each source (records whose fingerprint moved)",
            m.snapshot_reads.clone(),
        );
        registry.register(
            "source_quota_used",
            "Requests counted against a source's quota in its window",
            m.quota_used.clone(),
        );
        registry.register(
            "source_quota_limit",
            "Requests a source's quota allows in its window",
            m.quota_limit.clone(),
        );
        registry.register("webhooks", "Webhook requests by provider and result at the door", m.webhooks.clone());
        registry.register(
            "webhook_events",
            "Events applied from stored webhooks by provider and kind",
            m.webhook_events.clone(),
        );
        registry.register(
            "webhook_commits",
            "Transactions that stored webhook deliveries (concurrent deliveries share one)",
            m.webhook_commits.clone(),
        );
        registry.register(
            "webhooks_storing",
            "Webhook deliveries verified and waiting for their turn to be stored",
            m.webhooks_storing.clone(),
        );
        registry.register(
            "inbox_transactions",
            "Transactions the inbox applied stored deliveries in",
            m.inbox_transactions.clone(),
        );
        registry.register(
            "write_back_pending",
            "Values waiting to be written back to the sources",
            m.write_back_pending.clone(),
        );
        registry.register(
            "timers_pending",
            "Timers (reminders, survey reminders, expiries) not yet fired",
            m.timers_pending.clone(),
        );
        registry.register("webhooks_pending", "Webhooks stored and not yet applied", m.webhooks_pending.clone());
        registry.register("handoffs_open", "Hand-offs to a person that are open", m.handoffs_open.clone());
        registry.register(
            "handoffs_unanswered",
            "Open hand-offs whose person has waited longer than handoff.unanswered_after",
            m.handoffs_unanswered.clone(),
        );
        registry.register(
            "scrape_store_seconds",
            "Seconds the store queries of the last scrape took",
            m.scrape_seconds.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Counts a webhook request at the door.
    pub fn webhook(&self, provider: &str, result: &str) {
        self.webhooks
            .get_or_create(&WebhookResult { provider: provider.to_string(), result: result.to_string() })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoding error would be a bug in a label.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("encoding the metrics failed: {e}");
        }
        out
    }
}
