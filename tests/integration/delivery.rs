//! Sending: baseline, new rows, field changes, replies and opt-outs, retries, restarts.
//!
//! The suite runs once per provider (`on_both!`): a rule switches provider by its
//! `provider:` alone, and every guarantee holds for each. Tests of one vendor's quirks say so.

use std::time::Duration;

use recado::domain::MessageState;
use recado::sandbox::{MetaFault, MetaSettings};
use serde_json::json;

use crate::harness::{row, wa_id, wait_for, Fault, Harness, Vendor};

/// Runs `async fn name(vendor: Vendor)` as `name::meta` and `name::twilio`.
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use crate::harness::Vendor;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn meta() {
                super::$name(Vendor::Meta).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn twilio() {
                super::$name(Vendor::Twilio).await
            }
        }
    )*};
}

on_both!(
    first_start_sends_nothing,
    fixing_a_row_of_the_first_read_sends_no_welcome,
    new_consenting_row_gets_exactly_one_template,
    field_change_to_trigger_value_sends_once_and_only_once,
    a_reply_and_an_opt_out_are_written_back_and_the_opted_out_get_nothing_more,
    duplicated_and_reordered_status_webhooks_leave_the_right_final_status,
    throttling_and_server_errors_are_retried_and_the_message_is_sent_once,
    a_permanent_error_fails_with_the_reason_on_the_row,
    restarting_with_the_same_store_neither_resends_nor_forgets,
    free_text_outside_the_window_uses_the_fallback_template,
    asynchronous_failures_are_classified_like_synchronous_ones,
    a_multi_line_cell_goes_out_on_one_line,
    sends_that_never_get_an_answer_stop_at_max_attempts,
    a_send_that_never_got_an_answer_is_sent_again_after_the_grace_once,
);

async fn first_start_sends_nothing(vendor: Vendor) {
    let mut h = Harness::on(vendor, (1..=5).map(|i| row(i, &format!("P{i}"), "Sí", "Activo")).collect()).await;
    h.start().await;
    h.quiesce().await;
    assert_eq!(h.sent_count(), 0, "the baseline must not message existing rows");
    assert!(h.messages().await.is_empty());
    assert_eq!(h.cell("1", "Estado WhatsApp"), "");
    h.stop().await;
}

/// A row that was already there at the first read is never "new": giving consent or fixing the
/// phone later sends it no welcome (it still gets what its changes call for), while a row that
/// appeared later and was blocked gets its welcome once it is fixed, after a restart too.
async fn fixing_a_row_of_the_first_read_sends_no_welcome(vendor: Vendor) {
    let mut no_phone = row(2, "Berta", "Sí", "Activo");
    no_phone[2] = json!("sin número");
    let mut h = Harness::on(vendor, vec![row(1, "Amparo", "No", "Activo"), no_phone]).await;
    h.start().await;
    h.add_row(row(3, "Carla", "No", "Activo"));
    h.wait_cell("3", "Estado WhatsApp", "skipped").await;
    h.stop().await;
    h.start().await;
    // An unrelated edit first: the row stays a row of the first read after it changes.
    h.edit("2", "Nombre", json!("Berta B."));
    h.quiesce_polls(1).await;
    h.edit("1", "Consentimiento", json!("Sí"));
    h.edit("2", "Teléfono", json!(crate::harness::phone(2)));
    h.edit("3", "Consentimiento", json!("Sí"));
    wait_for("the welcome of row 3", Duration::from_secs(20), || async { !h.sent_to(3).is_empty() }).await;
    h.edit("1", "Estado", json!("Egresado"));
    wait_for("the survey of row 1", Duration::from_secs(20), || async { !h.sent_to(1).is_empty() }).await;
    h.quiesce().await;
    let names = |n: u32| h.sent_to(n).iter().map(|m| m.template.clone().unwrap_or_default()).collect::<Vec<_>>();
    assert_eq!(names(1), ["encuesta_seguimiento"], "consent given later: no welcome, but the survey");
    assert!(names(2).is_empty(), "a corrected phone on a row of the first read sends nothing");
    assert_eq!(names(3), ["confirmacion_inscripcion"], "a row blocked when it appeared gets its welcome");
    h.stop().await;
}

async fn new_consenting_row_gets_exactly_one_template(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![row(1, "Ana", "Sí", "Activo")]).await;
    h.user(7, true, None);
    h.start().await;
    h.add_row(row(7, "Josefa Castro", "Sí", "Activo"));
    h.wait_cell("7", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    let sent = h.sent_to(7);
    assert_eq!(sent.len(), 1, "exactly one message");
    assert_eq!(sent[0].template.as_deref(), Some("confirmacion_inscripcion"));
    assert_eq!(sent[0].params, ["Josefa Castro", "Soldadura", "Luis Pérez"]);
    assert_eq!(sent[0].callback_data.as_deref(), Some(h.messages().await[0].id.to_string().as_str()));
    assert!(!h.cell("7", "Fecha estado").is_empty(), "status time written");
    assert_eq!(h.cell("7", "Error WhatsApp"), "");
    let messages = h.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].state, MessageState::Read);
    assert_eq!(messages[0].provider_message_id.as_deref(), Some(sent[0].id.as_str()));
    assert!(h.sent_to(1).is_empty());
    h.stop().await;
}

async fn field_change_to_trigger_value_sends_once_and_only_once(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![row(3, "Valentina", "Sí", "Activo"), row(4, "Matías", "Sí", "Activo")]).await;
    h.user(3, true, None);
    h.start().await;
    h.edit("3", "Estado", json!("Egresado"));
    h.wait_cell("3", "Estado WhatsApp", "read").await;
    // Back and forth, and an unrelated edit: no second survey.
    h.edit("3", "Estado", json!("Activo"));
    h.quiesce().await;
    h.edit("3", "Estado", json!("Egresado"));
    h.edit("3", "Mentor", json!("Otra persona"));
    h.quiesce().await;
    let sent = h.sent_to(3);
    assert_eq!(sent.len(), 1, "one survey only: {sent:?}");
    assert_eq!(sent[0].template.as_deref(), Some("encuesta_seguimiento"));
    assert_eq!(sent[0].params, ["Valentina", "viewform?entry.1=3"], "the URL button's suffix last");
    assert!(h.sent_to(4).is_empty());
    h.stop().await;
}

async fn a_reply_and_an_opt_out_are_written_back_and_the_opted_out_get_nothing_more(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![]).await;
    h.user(10, true, Some("gracias!"));
    h.user(11, true, Some("Baja"));
    h.start().await;
    h.add_row(row(10, "Josefa", "Sí", "Activo"));
    h.add_row(row(11, "Sofía", "Sí", "Activo"));
    h.wait_cell("10", "Última respuesta", "gracias!").await;
    assert!(!h.cell("10", "Fecha respuesta").is_empty());
    h.wait_cell("11", "Consentimiento", "BAJA").await;
    assert_eq!(h.cell("11", "Última respuesta"), "Baja");
    // Graduating the person who opted out sends nothing.
    h.edit("11", "Estado", json!("Egresado"));
    h.edit("10", "Estado", json!("Egresado"));
    wait_for("the other graduate's survey", Duration::from_secs(20), || async { h.sent_to(10).len() == 2 }).await;
    h.quiesce().await;
    assert_eq!(h.sent_to(11).len(), 1, "nothing after BAJA");
    assert_eq!(h.cell("11", "Estado WhatsApp"), "skipped");
    assert!(h.cell("11", "Error WhatsApp").starts_with("not sent"), "{}", h.cell("11", "Error WhatsApp"));
    let mut c = h.store().conn().await.unwrap();
    let contact = recado::store::contact(&mut c, "+56987650011").await.unwrap().unwrap();
    drop(c);
    assert!(contact.opted_out_at.is_some());
    h.stop().await;
}

async fn duplicated_and_reordered_status_webhooks_leave_the_right_final_status(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![]).await;
    h.duplicate_and_reorder_webhooks();
    for n in 20..25 {
        h.user(n, true, None);
    }
    h.user(25, false, None);
    h.start().await;
    for n in 20..=25 {
        h.add_row(row(n, &format!("P{n}"), "Sí", "Activo"));
    }
    for n in 20..25 {
        h.wait_cell(&n.to_string(), "Estado WhatsApp", "read").await;
    }
    h.wait_cell("25", "Estado WhatsApp", "delivered").await;
    // Late `delivered` webhooks (sent after `read`) must not move anything back.
    h.quiesce().await;
    h.quiesce().await;
    for n in 20..25 {
        assert_eq!(h.cell(&n.to_string(), "Estado WhatsApp"), "read", "row {n}");
    }
    let states: Vec<MessageState> = h.messages().await.iter().map(|m| m.state).collect();
    assert_eq!(states.iter().filter(|s| **s == MessageState::Read).count(), 5);
    let (deliveries, _) = h.delivery_stats();
    assert!(deliveries >= 2 * 17, "every webhook was delivered twice ({deliveries})");
    h.stop().await;
}

async fn throttling_and_server_errors_are_retried_and_the_message_is_sent_once(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![]).await;
    h.user(30, true, None);
    h.start().await;
    h.fault(Fault::Throttled, 2, 30);
    h.fault(Fault::ServerError, 1, 30);
    h.add_row(row(30, "Tomás", "Sí", "Activo"));
    wait_for("the message to get through", Duration::from_secs(30), || async {
        h.cell("30", "Estado WhatsApp") == "read"
    })
    .await;
    h.quiesce().await;
    assert_eq!(h.sent_to(30).len(), 1, "accepted exactly once");
    let m = &h.messages().await[0];
    assert_eq!(m.state, MessageState::Read);
    assert!(m.attempts >= 2, "the 5xx counted as an attempt ({})", m.attempts);
    h.stop().await;
}

async fn a_permanent_error_fails_with_the_reason_on_the_row(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![]).await;
    h.start().await;
    let refused = h.fault(Fault::Refused, 1, 31).to_string();
    let undeliverable = h.fault(Fault::UndeliverableLater, 1, 32).to_string();
    h.add_row(row(31, "Isidora", "Sí", "Activo"));
    h.add_row(row(32, "Joaquín", "Sí", "Activo"));
    h.wait_cell("31", "Estado WhatsApp", "failed").await;
    h.wait_cell("32", "Estado WhatsApp", "failed").await;
    assert!(h.cell("31", "Error WhatsApp").contains(&refused), "{}", h.cell("31", "Error WhatsApp"));
    assert!(h.cell("32", "Error WhatsApp").contains(&undeliverable), "{}", h.cell("32", "Error WhatsApp"));
    h.quiesce().await;
    assert_eq!(h.sent_count(), 1, "the sync refusal is not retried; the async one was accepted once");
    h.stop().await;
}

async fn restarting_with_the_same_store_neither_resends_nor_forgets(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![row(1, "Ana", "Sí", "Activo")]).await;
    h.user(40, true, None);
    h.user(41, true, None);
    h.start().await;
    h.add_row(row(40, "Lucas", "Sí", "Activo"));
    h.wait_cell("40", "Estado WhatsApp", "read").await;
    h.stop().await;

    // While the daemon is down: a new row, a graduation, and a reply the provider could not
    // deliver.
    h.add_row(row(41, "Emilia", "Sí", "Activo"));
    h.edit("40", "Estado", json!("Egresado"));
    let first = h.sent_to(40)[0].id.clone();
    let (_, failures_before) = h.delivery_stats();
    h.says(40, "¿cuándo empieza?", Some(&first));
    wait_for("the provider to try the reply", Duration::from_secs(10), || async {
        h.delivery_stats().1 > failures_before
    })
    .await;

    h.start().await;
    h.wait_cell("41", "Estado WhatsApp", "read").await;
    // Meta retries the reply for days; Twilio gives up after its connection overrides' retries,
    // and recado reads it from the Messages list when it starts again.
    h.wait_cell("40", "Última respuesta", "¿cuándo empieza?").await;
    wait_for("the survey after the restart", Duration::from_secs(20), || async { h.sent_to(40).len() == 2 }).await;
    h.quiesce().await;
    assert_eq!(h.sent_to(40).len(), 2, "confirmation once, survey once");
    assert_eq!(h.sent_to(41).len(), 1);
    assert!(h.sent_to(1).is_empty(), "the baseline row is still not new");
    h.stop().await;
    h.start().await;
    h.quiesce().await;
    assert_eq!(h.sent_count(), 3, "a second restart sends nothing");
    h.stop().await;
}

async fn free_text_outside_the_window_uses_the_fallback_template(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![]).await;
    let yaml_rules = r#"
  - id: aviso
    source: inscripciones
    when: { changed: Estado, to: Aviso }
    provider: whatsapp
    text: "Hola {{ Nombre }}, te esperamos mañana."
    fallback_template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Nombre }}", "{{ Curso }}", "{{ Mentor }}"]
  - id: nota
    source: inscripciones
    when: { changed: Estado, to: Nota }
    provider: whatsapp
    text: "Nota para {{ Nombre }}"
"#;
    h.extra_rules = yaml_rules.into();
    h.user(50, true, None);
    h.user(51, true, None);
    h.add_row(row(50, "Antonia", "Sí", "Activo"));
    h.add_row(row(51, "Vicente", "Sí", "Activo"));
    h.start().await;
    h.quiesce().await;
    // 50 wrote to us recently: free text goes. 51 did not: fallback template.
    h.says(50, "hola", None);
    wait_for("the inbound message to be stored", Duration::from_secs(10), || async {
        let mut c = h.store().conn().await.unwrap();
        recado::store::inbound_count(&mut c).await.unwrap() == 1
    })
    .await;
    h.edit("50", "Estado", json!("Aviso"));
    h.edit("51", "Estado", json!("Aviso"));
    wait_for("both notices", Duration::from_secs(20), || async {
        h.sent_to(50).len() == 1 && h.sent_to(51).len() == 1
    })
    .await;
    assert_eq!(h.sent_to(50)[0].text.as_deref(), Some("Hola Antonia, te esperamos mañana."));
    assert_eq!(h.sent_to(51)[0].template.as_deref(), Some("confirmacion_inscripcion"));
    // No fallback: skipped with the reason, nothing sent.
    h.edit("51", "Estado", json!("Nota"));
    h.wait_cell("51", "Estado WhatsApp", "skipped").await;
    assert!(h.cell("51", "Error WhatsApp").contains("24-hour window"));
    assert_eq!(h.sent_to(51).len(), 1);
    h.stop().await;
}

/// Meta: its webhooks name people by WhatsApp id, which may differ from the number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_from_a_whatsapp_id_that_differs_from_the_number_reaches_the_row() {
    // Brazilian mobiles: we send to +55 11 9xxxx-xxxx; WhatsApp answers as 55 11 xxxx-xxxx.
    let mut h = Harness::new(vec![]).await;
    h.start().await;
    let mut r = row(90, "João", "Sí", "Activo");
    r[2] = json!("+55 11 98765-4321");
    h.sandbox.meta().add_user(recado::sandbox::SimUser {
        wa_id: "551187654321".into(),
        reply: Some("obrigado".into()),
        read_after_ms: 50,
        reply_after_ms: 50,
        ..Default::default()
    });
    h.add_row(r);
    h.wait_cell("90", "Última respuesta", "obrigado").await;
    let m = &h.messages().await[0];
    assert_eq!(m.phone.as_str(), "+5511987654321");
    assert_eq!(m.recipient_id.as_deref(), Some("551187654321"));
    let mut c = h.store().conn().await.unwrap();
    let contact = recado::store::contact_by_user_id(&mut c, "551187654321").await.unwrap().unwrap();
    drop(c);
    assert_eq!(contact.phone, "+5511987654321");
    assert!(contact.last_inbound_at.is_some(), "the window is tracked for the number we send to");
    h.stop().await;
}

/// Meta reports some failures only later, in a `failed` status webhook. They are classified
/// like synchronous answers: a closed window switches free text to its template, a throughput
/// or pair-rate failure is sent again — never failed outright.
async fn asynchronous_failures_are_classified_like_synchronous_ones(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![row(52, "Rocío", "Sí", "Activo"), row(53, "Pablo", "Sí", "Activo")]).await;
    h.extra_rules = r#"
  - id: aviso
    source: inscripciones
    when: { changed: Estado, to: Aviso }
    provider: whatsapp
    text: "Hola {{ Nombre }}, te esperamos mañana."
    fallback_template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Nombre }}", "{{ Curso }}", "{{ Mentor }}"]
"#
    .into();
    h.user(52, true, None);
    h.user(53, true, None);
    h.start().await;
    // 52 wrote to us, so recado may send free text; Meta then says the window is closed.
    h.says(52, "hola", None);
    wait_for("the inbound message", Duration::from_secs(10), || async {
        let mut c = h.store().conn().await.unwrap();
        recado::store::inbound_count(&mut c).await.unwrap() == 1
    })
    .await;
    h.fault(Fault::WindowClosedLater, 1, 52);
    h.fault(Fault::ThrottledLater, 1, 53);
    h.edit("52", "Estado", json!("Aviso"));
    h.edit("53", "Estado", json!("Egresado"));
    // 53's throttled send is due again after Meta's pause: move time on rather than wait.
    wait_for("both first attempts", Duration::from_secs(20), || async {
        h.sent_to(52).len() == 1 && h.sent_to(53).len() == 1
    })
    .await;
    wait_for("53 queued again", Duration::from_secs(20), || async {
        h.messages().await.iter().any(|m| m.record_key.0 == "53" && m.state == MessageState::Queued)
    })
    .await;
    h.clock.advance(Duration::from_secs(5));
    h.wait_cell("52", "Estado WhatsApp", "read").await;
    h.wait_cell("53", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    let to_52 = h.sent_to(52);
    assert_eq!(to_52.len(), 2, "the text, then its fallback template");
    assert!(to_52[0].text.is_some());
    assert!(to_52[1].template.is_some());
    assert_eq!(h.sent_to(53).len(), 2, "the throttled survey was sent again, once");
    h.stop().await;
}

/// Meta: a send whose answer was lost, then downtime longer than the grace: Meta's retried
/// status webhooks settle it after the restart, and it is not sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_in_doubt_across_downtime_is_settled_by_the_providers_webhooks_not_sent_twice() {
    let settings = MetaSettings {
        status_delay_ms: 30,
        messages_per_second: 1000.0,
        webhook_time_scale: 0.0005,
        ..Default::default()
    };
    let mut h = Harness::with_settings(vec![], settings).await;
    h.extra_provider = "    call_timeout: 1s\n".into();
    h.user(54, true, None);
    h.start().await;
    // While recado is away, Meta's webhooks cannot reach it (and are retried later).
    h.sandbox.meta().update_settings(|s| s.webhook_url = Some("http://127.0.0.1:9/webhooks/whatsapp".into()));
    h.sandbox.meta().inject(MetaFault {
        code: 0,
        http_status: 400,
        count: 1,
        mode: Some("drop".into()),
        to: Some(wa_id(54)),
        delay_ms: None,
    });
    h.add_row(row(54, "Inés", "Sí", "Activo"));
    wait_for("Meta to accept the message", Duration::from_secs(20), || async { h.meta_sent_to(54).len() == 1 }).await;
    wait_for("the send to be in doubt", Duration::from_secs(20), || async {
        h.messages().await.iter().any(|m| m.record_key.0 == "54" && m.state == MessageState::Sending && m.attempts == 1)
    })
    .await;
    h.stop().await;
    // Twenty minutes down: longer than the grace (15 min), so only a grace that also counts
    // from the process's start keeps recado from sending again before Meta's retries arrive.
    h.clock.advance(Duration::from_secs(20 * 60));
    h.start().await;
    h.wait_cell("54", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    assert_eq!(h.meta_sent_to(54).len(), 1, "sent once: the webhooks settled it");
    let m = h.messages().await.into_iter().find(|m| m.record_key.0 == "54").unwrap();
    assert_eq!(m.state, MessageState::Read);
    assert!(m.provider_message_id.is_some());
    h.stop().await;
}

/// Stopping while a send is in flight (held by the Meta emulator): it finishes, its outcome is
/// recorded, and the last write-back carries it to the sheet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_lets_the_send_in_flight_finish_and_writes_its_outcome_back() {
    let mut h = Harness::new(vec![]).await;
    h.start().await;
    h.sandbox.meta().hold_sends();
    h.add_row(row(55, "Julia", "Sí", "Activo"));
    wait_for("the send to be in flight", Duration::from_secs(20), || async { h.sandbox.meta().held() == 1 }).await;
    let app = h.app.take().unwrap();
    let webhooks = format!("http://{}/healthz", app.webhook_addr());
    let health = std::sync::Arc::clone(&app.ctx().health);
    let flusher = format!("flusher:spreadsheet {}", crate::harness::SHEET);
    let stopping = tokio::spawn(app.stop());
    // Intake has stopped (the webhook server is closed) while the send still waits, and
    // write-back is still running: it stops only after the senders.
    wait_for("intake to stop", Duration::from_secs(20), || async { reqwest::get(&webhooks).await.is_err() }).await;
    let rounds = health.rounds(&flusher);
    wait_for("write-back to keep running while the send is in flight", Duration::from_secs(20), || async {
        health.rounds(&flusher) >= rounds + 2
    })
    .await;
    h.sandbox.meta().release();
    tokio::time::timeout(Duration::from_secs(30), stopping).await.expect("stops").expect("no panic");
    assert_eq!(h.sent_to(55).len(), 1);
    assert_eq!(h.cell("55", "Estado WhatsApp"), "sent", "the last flush saw the send's outcome");
}

/// An opt-out that arrives while a message to that person waits for its turn stops it, however
/// late; and a BAJA from someone never messaged reaches their row's consent column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_stops_a_message_already_waiting_to_be_sent() {
    let mut h = Harness::new(vec![]).await;
    h.extra_provider = "    max_in_flight: 1\n".into();
    h.user(56, true, None);
    h.user(57, true, None);
    h.start().await;
    h.sandbox.meta().hold_sends();
    h.add_row(row(56, "Carmen", "Sí", "Activo"));
    wait_for("56's send in flight", Duration::from_secs(20), || async { h.sandbox.meta().held() == 1 }).await;
    h.add_row(row(57, "Raúl", "Sí", "Activo"));
    wait_for("57's message waiting for a free slot", Duration::from_secs(20), || async {
        h.messages().await.iter().any(|m| m.record_key.0 == "57" && m.state == MessageState::Sending)
    })
    .await;
    // 57 has never been messaged and writes BAJA.
    h.sandbox.meta().user_says(&wa_id(57), "Baja", None);
    wait_for("57's opt-out", Duration::from_secs(20), || async {
        let mut c = h.store().conn().await.unwrap();
        recado::store::contact(&mut c, &crate::harness::e164(57))
            .await
            .unwrap()
            .is_some_and(|c| c.opted_out_at.is_some())
    })
    .await;
    h.sandbox.meta().release();
    h.wait_cell("57", "Estado WhatsApp", "skipped").await;
    h.wait_cell("57", "Consentimiento", "BAJA").await;
    h.wait_cell("56", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    assert!(h.sent_to(57).is_empty(), "nothing after BAJA, however late");
    h.stop().await;
}

/// A multi-line cell (Alt+Enter, a pasted address) as a template parameter: Meta refuses line
/// breaks (132018), so recado sends it on one line.
async fn a_multi_line_cell_goes_out_on_one_line(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![]).await;
    h.user(58, true, None);
    h.start().await;
    h.add_row(row(58, "Ana María\nSoto    Vera\t(apoderada)", "Sí", "Activo"));
    h.wait_cell("58", "Estado WhatsApp", "read").await;
    let sent = h.sent_to(58);
    assert_eq!(sent[0].params[0], "Ana María Soto Vera (apoderada)");
    h.stop().await;
}

/// A long cell in a template whose own text is long: parameters are cut to what the template's
/// text leaves of WhatsApp's 1,024 characters, so Meta does not refuse it (132005). Told
/// nothing about the template's text, recado assumes 200 characters, and Meta's refusal of a
/// longer one is written on the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_parameters_fit_what_the_templates_own_text_leaves() {
    let mut long_course = row(1, "Carmen", "Sí", "Activo");
    long_course[3] = json!("Curso de ".repeat(100));
    let mut other = long_course.clone();
    other[0] = json!(2);
    other[2] = json!(crate::harness::phone(2));
    let mut h = Harness::new(vec![long_course, other]).await;
    let mut aviso = recado::sandbox::meta::TemplateDef::new("aviso_largo", "es", 1, true);
    aviso.body_chars = 600;
    h.sandbox.meta().add_template(aviso);
    h.extra_rules = r#"
  - id: medido
    source: inscripciones
    when: { changed: Estado, to: Aviso }
    provider: whatsapp
    template:
      name: aviso_largo
      language: es
      body: ["{{ Curso }}"]
      button_url_suffix: "{{ ID }}"
      body_text_chars: 600
  - id: sin_medida
    source: inscripciones
    when: { changed: Estado, to: Aviso dos }
    provider: whatsapp
    template:
      name: aviso_largo
      language: es
      body: ["{{ Curso }}"]
      button_url_suffix: "{{ ID }}"
"#
    .into();
    h.user(1, true, None);
    h.user(2, true, None);
    h.start().await;
    h.edit("1", "Estado", json!("Aviso"));
    h.edit("2", "Estado", json!("Aviso dos"));
    h.wait_cell("1", "Estado WhatsApp", "read").await;
    let sent = h.sent_to(1);
    let param = sent[0].params[0].clone();
    assert!(param.chars().count() <= 1024 - 600, "{} characters", param.chars().count());
    assert!(param.ends_with('…'), "cut, and visibly so");
    h.wait_cell("2", "Estado WhatsApp", "failed").await;
    let error = h.cell("2", "Error WhatsApp");
    assert!(error.contains("too long"), "{error}");
    assert!(h.sent_to(2).is_empty(), "refused by Meta, not sent");
    h.stop().await;
}

/// Sends that never get an answer, again and again (the provider's webhooks do not reach
/// recado either): after `max_attempts` the message is failed with the reason, never sent
/// again every grace period for ever.
async fn sends_that_never_get_an_answer_stop_at_max_attempts(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![]).await;
    h.extra_provider = "    call_timeout: 1s\n    in_doubt_grace: 10m\n    max_attempts: 2\n".into();
    h.user(58, true, None);
    h.start().await;
    h.fault(Fault::NoAnswer, 100, 58);
    h.add_row(row(58, "Berta", "Sí", "Activo"));
    for attempt in 1..=2u32 {
        wait_for(&format!("attempt {attempt} to be in doubt"), Duration::from_secs(20), || async {
            h.messages().await.iter().any(|m| m.state == MessageState::Sending && m.attempts == attempt)
        })
        .await;
        h.clock.advance(Duration::from_secs(11 * 60));
    }
    h.wait_cell("58", "Estado WhatsApp", "failed").await;
    h.quiesce().await;
    let m = h.messages().await.into_iter().find(|m| m.record_key.0 == "58").unwrap();
    assert_eq!(m.attempts, 2);
    assert!(h.cell("58", "Error WhatsApp").contains("no answer"), "{}", h.cell("58", "Error WhatsApp"));
    h.clock.advance(Duration::from_secs(60 * 60));
    h.quiesce().await;
    let m = h.messages().await.into_iter().find(|m| m.record_key.0 == "58").unwrap();
    assert_eq!((m.state, m.attempts), (MessageState::Failed, 2), "not sent again");
    h.stop().await;
}

/// A send the provider never answered (and never received): after the provider's grace, with
/// no status to settle it (and, where the provider can be asked, no record of it there), it is
/// sent again — once.
async fn a_send_that_never_got_an_answer_is_sent_again_after_the_grace_once(vendor: Vendor) {
    let mut h = Harness::on(vendor, vec![]).await;
    h.extra_provider = "    call_timeout: 1s\n    in_doubt_grace: 10m\n".into();
    h.user(59, true, None);
    h.start().await;
    h.fault(Fault::NoAnswer, 1, 59);
    h.add_row(row(59, "Beatriz", "Sí", "Activo"));
    wait_for("the send to be in doubt", Duration::from_secs(20), || async {
        h.messages().await.iter().any(|m| m.record_key.0 == "59" && m.state == MessageState::Sending && m.attempts == 1)
    })
    .await;
    assert!(h.sent_to(59).is_empty(), "the provider never received it");
    // Not before the grace.
    h.clock.advance(Duration::from_secs(5 * 60));
    h.quiesce_polls(3).await;
    assert!(h.sent_to(59).is_empty(), "still waiting for the provider to say");
    h.clock.advance(Duration::from_secs(6 * 60));
    h.wait_cell("59", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    assert_eq!(h.sent_to(59).len(), 1);
    h.stop().await;
}

/// Twilio: the send is accepted and then the connection is reset, so recado never hears the
/// SID. Twilio has no idempotency key: recado asks the Messages list after the grace, finds the
/// message it sent, records it, and does not send it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_send_whose_connection_was_reset_is_found_in_the_messages_list_not_sent_twice() {
    let mut h = Harness::on(Vendor::Twilio, vec![]).await;
    h.extra_provider = "    in_doubt_grace: 10m\n    call_timeout: 1s\n".into();
    h.user(60, true, None);
    h.user(61, true, None);
    h.start().await;
    // Statuses cannot reach recado either: only the list can tell.
    h.sandbox.twilio().update_settings(|s| s.statuses = false);
    h.fault(Fault::AnswerLost, 1, 60);
    // And one that never reached Twilio at all: the list has nothing, so it is sent again.
    h.fault(Fault::NoAnswer, 1, 61);
    h.add_row(row(60, "Olga", "Sí", "Activo"));
    h.add_row(row(61, "Pedro", "Sí", "Activo"));
    // `sending` is committed before the call: Twilio may still be taking 60's request.
    wait_for("both sends in doubt, and Twilio holding 60's message", Duration::from_secs(20), || async {
        h.messages().await.iter().filter(|m| m.state == MessageState::Sending).count() == 2 && h.sent_to(60).len() == 1
    })
    .await;
    assert!(h.sent_to(61).is_empty(), "61's never reached Twilio");
    h.clock.advance(Duration::from_secs(11 * 60));
    h.wait_cell("60", "Estado WhatsApp", "sent").await;
    h.wait_cell("61", "Estado WhatsApp", "sent").await;
    h.quiesce().await;
    assert_eq!(h.sent_to(60).len(), 1, "found in the list: not sent again");
    assert_eq!(h.sent_to(61).len(), 1, "not in the list: sent again, once");
    let m = h.messages().await.into_iter().find(|m| m.record_key.0 == "60").unwrap();
    assert_eq!(m.provider_message_id.as_deref(), Some(h.sent_to(60)[0].id.as_str()));
    // Olga read it while recado could not hear: the next catch-up from the list tells, now
    // that the message's id is known.
    h.clock.advance(Duration::from_secs(11 * 60));
    h.wait_cell("60", "Estado WhatsApp", "read").await;
    h.stop().await;
}

/// Twilio: while the Messages list cannot be read (Twilio answering 500), a send in doubt is
/// neither sent again nor given up; once the list answers, it is found and recorded, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_in_doubt_is_not_sent_again_while_the_messages_list_cannot_be_read() {
    let mut h = Harness::on(Vendor::Twilio, vec![]).await;
    h.extra_provider = "    in_doubt_grace: 10m\n    call_timeout: 1s\n".into();
    h.start().await;
    h.sandbox.twilio().update_settings(|s| s.statuses = false);
    h.fault(Fault::AnswerLost, 1, 64);
    h.add_row(row(64, "Rosa", "Sí", "Activo"));
    // In doubt once its call has ended without an answer (while the call is in flight, the
    // dispatcher holds it: no lookup yet).
    wait_for("the send in doubt", Duration::from_secs(20), || async {
        let failed = h.running().ctx().health.get("provider:whatsapp").is_some_and(|c| c.failures >= 1);
        failed && h.messages().await.iter().any(|m| m.state == MessageState::Sending)
    })
    .await;
    h.sandbox.twilio().inject(recado::sandbox::TwilioFault {
        code: 20500,
        http_status: 500,
        count: 1000,
        mode: Some("list".into()),
        to: None,
        delay_ms: None,
    });
    h.clock.advance(Duration::from_secs(11 * 60));
    wait_for("the lookup to be tried and fail", Duration::from_secs(20), || async {
        let health = h.running().ctx().health.get("provider:whatsapp");
        health.and_then(|c| c.last_error).is_some_and(|e| e.contains("looking up a send in doubt"))
    })
    .await;
    // Asked again at the next check, and failing again: still nothing sent.
    let failures = || h.running().ctx().health.get("provider:whatsapp").map_or(0, |c| c.failures);
    let before = failures();
    h.clock.advance(Duration::from_secs(60));
    wait_for("a second lookup", Duration::from_secs(20), || async { failures() > before }).await;
    assert_eq!(h.sent_to(64).len(), 1, "not sent again on a lookup that failed");
    assert!(h.messages().await.iter().all(|m| m.state == MessageState::Sending), "still in doubt, not given up");
    h.sandbox.twilio().clear_faults();
    h.clock.advance(Duration::from_secs(60));
    h.wait_cell("64", "Estado WhatsApp", "sent").await;
    h.quiesce().await;
    assert_eq!(h.sent_to(64).len(), 1);
    h.stop().await;
}

/// Twilio: a send refused later for throughput (an async 63017) is queued again; if that
/// second send's answer is lost, the lookup must not take the failed first message for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_earlier_attempt_in_the_list_does_not_stand_for_a_send_in_doubt() {
    let mut h = Harness::on(Vendor::Twilio, vec![]).await;
    h.extra_provider = "    in_doubt_grace: 10m\n    call_timeout: 1s\n".into();
    h.start().await;
    h.fault(Fault::ThrottledLater, 1, 65);
    h.fault(Fault::NoAnswer, 1, 65);
    h.add_row(row(65, "Sara", "Sí", "Activo"));
    wait_for("the second send in doubt", Duration::from_secs(30), || async {
        h.messages().await.iter().any(|m| m.state == MessageState::Sending && m.attempts >= 2)
    })
    .await;
    assert_eq!(h.sent_to(65).len(), 1, "only the first, failed, send reached Twilio");
    h.clock.advance(Duration::from_secs(11 * 60));
    h.wait_cell("65", "Estado WhatsApp", "delivered").await;
    h.quiesce().await;
    assert_eq!(h.sent_to(65).len(), 2, "the failed one, and the one sent again after the lookup");
    let m = h.messages().await.into_iter().find(|m| m.record_key.0 == "65").unwrap();
    assert_eq!(m.provider_message_id.as_deref(), Some(h.sent_to(65)[1].id.as_str()), "the new send's id");
    h.stop().await;
}

/// Twilio does not deliver a callback again after its retries: a message read while recado was
/// stopped, sent long before the last callback recado heard, is caught up from the Messages
/// list at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_that_came_while_recado_was_stopped_is_caught_up_at_start() {
    let mut h = Harness::on(Vendor::Twilio, vec![]).await;
    h.user(66, false, None);
    h.user(67, false, None);
    h.start().await;
    h.add_row(row(66, "Inés", "Sí", "Activo"));
    h.wait_cell("66", "Estado WhatsApp", "delivered").await;
    // An hour later another message, whose callbacks recado hears.
    h.clock.advance(Duration::from_secs(3600));
    h.add_row(row(67, "Julio", "Sí", "Activo"));
    h.wait_cell("67", "Estado WhatsApp", "delivered").await;
    h.quiesce().await;
    h.stop().await;
    let sid = h.sent_to(66)[0].id.clone();
    h.sandbox.twilio().mark_read(&sid);
    wait_for("Twilio to give up on the callback", Duration::from_secs(20), || async {
        h.sandbox.twilio().deliveries_in_flight() == 0
    })
    .await;
    h.start().await;
    h.wait_cell("66", "Estado WhatsApp", "read").await;
    h.stop().await;
}

/// Twilio through a Messaging Service, authenticated with an API key: the message goes out
/// through the service (Twilio picks the sender from its pool and first answers `accepted`), the
/// key is what authenticates the calls, and statuses and the reply come back to the row as from
/// a number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twilio_messaging_service_with_an_api_key_sends_and_hears_back() {
    let mut h = Harness::on(Vendor::Twilio, vec![]).await;
    h.twilio_service_with_api_key = true;
    h.user(62, true, Some("listo, gracias"));
    h.start().await;
    h.add_row(row(62, "Ramona", "Sí", "Activo"));
    h.wait_cell("62", "Última respuesta", "listo, gracias").await;
    h.wait_cell("62", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    let settings = h.sandbox.twilio().settings();
    let sent: Vec<_> = h.sandbox.twilio().sent().into_iter().filter(|m| m.direction != "inbound").collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].messaging_service_sid.as_deref(), Some(settings.messaging_service_sid.as_str()));
    assert_eq!(sent[0].from, settings.sender, "the service's pool sent it");
    assert_eq!(sent[0].credential.as_deref(), Some(settings.api_key_sid.as_str()), "the API key authenticated");
    assert_eq!(h.sent_to(62)[0].template.as_deref(), Some("confirmacion_inscripcion"));
    h.stop().await;
}

/// Twilio: carrier-level failures reported in status callbacks (30003, 30005, 30006, 30007,
/// 30008) reach each row with their meaning and code, and are not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_undelivered_codes_reach_the_row_with_their_meaning() {
    let mut h = Harness::on(Vendor::Twilio, vec![]).await;
    h.start().await;
    let cases = [
        (70, 30003, "unreachable"),
        (71, 30005, "unknown destination"),
        (72, 30006, "landline"),
        (73, 30007, "spam"),
        (74, 30008, "unknown delivery error"),
    ];
    for (n, code, _) in cases {
        h.sandbox.twilio().inject(recado::sandbox::TwilioFault {
            code,
            http_status: 400,
            count: 1,
            mode: Some("async".into()),
            to: Some(crate::harness::e164(n)),
            delay_ms: None,
        });
        h.add_row(row(n, "Persona", "Sí", "Activo"));
    }
    for (n, code, words) in cases {
        h.wait_cell(&n.to_string(), "Estado WhatsApp", "failed").await;
        let error = h.cell(&n.to_string(), "Error WhatsApp");
        assert!(error.contains(words) && error.contains(&code.to_string()), "{n}: {error}");
    }
    h.quiesce().await;
    for (n, ..) in cases {
        assert_eq!(h.sent_to(n).len(), 1, "{n}: undelivered is final");
    }
    h.stop().await;
}

/// The emulator's 24-hour window moves with a test's clock (`age_windows`): free text after it
/// closed is refused with 131047 as WhatsApp refuses it, and a new message from the person
/// opens a new window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_emulators_window_closes_when_a_test_moves_time_and_reopens_when_the_person_writes() {
    let settings = MetaSettings {
        window_error: "sync".into(),
        // A token a microsecond: no request of this test waits for the throughput bucket.
        messages_per_second: 1_000_000.0,
        pair_burst: 100,
        ..Default::default()
    };
    let sandbox =
        recado::sandbox::Sandbox::start(std::net::SocketAddr::from(([127, 0, 0, 1], 0)), settings).await.unwrap();
    let person = "56911112222";
    sandbox.meta().add_user(recado::sandbox::SimUser { wa_id: person.into(), ..Default::default() });
    let url = format!("{}/meta/v23.0/1234567890/messages", sandbox.base_url());
    let send = || async {
        let r = reqwest::Client::new()
            .post(&url)
            .bearer_auth("sandbox-token")
            .json(&json!({"messaging_product": "whatsapp", "to": person, "type": "text", "text": {"body": "Hola"}}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap())
    };
    sandbox.meta().user_says(person, "hola", None);
    let (status, body) = send().await;
    assert_eq!(status, 200, "inside the window: {body}");
    sandbox.meta().age_windows(Duration::from_secs(25 * 3600));
    let (status, body) = send().await;
    assert_eq!((status, body["error"]["code"].as_i64()), (400, Some(131047)), "{body}");
    sandbox.meta().user_says(person, "sigo aquí", None);
    assert_eq!(send().await.0, 200, "a new window");
    sandbox.stop().await;
}
