//! Spawns the sandbox and the daemon (zero2prod style) and offers helpers that wait on
//! conditions, never on the wall clock: time moves only through the daemon's injected
//! [`Clock`], and "nothing more happens" is shown by waiting until the daemon is quiet
//! (sources polled again, outbox, inbox and write-back empty, no webhook in flight).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recado::app::{self, RunningApp};
use recado::config::Config;
use recado::engine::Clock;
use recado::sandbox::{
    ContentDef, MetaFault, MetaSettings, Sandbox, SimUser, TemplateDef, TwilioFault, TwilioSettings, TwilioUser,
};
use recado::store::{self, OutboxMessage, Store};
use serde_json::{json, Value};

pub const SHEET: &str = "sheet-test";
pub const TAB: &str = "Inscripciones";
pub const SOURCE: &str = "inscripciones";

/// Which WhatsApp provider the daemon sends through: the delivery suite runs for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    Meta,
    Twilio,
}

/// Templates both emulators know, by (name, language, body parameters, URL button).
const TEMPLATES: &[(&str, &str, usize, bool)] = &[
    ("confirmacion_inscripcion", "es", 3, false),
    ("encuesta_seguimiento", "es", 1, true),
    ("retomar_conversacion", "es", 1, false),
];

/// A message as the provider received it, in neutral terms.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The provider's id for it.
    pub id: String,
    /// The template's name, or `None` for free text.
    pub template: Option<String>,
    /// Template parameters in order, a URL button's suffix last.
    pub params: Vec<String>,
    /// The free text.
    pub text: Option<String>,
    /// Our outbox id, as the provider will echo it.
    pub callback_data: Option<String>,
}

/// A fault, in the vendor's own terms for each provider.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The number's or account's throughput exceeded (synchronous).
    Throttled,
    /// A server error (synchronous).
    ServerError,
    /// Refused for good (synchronous).
    Refused,
    /// Accepted, then reported undeliverable.
    UndeliverableLater,
    /// Accepted, then reported outside the 24-hour window.
    WindowClosedLater,
    /// Accepted, then reported throttled.
    ThrottledLater,
    /// Never answered; nothing sent.
    NoAnswer,
    /// Accepted, then the answer lost (Twilio: the connection reset; Meta: it hangs).
    AnswerLost,
}

pub struct Harness {
    pub vendor: Vendor,
    pub sandbox: Sandbox,
    pub dir: tempfile::TempDir,
    pub app: Option<RunningApp>,
    /// The daemon's clock: tests move it instead of waiting.
    pub clock: Arc<Clock>,
    pub key_file: PathBuf,
    pub flush_interval: &'static str,
    /// Extra rules (YAML list items, indented by two spaces) appended to `rules:`.
    pub extra_rules: String,
    /// Extra top-level YAML (e.g. `defaults:`).
    pub extra_top: String,
    /// More of `http:` (indented two spaces).
    pub extra_http: String,
    /// Extra keys for the source (YAML, indented by four spaces).
    pub extra_source: String,
    /// Extra keys for the provider (YAML, indented by four spaces).
    pub extra_provider: String,
    /// The consent column the configuration names.
    pub consent_column: &'static str,
    /// The provider's messages per second.
    pub mps: u32,
    /// `http.public_url`, when the test puts recado behind a (pretend) reverse proxy.
    pub public_url: Option<&'static str>,
    /// Twilio: send through the Messaging Service, authenticated with the API key (the Auth
    /// Token then only verifies webhooks), instead of from the number with the Auth Token.
    pub twilio_service_with_api_key: bool,
    /// The whole configuration, when a test writes its own (another source type).
    pub yaml_override: Option<String>,
    /// The spreadsheet of the hand-off inbox, in the hand-off tests.
    pub inbox_sheet: &'static str,
}

pub fn phone(n: u32) -> String {
    format!("+56 9 8765 {n:04}")
}

pub fn wa_id(n: u32) -> String {
    format!("5698765{n:04}")
}

pub fn e164(n: u32) -> String {
    format!("+5698765{n:04}")
}

pub fn row(id: u32, name: &str, consent: &str, estado: &str) -> Vec<Value> {
    vec![
        json!(id),
        json!(name),
        json!(phone(id)),
        json!("Soldadura"),
        json!("Luis Pérez"),
        json!(consent),
        json!(estado),
    ]
}

pub fn header() -> Vec<Value> {
    ["ID", "Nombre", "Teléfono", "Curso", "Mentor", "Consentimiento", "Estado"].iter().map(|h| json!(h)).collect()
}

impl Harness {
    /// A sandbox with the two templates and a sheet holding `rows` (after the header).
    pub async fn new(rows: Vec<Vec<Value>>) -> Self {
        Self::with_settings(
            rows,
            MetaSettings { status_delay_ms: 30, messages_per_second: 1000.0, ..Default::default() },
        )
        .await
    }

    /// The same on `vendor`.
    pub async fn on(vendor: Vendor, rows: Vec<Vec<Value>>) -> Self {
        let mut h = Self::new(rows).await;
        h.vendor = vendor;
        h
    }

    /// Gives the harness's template `name` these quick-reply buttons, on every provider.
    pub fn set_quick_replies(&self, name: &str, titles: &[&str]) {
        for (n, language, params, button) in TEMPLATES.iter().filter(|t| t.0 == name) {
            self.sandbox
                .meta()
                .add_template(TemplateDef::new(n, language, *params, *button).with_quick_replies(titles));
            self.sandbox
                .twilio()
                .add_content(ContentDef::new(n, language, *params, *button).with_quick_replies(titles));
        }
    }

    pub async fn with_settings(rows: Vec<Vec<Value>>, settings: MetaSettings) -> Self {
        init_logs();
        let twilio = TwilioSettings { status_delay_ms: 30, messages_per_second: 1000.0, ..Default::default() };
        let sandbox =
            Sandbox::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), settings, twilio).await.expect("sandbox starts");
        sandbox.google().set_quota(10_000, 10_000);
        for (name, language, params, button) in TEMPLATES {
            sandbox.meta().add_template(TemplateDef::new(name, language, *params, *button));
            sandbox.twilio().add_content(ContentDef::new(name, language, *params, *button));
        }
        let mut all = vec![header()];
        all.extend(rows);
        sandbox.google().seed(SHEET, "America/Santiago", vec![(TAB.to_string(), all)]);
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("sa.json");
        std::fs::write(&key_file, sandbox.service_account_key("recado-test@sandbox.iam.gserviceaccount.com"))
            .expect("key written");
        sandbox.google().share(SHEET, "recado-test@sandbox.iam.gserviceaccount.com");
        Self {
            vendor: Vendor::Meta,
            sandbox,
            dir,
            app: None,
            clock: Arc::new(Clock::system()),
            key_file,
            flush_interval: "200ms",
            extra_rules: String::new(),
            extra_top: String::new(),
            extra_http: String::new(),
            extra_source: String::new(),
            extra_provider: String::new(),
            consent_column: "Consentimiento",
            mps: 200,
            public_url: None,
            twilio_service_with_api_key: false,
            yaml_override: None,
            inbox_sheet: SHEET,
        }
    }

    /// Person `n` on WhatsApp (on both emulators).
    pub fn user(&self, n: u32, reads: bool, reply: Option<&str>) {
        self.sandbox.meta().add_user(SimUser {
            wa_id: wa_id(n),
            name: format!("P{n}"),
            reads,
            read_after_ms: 60,
            reply: reply.map(String::from),
            reply_after_ms: 60,
            ..Default::default()
        });
        self.sandbox.twilio().add_user(TwilioUser {
            number: e164(n),
            name: format!("P{n}"),
            reads,
            read_after_ms: 60,
            reply: reply.map(String::from),
            reply_after_ms: 60,
            ..Default::default()
        });
    }

    /// Person `n` writes to the business (replying to provider message `replying_to`).
    pub fn says(&self, n: u32, text: &str, replying_to: Option<&str>) -> String {
        match self.vendor {
            Vendor::Meta => self.sandbox.meta().user_says(&wa_id(n), text, replying_to),
            Vendor::Twilio => self.sandbox.twilio().user_says(&e164(n), text, replying_to),
        }
    }

    /// Injects `fault` for `count` sends to person `n`, in the provider's terms; returns the
    /// vendor's error code (0 when the fault has none).
    pub fn fault(&self, fault: Fault, count: u32, n: u32) -> i64 {
        let (mode, meta, twilio) = match fault {
            Fault::Throttled => ("sync", (130429, 400), (20429, 429)),
            Fault::ServerError => ("sync", (131000, 500), (20500, 500)),
            Fault::Refused => ("sync", (132001, 404), (21211, 400)),
            Fault::UndeliverableLater => ("async", (131026, 400), (63003, 400)),
            Fault::WindowClosedLater => ("async", (131047, 400), (63016, 400)),
            // 63017 (account throughput) rather than 63018 (the sender's limit): both pause
            // the provider, 63018 for a minute of real time, longer than a test should wait.
            Fault::ThrottledLater => ("async", (130429, 400), (63017, 400)),
            Fault::NoAnswer => ("timeout", (0, 400), (0, 400)),
            Fault::AnswerLost => match self.vendor {
                Vendor::Meta => ("drop", (0, 400), (0, 400)),
                Vendor::Twilio => ("reset", (0, 400), (0, 400)),
            },
        };
        match self.vendor {
            Vendor::Meta => {
                self.sandbox.meta().inject(MetaFault {
                    code: meta.0,
                    http_status: meta.1,
                    count,
                    mode: Some(mode.into()),
                    to: Some(wa_id(n)),
                    delay_ms: None,
                });
                meta.0
            }
            Vendor::Twilio => {
                self.sandbox.twilio().inject(TwilioFault {
                    code: twilio.0,
                    http_status: twilio.1,
                    count,
                    mode: Some(mode.into()),
                    to: Some(e164(n)),
                    delay_ms: None,
                });
                twilio.0
            }
        }
    }

    /// Every status callback and webhook delivered twice, and `read` before `delivered`.
    pub fn duplicate_and_reorder_webhooks(&self) {
        self.sandbox.meta().update_settings(|s| {
            s.duplicate_webhooks = true;
            s.reorder_webhooks = true;
        });
        self.sandbox.twilio().update_settings(|s| {
            s.duplicate_webhooks = true;
            s.reorder_webhooks = true;
        });
    }

    /// Webhook POSTs the provider made, and how many were not acknowledged.
    pub fn delivery_stats(&self) -> (u64, u64) {
        match self.vendor {
            Vendor::Meta => self.sandbox.meta().delivery_stats(),
            Vendor::Twilio => self.sandbox.twilio().delivery_stats(),
        }
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.path().join("recado.db")
    }

    pub fn yaml(&self) -> String {
        let base = self.sandbox.base_url();
        format!(
            r#"
state:
  path: "{state}"
http:
  listen: "127.0.0.1:0"
{http}{public_url}providers:
{vendor}    messages_per_second: {mps}
    pair_interval: 100ms
{provider}
sources:
  - id: {SOURCE}
    type: google_sheets
    spreadsheet_id: {SHEET}
    tab: {TAB}
    key_column: ID
    phone_column: Teléfono
    default_region: CL
    poll_interval: 150ms
    flush_interval: {flush}
    requests_per_minute: 5000
    service_account_key_file: "{key}"
    sheets_base_url: "{base}/google/sheets/"
    drive_base_url: "{base}/google/"
    consent:
      column: {consent}
    write_back:
      status: Estado WhatsApp
      status_at: Fecha estado
      error: Error WhatsApp
      last_reply: Última respuesta
      last_reply_at: Fecha respuesta
{source}
rules:
  - id: confirmacion
    source: {SOURCE}
    when: row_added
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{{{ Nombre }}}}", "{{{{ Curso }}}}", "{{{{ Mentor }}}}"]
  - id: encuesta
    source: {SOURCE}
    when: {{ changed: Estado, to: Egresado }}
    provider: whatsapp
    template:
      name: encuesta_seguimiento
      language: es
      body: ["{{{{ Nombre }}}}"]
      button_url_suffix: "viewform?entry.1={{{{ ID | urlencode }}}}"
{rules}
{top}
"#,
            state = self.state_path().display(),
            key = self.key_file.display(),
            flush = self.flush_interval,
            rules = self.extra_rules,
            top = self.extra_top,
            http = self.extra_http,
            source = self.extra_source,
            provider = self.extra_provider,
            vendor = self.provider_yaml(),
            public_url = self.public_url.map(|u| format!("  public_url: \"{u}\"\n")).unwrap_or_default(),
            consent = self.consent_column,
            mps = self.mps,
        )
    }

    /// The provider entry (id `whatsapp`) for the harness's vendor, without throughput.
    pub fn provider_yaml(&self) -> String {
        let base = self.sandbox.base_url();
        match self.vendor {
            Vendor::Meta => format!(
                r#"  - id: whatsapp
    type: meta_cloud
    phone_number_id: "1234567890"
    business_account_id: "1029384756"
    access_token: sandbox-token
    app_secret: sandbox-app-secret
    verify_token: sandbox-verify
    base_url: "{base}/meta"
"#
            ),
            Vendor::Twilio => {
                let s = self.sandbox.twilio().settings();
                let templates: String = TEMPLATES
                    .iter()
                    .map(|(name, language, ..)| {
                        format!(
                            "      - {{ name: {name}, language: {language}, content_sid: {} }}\n",
                            recado::sandbox::twilio::content_sid(name, language)
                        )
                    })
                    .collect();
                let sender = if self.twilio_service_with_api_key {
                    format!(
                        "    api_key_sid: {}\n    api_key_secret: {}\n    messaging_service_sid: {}\n",
                        s.api_key_sid, s.api_key_secret, s.messaging_service_sid
                    )
                } else {
                    format!("    from: \"{}\"\n", s.sender)
                };
                format!(
                    r#"  - id: whatsapp
    type: twilio
    account_sid: {account}
    auth_token: {token}
{sender}    base_url: "{base}/twilio"
    content_templates:
{templates}"#,
                    account = s.account_sid,
                    token = s.auth_token,
                )
            }
        }
    }

    pub fn config(&self) -> Config {
        let yaml = self.yaml_override.clone().unwrap_or_else(|| self.yaml());
        Config::from_yaml_with(&yaml, &recado::config::Env::fixed::<&str, &str>([]))
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"))
    }

    /// Starts the daemon on the harness's clock and points the sandbox's webhooks at it; waits
    /// for the first read to be committed.
    pub async fn start(&mut self) {
        self.start_without_waiting().await;
        let store = self.store();
        wait_for("the first poll to be committed", Duration::from_secs(20), || {
            let store = store.clone();
            async move {
                let mut c = store.conn().await.expect("conn");
                store::source_state(&mut c, SOURCE).await.expect("state").baseline_done
            }
        })
        .await;
    }

    /// Starts the daemon without waiting for its first read.
    pub async fn start_without_waiting(&mut self) {
        let app = app::start_with_clock(self.config(), Arc::clone(&self.clock)).await.expect("daemon starts");
        let url = format!("http://{}/webhooks/whatsapp", app.webhook_addr());
        self.sandbox.meta().update_settings(|s| s.webhook_url = Some(url.clone()));
        self.sandbox.twilio().update_settings(|s| s.inbound_url = Some(url));
        self.app = Some(app);
    }

    pub async fn stop(&mut self) {
        if let Some(app) = self.app.take() {
            app.stop().await;
        }
    }

    /// Queues `(record key, field, value)` write-backs as the engine does, and wakes the flusher.
    pub async fn queue_writes(&self, writes: &[(String, &str, String)]) {
        let writes: Vec<recado::domain::FieldWrite> = writes
            .iter()
            .map(|(key, field, value)| recado::domain::FieldWrite {
                source_id: SOURCE.into(),
                target: recado::domain::WriteTarget::Record(recado::domain::RecordKey(key.clone())),
                field: (*field).into(),
                value: value.clone(),
            })
            .collect();
        let mut tx = self.store().begin().await.expect("begin");
        store::queue_writes(&mut tx, &writes).await.expect("queue writes");
        tx.commit().await.expect("commit");
        self.running().ctx().wake_flusher(SOURCE);
    }

    /// Stops with a stop budget shorter than production's.
    pub async fn stop_within(&mut self, budget: Duration) {
        if let Some(app) = self.app.take() {
            app.stop_within(budget).await;
        }
    }

    pub fn running(&self) -> &RunningApp {
        self.app.as_ref().expect("daemon running")
    }

    pub fn store(&self) -> Store {
        self.running().ctx().store.clone()
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhooks/whatsapp", self.running().webhook_addr())
    }

    /// The sum of the samples of metric `name` on `/metrics` whose labels contain `labels`.
    pub async fn metric(&self, name: &str, labels: &str) -> u64 {
        let url = format!("http://{}/metrics", self.running().webhook_addr());
        let text = reqwest::get(&url).await.expect("/metrics").text().await.expect("/metrics text");
        text.lines()
            .filter(|l| l.split([' ', '{']).next() == Some(name) && l.contains(labels))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    pub async fn messages(&self) -> Vec<OutboxMessage> {
        let mut c = self.store().conn().await.expect("conn");
        store::all_messages(&mut c).await.expect("messages")
    }

    pub fn cell(&self, key: &str, column: &str) -> String {
        self.sandbox.google().cell_by_key(SHEET, TAB, "ID", key, column).unwrap_or_default()
    }

    /// Messages the Meta emulator accepted for person `n`.
    pub fn meta_sent_to(&self, n: u32) -> Vec<recado::sandbox::meta::SentMessage> {
        self.sandbox.meta().sent().into_iter().filter(|m| m.to == wa_id(n)).collect()
    }

    /// Messages the provider accepted for person `n`, oldest first.
    pub fn sent_to(&self, n: u32) -> Vec<Sent> {
        match self.vendor {
            Vendor::Meta => self
                .meta_sent_to(n)
                .into_iter()
                .map(|m| {
                    let t = &m.body["template"];
                    let params = t["components"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|c| c["parameters"].as_array().cloned().unwrap_or_default())
                        .map(|p| p["text"].as_str().unwrap_or_default().to_string())
                        .collect();
                    Sent {
                        id: m.wamid.clone(),
                        template: t["name"].as_str().map(String::from),
                        params,
                        text: m.body["text"]["body"].as_str().map(String::from),
                        callback_data: m.callback_data.clone(),
                    }
                })
                .collect(),
            Vendor::Twilio => self
                .sandbox
                .twilio()
                .sent()
                .into_iter()
                .filter(|m| m.to == format!("whatsapp:{}", e164(n)))
                .map(|m| {
                    let params = (1..=m.variables.len())
                        .map(|i| {
                            m.variables.get(&i.to_string()).and_then(Value::as_str).unwrap_or_default().to_string()
                        })
                        .collect();
                    let callback_data = m
                        .status_callback
                        .as_deref()
                        .and_then(|u| u.split_once("recado_message="))
                        .map(|(_, id)| id.split(['&', '#']).next().unwrap_or("").to_string());
                    Sent {
                        id: m.sid.clone(),
                        params,
                        text: m.template.is_none().then(|| m.body.clone()),
                        template: m.template.clone(),
                        callback_data,
                    }
                })
                .collect(),
        }
    }

    /// Every message the provider accepted.
    pub fn sent_count(&self) -> usize {
        match self.vendor {
            Vendor::Meta => self.sandbox.meta().sent_count(),
            Vendor::Twilio => self.sandbox.twilio().sent_count(),
        }
    }

    pub async fn wait_cell(&self, key: &str, column: &str, want: &str) {
        let what = format!("row {key} column {column} to be '{want}'");
        wait_for(&what, Duration::from_secs(20), || async { self.cell(key, column) == want }).await;
    }

    pub fn add_row(&self, values: Vec<Value>) {
        assert!(self.sandbox.google().insert_row(SHEET, TAB, None, values));
    }

    pub fn edit(&self, key: &str, column: &str, value: Value) {
        assert!(self.sandbox.google().edit_by_key(SHEET, TAB, "ID", key, column, value), "edit {key}.{column}");
    }

    /// Completed polls of the source.
    pub fn polls(&self) -> u64 {
        self.running().ctx().health.rounds(&format!("source:{SOURCE}"))
    }

    /// Waits until the source has been polled `n` more times (every change made before the call
    /// has been read and acted on by then).
    pub async fn quiesce_polls(&self, n: u64) {
        let start = self.polls();
        wait_for("more polls", Duration::from_secs(20), || async { self.polls() >= start + n }).await;
    }

    /// Waits until the daemon is quiet: the source polled twice more (so every edit made before
    /// the call has been read), nothing due in the outbox or in flight, no webhook waiting on
    /// either side, no write-back pending. After it, "nothing more happened" can be asserted.
    pub async fn quiesce(&self) {
        let start = self.polls();
        wait_for("the source to be polled twice more", Duration::from_secs(20), || async { self.polls() >= start + 2 })
            .await;
        self.quiet().await;
        // Two more write-back rounds: the last write is verified (and any value a sort put on
        // the wrong row is put back and verified) before anything is asserted.
        let flusher = format!("flusher:spreadsheet {SHEET}");
        let rounds = self.running().ctx().health.rounds(&flusher);
        wait_for("two more write-back rounds", Duration::from_secs(20), || async {
            self.running().ctx().health.rounds(&flusher) >= rounds + 2
        })
        .await;
        self.quiet().await;
    }

    /// Nothing due in the outbox or in flight, no webhook waiting on either side, no
    /// write-back queued.
    pub async fn quiet(&self) {
        let store = self.store();
        wait_for("the daemon to be quiet", Duration::from_secs(30), || {
            let store = store.clone();
            async move {
                if self.sandbox.meta().deliveries_in_flight() > 0
                    || self.sandbox.meta().held() > 0
                    || self.sandbox.twilio().deliveries_in_flight() > 0
                {
                    return false;
                }
                let mut c = store.conn().await.expect("conn");
                let now = self.clock.now_ms();
                // A conversation whose reminder or expiry is due by the daemon's clock has not
                // been swept yet (the sweep runs each second of real time). Read first: a sweep
                // that commits after this read has queued its message before the next one.
                let unswept = !store::conversations_due(&mut c, now, 1).await.expect("conversations").is_empty();
                let busy = store::all_messages(&mut c).await.expect("messages").iter().any(|m| {
                    m.state == recado::domain::MessageState::Sending
                        || (m.state == recado::domain::MessageState::Queued && m.next_attempt_at <= now)
                });
                !busy
                    && !unswept
                    && store::pending_webhook_count(&mut c).await.expect("inbox") == 0
                    && store::pending_write_count(&mut c).await.expect("writes") == 0
            }
        })
        .await;
    }
}

/// Polls `cond` every 25 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if !holds_within(limit, cond).await {
        panic!("timed out after {limit:?} waiting for {what}");
    }
}

/// Polls `cond` every 25 ms until it holds (true) or `limit` passes (false), for callers that
/// say more than [`wait_for`] when it does not.
pub async fn holds_within<F, Fut>(limit: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    false
}

/// Logs for debugging a test: `RECADO_LOG=debug cargo test -- --nocapture`.
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RECADO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("off")),
        )
        .with_test_writer()
        .try_init();
}

/// A Chromium to render pages with: RECADO_CHROMIUM, else `chromium` or `chromium-browser` on
/// the PATH.
pub fn chromium() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("RECADO_CHROMIUM") {
        return Some(p.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|p| p.is_file())
}
