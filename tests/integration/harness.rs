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
use recado::sandbox::{MetaSettings, Sandbox, SimUser, TemplateDef};
use recado::store::{self, OutboxMessage, Store};
use serde_json::{json, Value};

pub const SHEET: &str = "sheet-test";
pub const TAB: &str = "Inscripciones";
pub const SOURCE: &str = "inscripciones";

pub struct Harness {
    pub sandbox: Sandbox,
    pub dir: tempfile::TempDir,
    pub app: Option<RunningApp>,
    /// The daemon's clock: tests move it instead of waiting.
    pub clock: Arc<Clock>,
    key_file: PathBuf,
    pub flush_interval: &'static str,
    /// Extra rules (YAML list items, indented by two spaces) appended to `rules:`.
    pub extra_rules: String,
    /// Extra top-level YAML (e.g. `defaults:`).
    pub extra_top: String,
    /// Extra keys for the source (YAML, indented by four spaces).
    pub extra_source: String,
    /// Extra keys for the provider (YAML, indented by four spaces).
    pub extra_provider: String,
    /// The consent column the configuration names.
    pub consent_column: &'static str,
    /// The provider's messages per second.
    pub mps: u32,
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

    pub async fn with_settings(rows: Vec<Vec<Value>>, settings: MetaSettings) -> Self {
        init_logs();
        let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), settings).await.expect("sandbox starts");
        sandbox.google().set_quota(10_000, 10_000);
        sandbox.meta().add_template(TemplateDef::new("confirmacion_inscripcion", "es", 3, false));
        sandbox.meta().add_template(TemplateDef::new("encuesta_seguimiento", "es", 1, true));
        let mut all = vec![header()];
        all.extend(rows);
        sandbox.google().seed(SHEET, "America/Santiago", vec![(TAB.to_string(), all)]);
        let dir = tempfile::tempdir().expect("tempdir");
        let key_file = dir.path().join("sa.json");
        std::fs::write(&key_file, sandbox.service_account_key("recado-test@sandbox.iam.gserviceaccount.com"))
            .expect("key written");
        Self {
            sandbox,
            dir,
            app: None,
            clock: Arc::new(Clock::system()),
            key_file,
            flush_interval: "200ms",
            extra_rules: String::new(),
            extra_top: String::new(),
            extra_source: String::new(),
            extra_provider: String::new(),
            consent_column: "Consentimiento",
            mps: 200,
        }
    }

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
providers:
  - id: whatsapp
    type: meta_cloud
    phone_number_id: "1234567890"
    access_token: sandbox-token
    app_secret: sandbox-app-secret
    verify_token: sandbox-verify
    base_url: "{base}/meta"
    messages_per_second: {mps}
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
            source = self.extra_source,
            provider = self.extra_provider,
            consent = self.consent_column,
            mps = self.mps,
        )
    }

    pub fn config(&self) -> Config {
        Config::from_yaml_with(&self.yaml(), &recado::config::Env::fixed::<&str, &str>([]))
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
        self.sandbox.meta().update_settings(|s| s.webhook_url = Some(url));
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

    pub async fn messages(&self) -> Vec<OutboxMessage> {
        let mut c = self.store().conn().await.expect("conn");
        store::all_messages(&mut c).await.expect("messages")
    }

    pub fn cell(&self, key: &str, column: &str) -> String {
        self.sandbox.google().cell_by_key(SHEET, TAB, "ID", key, column).unwrap_or_default()
    }

    /// Messages the Meta emulator accepted for person `n`.
    pub fn sent_to(&self, n: u32) -> Vec<recado::sandbox::meta::SentMessage> {
        self.sandbox.meta().sent().into_iter().filter(|m| m.to == wa_id(n)).collect()
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
                if self.sandbox.meta().deliveries_in_flight() > 0 || self.sandbox.meta().held() > 0 {
                    return false;
                }
                let mut c = store.conn().await.expect("conn");
                let now = self.clock.now_ms();
                let busy = store::all_messages(&mut c).await.expect("messages").iter().any(|m| {
                    m.state == recado::domain::MessageState::Sending
                        || (m.state == recado::domain::MessageState::Queued && m.next_attempt_at <= now)
                });
                !busy
                    && store::pending_webhook_count(&mut c).await.expect("inbox") == 0
                    && store::pending_write_count(&mut c).await.expect("writes") == 0
            }
        })
        .await;
    }
}

/// Polls `cond` every 25 ms until it holds; panics with `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
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
