//! End-to-end dispatch load run: the real daemon sends N queued messages to the Meta emulator
//! over HTTP, with the provider's throughput set to `--rate` and the emulator's ceiling set to
//! the same value. Reports the achieved rate and how many sends the emulator throttled.
//!
//! `cargo run --release --example dispatch_load -- --rate 80 --messages 2000`
//! (figures in BENCHMARKS.md).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use recado::config::Config;
use recado::domain::Intent;
use recado::domain::{MessageContent, PhoneNumber, RecordKey, TemplateMessage};
use recado::sandbox::{MetaSettings, Sandbox, TemplateDef};
use recado::store;
use serde_json::json;

fn arg(name: &str, default: f64) -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = arg("--rate", 80.0);
    let n = arg("--messages", (rate * 20.0).max(500.0)) as usize;
    let settings = MetaSettings { messages_per_second: rate, statuses: false, pair_burst: 1000, ..Default::default() };
    let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), settings).await?;
    sandbox.meta().add_template(TemplateDef::new("aviso", "es", 1, false));
    sandbox.google().seed("load", "UTC", vec![("T".into(), vec![vec![json!("ID"), json!("Teléfono")]])]);
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("sa.json");
    std::fs::write(&key, sandbox.service_account_key("load@sandbox"))?;
    let base = sandbox.base_url();
    let yaml = format!(
        r#"
state: {{ path: "{db}" }}
http: {{ listen: "127.0.0.1:0" }}
providers:
  - {{ id: p, type: meta_cloud, phone_number_id: "1234567890", access_token: sandbox-token, app_secret: sandbox-app-secret,
      verify_token: v, base_url: "{base}/meta", messages_per_second: {rate}, max_in_flight: 128, pair_interval: 0s }}
sources:
  - {{ id: s, type: google_sheets, spreadsheet_id: load, tab: T, key_column: ID, phone_column: Teléfono,
      service_account_key_file: "{key}", sheets_base_url: "{base}/google/sheets/", drive_base_url: "{base}/google/", poll_interval: 5s }}
rules:
  - {{ id: r, source: s, when: row_added, provider: p, template: {{ name: aviso, language: es, body: ["{{{{ ID }}}}"] }} }}
"#,
        db = dir.path().join("load.db").display(),
        key = key.display()
    );
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = recado::app::start(config).await?;

    // Queue N messages in one transaction, as a poll that found N new rows would.
    let mut tx = app.ctx().store.begin().await?;
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..n {
        let intent = Intent {
            rule_id: "r".into(),
            source_id: "s".into(),
            record_key: RecordKey(i.to_string()),
            provider_id: "p".into(),
            idempotency_key: format!("r:{i}:added"),
            phone: PhoneNumber::from_e164_unchecked(format!("+5698{i:07}")),
            content: MessageContent::Template(TemplateMessage {
                name: "aviso".into(),
                language: "es".into(),
                body: vec![i.to_string()],
                button_url_suffix: None,
            }),
            fallback: None,
            adjustments: Vec::new(),
        };
        store::insert_intent(&mut tx, &intent, now, now).await?;
    }
    tx.commit().await?;
    let started = Instant::now();
    app.ctx().wake_dispatcher("p");
    while sandbox.meta().sent_count() < n {
        if started.elapsed() > Duration::from_secs((n as f64 / rate * 3.0 + 30.0) as u64) {
            anyhow::bail!("only {} of {n} sent", sandbox.meta().sent_count());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sent = sandbox.meta().sent();
    let first = sent.iter().map(|m| m.at_ms).min().unwrap_or(0);
    let last = sent.iter().map(|m| m.at_ms).max().unwrap_or(0);
    let achieved = (n as f64 - 1.0) / ((last - first).max(1) as f64 / 1000.0);
    let mut c = app.ctx().store.conn().await?;
    let counts = store::counts_by_state(&mut c).await?;
    drop(c);
    println!(
        "rate {rate}/s · {n} messages · achieved {achieved:.1}/s ({:.1}% of the ceiling) · throttled by the emulator: {} · outbox: {counts:?}",
        achieved / rate * 100.0,
        sandbox.meta().throttled()
    );
    app.stop().await;
    sandbox.stop().await;
    Ok(())
}
