//! End-to-end conversations under load: N people, each with a row in a Google Sheets tab, talk
//! to the bot at once through the Meta emulator, each answering a three-question survey (the
//! entry flow) as soon as the bot's question arrives, for R rounds. The real daemon verifies and
//! stores each webhook, finds the person's row by phone, runs the flow, queues the answer and
//! sends it, and writes each answer to its column of the row. Reports the latency from a
//! person's message to the bot's answer being accepted by the emulator (p50, p99, max), whether
//! every conversation finished, and when the last answers reached the sheet.
//!
//! `cargo run --release --example conversation_load -- --people 50 --rounds 6`
//! `cargo run --release --example conversation_load -- --people 1000 --rounds 3`
//! `cargo run --release --example conversation_load -- --people 1000 --rounds 2 --think-ms 4000`
//! (figures in BENCHMARKS.md; daemon and emulator share this process).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recado::config::Config;
use recado::sandbox::{MetaSettings, Sandbox, SimUser};
use serde_json::{json, Value};

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
    let settings =
        MetaSettings { messages_per_second: 10_000.0, status_delay_ms: 50, pair_burst: 1_000, ..Default::default() };
    let sandbox = Sandbox::start(SocketAddr::from(([127, 0, 0, 1], 0)), settings).await?;
    let wa_ids: Vec<String> = (0..people).map(|i| format!("569{:08}", 10_000_000 + i)).collect();
    for w in &wa_ids {
        sandbox.meta().add_user(SimUser { wa_id: w.clone(), reads: false, ..Default::default() });
    }
    let mut rows = vec![["ID", "Teléfono", "Satisfaccion", "Trabaja", "Comentario"].map(|h| json!(h)).to_vec()];
    rows.extend(wa_ids.iter().enumerate().map(|(i, w)| vec![json!(format!("P-{i}")), json!(format!("+{w}"))]));
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
  - {{ id: p, type: meta_cloud, phone_number_id: "1234567890", access_token: sandbox-token, app_secret: sandbox-app-secret,
      verify_token: v, base_url: "{base}/meta", messages_per_second: 1000, pair_interval: 10ms }}
sources:
  - {{ id: egresados, type: google_sheets, spreadsheet_id: carga, tab: Egresados, key_column: ID,
      phone_column: Teléfono, default_region: CL, poll_interval: 5s, flush_interval: 1s,
      service_account_key_file: "{key}", sheets_base_url: "{base}/google/sheets/", drive_base_url: "{base}/google/",
      write_back: {{ status: Estado WhatsApp }} }}
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
    );
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    let app = recado::app::start(config).await?;
    let url = format!("http://{}/webhooks/p", app.webhook_addr());
    sandbox.meta().update_settings(|s| s.webhook_url = Some(url.clone()));
    // The rows must be read (and their phones indexed) before people write.
    let ready = Instant::now() + Duration::from_secs(60);
    while app.ctx().health.rounds("source:egresados") == 0 {
        anyhow::ensure!(Instant::now() < ready, "the sheet was not read within a minute");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let meta = sandbox.meta();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in wa_ids.clone() {
        let meta = Arc::clone(meta);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut expected = 0;
            for round in 0..rounds {
                // "hola" opens the survey; then each answer brings the next question (the
                // last one, the thanks). The comment names its round, so the sheet tells
                // whether the last round's answers arrived.
                let comment = format!("{} (ronda {})", ANSWERS[2], round + 1);
                for text in ["hola", ANSWERS[0], ANSWERS[1], comment.as_str()] {
                    expected += 1;
                    // People start at different moments and take their time.
                    if !think.is_zero() {
                        let jitter = rand::random::<u64>() % (think.as_millis() as u64 + 1);
                        tokio::time::sleep(Duration::from_millis(jitter) + think / 2).await;
                    }
                    let t0 = chrono::Utc::now().timestamp_millis();
                    meta.user_says(&w, text, None);
                    let deadline = Instant::now() + Duration::from_secs(120);
                    let at = loop {
                        let (n, at) = meta.sent_count_to(&w);
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
        r.get(2).and_then(Value::as_str) == Some("4")
            && r.get(3).and_then(Value::as_str) == Some("Sí")
            && r.get(4).and_then(Value::as_str) == Some(last_comment.as_str())
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
        "people: {people}, rounds: {rounds} (each: hola + 3 answers → 4 bot messages), think time {} ms",
        think.as_millis()
    );
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
    sandbox.stop().await;
    Ok(())
}
