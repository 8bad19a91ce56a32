//! End-to-end first sync of a large Salesforce object: the real daemon signs in to the
//! Salesforce emulator (JWT bearer), reads N appointments of the health programme's org
//! (relationship fields included) through the query resource in pages of 2,000, converts and
//! diffs them off the async runtime and commits the baseline. Then one appointment is created
//! as staff would, and the run times how long until the WhatsApp emulator accepted its
//! confirmation, and counts the requests of a few idle polls.
//!
//! `cargo run --release --example salesforce_load -- --records 100000`
//! (figures in BENCHMARKS.md; daemon and emulator share this process).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use recado::config::Config;
use recado::sandbox::salesforce::SfKind;
use recado::sandbox::{MetaSettings, Sandbox, SimUser, TemplateDef};
use recado::store;
use serde_json::{json, Map, Value};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// Peak resident set size in MiB (Linux), from /proc/self/status.
fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn queries(sandbox: &Sandbox) -> u64 {
    let sf = sandbox.salesforce();
    sf.count(SfKind::Query) + sf.count(SfKind::QueryMore)
}

async fn wait_until<F: Fn() -> bool>(what: &str, limit: Duration, cond: F) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !cond() {
        anyhow::ensure!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--records", 100_000) as usize;
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    }
    let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), MetaSettings::default()).await?;
    sandbox.meta().add_template(TemplateDef::new("confirmacion_cita", "es", 2, false));
    recado::demo::salud::define_org(&sandbox);
    let sf = sandbox.salesforce();
    sf.set_usage(0, 10_000_000);
    // One family per ten appointments.
    let families = n.div_ceil(10).max(1);
    let contacts = sf
        .create_many(
            "Contact",
            (0..families)
                .map(|i| {
                    fields(json!({"FirstName": format!("Madre{i}"), "LastName": "Carga",
                        "MobilePhone": format!("+5698{:07}", i % 10_000_000), "Consentimiento_WhatsApp__c": true}))
                })
                .collect(),
        )
        .map_err(anyhow::Error::msg)?;
    let at = (chrono::Utc::now() + chrono::Duration::days(20)).to_rfc3339();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let batch = chunk
            .iter()
            .map(|i| fields(json!({"Contacto__c": contacts[i / 10], "Fecha__c": at, "Estado__c": "Agendada"})))
            .collect();
        sf.create_many("Cita__c", batch).map_err(anyhow::Error::msg)?;
    }
    // The seed is older than the overlap of the polls that follow.
    sf.advance(Duration::from_secs(600));

    let dir = tempfile::tempdir()?;
    let key = dir.path().join("salesforce.key");
    std::fs::write(&key, recado::sandbox::keys::PRIVATE_KEY_PEM)?;
    let base = sandbox.base_url();
    let yaml = format!(
        r#"
state: {{ path: "{db}" }}
http: {{ listen: "127.0.0.1:0" }}
providers:
  - {{ id: p, type: meta_cloud, phone_number_id: "1234567890", access_token: sandbox-token, app_secret: sandbox-app-secret,
      verify_token: v, base_url: "{base}/meta", messages_per_second: 1000, pair_interval: 10ms }}
sources:
  - id: citas
    type: salesforce
    login_url: "{base}/salesforce"
    api_version: "62.0"
    object: Cita__c
    fields: [Fecha__c, Estado__c, Contacto__r.FirstName]
    phone_field: Contacto__r.MobilePhone
    default_region: CL
    consent: {{ field: Contacto__r.Consentimiento_WhatsApp__c }}
    poll_interval: 1s
    call_timeout: 120s
    auth: {{ flow: jwt_bearer, consumer_key: "{consumer}", username: "{user}", private_key_file: "{key}" }}
    write_back: {{ status: WhatsApp_Estado__c, status_at: WhatsApp_Fecha__c, error: WhatsApp_Error__c }}
rules:
  - {{ id: confirmacion, source: citas, when: record_added, provider: p,
      template: {{ name: confirmacion_cita, language: es, body: ["{{{{ Contacto__r.FirstName }}}}", "{{{{ Fecha__c | date }}}}"] }} }}
"#,
        db = dir.path().join("load.db").display(),
        key = key.display(),
        consumer = recado::sandbox::salesforce::SANDBOX_CONSUMER_KEY,
        user = recado::sandbox::salesforce::SANDBOX_USERNAME,
    );
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = Instant::now();
    let app = recado::app::start(config).await?;
    let store = app.ctx().store.clone();
    loop {
        let mut c = store.conn().await?;
        if store::source_state(&mut c, "citas").await?.baseline_done {
            break;
        }
        drop(c);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let baseline = started.elapsed();
    let first_sync_queries = queries(&sandbox);
    anyhow::ensure!(sandbox.meta().sent_count() == 0, "the baseline sent messages");

    // A new appointment, created by staff: how long until its confirmation is accepted.
    sandbox.meta().add_user(SimUser { wa_id: "56977777777".into(), name: "Nueva".into(), ..Default::default() });
    let nueva = sf
        .create(
            "Contact",
            fields(json!({"FirstName": "Nueva", "LastName": "Madre", "MobilePhone": "+56977777777", "Consentimiento_WhatsApp__c": true})),
        )
        .map_err(anyhow::Error::msg)?;
    let created = Instant::now();
    sf.create("Cita__c", fields(json!({"Contacto__c": nueva, "Fecha__c": at, "Estado__c": "Agendada"})))
        .map_err(anyhow::Error::msg)?;
    wait_until("the confirmation", Duration::from_secs(60), || sandbox.meta().sent_count() == 1).await?;
    let edit_to_send = created.elapsed();

    // Idle polls.
    let before = queries(&sandbox);
    let rounds_before = app.ctx().health.rounds("source:citas");
    wait_until("five idle polls", Duration::from_secs(60), || {
        app.ctx().health.rounds("source:citas") >= rounds_before + 5
    })
    .await?;
    let idle = queries(&sandbox) - before;
    let idle_polls = app.ctx().health.rounds("source:citas") - rounds_before;

    println!("records: {n} (families: {families})");
    println!(
        "first sync committed after: {:.1} s, {first_sync_queries} query requests (incl. the org's time zone)",
        baseline.as_secs_f64()
    );
    println!("new record → confirmation accepted: {} ms (poll interval 1 s)", edit_to_send.as_millis());
    println!("idle polls: {idle} queries for {idle_polls} polls");
    println!("peak RSS (daemon and emulator together): {:.0} MiB", peak_rss_mib());
    app.stop().await;
    sandbox.stop().await;
    Ok(())
}
