//! `recado demo`: the whole loop on the embedded default, no accounts needed.
//!
//! Starts the sandbox in-process, seeds a Spanish-language registration sheet, runs the real
//! daemon against it over HTTP with SQLite in a temporary directory, plays a programme team
//! (new registrations, graduations) and simulated participants (who read, reply and opt out),
//! narrates what happens, and shows the sheet with the columns recado wrote back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

pub mod municipio;
pub mod salud;

use crate::app;
use crate::config::Config;
use crate::domain::MessageState;
use crate::sandbox::{ContentDef, MetaSettings, Sandbox, SimUser, TemplateDef, TwilioSettings, TwilioUser};
use crate::store;

const SHEET: &str = "demo-empleo-joven";
const TAB: &str = "Inscripciones";
const DEMO_YAML: &str = include_str!("../config/demo.yaml");
const DEMO_TWILIO_PROVIDER: &str = include_str!("../config/demo-twilio-provider.yaml");

/// The story the demo plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoScenario {
    /// An employment programme's registration sheet (Google Sheets).
    Empleo,
    /// A health programme's appointments in Salesforce, logged as Tasks.
    Salud,
    /// A municipality's 24/7 bot (privacy notice, menu, a report) and a survey answered in
    /// the chat.
    Municipio,
}

/// Runs `scenario`.
pub async fn run_scenario(
    scenario: DemoScenario,
    provider: DemoProvider,
    until_settled: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    match scenario {
        DemoScenario::Empleo => run(provider, until_settled, timeout).await,
        DemoScenario::Salud if provider == DemoProvider::Meta => salud::run(until_settled, timeout).await,
        DemoScenario::Salud => Err(anyhow::anyhow!("the salud scenario sends through Meta (leave --provider out)")),
        DemoScenario::Municipio => municipio::run(provider, until_settled, timeout).await,
    }
}

/// The WhatsApp provider the demo sends through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoProvider {
    Meta,
    Twilio,
}

/// Fills the demo configuration's placeholders.
pub fn demo_config_yaml(sandbox_url: &str, key_file: &str, state_path: &str) -> String {
    demo_config_yaml_for(DemoProvider::Meta, sandbox_url, key_file, state_path)
}

/// The demo configuration for `provider`: the Meta one, or the same with its provider entry
/// replaced by the Twilio one (rules switch by `provider:` alone, and the id stays).
pub fn demo_config_yaml_for(provider: DemoProvider, sandbox_url: &str, key_file: &str, state_path: &str) -> String {
    with_provider(DEMO_YAML, provider)
        .replace("${SANDBOX}", sandbox_url)
        .replace("${KEY_FILE}", key_file)
        .replace("${STATE_PATH}", state_path)
}

/// A demo configuration as written (Meta), or with its `providers:` entry replaced by the
/// Twilio one: rules and flows switch by `provider:` alone, and the id stays.
fn with_provider(yaml: &str, provider: DemoProvider) -> String {
    if provider == DemoProvider::Meta {
        return yaml.to_string();
    }
    let start = yaml.find("providers:\n").map(|i| i + "providers:\n".len());
    let end = yaml.find("\nsources:");
    match (start, end) {
        (Some(s), Some(e)) if s <= e => format!("{}{}{}", &yaml[..s], DEMO_TWILIO_PROVIDER, &yaml[e..]),
        _ => yaml.to_string(),
    }
}

struct Person {
    id: &'static str,
    name: &'static str,
    phone: &'static str,
    course: &'static str,
    mentor: &'static str,
    consent: &'static str,
    behaviour: Behaviour,
}

#[derive(Clone, Copy, PartialEq)]
enum Behaviour {
    Reads,
    Ignores,
    Replies(&'static str),
    NotOnWhatsApp,
}

const ALREADY_REGISTERED: &[Person] = &[
    Person {
        id: "1001",
        name: "Camila Rojas",
        phone: "+56 9 8765 4301",
        course: "Soldadura",
        mentor: "Luis Pérez",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1002",
        name: "Diego Muñoz",
        phone: "9 8765 4302",
        course: "Gasfitería",
        mentor: "Ana Cárdenas",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1003",
        name: "Valentina Soto",
        phone: "+56987654303",
        course: "Programación web",
        mentor: "Jorge Salinas",
        consent: "Sí",
        behaviour: Behaviour::Replies("¡Gracias! Ya la respondí"),
    },
    Person {
        id: "1004",
        name: "Matías González",
        phone: "+56 9 8765 4304",
        course: "Electricidad",
        mentor: "Luis Pérez",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1005",
        name: "Francisca Díaz",
        phone: "+56 9 8765 4305",
        course: "Cocina",
        mentor: "Ana Cárdenas",
        consent: "No",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1006",
        name: "Benjamín Vera",
        phone: "+56 9 8765 4306",
        course: "Soldadura",
        mentor: "Jorge Salinas",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
];

const NEW_REGISTRATIONS: &[Person] = &[
    Person {
        id: "1007",
        name: "Josefa Castro",
        phone: "+56 9 8765 4307",
        course: "Programación web",
        mentor: "Jorge Salinas",
        consent: "Sí",
        behaviour: Behaviour::Replies("gracias!"),
    },
    Person {
        id: "1008",
        name: "Tomás Reyes",
        phone: "+56 9 8765 4308",
        course: "Electricidad",
        mentor: "Luis Pérez",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1009",
        name: "Isidora Fuentes",
        phone: "+56 9 8765 4309",
        course: "Cocina",
        mentor: "Ana Cárdenas",
        consent: "sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1010",
        name: "Joaquín Silva",
        phone: "+56 9 8765 4310",
        course: "Gasfitería",
        mentor: "Ana Cárdenas",
        consent: "Sí",
        behaviour: Behaviour::Ignores,
    },
    Person {
        id: "1011",
        name: "Antonia Morales",
        phone: "+56 9 8765 4311",
        course: "Soldadura",
        mentor: "Luis Pérez",
        consent: "",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1012",
        name: "Vicente Herrera",
        phone: "no tiene",
        course: "Electricidad",
        mentor: "Luis Pérez",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1013",
        name: "Martina Torres",
        phone: "+56 9 8765 4313",
        course: "Cocina",
        mentor: "Ana Cárdenas",
        consent: "Sí",
        behaviour: Behaviour::NotOnWhatsApp,
    },
    Person {
        id: "1007",
        name: "Agustín Flores",
        phone: "+56 9 8765 4320",
        course: "Soldadura",
        mentor: "Jorge Salinas",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1014",
        name: "Sofía Araya",
        phone: "+56 9 8765 4314",
        course: "Programación web",
        mentor: "Jorge Salinas",
        consent: "Sí",
        behaviour: Behaviour::Replies("BAJA"),
    },
    Person {
        id: "1015",
        name: "Lucas Contreras",
        phone: "+56 9 8765 4315",
        course: "Electricidad",
        mentor: "Luis Pérez",
        consent: "Sí",
        behaviour: Behaviour::Replies("¿A qué hora es la primera clase?"),
    },
    Person {
        id: "1016",
        name: "Emilia Sepúlveda",
        phone: "+56 9 8765 4316",
        course: "Gasfitería",
        mentor: "Ana Cárdenas",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "",
        name: "Catalina Núñez",
        phone: "+56 9 8765 4317",
        course: "Cocina",
        mentor: "Ana Cárdenas",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
    Person {
        id: "1018",
        name: "Maximiliano Pizarro",
        phone: "+56 9 8765 4318",
        course: "Soldadura",
        mentor: "Luis Pérez",
        consent: "Sí",
        behaviour: Behaviour::Reads,
    },
];

/// Graduates, in order; 1014 opted out before graduating and 1005 never consented.
const GRADUATES: &[&str] = &["1001", "1003", "1005", "1014"];

/// Messages the scenario must end with: 9 confirmations + 2 surveys (1005 never consented and
/// 1014 opted out, so their surveys are blocked before they reach the outbox) + 3 appointment
/// reminders (the fourth appointment has no consent).
const EXPECTED_MESSAGES: usize = 14;
/// Replies the participants send (two thanks/questions and one BAJA) plus Valentina's.
const EXPECTED_REPLIES: i64 = 4;

fn row(p: &Person) -> Vec<Value> {
    let id = if p.id.is_empty() { Value::Null } else { p.id.parse::<f64>().map(|n| json!(n)).unwrap_or(json!(p.id)) };
    vec![id, json!(p.name), json!(p.phone), json!(p.course), json!(p.mentor), json!(p.consent), json!("Activo")]
}

fn digits(phone: &str) -> String {
    let d: String = phone.chars().filter(char::is_ascii_digit).collect();
    if d.len() == 9 {
        format!("56{d}")
    } else {
        d
    }
}

fn simulate(sandbox: &Sandbox, p: &Person) {
    let wa_id = digits(p.phone);
    if wa_id.len() < 8 {
        return;
    }
    let mut u = SimUser { wa_id: wa_id.clone(), name: p.name.to_string(), read_after_ms: 400, ..Default::default() };
    match p.behaviour {
        Behaviour::Reads => {}
        Behaviour::Ignores => u.reads = false,
        Behaviour::Replies(text) => u.reply = Some(text.to_string()),
        Behaviour::NotOnWhatsApp => u.on_whatsapp = false,
    }
    sandbox.twilio().add_user(TwilioUser {
        number: format!("+{wa_id}"),
        name: u.name.clone(),
        on_whatsapp: u.on_whatsapp,
        reads: u.reads,
        read_after_ms: u.read_after_ms,
        reply: u.reply.clone(),
        reply_after_ms: u.reply_after_ms,
        script: u.script.clone(),
    });
    sandbox.meta().add_user(u);
}

/// Runs the demo. With `until_settled`, returns once everything settled (Ok) or the time ran
/// out (Err); otherwise keeps running until Ctrl-C.
pub async fn run(provider: DemoProvider, until_settled: bool, timeout: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let settings = MetaSettings { status_delay_ms: 150, ..Default::default() };
    let twilio = TwilioSettings { status_delay_ms: 150, ..Default::default() };
    let sandbox = Sandbox::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), settings, twilio).await?;
    let vendor = match provider {
        DemoProvider::Meta => "Meta",
        DemoProvider::Twilio => "Twilio",
    };
    println!("▶ Sandbox de Google y {vendor} en {}", sandbox.base_url());

    let key_file = dir.path().join("service-account.json");
    std::fs::write(&key_file, sandbox.service_account_key("recado-demo@recado-sandbox.iam.gserviceaccount.com"))?;
    // As the programme team does once: share the sheet with recado's service account.
    sandbox.google().share(SHEET, "recado-demo@recado-sandbox.iam.gserviceaccount.com");
    for (name, params, button) in
        [("confirmacion_inscripcion", 3, false), ("encuesta_seguimiento", 1, true), ("recordatorio_cita", 3, false)]
    {
        sandbox.meta().add_template(TemplateDef::new(name, "es", params, button));
        sandbox.twilio().add_content(ContentDef::new(name, "es", params, button));
    }
    let header = ["ID", "Nombre", "Teléfono", "Curso", "Mentor", "Consentimiento", "Estado"].map(|h| json!(h)).to_vec();
    let mut rows = vec![header];
    rows.extend(ALREADY_REGISTERED.iter().map(row));
    // Typed as a person types into a Chilean sheet: dates become date cells, numbers numbers.
    sandbox.google().seed_typed(
        SHEET,
        "America/Santiago",
        "es_CL",
        vec![(TAB.to_string(), rows), ("Citas".to_string(), appointments())],
    );
    for p in ALREADY_REGISTERED.iter().chain(NEW_REGISTRATIONS) {
        simulate(&sandbox, p);
    }
    println!(
        "▶ Planilla \"{TAB}\" con {} inscripciones previas (línea base: no se les escribe)",
        ALREADY_REGISTERED.len()
    );

    let state_path = dir.path().join("recado.db");
    let yaml = demo_config_yaml_for(
        provider,
        &sandbox.base_url(),
        &key_file.display().to_string(),
        &state_path.display().to_string(),
    );
    let running = start_daemon(&sandbox, &yaml, &state_path).await?;

    let started = Instant::now();
    let mut narrator = Narrator::default();
    // Let the baseline happen before anyone registers.
    wait_until(Duration::from_secs(10), || async {
        sandbox.google().count(crate::sandbox::google::Kind::ValuesGet) > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    for p in NEW_REGISTRATIONS {
        let what = match (p.id.is_empty(), p.consent.is_empty(), p.phone.starts_with('+')) {
            (true, _, _) => " (¡sin ID!)",
            (_, true, _) => " (sin consentimiento)",
            (_, _, false) => " (teléfono inválido)",
            _ => "",
        };
        println!("📝 Nueva inscripción: {} {}{what}", if p.id.is_empty() { "—" } else { p.id }, p.name);
        sandbox.google().insert_row(SHEET, TAB, None, row(p));
        tokio::time::sleep(Duration::from_millis(250)).await;
        narrator.tell(&running).await;
    }

    // Sofía writes BAJA to her confirmation; graduate people once that happened.
    let opted_out = wait_until(Duration::from_secs(20), || async {
        match running.ctx().store.conn().await {
            Ok(mut c) => {
                store::contact(&mut c, "+56987654314").await.ok().flatten().is_some_and(|c| c.opted_out_at.is_some())
            }
            Err(_) => false,
        }
    })
    .await;
    narrator.tell(&running).await;
    if !opted_out {
        println!("⚠ Sofía no alcanzó a darse de baja a tiempo");
    }
    for id in GRADUATES {
        println!("🎓 La coordinadora marca a {id} como Egresado");
        sandbox.google().edit_by_key(SHEET, TAB, "ID", id, "Estado", json!("Egresado"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        narrator.tell(&running).await;
    }
    // Valentina (1003) replied to her survey in the simulation; make sure the reply arrives.

    let settled =
        settle(&running, &mut narrator, (EXPECTED_MESSAGES, EXPECTED_REPLIES), started + timeout, timeout).await;

    print_sheet(&sandbox);
    print_appointments(&sandbox);
    print_summary(&running).await?;
    // What the rules will send in the coming months (the quarterly follow-up included).
    let config = Config::from_yaml(&yaml).map_err(|e| anyhow::anyhow!("{e}"))?;
    match crate::plan::plan(&config, 200, Some("seguimiento_trimestral"), chrono::Utc::now()).await {
        Ok(lines) => {
            println!("\n`recado plan --days 200 --rule seguimiento_trimestral` diría:");
            print!("{}", crate::plan::render(&lines, crate::plan::Format::Table));
        }
        Err(e) => println!("⚠ plan: {e:#}"),
    }
    let result = if settled {
        println!("✔ Todo mensaje esperado llegó a su estado final y todo quedó escrito en la planilla.");
        Ok(())
    } else {
        Err(anyhow::anyhow!("the demo did not settle within {}s", timeout.as_secs()))
    };
    finish(running, sandbox, until_settled, result).await
}

/// Narrates until the scenario settled (`expected`: messages and replies) or `deadline`.
async fn settle(
    running: &app::RunningApp,
    narrator: &mut Narrator,
    expected: (usize, i64),
    deadline: Instant,
    timeout: Duration,
) -> bool {
    loop {
        narrator.tell(running).await;
        match settledness(running, expected.0, expected.1).await {
            Ok(None) => return true,
            Ok(Some(reason)) if Instant::now() > deadline => {
                println!("✗ No se completó en {}s: {reason}", timeout.as_secs());
                return false;
            }
            Ok(Some(_)) => {}
            Err(e) => println!("⚠ {e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// `None` when settled, else what is still missing.
async fn settledness(
    running: &app::RunningApp,
    expected_messages: usize,
    expected_replies: i64,
) -> anyhow::Result<Option<String>> {
    let mut c = running.ctx().store.conn().await?;
    let messages = store::all_messages(&mut c).await?;
    if messages.len() < expected_messages {
        return Ok(Some(format!("{} of {expected_messages} messages queued", messages.len())));
    }
    let open: Vec<_> = messages
        .iter()
        .filter(|m| matches!(m.state, MessageState::Queued | MessageState::Sending | MessageState::Sent))
        .collect();
    if !open.is_empty() {
        return Ok(Some(format!("{} message(s) still on their way", open.len())));
    }
    let replies = store::inbound_count(&mut c).await?;
    if replies < expected_replies {
        return Ok(Some(format!("{replies} of {expected_replies} replies received")));
    }
    let inbox = store::pending_webhook_count(&mut c).await?;
    let writes = store::pending_write_count(&mut c).await?;
    if inbox > 0 || writes > 0 {
        return Ok(Some(format!("{inbox} webhook(s) and {writes} value(s) of write-back pending")));
    }
    Ok(None)
}

/// Prints each message's state changes once.
#[derive(Default)]
struct Narrator {
    seen: HashMap<i64, MessageState>,
}

impl Narrator {
    async fn tell(&mut self, running: &app::RunningApp) {
        let Ok(mut c) = running.ctx().store.conn().await else { return };
        let Ok(messages) = store::all_messages(&mut c).await else { return };
        for m in messages {
            if self.seen.get(&m.id) == Some(&m.state) {
                continue;
            }
            self.seen.insert(m.id, m.state);
            let icon = match m.state {
                MessageState::Queued => "⏳",
                MessageState::Sending => continue,
                MessageState::Sent => "📤",
                MessageState::Delivered => "📬",
                MessageState::Read => "👀",
                MessageState::Failed => "✗",
                MessageState::Skipped => "⊘",
            };
            let extra = m
                .error
                .as_deref()
                .filter(|_| matches!(m.state, MessageState::Failed | MessageState::Skipped))
                .map(|e| format!(" — {e}"))
                .unwrap_or_default();
            println!(
                "   {icon} {:<9} {} → {} ({}){extra}",
                m.state.as_str(),
                m.rule_id,
                m.record_key,
                m.phone.masked()
            );
        }
    }
}

fn cell_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.as_f64().map(crate::domain::record::format_number).unwrap_or_default(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Appointments one day and a few seconds away: their day-before reminders fire during the demo.
fn appointments() -> Vec<Vec<Value>> {
    let tz: chrono_tz::Tz = "America/Santiago".parse().unwrap_or(chrono_tz::UTC);
    let at = |secs: i64| {
        (chrono::Utc::now() + chrono::Duration::days(1) + chrono::Duration::seconds(secs))
            .with_timezone(&tz)
            .format("%d/%m/%Y %H:%M:%S")
            .to_string()
    };
    let mut rows =
        vec![["ID", "Nombre", "Teléfono", "Consentimiento", "Fecha cita", "Lugar"].map(|h| json!(h)).to_vec()];
    for (id, name, phone, consent, secs, place) in [
        ("C-1", "Camila Rojas", "+56 9 8765 4301", "Sí", 6, "Oficina Maipú"),
        ("C-2", "Tomás Reyes", "+56 9 8765 4308", "Sí", 8, "Oficina Centro"),
        ("C-3", "Lucas Contreras", "+56 9 8765 4315", "Sí", 10, "Oficina Maipú"),
        ("C-4", "Francisca Díaz", "+56 9 8765 4305", "No", 10, "Oficina Centro"),
    ] {
        rows.push(vec![json!(id), json!(name), json!(phone), json!(consent), json!(at(secs)), json!(place)]);
    }
    rows
}

fn print_appointments(sandbox: &Sandbox) {
    // As the sheet shows them (dates formatted), not as serial numbers.
    let rows: Vec<Vec<Value>> = sandbox
        .google()
        .read(SHEET, "Citas", "FORMATTED_VALUE", "SERIAL_NUMBER")
        .ok()
        .and_then(|v| v.get("values").cloned())
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    let Some(header) = rows.first() else { return };
    let col = |name: &str| header.iter().position(|h| cell_text(h) == name);
    let cols = [col("ID"), col("Nombre"), col("Fecha cita"), col("Estado WhatsApp"), col("Error WhatsApp")];
    println!("\nLa pestaña \"Citas\":");
    for r in rows.iter().skip(1) {
        let cells: Vec<String> = cols
            .iter()
            .zip([5, 18, 19, 15, 30])
            .map(|(c, n)| fit(&c.and_then(|c| r.get(c)).map(cell_text).unwrap_or_default(), n))
            .collect();
        println!("  {}", cells.join(" │ "));
    }
}

fn print_sheet(sandbox: &Sandbox) {
    let wanted = ["ID", "Nombre", "Consentimiento", "Estado", "Estado WhatsApp", "Error WhatsApp", "Última respuesta"];
    print_columns(
        &sandbox.google().rows(SHEET, TAB),
        &format!("La planilla \"{TAB}\" después de recado:"),
        &wanted,
        &[5, 20, 14, 9, 15, 44, 26],
    );
}

/// Prints the `wanted` columns of a sheet's rows (header first) under `title`, each cut to its width.
fn print_columns(rows: &[Vec<Value>], title: &str, wanted: &[&str], widths: &[usize]) {
    let Some(header) = rows.first() else { return };
    let cols: Vec<Option<usize>> = wanted.iter().map(|w| header.iter().position(|h| cell_text(h) == *w)).collect();
    println!("\n{title}");
    let line: Vec<String> = wanted.iter().zip(widths).map(|(w, n)| fit(w, *n)).collect();
    println!("  {}", line.join(" │ "));
    println!("  {}", widths.iter().map(|n| "─".repeat(*n)).collect::<Vec<_>>().join("─┼─"));
    for r in rows.iter().skip(1) {
        let line: Vec<String> = cols
            .iter()
            .zip(widths)
            .map(|(c, n)| fit(&c.and_then(|c| r.get(c)).map(cell_text).unwrap_or_default(), *n))
            .collect();
        println!("  {}", line.join(" │ "));
    }
}

/// Starts the daemon on a demo configuration (placeholders filled) and points both WhatsApp
/// emulators' webhooks at it.
async fn start_daemon(sandbox: &Sandbox, yaml: &str, state_path: &std::path::Path) -> anyhow::Result<app::RunningApp> {
    let config = Config::from_yaml(yaml).map_err(|e| anyhow::anyhow!("the demo configuration is invalid:\n{e}"))?;
    let running = app::start(config).await?;
    let webhook_url = format!("http://{}/webhooks/whatsapp", running.webhook_addr());
    sandbox.meta().update_settings(|s| s.webhook_url = Some(webhook_url.clone()));
    sandbox.twilio().update_settings(|s| s.inbound_url = Some(webhook_url.clone()));
    println!("▶ recado escucha webhooks en {webhook_url}; estado en {}", state_path.display());
    Ok(running)
}

/// A scenario's configuration with its placeholders filled.
fn fill(template: &str, sandbox: &Sandbox, key_file: &std::path::Path, state_path: &std::path::Path) -> String {
    template
        .replace("${SANDBOX}", &sandbox.base_url())
        .replace("${KEY_FILE}", &key_file.display().to_string())
        .replace("${STATE_PATH}", &state_path.display().to_string())
}

/// Ends a scenario: with `until_settled` (or a failure) at once, else when Ctrl-C is pressed,
/// so the sandbox's admin pages can be looked at.
async fn finish(
    running: app::RunningApp,
    sandbox: Sandbox,
    until_settled: bool,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    if !until_settled && result.is_ok() {
        println!("\nSandbox: {}/admin  ·  Ctrl-C para salir", sandbox.base_url());
        let _ = tokio::signal::ctrl_c().await;
    }
    running.stop().await;
    sandbox.stop().await;
    result
}

fn fit(s: &str, n: usize) -> String {
    let count = s.chars().count();
    if count > n {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    } else {
        format!("{s}{}", " ".repeat(n - count))
    }
}

async fn print_summary(running: &app::RunningApp) -> anyhow::Result<()> {
    let mut c = running.ctx().store.conn().await?;
    let counts = store::counts_by_state(&mut c).await?;
    let replies = store::inbound_count(&mut c).await?;
    println!("\nResumen:");
    println!("  {:<10} {:>5}", "estado", "n");
    for (state, n) in &counts {
        println!("  {state:<10} {n:>5}");
    }
    println!("  {:<10} {:>5}", "respuestas", replies);
    // What a Prometheus server would scrape now: each rule's funnel.
    let url = format!("http://{}/metrics", running.webhook_addr());
    let text = reqwest::Client::new()
        .get(&url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .context("scraping /metrics")?
        .text()
        .await
        .context("reading /metrics")?;
    let mut funnel: Vec<&str> =
        text.lines().filter(|l| l.starts_with("recado_messages{") && !l.ends_with(" 0")).collect();
    funnel.sort_unstable();
    anyhow::ensure!(!funnel.is_empty(), "/metrics shows no funnel");
    println!("\n/metrics (GET {url}), el embudo por regla:");
    for line in funnel {
        println!("  {line}");
    }
    Ok(())
}
