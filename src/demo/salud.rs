//! `recado demo --scenario salud`: a health programme whose families and appointments live in
//! Salesforce. The sandbox's Salesforce emulator holds the org (Contacts with a WhatsApp
//! consent, appointments `Cita__c`); the real daemon signs in with the JWT bearer flow, polls
//! the appointments, confirms and reminds, writes each status and reply to the appointment,
//! and logs every message and reply as a Task on the Contact and the appointment.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Map, Value};

use super::{wait_until, Narrator};
use crate::sandbox::salesforce::{FieldDef, FieldKind, ObjectDef, SfKind};
use crate::sandbox::{MetaSettings, Sandbox, SimUser, TemplateDef, TwilioSettings};

const DEMO_SALUD_YAML: &str = include_str!("../../config/demo-salud.yaml");

/// Confirmations of the two new appointments with consent, their two reminders and one
/// rescheduling notice.
const EXPECTED_MESSAGES: usize = 5;
/// Fernanda confirms.
const EXPECTED_REPLIES: i64 = 1;

struct Family {
    first: &'static str,
    last: &'static str,
    phone: &'static str,
    consent: bool,
    reply: Option<&'static str>,
}

const FAMILIES: &[Family] = &[
    Family { first: "Javiera", last: "Muñoz", phone: "+56 9 7654 3201", consent: true, reply: None },
    Family { first: "Constanza", last: "Rojas", phone: "+56 9 7654 3202", consent: true, reply: None },
    Family { first: "Daniela", last: "Soto", phone: "+56 9 7654 3203", consent: true, reply: None },
    Family {
        first: "Fernanda",
        last: "Vera",
        phone: "+56 9 7654 3204",
        consent: true,
        reply: Some("Confirmo, ahí estaremos"),
    },
    Family { first: "Carolina", last: "Pizarro", phone: "+56 9 7654 3205", consent: true, reply: None },
    Family { first: "Paula", last: "Araya", phone: "+56 9 7654 3206", consent: false, reply: None },
];

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The org: Contacts with a consent checkbox, appointments, and the Task fields the log uses.
pub fn define_org(sandbox: &Sandbox) {
    let sf = sandbox.salesforce();
    sf.add_field("Contact", FieldDef::new("Consentimiento_WhatsApp__c", FieldKind::Boolean));
    sf.define_object(
        ObjectDef::new(
            "Cita__c",
            "a01",
            vec![
                FieldDef::reference("Contacto__c", "Contact").required(),
                FieldDef::new("Fecha__c", FieldKind::Datetime),
                FieldDef::new("Estado__c", FieldKind::Picklist).with_length(40),
                FieldDef::new("Centro__c", FieldKind::String).with_length(80),
                FieldDef::new("WhatsApp_Estado__c", FieldKind::String).with_length(40),
                FieldDef::new("WhatsApp_Fecha__c", FieldKind::Datetime),
                FieldDef::new("WhatsApp_Error__c", FieldKind::String).with_length(255),
                FieldDef::new("WhatsApp_Respuesta__c", FieldKind::String).with_length(255),
                FieldDef::new("WhatsApp_Fecha_Respuesta__c", FieldKind::Datetime),
            ],
        )
        .with_activities(),
    );
    for (name, length) in
        [("Recado_Id__c", 255), ("WhatsApp_Direccion__c", 20), ("WhatsApp_Estado__c", 40), ("WhatsApp_Id__c", 100)]
    {
        sf.add_field("Task", FieldDef::new(name, FieldKind::String).with_length(length));
    }
}

fn at(from_now: chrono::Duration) -> String {
    (chrono::Utc::now() + from_now).to_rfc3339()
}

/// Runs the scenario (on Meta). See [`super::run`] for `until_settled` and `timeout`.
pub async fn run(until_settled: bool, timeout: Duration) -> anyhow::Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let settings = MetaSettings { status_delay_ms: 150, ..Default::default() };
    let sandbox =
        Sandbox::start_with(SocketAddr::from(([127, 0, 0, 1], 0)), settings, TwilioSettings::default()).await?;
    println!("▶ Sandbox de Salesforce y Meta en {}", sandbox.base_url());
    for (name, params) in [("confirmacion_cita", 3), ("recordatorio_cita", 3), ("cita_reprogramada", 2)] {
        sandbox.meta().add_template(TemplateDef::new(name, "es", params, false));
    }
    define_org(&sandbox);
    let sf = sandbox.salesforce();
    let mut contacts = Vec::new();
    for f in FAMILIES {
        let id = sf
            .create(
                "Contact",
                fields(json!({"FirstName": f.first, "LastName": f.last, "MobilePhone": f.phone, "Consentimiento_WhatsApp__c": f.consent})),
            )
            .map_err(anyhow::Error::msg)?;
        let wa_id: String = f.phone.chars().filter(char::is_ascii_digit).collect();
        sandbox.meta().add_user(SimUser {
            wa_id,
            name: format!("{} {}", f.first, f.last),
            read_after_ms: 400,
            reply: f.reply.map(String::from),
            ..Default::default()
        });
        contacts.push(id);
    }
    // The appointments already in Salesforce: the baseline, nobody is written to.
    let mut baseline = Vec::new();
    for (i, centro) in [(0, "CESFAM Norte"), (1, "CESFAM Sur"), (2, "CESFAM Norte")] {
        let id = sf
            .create(
                "Cita__c",
                fields(json!({"Contacto__c": contacts[i], "Fecha__c": at(chrono::Duration::days(10 + i as i64)), "Estado__c": "Agendada", "Centro__c": centro})),
            )
            .map_err(anyhow::Error::msg)?;
        baseline.push(id);
    }
    println!(
        "▶ Org con {} familias y {} citas ya agendadas (línea base: no se les escribe)",
        FAMILIES.len(),
        baseline.len()
    );

    let key_file = dir.path().join("conectada.key");
    std::fs::write(&key_file, crate::sandbox::keys::PRIVATE_KEY_PEM)?;
    let state_path = dir.path().join("recado.db");
    let running =
        super::start_daemon(&sandbox, &super::fill(DEMO_SALUD_YAML, &sandbox, &key_file, &state_path), &state_path)
            .await?;

    let started = Instant::now();
    let mut narrator = Narrator::default();
    wait_until(Duration::from_secs(10), || async { sf.count(SfKind::Query) > 1 }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // New appointments, two days and a few seconds away: confirmed now, reminded in seconds.
    for (i, secs, centro) in [(3, 12, "CESFAM Norte"), (4, 14, "CESFAM Sur"), (5, 16, "CESFAM Norte")] {
        let f = &FAMILIES[i];
        let note = if f.consent { "" } else { " (sin consentimiento de WhatsApp)" };
        println!("📝 Nueva cita para {} {}{note}", f.first, f.last);
        sf.create(
            "Cita__c",
            fields(json!({"Contacto__c": contacts[i], "Fecha__c": at(chrono::Duration::days(2) + chrono::Duration::seconds(secs)), "Estado__c": "Agendada", "Centro__c": centro})),
        )
        .map_err(anyhow::Error::msg)?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        narrator.tell(&running).await;
    }
    println!("🗓  El centro reprograma la cita de {}", FAMILIES[0].first);
    sf.update(
        "Cita__c",
        &baseline[0],
        fields(json!({"Fecha__c": at(chrono::Duration::days(9)), "Estado__c": "Reprogramada"})),
    )
    .map_err(anyhow::Error::msg)?;
    println!("✂  La cita de {} se cancela (sale del filtro `where`: sus recordatorios se anulan)", FAMILIES[1].first);
    sf.update("Cita__c", &baseline[1], fields(json!({"Estado__c": "Cancelada"}))).map_err(anyhow::Error::msg)?;

    let settled =
        super::settle(&running, &mut narrator, (EXPECTED_MESSAGES, EXPECTED_REPLIES), started + timeout, timeout).await;
    // The reply's Task comes with the last write-back.
    let tasks_expected = EXPECTED_MESSAGES + EXPECTED_REPLIES as usize;
    let logged = wait_until(Duration::from_secs(10), || async { sf.records("Task").len() >= tasks_expected }).await;
    print_appointments(&sandbox);
    print_tasks(&sandbox);
    super::print_summary(&running).await?;
    let (used, max) = sf.usage();
    println!("  llamadas a la API de Salesforce: {used} de {max} diarias");
    let tasks = sf.records("Task").len();
    let result = if logged && tasks > tasks_expected {
        Err(anyhow::anyhow!("the interaction log has {tasks} Tasks for {tasks_expected} messages and replies"))
    } else if settled && logged {
        println!("✔ Cada mensaje llegó a su estado final, quedó escrito en su cita y registrado como Tarea.");
        Ok(())
    } else if !logged {
        Err(anyhow::anyhow!("the interaction log has fewer than {tasks_expected} Tasks"))
    } else {
        Err(anyhow::anyhow!("the demo did not settle within {}s", timeout.as_secs()))
    };
    super::finish(running, sandbox, until_settled, result).await
}

fn text(r: &Map<String, Value>, k: &str) -> String {
    match r.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn print_appointments(sandbox: &Sandbox) {
    let sf = sandbox.salesforce();
    let names: std::collections::HashMap<String, String> =
        sf.records("Contact").iter().map(|c| (text(c, "Id"), text(c, "Name"))).collect();
    println!("\nLas citas (Cita__c) después de recado:");
    let widths = [18, 16, 12, 10, 32, 26];
    let head = ["Familia", "Fecha (UTC)", "Estado", "WhatsApp", "Error", "Respuesta"];
    println!("  {}", head.iter().zip(widths).map(|(h, n)| super::fit(h, n)).collect::<Vec<_>>().join(" │ "));
    for c in sf.records("Cita__c") {
        let cells = [
            names.get(&text(&c, "Contacto__c")).cloned().unwrap_or_default(),
            text(&c, "Fecha__c").get(..16).unwrap_or_default().replace('T', " "),
            text(&c, "Estado__c"),
            text(&c, "WhatsApp_Estado__c"),
            text(&c, "WhatsApp_Error__c"),
            text(&c, "WhatsApp_Respuesta__c"),
        ];
        println!("  {}", cells.iter().zip(widths).map(|(t, n)| super::fit(t, n)).collect::<Vec<_>>().join(" │ "));
    }
}

fn print_tasks(sandbox: &Sandbox) {
    let sf = sandbox.salesforce();
    let names: std::collections::HashMap<String, String> =
        sf.records("Contact").iter().map(|c| (text(c, "Id"), text(c, "Name"))).collect();
    println!("\nEl registro de interacciones (Task, en el Contacto y la cita):");
    for t in sf.records("Task") {
        println!(
            "  {} │ {} │ {} │ {}",
            super::fit(&names.get(&text(&t, "WhoId")).cloned().unwrap_or_default(), 16),
            super::fit(&text(&t, "Subject"), 36),
            super::fit(&text(&t, "WhatsApp_Estado__c"), 9),
            super::fit(&text(&t, "Description"), 60),
        );
    }
}
