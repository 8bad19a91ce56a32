//! End-to-end campaign run: one cron occurrence over N matching records, enqueued by the real
//! timer loop from the SQLite snapshot, page by page. Reports the time to enqueue all of them,
//! the process's resident memory before and after, and then the idle daemon's CPU use.
//!
//! `cargo run --release --example campaign_load -- --records 100000`
//! (figures in BENCHMARKS.md).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use recado::config::Config;
use recado::sandbox::{MetaSettings, Sandbox, TemplateDef};
use recado::store;
use serde_json::json;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident set size in MiB (Linux), from /proc/self/status.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--records", 100_000) as usize;
    let sandbox =
        Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), MetaSettings { statuses: false, ..Default::default() })
            .await?;
    sandbox.google().set_quota(100_000, 100_000);
    sandbox.meta().add_template(TemplateDef::new("encuesta", "es", 1, false));
    let mut rows = vec![vec![json!("ID"), json!("Nombre"), json!("Teléfono"), json!("Estado")]];
    rows.extend((0..n).map(|i| {
        vec![json!(i), json!(format!("Participante {i}")), json!(format!("+5698{:07}", i)), json!("Egresado")]
    }));
    sandbox.google().seed("load", "America/Santiago", vec![("T".into(), rows)]);
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("sa.json");
    std::fs::write(&key, sandbox.service_account_key("load@sandbox"))?;
    sandbox.google().share("load", "load@sandbox");
    let base = sandbox.base_url();
    let yaml = format!(
        r#"
state: {{ path: "{db}" }}
http: {{ listen: "127.0.0.1:0" }}
providers:
  - {{ id: p, type: meta_cloud, phone_number_id: "1234567890", access_token: sandbox-token, app_secret: sandbox-app-secret,
      verify_token: v, base_url: "{base}/meta", messages_per_second: 0.01 }}
sources:
  - {{ id: s, type: google_sheets, spreadsheet_id: load, tab: T, key_column: ID, phone_column: Teléfono,
      service_account_key_file: "{key}", sheets_base_url: "{base}/google/sheets/", drive_base_url: "{base}/google/",
      poll_interval: 30s, requests_per_minute: 1000 }}
rules:
  - {{ id: trimestral, source: s, when: {{ cron: "0 10 1 */3 *" }}, if: "Estado == 'Egresado'", provider: p,
      template: {{ name: encuesta, language: es, body: ["{{{{ Nombre }}}}"] }} }}
"#,
        db = dir.path().join("load.db").display(),
        key = key.display()
    );
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = recado::app::start(config).await?;
    // Wait for the first read (the snapshot the campaign walks).
    loop {
        let mut c = app.ctx().store.conn().await?;
        if store::source_state(&mut c, "s").await?.baseline_done {
            break;
        }
        drop(c);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_mib();
    // Make the occurrence due now, as if its time had just come.
    let mut tx = app.ctx().store.begin().await?;
    let due = chrono::Utc::now().timestamp_millis() - 1000;
    store::set_campaign_next(&mut tx, "trimestral", due, due).await?;
    tx.commit().await?;
    let started = Instant::now();
    app.ctx().wake_timers();
    // Done when the occurrence is marked done (after its last page), a primary-key lookup.
    loop {
        let mut c = app.ctx().store.conn().await?;
        let next = store::campaign_next(&mut c, "trimestral").await?;
        drop(c);
        if next.is_some_and(|t| t != due) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("the occurrence did not complete");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = started.elapsed();
    let rss_after = rss_mib();
    let mut c = app.ctx().store.conn().await?;
    let queued: i64 = store::counts_by_state(&mut c).await?.iter().map(|(_, k)| k).sum();
    drop(c);
    anyhow::ensure!(queued as usize == n, "{queued} of {n} queued");
    println!(
        "campaign occurrence over {n} records: all queued in {:.2} s · RSS {:.0} MiB before, {:.0} MiB after",
        took.as_secs_f64(),
        rss_before,
        rss_after
    );
    // Idle: nothing due, the poller probes every 30 s.
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    tokio::time::sleep(Duration::from_secs(20)).await;
    let cpu = cpu_seconds() - cpu0;
    println!(
        "idle for {:.0} s afterwards: {:.2} s of CPU ({:.2}% of one core), sandbox included",
        t0.elapsed().as_secs_f64(),
        cpu,
        cpu / t0.elapsed().as_secs_f64() * 100.0
    );
    app.stop().await;
    sandbox.stop().await;
    Ok(())
}
