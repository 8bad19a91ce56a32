//! End-to-end first read of a large sheet while webhooks keep arriving: the real daemon takes
//! the baseline of an N-row tab from the sandbox (read, convert, diff, commit in bounded
//! transactions), and a second task posts signed status webhooks to it all along, one at a
//! time. Reports how long the baseline took, and the webhooks' latency and status codes while
//! it ran (none may be refused: a webhook not acknowledged is a webhook Meta must send again).
//! Then one row is added and the time until its message is accepted, and until its status is
//! written back to its row (a flush that reads the whole key and status columns), is reported.
//!
//! `cargo run --release --example baseline_load -- --rows 1000000`
//! `cargo build --release && cargo run --release --example baseline_load -- --rows 1000000 --daemon target/release/recado`
//! (figures in BENCHMARKS.md). With `--daemon PATH` the daemon is that binary, run as a
//! separate process (`recado run --config …`) against the sandbox in this one, and its own
//! peak RSS is reported; without it, daemon and sandbox share this process.

// Each load run uses part of it.
#[allow(dead_code)]
#[path = "separate_daemon/mod.rs"]
mod separate_daemon;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recado::config::Config;
use recado::providers::meta_cloud::webhook::sign;
use recado::sandbox::{MetaSettings, Sandbox, TemplateDef};
use recado::store;
use serde_json::json;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn text_arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// The daemon under test: in this process, or a separate one.
enum Daemon {
    InProcess(Box<recado::app::RunningApp>),
    Separate(std::process::Child),
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--rows", 100_000) as usize;
    let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), MetaSettings::default()).await?;
    sandbox.google().set_quota(100_000, 100_000);
    let header = ["ID", "Nombre", "Teléfono", "Curso", "Mentor", "Consentimiento", "Estado", "Comuna"];
    let mut rows = vec![header.iter().map(|h| json!(h)).collect::<Vec<_>>()];
    rows.extend((0..n).map(|i| {
        vec![
            json!(i),
            json!(format!("Participante {i}")),
            json!(format!("+5698{:07}", i % 10_000_000)),
            json!("Soldadura"),
            json!("Luis Pérez"),
            json!("Sí"),
            json!("Activo"),
            json!("Maipú"),
        ]
    }));
    sandbox.google().seed("load", "America/Santiago", vec![("T".into(), rows)]);
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("sa.json");
    std::fs::write(&key, sandbox.service_account_key("load@sandbox"))?;
    sandbox.google().share("load", "load@sandbox");
    let base = sandbox.base_url();
    let daemon_path = text_arg("--daemon");
    let port = if daemon_path.is_some() { separate_daemon::free_port()? } else { 0 };
    let yaml = format!(
        r#"
state: {{ path: "{db}" }}
http: {{ listen: "127.0.0.1:{port}" }}
providers:
  - {{ id: p, type: meta_cloud, phone_number_id: "1234567890", access_token: sandbox-token, app_secret: sandbox-app-secret,
      verify_token: v, base_url: "{base}/meta" }}
sources:
  - {{ id: s, type: google_sheets, spreadsheet_id: load, tab: T, key_column: ID, phone_column: Teléfono,
      service_account_key_file: "{key}", sheets_base_url: "{base}/google/sheets/", drive_base_url: "{base}/google/",
      poll_interval: 2s, requests_per_minute: 1000, call_timeout: 300s, consent: {{ column: Consentimiento }},
      write_back: {{ status: Estado WhatsApp, error: Error WhatsApp }} }}
rules:
  - {{ id: bienvenida, source: s, when: row_added, provider: p,
      template: {{ name: x, language: es, body: ["{{{{ Nombre }}}}"] }} }}
"#,
        db = dir.path().join("load.db").display(),
        key = key.display()
    );
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = config.state.path.clone();
    let started = Instant::now();
    let (daemon, url) = match &daemon_path {
        None => {
            let app = recado::app::start(config).await?;
            let url = format!("http://{}/webhooks/p", app.webhook_addr());
            (Daemon::InProcess(Box::new(app)), url)
        }
        Some(path) => {
            let child = separate_daemon::start(path, &yaml, dir.path(), port).await?;
            (Daemon::Separate(child), format!("http://127.0.0.1:{port}/webhooks/p"))
        }
    };
    let done = Arc::new(AtomicBool::new(false));
    let poster = {
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut latencies = Vec::new();
            let mut refused = 0u64;
            let mut i = 0u64;
            while !done.load(Ordering::Acquire) {
                i += 1;
                let body = format!(
                    r#"{{"object":"whatsapp_business_account","entry":[{{"id":"1","changes":[{{"field":"messages","value":{{"messaging_product":"whatsapp","metadata":{{"display_phone_number":"1","phone_number_id":"1234567890"}},"statuses":[{{"id":"wamid.load{i}","status":"delivered","timestamp":"1700000000","recipient_id":"56900000000"}}]}}}}]}}]}}"#
                );
                let t = Instant::now();
                let r = http
                    .post(&url)
                    .header("x-hub-signature-256", sign("sandbox-app-secret", body.as_bytes()))
                    .body(body)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                latencies.push(t.elapsed());
                if !matches!(&r, Ok(resp) if resp.status() == 200) {
                    refused += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (latencies, refused)
        })
    };
    // The state store says when the baseline is committed (read from here, as `recado report`
    // would, whichever process the daemon is).
    let store = match &daemon {
        Daemon::InProcess(app) => {
            let store = app.ctx().store.clone();
            loop {
                let mut c = store.conn().await?;
                if store::source_state(&mut c, "s").await?.baseline_done {
                    break;
                }
                drop(c);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            store
        }
        Daemon::Separate(_) => separate_daemon::after_first_read(&db, "s", Duration::from_secs(600)).await?,
    };
    let baseline = started.elapsed();
    done.store(true, Ordering::Release);
    let (mut latencies, refused) = poster.await?;
    latencies.sort();
    println!("rows: {n}");
    println!("first baseline committed after: {:.1} s", baseline.as_secs_f64());
    println!(
        "webhooks during it: {} posted, {refused} not answered 200; latency p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    // Then one row added, as a person would: how long until its message is accepted (the
    // poll interval is 2 s; the rest is reading, diffing and sending).
    sandbox.meta().add_template(TemplateDef::new("x", "es", 1, false));
    let added = Instant::now();
    let values = vec![
        json!(n + 1),
        json!("Nueva"),
        json!("+56987659999"),
        json!("Soldadura"),
        json!("Luis Pérez"),
        json!("Sí"),
        json!("Activo"),
        json!("Maipú"),
    ];
    sandbox.google().insert_row("load", "T", None, values);
    while sandbox.meta().sent_count() == 0 {
        anyhow::ensure!(added.elapsed() < Duration::from_secs(300), "the added row got no message within 300 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("one row added → message accepted after: {:.2} s (poll interval 2 s)", added.elapsed().as_secs_f64());
    // Its status written back to its row: the flush reads the key column and the status
    // columns of the whole tab.
    let key = (n + 1).to_string();
    while sandbox.google().cell_by_key("load", "T", "ID", &key, "Estado WhatsApp").is_none_or(|s| s.is_empty()) {
        anyhow::ensure!(
            added.elapsed() < Duration::from_secs(300),
            "the added row's status was not written within 300 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("… and its status written back to its row after: {:.2} s", added.elapsed().as_secs_f64());
    match daemon {
        Daemon::InProcess(app) => {
            let me = std::process::id();
            app.stop().await;
            let rss = separate_daemon::peak_rss_mb(me).unwrap_or(0.0);
            println!("peak RSS of this process (daemon and sandbox): {rss:.0} MB");
        }
        Daemon::Separate(child) => {
            println!("peak RSS of the daemon alone: {:.0} MB", separate_daemon::peak_rss_mb(child.id()).unwrap_or(0.0));
            store.close().await;
            separate_daemon::stop(child)?;
        }
    }
    sandbox.stop().await;
    Ok(())
}
