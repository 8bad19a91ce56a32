//! The setup the dispatch and webhook load runs share: a sandbox whose Meta and Twilio senders
//! both pace at `rate` and send no statuses of their own, a one-tab sheet of `rows` participants,
//! and the real daemon with one provider (Meta or Twilio) and one `row_added` rule, plus a way to
//! queue N messages in one transaction as a poll that found N new rows would.

use std::net::SocketAddr;

use recado::app::RunningApp;
use recado::config::Config;
use recado::domain::{Intent, MessageContent, PhoneNumber, RecordKey, TemplateMessage};
use recado::sandbox::{ContentDef, MetaSettings, Sandbox, TemplateDef, TwilioSettings};
use recado::store;
use serde_json::json;

/// `--name value` from the command line, or `default`.
pub fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Which provider `--provider` names (Meta unless it says twilio).
pub fn twilio_chosen() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == "--provider").and_then(|i| args.get(i + 1)).is_some_and(|p| p == "twilio")
}

/// Participant `i`'s number (a Chilean mobile).
pub fn phone(i: usize) -> String {
    format!("+5698{i:07}")
}

pub struct LoadDaemon {
    pub sandbox: Sandbox,
    pub app: RunningApp,
    pub twilio: bool,
    _dir: tempfile::TempDir,
}

/// The sandbox of a load run: both senders paced at `rate` and sending no statuses, the
/// template `aviso` on both, and a one-tab sheet of `rows` participants. Returns it with the
/// Twilio Content SID of `aviso`.
pub async fn sandbox(rate: f64, rows: usize) -> anyhow::Result<(Sandbox, String)> {
    let meta = MetaSettings { messages_per_second: rate, statuses: false, pair_burst: 1000, ..Default::default() };
    let twilio_settings = TwilioSettings { messages_per_second: rate, statuses: false, ..Default::default() };
    let sandbox = Sandbox::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), meta, twilio_settings).await?;
    sandbox.google().set_quota(100_000, 100_000);
    sandbox.meta().add_template(TemplateDef::new("aviso", "es", 1, false));
    let content_sid = sandbox.twilio().add_content(ContentDef::new("aviso", "es", 1, false));
    let mut sheet = vec![vec![json!("ID"), json!("Teléfono")]];
    sheet.extend((0..rows).map(|i| vec![json!(i), json!(phone(i))]));
    sandbox.google().seed("load", "UTC", vec![("T".into(), sheet)]);
    sandbox.google().share("load", "load@sandbox");
    Ok((sandbox, content_sid))
}

/// The daemon's configuration for a load run: one provider (Meta or Twilio) at `rate`, the
/// sheet polled every `poll`, a `row_added` rule, the store in `dir`, listening on `port`
/// (0: any).
pub fn config_yaml(
    sandbox: &Sandbox,
    content_sid: &str,
    twilio: bool,
    rate: f64,
    dir: &std::path::Path,
    port: u16,
    poll: &str,
) -> anyhow::Result<String> {
    let key = dir.join("sa.json");
    std::fs::write(&key, sandbox.service_account_key("load@sandbox"))?;
    let base = sandbox.base_url();
    let provider = if twilio {
        format!(
            r#"{{ id: p, type: twilio, account_sid: AC00000000000000000000000000000001, auth_token: sandbox-twilio-auth-token,
      from: "whatsapp:+14155238886", base_url: "{base}/twilio", messages_per_second: {rate}, max_in_flight: 64,
      pair_interval: 0s, content_templates: [{{ name: aviso, language: es, content_sid: {content_sid} }}] }}"#
        )
    } else {
        format!(
            r#"{{ id: p, type: meta_cloud, phone_number_id: "1234567890", access_token: sandbox-token, app_secret: sandbox-app-secret,
      verify_token: v, base_url: "{base}/meta", messages_per_second: {rate}, max_in_flight: 128, pair_interval: 0s }}"#
        )
    };
    Ok(format!(
        r#"
state: {{ path: "{db}" }}
http: {{ listen: "127.0.0.1:{port}" }}
providers:
  - {provider}
sources:
  - {{ id: s, type: google_sheets, spreadsheet_id: load, tab: T, key_column: ID, phone_column: Teléfono,
      service_account_key_file: "{key}", sheets_base_url: "{base}/google/sheets/", drive_base_url: "{base}/google/", poll_interval: {poll} }}
rules:
  - {{ id: r, source: s, when: row_added, provider: p, template: {{ name: aviso, language: es, body: ["{{{{ ID }}}}"] }} }}
"#,
        db = dir.join("load.db").display(),
        key = key.display()
    ))
}

impl LoadDaemon {
    pub async fn start(twilio: bool, rate: f64, rows: usize) -> anyhow::Result<Self> {
        let (sandbox, content_sid) = sandbox(rate, rows).await?;
        let dir = tempfile::tempdir()?;
        let yaml = config_yaml(&sandbox, &content_sid, twilio, rate, dir.path(), 0, "5s")?;
        let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
        let app = recado::app::start(config).await?;
        let url = format!("http://{}/webhooks/p", app.webhook_addr());
        sandbox.meta().update_settings(|s| s.webhook_url = Some(url));
        Ok(Self { sandbox, app, twilio, _dir: dir })
    }

    /// Waits until the sheet's first read (the baseline, which sends nothing) is committed.
    pub async fn baseline_done(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        loop {
            let mut c = self.app.ctx().store.conn().await?;
            if store::source_state(&mut c, "s").await?.baseline_done {
                return Ok(());
            }
            drop(c);
            anyhow::ensure!(std::time::Instant::now() < deadline, "the sheet's baseline did not finish in 5 minutes");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Queues messages to participants `0..n` in one transaction and wakes the dispatcher.
    pub async fn queue(&self, n: usize) -> anyhow::Result<()> {
        let mut tx = self.app.ctx().store.begin().await?;
        let now = chrono::Utc::now().timestamp_millis();
        for i in 0..n {
            let intent = Intent {
                rule_id: "r".into(),
                source_id: "s".into(),
                record_key: RecordKey(i.to_string()),
                provider_id: "p".into(),
                idempotency_key: format!("r:{i}:added"),
                phone: PhoneNumber::from_e164_unchecked(phone(i)),
                content: MessageContent::Template(TemplateMessage {
                    name: "aviso".into(),
                    language: "es".into(),
                    body: vec![i.to_string()],
                    button_url_suffix: None,
                    header: None,
                }),
                fallback: None,
                adjustments: Vec::new(),
            };
            store::insert_intent(&mut tx, &intent, now, now).await?;
        }
        tx.commit().await?;
        self.app.ctx().wake_dispatcher("p");
        Ok(())
    }

    /// Messages the chosen emulator has accepted.
    pub fn sent_count(&self) -> usize {
        if self.twilio {
            self.sandbox.twilio().sent_count()
        } else {
            self.sandbox.meta().sent_count()
        }
    }

    /// When the emulator accepted each message, in Unix milliseconds.
    pub fn accepted_at_ms(&self) -> Vec<i64> {
        if self.twilio {
            self.sandbox.twilio().sent().iter().filter(|m| m.direction != "inbound").map(|m| m.at_ms).collect()
        } else {
            self.sandbox.meta().sent().iter().map(|m| m.at_ms).collect()
        }
    }

    pub async fn stop(self) {
        self.app.stop().await;
        self.sandbox.stop().await;
    }
}
