//! A person takes over: the hand-off inbox is a tab of the team's spreadsheet. The daemon
//! against the sandbox over HTTP: a keyword or a flow opens a hand-off (a row in `Bandeja`),
//! the bot goes silent, what the person writes lands in the row's transcript, a reply staff
//! write in `Respuesta` reaches the person and the cell empties, and ticking `Cerrar` closes
//! it and gives the person back to the bot.

use std::time::Duration;

use recado::domain::MessageState;
use serde_json::{json, Value};

use crate::harness::{e164, row, wait_for, Harness, SHEET, TAB};

const INBOX: &str = "Bandeja";
/// A spreadsheet of its own for the inbox, in the tests that want one.
const INBOX_SHEET: &str = "sheet-bandeja";

fn inbox_header() -> Vec<Value> {
    [
        "ID",
        "Teléfono",
        "Abierta",
        "Nombre",
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
    .iter()
    .map(|h| json!(h))
    .collect()
}

/// A harness whose spreadsheet `inbox_sheet` has the inbox (the participants' own, or one of
/// its own), with a menu bot whose second option hands the person to staff.
async fn with_inbox(people: &[(u32, &str)], inbox_sheet: &'static str) -> Harness {
    let mut h = Harness::new(Vec::new()).await;
    let mut participants = vec![crate::harness::header()];
    participants.extend(people.iter().map(|(n, name)| row(*n, name, "Sí", "Inscrito")));
    if inbox_sheet == SHEET {
        h.sandbox.google().seed(
            SHEET,
            "America/Santiago",
            vec![(TAB.to_string(), participants), (INBOX.into(), vec![inbox_header()])],
        );
    } else {
        h.sandbox.google().seed(SHEET, "America/Santiago", vec![(TAB.to_string(), participants)]);
        h.sandbox.google().seed(inbox_sheet, "America/Santiago", vec![(INBOX.into(), vec![inbox_header()])]);
        h.sandbox.google().share(inbox_sheet, "recado-test@sandbox.iam.gserviceaccount.com");
    }
    h.inbox_sheet = inbox_sheet;
    h.extra_source = format!(
        r#"  - id: bandeja
    type: google_sheets
    spreadsheet_id: {inbox_sheet}
    tab: {INBOX}
    key_column: ID
    phone_column: Teléfono
    default_region: CL
    poll_interval: 150ms
    flush_interval: 200ms
    service_account_key_file: "{key}"
    sheets_base_url: "{base}/google/sheets/"
    drive_base_url: "{base}/google/"
    write_back:
      status: Estado respuesta
"#,
        key = h.key_file.display(),
        base = h.sandbox.base_url()
    );
    h.extra_top = r#"
inbound:
  opt_out_reply: "Listo, no te escribiremos más."
  entry_flow: menu
flows:
  - id: menu
    steps:
      - id: opcion
        ask:
          text: "Hola, ¿en qué te ayudamos?"
          type: choice
          choices:
            - { title: "Horarios", goto: horarios }
            - { title: "Hablar con alguien", goto: persona }
      - id: horarios
        say: "Atendemos de 9 a 18 h."
        end: true
      - id: persona
        handoff: { topic: consulta }
handoff:
  inbox: bandeja
  keywords: [AGENTE, PERSONA]
  name_field: Nombre
  opened_reply: "Te comunicamos con una persona del equipo. Te responderemos por aquí."
  closed_reply: "Cerramos tu consulta. Escríbenos cuando quieras."
  reopen_template: { name: retomar_conversacion, language: es, body: ["{{ Nombre }}"] }
  fields:
    opened_at: Abierta
    name: Nombre
    record: Registro
    topic: Tema
    transcript: Conversación
    waiting_since: Esperando desde
    state: Estado
    assigned: Asignada a
    reply: Respuesta
    close: Cerrar
"#
    .into();
    h
}

fn inbox_rows(h: &Harness) -> Vec<Vec<Value>> {
    h.sandbox.google().rows(h.inbox_sheet, INBOX)
}

/// The inbox cell of the hand-off row of person `n` (found by phone, as staff would).
fn inbox_cell(h: &Harness, n: u32, column: &str) -> String {
    let rows = inbox_rows(h);
    let Some(header) = rows.first() else { return String::new() };
    let at = |name: &str| header.iter().position(|c| c.as_str() == Some(name));
    let (Some(phone), Some(col)) = (at("Teléfono"), at(column)) else { return String::new() };
    rows.iter()
        .skip(1)
        .find(|r| r.get(phone).and_then(Value::as_str) == Some(e164(n).as_str()))
        .and_then(|r| r.get(col))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string().to_uppercase(),
            Value::Null => String::new(),
            other => other.to_string(),
        })
        .unwrap_or_default()
}

fn inbox_key(h: &Harness, n: u32) -> String {
    inbox_cell(h, n, "ID")
}

fn texts_to(h: &Harness, n: u32) -> Vec<String> {
    h.meta_sent_to(n).iter().map(recado::sandbox::meta::shown_text).collect()
}

async fn wait_texts(h: &Harness, n: u32, count: usize, what: &str) {
    wait_for(what, Duration::from_secs(20), || async { h.meta_sent_to(n).len() >= count }).await;
}

fn staff_edit(h: &Harness, n: u32, column: &str, value: Value) {
    let key = inbox_key(h, n);
    assert!(!key.is_empty(), "person {n} has a row in the inbox");
    assert!(h.sandbox.google().edit_by_key(h.inbox_sheet, INBOX, "ID", &key, column, value), "edit {key}.{column}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyword_opens_a_hand_off_staff_answer_from_the_inbox_and_closing_returns_the_person_to_the_bot() {
    let mut h = with_inbox(&[(501, "Ana Pérez")], SHEET).await;
    h.user(501, false, None);
    h.start().await;

    // The bot answers first; then the person asks for someone.
    h.says(501, "hola", None);
    wait_texts(&h, 501, 1, "the menu").await;
    h.says(501, "agente por favor", None);
    wait_texts(&h, 501, 2, "the opening answer").await;
    assert_eq!(texts_to(&h, 501)[1], "Te comunicamos con una persona del equipo. Te responderemos por aquí.");
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, 501, "Estado") == "open" }).await;
    let key = inbox_key(&h, 501);
    assert!(key.starts_with("H-") && key.len() == 12, "recado's key: {key}");
    assert_eq!(inbox_cell(&h, 501, "Nombre"), "Ana Pérez");
    assert_eq!(inbox_cell(&h, 501, "Registro"), "inscripciones/501");
    assert!(inbox_cell(&h, 501, "Abierta").starts_with("20"), "the local time it opened");
    assert!(inbox_cell(&h, 501, "Esperando desde").starts_with("20"), "waiting since it opened");
    let transcript = inbox_cell(&h, 501, "Conversación");
    assert!(transcript.contains("▸ agente por favor") && transcript.contains("◂ Te comunicamos"), "{transcript}");

    // While it is open the bot is silent, and what the person writes reaches the transcript.
    h.says(501, "Necesito cambiar mi horario", None);
    wait_for("the message in the transcript", Duration::from_secs(20), || async {
        inbox_cell(&h, 501, "Conversación").ends_with("▸ Necesito cambiar mi horario")
    })
    .await;
    assert_eq!(h.meta_sent_to(501).len(), 2, "the bot stays silent: {:?}", texts_to(&h, 501));

    // Staff take it and answer from the sheet.
    staff_edit(&h, 501, "Asignada a", json!("Carla"));
    staff_edit(&h, 501, "Respuesta", json!("Hola Ana, te cambio al turno de la tarde."));
    wait_texts(&h, 501, 3, "the staff reply").await;
    assert_eq!(texts_to(&h, 501)[2], "Hola Ana, te cambio al turno de la tarde.");
    wait_for("the reply cell emptied and the reply in the transcript", Duration::from_secs(20), || async {
        inbox_cell(&h, 501, "Respuesta").is_empty()
            && inbox_cell(&h, 501, "Conversación").ends_with("◂ Hola Ana, te cambio al turno de la tarde. — Carla")
    })
    .await;
    wait_for("the reply's status on the row", Duration::from_secs(20), || async {
        ["delivered", "read"].contains(&inbox_cell(&h, 501, "Estado respuesta").as_str())
    })
    .await;
    assert_eq!(inbox_cell(&h, 501, "Esperando desde"), "", "answered: nobody is waiting");

    // Closing: the person is told, the row says so, and the bot answers again.
    staff_edit(&h, 501, "Cerrar", json!(true));
    wait_texts(&h, 501, 4, "the closing answer").await;
    assert_eq!(texts_to(&h, 501)[3], "Cerramos tu consulta. Escríbenos cuando quieras.");
    wait_for("the row closed", Duration::from_secs(20), || async { inbox_cell(&h, 501, "Estado") == "closed" }).await;
    h.says(501, "hola de nuevo", None);
    wait_texts(&h, 501, 5, "the menu again").await;
    assert_eq!(texts_to(&h, 501)[4], "Hola, ¿en qué te ayudamos?");
    h.quiesce().await;
    assert_eq!(h.meta_sent_to(501).len(), 5, "each message once: {:?}", texts_to(&h, 501));
    assert_eq!(inbox_rows(&h).len(), 2, "one row for the hand-off: {:?}", inbox_rows(&h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_hands_off_and_two_quick_replies_on_a_sorted_inbox_both_go_out_once_in_order() {
    use recado::sandbox::google::{Kind, SheetAction};
    let mut h = with_inbox(&[(502, "Bruno Díaz"), (503, "Carmen Soto")], INBOX_SHEET).await;
    h.user(502, false, None);
    h.user(503, false, None);
    h.start().await;

    // Both people choose "Hablar con alguien" in the menu.
    for n in [502, 503] {
        h.says(n, "hola", None);
        wait_texts(&h, n, 1, "the menu").await;
        h.says(n, "2", None);
        wait_texts(&h, n, 2, "the opening answer").await;
    }
    wait_for("two inbox rows", Duration::from_secs(20), || async {
        inbox_cell(&h, 502, "Estado") == "open" && inbox_cell(&h, 503, "Estado") == "open"
    })
    .await;
    assert_eq!(inbox_cell(&h, 502, "Tema"), "consulta");

    // Staff sort the inbox (503 first now) and write a reply to 502; a second one is typed
    // over it right after recado read the first, before recado empties the cell.
    let first_row_before = inbox_rows(&h)[1][0].clone();
    let first_is_502 = first_row_before.as_str() == Some(inbox_key(&h, 502).as_str());
    // "Bruno" sorts before "Carmen": whichever row is first now goes second.
    assert!(h.sandbox.google().sort_by(INBOX_SHEET, INBOX, "Nombre", first_is_502));
    h.quiesce().await;
    assert_ne!(inbox_rows(&h)[1][0], first_row_before, "the sort moved the rows");
    let key = inbox_key(&h, 502);
    // The poll's read of the inbox (its spreadsheet's only values.get) is followed at once
    // by the second reply, typed over the first.
    h.sandbox.google().after_next(
        Kind::ValuesGet,
        SheetAction::Edit {
            spreadsheet: INBOX_SHEET.into(),
            tab: INBOX.into(),
            key_column: "ID".into(),
            key: key.clone(),
            column: "Respuesta".into(),
            value: json!("Y trae tu carnet, por favor."),
            user_entered: false,
        },
    );
    staff_edit(&h, 502, "Respuesta", json!("Hola Bruno, mañana a las 10."));
    wait_texts(&h, 502, 4, "both replies").await;
    h.quiesce().await;
    let texts = texts_to(&h, 502);
    assert_eq!(texts.len(), 4, "each reply once: {texts:?}");
    assert_eq!(&texts[2..], ["Hola Bruno, mañana a las 10.", "Y trae tu carnet, por favor."]);
    assert_eq!(inbox_cell(&h, 502, "Respuesta"), "", "taken and emptied");
    let transcript = inbox_cell(&h, 502, "Conversación");
    assert!(
        transcript.contains("◂ Hola Bruno, mañana a las 10.\n")
            && transcript.ends_with("◂ Y trae tu carnet, por favor."),
        "{transcript}"
    );
    assert!(!inbox_cell(&h, 503, "Conversación").contains("Bruno"), "nothing on the other person's row");
    assert_eq!(h.meta_sent_to(503).len(), 2, "nothing to the other person");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staff_reply_after_the_window_closed_invites_the_person_and_goes_out_when_they_write() {
    let mut h = with_inbox(&[(504, "Diego Rojas")], SHEET).await;
    h.user(504, false, None);
    h.start().await;
    h.says(504, "PERSONA", None);
    wait_texts(&h, 504, 1, "the opening answer").await;
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, 504, "Estado") == "open" }).await;

    // A day later staff answer: WhatsApp takes no free text now.
    let day = Duration::from_secs(25 * 3600);
    h.clock.advance(day);
    h.sandbox.meta().age_windows(day);
    staff_edit(&h, 504, "Asignada a", json!("Rosa"));
    staff_edit(&h, 504, "Respuesta", json!("Hola Diego, ya tenemos tu certificado."));
    wait_texts(&h, 504, 2, "the invitation").await;
    let invitation = &h.meta_sent_to(504)[1];
    assert_eq!(invitation.body["type"], "template");
    assert_eq!(invitation.body["template"]["name"], "retomar_conversacion");
    wait_for("the row says it waits for the person", Duration::from_secs(20), || async {
        inbox_cell(&h, 504, "Estado") == "waiting for the person to write"
            && inbox_cell(&h, 504, "Respuesta").is_empty()
    })
    .await;

    // They write back: the reply that waited goes out.
    h.says(504, "Hola, aquí estoy", None);
    wait_texts(&h, 504, 3, "the staff reply").await;
    assert_eq!(texts_to(&h, 504)[2], "Hola Diego, ya tenemos tu certificado.");
    wait_for("the transcript", Duration::from_secs(20), || async {
        let t = inbox_cell(&h, 504, "Conversación");
        t.contains("▸ Hola, aquí estoy")
            && t.ends_with("◂ Hola Diego, ya tenemos tu certificado. — Rosa")
            && inbox_cell(&h, 504, "Estado") == "open"
    })
    .await;
    h.quiesce().await;
    assert_eq!(h.meta_sent_to(504).len(), 3);
}

/// A staff reply queued while recado still saw the window open, that WhatsApp refuses because
/// it closed on the way (answered at once, or failed by a webhook after): it is not lost and
/// not shown twice: the person is invited, and it goes out when they write.
async fn a_reply_that_meets_the_window_closed_waits_for_the_person(n: u32, window_error: &str) {
    let mut h = with_inbox(&[(n, "Diego Rojas")], SHEET).await;
    h.user(n, false, None);
    h.sandbox.meta().set_window_error(window_error);
    h.start().await;
    h.says(n, "PERSONA", None);
    wait_texts(&h, n, 1, "the opening answer").await;
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, n, "Estado") == "open" }).await;
    // WhatsApp's window closes, recado's clock has not got there yet.
    h.sandbox.meta().age_windows(Duration::from_secs(25 * 3600));
    staff_edit(&h, n, "Respuesta", json!("Hola Diego, ya tenemos tu certificado."));
    wait_for("the invitation", Duration::from_secs(20), || async {
        h.meta_sent_to(n).iter().any(|m| m.body["template"]["name"] == "retomar_conversacion")
    })
    .await;
    wait_for("the row says it waits for the person", Duration::from_secs(20), || async {
        inbox_cell(&h, n, "Estado") == "waiting for the person to write"
    })
    .await;
    h.says(n, "Hola, aquí estoy", None);
    wait_for("the reply that waited", Duration::from_secs(20), || async {
        texts_to(&h, n).last().map(String::as_str) == Some("Hola Diego, ya tenemos tu certificado.")
    })
    .await;
    wait_for("the transcript", Duration::from_secs(20), || async {
        inbox_cell(&h, n, "Estado") == "open" && inbox_cell(&h, n, "Conversación").contains("▸ Hola, aquí estoy")
    })
    .await;
    h.quiesce().await;
    let transcript = inbox_cell(&h, n, "Conversación");
    assert_eq!(transcript.matches("◂ Hola Diego, ya tenemos tu certificado.").count(), 1, "{transcript}");
    let delivered = texts_to(&h, n).iter().filter(|t| *t == "Hola Diego, ya tenemos tu certificado.").count();
    let refused = usize::from(window_error == "async");
    assert_eq!(delivered, 1 + refused, "the one WhatsApp accepted and then failed, and the one that went out");
}

/// A staff reply held up (the number was throttled) until the person's window closed by
/// recado's own clock: it is not sent as free text, it waits for the person like one written
/// after the window closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_held_up_until_the_window_closed_waits_for_the_person() {
    let n = 516;
    let mut h = with_inbox(&[(n, "Olga Díaz")], SHEET).await;
    h.user(n, false, None);
    h.start().await;
    h.says(n, "PERSONA", None);
    wait_texts(&h, n, 1, "the opening answer").await;
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, n, "Estado") == "open" }).await;
    h.sandbox.meta().inject(recado::sandbox::MetaFault {
        code: 130429,
        http_status: 400,
        count: 1,
        mode: None,
        to: Some(crate::harness::wa_id(n)),
        // Answered late, so the day can pass while the send is on its way.
        delay_ms: Some(3_000),
    });
    staff_edit(&h, n, "Respuesta", json!("Hola Olga, ya está listo."));
    wait_for("the reply on its way", Duration::from_secs(20), || async {
        h.messages().await.iter().any(|m| m.rule_id == "handoff:reply" && m.state == MessageState::Sending)
    })
    .await;
    let day = Duration::from_secs(25 * 3600);
    h.clock.advance(day);
    h.sandbox.meta().age_windows(day);
    wait_for("the invitation instead", Duration::from_secs(20), || async {
        h.meta_sent_to(n).iter().any(|m| m.body["template"]["name"] == "retomar_conversacion")
            && inbox_cell(&h, n, "Estado") == "waiting for the person to write"
    })
    .await;
    assert!(!texts_to(&h, n).iter().any(|t| t == "Hola Olga, ya está listo."), "no free text outside the window");
    h.says(n, "Hola", None);
    wait_for("the reply that waited", Duration::from_secs(20), || async {
        texts_to(&h, n).last().map(String::as_str) == Some("Hola Olga, ya está listo.")
    })
    .await;
    h.quiesce().await;
    let transcript = inbox_cell(&h, n, "Conversación");
    assert_eq!(transcript.matches("◂ Hola Olga, ya está listo.").count(), 1, "{transcript}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_refused_because_the_window_closed_on_the_way_waits_for_the_person() {
    a_reply_that_meets_the_window_closed_waits_for_the_person(513, "sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_failed_by_webhook_because_the_window_closed_waits_for_the_person() {
    a_reply_that_meets_the_window_closed_waits_for_the_person(514, "async").await;
}

/// Office hours that exclude today and tomorrow (in Santiago, on the daemon's clock), so the
/// office is closed now whatever the time the test runs at, and opens the day after tomorrow.
fn closed_until_after_tomorrow(h: &Harness) -> (String, String) {
    use chrono::{Datelike, TimeZone};
    let now = chrono::Utc.timestamp_millis_opt(h.clock.now_ms()).single().unwrap();
    let today = now.with_timezone(&chrono_tz::America::Santiago).date_naive();
    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let skip = [today.weekday().num_days_from_monday(), today.succ_opt().unwrap().weekday().num_days_from_monday()];
    let days: Vec<&str> = (0..7u32).filter(|d| !skip.contains(d)).map(|d| names[d as usize]).collect();
    let opens = today.succ_opt().unwrap().succ_opt().unwrap();
    (format!("[{}]", days.join(", ")), format!("{} 09:00", opens.format("%d/%m")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_office_hours_the_person_is_told_once_a_long_wait_is_flagged_and_rule_messages_wait_for_the_close() {
    let mut h = with_inbox(&[(505, "Elena Mora")], SHEET).await;
    let (days, opens_at) = closed_until_after_tomorrow(&h);
    h.extra_top = h.extra_top.replace(
        "handoff:\n  inbox: bandeja\n",
        &format!(
            "handoff:\n  inbox: bandeja\n  unanswered_after: 1m\n  office_hours:\n    between: \"09:00-18:00\"\n    days: {days}\n    time_zone: America/Santiago\n    reply: \"Te responderemos desde el {{{{ opens_at }}}}.\"\n"
        ),
    );
    h.user(505, false, None);
    h.start().await;

    h.says(505, "AGENTE", None);
    wait_texts(&h, 505, 2, "the opening and the office-hours answers").await;
    assert_eq!(texts_to(&h, 505)[1], format!("Te responderemos desde el {opens_at}."));
    h.says(505, "¿Hay alguien?", None);
    wait_for("the second message in the transcript", Duration::from_secs(20), || async {
        inbox_cell(&h, 505, "Conversación").ends_with("▸ ¿Hay alguien?")
    })
    .await;
    assert_eq!(h.meta_sent_to(505).len(), 2, "told once until the office opens: {:?}", texts_to(&h, 505));
    assert_eq!(h.metric("recado_handoffs_open", "").await, 1);

    // A rule message for them meanwhile waits: a person is taking care of them.
    h.edit("505", "Estado", json!("Egresado"));
    let survey =
        || async { h.messages().await.into_iter().find(|m| m.rule_id == "encuesta" && m.phone.as_str() == e164(505)) };
    wait_for("the survey held back", Duration::from_secs(20), || async {
        survey().await.is_some_and(|m| {
            m.state == recado::domain::MessageState::Queued && m.attempts == 0 && m.next_attempt_at > m.created_at
        })
    })
    .await;

    // Nobody answers for over a minute: flagged on the row and in the metrics.
    h.clock.advance(Duration::from_secs(90));
    wait_for("the row flagged", Duration::from_secs(20), || async {
        inbox_cell(&h, 505, "Estado") == "unanswered for over 1 min"
    })
    .await;
    assert_eq!(h.metric("recado_handoffs_unanswered", "").await, 1);

    // Staff answer: the flag goes; they close: the survey that waited goes out.
    staff_edit(&h, 505, "Respuesta", json!("Hola Elena, ¿en qué te ayudo?"));
    wait_texts(&h, 505, 3, "the staff reply").await;
    wait_for("the flag cleared", Duration::from_secs(20), || async { inbox_cell(&h, 505, "Estado") == "open" }).await;
    assert_eq!(h.metric("recado_handoffs_unanswered", "").await, 0);
    assert!(survey().await.is_some_and(|m| m.state == recado::domain::MessageState::Queued), "still waiting");
    staff_edit(&h, 505, "Cerrar", json!(true));
    wait_texts(&h, 505, 4, "the closing answer").await;
    h.clock.advance(Duration::from_secs(90));
    wait_for("the survey sent", Duration::from_secs(20), || async {
        h.meta_sent_to(505).iter().any(|m| m.body["template"]["name"] == "encuesta_seguimiento")
    })
    .await;
    assert_eq!(h.metric("recado_handoffs_open", "").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_rule_that_hands_replies_to_a_person_opens_a_hand_off_about_that_record() {
    let mut h = with_inbox(&[(506, "Felipe Vera")], SHEET).await;
    h.extra_rules = r#"  - id: recordatorio
    source: inscripciones
    when: { changed: Estado, to: Citado }
    provider: whatsapp
    template: { name: confirmacion_inscripcion, language: es, body: ["{{ Nombre }}", "{{ Curso }}", "{{ Mentor }}"] }
    on_other_reply: handoff
"#
    .into();
    h.user(506, false, None);
    h.start().await;
    h.edit("506", "Estado", json!("Citado"));
    wait_texts(&h, 506, 1, "the reminder").await;
    let reminder = h.meta_sent_to(506)[0].wamid.clone();
    h.says(506, "No podré ir el martes, ¿puedo cambiar la hora?", Some(&reminder));
    wait_texts(&h, 506, 2, "the opening answer").await;
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, 506, "Estado") == "open" }).await;
    assert_eq!(inbox_cell(&h, 506, "Tema"), "recordatorio");
    assert_eq!(inbox_cell(&h, 506, "Registro"), "inscripciones/506");
    assert!(inbox_cell(&h, 506, "Conversación").contains("▸ No podré ir el martes, ¿puedo cambiar la hora?"));
    // The bot did not answer it: the opening answer is the only reply.
    h.quiesce().await;
    assert_eq!(texts_to(&h, 506)[1], "Te comunicamos con una persona del equipo. Te responderemos por aquí.");
    assert_eq!(h.meta_sent_to(506).len(), 2);
}

/// The link at the end of a transcript line (`… /media/<id>/<signature>`).
fn media_link(line: &str) -> String {
    line.split_whitespace().find(|w| w.starts_with("/media/")).unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_photo_and_a_location_sent_during_a_hand_off_are_fetched_linked_and_served_only_with_their_signature() {
    let mut h = with_inbox(&[(507, "Gloria Paz")], SHEET).await;
    h.user(507, false, None);
    h.start().await;
    h.says(507, "AGENTE", None);
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, 507, "Estado") == "open" }).await;

    let photo = recado::sandbox::meta::sample_jpeg(50_000);
    h.sandbox.meta().user_sends_media(
        &crate::harness::wa_id(507),
        "image",
        photo.clone(),
        "image/jpeg",
        "Así está hoy",
        None,
    );
    h.sandbox.meta().user_sends_location(&crate::harness::wa_id(507), -33.4372, -70.6506, "Plaza", "Av. Principal 1");
    wait_for("both in the transcript", Duration::from_secs(20), || async {
        let t = inbox_cell(&h, 507, "Conversación");
        t.contains("▸ [image] Así está hoy /media/") && t.contains("▸ [location] -33.4372,-70.6506 Plaza, Av. Principal 1 https://www.openstreetmap.org/?mlat=-33.4372&mlon=-70.6506")
    })
    .await;
    let transcript = inbox_cell(&h, 507, "Conversación");
    let line = transcript.lines().find(|l| l.contains("[image]")).unwrap_or_default().to_string();
    let link = media_link(&line);
    assert!(!link.is_empty(), "{transcript}");
    let base = format!("http://{}", h.running().webhook_addr());
    let client = reqwest::Client::new();
    wait_for("the photo fetched and served", Duration::from_secs(20), || async {
        client.get(format!("{base}{link}")).send().await.expect("get").status() == 200
    })
    .await;
    let r = client.get(format!("{base}{link}")).send().await.expect("get");
    let mime = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = r.bytes().await.expect("bytes").to_vec();
    assert_eq!(mime, "image/jpeg");
    assert_eq!(bytes, photo, "the same bytes the person sent");
    assert_eq!(h.sandbox.meta().media_downloads(), 1, "fetched once");
    // Without the right signature: nothing, for that id or another.
    let (id, _) = link.trim_start_matches("/media/").split_once('/').unwrap();
    for wrong in [
        format!("/media/{id}/00000000000000000000000000000000"),
        format!("/media/{}/x", id.parse::<i64>().unwrap() + 1),
    ] {
        let status = client.get(format!("{base}{wrong}")).send().await.expect("get").status();
        assert_eq!(status, 403, "{wrong}");
    }
    let unsigned = client.get(format!("{base}/media/{id}/")).send().await.expect("get").status();
    assert_eq!(unsigned, 404, "no signature: no such page");

    // Past the retention (90 days by default) the file goes, and its link says so; past twice
    // that, the link opens nothing at all.
    let ctx = std::sync::Arc::clone(h.running().ctx());
    let (_stop, shutdown) = recado::engine::Shutdown::new();
    let retention = recado::engine::retention::RetentionLoop::new(ctx);
    h.clock.advance(Duration::from_secs(91 * 24 * 3600));
    let pruned = retention.prune_all(&shutdown).await.unwrap();
    assert_eq!(pruned.media, 1, "{pruned:?}");
    let r = client.get(format!("{base}{link}")).send().await.expect("get");
    assert_eq!(r.status(), 410);
    let why = r.text().await.unwrap();
    assert!(why.contains("no longer kept: files are kept 90 d (state.retention.media)"), "{why}");
    assert_eq!(
        std::fs::read_dir(h.dir.path().join("recado.db.media")).map(|d| d.count()).unwrap_or(0),
        0,
        "the file is gone"
    );
    h.clock.advance(Duration::from_secs(91 * 24 * 3600));
    retention.prune_all(&shutdown).await.unwrap();
    assert_eq!(client.get(format!("{base}{link}")).send().await.expect("get").status(), 403);
}

/// Meta's download address lives five minutes: one that expired before recado used it is
/// asked for again on the next try, and the file arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_download_address_is_asked_for_again() {
    let mut h = with_inbox(&[(515, "Hugo Lagos")], SHEET).await;
    h.user(515, false, None);
    h.start().await;
    h.says(515, "AGENTE", None);
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, 515, "Estado") == "open" }).await;
    h.sandbox.meta().set_media_link_ttl(Duration::ZERO);
    let pdf = b"%PDF-1.4 boleta de pago".to_vec();
    h.sandbox.meta().user_sends_media(
        &crate::harness::wa_id(515),
        "document",
        pdf.clone(),
        "application/pdf",
        "Mi boleta",
        Some("boleta.pdf"),
    );
    wait_for("a first try that met the address expired", Duration::from_secs(20), || async {
        let mut c = h.store().conn().await.unwrap();
        let attempts: Option<i64> =
            sqlx::query_scalar("SELECT attempts FROM media").fetch_optional(&mut *c).await.unwrap();
        attempts.is_some_and(|a| a >= 1)
    })
    .await;
    assert_eq!(h.sandbox.meta().media_downloads(), 0);
    h.sandbox.meta().set_media_link_ttl(Duration::from_secs(300));
    h.clock.advance(Duration::from_secs(10));
    wait_for("the file on the next try", Duration::from_secs(20), || async {
        h.sandbox.meta().media_downloads() == 1
            && inbox_cell(&h, 515, "Conversación").contains("▸ [document] Mi boleta")
    })
    .await;
    let line =
        inbox_cell(&h, 515, "Conversación").lines().find(|l| l.contains("[document]")).unwrap_or_default().to_string();
    let link = media_link(&line);
    let url = format!("http://{}{link}", h.running().webhook_addr());
    wait_for("the file served whole", Duration::from_secs(20), || async {
        let r = reqwest::get(&url).await.expect("get");
        r.status() == 200 && r.bytes().await.is_ok_and(|b| b.to_vec() == pdf)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_over_the_size_cap_is_never_downloaded_and_its_link_says_why() {
    let mut h = with_inbox(&[(508, "Hugo Lara")], SHEET).await;
    h.user(508, false, None);
    h.start().await;
    h.says(508, "AGENTE", None);
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, 508, "Estado") == "open" }).await;
    // 17 MB: over the default cap of 16 MB.
    let big = vec![7u8; 17_000_000];
    h.sandbox.meta().user_sends_media(
        &crate::harness::wa_id(508),
        "document",
        big,
        "application/pdf",
        "",
        Some("planos.pdf"),
    );
    wait_for("the document in the transcript", Duration::from_secs(20), || async {
        inbox_cell(&h, 508, "Conversación").contains("▸ [document] /media/")
    })
    .await;
    let link = media_link(inbox_cell(&h, 508, "Conversación").lines().last().unwrap_or_default());
    let base = format!("http://{}", h.running().webhook_addr());
    let client = reqwest::Client::new();
    wait_for("the link says it was not kept", Duration::from_secs(20), || async {
        client.get(format!("{base}{link}")).send().await.expect("get").status() == 410
    })
    .await;
    let why = client.get(format!("{base}{link}")).send().await.expect("get").text().await.unwrap_or_default();
    assert!(why.contains("not kept: the file is 17000000 bytes, over the 16000000-byte cap"), "{why}");
    assert_eq!(h.sandbox.meta().media_downloads(), 0, "refused from its announced size, never downloaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_twilio_a_photo_is_fetched_with_the_account_credentials() {
    let mut h = with_inbox(&[(509, "Inés Ruiz")], SHEET).await;
    h.vendor = crate::harness::Vendor::Twilio;
    h.user(509, false, None);
    h.start().await;
    h.says(509, "AGENTE", None);
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, 509, "Estado") == "open" }).await;
    let photo = recado::sandbox::meta::sample_jpeg(30_000);
    h.sandbox.twilio().user_sends_media(&e164(509), "image", photo.clone(), "image/jpeg", "El poste caído");
    wait_for("the photo in the transcript", Duration::from_secs(20), || async {
        inbox_cell(&h, 509, "Conversación").contains("▸ [image] El poste caído /media/")
    })
    .await;
    let link = media_link(inbox_cell(&h, 509, "Conversación").lines().last().unwrap_or_default());
    let base = format!("http://{}", h.running().webhook_addr());
    let client = reqwest::Client::new();
    wait_for("the photo served", Duration::from_secs(20), || async {
        let r = client.get(format!("{base}{link}")).send().await.expect("get");
        r.status() == 200 && r.bytes().await.is_ok_and(|b| b.to_vec() == photo)
    })
    .await;
    assert_eq!(h.sandbox.twilio().media_downloads(), 1);
    // Twilio's media address itself refuses a request without the credentials.
    let media_url = h
        .sandbox
        .twilio()
        .received()
        .iter()
        .rev()
        .find_map(|m| m.media_urls.first().cloned())
        .expect("the emulator kept the media URL");
    assert_eq!(client.get(&media_url).send().await.expect("get").status(), 401);

    // A location and a voice note, as Twilio posts them.
    h.sandbox.twilio().user_sends_location(&e164(509), -33.4372, -70.6506, "Plaza", "Av. Principal 1");
    wait_for("the location in the transcript", Duration::from_secs(20), || async {
        inbox_cell(&h, 509, "Conversación")
            .contains("▸ [location] -33.4372,-70.6506 Plaza, Av. Principal 1 https://www.openstreetmap.org/")
    })
    .await;
    let voice = b"OggS voice note".to_vec();
    h.sandbox.twilio().user_sends_media(&e164(509), "audio", voice.clone(), "audio/ogg", "");
    wait_for("the voice note fetched", Duration::from_secs(20), || async {
        inbox_cell(&h, 509, "Conversación").contains("▸ [audio] /media/") && h.sandbox.twilio().media_downloads() == 2
    })
    .await;

    // The person blocked the business at Twilio: the reply is refused (21610), and the
    // hand-off ends with nothing more sent.
    h.sandbox.twilio().inject(recado::sandbox::TwilioFault {
        code: 21610,
        http_status: 400,
        count: 1,
        mode: None,
        to: Some(e164(509)),
        delay_ms: None,
    });
    staff_edit(&h, 509, "Respuesta", json!("Hola Inés, ¿sigue caído el poste?"));
    wait_for("the hand-off closed", Duration::from_secs(20), || async {
        inbox_cell(&h, 509, "Estado") == "closed" && inbox_cell(&h, 509, "Estado respuesta").starts_with("skipped")
    })
    .await;
    h.quiesce().await;
    let sent = h.sandbox.twilio().sent();
    assert!(!sent.iter().any(|m| m.body.contains("sigue caído")), "nothing reached a person who opted out");
}

/// The inbox is a Salesforce Case per hand-off (the participants stay in the sheet): recado
/// creates the Case (upserted on its External ID), staff answer in a field of it and close
/// it by its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_can_be_a_salesforce_case_answered_and_closed_by_staff() {
    use recado::sandbox::salesforce::{FieldDef, FieldKind, ObjectDef};
    let mut h = with_inbox(&[(510, "Julia Soto")], SHEET).await;
    h.sandbox.salesforce().define_object(ObjectDef::new(
        "Case",
        "500",
        vec![
            FieldDef::new("Recado_Key__c", FieldKind::String).with_length(20).external_id(),
            FieldDef::new("SuppliedPhone", FieldKind::Phone).with_length(40),
            FieldDef::new("Status", FieldKind::Picklist).with_length(40),
            FieldDef::new("Subject", FieldKind::String).with_length(255),
            FieldDef::new("Description", FieldKind::Textarea).with_length(32_000),
            FieldDef::new("Recado_Abierta__c", FieldKind::Datetime),
            FieldDef::new("Recado_Estado__c", FieldKind::String).with_length(80),
            FieldDef::new("Recado_Registro__c", FieldKind::String).with_length(255),
            FieldDef::new("Respuesta__c", FieldKind::Textarea).with_length(4_000),
            FieldDef::new("Asignada__c", FieldKind::String).with_length(80),
            FieldDef::new("Estado_Respuesta__c", FieldKind::String).with_length(40),
        ],
    ));
    let key = h.dir.path().join("salesforce.key");
    std::fs::write(&key, recado::sandbox::keys::PRIVATE_KEY_PEM).expect("key written");
    h.extra_source = format!(
        r#"  - id: bandeja
    type: salesforce
    login_url: "{base}"
    api_version: "62.0"
    object: Case
    key_field: Recado_Key__c
    fields: [Status, Subject]
    phone_field: SuppliedPhone
    default_region: CL
    poll_interval: 150ms
    flush_interval: 100ms
    deletions_every: 2m
    auth:
      flow: jwt_bearer
      consumer_key: "{consumer}"
      username: "{user}"
      private_key_file: "{key}"
    write_back:
      status: Estado_Respuesta__c
"#,
        base = h.sandbox.salesforce_url(),
        consumer = recado::sandbox::salesforce::SANDBOX_CONSUMER_KEY,
        user = recado::sandbox::salesforce::SANDBOX_USERNAME,
        key = key.display(),
    );
    let start = h.extra_top.find("  fields:\n    opened_at").expect("the fields");
    h.extra_top.truncate(start);
    h.extra_top.push_str(
        "  close_values: [Closed]\n  fields:\n    opened_at: Recado_Abierta__c\n    record: Recado_Registro__c\n    topic: Subject\n    transcript: Description\n    state: Recado_Estado__c\n    assigned: Asignada__c\n    reply: Respuesta__c\n    close: Status\n",
    );
    h.user(510, false, None);
    h.start().await;
    h.says(510, "AGENTE", None);
    let case = || h.sandbox.salesforce().records("Case").into_iter().next();
    let text =
        |c: &serde_json::Map<String, Value>, f: &str| c.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    wait_for("the Case", Duration::from_secs(20), || async {
        case().is_some_and(|c| text(&c, "Recado_Estado__c") == "open" && text(&c, "Description").contains("▸ AGENTE"))
    })
    .await;
    let c = case().unwrap();
    assert!(text(&c, "Recado_Key__c").starts_with("H-"));
    assert_eq!(text(&c, "SuppliedPhone"), e164(510));
    assert_eq!(text(&c, "Recado_Registro__c"), "inscripciones/510");
    let id = text(&c, "Id");
    let set = |f: Value| {
        h.sandbox.salesforce().update("Case", &id, f.as_object().cloned().unwrap_or_default()).expect("staff edit")
    };
    set(json!({"Asignada__c": "Pablo", "Respuesta__c": "Hola Julia, ¿en qué te ayudo?"}));
    wait_texts(&h, 510, 2, "the staff reply").await;
    assert_eq!(texts_to(&h, 510)[1], "Hola Julia, ¿en qué te ayudo?");
    wait_for("the reply taken from the Case", Duration::from_secs(20), || async {
        case().is_some_and(|c| {
            text(&c, "Respuesta__c").is_empty()
                && text(&c, "Description").ends_with("◂ Hola Julia, ¿en qué te ayudo? — Pablo")
                && ["sent", "delivered", "read"].contains(&text(&c, "Estado_Respuesta__c").as_str())
        })
    })
    .await;
    set(json!({"Status": "Closed"}));
    wait_texts(&h, 510, 3, "the closing answer").await;
    wait_for("the Case closed by recado too", Duration::from_secs(20), || async {
        case().is_some_and(|c| text(&c, "Recado_Estado__c") == "closed")
    })
    .await;
    h.says(510, "hola", None);
    wait_texts(&h, 510, 4, "the bot again").await;
    assert_eq!(texts_to(&h, 510)[3], "Hola, ¿en qué te ayudamos?");
    assert_eq!(h.sandbox.salesforce().records("Case").len(), 1, "one Case");
}

/// A rule's template whose header is a document: the file's address goes in the header, and
/// Meta's emulator refuses a header the approved template does not have, as Meta does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_with_a_document_header_carries_the_file_and_a_header_the_template_lacks_is_refused() {
    let mut h =
        Harness::new(vec![row(511, "Karla Díaz", "Sí", "Inscrito"), row(512, "Luis Vera", "Sí", "Inscrito")]).await;
    h.sandbox
        .meta()
        .add_template(recado::sandbox::meta::TemplateDef::new("requisitos", "es", 1, false).with_header("DOCUMENT"));
    h.sandbox.meta().add_template(recado::sandbox::meta::TemplateDef::new("aviso_simple", "es", 1, false));
    h.extra_rules = r#"  - id: requisitos
    source: inscripciones
    when: { changed: Estado, to: Aprobado }
    provider: whatsapp
    template:
      name: requisitos
      language: es
      body: ["{{ Nombre }}"]
      header: { document: "https://muni.example/tramites/{{ ID }}.pdf", filename: "Requisitos.pdf" }
  - id: aviso
    source: inscripciones
    when: { changed: Estado, to: Avisado }
    provider: whatsapp
    template:
      name: aviso_simple
      language: es
      body: ["{{ Nombre }}"]
      header: { image: "https://muni.example/afiche.jpg" }
"#
    .into();
    h.user(511, false, None);
    h.user(512, false, None);
    h.start().await;
    h.edit("511", "Estado", json!("Aprobado"));
    wait_texts(&h, 511, 1, "the template with its document").await;
    let sent = &h.meta_sent_to(511)[0].body["template"]["components"][0];
    assert_eq!(sent["type"], "header");
    assert_eq!(sent["parameters"][0]["document"]["link"], "https://muni.example/tramites/511.pdf");
    assert_eq!(sent["parameters"][0]["document"]["filename"], "Requisitos.pdf");
    // The other template has no media header: Meta refuses it, and the row says why.
    h.edit("512", "Estado", json!("Avisado"));
    wait_for("the refusal on the row", Duration::from_secs(20), || async {
        h.cell("512", "Error WhatsApp").contains("132000")
    })
    .await;
    assert!(h.meta_sent_to(512).is_empty());
}

/// A template whose header is a file on this machine: the file is uploaded through Meta's
/// media API once for a campaign and every message carries its media id; a changed file is
/// uploaded again; a message with a media id Meta does not hold fails with the reason on the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_file_on_this_machine_is_uploaded_once_for_a_campaign_and_again_when_it_changes() {
    let people: Vec<Vec<Value>> = (521..=526).map(|n| row(n, "Vecina", "Sí", "Inscrito")).collect();
    let mut h = Harness::new(people).await;
    let file = h.dir.path().join("requisitos.pdf");
    std::fs::write(&file, b"%PDF-1.4 requisitos v1").unwrap();
    h.sandbox
        .meta()
        .add_template(recado::sandbox::meta::TemplateDef::new("requisitos", "es", 1, false).with_header("DOCUMENT"));
    h.extra_rules = format!(
        r#"  - id: requisitos
    source: inscripciones
    when: {{ changed: Estado, to: Aprobado }}
    provider: whatsapp
    template:
      name: requisitos
      language: es
      body: ["{{{{ Nombre }}}}"]
      header: {{ document: "{}", filename: "Requisitos.pdf" }}
"#,
        file.display()
    );
    for n in 521..=526 {
        h.user(n, false, None);
    }
    h.start().await;
    for n in 521..=523 {
        h.edit(&n.to_string(), "Estado", json!("Aprobado"));
    }
    for n in 521..=523 {
        wait_texts(&h, n, 1, "the template with its document").await;
    }
    assert_eq!(h.sandbox.meta().uploads(), 1, "one upload for the whole campaign");
    let ids: std::collections::BTreeSet<String> = (521..=523)
        .map(|n| {
            let p = &h.meta_sent_to(n)[0].body["template"]["components"][0]["parameters"][0]["document"];
            assert!(p.get("link").is_none(), "sent by id, not by address: {p}");
            assert_eq!(p["filename"], "Requisitos.pdf");
            p["id"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1, "the same media id in every message: {ids:?}");
    // The uploaded file is the one on disk, as Meta would serve it back.
    let id = ids.into_iter().next().unwrap();
    let details: Value = reqwest::Client::new()
        .get(format!("{}/meta/v23.0/{id}", h.sandbox.base_url()))
        .bearer_auth(h.sandbox.meta().settings().access_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(details["mime_type"], "application/pdf");
    // A new version of the file is uploaded again before the next message.
    std::fs::write(&file, b"%PDF-1.4 requisitos v2, con horario nuevo").unwrap();
    h.edit("524", "Estado", json!("Aprobado"));
    wait_texts(&h, 524, 1, "the template with the new document").await;
    assert_eq!(h.sandbox.meta().uploads(), 2, "the changed file uploaded once more");
    let p = &h.meta_sent_to(524)[0].body["template"]["components"][0]["parameters"][0]["document"];
    assert_ne!(p["id"].as_str(), Some(id.as_str()));
    // Meta drops the upload (30 days on): the next message fails with its reason on the row,
    // and the one after uploads the file again.
    h.sandbox.meta().expire_uploads();
    h.edit("525", "Estado", json!("Aprobado"));
    wait_for("the failure on the row", Duration::from_secs(20), || async {
        h.cell("525", "Error WhatsApp").contains("131053")
    })
    .await;
    h.edit("526", "Estado", json!("Aprobado"));
    wait_for("the next one delivered with a new upload", Duration::from_secs(20), || async {
        h.sandbox.meta().uploads() == 3 && h.cell("526", "Estado WhatsApp") == "delivered"
    })
    .await;
}

/// Someone who has not answered the privacy notice is shown it first: asking for a person
/// puts nothing of theirs in the inbox, and neither does a photo, until they accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_reaches_the_inbox_before_the_privacy_notice_is_accepted() {
    let mut h = with_inbox(&[], SHEET).await;
    h.extra_top = h.extra_top.replace(
        "inbound:\n",
        "inbound:\n  consent:\n    version: \"2026-11\"\n    notice: \"Guardamos tu número para ayudarte.\"\n    accept: \"Acepto\"\n    refuse: \"No acepto\"\n    refused: \"Entendido.\"\n",
    );
    h.user(513, false, None);
    h.start().await;
    h.says(513, "AGENTE", None);
    wait_texts(&h, 513, 1, "the privacy notice").await;
    assert!(texts_to(&h, 513)[0].contains("Guardamos tu número"), "{:?}", texts_to(&h, 513));
    h.sandbox.meta().user_sends_image(&crate::harness::wa_id(513), "foto");
    h.quiesce().await;
    assert_eq!(inbox_rows(&h).len(), 1, "no hand-off before the notice is answered: {:?}", inbox_rows(&h));
    let mut c = h.store().conn().await.expect("conn");
    let files: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM media").fetch_one(&mut *c).await.expect("count");
    assert_eq!(files, 0, "their photo is not fetched");
    drop(c);
    // The notice as last asked (a photo is no answer: it was asked again).
    wait_texts(&h, 513, 2, "the notice asked again").await;
    h.quiesce().await;
    let notice = h.meta_sent_to(513).last().cloned().expect("the notice");
    let (id, title) = recado::sandbox::meta::interactive_options(&notice)
        .into_iter()
        .find(|(_, t)| t == "Acepto")
        .expect("the notice's Acepto button");
    let before = h.meta_sent_to(513).len();
    h.sandbox.meta().user_picks(&crate::harness::wa_id(513), &id, &title, false, Some(&notice.wamid));
    wait_texts(&h, 513, before + 1, "the menu after accepting").await;
    assert_eq!(texts_to(&h, 513).last().map(String::as_str), Some("Hola, ¿en qué te ayudamos?"));
    h.says(513, "AGENTE", None);
    wait_for("the hand-off", Duration::from_secs(20), || async { inbox_cell(&h, 513, "Estado") == "open" }).await;
}

/// A reply that waited for the person (outside the window) is not sent once staff close the
/// hand-off, and its status says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_waiting_for_the_person_are_dropped_with_a_reason_when_staff_close() {
    let mut h = with_inbox(&[(514, "Marta Gil")], SHEET).await;
    h.user(514, false, None);
    h.start().await;
    h.says(514, "PERSONA", None);
    wait_for("the inbox row", Duration::from_secs(20), || async { inbox_cell(&h, 514, "Estado") == "open" }).await;
    let day = Duration::from_secs(25 * 3600);
    h.clock.advance(day);
    h.sandbox.meta().age_windows(day);
    staff_edit(&h, 514, "Respuesta", json!("Hola Marta, te llamamos mañana."));
    wait_for("the reply waiting", Duration::from_secs(20), || async {
        inbox_cell(&h, 514, "Estado") == "waiting for the person to write"
    })
    .await;
    staff_edit(&h, 514, "Cerrar", json!(true));
    wait_for("closed, the waiting reply not sent", Duration::from_secs(20), || async {
        inbox_cell(&h, 514, "Estado") == "closed" && inbox_cell(&h, 514, "Estado respuesta") == "skipped"
    })
    .await;
    h.says(514, "hola", None);
    h.quiesce().await;
    assert!(
        !texts_to(&h, 514).iter().any(|t| t.contains("te llamamos mañana")),
        "the dropped reply never goes out: {:?}",
        texts_to(&h, 514)
    );
}
