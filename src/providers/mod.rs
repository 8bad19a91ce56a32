//! WhatsApp providers behind one contract.
//!
//! A provider is a folder here (`meta_cloud/`, `twilio/`) with the same inner shape: its config and
//! validation, its client (`mod.rs`), its error classification (`errors.rs`), its webhook
//! verification and parsing (`webhook.rs`), and its emulator twin under `sandbox/`. Its URLs,
//! JSON, form fields, header names and error codes never leave the folder. The engine sees the
//! closed enum [`Provider`]:
//!
//! * [`Provider::send`] a message, getting the provider's id or a [`SendError`] classified by
//!   the vendor's error code into what to do about it;
//! * [`Provider::verify_webhook`] a request (headers, public URL, raw body), answer the
//!   [`Provider::handshake`] if the vendor has one, [`Provider::parse_webhook`] into domain
//!   events, and [`Provider::acknowledgement`] what the vendor expects back;
//! * [`Provider::classify_failure`] an error reported later in a status webhook, exactly like a
//!   synchronous one;
//! * [`Provider::reconcile`] a send whose outcome is unknown, where the vendor can be asked;
//! * [`Provider::catch_up`] on what its webhooks said while recado could not hear them, for
//!   vendors that do not redeliver them.
//!
//! Adding a vendor is a folder, one variant here (and in `config::ProviderConfig`), and the
//! wiring in `app.rs`.

pub mod meta_cloud;
pub mod twilio;

use std::time::Duration;

use axum::http::HeaderMap;

use crate::domain::{MessageContent, PhoneNumber, ProviderError, ProviderEvent};
use crate::validation::Problems;

/// `pairs` as an `application/x-www-form-urlencoded` body (the inverse of [`form_pairs`]).
pub fn encode_form<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| {
            let enc =
                |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
            format!("{}={}", enc(k.as_ref()), enc(v.as_ref()))
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Sends a request to `vendor`'s send endpoint and reads the whole answer, both within
/// `timeout`. Only a refused connection is safe to retry: anything after the request was
/// written (a timeout included) may have been accepted, so it is in doubt.
pub async fn exchange(
    request: reqwest::RequestBuilder,
    vendor: &str,
    timeout: std::time::Duration,
) -> Result<(reqwest::StatusCode, Vec<u8>), SendError> {
    let response = request.timeout(timeout).send().await.map_err(|e| {
        if e.is_connect() {
            SendError::Retry { reason: format!("cannot reach {vendor}: {}", transport_reason(&e, vendor)) }
        } else if e.is_timeout() {
            SendError::InDoubt { reason: format!("no answer from {vendor} within {} s", timeout.as_secs()) }
        } else {
            SendError::InDoubt { reason: format!("no answer from {vendor}: {}", transport_reason(&e, vendor)) }
        }
    })?;
    let status = response.status();
    let bytes = tokio::time::timeout(timeout, response.bytes())
        .await
        .map_err(|_| SendError::InDoubt { reason: format!("the answer from {vendor} did not finish in time") })?
        .map_err(|e| SendError::InDoubt {
            reason: format!("answer from {vendor} cut short: {}", transport_reason(&e, vendor)),
        })?;
    Ok((status, bytes.to_vec()))
}

/// A transport error in words, with the URL (which may carry ids or tokens) replaced by the
/// vendor's name.
pub fn transport_reason(e: &reqwest::Error, vendor: &str) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), vendor);
    }
    text
}

/// Decoded `application/x-www-form-urlencoded` pairs (a form body or a query string), in order;
/// `+` is a space.
pub fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().to_string();
            (dec(k), dec(v))
        })
        .collect()
}

/// How fast a provider may send: provider-neutral.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Messages per second for the whole number.
    pub messages_per_second: f64,
    /// Least time between two messages to the same person.
    pub pair_interval: Duration,
}

/// What every provider has, whatever its vendor.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderSettings {
    pub id: String,
    pub throughput: Throughput,
    /// Concurrent sends in flight.
    pub max_in_flight: usize,
    /// Attempts before a retryable error becomes a failure.
    pub max_attempts: u32,
    /// How long a send whose outcome is unknown waits for the provider to say (from when it
    /// was sent, and at least from when this process started) before it is sent again.
    pub in_doubt_grace: Duration,
    /// The longest one call to the vendor may take.
    pub call_timeout: Duration,
}

/// The source-neutral settings as written.
pub struct RawSettings {
    pub id: String,
    pub messages_per_second: Option<f64>,
    pub default_messages_per_second: f64,
    pub pair_interval: Option<String>,
    pub default_pair_interval: Duration,
    pub max_in_flight: Option<u64>,
    pub max_attempts: Option<u64>,
    pub in_doubt_grace: Option<String>,
    pub default_in_doubt_grace: Duration,
    pub call_timeout: Option<String>,
}

impl ProviderSettings {
    pub fn validate(p: &mut Problems, path: &str, raw: RawSettings) -> ProviderSettings {
        let mps = p.number(
            &format!("{path}.messages_per_second"),
            raw.messages_per_second,
            raw.default_messages_per_second,
            0.0..=10_000.0,
        );
        let pair = p.duration(
            &format!("{path}.pair_interval"),
            raw.pair_interval.as_deref(),
            raw.default_pair_interval,
            Duration::ZERO,
            Duration::from_secs(24 * 3600),
        );
        let in_doubt_grace = p.duration(
            &format!("{path}.in_doubt_grace"),
            raw.in_doubt_grace.as_deref(),
            raw.default_in_doubt_grace,
            Duration::ZERO,
            Duration::from_secs(7 * 24 * 3600),
        );
        let call_timeout = p.duration(
            &format!("{path}.call_timeout"),
            raw.call_timeout.as_deref(),
            Duration::from_secs(20),
            Duration::from_millis(100),
            Duration::from_secs(600),
        );
        ProviderSettings {
            id: raw.id,
            throughput: Throughput { messages_per_second: mps, pair_interval: pair },
            max_in_flight: p.count(&format!("{path}.max_in_flight"), raw.max_in_flight, 32, 1..=1024) as usize,
            max_attempts: p.count(&format!("{path}.max_attempts"), raw.max_attempts, 8, 1..=100) as u32,
            in_doubt_grace,
            call_timeout,
        }
    }
}

/// A send the provider accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The provider's message id.
    pub provider_message_id: String,
    /// The provider's ids for the recipient (they may differ from the number we sent to).
    pub recipient_ids: Vec<String>,
}

/// Why a send did not go through, classified by the vendor's error code: what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Transient: try this message again later.
    Retry { reason: String },
    /// The number's throughput was exceeded: slow the whole provider down.
    Throttled { reason: String, pause: Duration },
    /// Too many messages to this one recipient: retry it after a pause.
    PairRate { reason: String },
    /// Free-form message outside the 24-hour window: use the template fallback if any.
    WindowClosed { error: ProviderError },
    /// The recipient told the provider to stop: nothing more goes to them.
    OptedOut { error: ProviderError },
    /// This message will never be accepted as it is.
    Permanent { error: ProviderError },
    /// Credentials or account problem: pause the provider; messages wait.
    Unavailable { reason: String },
    /// The request may have reached the provider and the answer was lost.
    InDoubt { reason: String },
}

impl SendError {
    /// For metrics: how recado classified the error, and the vendor's code when it gave one.
    pub fn class_and_code(&self) -> (&'static str, Option<i64>) {
        match self {
            SendError::Retry { .. } => ("retry", None),
            SendError::Throttled { .. } => ("throttled", None),
            SendError::PairRate { .. } => ("pair_rate", None),
            SendError::Unavailable { .. } => ("unavailable", None),
            SendError::InDoubt { .. } => ("in_doubt", None),
            SendError::WindowClosed { error } => ("window_closed", Some(error.code)),
            SendError::OptedOut { error } => ("opted_out", Some(error.code)),
            SendError::Permanent { error } => ("permanent", Some(error.code)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            SendError::Retry { reason }
            | SendError::Throttled { reason, .. }
            | SendError::PairRate { reason }
            | SendError::Unavailable { reason }
            | SendError::InDoubt { reason } => reason.clone(),
            SendError::WindowClosed { error } | SendError::OptedOut { error } | SendError::Permanent { error } => {
                error.describe()
            }
        }
    }
}

/// A webhook request as it reached us.
pub struct WebhookRequest<'a> {
    /// The URL the vendor called, as the vendor sees it (the configured public URL, path and
    /// query): signatures over URLs are computed on it.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Why a webhook request was refused (nothing was stored).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookRejection {
    /// No signature at all (401).
    #[error("unsigned: {0}")]
    Unsigned(String),
    /// A signature that does not match (403).
    #[error("forged: {0}")]
    Forged(String),
}

/// The answer to a subscription handshake (a GET on the webhook URL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handshake {
    /// Answer 200 with this body.
    Accepted(String),
    /// Wrong token or mode: 403.
    Refused,
    /// This vendor has no handshake: 405.
    NotSupported,
}

/// What the vendor expects as the body of a successful webhook answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    pub content_type: &'static str,
    pub body: &'static str,
}

/// A verified delivery, parsed: the events that could be read, and what could not (one
/// unreadable entry never drops the others).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedWebhook {
    pub events: Vec<ProviderEvent>,
    pub problems: Vec<String>,
}

/// A send whose outcome is unknown, for the vendor to look up.
#[derive(Debug, Clone)]
pub struct InDoubtSend {
    /// What the send asked the provider to echo (our outbox id).
    pub callback_data: String,
    pub to: PhoneNumber,
    pub content: MessageContent,
    /// When it was marked `sending` (Unix ms).
    pub marked_at: i64,
    /// Provider ids already recorded for other sends to the same person: not this send.
    pub known_ids: Vec<String>,
}

/// What the provider knows of a send whose outcome was unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciliation {
    /// It was accepted: record it, do not send again.
    Accepted(Accepted),
    /// The provider has no record of it: safe to send.
    NotSent,
    /// The provider cannot be asked: the send's webhooks are all there is to wait for.
    Unknown,
    /// The provider can be asked but the lookup did not conclude (it failed, or too many
    /// messages to look through): ask again later, never send again on this answer.
    Undecided(String),
}

/// What recado asks a provider to catch up on: everything since `since_ms` (Unix ms) that it
/// does not know yet.
#[derive(Debug, Clone, Default)]
pub struct CatchUp {
    pub since_ms: i64,
    /// Provider id → state recado has for its messages in the window.
    pub known_states: std::collections::HashMap<String, crate::domain::MessageState>,
    /// Inbound messages recado already has.
    pub known_inbound: std::collections::HashSet<String>,
}

/// A delivery recado fetched itself, in the vendor's own webhook format (applied exactly like
/// one the vendor sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedDelivery {
    pub query: String,
    pub body: String,
}

/// A template as the configuration sends it, for `recado check --online` to compare with the
/// vendor's own registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateUse {
    pub name: String,
    pub language: String,
    /// Body parameters the configuration fills ({{1}} … {{n}}).
    pub parameters: usize,
    /// Whether it fills a dynamic URL button's suffix.
    pub url_button: bool,
    /// The media header's kind it sends, if any.
    pub header: Option<crate::domain::MediaKind>,
    /// What sends it, for the message: `rule confirmacion`, `flow menu`.
    pub used_by: String,
    /// The flow that reads the replies to it (a rule's `on_reply`), if one does.
    pub replies_read_by: Option<ReplyReader>,
}

/// The flow that reads the replies to a template: whether a quick-reply button's text is an
/// answer to its opening question.
#[derive(Clone)]
pub struct ReplyReader {
    pub flow: String,
    accepts: std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>,
}

impl ReplyReader {
    pub fn new(flow: &str, accepts: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        Self { flow: flow.to_string(), accepts: std::sync::Arc::new(accepts) }
    }

    /// The buttons (by title) a person can tap that the flow does not take as an answer, as
    /// one problem for `recado check --online`.
    pub fn unread_buttons(&self, titles: &[String]) -> Option<String> {
        let unread: Vec<String> =
            titles.iter().filter(|t| !(self.accepts)(t.as_str())).map(|t| format!("'{t}'")).collect();
        (!unread.is_empty()).then(|| {
            format!(
                "its quick-reply button(s) {} are not an answer flow '{}' takes (a person who taps one is asked again): give the flow's first question a choice with that title",
                unread.join(", "),
                self.flow
            )
        })
    }
}

impl std::fmt::Debug for ReplyReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyReader").field("flow", &self.flow).finish_non_exhaustive()
    }
}

impl PartialEq for ReplyReader {
    fn eq(&self, other: &Self) -> bool {
        self.flow == other.flow
    }
}

impl Eq for ReplyReader {}

/// A configured provider (closed set: one variant per vendor).
#[derive(Clone)]
pub enum Provider {
    MetaCloud(meta_cloud::MetaCloud),
    Twilio(twilio::Twilio),
}

impl Provider {
    pub fn settings(&self) -> &ProviderSettings {
        match self {
            Provider::MetaCloud(m) => m.settings(),
            Provider::Twilio(t) => t.settings(),
        }
    }

    pub fn id(&self) -> &str {
        &self.settings().id
    }

    /// Sends one message; `callback_data` (our outbox id) comes back in status webhooks.
    pub async fn send(
        &self,
        to: &PhoneNumber,
        content: &MessageContent,
        callback_data: &str,
    ) -> Result<Accepted, SendError> {
        match self {
            Provider::MetaCloud(m) => m.send(to, content, callback_data).await,
            Provider::Twilio(t) => t.send(to, content, callback_data).await,
        }
    }

    /// Checks a webhook request's signature over exactly the bytes received.
    pub fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookRejection> {
        match self {
            Provider::MetaCloud(m) => m.verify_webhook(request),
            Provider::Twilio(t) => t.verify_webhook(request),
        }
    }

    /// Answers the subscription handshake (query string as received).
    pub fn handshake(&self, query: &str) -> Handshake {
        match self {
            Provider::MetaCloud(m) => m.handshake(query),
            Provider::Twilio(t) => t.handshake(query),
        }
    }

    /// The body of a successful webhook answer.
    pub fn acknowledgement(&self) -> Acknowledgement {
        match self {
            Provider::MetaCloud(_) => meta_cloud::ACKNOWLEDGEMENT,
            Provider::Twilio(_) => twilio::ACKNOWLEDGEMENT,
        }
    }

    /// Parses a verified delivery into events: its body, and the query string of the URL the
    /// vendor called (vendors that sign URLs carry data there).
    pub fn parse_webhook(&self, query: &str, body: &[u8]) -> Result<ParsedWebhook, String> {
        match self {
            Provider::MetaCloud(_) => meta_cloud::webhook::parse(body),
            Provider::Twilio(t) => t.parse_webhook(query, body),
        }
    }

    /// Lets the provider act on a failure a status webhook reported about one of its messages
    /// (Meta: a media id it no longer holds makes the uploads be made again).
    pub fn note_failure(&self, error: &ProviderError) {
        match self {
            Provider::MetaCloud(m) => m.note_failure(error),
            Provider::Twilio(_) => {}
        }
    }

    /// Classifies an error a status webhook reported, exactly like a synchronous one.
    pub fn classify_failure(&self, error: &ProviderError) -> SendError {
        match self {
            Provider::MetaCloud(_) => meta_cloud::errors::classify_code(error.code, 0, error.clone()),
            Provider::Twilio(_) => twilio::errors::classify_code(error.code, 0, error.clone()),
        }
    }

    /// What the vendor's webhooks would have said since `ask.since_ms` and recado does not know,
    /// fetched from its API, for vendors that do not redeliver webhooks after an outage (empty
    /// for the others). Applying one again is harmless: statuses and inbound messages are
    /// de-duplicated.
    pub async fn catch_up(&self, ask: &CatchUp) -> Result<Vec<FetchedDelivery>, String> {
        match self {
            // Meta retries undelivered webhooks for days.
            Provider::MetaCloud(_) => Ok(Vec::new()),
            Provider::Twilio(t) => t.catch_up(ask).await,
        }
    }

    /// Asks the vendor whether the credentials work and whether each template exists, is
    /// approved, in that language, with that many parameters. Returns what is wrong, one
    /// sentence each; nothing is sent.
    pub async fn check_online(&self, uses: &[TemplateUse]) -> Vec<String> {
        match self {
            Provider::MetaCloud(m) => m.check_online(uses).await,
            Provider::Twilio(t) => t.check_online(uses).await,
        }
    }

    /// Asks the vendor about a send whose outcome is unknown.
    pub async fn reconcile(&self, send: &InDoubtSend) -> Reconciliation {
        match self {
            Provider::MetaCloud(m) => m.reconcile(send).await,
            Provider::Twilio(t) => t.reconcile(send).await,
        }
    }
}

/// A file a person sent, fetched from the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchedMedia {
    pub bytes: Vec<u8>,
    /// As the provider serves it.
    pub mime_type: String,
}

/// Why a file could not be fetched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// Larger than recado keeps: never fetched whole.
    #[error("the file is {size} bytes, over the {max}-byte cap (state.media_max_mb)")]
    TooLarge { size: u64, max: u64 },
    /// The provider no longer has it, or will never give it (an address that is not the
    /// provider's): asking again will not help.
    #[error("{0}")]
    Gone(String),
    /// Worth another try later (a timeout, a 5xx, an expired download address).
    #[error("{0}")]
    Transient(String),
}

/// The longest a file's download may take (a 16 MB video on a slow link), apart from the
/// provider's `call_timeout`, which answers to API calls.
pub const MEDIA_DOWNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

/// Reads a download's body up to `max` bytes, within `timeout`: a body that grows past the cap
/// is refused without being read further.
pub async fn read_capped(
    mut response: reqwest::Response,
    max: u64,
    timeout: std::time::Duration,
    vendor: &str,
) -> Result<Vec<u8>, MediaError> {
    if let Some(size) = response.content_length().filter(|n| *n > max) {
        return Err(MediaError::TooLarge { size, max });
    }
    let read = async {
        let mut bytes: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| {
            MediaError::Transient(format!("the file from {vendor} was cut short: {}", transport_reason(&e, vendor)))
        })? {
            if bytes.len() as u64 + chunk.len() as u64 > max {
                return Err(MediaError::TooLarge { size: bytes.len() as u64 + chunk.len() as u64, max });
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(bytes)
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| MediaError::Transient(format!("the file from {vendor} did not arrive in time")))?
}

impl Provider {
    /// Fetches a file a person sent (`media` as the provider's webhook gave it), refusing one
    /// over `max` bytes.
    pub async fn fetch_media(&self, media: &crate::domain::MediaRef, max: u64) -> Result<FetchedMedia, MediaError> {
        match self {
            Provider::MetaCloud(m) => m.fetch_media(media, max).await,
            Provider::Twilio(t) => t.fetch_media(media, max).await,
        }
    }
}
