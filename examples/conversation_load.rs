//! End-to-end conversations under load: N people, each with a row in a Google Sheets tab, talk
//! to the bot at once through the Meta (or Twilio) emulator, each answering a three-question
//! survey as soon as the bot's question arrives, for R rounds. The survey is the entry flow
//! ("hola" opens it), or (`--opening template`) a rule's approved template opens it when the
//! row's `Estado` becomes `Egresado`, and the first answer answers the template (one round).
//! The real daemon verifies and stores each webhook, finds the person's row by phone, runs the
//! flow, queues the answer and sends it, and writes each answer to its column of the row.
//! Reports the latency from a person's message to the bot's answer being accepted by the
//! emulator (p50, p99, max), whether every conversation finished, and when the last answers
//! reached the sheet.
//!
//! `cargo run --release --example conversation_load -- --people 50 --rounds 6`
//! `cargo run --release --example conversation_load -- --people 1000 --rounds 3`
//! `cargo run --release --example conversation_load -- --people 1000 --rounds 2 --think-ms 4000`
//! `cargo run --release --example conversation_load -- --people 1000 --rounds 2 --think-ms 4000 --provider twilio`
//! `cargo run --release --example conversation_load -- --people 1000 --think-ms 4000 --opening template`
//! (figures in BENCHMARKS.md; daemon and emulator share this process).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recado::config::Config;
use recado::sandbox::{ContentDef, MetaSettings, Sandbox, SimUser, TemplateDef, TwilioSettings, TwilioUser};
use serde_json::{json, Value};

fn text_arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

const ANSWERS: [&str; 3] = ["4", "Sí", "Me sirvió mucho"];

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let people = arg("--people", 50) as usize;
    let rounds = arg("--rounds", 3) as usize;
    // How long a person takes to answer once the bot's question arrives (0: at once).
    let think = Duration::from_millis(arg("--think-ms", 0));
    let twilio = match text_arg("--provider", "meta").as_str() {
        "meta" => false,
        "twilio" => true,
        other => anyhow::bail!("--provider is meta or twilio, not {other}"),
    };
    let by_template = match text_arg("--opening", "hola").as_str() {
        "hola" => false,
        "template" => true,
        other => anyhow::bail!("--opening is hola or template, not {other}"),
    };
    // A template opens one survey per person.
    let rounds = if by_template { 1 } else { rounds };
    let settings =
        MetaSettings { messages_per_second: 10_000.0, status_delay_ms: 50, pair_burst: 1_000, ..Default::default() };
    let twilio_settings = TwilioSettings { messages_per_second: 10_000.0, status_delay_ms: 50, ..Default::default() };
    let sandbox = Sandbox::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), settings, twilio_settings).await?;
    let wa_ids: Vec<String> = (0..people).map(|i| format!("569{:08}", 10_000_000 + i)).collect();
    for w in &wa_ids {
        sandbox.meta().add_user(SimUser { wa_id: w.clone(), reads: false, ..Default::default() });
        sandbox.twilio().add_user(TwilioUser { number: format!("+{w}"), reads: false, ..Default::default() });
    }
    sandbox.meta().add_template(TemplateDef::new("encuesta", "es", 1, false));
    let content_sid = sandbox.twilio().add_content(ContentDef::new("encuesta", "es", 1, false));
    let mut rows =
        vec![["ID", "Teléfono", "Estado", "Satisfaccion", "Trabaja", "Comentario"].map(|h| json!(h)).to_vec()];
    rows.extend(
        wa_ids.iter().enumerate().map(|(i, w)| vec![json!(format!("P-{i}")), json!(format!("+{w}")), json!("Activo")]),
    );
    sandbox.google().seed("carga", "America/Santiago", vec![("Egresados".to_string(), rows)]);
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("sa.json");
    std::fs::write(&key, sandbox.service_account_key("load@sandbox.iam.gserviceaccount.com"))?;
    sandbox.google().share("carga", "load@sandbox.iam.gserviceaccount.com");
    let base = sandbox.base_url();
    let yaml = format!(
        r#"
state: {{ path: "{db}" }}
http: {{ listen: "127.0.0.1:0" }}
providers:
{provider}
sources:
  - {{ id: egresados, type: google_sheets, spreadsheet_id: carga, tab: Egresados, key_column: ID,
      phone_column: Teléfono, default_region: CL, poll_interval: 5s, flush_interval: 1s,
      service_account_key_file: "{key}", sheets_base_url: "{base}/google/sheets/", drive_base_url: "{base}/google/",
      write_back: {{ status: Estado WhatsApp }} }}
rules:
  - id: egreso
    source: egresados
    when: {{ changed: Estado, to: Egresado }}
    provider: p
    template: {{ name: encuesta, language: es, body: ["{{{{ ID }}}}"] }}
    on_reply: encuesta
inbound:
  opt_out_reply: "Listo, no te escribiremos más."
  entry_flow: encuesta
flows:
  - id: encuesta
    steps:
      - id: satisfaccion
        ask: {{ text: "Del 1 al 5, ¿cuánto te sirvió el curso?", type: number, min: 1, max: 5, integer: true, save: Satisfaccion }}
      - id: trabaja
        ask: {{ text: "¿Estás trabajando?", type: yes_no, yes: {{ title: "Sí" }}, no: {{ title: "No" }}, save: Trabaja }}
      - id: comentario
        ask: {{ text: "¿Algo más?", save: Comentario }}
      - id: gracias
        say: "¡Gracias!"
"#,
        db = dir.path().join("load.db").display(),
        key = key.display(),
        provider = if twilio {
            let t = sandbox.twilio().settings();
            format!(
                "  - {{ id: p, type: twilio, account_sid: {}, auth_token: {}, from: \"{}\", base_url: \"{base}/twilio\",\n      messages_per_second: 1000, pair_interval: 10ms, content_templates: [{{ name: encuesta, language: es, content_sid: {content_sid} }}] }}",
                t.account_sid, t.auth_token, t.sender
            )
        } else {
            format!(
                "  - {{ id: p, type: meta_cloud, phone_number_id: \"1234567890\", access_token: sandbox-token, app_secret: sandbox-app-secret,\n      verify_token: v, base_url: \"{base}/meta\", messages_per_second: 1000, pair_interval: 10ms }}"
            )
        },
    );
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = recado::app::start(config).await?;
    let url = format!("http://{}/webhooks/p", app.webhook_addr());
    sandbox.meta().update_settings(|s| s.webhook_url = Some(url.clone()));
    sandbox.twilio().update_settings(|s| s.inbound_url = Some(url.clone()));
    // The rows must be read (and their phones indexed) before people write.
    let ready = Instant::now() + Duration::from_secs(60);
    while app.ctx().health.rounds("source:egresados") == 0 {
        anyhow::ensure!(Instant::now() < ready, "the sheet was not read within a minute");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let sandbox = Arc::new(sandbox);
    // With a template opening, every row becomes `Egresado` at once (staff mark the cohort),
    // and the rule sends each person the survey's template.
    let started = Instant::now();
    let mut templates_out = None;
    if by_template {
        for i in 0..people {
            sandbox.google().edit_by_key("carga", "Egresados", "ID", &format!("P-{i}"), "Estado", json!("Egresado"));
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        while !wa_ids.iter().all(|w| sent_count(&sandbox, twilio, w).0 >= 1) {
            anyhow::ensure!(Instant::now() < deadline, "the templates were not all sent within 5 minutes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        templates_out = Some(started.elapsed());
    }
    // The answers: from here.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in wa_ids.clone() {
        let sandbox = Arc::clone(&sandbox);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut expected = usize::from(by_template);
            for round in 0..rounds {
                // "hola" opens the survey (or the template did); then each answer brings the
                // next question (the last one, the thanks). The comment names its round, so
                // the sheet tells whether the last round's answers arrived.
                let comment = format!("{} (ronda {})", ANSWERS[2], round + 1);
                let opening = if by_template { None } else { Some("hola") };
                for text in opening.into_iter().chain([ANSWERS[0], ANSWERS[1], comment.as_str()]) {
                    expected += 1;
                    // People start at different moments and take their time.
                    if !think.is_zero() {
                        let jitter = rand::random::<u64>() % (think.as_millis() as u64 + 1);
                        tokio::time::sleep(Duration::from_millis(jitter) + think / 2).await;
                    }
                    let t0 = chrono::Utc::now().timestamp_millis();
                    if twilio {
                        sandbox.twilio().user_says(&format!("+{w}"), text, None);
                    } else {
                        sandbox.meta().user_says(&w, text, None);
                    }
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let at = loop {
                        let (n, at) = sent_count(&sandbox, twilio, &w);
                        if n >= expected {
                            break at;
                        }
                        if Instant::now() > deadline {
                            return (latencies, false);
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    };
                    latencies.push(at - t0);
                }
            }
            (latencies, true)
        }));
    }
    let mut all = Vec::new();
    let mut finished = 0;
    for t in tasks {
        let (l, ok) = t.await?;
        all.extend(l);
        finished += usize::from(ok);
    }
    let elapsed = started.elapsed();
    // Every answer of the last round in its row: how long after the last message it took.
    let last_comment = format!("{} (ronda {rounds})", ANSWERS[2]);
    let landed = |r: &Vec<Value>| {
        r.get(3).and_then(Value::as_str) == Some("4")
            && r.get(4).and_then(Value::as_str) == Some("Sí")
            && r.get(5).and_then(Value::as_str) == Some(last_comment.as_str())
    };
    let wait_from = Instant::now();
    let mut in_sheet = 0;
    while wait_from.elapsed() < Duration::from_secs(60) {
        in_sheet = sandbox.google().rows("carga", "Egresados").iter().skip(1).filter(|r| landed(r)).count();
        if in_sheet == people {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sheet_lag = wait_from.elapsed();
    all.sort_unstable();
    println!(
        "provider: {}, opening: {}, people: {people}, rounds: {rounds} (each: {}), think time {} ms",
        if twilio { "twilio" } else { "meta" },
        if by_template { "a rule's template" } else { "hola" },
        if by_template { "3 answers → 3 bot messages" } else { "hola + 3 answers → 4 bot messages" },
        think.as_millis()
    );
    if let Some(t) = templates_out {
        println!(
            "rows marked Egresado → all {people} templates accepted: {:.1} s (the source polls every 5 s)",
            t.as_secs_f64()
        );
    }
    println!("conversations finished: {finished} of {people}, in {:.1} s", elapsed.as_secs_f64());
    println!(
        "message → bot answer accepted: p50 {} ms, p99 {} ms, max {} ms ({} answers, {:.0} answers/s)",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(0),
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "answers in their rows: {in_sheet} of {people}, all there {:.1} s after the last bot answer (flush interval 1 s)",
        sheet_lag.as_secs_f64()
    );
    app.stop().await;
    if let Ok(sandbox) = Arc::try_unwrap(sandbox) {
        sandbox.stop().await;
    }
    Ok(())
}

/// Messages the emulator accepted for person `w` (digits), and when the last one was (ms).
fn sent_count(sandbox: &Sandbox, twilio: bool, w: &str) -> (usize, i64) {
    if twilio {
        sandbox.twilio().sent_count_to(&format!("+{w}"))
    } else {
        sandbox.meta().sent_count_to(w)
    }
}
