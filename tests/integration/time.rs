//! Time as a trigger: date-relative reminders, lateness, quiet hours and campaigns. Time moves
//! by the daemon's injected clock, never by waiting.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use serde_json::{json, Value};

use crate::harness::{row, wait_for, Harness, SHEET, TAB};

/// A row whose appointment is two days and `in_secs` after `now` (so a `-2d` reminder is due
/// `in_secs` after `now`), as typed in the sheet's zone.
fn with_appointment(now: DateTime<Utc>, id: u32, in_secs: i64) -> Vec<Value> {
    let mut r = row(id, &format!("P{id}"), "Sí", "Activo");
    r.push(json!(appointment(now, in_secs)));
    r
}

/// `2026-11-23 10:00:05` in America/Santiago (the sheet's zone).
fn appointment(now: DateTime<Utc>, in_secs: i64) -> String {
    let tz: chrono_tz::Tz = "America/Santiago".parse().unwrap();
    let at = now + chrono::Duration::days(2) + chrono::Duration::seconds(in_secs);
    at.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
}

const REMINDER: &str = r#"
  - id: recordatorio
    source: inscripciones
    when: { date: Fecha cita, offset: -2d }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Nombre }}", "{{ Curso }}", "{{ row['Fecha cita'] }}"]
"#;

/// Every quarter, the survey to every graduate.
const QUARTERLY: &str = r#"
  - id: trimestral
    source: inscripciones
    when: { cron: "0 10 1 */3 *" }
    if: "Estado == 'Egresado'"
    provider: whatsapp
    template:
      name: encuesta_seguimiento
      language: es
      body: ["{{ Nombre }}"]
      button_url_suffix: "viewform?entry.1={{ ID | urlencode }}"
"#;

/// A harness whose tab has an appointment column, holding `rows(now)`.
async fn reminder_harness(rows: impl FnOnce(DateTime<Utc>) -> Vec<Vec<Value>>) -> Harness {
    let mut h = Harness::new(vec![]).await;
    let mut all = vec![{
        let mut hd = crate::harness::header();
        hd.push(json!("Fecha cita"));
        hd
    }];
    all.extend(rows(h.clock.now()));
    // Typed as a person types them: the appointments become date-time cells.
    h.sandbox.google().seed_typed(
        crate::harness::SHEET,
        "America/Santiago",
        "es_CL",
        vec![(crate::harness::TAB.to_string(), all)],
    );
    h.extra_rules = REMINDER.to_string();
    h
}

async fn timer_state(h: &Harness, key: &str) -> Vec<String> {
    let mut c = h.store().conn().await.unwrap();
    let t = recado::store::timers_of(&mut c, "inscripciones", Some(&[key])).await.unwrap();
    t.into_iter().map(|t| t.state).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reminder_fires_once_at_its_time_and_the_baseline_rows_get_theirs() {
    let mut h = reminder_harness(|now| vec![with_appointment(now, 100, 3600)]).await;
    h.user(100, true, None);
    h.start().await;
    assert_eq!(timer_state(&h, "100").await, vec!["pending"], "planned for an existing row at the first read");
    h.quiesce().await;
    assert!(h.sent_to(100).is_empty(), "not before its time");
    h.clock.advance(Duration::from_secs(3601));
    wait_for("the reminder", Duration::from_secs(15), || async { !h.sent_to(100).is_empty() }).await;
    h.wait_cell("100", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    assert_eq!(h.sent_to(100).len(), 1);
    assert_eq!(timer_state(&h, "100").await, vec!["fired"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_the_date_moves_the_reminder_and_clearing_consent_or_deleting_cancels() {
    let mut h = reminder_harness(|now| {
        vec![with_appointment(now, 101, 3 * 3600), with_appointment(now, 102, 3600), with_appointment(now, 103, 3600)]
    })
    .await;
    h.user(101, true, None);
    h.start().await;
    // 101's appointment moves two hours earlier: the reminder moves too.
    h.edit("101", "Fecha cita", json!(appointment(h.clock.now(), 3600)));
    // 102 withdraws consent; 103's row is deleted.
    h.edit("102", "Consentimiento", json!(""));
    let rows = h.sandbox.google().rows(crate::harness::SHEET, crate::harness::TAB);
    let n = rows.iter().position(|r| r[0] == json!(103)).unwrap() + 1;
    assert!(h.sandbox.google().delete_row(crate::harness::SHEET, crate::harness::TAB, n));
    h.quiesce().await;
    h.clock.advance(Duration::from_secs(3601));
    wait_for("the moved reminder", Duration::from_secs(15), || async { !h.sent_to(101).is_empty() }).await;
    h.quiesce().await;
    assert!(h.sent_to(102).is_empty(), "consent withdrawn");
    assert!(h.sent_to(103).is_empty(), "row deleted");
    assert_eq!(timer_state(&h, "102").await, vec!["cancelled"]);
    assert_eq!(timer_state(&h, "103").await, vec!["cancelled"]);
    assert_eq!(h.sent_to(101).len(), 1);
    h.stop().await;
}

/// A first read larger than one commit chunk (2,000 records) plans every record's reminder,
/// those on either side of each chunk's edge included; later, a row deleted in the middle has
/// its reminder cancelled and a moved date moves only that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reminders_are_planned_across_commit_chunks_and_follow_deletions() {
    let ids: Vec<u32> = (1000..5500).collect();
    let mut seeded_at = None;
    let mut h = reminder_harness(|now| {
        seeded_at = Some(now);
        ids.iter().map(|&id| with_appointment(now, id, 3600)).collect()
    })
    .await;
    let seeded_at = seeded_at.unwrap();
    h.start().await;
    let all_timers = || async {
        let mut c = h.store().conn().await.unwrap();
        recado::store::timers_of(&mut c, "inscripciones", None).await.unwrap()
    };
    let timers = all_timers().await;
    assert_eq!(timers.len(), 4500, "one reminder per record");
    assert!(timers.iter().all(|t| t.state == "pending"));
    for edge in ["1000", "2999", "3000", "3001", "4999", "5000", "5499"] {
        assert_eq!(timer_state(&h, edge).await, vec!["pending"], "record {edge}");
    }
    // 3000's row goes; 5000's appointment moves an hour later.
    let rows = h.sandbox.google().rows(SHEET, TAB);
    let n = rows.iter().position(|r| r[0] == json!(3000)).unwrap() + 1;
    assert!(h.sandbox.google().delete_row(SHEET, TAB, n));
    let before = timers.iter().find(|t| t.record_key == "5000").unwrap().due_at;
    // From the time the rows were typed at, so the difference is exactly an hour.
    h.edit("5000", "Fecha cita", json!(appointment(seeded_at, 7200)));
    h.quiesce().await;
    let timers = all_timers().await;
    assert_eq!(timer_state(&h, "3000").await, vec!["cancelled"]);
    let moved = timers.iter().find(|t| t.record_key == "5000").unwrap();
    assert_eq!((moved.state.as_str(), moved.due_at - before), ("pending", 3_600_000));
    assert_eq!(timers.iter().filter(|t| t.state == "pending").count(), 4499);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_planning_and_firing_fires_once_and_downtime_beyond_lateness_skips() {
    let mut h = reminder_harness(|now| vec![with_appointment(now, 104, 120), with_appointment(now, 105, 60)]).await;
    // 104 may be up to 3 minutes late after the restart; 105 may not be late at all.
    h.extra_rules = r#"
  - id: tolerante
    source: inscripciones
    when: { date: Fecha cita, offset: -2d }
    if: "ID == 104"
    provider: whatsapp
    lateness: 3m
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Nombre }}", "{{ Curso }}", "{{ Mentor }}"]
  - id: estricto
    source: inscripciones
    when: { date: Fecha cita, offset: -2d }
    if: "ID == 105"
    provider: whatsapp
    lateness: 0s
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Nombre }}", "{{ Curso }}", "{{ Mentor }}"]
"#
    .to_string();
    h.user(104, true, None);
    h.start().await;
    assert_eq!(timer_state(&h, "104").await, vec!["pending"]);
    h.stop().await;
    // Four minutes down: 104 is two minutes late (within its lateness), 105 three.
    h.clock.advance(Duration::from_secs(240));
    h.start().await;
    wait_for("the late reminder", Duration::from_secs(10), || async { !h.sent_to(104).is_empty() }).await;
    h.wait_cell("105", "Estado WhatsApp", "skipped").await;
    assert!(
        h.cell("105", "Error WhatsApp").contains("while recado was not running"),
        "{}",
        h.cell("105", "Error WhatsApp")
    );
    h.quiesce().await;
    assert_eq!(h.sent_to(104).len(), 1);
    assert!(h.sent_to(105).is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_date_is_reported_on_the_row_once() {
    let mut h = reminder_harness(|now| {
        let mut r = row(106, "P106", "Sí", "Activo");
        r.push(json!("el martes"));
        vec![r, with_appointment(now, 107, 3600)]
    })
    .await;
    h.start().await;
    wait_for("the date problem on the row", Duration::from_secs(10), || async {
        h.cell("106", "Error WhatsApp").contains("'el martes' is not a date")
    })
    .await;
    assert!(
        h.cell("106", "Error WhatsApp").starts_with("date unreadable: Fecha cita"),
        "{}",
        h.cell("106", "Error WhatsApp")
    );
    assert_eq!(timer_state(&h, "107").await, vec!["pending"], "the other rows keep working");
    // Later reads (our own write-back moves the sheet's version) leave the problem on the row.
    h.quiesce().await;
    assert!(h.cell("106", "Error WhatsApp").starts_with("date unreadable"), "{}", h.cell("106", "Error WhatsApp"));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_defer_instead_of_dropping() {
    let mut h = Harness::new(vec![]).await;
    // A window that is closed now: it opens in a few hours (UTC, no holidays).
    let now = h.clock.now();
    let start = (now.hour() + 3) % 24;
    let end = (now.hour() + 5) % 24;
    h.extra_top = format!("defaults:\n  time_zone: UTC\n  send_between: \"{start:02}:00-{end:02}:00\"\n");
    h.start().await;
    h.user(110, true, None);
    h.add_row(row(110, "Noche", "Sí", "Activo"));
    wait_for("the message to be queued", Duration::from_secs(10), || async { !h.messages().await.is_empty() }).await;
    h.quiesce().await;
    assert!(h.sent_to(110).is_empty(), "deferred, not sent");
    let m = &h.messages().await[0];
    assert_eq!(m.state, recado::domain::MessageState::Queued);
    let opens = chrono::DateTime::from_timestamp_millis(m.next_attempt_at).unwrap();
    assert_eq!((opens.hour(), opens.minute()), (start, 0), "due when the window opens");
    assert!(opens > now);
    // The row says until when, not a bare "queued": in the zone the hours were given in (UTC
    // here), named, since the sheet's own zone (every other time on the row) is another.
    h.wait_cell("110", "Estado WhatsApp", &format!("queued until {} (UTC)", opens.format("%Y-%m-%d %H:%M"))).await;
    // When the window opens, it goes.
    h.clock.advance((opens - h.clock.now()).to_std().unwrap() + Duration::from_secs(1));
    h.wait_cell("110", "Estado WhatsApp", "read").await;
    assert_eq!(h.sent_to(110).len(), 1);
    h.stop().await;
}

/// Two rules message the same row: one writes the source's status columns, the other its own
/// (`rules[*].write_back`), so the second does not overwrite the first's status, and neither
/// column is read as data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_with_its_own_status_columns_leaves_the_other_rules_status_alone() {
    let mut h = Harness::new(vec![]).await;
    h.extra_rules = r#"  - id: bienvenida
    source: inscripciones
    when: row_added
    provider: whatsapp
    template: { name: confirmacion_inscripcion, language: es, body: ["{{ Nombre }}", "{{ Curso }}", "{{ Mentor }}"] }
    write_back: { status: Estado bienvenida, status_at: Fecha bienvenida, error: Error bienvenida }
"#
    .to_string();
    let refused = h.fault(crate::harness::Fault::Refused, 1, 116).to_string();
    h.start().await;
    h.user(116, true, None);
    h.add_row(row(116, "Dos", "Sí", "Activo"));
    wait_for("both messages", Duration::from_secs(10), || async { h.messages().await.len() == 2 }).await;
    h.quiesce().await;
    let messages = h.messages().await;
    let state_of = |rule: &str| messages.iter().find(|m| m.rule_id == rule).map(|m| m.state.as_str()).unwrap();
    // One of the two was refused (the fault takes the first send); each row column shows its
    // own rule's outcome.
    let (failed, read) = if state_of("bienvenida") == "failed" {
        (("Estado bienvenida", "Error bienvenida"), ("Estado WhatsApp", "Error WhatsApp"))
    } else {
        (("Estado WhatsApp", "Error WhatsApp"), ("Estado bienvenida", "Error bienvenida"))
    };
    h.wait_cell("116", read.0, "read").await;
    h.wait_cell("116", failed.0, "failed").await;
    assert!(h.cell("116", failed.1).contains(&refused), "{}", h.cell("116", failed.1));
    assert_eq!(h.cell("116", read.1), "");
    assert!(!h.cell("116", "Fecha bienvenida").is_empty());
    h.stop().await;
}

/// While a message waits for the sending window, its record changes: consent withdrawn, the
/// phone corrected, the row deleted. At the window nothing goes to anyone who said no or to
/// the wrong number; the corrected number gets the message; each row says what happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_message_follows_its_record_until_it_is_sent() {
    let mut h = Harness::new(vec![]).await;
    let now = h.clock.now();
    let start = (now.hour() + 3) % 24;
    let end = (now.hour() + 5) % 24;
    h.extra_top = format!("defaults:\n  time_zone: UTC\n  send_between: \"{start:02}:00-{end:02}:00\"\n");
    h.start().await;
    for n in [111, 112, 113, 114, 115] {
        h.user(n, true, None);
    }
    for (n, name) in [(111, "Retira"), (112, "Corrige"), (113, "Borrada"), (115, "Queda")] {
        h.add_row(row(n, name, "Sí", "Activo"));
    }
    wait_for("four messages queued", Duration::from_secs(10), || async { h.messages().await.len() == 4 }).await;
    h.quiesce().await;
    h.edit("111", "Consentimiento", json!("No"));
    h.edit("112", "Teléfono", json!(crate::harness::phone(114)));
    assert!(h.sandbox.google().delete_row(SHEET, TAB, 4), "row of 113");
    h.quiesce().await;
    assert!(h.sandbox.meta().sent_count() == 0, "still outside the window");
    let opens = h.messages().await.iter().map(|m| m.next_attempt_at).max().unwrap();
    let opens = chrono::DateTime::from_timestamp_millis(opens).unwrap();
    h.clock.advance((opens - h.clock.now()).to_std().unwrap() + Duration::from_secs(1));
    h.wait_cell("115", "Estado WhatsApp", "read").await;
    h.wait_cell("112", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    assert!(h.sent_to(111).is_empty(), "consent withdrawn before the window");
    assert!(h.sent_to(112).is_empty(), "the old number of 112");
    assert_eq!(h.sent_to(114).len(), 1, "the corrected number of 112, once");
    assert!(h.sent_to(113).is_empty(), "the deleted row");
    assert_eq!(h.sent_to(115).len(), 1);
    assert_eq!(h.cell("111", "Estado WhatsApp"), "skipped");
    assert!(h.cell("111", "Error WhatsApp").contains("consent was withdrawn"), "{}", h.cell("111", "Error WhatsApp"));
    assert_eq!(h.cell("112", "Error WhatsApp"), "");
    h.stop().await;
}

/// A campaign occurrence interrupted half-way (half its messages already in the outbox, the
/// occurrence not marked done) completes after a restart without duplicates, and the rows that
/// already had their message keep the state they reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_campaign_completes_without_duplicates() {
    use recado::domain::{MessageContent, PhoneNumber, RecordKey, TemplateMessage};
    let n = 2000u32;
    let mut h = Harness::new((1..=n).map(|i| row(i, &format!("P{i}"), "Sí", "Egresado")).collect()).await;
    h.mps = 1000;
    h.sandbox.meta().update_settings(|s| s.statuses = false);
    h.extra_top = "defaults:\n  time_zone: UTC\n".into();
    h.extra_rules = QUARTERLY.into();
    h.start().await;
    h.stop().await;

    // The state an interruption leaves: the occurrence (a minute ago) is still due, and the
    // first half of its messages are already queued.
    let store = recado::store::Store::open(&h.state_path()).await.unwrap();
    let occurrence = h.clock.now() - chrono::Duration::minutes(1);
    let occurrence = occurrence.with_second(0).unwrap().with_nanosecond(0).unwrap();
    let key = format!("cron@{}", occurrence.format("%Y-%m-%dT%H:%MZ"));
    let mut tx = store.begin().await.unwrap();
    recado::store::set_campaign_next(&mut tx, "trimestral", occurrence.timestamp_millis(), h.clock.now_ms())
        .await
        .unwrap();
    for i in 1..=n / 2 {
        let intent = recado::domain::Intent {
            rule_id: "trimestral".into(),
            source_id: "inscripciones".into(),
            record_key: RecordKey(i.to_string()),
            provider_id: "whatsapp".into(),
            idempotency_key: format!("trimestral:{i}:{key}"),
            phone: PhoneNumber::from_e164_unchecked(format!("+5698765{i:04}")),
            content: MessageContent::Template(TemplateMessage {
                name: "encuesta_seguimiento".into(),
                language: "es".into(),
                body: vec![format!("P{i}")],
                button_url_suffix: Some(format!("viewform?entry.1={i}")),
                header: None,
            }),
            fallback: None,
            adjustments: Vec::new(),
        };
        recado::store::insert_intent(&mut tx, &intent, 0, 0).await.unwrap();
    }
    tx.commit().await.unwrap();
    store.close().await;

    h.start().await;
    wait_for("every graduate's survey", Duration::from_secs(60), || async {
        h.sandbox.meta().sent_count() >= n as usize
    })
    .await;
    h.quiesce().await;
    let messages = h.messages().await;
    let keys: std::collections::HashSet<&str> = messages.iter().map(|m| m.record_key.0.as_str()).collect();
    assert_eq!(messages.len(), n as usize, "one message per record");
    assert_eq!(keys.len(), n as usize);
    assert_eq!(h.sandbox.meta().sent_count(), n as usize, "each sent once");
    let mut c = h.store().conn().await.unwrap();
    let next = recado::store::campaign_next(&mut c, "trimestral").await.unwrap().unwrap();
    drop(c);
    assert!(next > h.clock.now_ms(), "the occurrence is done; the next one is in the future");
    h.stop().await;
}

/// Running an occurrence again after an interruption must not write `queued` over rows whose
/// message already went further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_run_again_leaves_rows_that_were_read_as_read() {
    let mut h = Harness::new((1..=6).map(|i| row(i, &format!("P{i}"), "Sí", "Egresado")).collect()).await;
    for i in 1..=6 {
        h.user(i, true, None);
    }
    h.extra_top = "defaults:\n  time_zone: UTC\n".into();
    h.extra_rules = QUARTERLY.into();
    h.start().await;
    // The first run of the occurrence, half a day ago.
    let occurrence = (h.clock.now() - chrono::Duration::hours(2)).with_second(0).unwrap().with_nanosecond(0).unwrap();
    let set_due = |store: recado::store::Store| async move {
        let mut tx = store.begin().await.unwrap();
        recado::store::set_campaign_next(&mut tx, "trimestral", occurrence.timestamp_millis(), 0).await.unwrap();
        tx.commit().await.unwrap();
    };
    h.stop().await;
    h.extra_top = "defaults:\n  time_zone: UTC\n  lateness: 1d\n".into();
    let store = recado::store::Store::open(&h.state_path()).await.unwrap();
    set_due(store.clone()).await;
    store.close().await;
    h.start().await;
    for i in 1..=6 {
        h.wait_cell(&i.to_string(), "Estado WhatsApp", "read").await;
    }
    // The same occurrence again, as after an interruption before it was marked done: first
    // within its lateness, then after a downtime longer than it (the occurrence is missed, but
    // the rows it reached keep their state).
    for lateness in ["1d", "1h"] {
        h.stop().await;
        h.extra_top = format!("defaults:\n  time_zone: UTC\n  lateness: {lateness}\n");
        let store = recado::store::Store::open(&h.state_path()).await.unwrap();
        set_due(store.clone()).await;
        store.close().await;
        h.start().await;
        wait_for("the occurrence to be run again", Duration::from_secs(10), || async {
            let mut c = h.store().conn().await.unwrap();
            recado::store::campaign_next(&mut c, "trimestral")
                .await
                .unwrap()
                .is_some_and(|n| n > occurrence.timestamp_millis())
        })
        .await;
        h.quiesce().await;
        for i in 1..=6 {
            assert_eq!(
                h.cell(&i.to_string(), "Estado WhatsApp"),
                "read",
                "row {i} must keep the state its message reached (lateness {lateness})"
            );
        }
        assert_eq!(h.sandbox.meta().sent_count(), 6, "nobody got it twice");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_shows_what_is_then_sent_and_changes_nothing() {
    let mut h = reminder_harness(|now| {
        let mut no_consent = with_appointment(now, 122, 3600);
        no_consent[5] = json!("");
        let mut bad_date = row(123, "P123", "Sí", "Activo");
        bad_date.push(json!("pronto"));
        let mut bad_phone = with_appointment(now, 124, 3600);
        bad_phone[2] = json!("no tiene");
        vec![with_appointment(now, 120, 3600), with_appointment(now, 121, 7200), no_consent, bad_date, bad_phone]
    })
    .await;
    h.user(120, true, None);
    let config = h.config();
    let lines = recado::plan::plan(&config, 3, None, h.clock.now()).await.unwrap();
    assert!(!h.state_path().exists(), "plan creates no state");
    let by = |k: &str| lines.iter().find(|l| l.record == k).unwrap_or_else(|| panic!("no line for {k}: {lines:?}"));
    assert_eq!(by("120").status, "send");
    assert_eq!(by("121").status, "send");
    assert_eq!(by("120").message, "confirmacion_inscripcion");
    assert_eq!(by("122").reason, "no consent");
    assert!(by("123").reason.contains("date unreadable"), "{}", by("123").reason);
    assert!(by("124").reason.contains("not a phone number"), "{}", by("124").reason);
    let table = recado::plan::render(&lines, recado::plan::Format::Table);
    assert!(table.contains("2 message(s) planned"), "{table}");
    assert!(recado::plan::render(&lines, recado::plan::Format::Csv).lines().count() == lines.len() + 1);

    h.start().await;
    let mut c = h.store().conn().await.unwrap();
    for (key, line) in [("120", by("120")), ("121", by("121"))] {
        let t = recado::store::timers_of(&mut c, "inscripciones", Some(&[key])).await.unwrap();
        assert_eq!(t[0].due_at, line.when_utc.unwrap().timestamp_millis(), "the timer is due when the plan said");
    }
    drop(c);
    h.clock.advance(Duration::from_secs(3601));
    wait_for("the planned reminder", Duration::from_secs(15), || async { !h.sent_to(120).is_empty() }).await;
    let sent = &h.sent_to(120)[0];
    let params = sent.params.clone();
    assert_eq!(params, by("120").parameters, "the plan showed exactly what was sent");
    // Asked again, the plan no longer lists what was sent.
    h.stop().await;
    let again = recado::plan::plan(&config, 3, None, h.clock.now()).await.unwrap();
    assert!(again.iter().all(|l| l.record != "120" || l.status != "send"), "{again:?}");
}

/// A campaign occurrence missed by more than the lateness is skipped, with the reason on the
/// rows, and the next one is scheduled: no burst after a long downtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_missed_beyond_lateness_is_skipped_and_reported() {
    let mut h = Harness::new(
        (1..=20).map(|i| row(i, &format!("P{i}"), "Sí", if i % 2 == 0 { "Egresado" } else { "Activo" })).collect(),
    )
    .await;
    h.extra_top = "defaults:\n  time_zone: UTC\n  lateness: 3h\n".into();
    h.extra_rules = QUARTERLY.into();
    h.start().await;
    h.stop().await;
    let store = recado::store::Store::open(&h.state_path()).await.unwrap();
    let missed = h.clock.now() - chrono::Duration::hours(5);
    let mut tx = store.begin().await.unwrap();
    recado::store::set_campaign_next(&mut tx, "trimestral", missed.timestamp_millis(), missed.timestamp_millis())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    store.close().await;
    h.start().await;
    h.wait_cell("2", "Estado WhatsApp", "skipped").await;
    assert!(h.cell("2", "Error WhatsApp").contains("campaign"), "{}", h.cell("2", "Error WhatsApp"));
    assert_eq!(h.cell("1", "Estado WhatsApp"), "", "not a graduate: not part of the campaign");
    h.quiesce().await;
    assert_eq!(h.sandbox.meta().sent_count(), 0, "nothing stale was sent");
    let mut c = h.store().conn().await.unwrap();
    let next = recado::store::campaign_next(&mut c, "trimestral").await.unwrap().unwrap();
    drop(c);
    assert!(next > h.clock.now_ms());
    h.stop().await;
}

/// A campaign reaches the number each row holds when it runs: a number edited after the first
/// read gets the message, a number made unreadable gets the reason on its row (campaigns take
/// numbers from the phone index the poller keeps with the snapshot, so the index must follow
/// every edit), and a row it cannot reach says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_campaign_reaches_the_number_the_row_holds_now() {
    let mut h = Harness::new((1..=4).map(|i| row(i, &format!("P{i}"), "Sí", "Egresado")).collect()).await;
    h.extra_top = "defaults:\n  time_zone: UTC\n".into();
    h.extra_rules = QUARTERLY.into();
    h.start().await;
    h.edit("2", "Teléfono", json!(crate::harness::phone(42)));
    h.edit("3", "Teléfono", json!("no tiene"));
    h.edit("4", "Consentimiento", json!("No"));
    h.quiesce_polls(2).await;
    assert_eq!(h.cell("4", "Estado WhatsApp"), "", "withdrawing consent is not news by itself");

    let occurrence = (h.clock.now() - chrono::Duration::minutes(1)).with_second(0).unwrap().with_nanosecond(0).unwrap();
    let mut tx = h.store().begin().await.unwrap();
    recado::store::set_campaign_next(&mut tx, "trimestral", occurrence.timestamp_millis(), h.clock.now_ms())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    h.running().ctx().wake_timers();
    wait_for("the occurrence to run", Duration::from_secs(20), || async {
        let mut c = h.store().conn().await.unwrap();
        recado::store::campaign_next(&mut c, "trimestral")
            .await
            .unwrap()
            .is_some_and(|n| n > occurrence.timestamp_millis())
    })
    .await;
    h.quiesce().await;
    assert_eq!(h.sent_to(1).len(), 1);
    // Only the survey counts here: a corrected number also unblocks the row's welcome.
    let surveys =
        |n: u32| h.sent_to(n).iter().filter(|m| m.template.as_deref() == Some("encuesta_seguimiento")).count();
    assert_eq!(surveys(1), 1);
    assert_eq!(surveys(42), 1, "the edited number got it");
    assert_eq!(surveys(2), 0, "the old number did not");
    assert_eq!(surveys(3), 0);
    let error = h.cell("3", "Error WhatsApp");
    assert!(error.contains("not a phone number"), "{error}");
    assert_eq!(surveys(4), 0);
    assert_eq!(h.cell("4", "Estado WhatsApp"), "skipped");
    assert_eq!(h.cell("4", "Error WhatsApp"), "not sent: no consent");
    h.stop().await;
}
