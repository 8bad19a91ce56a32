//! Salesforce as the system of record: the daemon polls the Salesforce emulator over HTTP
//! (JWT bearer sign-in, SOQL on `SystemModstamp`, `getDeleted`), sends through the WhatsApp
//! emulator, and writes statuses back through sObject Collections.

use std::time::Duration;

use chrono::{DateTime, Utc};
use recado::sandbox::salesforce::{FieldDef, FieldKind, ObjectDef, RecordFault, SfAction, SfFault, SfKind};
use serde_json::{json, Map, Value};

use crate::harness::{phone, wait_for, Harness};

const SOURCE: &str = "citas";

fn fields(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

/// The health programme's org: families (Contact, with a consent checkbox) and their
/// appointments (`Cita__c`).
fn define_org(h: &Harness) {
    let sf = h.sandbox.salesforce();
    sf.add_field("Contact", FieldDef::new("Consentimiento_WhatsApp__c", FieldKind::Boolean));
    sf.define_object(
        ObjectDef::new(
            "Cita__c",
            "a01",
            vec![
                FieldDef::reference("Contacto__c", "Contact"),
                FieldDef::new("Fecha__c", FieldKind::Datetime),
                FieldDef::new("Dia_Control__c", FieldKind::Date),
                FieldDef::new("Estado__c", FieldKind::Picklist).with_length(40),
                FieldDef::new("WhatsApp_Estado__c", FieldKind::String).with_length(40),
                FieldDef::new("WhatsApp_Fecha__c", FieldKind::Datetime),
                FieldDef::new("WhatsApp_Error__c", FieldKind::String).with_length(255),
                FieldDef::new("WhatsApp_Respuesta__c", FieldKind::String).with_length(255),
                FieldDef::new("WhatsApp_Fecha_Respuesta__c", FieldKind::Datetime),
            ],
        )
        .with_activities(),
    );
}

/// A mother (person `n`) with consent, and her id.
fn mother(h: &Harness, n: u32) -> String {
    h.sandbox
        .salesforce()
        .create(
            "Contact",
            fields(json!({"FirstName": format!("Madre{n}"), "LastName": "Rojas", "MobilePhone": phone(n), "Consentimiento_WhatsApp__c": true})),
        )
        .expect("contact created")
}

/// An appointment of `contact` at `at`.
fn cita(h: &Harness, contact: &str, at: DateTime<Utc>, estado: &str) -> String {
    h.sandbox
        .salesforce()
        .create("Cita__c", fields(json!({"Contacto__c": contact, "Fecha__c": at.to_rfc3339(), "Estado__c": estado})))
        .expect("cita created")
}

/// `n` appointments of `contact` saved at once (one save: one SystemModstamp), nine days away.
fn many_citas(h: &Harness, contact: &str, n: usize) -> Vec<String> {
    let at = (Utc::now() + chrono::Duration::days(9)).to_rfc3339();
    let batch: Vec<Map<String, Value>> =
        (0..n).map(|_| fields(json!({"Contacto__c": contact, "Fecha__c": at, "Estado__c": "Agendada"}))).collect();
    h.sandbox.salesforce().create_many("Cita__c", batch).expect("citas created")
}

fn org_yaml(h: &Harness, extra_source: &str, extra_rules: &str) -> String {
    let base = h.sandbox.salesforce_url();
    let key = h.dir.path().join("salesforce.key");
    std::fs::write(&key, recado::sandbox::keys::PRIVATE_KEY_PEM).expect("key written");
    format!(
        r#"
state:
  path: "{state}"
http:
  listen: "127.0.0.1:0"
providers:
{provider}    messages_per_second: 1000
    pair_interval: 10ms
sources:
  - id: {SOURCE}
    type: salesforce
    login_url: "{base}"
    api_version: "62.0"
    object: Cita__c
    fields: [Fecha__c, Estado__c, Contacto__r.FirstName]
    phone_field: Contacto__r.MobilePhone
    default_region: CL
    consent:
      field: Contacto__r.Consentimiento_WhatsApp__c
    poll_interval: 150ms
    flush_interval: 100ms
    deletions_every: 2m
    auth:
      flow: jwt_bearer
      consumer_key: "{consumer}"
      username: "{user}"
      private_key_file: "{key}"
    write_back:
      status: WhatsApp_Estado__c
      status_at: WhatsApp_Fecha__c
      error: WhatsApp_Error__c
      last_reply: WhatsApp_Respuesta__c
      last_reply_at: WhatsApp_Fecha_Respuesta__c
{extra_source}
rules:
  - id: confirmacion
    source: {SOURCE}
    when: record_added
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{{{ Contacto__r.FirstName }}}}", "{{{{ Estado__c }}}}", "{{{{ Fecha__c | date }}}}"]
  - id: reprogramada
    source: {SOURCE}
    when: {{ changed: Estado__c, to: Reprogramada }}
    provider: whatsapp
    template:
      name: encuesta_seguimiento
      language: es
      body: ["{{{{ row['Contacto__r.FirstName'] }}}}"]
      button_url_suffix: "cita?id={{{{ Id }}}}"
{extra_rules}
"#,
        state = h.state_path().display(),
        provider = h.provider_yaml(),
        consumer = recado::sandbox::salesforce::SANDBOX_CONSUMER_KEY,
        user = recado::sandbox::salesforce::SANDBOX_USERNAME,
        key = key.display(),
    )
}

/// A harness on the org, with `seed` run before the daemon starts.
async fn org(extra_source: &str, extra_rules: &str) -> Harness {
    let mut h = Harness::new(vec![]).await;
    define_org(&h);
    h.yaml_override = Some(org_yaml(&h, extra_source, extra_rules));
    h
}

async fn start(h: &mut Harness) {
    h.start_without_waiting().await;
    let store = h.store();
    wait_for("the first read to be committed", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            let mut c = store.conn().await.expect("conn");
            recado::store::source_state(&mut c, SOURCE).await.expect("state").baseline_done
        }
    })
    .await;
}

fn polls(h: &Harness) -> u64 {
    h.running().ctx().health.rounds(&format!("source:{SOURCE}"))
}

async fn more_polls(h: &Harness, n: u64) {
    let start = polls(h);
    wait_for("more polls", Duration::from_secs(20), || async { polls(h) >= start + n }).await;
}

/// The source polled twice more and nothing left to do.
async fn settle(h: &Harness) {
    more_polls(h, 2).await;
    h.quiet().await;
}

/// Queues write-back values for the source, as the engine does, and wakes its flusher.
async fn queue(h: &Harness, writes: &[recado::domain::FieldWrite]) {
    let mut tx = h.store().begin().await.unwrap();
    recado::store::queue_writes(&mut tx, writes).await.unwrap();
    tx.commit().await.unwrap();
    h.running().ctx().wake_flusher(SOURCE);
}

fn field(h: &Harness, id: &str, name: &str) -> Value {
    h.sandbox.salesforce().get("Cita__c", id).and_then(|r| r.get(name).cloned()).unwrap_or(Value::Null)
}

async fn wait_field(h: &Harness, id: &str, name: &str, want: &str) {
    wait_for(&format!("{name} of {id} to be {want}"), Duration::from_secs(20), || async {
        field(h, id, name).as_str() == Some(want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_start_sends_nothing_and_a_new_appointment_is_confirmed_once_with_its_status_on_the_record() {
    let mut h = org("", "").await;
    let now = Utc::now();
    let m1 = mother(&h, 1);
    cita(&h, &m1, now + chrono::Duration::days(5), "Agendada");
    h.user(2, true, Some("Confirmo"));
    start(&mut h).await;
    settle(&h).await;
    assert_eq!(h.sent_count(), 0, "records there at first start are the baseline");

    let m2 = mother(&h, 2);
    let c2 = cita(&h, &m2, now + chrono::Duration::days(6), "Agendada");
    wait_field(&h, &c2, "WhatsApp_Estado__c", "read").await;
    let sent = h.sent_to(2);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].params[0], "Madre2", "the name came through the relationship path");
    assert_eq!(sent[0].params[1], "Agendada");
    assert!(
        field(&h, &c2, "WhatsApp_Fecha__c").as_str().is_some_and(|t| t.ends_with("+0000")),
        "a date-time field gets a date-time"
    );
    wait_field(&h, &c2, "WhatsApp_Respuesta__c", "Confirmo").await;
    settle(&h).await;
    assert_eq!(h.sent_count(), 1, "seen again in the overlap, the record is not news");

    // A restart reads everything again: still nothing new.
    h.stop().await;
    start(&mut h).await;
    settle(&h).await;
    assert_eq!(h.sent_count(), 1);
    let tokens = h.sandbox.salesforce().count(SfKind::Token);
    assert_eq!(tokens, 2, "one sign-in per start: the session is reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_change_sends_once_and_other_edits_send_nothing() {
    let mut h = org("", "").await;
    let m = mother(&h, 3);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(5), "Agendada");
    h.user(3, false, None);
    start(&mut h).await;
    let sf = h.sandbox.salesforce();
    sf.update("Cita__c", &c, fields(json!({"Fecha__c": (Utc::now() + chrono::Duration::days(7)).to_rfc3339()})))
        .unwrap();
    settle(&h).await;
    assert_eq!(h.sent_count(), 0, "a change no rule watches sends nothing");
    sf.update("Cita__c", &c, fields(json!({"Estado__c": "Reprogramada"}))).unwrap();
    wait_for("the change to be sent", Duration::from_secs(20), || async { h.sent_to(3).len() == 1 }).await;
    settle(&h).await;
    let sent = h.sent_to(3);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].params, vec!["Madre3".to_string(), format!("cita?id={c}")]);
    // recado's own writes move SystemModstamp: they are read again and are not changes.
    assert!(field(&h, &c, "WhatsApp_Estado__c").as_str().is_some());
    settle(&h).await;
    assert_eq!(h.sent_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_sharing_a_system_modstamp_across_a_page_boundary_are_neither_missed_nor_repeated() {
    let mut h = org("", "").await;
    start(&mut h).await;
    let m = mother(&h, 4);
    // One save of 2,001 appointments: one SystemModstamp, two query pages.
    let ids = many_citas(&h, &m, 2001);
    let stamps: std::collections::HashSet<String> =
        ids.iter().map(|id| field(&h, id, "SystemModstamp").as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(stamps.len(), 1, "the emulator gives one save one SystemModstamp");
    let store = h.store();
    wait_for("a message per appointment", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            let mut c = store.conn().await.unwrap();
            recado::store::all_messages(&mut c).await.unwrap().len() >= 2001
        }
    })
    .await;
    more_polls(&h, 3).await;
    let mut c = store.conn().await.unwrap();
    let messages = recado::store::all_messages(&mut c).await.unwrap();
    let keys: std::collections::HashSet<&str> = messages.iter().map(|m| m.record_key.0.as_str()).collect();
    assert_eq!(messages.len(), 2001, "none repeated");
    assert_eq!(keys.len(), 2001, "none missed");
    assert!(h.sandbox.salesforce().count(SfKind::QueryMore) >= 1, "the change spanned two pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_made_while_a_query_is_paged_is_seen_on_the_next_poll() {
    let mut h = org("", "").await;
    let m = mother(&h, 5);
    let ids = many_citas(&h, &m, 2100);
    h.user(5, false, None);
    start(&mut h).await;
    // The first record changes while the second page of the next read is being served (the
    // record lies in the page already read, whose snapshot predates the edit).
    let target = ids[0].clone();
    h.sandbox.salesforce().after_next(
        SfKind::QueryMore,
        SfAction::Update {
            object: "Cita__c".into(),
            id: target.clone(),
            fields: fields(json!({"Estado__c": "Reprogramada"})),
        },
    );
    wait_for("the edit to be sent", Duration::from_secs(20), || async { h.sent_to(5).len() == 1 }).await;
    settle(&h).await;
    assert_eq!(h.sent_to(5).len(), 1);
    assert_eq!(h.sent_to(5)[0].params[1], format!("cita?id={target}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_record_cancels_its_reminders() {
    let rule = r#"
  - id: recordatorio
    source: citas
    when: { date: Fecha__c, offset: -2d, at: "10:00" }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Contacto__r.FirstName }}", "{{ Estado__c }}", "{{ Fecha__c | date }}"]
"#;
    let mut h = org("", rule).await;
    let m = mother(&h, 6);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(10), "Agendada");
    start(&mut h).await;
    let store = h.store();
    let timers = || {
        let store = store.clone();
        let c = c.clone();
        async move {
            let mut conn = store.conn().await.unwrap();
            recado::store::timers_of(&mut conn, SOURCE, Some(&[c.as_str()])).await.unwrap()
        }
    };
    assert_eq!(timers().await.iter().filter(|t| t.state == "pending").count(), 1);
    let sf = h.sandbox.salesforce();
    // Deleted (in the Recycle Bin): the next poll's queryAll brings it with IsDeleted.
    assert!(sf.delete("Cita__c", &c));
    wait_for("the reminder to be cancelled", Duration::from_secs(20), || async {
        timers().await.iter().all(|t| t.state == "cancelled")
    })
    .await;
    assert_eq!(sf.count(SfKind::Deleted), 0, "seen with the changes, without asking for deletions");
    // Deleted and emptied from the Recycle Bin before a poll saw it: only the delete log knows,
    // asked every 2 minutes of server time.
    let c2 = cita(&h, &m, Utc::now() + chrono::Duration::days(12), "Agendada");
    let pending2 = || {
        let store = store.clone();
        let c2 = c2.clone();
        async move {
            let mut conn = store.conn().await.unwrap();
            let timers = recado::store::timers_of(&mut conn, SOURCE, Some(&[c2.as_str()])).await.unwrap();
            timers.iter().filter(|t| t.state == "pending").count()
        }
    };
    wait_for("the second appointment's reminder", Duration::from_secs(20), || async { pending2().await == 1 }).await;
    assert!(sf.hard_delete("Cita__c", &c2));
    settle(&h).await;
    assert_eq!(pending2().await, 1, "a hard delete is not in queryAll");
    sf.advance(Duration::from_secs(150));
    wait_for("the second reminder to be cancelled", Duration::from_secs(20), || async { pending2().await == 0 }).await;
    assert_eq!(sf.count(SfKind::Deleted), 1);
    assert_eq!(h.sent_count(), 1, "the second appointment's confirmation, no reminder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_ends_mid_poll_is_renewed_and_the_poll_completes() {
    let mut h = org("", "").await;
    let m = mother(&h, 7);
    let ids = many_citas(&h, &m, 2100);
    h.user(7, false, None);
    // The session ends as the second page of the first read is asked for.
    h.sandbox.salesforce().inject(SfFault {
        kind: Some(SfKind::QueryMore),
        status: 401,
        error_code: String::new(),
        message: String::new(),
        expire_session: true,
        timeout: false,
        record: None,
        applied: false,
        count: 1,
    });
    start(&mut h).await;
    assert_eq!(h.sandbox.salesforce().count(SfKind::Token), 2, "signed in again once");
    let health = h.running().ctx().health.get(&format!("source:{SOURCE}")).unwrap_or_default();
    assert_eq!(health.failures, 0, "the poll did not fail: {health:?}");
    h.sandbox.salesforce().update("Cita__c", &ids[2050], fields(json!({"Estado__c": "Reprogramada"}))).unwrap();
    wait_for("the change to be sent", Duration::from_secs(20), || async { h.sent_to(7).len() == 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_slows_down_above_the_share_of_the_daily_allocation_and_resumes_below_it() {
    let mut h = org("    max_api_share: 0.5\n", "").await;
    start(&mut h).await;
    let sf = h.sandbox.salesforce();
    more_polls(&h, 3).await;
    let before = sf.count(SfKind::Query);
    more_polls(&h, 5).await;
    assert!(sf.count(SfKind::Query) >= before + 4, "an idle poll is one query");
    // Other integrations' use does not count against recado's share…
    sf.set_usage(9_000, 15_000);
    let busy_org = sf.count(SfKind::Query);
    more_polls(&h, 4).await;
    assert!(sf.count(SfKind::Query) >= busy_org + 3, "the org's other use does not slow recado");
    // …recado's own does: the allocation shrinks until recado's requests are half of it.
    let ours = sf.total_requests() - sf.count(SfKind::Token);
    sf.set_usage(ours, ours * 2);
    more_polls(&h, 2).await;
    let slowed = sf.count(SfKind::Query);
    more_polls(&h, 6).await;
    assert!(
        sf.count(SfKind::Query) <= slowed + 1,
        "polls are spaced out: {} queries",
        sf.count(SfKind::Query) - slowed
    );
    let health = h.running().ctx().health.get(&format!("source:{SOURCE}")).unwrap_or_default();
    assert!(
        health.quota.as_ref().is_some_and(|q| q.paused_for_ms.is_some()),
        "/healthz says polls are spaced out: {health:?}"
    );
    sf.set_usage(100, 15_000);
    let resumed = sf.count(SfKind::Query);
    wait_for("polling at the configured pace again", Duration::from_secs(20), || async {
        sf.count(SfKind::Query) >= resumed + 5
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_salesforce_refuses_to_update_does_not_block_the_others() {
    let mut h = org("", "").await;
    start(&mut h).await;
    for n in [8, 9, 10] {
        h.user(n, false, None);
    }
    let sf = h.sandbox.salesforce();
    let (m8, m9, m10) = (mother(&h, 8), mother(&h, 9), mother(&h, 10));
    let at = Utc::now() + chrono::Duration::days(4);
    let c8 = cita(&h, &m8, at, "Agendada");
    // A validation rule refuses every write to this one; that one is locked once.
    sf.inject_record_error(RecordFault {
        id: Some(c8.clone()),
        status_code: "FIELD_CUSTOM_VALIDATION_EXCEPTION".into(),
        message: "La cita no puede cambiar después de atendida".into(),
        count: 1000,
    });
    let c9 = cita(&h, &m9, at, "Agendada");
    sf.inject_record_error(RecordFault {
        id: Some(c9.clone()),
        status_code: "UNABLE_TO_LOCK_ROW".into(),
        message: "unable to obtain exclusive access to this record".into(),
        count: 1,
    });
    let c10 = cita(&h, &m10, at, "Agendada");
    wait_field(&h, &c10, "WhatsApp_Estado__c", "delivered").await;
    wait_field(&h, &c9, "WhatsApp_Estado__c", "delivered").await;
    settle(&h).await;
    assert_eq!(field(&h, &c8, "WhatsApp_Estado__c"), Value::Null, "refused every time");
    assert_eq!(h.sent_count(), 3, "each was sent once");
    let mut c = h.store().conn().await.unwrap();
    assert_eq!(
        recado::store::pending_write_count(&mut c).await.unwrap(),
        0,
        "the refused values were dropped, not retried for ever"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_fire_from_a_date_time_and_from_a_date_field_at_the_local_time() {
    let rules = r#"
  - id: recordatorio
    source: citas
    when: { date: Fecha__c, offset: -2d, at: "10:00" }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Contacto__r.FirstName }}", "{{ Estado__c }}", "{{ Fecha__c | date }}"]
  - id: control
    source: citas
    when: { date: Dia_Control__c, offset: -1d, at: "09:00" }
    provider: whatsapp
    template:
      name: encuesta_seguimiento
      language: es
      body: ["{{ Contacto__r.FirstName }}"]
      button_url_suffix: "control?id={{ Id }}"
"#;
    let mut h = org("    fields: [Fecha__c, Estado__c, Contacto__r.FirstName, Dia_Control__c]\n", rules).await;
    // The override repeats `fields`: keep the later one only.
    let yaml =
        h.yaml_override.take().unwrap().replacen("    fields: [Fecha__c, Estado__c, Contacto__r.FirstName]\n", "", 1);
    h.yaml_override = Some(yaml);
    let m = mother(&h, 11);
    let sf = h.sandbox.salesforce();
    // 2026-12-10 16:30 UTC = 13:30 in Santiago (UTC-3); the reminder is 2026-12-08 10:00 local.
    let c = sf
        .create(
            "Cita__c",
            fields(json!({"Contacto__c": m, "Fecha__c": "2026-12-10T16:30:00.000+0000", "Dia_Control__c": "2026-12-20", "Estado__c": "Agendada"})),
        )
        .unwrap();
    start(&mut h).await;
    let mut conn = h.store().conn().await.unwrap();
    let timers = recado::store::timers_of(&mut conn, SOURCE, Some(&[c.as_str()])).await.unwrap();
    let due = |rule: &str| timers.iter().find(|t| t.rule_id == rule).map(|t| t.due_at);
    let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp_millis();
    assert_eq!(due("recordatorio"), Some(at("2026-12-08T10:00:00-03:00")), "{timers:?}");
    assert_eq!(
        due("control"),
        Some(at("2026-12-19T09:00:00-03:00")),
        "a date has no zone: the day before at 09:00 local"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_the_object_does_not_have_stops_the_source_with_salesforces_words() {
    let mut h = org("", "").await;
    let yaml = h.yaml_override.take().unwrap().replace("Contacto__r.FirstName]", "Contacto__r.FirstName, Telefono__c]");
    h.yaml_override = Some(yaml);
    h.start_without_waiting().await;
    wait_for("the poll to fail", Duration::from_secs(20), || async {
        let health = h.running().ctx().health.get(&format!("source:{SOURCE}")).unwrap_or_default();
        health.last_error.is_some_and(|e| e.contains("No such column 'Telefono__c' on entity 'Cita__c'"))
    })
    .await;
}

const TASK_LOG: &str = r#"    interaction_log:
      object: Task
      contact_field: Contacto__c
      fields:
        status: WhatsApp_Estado__c
        message_id: WhatsApp_Id__c
        direction: WhatsApp_Direccion__c
"#;

/// The next `count` sObject Collections calls are carried out and their answers lost (503).
fn lost_answers(count: u32) -> SfFault {
    SfFault {
        kind: Some(SfKind::Composite),
        status: 503,
        error_code: "SERVER_UNAVAILABLE".into(),
        message: "Server unavailable".into(),
        expire_session: false,
        timeout: false,
        record: None,
        applied: true,
        count,
    }
}

/// The Task fields [`TASK_LOG`] maps, created on Activity.
fn add_task_fields(h: &Harness) {
    for (name, length) in
        [("Recado_Id__c", 255), ("WhatsApp_Estado__c", 40), ("WhatsApp_Id__c", 100), ("WhatsApp_Direccion__c", 20)]
    {
        h.sandbox.salesforce().add_field("Task", FieldDef::new(name, FieldKind::String).with_length(length));
    }
}

fn tasks(h: &Harness) -> Vec<Map<String, Value>> {
    h.sandbox.salesforce().records("Task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_and_reply_is_a_task_on_the_contact_and_the_appointment_once_across_a_restart() {
    let mut h = org(TASK_LOG, "").await;
    add_task_fields(&h);
    h.user(12, true, None);
    start(&mut h).await;
    let m = mother(&h, 12);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(3), "Agendada");
    wait_for("the message's Task to say read", Duration::from_secs(20), || async {
        tasks(&h).iter().any(|t| t.get("WhatsApp_Estado__c").and_then(Value::as_str) == Some("read"))
    })
    .await;
    let sent = h.sent_to(12);
    assert_eq!(sent.len(), 1);
    h.says(12, "Confirmo, gracias", Some(&sent[0].id));
    wait_for("the reply's Task", Duration::from_secs(20), || async { tasks(&h).len() == 2 }).await;
    settle(&h).await;
    let all = tasks(&h);
    let out = all.iter().find(|t| t["WhatsApp_Direccion__c"] == "outbound").expect("outbound task");
    let inb = all.iter().find(|t| t["WhatsApp_Direccion__c"] == "inbound").expect("inbound task");
    assert_eq!(out["WhoId"], json!(m), "on the Contact");
    assert_eq!(out["WhatId"], json!(c), "and on the appointment");
    assert_eq!(out["WhatsApp_Id__c"], json!(sent[0].id));
    assert_eq!(out["Status"], "Completed");
    assert!(
        out["Description"].as_str().is_some_and(|d| d.contains("confirmacion_inscripcion") && d.contains("Madre12")),
        "{out:?}"
    );
    assert_eq!(inb["Description"], "Confirmo, gracias");
    assert_eq!(inb["WhoId"], json!(m));

    // After a restart recado no longer knows the Task's id: a new status for the same message
    // finds the Task by recado's id and updates it.
    h.stop().await;
    start(&mut h).await;
    let key = out["Recado_Id__c"].as_str().unwrap().trim_start_matches("citas:").to_string();
    let write = recado::domain::FieldWrite {
        source_id: SOURCE.into(),
        target: recado::domain::WriteTarget::Interaction { record: recado::domain::RecordKey(c.clone()), entry: key },
        field: "status".into(),
        value: "read".into(),
    };
    queue(&h, &[write]).await;
    settle(&h).await;
    assert_eq!(tasks(&h).len(), 2, "one Task per message and per reply, across a restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_log_object_is_upserted_on_its_external_id() {
    let log = r#"    interaction_log:
      object: WhatsApp_Message__c
      key_field: Recado_Id__c
      contact_field: Contacto__c
      record_lookup: Cita__c
      contact_lookup: Contacto__c
      fields:
        direction: Direccion__c
        content: Contenido__c
        status: Estado__c
        sent_at: Enviado__c
        read_at: Leido__c
        message_id: Mensaje_Id__c
"#;
    let mut h = org(log, "").await;
    h.sandbox.salesforce().define_object(ObjectDef::new(
        "WhatsApp_Message__c",
        "a02",
        vec![
            FieldDef::new("Recado_Id__c", FieldKind::String).with_length(255).external_id(),
            FieldDef::reference("Cita__c", "Cita__c"),
            FieldDef::reference("Contacto__c", "Contact"),
            FieldDef::new("Direccion__c", FieldKind::Picklist),
            FieldDef::new("Contenido__c", FieldKind::Textarea),
            FieldDef::new("Estado__c", FieldKind::Picklist),
            FieldDef::new("Enviado__c", FieldKind::Datetime),
            FieldDef::new("Leido__c", FieldKind::Datetime),
            FieldDef::new("Mensaje_Id__c", FieldKind::String),
        ],
    ));
    h.user(13, true, None);
    start(&mut h).await;
    let m = mother(&h, 13);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(3), "Agendada");
    let logs = || h.sandbox.salesforce().records("WhatsApp_Message__c");
    wait_for("the log entry to say read", Duration::from_secs(20), || async {
        logs().iter().any(|r| r.get("Estado__c").and_then(Value::as_str) == Some("read"))
    })
    .await;
    settle(&h).await;
    let all = logs();
    assert_eq!(all.len(), 1, "every status updated the same entry");
    assert_eq!(all[0]["Cita__c"], json!(c));
    assert_eq!(all[0]["Contacto__c"], json!(m));
    assert!(all[0]["Enviado__c"].as_str().is_some_and(|t| t.ends_with("+0000")));
    assert!(all[0]["Leido__c"].as_str().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_takes_a_query_per_two_thousand_records_an_idle_poll_one_and_write_back_two_hundred_a_call() {
    let mut h = org("", "").await;
    let m = mother(&h, 14);
    let ids = many_citas(&h, &m, 20_000);
    // Old records: outside the overlap of later polls.
    h.sandbox.salesforce().advance(Duration::from_secs(600));
    let started = std::time::Instant::now();
    start(&mut h).await;
    eprintln!("first sync of 20,000 records: {:?}", started.elapsed());
    let sf = h.sandbox.salesforce();
    let first = sf.count(SfKind::Query) + sf.count(SfKind::QueryMore);
    assert_eq!(first, 1 + 10, "the org's time zone, then 20,000 records in pages of 2,000");
    more_polls(&h, 1).await;
    let before = sf.count(SfKind::Query) + sf.count(SfKind::QueryMore);
    more_polls(&h, 5).await;
    let after = sf.count(SfKind::Query) + sf.count(SfKind::QueryMore);
    let polls = 5;
    assert!(after - before <= polls + 1, "{} requests for {polls} idle polls", after - before);

    // 10,000 status write-backs: 50 collection calls (and one describe).
    let writes: Vec<recado::domain::FieldWrite> = ids[..10_000]
        .iter()
        .map(|id| recado::domain::FieldWrite {
            source_id: SOURCE.into(),
            target: recado::domain::WriteTarget::Record(recado::domain::RecordKey(id.clone())),
            field: "WhatsApp_Estado__c".into(),
            value: "delivered".into(),
        })
        .collect();
    let composite_before = sf.count(SfKind::Composite);
    queue(&h, &writes).await;
    h.quiet().await;
    assert_eq!(sf.count(SfKind::Composite) - composite_before, 50);
    assert_eq!(field(&h, &ids[9_999], "WhatsApp_Estado__c"), json!("delivered"));
}

const REMINDER: &str = r#"
  - id: recordatorio
    source: citas
    when: { date: Fecha__c, offset: -2d, at: "10:00" }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Contacto__r.FirstName }}", "{{ Estado__c }}", "{{ Fecha__c | date }}"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_reads_the_org_and_shows_each_reminder_and_who_gets_nothing_without_changing_anything() {
    let mut h = org("", REMINDER).await;
    let sf = h.sandbox.salesforce();
    let with_consent = mother(&h, 15);
    let without = sf
        .create(
            "Contact",
            fields(json!({"FirstName": "Madre16", "LastName": "Soto", "MobilePhone": phone(16), "Consentimiento_WhatsApp__c": false})),
        )
        .unwrap();
    let at = h.clock.now() + chrono::Duration::days(3);
    let ok = cita(&h, &with_consent, at, "Agendada");
    let refused = cita(&h, &without, at, "Agendada");
    let writes_before = sf.count(SfKind::Composite);

    let config = h.config();
    let lines = recado::plan::plan(&config, 3, None, h.clock.now()).await.unwrap();
    assert!(!h.state_path().exists(), "plan creates no state");
    assert_eq!(sf.count(SfKind::Composite), writes_before, "plan writes nothing to the org");
    let by = |k: &str| lines.iter().find(|l| l.record == k).unwrap_or_else(|| panic!("no line for {k}: {lines:?}"));
    assert_eq!(by(&ok).status, "send");
    assert_eq!(by(&ok).rule, "recordatorio");
    assert_eq!(by(&ok).parameters[0], "Madre15", "relationship fields are rendered");
    assert!(by(&ok).when_local.ends_with("10:00"), "at 10:00 in the org's zone: {:?}", by(&ok));
    assert_eq!(by(&ok).time_zone, "America/Santiago");
    assert_eq!(by(&refused).status, "not sent");
    assert_eq!(by(&refused).reason, "no consent");

    // The daemon then plans the same moment.
    start(&mut h).await;
    let mut c = h.store().conn().await.unwrap();
    let timers = recado::store::timers_of(&mut c, SOURCE, Some(&[ok.as_str()])).await.unwrap();
    let reminder = timers.iter().find(|t| t.rule_id == "recordatorio").expect("a timer for the reminder");
    assert_eq!(reminder.due_at, by(&ok).when_utc.unwrap().timestamp_millis(), "due when the plan said");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_daily_allocation_stops_every_call_to_the_org_and_keeps_the_writes_queued() {
    let mut h = org("", "").await;
    start(&mut h).await;
    let sf = h.sandbox.salesforce();
    let m = mother(&h, 17);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(4), "Agendada");
    wait_for("the confirmation", Duration::from_secs(20), || async { h.sent_count() == 1 }).await;
    settle(&h).await;
    sf.set_usage(15_000, 15_000);
    let refused_before = sf.limit_refusals();
    wait_for("Salesforce to refuse a call", Duration::from_secs(20), || async { sf.limit_refusals() > refused_before })
        .await;
    let calls = sf.total_requests();
    more_polls(&h, 6).await;
    // A write-back waits too, instead of spending refused calls.
    let write = recado::domain::FieldWrite {
        source_id: SOURCE.into(),
        target: recado::domain::WriteTarget::Record(recado::domain::RecordKey(c.clone())),
        field: "WhatsApp_Estado__c".into(),
        value: "delivered".into(),
    };
    queue(&h, &[write]).await;
    more_polls(&h, 6).await;
    assert_eq!(sf.total_requests(), calls, "no call to the org while the allocation is spent");
    let health = h.running().ctx().health.get(&format!("source:{SOURCE}")).unwrap_or_default();
    let paused = health.quota.as_ref().and_then(|q| q.paused_for_ms).unwrap_or(0);
    assert!(paused > 10 * 60 * 1000, "/healthz says the source waits: {health:?}");
    let mut conn = h.store().conn().await.unwrap();
    assert_eq!(recado::store::pending_write_count(&mut conn).await.unwrap(), 1, "the write waits, queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_credentials_flow_signs_in_reads_and_writes_back() {
    let mut h = org("", "").await;
    let jwt = format!(
        "    auth:\n      flow: jwt_bearer\n      consumer_key: \"{}\"\n      username: \"{}\"\n      private_key_file: \"{}\"\n",
        recado::sandbox::salesforce::SANDBOX_CONSUMER_KEY,
        recado::sandbox::salesforce::SANDBOX_USERNAME,
        h.dir.path().join("salesforce.key").display(),
    );
    let yaml = h.yaml_override.take().unwrap();
    assert!(yaml.contains(&jwt), "the JWT block is where the test expects it");
    let credentials = format!(
        "    auth:\n      flow: client_credentials\n      consumer_key: \"{}\"\n      client_secret: \"{}\"\n",
        recado::sandbox::salesforce::SANDBOX_CLIENT_ID,
        recado::sandbox::salesforce::SANDBOX_CLIENT_SECRET,
    );
    h.yaml_override = Some(yaml.replace(&jwt, &credentials));
    h.user(18, false, None);
    start(&mut h).await;
    let m = mother(&h, 18);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(4), "Agendada");
    wait_field(&h, &c, "WhatsApp_Estado__c", "delivered").await;
    assert_eq!(h.running().ctx().health.get(&format!("source:{SOURCE}")).unwrap_or_default().last_error, None);

    // A wrong secret is refused with Salesforce's words and a hint.
    h.stop().await;
    let yaml = h.yaml_override.take().unwrap();
    h.yaml_override = Some(yaml.replace(recado::sandbox::salesforce::SANDBOX_CLIENT_SECRET, "not-the-secret"));
    h.start_without_waiting().await;
    wait_for("the sign-in to be refused", Duration::from_secs(20), || async {
        let health = h.running().ctx().health.get(&format!("source:{SOURCE}")).unwrap_or_default();
        health.last_error.is_some_and(|e| e.contains("invalid_client"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_where_condition_on_today_is_read_again_each_day_and_a_record_entering_it_counts_as_new() {
    let mut h = org("    where: \"Dia_Control__c = TODAY\"\n", "").await;
    let santiago = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms).unwrap().with_timezone(&chrono_tz::America::Santiago).date_naive()
    };
    let today = santiago(h.sandbox.salesforce().now_ms());
    let m = mother(&h, 19);
    h.user(19, false, None);
    let control = |day: chrono::NaiveDate| {
        h.sandbox
            .salesforce()
            .create(
                "Cita__c",
                fields(json!({"Contacto__c": m, "Fecha__c": (Utc::now() + chrono::Duration::days(3)).to_rfc3339(),
                "Dia_Control__c": day.to_string(), "Estado__c": "Agendada"})),
            )
            .unwrap()
    };
    let _today = control(today);
    let tomorrow = control(today.succ_opt().unwrap());
    start(&mut h).await;
    settle(&h).await;
    assert_eq!(h.sent_count(), 0, "the baseline sends nothing");
    let sf = h.sandbox.salesforce();
    let full_reads =
        || sf.queries().iter().filter(|q| q.contains("WHERE Dia_Control__c = TODAY") && !q.contains("Id IN")).count();
    let before = full_reads();

    // A day later nobody edited the record, but it now meets the condition.
    sf.advance(Duration::from_secs(24 * 3600));
    wait_field(&h, &tomorrow, "WhatsApp_Estado__c", "delivered").await;
    settle(&h).await;
    assert_eq!(h.sent_count(), 1, "only the record that entered the condition");
    assert_eq!(full_reads(), before + 1, "one full read for the new day, then incremental polls again");
}

/// An org whose rule announces a change of the Contact's first name, an appointment of person
/// `n` saved before the overlap, the daemon settled, and then the Contact renamed: nothing is
/// sent yet, as the appointment's own stamp did not move. Returns the appointment's id.
async fn renamed_contact(h: &mut Harness, n: u32) -> String {
    let m = mother(h, n);
    h.user(n, false, None);
    let c = cita(h, &m, Utc::now() + chrono::Duration::days(5), "Agendada");
    // Saved a while ago, before the overlap: incremental reads do not bring it again.
    h.sandbox.salesforce().advance(Duration::from_secs(3 * 60));
    start(h).await;
    settle(h).await;
    h.sandbox.salesforce().update("Contact", &m, fields(json!({"FirstName": "Marisol"}))).unwrap();
    more_polls(h, 3).await;
    h.quiet().await;
    assert_eq!(h.sent_count(), 0, "the appointment's own stamp did not move: incremental polls do not see it");
    c
}

const RENAME_RULE: &str = r#"
  - id: nombre
    source: citas
    when: { changed: Contacto__r.FirstName }
    provider: whatsapp
    template:
      name: encuesta_seguimiento
      language: es
      body: ["{{ Contacto__r.FirstName }}"]
      button_url_suffix: "cita?id={{ Id }}"
"#;

/// Full SELECTs without a condition: full reads.
fn full_reads(sf: &recado::sandbox::salesforce::SalesforceState) -> usize {
    sf.queries().iter().filter(|q| q.starts_with("SELECT") && !q.contains("WHERE")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_the_contact_is_seen_by_the_next_full_read() {
    // The related check is due after the full read here, so only the full read can see it.
    let mut h = org("    full_read_every: 10m\n", RENAME_RULE).await;
    h.yaml_override = h.yaml_override.take().map(|y| y.replace("deletions_every: 2m", "deletions_every: 30m"));
    renamed_contact(&mut h, 20).await;
    let sf = h.sandbox.salesforce();
    let before = full_reads(sf);
    sf.advance(Duration::from_secs(11 * 60));
    wait_for("the change on the Contact to be seen", Duration::from_secs(20), || async { h.sent_count() == 1 }).await;
    assert_eq!(h.sent_to(20)[0].params[0], "Marisol");
    assert_eq!(full_reads(sf), before + 1, "seen by a full read");
    assert!(!sf.queries().iter().any(|q| q.starts_with("SELECT Id FROM Contact")), "not by the related check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_new_tasks_are_looked_up_under_the_uri_limit_and_created_once() {
    let mut h = org(TASK_LOG, "").await;
    add_task_fields(&h);
    let m = mother(&h, 21);
    let ids = many_citas(&h, &m, 200);
    start(&mut h).await;
    let sf = h.sandbox.salesforce();
    let before = sf.count(SfKind::Query);
    // 200 entries at once, each with a realistic provider id (the keys are long).
    let writes: Vec<recado::domain::FieldWrite> = ids
        .iter()
        .enumerate()
        .flat_map(|(n, id)| {
            let entry = format!("out:wamid.HBgLNTY5ODc2NTQzMjEVAgARGBI{n:012}QUFBQUFBQUFBQUFBQUFBQQA=");
            [("direction", "outbound".to_string()), ("status", "sent".to_string())].map(|(field, value)| {
                recado::domain::FieldWrite {
                    source_id: SOURCE.into(),
                    target: recado::domain::WriteTarget::Interaction {
                        record: recado::domain::RecordKey(id.clone()),
                        entry: entry.clone(),
                    },
                    field: field.into(),
                    value,
                }
            })
        })
        .collect();
    queue(&h, &writes).await;
    wait_for("200 Tasks", Duration::from_secs(30), || async { tasks(&h).len() == 200 }).await;
    h.quiet().await;
    assert_eq!(tasks(&h).len(), 200, "each entry once");
    let lookups = sf.queries().iter().filter(|q| q.contains("FROM Task")).count();
    assert_eq!(
        lookups,
        5,
        "200 keys looked up 40 at a time (queries since start: {})",
        sf.count(SfKind::Query) - before
    );
    let health = h.running().ctx().health.get(&format!("flusher:salesforce Cita__c ({SOURCE})")).unwrap_or_default();
    assert_eq!(health.last_error, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opt_out_unticks_the_consent_on_the_contact_and_her_next_appointment_gets_nothing() {
    let mut h = org("", "").await;
    h.user(21, true, None);
    start(&mut h).await;
    let sf = h.sandbox.salesforce();
    let m = mother(&h, 21);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(4), "Agendada");
    wait_field(&h, &c, "WhatsApp_Estado__c", "read").await;
    let sent = h.sent_to(21);
    assert_eq!(sent.len(), 1);
    h.says(21, "BAJA", Some(&sent[0].id));
    wait_for("the consent on the Contact to be unticked", Duration::from_secs(20), || async {
        sf.get("Contact", &m).and_then(|r| r.get("Consentimiento_WhatsApp__c").cloned()) == Some(json!(false))
    })
    .await;
    wait_field(&h, &c, "WhatsApp_Respuesta__c", "BAJA").await;
    let errors = field(&h, &c, "WhatsApp_Error__c");
    assert!(errors.is_null() || errors == "", "no write-back problem on the appointment: {errors}");
    // Her next appointment is read with the consent unticked: no template for it.
    let _next = cita(&h, &m, Utc::now() + chrono::Duration::days(11), "Agendada");
    settle(&h).await;
    let templates = h.sent_to(21).iter().filter(|s| s.template.is_some()).count();
    assert_eq!(templates, 1, "only the first appointment's confirmation");
}

fn reply_write(id: &str, value: &str) -> recado::domain::FieldWrite {
    recado::domain::FieldWrite {
        source_id: SOURCE.into(),
        target: recado::domain::WriteTarget::Record(recado::domain::RecordKey(id.into())),
        field: "WhatsApp_Respuesta__c".into(),
        value: value.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_refused_for_one_record_is_split_until_that_record_is_alone_and_the_others_are_written() {
    let mut h = org("", "").await;
    let m = mother(&h, 22);
    let ids = many_citas(&h, &m, 3);
    start(&mut h).await;
    settle(&h).await;
    let sf = h.sandbox.salesforce();
    // A value Salesforce cannot parse fails the whole call, whatever allOrNone says.
    sf.inject(SfFault {
        kind: None,
        status: 400,
        error_code: "JSON_PARSER_ERROR".into(),
        message: "Cannot deserialize instance of double from VALUE_STRING".into(),
        expire_session: false,
        timeout: false,
        applied: false,
        record: Some(ids[1].clone()),
        count: 100,
    });
    let before = sf.count(SfKind::Composite);
    queue(&h, &ids.iter().map(|id| reply_write(id, "Confirmo")).collect::<Vec<_>>()).await;
    wait_field(&h, &ids[0], "WhatsApp_Respuesta__c", "Confirmo").await;
    wait_field(&h, &ids[2], "WhatsApp_Respuesta__c", "Confirmo").await;
    settle(&h).await;
    assert_eq!(field(&h, &ids[1], "WhatsApp_Respuesta__c"), Value::Null);
    // All three, then [first] and [second, third], then [second] and [third].
    assert_eq!(sf.count(SfKind::Composite) - before, 5);
    let mut conn = h.store().conn().await.unwrap();
    let left = recado::store::pending_writes(&mut conn, &[SOURCE.to_string()], 100).await.unwrap();
    assert!(left.is_empty(), "the refused value is reported and dropped, not retried: {left:?}");
    more_polls(&h, 3).await;
    assert_eq!(sf.count(SfKind::Composite) - before, 5, "and never sent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_deleted_while_running_is_described_again_and_only_its_values_are_refused() {
    let mut h = org("", "").await;
    h.user(23, false, None);
    start(&mut h).await;
    let m = mother(&h, 23);
    let first = cita(&h, &m, Utc::now() + chrono::Duration::days(4), "Agendada");
    wait_field(&h, &first, "WhatsApp_Estado__c", "delivered").await;
    let sf = h.sandbox.salesforce();
    let describes = sf.count(SfKind::Describe);
    assert!(sf.remove_field("Cita__c", "WhatsApp_Estado__c"));
    let second = cita(&h, &m, Utc::now() + chrono::Duration::days(6), "Agendada");
    wait_for("the second appointment's status time", Duration::from_secs(20), || async {
        field(&h, &second, "WhatsApp_Fecha__c").is_string()
    })
    .await;
    settle(&h).await;
    assert!(sf.count(SfKind::Describe) > describes, "described again after the refusal");
    let mut conn = h.store().conn().await.unwrap();
    let left = recado::store::pending_writes(&mut conn, &[SOURCE.to_string()], 100).await.unwrap();
    assert!(left.is_empty(), "values for the deleted field are dropped: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_only_a_template_names_is_read_without_being_listed() {
    let rule = r#"
  - id: control
    source: citas
    when: { changed: Estado__c, to: Control }
    provider: whatsapp
    template:
      name: encuesta_seguimiento
      language: es
      body: ["{{ Dia_Control__c | date }}"]
      button_url_suffix: "cita?id={{ Id }}"
"#;
    let mut h = org("", rule).await;
    let m = mother(&h, 24);
    h.user(24, false, None);
    let c = h
        .sandbox
        .salesforce()
        .create(
            "Cita__c",
            fields(json!({"Contacto__c": m, "Fecha__c": Utc::now().to_rfc3339(), "Estado__c": "Agendada", "Dia_Control__c": "2026-12-01"})),
        )
        .expect("cita created");
    start(&mut h).await;
    settle(&h).await;
    let sf = h.sandbox.salesforce();
    sf.update("Cita__c", &c, fields(json!({"Estado__c": "Control"}))).unwrap();
    wait_for("the control message", Duration::from_secs(20), || async { h.sent_to(24).len() == 1 }).await;
    assert_eq!(h.sent_to(24)[0].params[0], "01/12/2026");
    assert!(sf.queries().iter().any(|q| q.contains("Dia_Control__c")), "selected from the template");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_refused_on_an_object_without_activities_never_hold_back_the_statuses() {
    let mut h = org(TASK_LOG, "").await;
    let sf = h.sandbox.salesforce();
    add_task_fields(&h);
    assert!(sf.set_activities("Cita__c", false));
    h.user(25, true, None);
    start(&mut h).await;
    let m = mother(&h, 25);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(3), "Agendada");
    wait_field(&h, &c, "WhatsApp_Estado__c", "read").await;
    settle(&h).await;
    assert!(tasks(&h).is_empty(), "Salesforce refuses a Task on an object without Allow Activities");
    let mut conn = h.store().conn().await.unwrap();
    let left = recado::store::pending_writes(&mut conn, &[SOURCE.to_string()], 100).await.unwrap();
    assert!(left.is_empty(), "the refused entries are reported and dropped: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_entry_for_a_deleted_appointment_is_dropped_not_retried_for_ever() {
    let mut h = org(TASK_LOG, "").await;
    add_task_fields(&h);
    h.user(26, false, None);
    start(&mut h).await;
    let sf = h.sandbox.salesforce();
    let m = mother(&h, 26);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(3), "Agendada");
    wait_for("the message's Task", Duration::from_secs(20), || async { tasks(&h).len() == 1 }).await;
    settle(&h).await;
    let key = tasks(&h)[0]["Recado_Id__c"].as_str().unwrap().trim_start_matches("citas:").to_string();
    // The appointment is deleted, and its Task with it; then a status for the message arrives.
    assert!(sf.delete("Cita__c", &c));
    let write = recado::domain::FieldWrite {
        source_id: SOURCE.into(),
        target: recado::domain::WriteTarget::Interaction { record: recado::domain::RecordKey(c.clone()), entry: key },
        field: "status".into(),
        value: "read".into(),
    };
    queue(&h, &[write]).await;
    let store = h.store();
    wait_for("the entry to leave the queue", Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let mut conn = store.conn().await.unwrap();
            recado::store::pending_writes(&mut conn, &[SOURCE.to_string()], 100).await.unwrap().is_empty()
        }
    })
    .await;
    let calls = sf.count(SfKind::Composite);
    more_polls(&h, 5).await;
    h.quiet().await;
    assert_eq!(sf.count(SfKind::Composite), calls, "not written again and again");
    assert!(tasks(&h).is_empty(), "no Task on a deleted appointment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_times_are_read_in_the_zone_rules_use_when_the_org_is_elsewhere() {
    // The org runs on California time; the programme is in Santiago.
    let mut h = org("", "defaults:\n  time_zone: America/Santiago\n").await;
    h.sandbox.salesforce().set_time_zone("America/Los_Angeles");
    h.user(27, false, None);
    start(&mut h).await;
    let m = mother(&h, 27);
    // 13:00 UTC on 1 December is 10:00 in Santiago (and 05:00 in Los Angeles).
    let at = DateTime::parse_from_rfc3339("2026-12-01T13:00:00Z").unwrap().with_timezone(&Utc);
    cita(&h, &m, at, "Agendada");
    wait_for("the confirmation", Duration::from_secs(20), || async { h.sent_to(27).len() == 1 }).await;
    let sent = h.sent_to(27);
    assert!(sent[0].params[2].contains("10:00"), "the time in Santiago: {:?}", sent[0].params);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_created_whose_answer_is_lost_is_found_and_not_created_again() {
    let mut h = org(TASK_LOG, "").await;
    add_task_fields(&h);
    h.user(28, true, None);
    start(&mut h).await;
    let sf = h.sandbox.salesforce();
    // Every collection call's answer is lost once (the write-back and the Task alike): each is
    // carried out by Salesforce, and recado hears a 503.
    sf.inject(lost_answers(3));
    let m = mother(&h, 28);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(3), "Agendada");
    wait_field(&h, &c, "WhatsApp_Estado__c", "read").await;
    wait_for("the Task to say read", Duration::from_secs(20), || async {
        tasks(&h).iter().any(|t| t.get("WhatsApp_Estado__c").and_then(Value::as_str) == Some("read"))
    })
    .await;
    settle(&h).await;
    assert_eq!(tasks(&h).len(), 1, "one Task for the message, although its creation's answer was lost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_the_contact_is_seen_at_the_next_related_check_without_a_full_read() {
    let mut h = org("", RENAME_RULE).await;
    let c = renamed_contact(&mut h, 29).await;
    // The related check runs with the deletions check (every 2 minutes here), far sooner than
    // the hourly full read.
    let sf = h.sandbox.salesforce();
    let before = full_reads(sf);
    sf.advance(Duration::from_secs(150));
    wait_for("the change on the Contact to be seen", Duration::from_secs(20), || async { h.sent_count() == 1 }).await;
    assert_eq!(h.sent_to(29)[0].params[0], "Marisol");
    assert_eq!(full_reads(sf), before, "no full read");
    assert!(
        sf.queries().iter().any(|q| q.contains(&format!("WHERE Id IN ('{c}')"))),
        "only that appointment is read again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_of_the_orgs_time_zone_is_not_taken_for_changed_appointments() {
    let rule = r#"
  - id: nueva_hora
    source: citas
    when: { changed: Fecha__c }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Contacto__r.FirstName }}", "{{ Estado__c }}", "{{ Fecha__c | date }}"]
"#;
    let mut h = org("", rule).await;
    let m = mother(&h, 30);
    h.user(30, false, None);
    let c = cita(&h, &m, Utc::now() + chrono::Duration::days(6), "Agendada");
    start(&mut h).await;
    settle(&h).await;
    h.stop().await;
    // The org's default zone is changed while recado is stopped: every date-time now reads as
    // another local time.
    h.sandbox.salesforce().set_time_zone("America/Los_Angeles");
    start(&mut h).await;
    settle(&h).await;
    assert_eq!(h.sent_count(), 0, "a new zone is not a new appointment time");
    // A real change still counts.
    let later = (Utc::now() + chrono::Duration::days(8)).to_rfc3339();
    h.sandbox.salesforce().update("Cita__c", &c, fields(json!({"Fecha__c": later}))).unwrap();
    wait_for("the new time to be announced", Duration::from_secs(20), || async { h.sent_count() == 1 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_taken_in_the_chat_becomes_one_record_upserted_on_recados_key() {
    let reportes = r#"  - id: reportes
    type: salesforce
    login_url: "{base}"
    api_version: "62.0"
    object: Reporte__c
    key_field: Recado_Key__c
    phone_field: Telefono__c
    default_region: CL
    poll_interval: 150ms
    flush_interval: 100ms
    auth:
      flow: jwt_bearer
      consumer_key: "{consumer}"
      username: "{user}"
      private_key_file: "{key}"
"#;
    let flows = r#"
inbound:
  opt_out_reply: "Listo, no te escribiremos más."
  entry_flow: reporte
flows:
  - id: reporte
    steps:
      - id: que
        ask: { text: "¿Qué problema quieres reportar?" }
      - id: guardar
        save:
          to: reportes
          fields: { Problema__c: "{{ answers.que }}", Telefono__c: "{{ contact.phone }}" }
      - id: gracias
        say: "Gracias, registramos tu reporte."
"#;
    let mut h = org("", flows).await;
    let extra = reportes
        .replace("{base}", &h.sandbox.salesforce_url())
        .replace("{consumer}", recado::sandbox::salesforce::SANDBOX_CONSUMER_KEY)
        .replace("{user}", recado::sandbox::salesforce::SANDBOX_USERNAME)
        .replace("{key}", &h.dir.path().join("salesforce.key").display().to_string());
    let yaml = h.yaml_override.take().unwrap_or_default();
    h.yaml_override = Some(yaml.replacen("\nrules:\n", &format!("{extra}\nrules:\n"), 1));
    let sf = h.sandbox.salesforce();
    sf.define_object(ObjectDef::new(
        "Reporte__c",
        "a03",
        vec![
            FieldDef::new("Recado_Key__c", FieldKind::String).with_length(40).external_id(),
            FieldDef::new("Problema__c", FieldKind::String).with_length(255),
            FieldDef::new("Telefono__c", FieldKind::Phone),
        ],
    ));
    h.user(31, false, None);
    start(&mut h).await;
    h.says(31, "hola", None);
    wait_for("the question", Duration::from_secs(20), || async { h.meta_sent_to(31).len() == 1 }).await;
    // Salesforce creates the record and the answer is lost.
    let sf = h.sandbox.salesforce();
    sf.inject(lost_answers(1));
    h.says(31, "Un bache grande", None);
    wait_for("the thanks", Duration::from_secs(20), || async { h.meta_sent_to(31).len() == 2 }).await;
    wait_for("the report's record", Duration::from_secs(20), || async { !sf.records("Reporte__c").is_empty() }).await;
    settle(&h).await;
    let all = sf.records("Reporte__c");
    assert_eq!(all.len(), 1, "one record although the first answer was lost: {all:?}");
    assert_eq!(all[0]["Problema__c"], "Un bache grande");
    assert!(all[0]["Recado_Key__c"].as_str().is_some_and(|k| k.starts_with("R-")), "{all:?}");
    let mut conn = h.store().conn().await.unwrap();
    let left = recado::store::pending_writes(&mut conn, &["reportes".to_string()], 100).await.unwrap();
    assert!(left.is_empty(), "nothing left queued: {left:?}");
}

/// `recado check --online` on an org: the write-back fields (which reads never select) do not
/// count as missing, a right configuration passes, and a misspelt field is named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_passes_a_right_org_configuration_and_names_a_misspelt_field() {
    let mut h = org("", "").await;
    let config = h.dir.path().join("recado.yaml");
    let check = |yaml: String| {
        std::fs::write(&config, yaml).unwrap();
        crate::health::recado_with_config(&["check", "--online"], &config)
    };
    let yaml = h.yaml_override.take().unwrap();
    let (code, text) = check(yaml.clone());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("online: every source answered"), "{text}");
    let (code, text) = check(yaml.replace("fields: [Fecha__c, Estado__c,", "fields: [Fecha__c, Estdo__c,"));
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("Estdo__c"), "{text}");
    // recado does not create Salesforce fields: a misspelt write-back field is found before
    // the first write fails, and a status field that is not Text too.
    let (code, text) = check(yaml.replace("status: WhatsApp_Estado__c", "status: WhatsApp_Estdo__c"));
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("'WhatsApp_Estdo__c' (named by write_back) is not a field of Cita__c, and recado does not create fields; did you mean 'WhatsApp_Estado__c'?"),
        "{text}"
    );
    let swapped = yaml.replace(
        "status: WhatsApp_Estado__c\n      status_at: WhatsApp_Fecha__c",
        "status: WhatsApp_Fecha__c\n      status_at: WhatsApp_Estado__c",
    );
    assert_ne!(swapped, yaml);
    let (code, text) = check(swapped);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("'WhatsApp_Fecha__c' (a status field) is of type datetime, and needs to be Text"), "{text}");
}

/// Rehearsing the Salesforce example configuration (only its port and intervals changed): the
/// sandbox defines the object from what the configuration names (a lookup to a Contact for
/// `Contacto__r.*`, the consent a checkbox), creates example records, and the daemon on the
/// rehearsal copy signs in, reads them as the baseline, and a record added as staff would gets
/// its message with the status written on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_salesforce_example_rehearsed_on_the_sandbox_sends_to_a_new_record() {
    let sandbox = recado::sandbox::Sandbox::start(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        recado::sandbox::MetaSettings { status_delay_ms: 30, ..Default::default() },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/salesforce.example.yaml"))
        .unwrap()
        .replace("listen: \"127.0.0.1:8080\"", &format!("listen: \"127.0.0.1:{port}\""))
        .replace("poll_interval: 30s", "poll_interval: 200ms\n    flush_interval: 200ms")
        .replace("send_between: \"09:00-20:00\"", "send_between: \"00:00-23:59\"");
    let config = dir.path().join("recado.yaml");
    std::fs::write(&config, example).unwrap();
    let rehearsal =
        recado::sandbox::rehearsal::prepare(&sandbox, &[config], &dir.path().join("ensayo"), &[]).expect("rehearsal");
    let text = rehearsal.notes.join("\n");
    assert!(text.contains("object Cita__c defined") && text.contains("with 3 record(s)"), "{text}");
    let copy =
        recado::config::Config::load(std::slice::from_ref(&rehearsal.config_path)).unwrap_or_else(|e| panic!("{e}"));
    let running = recado::app::start(copy).await.unwrap();
    let store = running.ctx().store.clone();
    wait_for("the baseline read", Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let mut c = store.conn().await.unwrap();
            recado::store::source_state(&mut c, "citas").await.unwrap().baseline_done
        }
    })
    .await;
    let sf = sandbox.salesforce();
    let contact = sf
        .create(
            "Contact",
            fields(json!({"FirstName": "Nueva", "LastName": "Familia", "MobilePhone": "+56 9 8765 9199", "Consentimiento_WhatsApp__c": true})),
        )
        .unwrap();
    sandbox.meta().add_user(recado::sandbox::SimUser { wa_id: "56987659199".into(), ..Default::default() });
    let cita = sf
        .create(
            "Cita__c",
            fields(json!({"Contacto__c": contact, "Fecha__c": (Utc::now() + chrono::Duration::days(9)).to_rfc3339(), "Estado__c": "Agendada", "Centro__c": "CESFAM"})),
        )
        .unwrap();
    wait_for("the new record's message, read, on the record", Duration::from_secs(20), || async {
        sf.get("Cita__c", &cita)
            .is_some_and(|r| matches!(r.get("WhatsApp_Estado__c").and_then(Value::as_str), Some("delivered" | "read")))
    })
    .await;
    assert_eq!(sandbox.meta().sent_count(), 1, "only the new record: the examples are the baseline");
    running.stop().await;
    sandbox.stop().await;
}

/// The people are Contacts and the inbox is a Case per hand-off: a Contact who asks for a
/// person gets a Case linked to them (`record_id: ContactId`), named from their record, and a
/// reply written in the Case reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_who_asks_for_a_person_gets_a_case_linked_to_their_contact() {
    let mut h = Harness::new(vec![]).await;
    define_org(&h);
    h.sandbox.salesforce().define_object(ObjectDef::new(
        "Case",
        "500",
        vec![
            FieldDef::new("Recado_Key__c", FieldKind::String).with_length(20).external_id(),
            FieldDef::reference("ContactId", "Contact"),
            FieldDef::new("SuppliedPhone", FieldKind::Phone).with_length(40),
            FieldDef::new("SuppliedName", FieldKind::String).with_length(80),
            FieldDef::new("Status", FieldKind::Picklist).with_length(40),
            FieldDef::new("Subject", FieldKind::String).with_length(255),
            FieldDef::new("Description", FieldKind::Textarea).with_length(32_000),
            FieldDef::new("Recado_Estado__c", FieldKind::String).with_length(80),
            FieldDef::new("Recado_Abierta__c", FieldKind::Datetime),
            FieldDef::new("Respuesta__c", FieldKind::Textarea).with_length(4_000),
        ],
    ));
    let contact = mother(&h, 31);
    let other = mother(&h, 32);
    let base = h.sandbox.salesforce_url();
    let key = h.dir.path().join("salesforce.key");
    std::fs::write(&key, recado::sandbox::keys::PRIVATE_KEY_PEM).expect("key written");
    let auth = format!(
        "    auth:\n      flow: jwt_bearer\n      consumer_key: \"{}\"\n      username: \"{}\"\n      private_key_file: \"{}\"\n",
        recado::sandbox::salesforce::SANDBOX_CONSUMER_KEY,
        recado::sandbox::salesforce::SANDBOX_USERNAME,
        key.display()
    );
    h.yaml_override = Some(format!(
        r#"
state:
  path: "{state}"
http:
  listen: "127.0.0.1:0"
providers:
{provider}    messages_per_second: 1000
    pair_interval: 10ms
sources:
  - id: familias
    type: salesforce
    login_url: "{base}"
    api_version: "62.0"
    object: Contact
    fields: [FirstName]
    phone_field: MobilePhone
    default_region: CL
    consent:
      field: Consentimiento_WhatsApp__c
    poll_interval: 150ms
    flush_interval: 100ms
    deletions_every: 2m
{auth}  - id: casos
    type: salesforce
    login_url: "{base}"
    api_version: "62.0"
    object: Case
    key_field: Recado_Key__c
    where: "Recado_Key__c != null"
    fields: [Status, Subject]
    phone_field: SuppliedPhone
    default_region: CL
    poll_interval: 150ms
    flush_interval: 100ms
    deletions_every: 2m
{auth}
inbound:
  opt_out_reply: "Listo, no te escribiremos más."
handoff:
  inbox: casos
  keywords: [AGENTE]
  name_field: FirstName
  opened_reply: "Te comunicamos con una persona del equipo."
  closed_reply: "Cerramos tu consulta."
  close_values: [Closed]
  reopen_template: {{ name: retomar_conversacion, language: es, body: ["{{{{ FirstName }}}}"] }}
  fields:
    opened_at: Recado_Abierta__c
    name: SuppliedName
    record_id: ContactId
    topic: Subject
    transcript: Description
    state: Recado_Estado__c
    reply: Respuesta__c
    close: Status
"#,
        state = h.state_path().display(),
        provider = h.provider_yaml(),
    ));
    h.start_without_waiting().await;
    let store = h.store();
    wait_for("the first read of the contacts", Duration::from_secs(30), || {
        let store = store.clone();
        async move {
            let mut c = store.conn().await.expect("conn");
            recado::store::source_state(&mut c, "familias").await.expect("state").baseline_done
        }
    })
    .await;
    h.says(31, "AGENTE", None);
    let case = || h.sandbox.salesforce().records("Case").into_iter().next();
    let text = |c: &Map<String, Value>, f: &str| c.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    wait_for("the Case", Duration::from_secs(20), || async {
        case().is_some_and(|c| text(&c, "Recado_Estado__c") == "open" && text(&c, "Description").contains("▸ AGENTE"))
    })
    .await;
    let c = case().unwrap();
    assert_eq!(text(&c, "ContactId"), contact, "linked to the Contact who asked, not to {other}");
    assert_eq!(text(&c, "SuppliedName"), "Madre31");
    let id = text(&c, "Id");
    h.sandbox
        .salesforce()
        .update("Case", &id, fields(json!({"Respuesta__c": "Hola, ¿en qué te ayudo?"})))
        .expect("staff edit");
    wait_for("the reply sent and taken from the Case", Duration::from_secs(20), || async {
        h.sent_to(31).iter().any(|m| m.text.as_deref() == Some("Hola, ¿en qué te ayudo?"))
            && case().is_some_and(|c| text(&c, "Respuesta__c").is_empty())
    })
    .await;
    assert_eq!(h.sandbox.salesforce().records("Case").len(), 1, "one Case");
}
