//! Emulator of Twilio Programmable Messaging for WhatsApp, as strict as Twilio:
//!
//! * `POST /2010-04-01/Accounts/{sid}/Messages.json` — form-encoded, HTTP Basic auth with the
//!   Account SID and Auth Token or an API key (20003 otherwise), the account in the path
//!   (20404), `To`/`From`/`MessagingServiceSid` shapes (21604, 21211, 21603, 63007, 21701),
//!   `Body` (≤ 1,600 characters, 21617) or `ContentSid` + `ContentVariables` (a JSON string of
//!   the template's variables: 21655, 21656; never with `Body`), answered 201 with the message
//!   resource (`status: queued`, or `accepted` through a Messaging Service).
//! * `GET …/Messages.json` (filters `To`, `From`, paging newest first with `next_page_uri`)
//!   and `GET …/Messages/{sid}.json`.
//! * the Content API's registry (`HX…` SIDs with their variables; SIDs derive from name and
//!   language, so a configuration can be written before the template is added), read through
//!   `GET /v1/Content/{sid}` and `GET /v1/Content/{sid}/ApprovalRequests` (its WhatsApp
//!   approval; an unapproved template is free-form text to WhatsApp, 63016 outside the
//!   window), and `GET /2010-04-01/Accounts/{sid}.json`;
//! * per-sender throughput with Twilio's queueing: the API accepts everything, `sent` follows
//!   at the sender's pace; REST concurrency above the account's limit is refused with 429/20429;
//! * the 24-hour window: free text outside it is accepted, then fails with 63016;
//! * signed status callbacks (`sent` → `delivered` → `read`, or `failed`/`undelivered` with
//!   `ErrorCode`; none for the initial status) to the message's `StatusCallback`, and inbound
//!   messages from simulated people to the sender's inbound URL, both signed with
//!   `X-Twilio-Signature` over the exact URL and sorted parameters; retried as Twilio does
//!   (by default once, on connection failures only; more with `#rc=`/`#rp=` connection
//!   overrides in the URL, which are removed before the request);
//! * faults: error codes (sync, or async in the status callback), answers that never come,
//!   sends accepted whose answer hangs (`drop`) or whose connection is reset (`reset`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::SandboxState;
use crate::providers::twilio::webhook::{compute_signature, form_pairs};

/// Settings of the Twilio emulator (also changeable through the admin API).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TwilioSettings {
    pub account_sid: String,
    pub auth_token: String,
    /// An API key that may authenticate instead of the Auth Token.
    pub api_key_sid: String,
    pub api_key_secret: String,
    /// The WhatsApp sender (`whatsapp:+…`).
    pub sender: String,
    /// A Messaging Service whose pool is that sender.
    pub messaging_service_sid: String,
    /// Where inbound messages to the sender are POSTed (the daemon's `/webhooks/<id>`),
    /// connection overrides (`#rc=…`) included.
    pub inbound_url: Option<String>,
    /// The sender's throughput: the API accepts everything; messages leave at this pace.
    pub messages_per_second: f64,
    /// Concurrent API requests the account may have open (429/20429 above).
    pub max_concurrent_requests: usize,
    /// Delay before the `sent` callback; `delivered` and `read` follow.
    pub status_delay_ms: u64,
    /// Send status callbacks at all.
    pub statuses: bool,
    /// Deliver every callback twice.
    pub duplicate_webhooks: bool,
    /// Deliver `read` before `delivered`.
    pub reorder_webhooks: bool,
}

impl Default for TwilioSettings {
    fn default() -> Self {
        Self {
            account_sid: "AC00000000000000000000000000000001".into(),
            auth_token: "sandbox-twilio-auth-token".into(),
            api_key_sid: "SK00000000000000000000000000000001".into(),
            api_key_secret: "sandbox-twilio-key-secret".into(),
            sender: "whatsapp:+14155238886".into(),
            messaging_service_sid: "MG00000000000000000000000000000001".into(),
            inbound_url: None,
            messages_per_second: 80.0,
            max_concurrent_requests: 100,
            status_delay_ms: 50,
            statuses: true,
            duplicate_webhooks: false,
            reorder_webhooks: false,
        }
    }
}

/// An approved Content API template.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContentDef {
    pub friendly_name: String,
    pub language: String,
    /// Body variables `{{1}}`…`{{n}}`.
    pub variables: usize,
    /// A URL button whose suffix is variable n + 1.
    #[serde(default)]
    pub url_button: bool,
    /// Its WhatsApp approval: `approved` (default), `pending`, `rejected`, `paused`,
    /// `disabled`, `received` or `unsubmitted`. WhatsApp treats anything but an approved
    /// template as free-form text, which fails outside the 24-hour window (63016).
    #[serde(default = "approved")]
    pub approval: String,
    /// Why WhatsApp rejected it, when it did.
    #[serde(default)]
    pub rejection_reason: String,
    /// Titles of its quick-reply buttons: the only replies a person can tap on it (each
    /// action's id is its title).
    #[serde(default)]
    pub quick_replies: Vec<String>,
}

fn approved() -> String {
    "approved".into()
}

impl ContentDef {
    pub fn new(friendly_name: &str, language: &str, variables: usize, url_button: bool) -> Self {
        Self {
            friendly_name: friendly_name.into(),
            language: language.into(),
            variables,
            url_button,
            approval: approved(),
            rejection_reason: String::new(),
            quick_replies: Vec::new(),
        }
    }

    /// The same template with these quick-reply buttons.
    pub fn with_quick_replies(mut self, titles: &[&str]) -> Self {
        self.quick_replies = titles.iter().map(|t| t.to_string()).collect();
        self
    }

    /// The Content SID: derived from name and language.
    pub fn sid(&self) -> String {
        content_sid(&self.friendly_name, &self.language)
    }

    fn expected(&self) -> usize {
        self.variables + usize::from(self.url_button)
    }

    /// The text a person reads: the variables filled in.
    fn render(&self, vars: &serde_json::Map<String, Value>) -> String {
        let mut parts = vec![format!("[{}]", self.friendly_name)];
        for i in 1..=self.expected() {
            parts.push(vars.get(&i.to_string()).and_then(Value::as_str).unwrap_or("").to_string());
        }
        parts.join(" ")
    }
}

/// The Content SID the sandbox gives template (`name`, `language`).
pub fn content_sid(name: &str, language: &str) -> String {
    let digest = Sha256::digest(format!("{name}/{language}").as_bytes());
    format!("HX{}", &hex::encode(digest)[..32])
}

/// A simulated WhatsApp user, by number.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TwilioUser {
    /// E.164 (`+569…`).
    pub number: String,
    pub name: String,
    pub on_whatsapp: bool,
    pub reads: bool,
    pub read_after_ms: u64,
    /// Replies this text to the first message it reads.
    pub reply: Option<String>,
    pub reply_after_ms: u64,
    /// What the person does, in order: the first line when [`TwilioState::start_script`] is
    /// called, each next one after a message from the sender arrives (and is read).
    pub script: Vec<super::ScriptLine>,
}

impl Default for TwilioUser {
    fn default() -> Self {
        Self {
            number: String::new(),
            name: "Participante".into(),
            on_whatsapp: true,
            reads: true,
            read_after_ms: 300,
            reply: None,
            reply_after_ms: 600,
            script: Vec::new(),
        }
    }
}

/// A fault for upcoming sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TwilioFault {
    /// Twilio's error code (for `sync` and `async`).
    #[serde(default)]
    pub code: i64,
    #[serde(default = "default_fault_status")]
    pub http_status: u16,
    #[serde(default = "one")]
    pub count: u32,
    /// `sync` (an error answer; the default), `async` (accepted, then a `failed`/`undelivered`
    /// callback with the code), `timeout` (never answered; nothing sent), `drop` (accepted,
    /// then the answer hangs) or `reset` (accepted, then the connection is reset) for sends;
    /// `list` for the next Messages list requests instead (answered with `http_status` and
    /// `code`).
    #[serde(default)]
    pub mode: Option<String>,
    /// Only for sends to this number (E.164); any when absent.
    #[serde(default)]
    pub to: Option<String>,
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

fn default_fault_status() -> u16 {
    400
}
fn one() -> u32 {
    1
}

impl TwilioFault {
    /// A fault with a typo is an error, not "anything": a test cannot pass by accident.
    pub fn validate(&self) -> Result<(), String> {
        let mode = self.mode.as_deref().unwrap_or("sync");
        if !["sync", "async", "timeout", "drop", "reset", "list"].contains(&mode) {
            return Err(format!("unknown fault mode '{mode}': expected sync, async, timeout, drop, reset or list"));
        }
        if matches!(mode, "sync" | "async" | "list") && self.code <= 0 {
            return Err(format!("a {mode} fault needs Twilio's error code"));
        }
        if matches!(mode, "sync" | "list") && !(400..=599).contains(&self.http_status) {
            return Err(format!("http_status {} is not an error status", self.http_status));
        }
        if self.count == 0 {
            return Err("count must be at least 1".into());
        }
        if self.to.as_deref().is_some_and(|t| !t.starts_with('+') || !t[1..].chars().all(|c| c.is_ascii_digit())) {
            return Err("to: expected the recipient's number as +E164".into());
        }
        Ok(())
    }
}

/// A message the emulator accepted (outbound) or a simulated person wrote (inbound).
#[derive(Debug, Clone, Serialize)]
pub struct TwilioMessage {
    pub sid: String,
    /// `whatsapp:+…`
    pub to: String,
    pub from: String,
    pub direction: &'static str,
    /// What the person reads (a template's variables filled in).
    pub body: String,
    pub content_sid: Option<String>,
    /// `MediaUrl`s sent (files Twilio fetches), in order.
    pub media_urls: Vec<String>,
    /// The template's friendly name, when one was sent.
    pub template: Option<String>,
    /// `ContentVariables` as sent.
    pub variables: serde_json::Map<String, Value>,
    pub messaging_service_sid: Option<String>,
    pub status_callback: Option<String>,
    pub status: String,
    pub error_code: Option<i64>,
    /// Unix seconds.
    pub created: i64,
    /// When the API accepted it, in Unix milliseconds (for load runs).
    pub at_ms: i64,
    /// Who created it: the Account SID or the SID of the API key used (none for inbound).
    pub credential: Option<String>,
}

pub struct TwilioState {
    inner: Mutex<Inner>,
    http: reqwest::Client,
    in_flight: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// Counts one open thing until dropped.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(Arc::clone(counter))
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

struct Inner {
    settings: TwilioSettings,
    contents: HashMap<String, ContentDef>,
    users: HashMap<String, TwilioUser>,
    windows: HashMap<String, Instant>,
    /// How much older a window is than the wall clock says ([`Self::age_windows`]).
    windows_aged: HashMap<String, Duration>,
    messages: Vec<TwilioMessage>,
    /// Messages accepted per recipient (`whatsapp:+…`) and when the last one was (ms).
    sent_to: HashMap<String, (usize, i64)>,
    /// When the sender may send its next message (Twilio's queue).
    next_slot: Instant,
    faults: VecDeque<TwilioFault>,
    replied: HashSet<String>,
    /// The next script line of each scripted user.
    script_pos: HashMap<String, usize>,
    refused_concurrency: u64,
    deliveries: u64,
    delivery_failures: u64,
    /// The emulator's own address (`http://…/twilio`), for the media URLs it gives out.
    base_url: String,
    /// Files people sent, by media SID: (message SID, bytes, content type).
    media: HashMap<String, (String, Vec<u8>, String)>,
    media_downloads: u64,
    /// Temporary addresses a media request was redirected to: token → (media SID, given at).
    media_links: HashMap<String, (String, Instant)>,
}

impl TwilioState {
    pub fn new(settings: TwilioSettings) -> Self {
        Self {
            inner: Mutex::new(Inner {
                settings,
                contents: HashMap::new(),
                users: HashMap::new(),
                sent_to: HashMap::new(),
                windows: HashMap::new(),
                windows_aged: HashMap::new(),
                messages: Vec::new(),
                next_slot: Instant::now(),
                faults: VecDeque::new(),
                replied: HashSet::new(),
                script_pos: HashMap::new(),
                refused_concurrency: 0,
                deliveries: 0,
                delivery_failures: 0,
                base_url: String::new(),
                media: HashMap::new(),
                media_downloads: 0,
                media_links: HashMap::new(),
            }),
            http: reqwest::Client::new(),
            in_flight: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn settings(&self) -> TwilioSettings {
        self.lock().settings.clone()
    }

    pub fn update_settings(&self, f: impl FnOnce(&mut TwilioSettings)) {
        f(&mut self.lock().settings)
    }

    /// Registers a template; returns its Content SID.
    pub fn add_content(&self, c: ContentDef) -> String {
        let sid = c.sid();
        self.lock().contents.insert(sid.clone(), c);
        sid
    }

    pub fn add_user(&self, u: TwilioUser) {
        self.lock().users.insert(u.number.clone(), u);
    }

    pub fn try_inject(&self, f: TwilioFault) -> Result<(), String> {
        f.validate()?;
        self.lock().faults.push_back(f);
        Ok(())
    }

    /// Adds a fault written by test code (panics on a malformed one: a typo must not pass).
    /// Forgets every fault not yet used up.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    pub fn inject(&self, f: TwilioFault) {
        if let Err(e) = self.try_inject(f) {
            panic!("malformed Twilio fault: {e}");
        }
    }

    /// Every person's 24-hour window closes `by` sooner, as if that much time had passed
    /// since they wrote (tests that move the daemon's clock move WhatsApp's with it).
    pub fn age_windows(&self, by: Duration) {
        let mut g = self.lock();
        let open: Vec<String> = g.windows.keys().cloned().collect();
        for k in open {
            let age = g.windows_aged.entry(k).or_default();
            *age = age.saturating_add(by);
        }
    }

    /// Messages accepted for one recipient (E.164), and when the last one was (ms); cheaper
    /// than `sent()` for polling.
    pub fn sent_count_to(&self, number: &str) -> (usize, i64) {
        self.lock().sent_to.get(&format!("whatsapp:{number}")).copied().unwrap_or((0, 0))
    }

    /// Outbound messages accepted, oldest first.
    pub fn sent(&self) -> Vec<TwilioMessage> {
        self.lock().messages.iter().filter(|m| m.direction != "inbound").cloned().collect()
    }

    /// What people wrote (inbound messages), oldest first.
    pub fn received(&self) -> Vec<TwilioMessage> {
        self.lock().messages.iter().filter(|m| m.direction == "inbound").cloned().collect()
    }

    pub fn sent_count(&self) -> usize {
        self.lock().messages.iter().filter(|m| m.direction != "inbound").count()
    }

    /// Requests refused with 20429 (too many at once).
    pub fn refused_concurrency(&self) -> u64 {
        self.lock().refused_concurrency
    }

    /// Webhook POSTs made, and how many were not answered 2xx.
    pub fn delivery_stats(&self) -> (u64, u64) {
        let g = self.lock();
        (g.deliveries, g.delivery_failures)
    }

    /// Callbacks and simulated replies scheduled and not yet delivered (or given up).
    pub fn deliveries_in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A simulated person writes to the sender (opens their 24-hour window). `replying_to`
    /// is the SID of the message they reply to, if they quote one.
    pub fn user_says(self: &Arc<Self>, number: &str, text: &str, replying_to: Option<&str>) -> String {
        self.user_sends(number, vec![("Body", text.to_string()), ("MessageType", "text".into())], replying_to)
    }

    /// Person `number` sends a photo with a caption.
    pub fn user_sends_image(self: &Arc<Self>, number: &str, caption: &str) -> String {
        self.user_sends_media(number, "image", crate::sandbox::meta::sample_jpeg(2_000), "image/jpeg", caption)
    }

    /// Person `number` sends a file, as Twilio posts it: `NumMedia=1`, `MessageType`, the
    /// content type and the file's address under the message (`/Messages/MM…/Media/ME…`),
    /// which only the account's credentials open.
    pub fn user_sends_media(
        self: &Arc<Self>,
        number: &str,
        media_type: &str,
        bytes: Vec<u8>,
        mime_type: &str,
        caption: &str,
    ) -> String {
        let s = self.settings();
        let (message, media) = (new_sid("MM"), new_sid("ME"));
        let url = {
            let mut g = self.lock();
            g.media.insert(media.clone(), (message.clone(), bytes, mime_type.to_string()));
            format!("{}/2010-04-01/Accounts/{}/Messages/{message}/Media/{media}", g.base_url, s.account_sid)
        };
        self.user_sends(
            number,
            vec![
                ("Body", caption.to_string()),
                ("MessageType", media_type.to_string()),
                ("NumMedia", "1".into()),
                ("MediaContentType0", mime_type.to_string()),
                ("MediaUrl0", url),
            ],
            None,
        )
    }

    /// Person `number` shares a location, with Twilio's fields.
    pub fn user_sends_location(
        self: &Arc<Self>,
        number: &str,
        latitude: f64,
        longitude: f64,
        label: &str,
        address: &str,
    ) -> String {
        let mut fields = vec![
            ("MessageType", "location".to_string()),
            ("Latitude", latitude.to_string()),
            ("Longitude", longitude.to_string()),
            ("Body", String::new()),
        ];
        if !label.is_empty() {
            fields.push(("Label", label.to_string()));
            fields.push(("Address", address.to_string()));
        }
        self.user_sends(number, fields, None)
    }

    /// The emulator's own address, for the media URLs it gives out (set by the sandbox).
    pub fn set_base_url(&self, url: &str) {
        self.lock().base_url = url.to_string();
    }

    /// Files downloaded.
    pub fn media_downloads(&self) -> u64 {
        self.lock().media_downloads
    }

    /// A scripted person does the first line of their script.
    pub fn start_script(self: &Arc<Self>, number: &str) {
        self.lock().script_pos.insert(number.to_string(), 0);
        self.script_step(number, None);
    }

    /// Whether every scripted user has done every line.
    pub fn scripts_done(&self) -> bool {
        let g = self.lock();
        g.users
            .values()
            .filter(|u| !u.script.is_empty())
            .all(|u| g.script_pos.get(&u.number).is_some_and(|p| *p >= u.script.len()))
    }

    /// Runs the user's next script line in answer to `received` (`None`: the start). A tap on
    /// numbered options types the option's number, as people do on Twilio; on a template, it
    /// taps its quick-reply button.
    fn script_step(self: &Arc<Self>, number: &str, received: Option<&TwilioMessage>) {
        let (line, pos) = {
            let g = self.lock();
            let Some(user) = g.users.get(number) else { return };
            let Some(pos) = g.script_pos.get(number).copied() else { return };
            let Some(line) = user.script.get(pos).cloned() else { return };
            (line, pos)
        };
        let text = received.map(|m| m.body.clone()).unwrap_or_default();
        if line.after.as_deref().is_some_and(|a| received.is_none() || !text.contains(a)) {
            return;
        }
        self.lock().script_pos.insert(number.to_string(), pos + 1);
        let this = Arc::clone(self);
        let number = number.to_string();
        let received = received.cloned();
        let pending = Open::new(&this.in_flight);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(line.delay_ms)).await;
            if let Some(say) = &line.say {
                this.user_says(&number, say, None);
            } else if let Some(caption) = &line.photo {
                this.user_sends_image(&number, caption);
            } else if let (Some(title), Some(m)) = (&line.tap, &received) {
                match numbered_option(&m.body, title) {
                    Some(n) => {
                        this.user_says(&number, &n.to_string(), None);
                    }
                    None if m.template.is_some() => {
                        if let Err(e) = this.user_taps(&number, title, &m.sid) {
                            tracing::warn!(title, "sandbox: a scripted user cannot tap: {e}");
                        }
                    }
                    None => tracing::warn!(title, "sandbox: a scripted user found no such option to pick"),
                }
            }
            drop(pending);
        });
    }

    /// A simulated person taps the quick-reply button titled `title` of the template message
    /// `replying_to`. WhatsApp shows only the buttons the approved content has: a title it
    /// does not have, or a message that is not such a template, is refused.
    pub fn user_taps(self: &Arc<Self>, number: &str, title: &str, replying_to: &str) -> Result<String, String> {
        let payload = {
            let g = self.lock();
            let Some(m) = g.messages.iter().find(|m| m.sid == replying_to) else {
                return Err(format!("no message {replying_to} was sent"));
            };
            let Some(content) = m.content_sid.as_ref().and_then(|sid| g.contents.get(sid)) else {
                return Err(format!("message {replying_to} is not a content template"));
            };
            match content.quick_replies.iter().find(|t| *t == title) {
                Some(id) => id.clone(),
                None => {
                    return Err(format!(
                        "content '{}' ({}) has no quick-reply button '{title}' (it has {:?})",
                        content.friendly_name, content.language, content.quick_replies
                    ))
                }
            }
        };
        let fields = vec![
            ("Body", title.to_string()),
            ("MessageType", "button".into()),
            ("ButtonPayload", payload),
            ("ButtonText", title.to_string()),
        ];
        Ok(self.user_sends(number, fields, Some(replying_to)))
    }

    fn user_sends(
        self: &Arc<Self>,
        number: &str,
        extra: Vec<(&'static str, String)>,
        replying_to: Option<&str>,
    ) -> String {
        let sid = new_sid("SM");
        let s = self.settings();
        let name = self.lock().users.get(number).map(|u| u.name.clone()).unwrap_or_else(|| "Participante".into());
        let mut fields: Vec<(&'static str, String)> = vec![
            ("SmsMessageSid", sid.clone()),
            ("NumMedia", "0".into()),
            ("ProfileName", name),
            ("SmsSid", sid.clone()),
            ("WaId", number.trim_start_matches('+').to_string()),
            ("SmsStatus", "received".into()),
            ("To", s.sender.clone()),
            ("NumSegments", "1".into()),
            ("ReferralNumMedia", "0".into()),
            ("MessageSid", sid.clone()),
            ("AccountSid", s.account_sid.clone()),
            ("From", format!("whatsapp:{number}")),
            ("ApiVersion", "2010-04-01".into()),
            // The sender is in the account's Messaging Service: inbound messages name it.
            ("MessagingServiceSid", s.messaging_service_sid.clone()),
        ];
        if let Some(r) = replying_to {
            fields.push(("OriginalRepliedMessageSid", r.to_string()));
            fields.push(("OriginalRepliedMessageSender", s.sender.clone()));
        }
        let body = extra.iter().find(|(k, _)| *k == "Body").map(|(_, v)| v.clone()).unwrap_or_default();
        let media_urls: Vec<String> =
            extra.iter().filter(|(k, _)| k.starts_with("MediaUrl")).map(|(_, v)| v.clone()).collect();
        // A field the message gives (NumMedia) replaces the default.
        fields.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        fields.extend(extra);
        {
            let mut g = self.lock();
            g.windows.insert(number.to_string(), Instant::now());
            g.windows_aged.remove(number);
            g.messages.push(TwilioMessage {
                sid: sid.clone(),
                to: s.sender.clone(),
                from: format!("whatsapp:{number}"),
                direction: "inbound",
                body,
                content_sid: None,
                media_urls,
                template: None,
                variables: Default::default(),
                messaging_service_sid: Some(s.messaging_service_sid.clone()),
                status_callback: None,
                status: "received".into(),
                error_code: None,
                created: unix(),
                at_ms: chrono::Utc::now().timestamp_millis(),
                credential: None,
            });
        }
        if let Some(url) = s.inbound_url {
            self.deliver(url, fields, Duration::ZERO);
        }
        sid
    }

    /// POSTs a signed form to `url` after `delay`, retried as its connection overrides say
    /// (Twilio's default: one retry, on connection failures only).
    fn deliver(self: &Arc<Self>, url: String, fields: Vec<(&'static str, String)>, delay: Duration) {
        let copies = if self.settings().duplicate_webhooks { 2 } else { 1 };
        for copy in 0..copies {
            let this = Arc::clone(self);
            let (url, fields) = (url.clone(), fields.clone());
            let pending = Open::new(&this.in_flight);
            tokio::spawn(async move {
                let _pending = pending;
                tokio::time::sleep(delay + Duration::from_millis(copy * 30)).await;
                let (target, overrides) = match url.split_once('#') {
                    Some((u, o)) => (u.to_string(), form_pairs(o)),
                    None => (url.clone(), Vec::new()),
                };
                let get = |k: &str| overrides.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
                let retries = get("rc").and_then(|r| r.parse::<u32>().ok()).unwrap_or(1).min(5);
                let policy = get("rp").unwrap_or_else(|| "ct".into());
                let params: Vec<(String, String)> = fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                let token = this.settings().auth_token;
                let signature = compute_signature(&token, &target, &params);
                for attempt in 0..=retries {
                    if attempt > 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    let r = this
                        .http
                        .post(&target)
                        .header("x-twilio-signature", &signature)
                        .header("i-twilio-idempotency-token", new_sid("ID"))
                        .form(&params)
                        .timeout(Duration::from_secs(15))
                        .send()
                        .await;
                    let (ok, retryable) = match &r {
                        Ok(resp) if resp.status().is_success() => (true, false),
                        Ok(resp) => {
                            let class = if resp.status().is_server_error() { "5xx" } else { "4xx" };
                            (false, policy.split(',').any(|p| p == class || p == "all"))
                        }
                        Err(e) => {
                            let class = if e.is_timeout() { "rt" } else { "ct" };
                            (false, policy.split(',').any(|p| p == class || p == "all"))
                        }
                    };
                    {
                        let mut g = this.lock();
                        g.deliveries += 1;
                        if !ok {
                            g.delivery_failures += 1;
                        }
                    }
                    if ok || !retryable {
                        return;
                    }
                    debug!("Twilio webhook failed; retrying as its connection overrides allow");
                }
            });
        }
    }

    /// The signed status callback Twilio would send for `m`, addressed to its `StatusCallback`
    /// (none when the message has none).
    pub fn signed_status(&self, m: &TwilioMessage, status: &str) -> Option<super::SignedRequest> {
        let url = m.status_callback.as_deref()?;
        let url = url.split_once('#').map_or(url, |(u, _)| u).to_string();
        let params: Vec<(String, String)> =
            self.callback_fields(m, status, None).into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let signature = compute_signature(&self.settings().auth_token, &url, &params);
        let body = crate::providers::encode_form(&params).into_bytes();
        Some(super::SignedRequest {
            url,
            headers: vec![
                ("content-type", "application/x-www-form-urlencoded".into()),
                ("x-twilio-signature", signature),
            ],
            body,
        })
    }

    fn callback_fields(&self, m: &TwilioMessage, status: &str, error: Option<i64>) -> Vec<(&'static str, String)> {
        let s = self.settings();
        let mut f = vec![
            ("SmsSid", m.sid.clone()),
            ("SmsStatus", status.to_string()),
            ("MessageStatus", status.to_string()),
            ("ChannelToAddress", m.to.trim_start_matches("whatsapp:").to_string()),
            ("To", m.to.clone()),
            ("ChannelPrefix", "whatsapp".into()),
            ("MessageSid", m.sid.clone()),
            ("AccountSid", s.account_sid.clone()),
            ("StructuredMessage", "false".into()),
            ("From", m.from.clone()),
            ("ApiVersion", "2010-04-01".into()),
            ("ChannelInstallSid", "XE00000000000000000000000000000001".into()),
        ];
        if let Some(mg) = &m.messaging_service_sid {
            f.push(("MessagingServiceSid", mg.clone()));
        }
        if let Some(code) = error {
            f.push(("ErrorCode", code.to_string()));
        }
        f
    }

    /// The person reads message `sid` now (as any time later): its status becomes `read` and
    /// the callback is posted, to whoever listens at that moment.
    pub fn mark_read(self: &Arc<Self>, sid: &str) {
        let Some(m) = self.lock().messages.iter().find(|m| m.sid == sid).cloned() else { return };
        self.set_status(sid, "read", None);
        if let Some(url) = m.status_callback.clone() {
            self.deliver(url, self.callback_fields(&m, "read", None), Duration::ZERO);
        }
    }

    fn set_status(&self, sid: &str, status: &str, error: Option<i64>) {
        if let Some(m) = self.lock().messages.iter_mut().find(|m| m.sid == sid) {
            m.status = status.to_string();
            m.error_code = error;
        }
    }

    /// After an accepted send: the callbacks at the sender's pace and what the person does.
    fn after_send(self: &Arc<Self>, m: &TwilioMessage, failure: Option<(&'static str, i64)>, leaves_at: Instant) {
        let s = self.settings();
        let base = leaves_at.saturating_duration_since(Instant::now()) + Duration::from_millis(s.status_delay_ms);
        let callback = m.status_callback.clone().filter(|_| s.statuses);
        let send = |this: &Arc<Self>, status: &'static str, error: Option<i64>, at: Duration| {
            let fields = this.callback_fields(m, status, error);
            let (this2, sid) = (Arc::clone(this), m.sid.clone());
            let pending = Open::new(&this.in_flight);
            tokio::spawn(async move {
                tokio::time::sleep(at).await;
                this2.set_status(&sid, status, error);
                drop(pending);
            });
            if let Some(url) = &callback {
                this.deliver(url.clone(), fields, at);
            }
        };
        if let Some((status, code)) = failure {
            send(self, status, Some(code), base);
            return;
        }
        let number = m.to.trim_start_matches("whatsapp:").to_string();
        let user = self.lock().users.get(&number).cloned().unwrap_or_else(|| TwilioUser {
            number: number.clone(),
            reads: false,
            ..Default::default()
        });
        send(self, "sent", None, base);
        let (delivered_at, read_at) = (base * 3, base * 3 + Duration::from_millis(user.read_after_ms));
        if s.reorder_webhooks && user.reads {
            send(self, "read", None, base * 2);
            send(self, "delivered", None, read_at + base);
        } else {
            send(self, "delivered", None, delivered_at);
            if user.reads {
                send(self, "read", None, read_at);
            }
        }
        if !user.script.is_empty() {
            let this = Arc::clone(self);
            let m = m.clone();
            let number = number.clone();
            let pending = Open::new(&this.in_flight);
            tokio::spawn(async move {
                tokio::time::sleep(read_at).await;
                this.script_step(&number, Some(&m));
                drop(pending);
            });
        }
        if let Some(text) = user.reply {
            if self.lock().replied.insert(number.clone()) {
                let this = Arc::clone(self);
                let sid = m.sid.clone();
                let at = read_at + Duration::from_millis(user.reply_after_ms);
                let pending = Open::new(&this.in_flight);
                tokio::spawn(async move {
                    tokio::time::sleep(at).await;
                    this.user_says(&number, &text, Some(&sid));
                    drop(pending);
                });
            }
        }
    }
}

/// The number of the option titled `title` in a text of numbered options (`2. Reportar`).
pub fn numbered_option(body: &str, title: &str) -> Option<usize> {
    body.lines().find_map(|l| {
        let (n, rest) = l.trim().split_once(". ")?;
        (rest.trim() == title).then(|| n.parse().ok()).flatten()
    })
}

/// How long Twilio keeps a message in a sender's queue.
const QUEUE_LIMIT: Duration = Duration::from_secs(10 * 3600);

fn unix() -> i64 {
    chrono::Utc::now().timestamp()
}

fn new_sid(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 16]>()))
}

fn rfc2822(unix_seconds: i64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds, 0)
        .map(|d| d.format("%a, %d %b %Y %H:%M:%S +0000").to_string())
        .unwrap_or_default()
}

/// Twilio's legacy error body.
pub fn twilio_error(status: u16, code: i64, message: &str) -> Response {
    let st = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        st,
        Json(json!({ "code": code, "message": message, "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status })),
    )
        .into_response()
}

fn resource(account: &str, m: &TwilioMessage) -> Value {
    json!({
        "account_sid": account,
        "api_version": "2010-04-01",
        "body": m.body,
        "date_created": rfc2822(m.created),
        "date_sent": if m.status == "queued" || m.status == "accepted" { Value::Null } else { json!(rfc2822(m.created)) },
        "date_updated": rfc2822(m.created),
        "direction": m.direction,
        "error_code": m.error_code,
        "error_message": Value::Null,
        "from": m.from,
        "num_media": "0",
        "num_segments": "1",
        "price": Value::Null,
        "price_unit": "USD",
        "messaging_service_sid": m.messaging_service_sid,
        "sid": m.sid,
        "status": m.status,
        "subresource_uris": { "media": format!("/2010-04-01/Accounts/{account}/Messages/{}/Media.json", m.sid) },
        "to": m.to,
        "uri": format!("/2010-04-01/Accounts/{account}/Messages/{}.json", m.sid),
    })
}

/// Basic auth with the Account SID and Auth Token, or the API key: who authenticated (the
/// Account SID or the key's SID), if anyone did.
fn authenticated(s: &TwilioSettings, headers: &HeaderMap) -> Option<String> {
    let encoded = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8_lossy(&decoded);
    let (user, password) = text.split_once(':')?;
    ((user == s.account_sid && password == s.auth_token) || (user == s.api_key_sid && password == s.api_key_secret))
        .then(|| user.to_string())
}

fn unauthenticated() -> Response {
    let mut r = twilio_error(401, 20003, "Authenticate");
    r.headers_mut().insert("www-authenticate", axum::http::HeaderValue::from_static("Basic realm=\"Twilio API\""));
    r
}

/// `POST /2010-04-01/Accounts/{sid}/Messages.json`
pub async fn create_message(
    State(st): State<SandboxState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let tw = Arc::clone(&st.twilio);
    let _open = Open::new(&tw.requests);
    let s = tw.settings();
    let Some(credential) = authenticated(&s, &headers) else {
        return unauthenticated();
    };
    if account != s.account_sid {
        return twilio_error(
            404,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account}/Messages.json was not found"),
        );
    }
    if tw.requests.load(Ordering::Acquire) > s.max_concurrent_requests {
        tw.lock().refused_concurrency += 1;
        return twilio_error(429, 20429, "Too Many Requests");
    }
    let form_ok = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let text = String::from_utf8_lossy(&body).to_string();
    let pairs = if form_ok { form_pairs(&text) } else { Vec::new() };
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let Some(to) = get("To") else {
        return twilio_error(400, 21604, "A 'To' phone number is required.");
    };
    let number = to.strip_prefix("whatsapp:").unwrap_or("");
    let digits = number.strip_prefix('+').unwrap_or("");
    if !to.starts_with("whatsapp:+") || !(7..=15).contains(&digits.len()) || !digits.chars().all(|c| c.is_ascii_digit())
    {
        return twilio_error(400, 21211, &format!("The 'To' number {to} is not a valid phone number."));
    }
    let (from, service) = match (get("From"), get("MessagingServiceSid")) {
        (None, None) => return twilio_error(400, 21603, "A 'From' phone number is required."),
        (Some(f), _) if f != s.sender => {
            return twilio_error(
                400,
                63007,
                &format!("Twilio could not find a Channel with the specified From address: {f}"),
            )
        }
        (_, Some(mg)) if mg != s.messaging_service_sid => {
            return twilio_error(400, 21701, &format!("The Messaging Service Sid {mg} is invalid."))
        }
        (f, mg) => (f.unwrap_or_else(|| s.sender.clone()), mg),
    };
    let status_callback = get("StatusCallback");
    if status_callback.as_deref().is_some_and(|u| !(u.starts_with("http://") || u.starts_with("https://"))) {
        return twilio_error(400, 21609, "The StatusCallback URL is not valid.");
    }
    // Files Twilio fetches and sends (repeatable, at most 10), public http(s) addresses.
    let media: Vec<String> =
        pairs.iter().filter(|(n, v)| n == "MediaUrl" && !v.is_empty()).map(|(_, v)| v.clone()).collect();
    if media.iter().any(|u| !(u.starts_with("https://") || u.starts_with("http://")) || u.len() <= "https://".len()) {
        return twilio_error(400, 21620, "Invalid media URL(s)");
    }
    if media.len() > 10 {
        return twilio_error(400, 21623, "Number of media files exceeds allowed limit");
    }
    // WhatsApp takes anything but an approved template as free-form text.
    let mut approved_template = false;
    let (body_text, content_sid, template, variables) = match (get("Body"), get("ContentSid")) {
        (None, None) if media.is_empty() => {
            return twilio_error(400, 21619, "A text message body or media urls must be specified.")
        }
        (None, None) => (String::new(), None, None, serde_json::Map::new()),
        (Some(_), Some(_)) => {
            return twilio_error(400, 21619, "Body and MediaUrl must be omitted when a ContentSid is given.")
        }
        (None, Some(_)) if !media.is_empty() => {
            return twilio_error(400, 21619, "Body and MediaUrl must be omitted when a ContentSid is given.")
        }
        (Some(b), None) => {
            if b.chars().count() > 1600 {
                return twilio_error(400, 21617, "The concatenated message body exceeds the 1600 character limit.");
            }
            (b, None, None, serde_json::Map::new())
        }
        (None, Some(sid)) => {
            let Some(c) = tw.lock().contents.get(&sid).cloned() else {
                return twilio_error(400, 21655, &format!("The ContentSid {sid} is Invalid"));
            };
            let vars = match get("ContentVariables") {
                None => serde_json::Map::new(),
                Some(v) => match serde_json::from_str::<Value>(&v) {
                    Ok(Value::Object(m)) if m.values().all(Value::is_string) => m,
                    _ => {
                        return twilio_error(
                            400,
                            21656,
                            "The ContentVariables Parameter is invalid: expected a JSON object of strings.",
                        )
                    }
                },
            };
            let complete = (1..=c.expected())
                .all(|i| vars.get(&i.to_string()).and_then(Value::as_str).is_some_and(|v| !v.trim().is_empty()));
            let extra = vars.keys().any(|k| k.parse::<usize>().map_or(true, |i| i == 0 || i > c.expected()));
            if !complete || extra {
                return twilio_error(
                    400,
                    21656,
                    &format!(
                        "The ContentVariables Parameter is invalid: the template {sid} takes variables 1 to {}",
                        c.expected()
                    ),
                );
            }
            approved_template = c.approval == "approved";
            (c.render(&vars), Some(sid), Some(c.friendly_name.clone()), vars)
        }
    };
    // Faults.
    let fault = {
        let mut g = tw.lock();
        super::take_fault(
            &mut g.faults,
            |f| f.mode.as_deref() != Some("list") && f.to.as_deref().is_none_or(|t| t == number),
            |f| &mut f.count,
        )
    };
    let mut failure: Option<(&'static str, i64)> = None;
    let mut after_accept: Option<&str> = None;
    if let Some(f) = fault {
        if let Some(ms) = f.delay_ms {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        match f.mode.as_deref().unwrap_or("sync") {
            "async" => {
                failure = Some((if f.code >= 30000 && f.code < 40000 { "undelivered" } else { "failed" }, f.code))
            }
            "timeout" => std::future::pending::<()>().await,
            "drop" => after_accept = Some("drop"),
            "reset" => after_accept = Some("reset"),
            _ => return twilio_error(f.http_status, f.code, "Injected by the sandbox"),
        }
    }
    let leaves_at = {
        let mut g = tw.lock();
        let user = g.users.get(number).cloned();
        if failure.is_none() && user.as_ref().is_some_and(|u| !u.on_whatsapp) {
            failure = Some(("undelivered", 63003));
        }
        if failure.is_none() && !approved_template {
            let open = g.windows.get(number).is_some_and(|t| {
                t.elapsed() + g.windows_aged.get(number).copied().unwrap_or_default() < Duration::from_secs(24 * 3600)
            });
            if !open {
                failure = Some(("failed", 63016));
            }
        }
        // Twilio's queue: everything is accepted; each message leaves in its turn, up to ten
        // hours' worth. Beyond that a sender refuses the create (21611) while a Messaging
        // Service accepts and fails it (30001).
        let gap = Duration::from_secs_f64(1.0 / g.settings.messages_per_second.max(0.01));
        let now = Instant::now();
        let slot = g.next_slot.max(now);
        if slot.duration_since(now) > QUEUE_LIMIT {
            if service.is_none() {
                return twilio_error(
                    400,
                    21611,
                    "This 'From' number has exceeded the maximum number of queued messages",
                );
            }
            if failure.is_none() {
                failure = Some(("failed", 30001));
            }
            now
        } else {
            g.next_slot = slot + gap;
            slot
        }
    };
    let m = TwilioMessage {
        sid: new_sid("SM"),
        to: to.clone(),
        from,
        direction: "outbound-api",
        body: body_text,
        content_sid,
        media_urls: media,
        template,
        variables,
        messaging_service_sid: service.clone(),
        status_callback,
        status: if service.is_some() { "accepted".into() } else { "queued".into() },
        error_code: None,
        created: unix(),
        at_ms: chrono::Utc::now().timestamp_millis(),
        credential: Some(credential),
    };
    {
        let mut g = tw.lock();
        let count = g.sent_to.entry(m.to.clone()).or_default();
        *count = (count.0 + 1, m.at_ms);
        g.messages.push(m.clone());
    }
    tw.after_send(&m, failure, leaves_at);
    match after_accept {
        Some("drop") => std::future::pending::<()>().await,
        // Tear the connection down without an answer (no panic message: resume_unwind skips
        // the hook); hyper closes the socket.
        Some(_) => std::panic::resume_unwind(Box::new("connection reset by the sandbox")),
        None => {}
    }
    (StatusCode::CREATED, Json(resource(&s.account_sid, &m))).into_response()
}

/// `GET /2010-04-01/Accounts/{sid}/Messages.json`: newest first, filtered by `To` and `From`,
/// paged with `PageSize` (default 50, at most 1,000) and `Page`.
pub async fn list_messages(
    State(st): State<SandboxState>,
    Path(account): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let tw = Arc::clone(&st.twilio);
    let s = tw.settings();
    if authenticated(&s, &headers).is_none() {
        return unauthenticated();
    }
    if account != s.account_sid {
        return twilio_error(404, 20404, "The requested resource was not found");
    }
    let fault = {
        let mut g = tw.lock();
        super::take_fault(&mut g.faults, |f| f.mode.as_deref() == Some("list"), |f| &mut f.count)
    };
    if let Some(f) = fault {
        return twilio_error(f.http_status, f.code, "Injected by the sandbox");
    }
    let q = form_pairs(query.as_deref().unwrap_or(""));
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let page_size = match get("PageSize").map(|p| p.parse::<usize>()) {
        None => 50,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return twilio_error(400, 20001, "PageSize must be between 1 and 1000"),
    };
    let page = get("Page").and_then(|p| p.parse::<usize>().ok()).unwrap_or(0);
    let (to, from) = (get("To"), get("From"));
    let all: Vec<Value> = tw
        .lock()
        .messages
        .iter()
        .rev()
        .filter(|m| to.as_ref().is_none_or(|t| &m.to == t) && from.as_ref().is_none_or(|f| &m.from == f))
        .map(|m| resource(&s.account_sid, m))
        .collect();
    let items: Vec<Value> = all.iter().skip(page * page_size).take(page_size).cloned().collect();
    let base = format!("/2010-04-01/Accounts/{account}/Messages.json");
    let filters: String = [("To", &to), ("From", &from)]
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().map(|v| {
                format!("{k}={}&", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC))
            })
        })
        .collect();
    let uri = |p: usize| format!("{base}?{filters}PageSize={page_size}&Page={p}");
    let more = (page + 1) * page_size < all.len();
    Json(json!({
        "end": page * page_size + items.len().saturating_sub(1),
        "first_page_uri": uri(0),
        "next_page_uri": if more { json!(format!("{}&PageToken=PA{}", uri(page + 1), hex::encode(rand::random::<[u8; 8]>()))) } else { Value::Null },
        "page": page,
        "page_size": page_size,
        "previous_page_uri": if page > 0 { json!(uri(page - 1)) } else { Value::Null },
        "start": page * page_size,
        "uri": uri(page),
        "messages": items,
    }))
    .into_response()
}

/// `GET /2010-04-01/Accounts/{sid}/Messages/{sid}.json`
pub async fn fetch_message(
    State(st): State<SandboxState>,
    Path((account, message)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let tw = Arc::clone(&st.twilio);
    let s = tw.settings();
    if authenticated(&s, &headers).is_none() {
        return unauthenticated();
    }
    let sid = message.strip_suffix(".json").unwrap_or(&message);
    let found = tw.lock().messages.iter().find(|m| m.sid == sid).cloned();
    match found {
        Some(m) if account == s.account_sid => Json(resource(&s.account_sid, &m)).into_response(),
        _ => twilio_error(
            404,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account}/Messages/{message} was not found"),
        ),
    }
}

/// `GET /2010-04-01/Accounts/{AC}/Messages/{MM}/Media/{ME}`: a file a person sent, to the
/// account's credentials only (accounts that protect their media require them).
pub async fn fetch_media(
    State(st): State<SandboxState>,
    Path((account, message, media)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let tw = Arc::clone(&st.twilio);
    let s = tw.settings();
    if authenticated(&s, &headers).is_none() {
        return unauthenticated();
    }
    let mut g = tw.lock();
    match g.media.get(&media).cloned() {
        // Twilio answers with a redirect to a temporary address of its media store, which
        // needs no credentials and works for a while.
        Some((of, _, _)) if of == message && account == s.account_sid => {
            let token = hex::encode(rand::random::<[u8; 16]>());
            g.media_links.insert(token.clone(), (media, Instant::now()));
            let root = g.base_url.trim_end_matches("/twilio").to_string();
            (StatusCode::FOUND, [(axum::http::header::LOCATION, format!("{root}/twilio-media-store/{token}"))])
                .into_response()
        }
        _ => twilio_error(
            404,
            20404,
            &format!(
                "The requested resource /2010-04-01/Accounts/{account}/Messages/{message}/Media/{media} was not found"
            ),
        ),
    }
}

/// How long a redirected media address works.
const MEDIA_LINK_TTL: Duration = Duration::from_secs(300);

/// `GET /twilio-media-store/{token}`: the file a media request was redirected to, while the
/// address is fresh (an old one is refused, as a presigned address past its time is).
pub async fn media_store(State(st): State<SandboxState>, Path(token): Path<String>) -> Response {
    let mut g = st.twilio.lock();
    let file = match g.media_links.get(&token) {
        Some((sid, given)) if given.elapsed() <= MEDIA_LINK_TTL => g.media.get(sid).cloned(),
        _ => None,
    };
    match file {
        Some((_, bytes, mime)) => {
            g.media_downloads += 1;
            ([(axum::http::header::CONTENT_TYPE, mime)], bytes).into_response()
        }
        None => (StatusCode::FORBIDDEN, "Request has expired").into_response(),
    }
}

/// `GET /2010-04-01/Accounts/{sid}.json`: the account, when the Account SID and Auth Token
/// open it (a standard API key gets 20003, as at Twilio).
pub async fn fetch_account(
    State(st): State<SandboxState>,
    Path(account): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = st.twilio.settings();
    // Standard API keys may not read the Accounts resource: only the Auth Token opens it.
    if authenticated(&s, &headers).is_none_or(|who| who != s.account_sid) {
        return unauthenticated();
    }
    let sid = account.strip_suffix(".json").unwrap_or(&account);
    if sid != s.account_sid {
        // Twilio answers another account's resource as if it did not exist.
        return twilio_error(
            404,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account} was not found"),
        );
    }
    Json(json!({
        "sid": s.account_sid,
        "friendly_name": "recado sandbox",
        "status": "active",
        "type": "Full",
        "uri": format!("/2010-04-01/Accounts/{}.json", s.account_sid),
    }))
    .into_response()
}

/// The content resource the Content API shows for `c`.
fn content_resource(account: &str, sid: &str, c: &ContentDef) -> Value {
    let variables: serde_json::Map<String, Value> =
        (1..=c.expected()).map(|i| (i.to_string(), Value::String(format!("ejemplo {i}")))).collect();
    let body: String = std::iter::once(format!("[{}]", c.friendly_name))
        .chain((1..=c.variables).map(|i| format!("{{{{{i}}}}}")))
        .collect::<Vec<_>>()
        .join(" ");
    let url =
        json!({ "type": "URL", "title": "Abrir", "url": format!("https://example.org/{{{{{}}}}}", c.expected()) });
    let replies = c.quick_replies.iter();
    let types = match (c.url_button, c.quick_replies.is_empty()) {
        (true, true) => json!({ "twilio/call-to-action": { "body": body, "actions": [url] } }),
        (false, true) => json!({ "twilio/text": { "body": body } }),
        (false, false) => json!({ "twilio/quick-reply": {
            "body": body,
            "actions": replies.map(|t| json!({ "title": t, "id": t })).collect::<Vec<_>>(),
        } }),
        // Both kinds of button: a card.
        (true, false) => json!({ "twilio/card": {
            "title": body,
            "actions": replies.map(|t| json!({ "type": "QUICK_REPLY", "title": t, "id": t })).chain([url]).collect::<Vec<_>>(),
        } }),
    };
    json!({
        "sid": sid,
        "account_sid": account,
        "friendly_name": c.friendly_name,
        "language": c.language,
        "variables": variables,
        "types": types,
        "url": format!("https://content.twilio.com/v1/Content/{sid}"),
        "links": {
            "approval_fetch": format!("https://content.twilio.com/v1/Content/{sid}/ApprovalRequests"),
            "approval_create": format!("https://content.twilio.com/v1/Content/{sid}/ApprovalRequests/whatsapp"),
        },
    })
}

/// `GET /v1/Content/{sid}` (Twilio's Content API).
pub async fn fetch_content(State(st): State<SandboxState>, Path(sid): Path<String>, headers: HeaderMap) -> Response {
    let s = st.twilio.settings();
    if authenticated(&s, &headers).is_none() {
        return unauthenticated();
    }
    match st.twilio.lock().contents.get(&sid) {
        Some(c) => Json(content_resource(&s.account_sid, &sid, c)).into_response(),
        None => twilio_error(404, 20404, &format!("The requested resource /v1/Content/{sid} was not found")),
    }
}

/// `GET /v1/Content/{sid}/ApprovalRequests`: the template's WhatsApp approval.
pub async fn fetch_content_approval(
    State(st): State<SandboxState>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let s = st.twilio.settings();
    if authenticated(&s, &headers).is_none() {
        return unauthenticated();
    }
    let Some(c) = st.twilio.lock().contents.get(&sid).cloned() else {
        return twilio_error(
            404,
            20404,
            &format!("The requested resource /v1/Content/{sid}/ApprovalRequests was not found"),
        );
    };
    // A template never submitted has an empty `whatsapp` object.
    let whatsapp = if c.approval == "unsubmitted" {
        json!({})
    } else {
        json!({
            "type": "whatsapp",
            "name": c.friendly_name,
            "category": "UTILITY",
            "content_type": if c.url_button { "twilio/call-to-action" } else { "twilio/text" },
            "status": c.approval,
            "rejection_reason": c.rejection_reason,
            "allow_category_change": true,
        })
    };
    Json(json!({
        "sid": sid,
        "account_sid": s.account_sid,
        "whatsapp": whatsapp,
        "url": format!("https://content.twilio.com/v1/Content/{sid}/ApprovalRequests"),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_options_are_found_by_title() {
        let body = "¿En qué te podemos ayudar?\n\n1. Horarios\n2. Reportar un problema";
        assert_eq!(numbered_option(body, "Reportar un problema"), Some(2));
        assert_eq!(numbered_option(body, "Trámites"), None);
    }

    #[test]
    fn faults_with_typos_are_refused() {
        let f = |mode: &str, code: i64| TwilioFault {
            code,
            http_status: 400,
            count: 1,
            mode: Some(mode.into()),
            to: None,
            delay_ms: None,
        };
        assert!(f("sync", 21211).validate().is_ok());
        assert!(f("reset", 0).validate().is_ok());
        assert!(f("rest", 0).validate().is_err());
        assert!(f("async", 0).validate().is_err());
    }

    #[test]
    fn content_sids_are_shaped_like_twilios() {
        let sid = content_sid("confirmacion_inscripcion", "es");
        assert!(crate::providers::twilio::config::is_sid(&sid, "HX"), "{sid}");
        assert_ne!(sid, content_sid("confirmacion_inscripcion", "en"));
    }
}
