//! Sending: baseline, new rows, field changes, replies and opt-outs, retries, restarts.

use std::time::Duration;

use recado::domain::MessageState;
use recado::sandbox::{MetaFault, MetaSettings};
use serde_json::json;

use crate::harness::{row, settle, wa_id, wait_for, Harness};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_sends_nothing() {
    let mut h = Harness::new((1..=5).map(|i| row(i, &format!("P{i}"), "Sí", "Activo")).collect()).await;
    h.start().await;
    settle().await;
    assert!(h.sandbox.meta().sent().is_empty(), "the baseline must not message existing rows");
    assert!(h.messages().await.is_empty());
    assert_eq!(h.cell("1", "Estado WhatsApp"), "");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_consenting_row_gets_exactly_one_template() {
    let mut h = Harness::new(vec![row(1, "Ana", "Sí", "Activo")]).await;
    h.user(7, true, None);
    h.start().await;
    h.add_row(row(7, "Josefa Castro", "Sí", "Activo"));
    h.wait_cell("7", "Estado WhatsApp", "read").await;
    settle().await;
    let sent = h.sent_to(7);
    assert_eq!(sent.len(), 1, "exactly one message");
    let t = &sent[0].body["template"];
    assert_eq!(t["name"], "confirmacion_inscripcion");
    assert_eq!(t["components"][0]["parameters"][0]["text"], "Josefa Castro");
    assert_eq!(t["components"][0]["parameters"][1]["text"], "Soldadura");
    assert_eq!(sent[0].callback_data.as_deref(), Some(h.messages().await[0].id.to_string().as_str()));
    assert!(!h.cell("7", "Fecha estado").is_empty(), "status time written");
    assert_eq!(h.cell("7", "Error WhatsApp"), "");
    let messages = h.messages().await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].state, MessageState::Read);
    assert!(messages[0].provider_message_id.as_deref().is_some_and(|id| id.starts_with("wamid.")));
    assert!(h.sent_to(1).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_change_to_trigger_value_sends_once_and_only_once() {
    let mut h = Harness::new(vec![row(3, "Valentina", "Sí", "Activo"), row(4, "Matías", "Sí", "Activo")]).await;
    h.user(3, true, None);
    h.start().await;
    h.edit("3", "Estado", json!("Egresado"));
    h.wait_cell("3", "Estado WhatsApp", "read").await;
    // Back and forth, and an unrelated edit: no second survey.
    h.edit("3", "Estado", json!("Activo"));
    settle().await;
    h.edit("3", "Estado", json!("Egresado"));
    h.edit("3", "Mentor", json!("Otra persona"));
    settle().await;
    let sent = h.sent_to(3);
    assert_eq!(sent.len(), 1, "one survey only: {sent:?}");
    let t = &sent[0].body["template"];
    assert_eq!(t["name"], "encuesta_seguimiento");
    assert_eq!(t["components"][1]["parameters"][0]["text"], "viewform?entry.1=3");
    assert!(h.sent_to(4).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_and_an_opt_out_are_written_back_and_the_opted_out_get_nothing_more() {
    let mut h = Harness::new(vec![]).await;
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
    settle().await;
    assert_eq!(h.sent_to(11).len(), 1, "nothing after BAJA");
    assert_eq!(h.cell("11", "Estado WhatsApp"), "skipped");
    assert!(h.cell("11", "Error WhatsApp").starts_with("not sent"), "{}", h.cell("11", "Error WhatsApp"));
    let mut c = h.store().conn().await.unwrap();
    let contact = recado::store::contact(&mut c, "+56987650011").await.unwrap().unwrap();
    drop(c);
    assert!(contact.opted_out_at.is_some());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_and_reordered_status_webhooks_leave_the_right_final_status() {
    let settings =
        MetaSettings { status_delay_ms: 30, duplicate_webhooks: true, reorder_webhooks: true, ..Default::default() };
    let mut h = Harness::with_settings(vec![], settings).await;
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
    settle().await;
    settle().await;
    for n in 20..25 {
        assert_eq!(h.cell(&n.to_string(), "Estado WhatsApp"), "read", "row {n}");
    }
    let states: Vec<MessageState> = h.messages().await.iter().map(|m| m.state).collect();
    assert_eq!(states.iter().filter(|s| **s == MessageState::Read).count(), 5);
    let (deliveries, _) = h.sandbox.meta().delivery_stats();
    assert!(deliveries >= 2 * 17, "every webhook was delivered twice ({deliveries})");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_throttling_and_server_errors_are_retried_and_the_message_is_sent_once() {
    let mut h = Harness::new(vec![]).await;
    h.user(30, true, None);
    h.start().await;
    let to = Some(wa_id(30));
    h.sandbox.meta().inject(MetaFault { code: 130429, http_status: 400, count: 2, mode: None, to: to.clone() });
    h.sandbox.meta().inject(MetaFault { code: 131000, http_status: 500, count: 1, mode: None, to: to.clone() });
    h.add_row(row(30, "Tomás", "Sí", "Activo"));
    wait_for("the message to get through", Duration::from_secs(30), || async {
        h.cell("30", "Estado WhatsApp") == "read"
    })
    .await;
    settle().await;
    assert_eq!(h.sent_to(30).len(), 1, "accepted exactly once");
    let m = &h.messages().await[0];
    assert_eq!(m.state, MessageState::Read);
    assert!(m.attempts >= 2, "the 5xx counted as an attempt ({})", m.attempts);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_fails_with_the_reason_on_the_row() {
    let mut h = Harness::new(vec![]).await;
    h.start().await;
    h.sandbox.meta().inject(MetaFault { code: 132001, http_status: 404, count: 1, mode: None, to: Some(wa_id(31)) });
    h.sandbox.meta().inject(MetaFault {
        code: 131026,
        http_status: 400,
        count: 1,
        mode: Some("async".into()),
        to: Some(wa_id(32)),
    });
    h.add_row(row(31, "Isidora", "Sí", "Activo"));
    h.add_row(row(32, "Joaquín", "Sí", "Activo"));
    h.wait_cell("31", "Estado WhatsApp", "failed").await;
    h.wait_cell("32", "Estado WhatsApp", "failed").await;
    assert!(h.cell("31", "Error WhatsApp").contains("132001"), "{}", h.cell("31", "Error WhatsApp"));
    assert!(h.cell("32", "Error WhatsApp").contains("131026"), "{}", h.cell("32", "Error WhatsApp"));
    settle().await;
    assert_eq!(h.sandbox.meta().sent().len(), 1, "the sync refusal is not retried; the async one was accepted once");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_with_the_same_store_neither_resends_nor_forgets() {
    let mut h = Harness::new(vec![row(1, "Ana", "Sí", "Activo")]).await;
    h.user(40, true, None);
    h.user(41, true, None);
    h.start().await;
    h.add_row(row(40, "Lucas", "Sí", "Activo"));
    h.wait_cell("40", "Estado WhatsApp", "read").await;
    h.stop().await;

    // While the daemon is down: a new row, a graduation, and a reply (Meta keeps retrying it).
    h.add_row(row(41, "Emilia", "Sí", "Activo"));
    h.edit("40", "Estado", json!("Egresado"));
    let wamid = h.sent_to(40)[0].wamid.clone();
    h.sandbox.meta().user_says(&wa_id(40), "¿cuándo empieza?", Some(&wamid));
    tokio::time::sleep(Duration::from_millis(300)).await;

    h.start().await;
    h.wait_cell("41", "Estado WhatsApp", "read").await;
    h.wait_cell("40", "Última respuesta", "¿cuándo empieza?").await;
    wait_for("the survey after the restart", Duration::from_secs(20), || async { h.sent_to(40).len() == 2 }).await;
    settle().await;
    assert_eq!(h.sent_to(40).len(), 2, "confirmation once, survey once");
    assert_eq!(h.sent_to(41).len(), 1);
    assert!(h.sent_to(1).is_empty(), "the baseline row is still not new");
    h.stop().await;
    h.start().await;
    settle().await;
    assert_eq!(h.sandbox.meta().sent().len(), 3, "a second restart sends nothing");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_outside_the_window_uses_the_fallback_template() {
    let mut h = Harness::new(vec![]).await;
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
    let yaml = h.yaml() + yaml_rules;
    let config = recado::config::Config::from_yaml(&yaml).unwrap();
    h.user(50, true, None);
    h.user(51, true, None);
    h.add_row(row(50, "Antonia", "Sí", "Activo"));
    h.add_row(row(51, "Vicente", "Sí", "Activo"));
    let app = recado::app::start(config).await.unwrap();
    h.sandbox
        .meta()
        .update_settings(|s| s.webhook_url = Some(format!("http://{}/webhooks/whatsapp", app.webhook_addr())));
    h.app = Some(app);
    settle().await;
    // 50 wrote to us recently: free text goes. 51 did not: fallback template.
    h.sandbox.meta().user_says(&wa_id(50), "hola", None);
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
    assert_eq!(h.sent_to(50)[0].body["type"], "text");
    assert_eq!(h.sent_to(50)[0].body["text"]["body"], "Hola Antonia, te esperamos mañana.");
    assert_eq!(h.sent_to(51)[0].body["type"], "template");
    // No fallback: skipped with the reason, nothing sent.
    h.edit("51", "Estado", json!("Nota"));
    h.wait_cell("51", "Estado WhatsApp", "skipped").await;
    assert!(h.cell("51", "Error WhatsApp").contains("24-hour window"));
    assert_eq!(h.sent_to(51).len(), 1);
    h.stop().await;
}

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
