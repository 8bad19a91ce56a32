//! `recado demo --scenario municipio`: the conversations story. Residents write first to the
//! municipality's WhatsApp number: the privacy notice, the menu, a problem reported in the
//! chat, someone who refuses, someone who opts out, someone who asks for a person: the demo
//! plays the staff member who answers her from the `Bandeja` tab, asks for a photo and closes
//! the case. Then an employment programme's graduate
//! gets the follow-up survey as a template and answers it inside WhatsApp, each answer landing
//! in its column of her row. The people are scripted users of the WhatsApp emulator: they
//! write, wait for the bot's answer and tap its buttons (on Twilio, which shows no buttons to
//! a bot, they answer the numbered options by number).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};

use super::{cell_text, fit, wait_until, DemoProvider, Narrator};
use crate::sandbox::meta::{interactive_options, shown_text};
use crate::sandbox::{ContentDef, MetaSettings, Sandbox, ScriptLine, SimUser, TemplateDef, TwilioSettings, TwilioUser};

const YAML: &str = include_str!("../../config/demo-municipio.yaml");
const SHEET: &str = "demo-municipio";
const TAB: &str = "Participantes";
/// The tab where reports made in the chat are added, one row each.
const REPORTS: &str = "Incidencias";
/// The hand-off inbox: one row per resident handed to staff.
const INBOX: &str = "Bandeja";
/// The resident who asks for a person.
const SOFIA: &str = "56987654404";

fn say(text: &str) -> ScriptLine {
    ScriptLine { say: Some(text.into()), delay_ms: 300, ..Default::default() }
}

fn tap(title: &str) -> ScriptLine {
    ScriptLine { tap: Some(title.into()), delay_ms: 300, ..Default::default() }
}

fn photo(caption: &str) -> ScriptLine {
    ScriptLine { photo: Some(caption.into()), delay_ms: 300, ..Default::default() }
}

fn after(line: ScriptLine, text: &str) -> ScriptLine {
    ScriptLine { after: Some(text.into()), ..line }
}

/// A scripted person: name, WhatsApp id, what they do.
struct Resident {
    name: &'static str,
    wa_id: &'static str,
    script: Vec<ScriptLine>,
}

fn residents() -> Vec<Resident> {
    vec![
        Resident {
            name: "Rosa (vecina)",
            wa_id: "56987654401",
            script: vec![
                say("hola"),
                after(tap("Acepto"), "guardamos tu número"),
                after(tap("Horarios"), "¿En qué te podemos ayudar?"),
                after(say("buenas, otra consulta"), "Atendemos"),
                after(tap("Reportar un problema"), "¿En qué te podemos ayudar?"),
                after(say("Un bache grande frente al consultorio"), "¿Qué problema"),
                after(say("Calle Los Aromos 345, esquina Pasaje 2"), "¿Dónde está?"),
            ],
        },
        Resident {
            name: "Pedro (vecino)",
            wa_id: "56987654402",
            script: vec![
                say("Hola, buenas tardes"),
                after(tap("No acepto"), "guardamos tu número"),
                after(say("ok"), "Entendido"),
            ],
        },
        Resident {
            name: "Luis (vecino)",
            wa_id: "56987654403",
            script: vec![
                say("hola"),
                after(tap("Acepto"), "guardamos tu número"),
                after(say("no quiero que me den de baja, solo consultar"), "¿En qué te podemos ayudar?"),
                after(say("baja por favor"), "No entendí"),
            ],
        },
        Resident {
            name: "Sofía (vecina)",
            wa_id: SOFIA,
            script: vec![
                say("hola"),
                after(tap("Acepto"), "guardamos tu número"),
                after(say("persona por favor"), "¿En qué te podemos ayudar?"),
                after(say("Hay un microbasural en la plaza Los Copihues hace una semana"), "Te comunicamos"),
                after(photo("Así está hoy"), "una foto"),
            ],
        },
    ]
}

/// The hand-off row of a resident in the inbox, by phone: its cells by header.
fn inbox_row(sandbox: &Sandbox, wa_id: &str) -> Option<std::collections::HashMap<String, String>> {
    let rows = sandbox.google().rows(SHEET, INBOX);
    let header: Vec<String> = rows.first()?.iter().map(cell_text).collect();
    let phone = format!("+{wa_id}");
    rows.iter()
        .skip(1)
        .map(|r| header.iter().cloned().zip(r.iter().map(cell_text)).collect())
        .find(|cells: &std::collections::HashMap<String, String>| cells.get("Teléfono").is_some_and(|p| *p == phone))
}

/// The staff member: waits for Sofía's row in `Bandeja`, answers her, asks for a photo, and
/// closes the case once it arrives. Returns whether the hand-off ended closed.
async fn play_staff(sandbox: &Sandbox, timeout: Duration) -> bool {
    let transcript_has = |text: &'static str| {
        move || async move {
            inbox_row(sandbox, SOFIA).is_some_and(|r| r.get("Conversación").is_some_and(|t| t.contains(text)))
        }
    };
    if !wait_until(timeout, transcript_has("microbasural")).await {
        return false;
    }
    let Some(key) = inbox_row(sandbox, SOFIA).and_then(|r| r.get("ID").cloned()) else { return false };
    println!("👩‍💼 Marta (Aseo) toma el caso de Sofía en la pestaña «{INBOX}» y le escribe en «Respuesta»");
    let edit = |column: &str, value: Value| sandbox.google().edit_by_key(SHEET, INBOX, "ID", &key, column, value);
    edit("Asignada a", json!("Marta (Aseo)"));
    edit("Respuesta", json!("Hola Sofía, soy Marta del equipo de Aseo. ¿Nos puedes mandar una foto del lugar?"));
    if !wait_until(timeout, transcript_has("[image]")).await {
        return false;
    }
    println!("👩‍💼 Llega la foto: Marta responde y marca «Cerrar»");
    edit("Respuesta", json!("Gracias, Sofía. Mañana pasa el camión a retirarlo."));
    edit("Cerrar", json!(true));
    wait_until(timeout, || async {
        inbox_row(sandbox, SOFIA).is_some_and(|r| r.get("Estado").is_some_and(|s| s == "closed"))
    })
    .await
}

fn graduate() -> Resident {
    Resident {
        name: "Camila (egresada)",
        wa_id: "56987654301",
        script: vec![
            after(say("4"), "encuesta_egreso"),
            after(tap("Sí"), "¿Estás trabajando?"),
            after(say("Me sirvió para encontrar trabajo en una constructora"), "¿Algo que quieras contarnos"),
        ],
    }
}

fn sheet() -> Vec<Vec<Value>> {
    let header =
        ["ID", "Nombre", "Teléfono", "Consentimiento", "Estado", "Encuesta", "Satisfacción", "Trabaja", "Comentario"];
    let mut rows = vec![header.iter().map(|h| json!(h)).collect::<Vec<_>>()];
    for (id, name, phone) in [("P-1", "Camila Rojas", "+56 9 8765 4301"), ("P-2", "Tomás Reyes", "+56 9 8765 4308")] {
        let mut r = vec![json!(id), json!(name), json!(phone), json!("Sí"), json!("Activo")];
        r.extend(std::iter::repeat_n(json!(""), 4));
        rows.push(r);
    }
    rows
}

/// Runs the scenario through `provider`. See [`super::run`] for `until_settled` and `timeout`.
pub async fn run(provider: DemoProvider, until_settled: bool, timeout: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let settings = MetaSettings { status_delay_ms: 100, ..Default::default() };
    let twilio = TwilioSettings { status_delay_ms: 100, ..Default::default() };
    let sandbox = Sandbox::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), settings, twilio).await?;
    let vendor = match provider {
        DemoProvider::Meta => "Meta",
        DemoProvider::Twilio => "Twilio",
    };
    println!("▶ Sandbox de Google y {vendor} en {}", sandbox.base_url());
    for (name, params) in [("encuesta_egreso", 1), ("retomar_conversacion", 1)] {
        sandbox.meta().add_template(TemplateDef::new(name, "es", params, false));
        sandbox.twilio().add_content(ContentDef::new(name, "es", params, false));
    }
    let reports = vec![["ID", "Fecha", "Problema", "Lugar", "Teléfono"].map(|h| json!(h)).to_vec()];
    let inbox = vec![[
        "ID",
        "Abierta",
        "Teléfono",
        "Registro",
        "Tema",
        "Conversación",
        "Esperando desde",
        "Estado",
        "Asignada a",
        "Respuesta",
        "Cerrar",
        "Estado respuesta",
    ]
    .map(|h| json!(h))
    .to_vec()];
    sandbox.google().seed(
        SHEET,
        "America/Santiago",
        vec![(TAB.to_string(), sheet()), (REPORTS.to_string(), reports), (INBOX.to_string(), inbox)],
    );
    let people: Vec<Resident> = residents().into_iter().chain([graduate()]).collect();
    for p in &people {
        match provider {
            DemoProvider::Meta => sandbox.meta().add_user(SimUser {
                wa_id: p.wa_id.into(),
                name: p.name.into(),
                read_after_ms: 200,
                script: p.script.clone(),
                ..Default::default()
            }),
            DemoProvider::Twilio => sandbox.twilio().add_user(TwilioUser {
                number: format!("+{}", p.wa_id),
                name: p.name.into(),
                read_after_ms: 200,
                script: p.script.clone(),
                ..Default::default()
            }),
        }
    }
    let key_file = dir.path().join("sa.json");
    std::fs::write(&key_file, sandbox.service_account_key("recado-demo@sandbox.iam.gserviceaccount.com"))?;
    sandbox.google().share(SHEET, "recado-demo@sandbox.iam.gserviceaccount.com");
    let state_path = dir.path().join("recado.db");
    let yaml = super::with_provider(YAML, provider);
    let running =
        super::start_daemon(&sandbox, &super::fill(&yaml, &sandbox, &key_file, &state_path), &state_path).await?;
    let store = running.ctx().store.clone();
    wait_until(Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            let Ok(mut c) = store.conn().await else { return false };
            crate::store::source_state(&mut c, "participantes").await.is_ok_and(|s| s.baseline_done)
        }
    })
    .await;

    let started = Instant::now();
    let mut narrator = Narrator::default();
    let start_script = |wa_id: &str| match provider {
        DemoProvider::Meta => sandbox.meta().start_script(wa_id),
        DemoProvider::Twilio => sandbox.twilio().start_script(&format!("+{wa_id}")),
    };
    for p in residents() {
        println!("💬 {} escribe al número de la Municipalidad", p.name);
        start_script(p.wa_id);
    }
    println!("🎓 El programa marca a Camila como Egresado: recibe la encuesta de seguimiento");
    sandbox.google().edit_by_key(SHEET, TAB, "ID", "P-1", "Estado", json!("Egresado"));
    start_script(graduate().wa_id);

    let closed = play_staff(&sandbox, timeout).await;
    let scripts = wait_until(timeout, || async {
        match provider {
            DemoProvider::Meta => sandbox.meta().scripts_done(),
            DemoProvider::Twilio => sandbox.twilio().scripts_done(),
        }
    })
    .await;
    let settled = scripts && super::settle(&running, &mut narrator, (0, 0), started + timeout, timeout).await;
    let answered = wait_until(Duration::from_secs(10), || async {
        sandbox.google().rows(SHEET, TAB).iter().any(|r| r.iter().any(|c| cell_text(c) == "completa"))
    })
    .await;
    let reported =
        wait_until(Duration::from_secs(10), || async { sandbox.google().rows(SHEET, REPORTS).len() == 2 }).await;
    print_transcripts(&sandbox, provider, &people);
    print_sheet(&sandbox);
    super::print_summary(&running).await?;
    let result = if settled && answered && reported && closed {
        println!("✔ Cada conversación terminó, el reporte quedó en «{REPORTS}», el caso de Sofía se atendió y cerró en «{INBOX}» y la encuesta quedó en la fila de Camila.");
        Ok(())
    } else if !closed {
        Err(anyhow::anyhow!("the hand-off to staff did not end closed in the {INBOX} tab"))
    } else if !scripts {
        Err(anyhow::anyhow!("the residents' scripts did not finish within {}s", timeout.as_secs()))
    } else if !answered {
        Err(anyhow::anyhow!("the survey's answers did not reach the sheet"))
    } else if !reported {
        Err(anyhow::anyhow!("the resident's report is not one row of the {REPORTS} tab"))
    } else {
        Err(anyhow::anyhow!("the demo did not settle within {}s", timeout.as_secs()))
    };
    super::finish(running, sandbox, until_settled, result).await
}

/// Each person's conversation, in order: what they wrote or tapped, what recado answered.
fn print_transcripts(sandbox: &Sandbox, provider: DemoProvider, people: &[Resident]) {
    for p in people {
        println!("\nConversación con {}:", p.name);
        let mut lines: Vec<(i64, String)> = Vec::new();
        let mut bot = |at: i64, template: bool, text: &str| {
            let who = if template { "🤖 (plantilla)" } else { "🤖" };
            lines.push((at, format!("  {who} {}", fit(&text.replace('\n', " "), 150).trim_end())));
        };
        match provider {
            DemoProvider::Meta => {
                for m in sandbox.meta().sent().iter().filter(|m| m.wa_id == p.wa_id) {
                    let options: Vec<String> = interactive_options(m).into_iter().map(|(_, t)| t).collect();
                    let shown = shown_text(m);
                    let text = if options.is_empty() { shown } else { format!("{shown}  [{}]", options.join("] [")) };
                    bot(m.at_ms, m.body["type"] == "template", &text);
                }
                let received = sandbox.meta().received();
                lines.extend(
                    received.iter().filter(|m| m.wa_id == p.wa_id).map(|m| (m.at_ms, format!("  👤 {}", m.text))),
                );
            }
            DemoProvider::Twilio => {
                let number = format!("whatsapp:+{}", p.wa_id);
                for m in sandbox.twilio().sent().iter().filter(|m| m.to == number) {
                    bot(m.at_ms, m.template.is_some(), &m.body);
                }
                let received = sandbox.twilio().received();
                lines.extend(
                    received.iter().filter(|m| m.from == number).map(|m| (m.at_ms, format!("  👤 {}", m.body))),
                );
            }
        }
        lines.sort_by_key(|(at, _)| *at);
        for (_, l) in lines {
            println!("{l}");
        }
    }
}

fn print_sheet(sandbox: &Sandbox) {
    let wanted = ["ID", "Nombre", "Estado", "Encuesta", "Satisfacción", "Trabaja", "Comentario"];
    let title = format!("La planilla \"{TAB}\" después de recado:");
    super::print_columns(&sandbox.google().rows(SHEET, TAB), &title, &wanted, &[4, 14, 9, 10, 12, 7, 52]);
    let wanted = ["ID", "Fecha", "Problema", "Lugar", "Teléfono"];
    let title = format!("La pestaña \"{REPORTS}\" (un reporte por fila, agregado por el bot):");
    super::print_columns(&sandbox.google().rows(SHEET, REPORTS), &title, &wanted, &[12, 19, 40, 30, 14]);
    let title = format!("La pestaña \"{INBOX}\" (una fila por caso derivado a una persona):");
    let wanted = ["ID", "Tema", "Estado", "Asignada a", "Estado respuesta"];
    super::print_columns(&sandbox.google().rows(SHEET, INBOX), &title, &wanted, &[12, 10, 8, 14, 16]);
    if let Some(row) = inbox_row(sandbox, SOFIA) {
        println!("  Conversación:");
        for line in row.get("Conversación").map(String::as_str).unwrap_or_default().lines() {
            println!("    {line}");
        }
    }
}
