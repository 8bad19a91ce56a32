//! Emulator of the Meta WhatsApp Cloud API, as strict as Meta: the send endpoint with body
//! validation, a template registry (name, language, parameter count, WhatsApp's parameter rules:
//! no line breaks, tabs or more than four spaces in a row — 132018 — and a length limit on the
//! filled-in text — 132005), the 24-hour window, throughput and pair-rate limits, `wa_id`s that
//! differ from the number sent to (Brazilian mobiles lose their ninth digit), users with a
//! username and no visible number (business-scoped ids), signed status webhooks (sent →
//! delivered → read, or failed) retried as Meta does — at once, then less and less often for
//! seven days, a schedule tests can compress — duplicated or reordered on request, the Graph
//! reads `recado check --online` makes (`GET /{phone_number_id}`, and the business account's
//! `message_templates`, paged with cursors; only an APPROVED template sends), simulated
//! people who read and reply, and faults: error codes, answers that never come, sends accepted
//! whose answer is lost, and a hold that keeps answers back until released.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tracing::debug;

use super::SandboxState;
use crate::providers::meta_cloud::webhook::sign;

/// Settings of the Meta emulator (also changeable through the admin API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct MetaSettings {
    pub phone_number_id: String,
    /// The WhatsApp Business Account the number belongs to (its templates are listed under
    /// it).
    pub business_account_id: String,
    pub access_token: String,
    pub app_secret: String,
    /// Where status and message webhooks are POSTed (the daemon's `/webhooks/<id>`).
    pub webhook_url: Option<String>,
    /// Throughput ceiling of the number (messages per second).
    pub messages_per_second: f64,
    /// At most this many messages to one person within `pair_window_ms`.
    pub pair_burst: u32,
    pub pair_window_ms: u64,
    /// Delay before the `sent` webhook; `delivered` and `read` follow.
    pub status_delay_ms: u64,
    /// Send status webhooks at all (off for pure throughput runs).
    pub statuses: bool,
    /// Deliver every webhook twice.
    pub duplicate_webhooks: bool,
    /// Deliver `read` before `delivered`.
    pub reorder_webhooks: bool,
    /// Free text outside the window: `async` (accept, then a failed webhook, as Meta mostly
    /// does) or `sync` (400 with 131047).
    pub window_error: String,
    /// Meta's retry schedule for unacknowledged webhooks is multiplied by this (1.0 = real
    /// time: at once, then 10 s, 30 s, 1 min, … for seven days; tests compress it).
    pub webhook_time_scale: f64,
}

impl Default for MetaSettings {
    fn default() -> Self {
        Self {
            phone_number_id: "1234567890".into(),
            business_account_id: "1029384756".into(),
            access_token: "sandbox-token".into(),
            app_secret: "sandbox-app-secret".into(),
            webhook_url: None,
            messages_per_second: 80.0,
            pair_burst: 6,
            pair_window_ms: 6000,
            status_delay_ms: 50,
            statuses: true,
            duplicate_webhooks: false,
            reorder_webhooks: false,
            window_error: "async".into(),
            webhook_time_scale: 1.0,
        }
    }
}

/// An approved template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateDef {
    pub name: String,
    pub language: String,
    pub body_params: usize,
    #[serde(default)]
    pub url_button: bool,
    /// Characters of the body's own text (without its parameters): with the parameters it must
    /// stay within 1,024 characters when the template has other components, 32,768 otherwise.
    #[serde(default = "default_body_chars")]
    pub body_chars: usize,
    /// Its review status: `APPROVED` (default), `PENDING`, `REJECTED`, `PAUSED` or `DISABLED`.
    /// Only an approved template can be sent.
    #[serde(default = "default_status")]
    pub status: String,
    /// Why it was rejected, when it was (`INVALID_FORMAT`, `PROMOTIONAL`, …).
    #[serde(default)]
    pub rejected_reason: Option<String>,
    /// Titles of its quick-reply buttons ("Confirmo", "Necesito cambiar la hora"): the only
    /// replies a person can tap on it.
    #[serde(default)]
    pub quick_replies: Vec<String>,
    /// A media header's format, as approved: `IMAGE`, `DOCUMENT` or `VIDEO` (none: no media
    /// header, and a header parameter is refused).
    #[serde(default)]
    pub header: Option<String>,
}

fn default_body_chars() -> usize {
    120
}

fn default_status() -> String {
    "APPROVED".into()
}

impl TemplateDef {
    /// A template whose body has `body_params` parameters (and a URL button when `url_button`).
    pub fn new(name: &str, language: &str, body_params: usize, url_button: bool) -> Self {
        Self {
            name: name.into(),
            language: language.into(),
            body_params,
            url_button,
            body_chars: default_body_chars(),
            status: default_status(),
            rejected_reason: None,
            quick_replies: Vec::new(),
            header: None,
        }
    }

    /// The same template with a media header (`IMAGE`, `DOCUMENT` or `VIDEO`).
    pub fn with_header(mut self, format: &str) -> Self {
        self.header = Some(format.to_uppercase());
        self
    }

    /// The same template with these quick-reply buttons.
    pub fn with_quick_replies(mut self, titles: &[&str]) -> Self {
        self.quick_replies = titles.iter().map(|t| t.to_string()).collect();
        self
    }

    /// The template as the message_templates API lists it.
    fn listed(&self, id: usize) -> Value {
        let body: String = std::iter::once(format!("[{}]", self.name))
            .chain((1..=self.body_params).map(|i| format!("{{{{{i}}}}}")))
            .collect::<Vec<_>>()
            .join(" ");
        let mut components = Vec::new();
        if let Some(format) = &self.header {
            components
                .push(json!({ "type": "HEADER", "format": format, "example": { "header_handle": ["4::aW1hZ2U="] } }));
        }
        components.push(json!({ "type": "BODY", "text": body }));
        let mut buttons: Vec<Value> =
            self.quick_replies.iter().map(|t| json!({ "type": "QUICK_REPLY", "text": t })).collect();
        if self.url_button {
            buttons.push(json!({ "type": "URL", "text": "Abrir", "url": "https://example.org/{{1}}" }));
        }
        if !buttons.is_empty() {
            components.push(json!({ "type": "BUTTONS", "buttons": buttons }));
        }
        let mut t = json!({
            "name": self.name,
            "language": self.language,
            "status": self.status,
            "category": "UTILITY",
            "parameter_format": "POSITIONAL",
            "components": components,
            "id": format!("{}", 1_000_000_000_000u64 + id as u64),
        });
        if let Some(r) = &self.rejected_reason {
            t["rejected_reason"] = json!(r);
        }
        t
    }
}

/// A simulated WhatsApp user.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SimUser {
    /// Digits, as WhatsApp ids are written.
    pub wa_id: String,
    pub name: String,
    pub on_whatsapp: bool,
    pub reads: bool,
    pub read_after_ms: u64,
    /// Replies this text to the first message it reads.
    pub reply: Option<String>,
    pub reply_after_ms: u64,
    /// The business-scoped user id Meta gives this user (`US.1349…`), if any.
    pub user_id: Option<String>,
    /// The user's username (`@name`), if any.
    pub username: Option<String>,
    /// Whether webhooks show the user's number (`from`, `wa_id`); users with a username may
    /// hide it.
    pub phone_visible: bool,
    /// What the person does, in order: the first line when [`MetaState::start_script`] is
    /// called, each next one after a message from the business arrives (and is read).
    pub script: Vec<ScriptLine>,
}

pub use super::ScriptLine;

/// A message a simulated person sent to the business.
#[derive(Debug, Clone, Serialize)]
pub struct UserMessage {
    pub wa_id: String,
    /// The text, or the title of the button or row tapped.
    pub text: String,
    pub at_ms: i64,
}

impl Default for SimUser {
    fn default() -> Self {
        Self {
            wa_id: String::new(),
            name: "Participante".into(),
            on_whatsapp: true,
            reads: true,
            read_after_ms: 300,
            reply: None,
            reply_after_ms: 600,
            user_id: None,
            username: None,
            phone_visible: true,
            script: Vec::new(),
        }
    }
}

/// A fault for upcoming sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetaFault {
    /// Meta's error code (for `sync` and `async`).
    #[serde(default)]
    pub code: i64,
    #[serde(default = "default_fault_status")]
    pub http_status: u16,
    #[serde(default = "one")]
    pub count: u32,
    /// `sync` (an error answer; the default), `async` (accepted, then a failed status webhook),
    /// `timeout` (no answer ever; nothing sent), or `drop` (accepted and sent, then the answer is
    /// lost: the connection hangs).
    #[serde(default)]
    pub mode: Option<String>,
    /// Only for sends to this number (digits); any when absent.
    #[serde(default)]
    pub to: Option<String>,
    /// Answer this late (any mode).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

impl MetaFault {
    /// A fault with a typo is an error, not "anything": a test cannot pass by accident.
    pub fn validate(&self) -> Result<(), String> {
        let mode = self.mode.as_deref().unwrap_or("sync");
        if !["sync", "async", "timeout", "drop"].contains(&mode) {
            return Err(format!("unknown fault mode '{mode}': expected sync, async, timeout or drop"));
        }
        if matches!(mode, "sync" | "async") && self.code <= 0 {
            return Err(format!("a {mode} fault needs Meta's error code"));
        }
        if mode == "sync" && !(400..=599).contains(&self.http_status) {
            return Err(format!("http_status {} is not an error status", self.http_status));
        }
        if self.count == 0 {
            return Err("count must be at least 1".into());
        }
        if self.to.as_deref().is_some_and(|t| t.is_empty() || !t.chars().all(|c| c.is_ascii_digit())) {
            return Err("to: expected the recipient's digits".into());
        }
        Ok(())
    }
}

fn default_fault_status() -> u16 {
    400
}
fn one() -> u32 {
    1
}

/// A message the emulator accepted.
#[derive(Debug, Clone, Serialize)]
pub struct SentMessage {
    pub wamid: String,
    pub to: String,
    pub wa_id: String,
    pub body: Value,
    pub callback_data: Option<String>,
    pub at_ms: i64,
}

pub struct MetaState {
    inner: Mutex<Inner>,
    http: reqwest::Client,
    /// While true, send answers wait (the messages are accepted when released).
    hold: tokio::sync::watch::Sender<bool>,
    /// Webhooks (and simulated replies) scheduled but not yet delivered or given up.
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Sends waiting for a release.
    waiting: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Seconds added to the clock of the timestamps it writes (time passed, for tests that
    /// move the daemon's clock: see `age_windows`).
    time_offset_secs: std::sync::atomic::AtomicI64,
}

/// Counts one scheduled delivery until dropped.
struct InFlight(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn new(counter: &std::sync::Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(std::sync::Arc::clone(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

struct Inner {
    settings: MetaSettings,
    templates: HashMap<(String, String), TemplateDef>,
    users: HashMap<String, SimUser>,
    windows: HashMap<String, Instant>,
    /// How much older a window is than the wall clock says ([`Self::age_windows`]).
    windows_aged: HashMap<String, Duration>,
    sent: Vec<SentMessage>,
    /// Messages accepted per recipient (load runs wait on it without scanning `sent`).
    sent_to: HashMap<String, (usize, i64)>,
    bucket: (f64, Instant),
    pair: HashMap<String, VecDeque<Instant>>,
    faults: VecDeque<MetaFault>,
    replied: std::collections::HashSet<String>,
    /// The next script line of each scripted user.
    script_pos: HashMap<String, usize>,
    /// What simulated people wrote or tapped, in order.
    received: Vec<UserMessage>,
    throttled: u64,
    deliveries: u64,
    delivery_failures: u64,
    /// Files people sent, by media id.
    media: HashMap<String, MediaFile>,
    /// Download addresses given out: token → (media id, when it was given).
    media_links: HashMap<String, (String, Instant)>,
    /// How long a download address works (Meta: five minutes).
    media_link_ttl: Duration,
    /// Files downloaded whole.
    media_downloads: u64,
    /// Files the business uploaded (`POST /{phone-number-id}/media`).
    uploads: u64,
    /// The media ids of those uploads (Meta drops them after 30 days: [`MetaState::expire_uploads`]).
    uploaded: Vec<String>,
}

/// A file a simulated person sent, kept for the media endpoints.
#[derive(Debug, Clone)]
struct MediaFile {
    bytes: Vec<u8>,
    mime_type: String,
}

impl MetaState {
    pub fn new(settings: MetaSettings) -> Self {
        Self {
            inner: Mutex::new(Inner {
                settings,
                templates: HashMap::new(),
                users: HashMap::new(),
                windows: HashMap::new(),
                windows_aged: HashMap::new(),
                sent: Vec::new(),
                sent_to: HashMap::new(),
                bucket: (0.0, Instant::now()),
                pair: HashMap::new(),
                faults: VecDeque::new(),
                replied: Default::default(),
                script_pos: Default::default(),
                received: Vec::new(),
                throttled: 0,
                deliveries: 0,
                delivery_failures: 0,
                media: HashMap::new(),
                media_links: HashMap::new(),
                media_link_ttl: Duration::from_secs(300),
                media_downloads: 0,
                uploads: 0,
                uploaded: Vec::new(),
            }),
            http: reqwest::Client::new(),
            hold: tokio::sync::watch::channel(false).0,
            in_flight: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            waiting: std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            time_offset_secs: std::sync::atomic::AtomicI64::new(0),
        }
    }

    /// Webhooks and simulated replies scheduled and not yet delivered (or given up).
    pub fn deliveries_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Holds every send answer back until [`MetaState::release`] (tests that need a send to be
    /// in flight at a precise moment).
    pub fn hold_sends(&self) {
        self.hold.send_replace(true);
    }

    pub fn release(&self) {
        self.hold.send_replace(false);
    }

    /// Sends waiting for [`MetaState::release`].
    pub fn held(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::Acquire)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> MetaSettings {
        self.lock().settings.clone()
    }

    pub fn update_settings(&self, f: impl FnOnce(&mut MetaSettings)) {
        f(&mut self.lock().settings)
    }

    pub fn add_template(&self, t: TemplateDef) {
        self.lock().templates.insert((t.name.clone(), t.language.clone()), t);
    }

    pub fn add_user(&self, u: SimUser) {
        self.lock().users.insert(u.wa_id.clone(), u);
    }

    /// Adds a fault, refusing one that is not well formed.
    pub fn try_inject(&self, f: MetaFault) -> Result<(), String> {
        f.validate()?;
        self.lock().faults.push_back(f);
        Ok(())
    }

    /// Adds a fault written by test code (panics on a malformed one: a typo must not pass).
    pub fn inject(&self, f: MetaFault) {
        if let Err(e) = self.try_inject(f) {
            panic!("malformed Meta fault: {e}");
        }
    }

    /// Unix seconds as this WhatsApp's clock reads them (moved on by `age_windows`).
    fn now_secs(&self) -> i64 {
        unix() + self.time_offset_secs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every person's 24-hour window closes `by` sooner, as if that much time had passed
    /// since they wrote (tests that move the daemon's clock move WhatsApp's with it); the
    /// timestamps it writes from now on move on by `by` too.
    pub fn age_windows(&self, by: Duration) {
        // Time passes for WhatsApp too: the timestamps of what it sends from now on as well.
        self.time_offset_secs.fetch_add(by.as_secs() as i64, std::sync::atomic::Ordering::Relaxed);
        let mut g = self.lock();
        let open: Vec<String> = g.windows.keys().cloned().collect();
        for k in open {
            let age = g.windows_aged.entry(k).or_default();
            *age = age.saturating_add(by);
        }
    }

    pub fn sent(&self) -> Vec<SentMessage> {
        self.lock().sent.clone()
    }

    /// How many messages were accepted (cheaper than `sent()` for polling).
    pub fn sent_count(&self) -> usize {
        self.lock().sent.len()
    }

    /// Messages accepted for one recipient (digits), and when the last one was (ms).
    pub fn sent_count_to(&self, wa_id: &str) -> (usize, i64) {
        self.lock().sent_to.get(wa_id).copied().unwrap_or((0, 0))
    }

    /// Sends answered with 130429 (the number's throughput exceeded).
    pub fn throttled(&self) -> u64 {
        self.lock().throttled
    }

    /// Webhook POSTs made, and how many were not answered 200.
    pub fn delivery_stats(&self) -> (u64, u64) {
        let g = self.lock();
        (g.deliveries, g.delivery_failures)
    }

    /// A simulated person writes to the business (opens their 24-hour window).
    pub fn user_says(self: &std::sync::Arc<Self>, wa_id: &str, text: &str, context: Option<&str>) -> String {
        let msg = json!({ "type": "text", "text": { "body": text } });
        self.user_sends(wa_id, msg, context)
    }

    /// A simulated person taps the quick-reply button titled `title` of the template message
    /// `context`. WhatsApp shows only the buttons the approved template has: a title it does
    /// not have, or a message that is not such a template, is refused. The payload is the
    /// button's text (recado sends no payloads of its own).
    pub fn user_taps(self: &std::sync::Arc<Self>, wa_id: &str, title: &str, context: &str) -> Result<String, String> {
        {
            let g = self.lock();
            let Some(m) = g.sent.iter().find(|m| m.wamid == context) else {
                return Err(format!("no message {context} was sent"));
            };
            let name = m.body["template"]["name"].as_str().unwrap_or_default().to_string();
            let language = m.body["template"]["language"]["code"].as_str().unwrap_or_default().to_string();
            let buttons = g.templates.get(&(name.clone(), language.clone())).map(|t| t.quick_replies.clone());
            match buttons {
                None => return Err(format!("message {context} is not an approved template")),
                Some(b) if !b.iter().any(|t| t == title) => {
                    return Err(format!(
                        "template '{name}' ({language}) has no quick-reply button '{title}' (it has {b:?})"
                    ))
                }
                Some(_) => {}
            }
        }
        let msg = json!({ "type": "button", "button": { "payload": title, "text": title } });
        Ok(self.user_sends(wa_id, msg, Some(context)))
    }

    /// What simulated people wrote (or the titles they tapped), oldest first.
    pub fn received(&self) -> Vec<UserMessage> {
        self.lock().received.clone()
    }

    /// A simulated person reacts with `emoji` to message `message_id`.
    pub fn user_reacts(self: &std::sync::Arc<Self>, wa_id: &str, message_id: &str, emoji: &str) -> String {
        let msg = json!({ "type": "reaction", "reaction": { "message_id": message_id, "emoji": emoji } });
        self.user_sends(wa_id, msg, None)
    }

    /// A simulated person sends a photo (by a media id, as WhatsApp does).
    pub fn user_sends_image(self: &std::sync::Arc<Self>, wa_id: &str, caption: &str) -> String {
        self.user_sends_media(wa_id, "image", sample_jpeg(2_000), "image/jpeg", caption, None)
    }

    /// Person `wa_id` sends a file (`image`, `document`, `audio`, `video`, `sticker`): Meta keeps
    /// it under a media id and the webhook carries the id, its type and base64 SHA-256.
    pub fn user_sends_media(
        self: &std::sync::Arc<Self>,
        wa_id: &str,
        media_type: &str,
        bytes: Vec<u8>,
        mime_type: &str,
        caption: &str,
        filename: Option<&str>,
    ) -> String {
        use base64::Engine;
        use sha2::Digest;
        let id = format!("{}", 100_000_000_000_000u64 + rand::random::<u64>() % 900_000_000_000_000);
        let sha = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&bytes));
        let mut item = json!({ "id": id, "mime_type": mime_type, "sha256": sha });
        if !caption.is_empty() && media_type != "audio" && media_type != "sticker" {
            item["caption"] = json!(caption);
        }
        if let Some(f) = filename {
            item["filename"] = json!(f);
        }
        if media_type == "audio" {
            item["voice"] = json!(true);
        }
        self.lock().media.insert(id, MediaFile { bytes, mime_type: mime_type.to_string() });
        self.user_sends(wa_id, json!({ "type": media_type, media_type: item }), None)
    }

    /// Person `wa_id` shares a location (a place, when `name` is given).
    pub fn user_sends_location(
        self: &std::sync::Arc<Self>,
        wa_id: &str,
        latitude: f64,
        longitude: f64,
        name: &str,
        address: &str,
    ) -> String {
        let mut location = json!({ "latitude": latitude, "longitude": longitude });
        if !name.is_empty() {
            location["name"] = json!(name);
            location["address"] = json!(address);
        }
        self.user_sends(wa_id, json!({ "type": "location", "location": location }), None)
    }

    /// Whether free text outside the window is refused in the answer (`sync`) or accepted and
    /// failed by a status webhook (`async`, WhatsApp's usual way).
    pub fn set_window_error(&self, mode: &str) {
        self.lock().settings.window_error = mode.to_string();
    }

    /// How long the download addresses given from now on work (tests shorten it to see one
    /// expire).
    pub fn set_media_link_ttl(&self, ttl: Duration) {
        self.lock().media_link_ttl = ttl;
    }

    /// Files downloaded whole through a download address.
    pub fn media_downloads(&self) -> u64 {
        self.lock().media_downloads
    }

    /// Files the business uploaded through the media API.
    pub fn uploads(&self) -> u64 {
        self.lock().uploads
    }

    /// Meta no longer holds the files uploaded so far (30 days have passed): a message naming
    /// their ids fails with 131053.
    pub fn expire_uploads(&self) {
        let mut g = self.lock();
        for id in std::mem::take(&mut g.uploaded) {
            g.media.remove(&id);
        }
    }

    /// A scripted person does the first line of their script.
    pub fn start_script(self: &std::sync::Arc<Self>, wa_id: &str) {
        self.lock().script_pos.insert(wa_id.to_string(), 0);
        self.script_step(wa_id, None);
    }

    /// Whether every scripted user has done every line.
    pub fn scripts_done(&self) -> bool {
        let g = self.lock();
        g.users
            .values()
            .filter(|u| !u.script.is_empty())
            .all(|u| g.script_pos.get(&u.wa_id).is_some_and(|p| *p >= u.script.len()))
    }

    /// Runs the user's next script line in answer to `received` (`None`: the start).
    fn script_step(self: &std::sync::Arc<Self>, wa_id: &str, received: Option<&SentMessage>) {
        let (line, pos) = {
            let g = self.lock();
            let Some(user) = g.users.get(wa_id) else { return };
            let Some(pos) = g.script_pos.get(wa_id).copied() else { return };
            let Some(line) = user.script.get(pos).cloned() else { return };
            (line, pos)
        };
        let text = received.map(shown_text).unwrap_or_default();
        if received.is_some() && line.after.as_deref().is_some_and(|a| !text.contains(a)) {
            return;
        }
        if received.is_none() && line.after.is_some() {
            return;
        }
        self.lock().script_pos.insert(wa_id.to_string(), pos + 1);
        let this = std::sync::Arc::clone(self);
        let wa = wa_id.to_string();
        let received = received.cloned();
        let pending = InFlight::new(&this.in_flight);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(line.delay_ms)).await;
            if let Some(say) = &line.say {
                this.user_says(&wa, say, None);
            } else if let Some(caption) = &line.photo {
                this.user_sends_image(&wa, caption);
            } else if let (Some(title), Some(m)) = (&line.tap, &received) {
                let list = m.body["interactive"]["type"] == "list";
                match interactive_options(m).into_iter().find(|(_, t)| t == title) {
                    Some((id, t)) => {
                        this.user_picks(&wa, &id, &t, list, Some(&m.wamid));
                    }
                    // A template's quick-reply button.
                    None if m.body["type"] == "template" => {
                        if let Err(e) = this.user_taps(&wa, title, &m.wamid) {
                            tracing::warn!(title, "sandbox: a scripted user cannot tap: {e}");
                        }
                    }
                    None => tracing::warn!(title, "sandbox: a scripted user found no such option to tap"),
                }
            }
            drop(pending);
        });
    }

    /// A simulated person taps a reply button (`list: false`) or picks a list row of an
    /// interactive message the business sent (`context`: its id).
    pub fn user_picks(
        self: &std::sync::Arc<Self>,
        wa_id: &str,
        id: &str,
        title: &str,
        list: bool,
        context: Option<&str>,
    ) -> String {
        let (kind, key) = if list { ("list_reply", "list_reply") } else { ("button_reply", "button_reply") };
        let msg = json!({ "type": "interactive", "interactive": { "type": kind, key: { "id": id, "title": title } } });
        self.user_sends(wa_id, msg, context)
    }

    /// An inbound message as Meta shows it: the sender's number only when it is visible, their
    /// business-scoped id when they have one, their name and username in `contacts`.
    fn user_sends(self: &std::sync::Arc<Self>, wa_id: &str, mut msg: Value, context: Option<&str>) -> String {
        let id = new_wamid();
        let user = self
            .lock()
            .users
            .get(wa_id)
            .cloned()
            .unwrap_or_else(|| SimUser { wa_id: wa_id.to_string(), ..Default::default() });
        msg["id"] = json!(id);
        msg["timestamp"] = json!(self.now_secs().to_string());
        let mut contact = json!({ "profile": { "name": user.name } });
        if let Some(u) = &user.username {
            contact["profile"]["username"] = json!(u);
        }
        if user.phone_visible {
            msg["from"] = json!(wa_id);
            contact["wa_id"] = json!(wa_id);
        }
        if let Some(bsuid) = &user.user_id {
            msg["from_user_id"] = json!(bsuid);
            contact["user_id"] = json!(bsuid);
        }
        if let Some(c) = context {
            msg["context"] = json!({ "from": self.settings().phone_number_id, "id": c });
        }
        let said = msg["text"]["body"]
            .as_str()
            .or(msg["button"]["text"].as_str())
            .or(msg["interactive"]["button_reply"]["title"].as_str())
            .or(msg["interactive"]["list_reply"]["title"].as_str())
            .unwrap_or("")
            .to_string();
        {
            let mut g = self.lock();
            g.windows.insert(wa_id.to_string(), Instant::now());
            g.windows_aged.remove(wa_id);
            g.received.push(UserMessage {
                wa_id: wa_id.to_string(),
                text: said,
                at_ms: chrono::Utc::now().timestamp_millis(),
            });
        }
        let body = self.envelope(json!({ "contacts": [contact], "messages": [msg] }));
        self.deliver(body, Duration::ZERO);
        id
    }

    fn envelope(&self, value_extra: Value) -> Value {
        let s = self.settings();
        let mut value = json!({ "messaging_product": "whatsapp", "metadata": { "display_phone_number": "15550000000", "phone_number_id": s.phone_number_id } });
        if let (Some(v), Some(extra)) = (value.as_object_mut(), value_extra.as_object()) {
            for (k, x) in extra {
                v.insert(k.clone(), x.clone());
            }
        }
        json!({ "object": "whatsapp_business_account", "entry": [ { "id": "102290129340398", "changes": [ { "value": value, "field": "messages" } ] } ] })
    }

    fn status_body(&self, m: &SentMessage, status: &str, error: Option<(i64, &str, &str)>) -> Value {
        let mut st = json!({ "id": m.wamid, "status": status, "timestamp": self.now_secs().to_string(), "recipient_id": m.wa_id });
        if let Some(c) = &m.callback_data {
            st["biz_opaque_callback_data"] = json!(c);
        }
        // Business-scoped ids go with every status but a failed one of a message sent to a number.
        let bsuid = self.lock().users.get(&m.wa_id).and_then(|u| u.user_id.clone());
        if let (Some(b), None) = (bsuid, &error) {
            st["recipient_user_id"] = json!(b);
        }
        match error {
            Some((code, title, details)) => {
                st["errors"] = json!([ { "code": code, "title": title, "message": title, "error_data": { "details": details },
                    "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/" } ]);
            }
            None => {
                st["pricing"] =
                    json!({ "billable": true, "pricing_model": "PMP", "type": "regular", "category": "utility" });
            }
        }
        self.envelope(json!({ "statuses": [st] }))
    }

    /// The signed status webhook Meta would send for `m`, addressed to the configured webhook
    /// URL (none while no URL is set).
    pub fn signed_status(&self, m: &SentMessage, status: &str) -> Option<super::SignedRequest> {
        let s = self.settings();
        let url = s.webhook_url?;
        let body = serde_json::to_vec(&self.status_body(m, status, None)).ok()?;
        let signature = sign(&s.app_secret, &body);
        Some(super::SignedRequest {
            url,
            headers: vec![("content-type", "application/json".into()), ("x-hub-signature-256", signature)],
            body,
        })
    }

    /// POSTs a signed webhook after `delay`; until it is answered 200, again at once, then at
    /// growing intervals for seven days, as Meta does (scaled by `webhook_time_scale`).
    fn deliver(self: &std::sync::Arc<Self>, body: Value, delay: Duration) {
        let this = std::sync::Arc::clone(self);
        let copies = if this.settings().duplicate_webhooks { 2 } else { 1 };
        for copy in 0..copies {
            let this = std::sync::Arc::clone(&this);
            let body = body.clone();
            let pending = InFlight::new(&this.in_flight);
            tokio::spawn(async move {
                let _pending = pending;
                tokio::time::sleep(delay + Duration::from_millis(copy * 30)).await;
                let s = this.settings();
                let bytes = serde_json::to_vec(&body).unwrap_or_default();
                let signature = sign(&s.app_secret, &bytes);
                for wait in
                    std::iter::once(Duration::ZERO).chain(WEBHOOK_RETRIES.iter().map(|s| Duration::from_secs(*s)))
                {
                    let scale = this.settings().webhook_time_scale.clamp(0.0, 1.0);
                    tokio::time::sleep(wait.mul_f64(scale)).await;
                    // The callback URL as configured now (it may change while retrying).
                    let Some(url) = this.settings().webhook_url else { return };
                    let r = this
                        .http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("x-hub-signature-256", &signature)
                        .body(bytes.clone())
                        .timeout(Duration::from_secs(10))
                        .send()
                        .await;
                    let ok = matches!(&r, Ok(resp) if resp.status() == StatusCode::OK);
                    {
                        let mut g = this.lock();
                        g.deliveries += 1;
                        if !ok {
                            g.delivery_failures += 1;
                        }
                    }
                    if ok {
                        return;
                    }
                    debug!("webhook not acknowledged, Meta will retry");
                }
            });
        }
    }

    /// After an accepted send: the status webhooks and what the simulated person does.
    fn after_send(self: &std::sync::Arc<Self>, m: &SentMessage, failure: Option<(i64, &str, &str)>) {
        let s = self.settings();
        if !s.statuses {
            return;
        }
        let base = Duration::from_millis(s.status_delay_ms);
        if let Some(err) = failure {
            self.deliver(self.status_body(m, "failed", Some(err)), base);
            return;
        }
        let user = self.lock().users.get(&m.wa_id).cloned().unwrap_or_else(|| SimUser {
            wa_id: m.wa_id.clone(),
            reads: false,
            ..Default::default()
        });
        self.deliver(self.status_body(m, "sent", None), base);
        let (delivered_at, read_at) = (base * 3, base * 3 + Duration::from_millis(user.read_after_ms));
        if s.reorder_webhooks && user.reads {
            self.deliver(self.status_body(m, "read", None), base * 2);
            self.deliver(self.status_body(m, "delivered", None), read_at + base);
        } else {
            self.deliver(self.status_body(m, "delivered", None), delivered_at);
            if user.reads {
                self.deliver(self.status_body(m, "read", None), read_at);
            }
        }
        if !user.script.is_empty() {
            let this = std::sync::Arc::clone(self);
            let m = m.clone();
            let pending = InFlight::new(&this.in_flight);
            tokio::spawn(async move {
                tokio::time::sleep(read_at).await;
                this.script_step(&m.wa_id, Some(&m));
                drop(pending);
            });
        }
        if let Some(text) = user.reply {
            let first = self.lock().replied.insert(m.wa_id.clone());
            if first {
                let this = std::sync::Arc::clone(self);
                let (wa, ctx) = (m.wa_id.clone(), m.wamid.clone());
                let at = read_at + Duration::from_millis(user.reply_after_ms);
                let pending = InFlight::new(&this.in_flight);
                tokio::spawn(async move {
                    tokio::time::sleep(at).await;
                    this.user_says(&wa, &text, Some(&ctx));
                    drop(pending);
                });
            }
        }
    }
}

/// Waits between retries of an unacknowledged webhook, in seconds (Meta: "retried immediately,
/// then a few more times with decreasing frequency over the next 7 days").
const WEBHOOK_RETRIES: &[u64] =
    &[0, 10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 48 * 3600, 48 * 3600, 48 * 3600];

/// What a person reads in a message: its text, an interactive message's body, or a
/// template's name and parameters.
pub fn shown_text(m: &SentMessage) -> String {
    let b = &m.body;
    if let Some(t) = b["text"]["body"].as_str() {
        return t.to_string();
    }
    if let Some(t) = b["interactive"]["body"]["text"].as_str() {
        return t.to_string();
    }
    // A file: what the person sees under it, the caption.
    if let Some(kind) = b["type"].as_str().filter(|k| ["image", "document", "video"].contains(k)) {
        return b[kind]["caption"].as_str().unwrap_or_default().to_string();
    }
    template_text(b)
}

/// The options of an interactive message: (id, title) of its reply buttons or list rows.
pub fn interactive_options(m: &SentMessage) -> Vec<(String, String)> {
    let i = &m.body["interactive"];
    let buttons = i["action"]["buttons"].as_array().into_iter().flatten().map(|b| &b["reply"]);
    let rows = i["action"]["sections"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|s| s["rows"].as_array().into_iter().flatten());
    buttons
        .chain(rows)
        .map(|o| (o["id"].as_str().unwrap_or("").to_string(), o["title"].as_str().unwrap_or("").to_string()))
        .collect()
}

fn template_text(b: &Value) -> String {
    let params: Vec<&str> = b["template"]["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["parameters"].as_array().into_iter().flatten())
        .filter_map(|p| p["text"].as_str())
        .collect();
    format!("{} {}", b["template"]["name"].as_str().unwrap_or(""), params.join(" "))
}

fn unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// WhatsApp refuses a template text parameter with a line break, a tab, or more than four
/// spaces in a row (132018).
fn parameter_refused(text: &str) -> bool {
    text.contains(['\n', '\r', '\t']) || text.contains("     ")
}

fn new_wamid() -> String {
    use base64::Engine;
    format!("wamid.{}", base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 27]>()))
}

/// The id WhatsApp uses for a number: Brazilian mobiles registered before the ninth digit keep
/// their old 12-digit id, so `+55 11 9xxxx-xxxx` answers as `55 11 xxxx-xxxx`.
pub fn wa_id_for(digits: &str) -> String {
    if digits.len() == 13 && digits.starts_with("55") && digits.as_bytes()[4] == b'9' {
        return format!("{}{}", &digits[..4], &digits[5..]);
    }
    digits.to_string()
}

pub fn meta_error(status: u16, code: i64, message: &str, details: &str) -> Response {
    let st = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        st,
        Json(json!({ "error": { "message": format!("(#{code}) {message}"), "type": "OAuthException", "code": code,
            "error_data": { "messaging_product": "whatsapp", "details": details }, "fbtrace_id": format!("A{}", hex::encode(rand::random::<[u8; 8]>())) } })),
    )
        .into_response()
}

/// The caller's bearer token is the number's; the version is shaped like `v23.0`.
fn graph_refusal(s: &MetaSettings, headers: &HeaderMap, version: &str, path: &str) -> Option<Response> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if token != s.access_token {
        return Some(meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token", ""));
    }
    let version_ok = version
        .strip_prefix('v')
        .and_then(|r| r.split_once('.'))
        .is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
    (!version_ok).then(|| meta_error(400, 2500, "Unknown path components", path))
}

/// Graph's answer for an id that is not there (or not visible to the token).
fn no_such_object(id: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "error": {
            "message": format!("Unsupported get request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation. Please read the Graph API documentation at https://developers.facebook.com/docs/graph-api"),
            "type": "GraphMethodException", "code": 100, "error_subcode": 33,
            "fbtrace_id": format!("A{}", hex::encode(rand::random::<[u8; 8]>())) } })),
    )
        .into_response()
}

/// `GET /{version}/{id}`: the phone number, as its token sees it; or a media id's details and
/// a download address that works for a few minutes, with the same token.
pub async fn phone_number(
    State(st): State<SandboxState>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let s = st.meta.settings();
    if let Some(refused) = graph_refusal(&s, &headers, &version, &format!("/{version}/{id}")) {
        return refused;
    }
    if id != s.phone_number_id {
        use sha2::Digest;
        let mut g = st.meta.lock();
        let Some(file) = g.media.get(&id).cloned() else { return no_such_object(&id) };
        let token = hex::encode(rand::random::<[u8; 16]>());
        g.media_links.insert(token.clone(), (id.clone(), Instant::now()));
        return Json(json!({
            "messaging_product": "whatsapp",
            "url": format!("{}/meta/media-download/{token}?mid={id}", st.base_url()),
            "mime_type": file.mime_type,
            "sha256": hex::encode(sha2::Sha256::digest(&file.bytes)),
            "file_size": file.bytes.len().to_string(),
            "id": id,
        }))
        .into_response();
    }
    Json(json!({
        "verified_name": "Recado Sandbox",
        "display_phone_number": "+1 555-010-0000",
        "quality_rating": "GREEN",
        "id": s.phone_number_id,
    }))
    .into_response()
}

/// `GET /media-download/{token}`: the file, to the access token only, while the address is
/// fresh (an old one answers 404, as Meta's expired addresses do).
pub async fn media_download(State(st): State<SandboxState>, Path(token): Path<String>, headers: HeaderMap) -> Response {
    let s = st.meta.settings();
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bearer != s.access_token {
        return meta_error(401, 190, "Invalid OAuth access token - Cannot parse access token", "");
    }
    let mut g = st.meta.lock();
    let ttl = g.media_link_ttl;
    let file = match g.media_links.get(&token) {
        Some((id, given)) if given.elapsed() <= ttl => g.media.get(id).cloned(),
        _ => None,
    };
    match file {
        Some(f) => {
            g.media_downloads += 1;
            ([(axum::http::header::CONTENT_TYPE, f.mime_type)], f.bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

/// The types Meta's media API takes, and the largest file of each (audio, documents, images,
/// stickers and videos).
const UPLOAD_TYPES: &[(&str, usize)] = &[
    ("audio/aac", 16 << 20),
    ("audio/mp4", 16 << 20),
    ("audio/mpeg", 16 << 20),
    ("audio/amr", 16 << 20),
    ("audio/ogg", 16 << 20),
    ("text/plain", 100 << 20),
    ("application/pdf", 100 << 20),
    ("application/vnd.ms-powerpoint", 100 << 20),
    ("application/msword", 100 << 20),
    ("application/vnd.ms-excel", 100 << 20),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", 100 << 20),
    ("application/vnd.openxmlformats-officedocument.presentationml.presentation", 100 << 20),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", 100 << 20),
    ("image/jpeg", 5 << 20),
    ("image/png", 5 << 20),
    ("image/webp", 500 << 10),
    ("video/mp4", 16 << 20),
    ("video/3gpp", 16 << 20),
];

/// `POST /{version}/{phone-number-id}/media`: a file the business uploads to send by id, as a
/// multipart form with `messaging_product=whatsapp`, `type` and `file`. Answers `{"id": …}`;
/// refuses a missing field, a type Meta does not take and a file over its type's limit (100).
pub async fn upload_media(
    State(st): State<SandboxState>,
    Path((version, phone_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let s = st.meta.settings();
    if let Some(refused) = graph_refusal(&s, &headers, &version, &format!("/{version}/{phone_id}/media")) {
        return refused;
    }
    if phone_id != s.phone_number_id {
        return meta_error(400, 100, "Unsupported post request. Object does not exist, cannot be loaded due to missing permissions, or does not support this operation", "");
    }
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let parts = match super::multipart::parse(content_type, &body) {
        Ok(p) => p,
        Err(_) => return meta_error(400, 100, "The parameter messaging_product is required.", ""),
    };
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    let text = |name: &str| field(name).map(|p| String::from_utf8_lossy(&p.bytes).into_owned());
    if text("messaging_product").as_deref() != Some("whatsapp") {
        return meta_error(400, 100, "The parameter messaging_product is required.", "");
    }
    let Some(file) = field("file").filter(|f| f.filename.is_some()) else {
        return meta_error(400, 100, "The parameter file is required.", "");
    };
    let Some(mime) = text("type") else {
        return meta_error(400, 100, "The parameter type is required.", "");
    };
    let Some((_, max)) = UPLOAD_TYPES.iter().find(|(t, _)| *t == mime) else {
        let all: Vec<&str> = UPLOAD_TYPES.iter().map(|(t, _)| *t).collect();
        return meta_error(
            400,
            100,
            &format!("Param file must be a file with one of the following types: {}.", all.join(", ")),
            "",
        );
    };
    if file.bytes.len() > *max {
        return meta_error(
            400,
            100,
            &format!("Param file must be a file of at most {max} bytes for {mime}, got {}.", file.bytes.len()),
            "",
        );
    }
    let id = format!("{}", 100_000_000_000_000u64 + rand::random::<u64>() % 900_000_000_000_000);
    let mut g = st.meta.lock();
    g.uploads += 1;
    g.uploaded.push(id.clone());
    g.media.insert(id.clone(), MediaFile { bytes: file.bytes.clone(), mime_type: mime });
    Json(json!({ "id": id })).into_response()
}

/// The media ids a message sends (a media message's, a template header's) that Meta does not
/// hold, or whose file is not of the kind it is sent as (a PDF as an image): WhatsApp fails
/// such a message after accepting it (131053).
fn unusable_media_ids(media: &HashMap<String, MediaFile>, req: &Value) -> Vec<String> {
    let kind = req["type"].as_str().unwrap_or_default();
    let mut ids: Vec<(&str, &Value)> = vec![(kind, &req[kind]["id"])];
    if let Some(comps) = req["template"]["components"].as_array() {
        for c in comps.iter().filter(|c| c["type"] == "header") {
            for p in c["parameters"].as_array().into_iter().flatten() {
                let k = p["type"].as_str().unwrap_or_default();
                ids.push((k, &p[k]["id"]));
            }
        }
    }
    let fits = |kind: &str, f: &MediaFile| match kind {
        "image" => f.mime_type.starts_with("image/"),
        "video" => f.mime_type.starts_with("video/"),
        "audio" => f.mime_type.starts_with("audio/"),
        _ => true,
    };
    ids.into_iter()
        .filter_map(|(k, v)| v.as_str().map(|id| (k, id)))
        .filter(|(k, id)| !media.get(*id).is_some_and(|f| fits(k, f)))
        .map(|(_, id)| id.to_string())
        .collect()
}

/// Why a template's header parameter does not fit the approved header, in Meta's words.
fn header_refusal(approved: Option<&str>, given: Option<&Value>) -> Option<Response> {
    match (approved, given) {
        (None, None) => None,
        (None, Some(_)) => Some(meta_error(
            400,
            132000,
            "Number of parameters does not match the expected number of params",
            "header: number of localizable_params (1) does not match the expected number of params (0)",
        )),
        (Some(format), None) => Some(meta_error(
            400,
            131008,
            "Required parameter is missing",
            &format!("header: Format mismatch, expected {format}, received UNKNOWN"),
        )),
        (Some(format), Some(p)) => {
            let kind = p["type"].as_str().unwrap_or("");
            if !kind.eq_ignore_ascii_case(format) {
                return Some(meta_error(
                    400,
                    132012,
                    "Parameter format does not match format in the created template",
                    &format!("header: Format mismatch, expected {format}, received {}", kind.to_uppercase()),
                ));
            }
            let media = &p[kind];
            let link = media["link"].as_str().unwrap_or("");
            let has_id = media["id"].as_str().is_some_and(|i| !i.is_empty());
            if !(has_id || link.starts_with("https://") || link.starts_with("http://")) {
                return Some(meta_error(
                    400,
                    131008,
                    "Required parameter is missing",
                    &format!("header: {kind} requires a link or an id"),
                ));
            }
            None
        }
    }
}

/// Bytes that start like a JPEG, `len` long (the emulator never decodes them).
pub fn sample_jpeg(len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    v.extend((0..len.saturating_sub(4)).map(|i| (i % 251) as u8));
    v
}

/// `GET /{version}/{waba_id}/message_templates?limit=&after=`: the account's templates, a page
/// at a time (default 25), with `paging.next` while more remain, as Graph pages.
pub async fn message_templates(
    State(st): State<SandboxState>,
    Path((version, waba)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let s = st.meta.settings();
    if let Some(refused) = graph_refusal(&s, &headers, &version, &format!("/{version}/{waba}/message_templates")) {
        return refused;
    }
    if waba != s.business_account_id {
        return no_such_object(&waba);
    }
    let pairs = crate::providers::form_pairs(query.as_deref().unwrap_or(""));
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let limit = get("limit").and_then(|l| l.parse::<usize>().ok()).unwrap_or(25).clamp(1, 1000);
    let after = match get("after") {
        None => 0,
        Some(c) => match base64::engine::general_purpose::STANDARD
            .decode(c.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|t| t.parse::<usize>().ok())
        {
            Some(n) => n,
            None => return meta_error(400, 100, "Invalid parameter", "Invalid cursor"),
        },
    };
    let mut all: Vec<TemplateDef> = st.meta.lock().templates.values().cloned().collect();
    all.sort_by(|a, b| (&a.name, &a.language).cmp(&(&b.name, &b.language)));
    let page: Vec<Value> = all.iter().enumerate().skip(after).take(limit).map(|(i, t)| t.listed(i)).collect();
    let end = after + page.len();
    let cursor = |n: usize| base64::engine::general_purpose::STANDARD.encode(n.to_string());
    let mut paging = json!({ "cursors": { "before": cursor(after), "after": cursor(end) } });
    if end < all.len() {
        let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("127.0.0.1");
        paging["next"] =
            json!(format!("http://{host}/meta/{version}/{waba}/message_templates?limit={limit}&after={}", cursor(end)));
    }
    Json(json!({ "data": page, "paging": paging })).into_response()
}

/// `POST /{version}/{phone_number_id}/messages`
pub async fn send(
    State(st): State<SandboxState>,
    Path((version, phone_id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let meta = st.meta.clone();
    let s = meta.settings();
    if let Some(refused) = graph_refusal(&s, &headers, &version, &format!("/{version}/{phone_id}/messages")) {
        return refused;
    }
    if phone_id != s.phone_number_id {
        return meta_error(400, 100, "Unsupported post request. Object does not exist, cannot be loaded due to missing permissions, or does not support this operation", "");
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return meta_error(400, 100, "Invalid parameter", "Request body is not valid JSON");
    };
    if req["messaging_product"] != "whatsapp" {
        return meta_error(
            400,
            100,
            "Invalid parameter",
            "The parameter messaging_product is required and must be whatsapp",
        );
    }
    let to_raw = req["to"].as_str().unwrap_or("");
    let to: String = to_raw.trim_start_matches('+').to_string();
    if to.len() < 8 || !to.chars().all(|c| c.is_ascii_digit()) {
        return meta_error(400, 100, "Invalid parameter", "Invalid 'to' parameter");
    }
    let kind = req["type"].as_str().unwrap_or("text");
    let wa_id = wa_id_for(&to);
    let callback = req["biz_opaque_callback_data"].as_str().map(String::from);
    if callback.as_ref().is_some_and(|c| c.len() > 512) {
        return meta_error(400, 100, "Invalid parameter", "biz_opaque_callback_data is longer than 512 characters");
    }

    // A held answer waits here (the message is judged when released).
    {
        let mut hold = meta.hold.subscribe();
        if *hold.borrow() {
            let _waiting = InFlight::new(&meta.waiting);
            let _ = hold.wait_for(|held| !*held).await;
        }
    }
    let mut async_failure: Option<(i64, &'static str, &'static str)> = None;
    let mut lose_answer = false;
    let fault = {
        let mut g = meta.lock();
        super::take_fault(&mut g.faults, |f| f.to.as_deref().is_none_or(|t| t == to), |f| &mut f.count)
    };
    if let Some(f) = fault {
        if let Some(ms) = f.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        match f.mode.as_deref().unwrap_or("sync") {
            "async" => async_failure = Some((f.code, "Injected failure", "Injected by the sandbox")),
            // The request is never answered and nothing is sent.
            "timeout" => std::future::pending::<()>().await,
            "drop" => lose_answer = true,
            _ => return meta_error(f.http_status, f.code, "Injected error", "Injected by the sandbox"),
        }
    }
    {
        let mut g = meta.lock();
        // Throughput: a token bucket holding a tenth of a second of messages.
        {
            let rate = g.settings.messages_per_second.max(0.1);
            let cap = (rate / 10.0).max(1.0);
            let (tokens, last) = g.bucket;
            let now = Instant::now();
            let refilled = (tokens + now.duration_since(last).as_secs_f64() * rate).min(cap);
            if refilled < 1.0 {
                g.bucket = (refilled, now);
                g.throttled += 1;
                drop(g);
                return meta_error(400, 130429, "Rate limit hit", "Message failed to send because there were too many messages sent from this phone number in a short period of time");
            }
            g.bucket = (refilled - 1.0, now);
        }
        // Pair rate.
        let (burst, window) = (g.settings.pair_burst, Duration::from_millis(g.settings.pair_window_ms));
        let q = g.pair.entry(wa_id.clone()).or_default();
        while q.front().is_some_and(|t| t.elapsed() > window) {
            q.pop_front();
        }
        if q.len() as u32 >= burst {
            drop(g);
            return meta_error(400, 131056, "(Business Account, Consumer Account) pair rate limit hit", "Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time");
        }
        q.push_back(Instant::now());
        // Shape and templates.
        match kind {
            "text" => {
                let b = req["text"]["body"].as_str().unwrap_or("");
                if b.is_empty() || b.chars().count() > 4096 {
                    drop(g);
                    return meta_error(
                        400,
                        100,
                        "Invalid parameter",
                        "text.body is required and at most 4096 characters",
                    );
                }
            }
            "template" => {
                let name = req["template"]["name"].as_str().unwrap_or("");
                let lang = req["template"]["language"]["code"].as_str().unwrap_or("");
                let Some(t) = g.templates.get(&(name.to_string(), lang.to_string())).cloned() else {
                    drop(g);
                    return meta_error(
                        404,
                        132001,
                        "Template name does not exist in the translation",
                        &format!("template name ({name}) does not exist in {lang}"),
                    );
                };
                if t.status != "APPROVED" {
                    drop(g);
                    return match t.status.as_str() {
                        "PAUSED" => {
                            meta_error(400, 132015, "Template is Paused", "The template is paused due to low quality")
                        }
                        "DISABLED" => meta_error(
                            400,
                            132016,
                            "Template is disabled",
                            "The template has been disabled due to low quality",
                        ),
                        _ => meta_error(
                            404,
                            132001,
                            "Template name does not exist in the translation",
                            &format!("template name ({name}) does not exist in {lang}"),
                        ),
                    };
                }
                let comps = req["template"]["components"].as_array().cloned().unwrap_or_default();
                let body_params = comps
                    .iter()
                    .find(|c| c["type"] == "body")
                    .and_then(|c| c["parameters"].as_array())
                    .map(Vec::len)
                    .unwrap_or(0);
                let has_button = comps.iter().any(|c| c["type"] == "button" && c["sub_type"] == "url");
                let header = comps
                    .iter()
                    .find(|c| c["type"] == "header")
                    .and_then(|c| c["parameters"].as_array())
                    .and_then(|p| p.first())
                    .cloned();
                if let Some(refusal) = header_refusal(t.header.as_deref(), header.as_ref()) {
                    drop(g);
                    return refusal;
                }
                if body_params != t.body_params {
                    drop(g);
                    return meta_error(
                        400,
                        132000,
                        "Number of parameters does not match the expected number of params",
                        &format!(
                            "body: number of localizable_params ({body_params}) does not match the expected number of params ({})",
                            t.body_params
                        ),
                    );
                }
                if has_button != t.url_button {
                    drop(g);
                    return if t.url_button {
                        meta_error(
                            400,
                            131008,
                            "Required parameter is missing",
                            "buttons: Button at index 0 of type Url requires a parameter",
                        )
                    } else {
                        meta_error(
                            400,
                            132018,
                            "There's an issue with the parameters in your template",
                            "buttons: the template has no URL button",
                        )
                    };
                }
                let texts: Vec<String> = comps
                    .iter()
                    .flat_map(|c| c["parameters"].as_array().cloned().unwrap_or_default())
                    .filter(|p| p["type"] == "text")
                    .map(|p| p["text"].as_str().unwrap_or_default().to_string())
                    .collect();
                if texts.iter().any(|t| parameter_refused(t)) {
                    drop(g);
                    return meta_error(
                        400,
                        132018,
                        "There's an issue with the parameters in your template",
                        "Param text cannot have new-line/tab characters or more than 4 consecutive spaces",
                    );
                }
                let body_len: usize = comps
                    .iter()
                    .filter(|c| c["type"] == "body")
                    .flat_map(|c| c["parameters"].as_array().cloned().unwrap_or_default())
                    .map(|p| p["text"].as_str().map(|t| t.chars().count()).unwrap_or(0))
                    .sum::<usize>()
                    + t.body_chars;
                let allowed = if t.url_button { 1024 } else { 32_768 };
                if body_len > allowed {
                    drop(g);
                    return meta_error(
                        400,
                        132005,
                        "Translated text too long",
                        &format!("Translated text too long. Length of the parameters and the template text is {body_len}, which exceeds the allowed length of {allowed}"),
                    );
                }
                let empty_param = comps
                    .iter()
                    .flat_map(|c| c["parameters"].as_array().cloned().unwrap_or_default())
                    .any(|p| p["type"] == "text" && p["text"].as_str().is_none_or(|s| s.trim().is_empty()));
                if empty_param {
                    drop(g);
                    return meta_error(400, 131008, "Required parameter is missing", "Parameter text is empty");
                }
            }
            "image" | "document" | "video" => {
                if let Err((code, details)) = media_problem(kind, &req[kind]) {
                    drop(g);
                    return meta_error(400, code, "Invalid parameter", &details);
                }
            }
            "interactive" => {
                if let Err(details) = interactive_problem(&req["interactive"]) {
                    drop(g);
                    return meta_error(400, 131009, "Parameter value is not valid", &details);
                }
            }
            other => {
                drop(g);
                return meta_error(400, 131051, "Unsupported message type", &format!("type {other} is not supported"));
            }
        }
        if !unusable_media_ids(&g.media, &req).is_empty() {
            async_failure = Some((
                131053,
                "Media upload error",
                "Unable to upload the media used in the message: the media id is not valid.",
            ));
        }
        let user = g.users.get(&wa_id).cloned();
        if user.as_ref().is_some_and(|u| !u.on_whatsapp) {
            async_failure = Some((131026, "Message undeliverable", "Unable to deliver message. Reasons can include: the recipient phone number is not a WhatsApp phone number."));
        }
        if kind != "template" {
            let open = g.windows.get(&wa_id).is_some_and(|t| {
                t.elapsed() + g.windows_aged.get(&wa_id).copied().unwrap_or_default() < Duration::from_secs(24 * 3600)
            });
            if !open {
                if g.settings.window_error == "sync" {
                    drop(g);
                    return meta_error(400, 131047, "Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number.");
                }
                async_failure = Some((131047, "Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number."));
            }
        }
    }
    let m = SentMessage {
        wamid: new_wamid(),
        to: to.clone(),
        wa_id: wa_id.clone(),
        body: req.clone(),
        callback_data: callback,
        at_ms: chrono::Utc::now().timestamp_millis(),
    };
    {
        let mut g = meta.lock();
        let e = g.sent_to.entry(m.wa_id.clone()).or_default();
        e.0 += 1;
        e.1 = m.at_ms;
        g.sent.push(m.clone());
    }
    meta.after_send(&m, async_failure);
    if lose_answer {
        // Accepted and sent, but the answer never reaches the client.
        std::future::pending::<()>().await;
    }
    Json(json!({ "messaging_product": "whatsapp", "contacts": [ { "input": to_raw, "wa_id": wa_id } ], "messages": [ { "id": m.wamid, "message_status": "accepted" } ] })).into_response()
}

/// What WhatsApp refuses in a media message: neither `link` nor `id` (131008), a link that is
/// not an http(s) address, a caption over 1,024 characters, a file name on anything but a
/// document (100).
fn media_problem(kind: &str, m: &Value) -> Result<(), (i64, String)> {
    match (m["link"].as_str(), m["id"].as_str()) {
        (None, None) => return Err((131008, format!("Required parameter is missing: {kind}.link or {kind}.id"))),
        (Some(l), _) if !(l.starts_with("https://") || l.starts_with("http://")) => {
            return Err((100, format!("{kind}.link is not a valid URL")))
        }
        _ => {}
    }
    if m["caption"].as_str().is_some_and(|c| c.chars().count() > 1024) {
        return Err((100, format!("{kind}.caption is longer than 1024 characters")));
    }
    if kind != "document" && m.get("filename").is_some() {
        return Err((100, format!("filename is not a parameter of {kind}")));
    }
    Ok(())
}

/// What WhatsApp refuses in an interactive message (reply buttons or a list): counts, lengths,
/// missing parts, duplicate ids.
fn interactive_problem(i: &Value) -> Result<(), String> {
    let chars = |v: &Value| v.as_str().map(|s| s.chars().count());
    match chars(&i["body"]["text"]) {
        None | Some(0) => return Err("interactive.body.text is required".into()),
        Some(n) if n > 1024 => return Err(format!("body text length {n} exceeds the maximum of 1024")),
        _ => {}
    }
    if chars(&i["footer"]["text"]).is_some_and(|n| n > 60) {
        return Err("footer text exceeds the maximum of 60".into());
    }
    let mut ids = std::collections::HashSet::new();
    match i["type"].as_str() {
        Some("button") => {
            let buttons = i["action"]["buttons"].as_array().cloned().unwrap_or_default();
            if buttons.is_empty() || buttons.len() > 3 {
                return Err(format!("buttons count {} must be between 1 and 3", buttons.len()));
            }
            for (n, b) in buttons.iter().enumerate() {
                if b["type"] != "reply" {
                    return Err(format!("buttons[{n}].type must be reply"));
                }
                let title = chars(&b["reply"]["title"]).unwrap_or(0);
                if title == 0 || title > 20 {
                    return Err(format!("Button title length invalid. Min length: 1, Max length: 20 (buttons[{n}])"));
                }
                let id = b["reply"]["id"].as_str().unwrap_or("");
                if id.is_empty() || id.chars().count() > 256 {
                    return Err(format!("button id length invalid. Min length: 1, Max length: 256 (buttons[{n}])"));
                }
                if !ids.insert(id.to_string()) {
                    return Err("Duplicate buttons: button ids must be unique".into());
                }
                let title = b["reply"]["title"].as_str().unwrap_or("");
                if !ids.insert(format!("\u{0}title:{title}")) {
                    return Err("Duplicate buttons: button titles must be unique".into());
                }
            }
        }
        Some("list") => {
            let label = chars(&i["action"]["button"]).unwrap_or(0);
            if label == 0 || label > 20 {
                return Err("action.button length invalid. Min length: 1, Max length: 20".into());
            }
            let sections = i["action"]["sections"].as_array().cloned().unwrap_or_default();
            if sections.is_empty() || sections.len() > 10 {
                return Err(format!("sections count {} must be between 1 and 10", sections.len()));
            }
            let mut rows = 0;
            for (n, sec) in sections.iter().enumerate() {
                if sections.len() > 1 && chars(&sec["title"]).unwrap_or(0) == 0 {
                    return Err(format!("sections[{n}].title is required when there is more than one section"));
                }
                for r in sec["rows"].as_array().cloned().unwrap_or_default() {
                    rows += 1;
                    let title = chars(&r["title"]).unwrap_or(0);
                    if title == 0 || title > 24 {
                        return Err("Row title length invalid. Min length: 1, Max length: 24".into());
                    }
                    if chars(&r["description"]).is_some_and(|d| d > 72) {
                        return Err("Row description length invalid. Max length: 72".into());
                    }
                    let id = r["id"].as_str().unwrap_or("");
                    if id.is_empty() || id.chars().count() > 200 {
                        return Err("Row id length invalid. Min length: 1, Max length: 200".into());
                    }
                    if !ids.insert(id.to_string()) {
                        return Err("Duplicate rows: row ids must be unique".into());
                    }
                }
            }
            if rows == 0 || rows > 10 {
                return Err(format!("Total row count {rows} exceeds the maximum of 10 or is 0"));
            }
        }
        other => return Err(format!("interactive.type {} is not supported here", other.unwrap_or("(missing)"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactive_messages_are_held_to_whatsapps_limits() {
        let buttons = |titles: &[&str]| {
            json!({"type": "button", "body": {"text": "¿Qué necesitas?"}, "action": {"buttons": titles.iter().enumerate()
                .map(|(i, t)| json!({"type": "reply", "reply": {"id": format!("b{i}"), "title": t}})).collect::<Vec<_>>()}})
        };
        assert!(interactive_problem(&buttons(&["Horarios", "Reportar"])).is_ok());
        assert!(interactive_problem(&buttons(&["a", "b", "c", "d"])).unwrap_err().contains("between 1 and 3"));
        assert!(interactive_problem(&buttons(&["Un título de más de veinte"])).unwrap_err().contains("Max length: 20"));
        assert!(interactive_problem(&buttons(&["a", "a"])).unwrap_err().contains("unique"));
        let list = |n: usize, label: &str| {
            json!({"type": "list", "body": {"text": "Elige"}, "action": {"button": label, "sections": [{"rows": (0..n)
                .map(|i| json!({"id": format!("r{i}"), "title": format!("Opción {i}")})).collect::<Vec<_>>()}]}})
        };
        assert!(interactive_problem(&list(10, "Ver opciones")).is_ok());
        assert!(interactive_problem(&list(11, "Ver opciones")).is_err());
        assert!(interactive_problem(&list(2, "")).is_err());
        assert!(interactive_problem(&json!({"type": "button", "action": {}})).unwrap_err().contains("body.text"));
    }

    #[test]
    fn parameters_meta_refuses() {
        assert!(parameter_refused("Calle 1\nCasa 2"));
        assert!(parameter_refused("a\tb"));
        assert!(parameter_refused("a     b"), "five spaces");
        assert!(!parameter_refused("a    b"), "four spaces are allowed");
        assert!(!parameter_refused("Ana María"));
    }

    #[test]
    fn faults_with_typos_are_refused() {
        let f = |mode: &str, code: i64| MetaFault {
            code,
            http_status: 400,
            count: 1,
            mode: Some(mode.into()),
            to: None,
            delay_ms: None,
        };
        assert!(f("sync", 130429).validate().is_ok());
        assert!(f("timeout", 0).validate().is_ok());
        assert!(f("asnyc", 131047).validate().is_err());
        assert!(f("sync", 0).validate().is_err());
    }

    #[test]
    fn brazilian_mobiles_lose_the_ninth_digit() {
        assert_eq!(wa_id_for("5511987654321"), "551187654321");
        assert_eq!(wa_id_for("56912345678"), "56912345678");
        assert_eq!(wa_id_for("551133334444"), "551133334444");
    }
}
