//! Rows: bad rows get their error, and write-back finds rows that moved.

use recado::sandbox::google::{Kind, SheetAction};
use recado::sandbox::GoogleFault;
use serde_json::{json, Value};

use crate::harness::{row, wait_for, Harness, SHEET, TAB};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rows_get_their_error_once_and_the_rest_keeps_working() {
    let mut h = Harness::new(vec![row(1, "Ana", "Sí", "Activo")]).await;
    h.user(60, true, None);
    h.start().await;
    let mut bad_phone = row(61, "Vicente", "Sí", "Activo");
    bad_phone[2] = json!("no tiene");
    h.add_row(bad_phone);
    h.add_row(row(62, "Agustín", "Sí", "Activo"));
    h.add_row(row(62, "Agustín bis", "Sí", "Activo"));
    let mut no_key = row(0, "Catalina", "Sí", "Activo");
    no_key[0] = json!("");
    h.add_row(no_key);
    h.add_row(row(63, "Antonia", "", "Activo"));
    h.add_row(row(60, "Martina", "Sí", "Activo"));
    h.wait_cell("60", "Estado WhatsApp", "read").await;
    h.wait_cell("61", "Estado WhatsApp", "skipped").await;
    assert!(h.cell("61", "Error WhatsApp").contains("not a phone number"), "{}", h.cell("61", "Error WhatsApp"));
    assert!(h.cell("63", "Error WhatsApp").contains("no consent"));
    let rows = h.sandbox.google().rows(SHEET, TAB);
    let header = &rows[0];
    let err_col = header.iter().position(|v| v == "Error WhatsApp").expect("error column created");
    let dup_errors: Vec<String> = rows
        .iter()
        .filter(|r| r[0] == json!(62))
        .map(|r| r.get(err_col).and_then(|v| v.as_str()).unwrap_or("").to_string())
        .collect();
    assert_eq!(dup_errors.len(), 2);
    assert!(dup_errors.iter().all(|e| e.contains("duplicate ID '62'")), "{dup_errors:?}");
    let blank = rows.iter().find(|r| r[1] == json!("Catalina")).unwrap();
    assert!(blank.get(err_col).and_then(|v| v.as_str()).unwrap_or("").contains("has no ID"));
    // Fixing the phone clears nothing by itself but lets the welcome go out.
    h.user(61, true, None);
    h.edit("61", "Teléfono", json!("+56 9 8765 0061"));
    h.wait_cell("61", "Estado WhatsApp", "read").await;
    assert_eq!(h.cell("61", "Error WhatsApp"), "");
    h.quiesce().await;
    assert_eq!(h.sandbox.meta().sent().len(), 3, "Martina, the first 62 and the fixed 61");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_reaches_the_right_row_after_a_sort_and_an_insert_above() {
    write_back_after_a_sort_and_an_insert(crate::harness::Vendor::Meta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_reaches_the_right_row_after_a_sort_and_an_insert_above_through_twilio() {
    write_back_after_a_sort_and_an_insert(crate::harness::Vendor::Twilio).await;
}

async fn write_back_after_a_sort_and_an_insert(vendor: crate::harness::Vendor) {
    let mut h = Harness::on(vendor, (1..=6).map(|i| row(i, &format!("Z{i}"), "Sí", "Activo")).collect()).await;
    h.flush_interval = "1s";
    h.user(70, true, None);
    h.start().await;
    // Hold writes back so the sheet changes between the poll and the flush.
    h.sandbox.google().inject(GoogleFault { status: 429, count: 2, scope: Some("write".into()) });
    h.add_row(row(70, "Alfa", "Sí", "Activo"));
    crate::harness::wait_for("the send", std::time::Duration::from_secs(20), || async { !h.sent_to(70).is_empty() })
        .await;
    assert!(h.sandbox.google().sort_by(SHEET, TAB, "Nombre", false), "sorted");
    assert!(h.sandbox.google().insert_row(SHEET, TAB, Some(2), row(71, "Arriba", "", "Nuevo")));
    h.wait_cell("70", "Estado WhatsApp", "read").await;
    let rows = h.sandbox.google().rows(SHEET, TAB);
    let status_col = rows[0].iter().position(|v| v == "Estado WhatsApp").unwrap();
    for r in rows.iter().skip(1) {
        let status = r.get(status_col).and_then(|v| v.as_str()).unwrap_or("");
        if r[0] == json!(70) {
            assert_eq!(status, "read");
        } else {
            assert!(status.is_empty() || r[0] == json!(71), "row {:?} got someone else's status", r[0]);
        }
    }
    h.stop().await;
}

/// A name in the configuration that differs from the header only by case works everywhere:
/// consent, a `changed` trigger, a template parameter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_column_named_with_another_case_is_found_everywhere() {
    let mut h = Harness::new(vec![row(80, "Pía", "Sí", "Activo")]).await;
    h.consent_column = "consentimiento";
    h.extra_rules = r#"
  - id: aviso
    source: inscripciones
    when: { changed: estado, to: Aviso }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ nombre }}", "{{ curso }}", "{{ Mentor }}"]
"#
    .into();
    h.user(80, true, None);
    h.user(81, true, None);
    h.start().await;
    h.add_row(row(81, "Rosa", "Sí", "Activo"));
    h.wait_cell("81", "Estado WhatsApp", "read").await;
    h.edit("80", "Estado", json!("Aviso"));
    h.wait_cell("80", "Estado WhatsApp", "read").await;
    let sent = h.sent_to(80);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].params[0], "Pía");
    assert_eq!(h.cell("81", "Error WhatsApp"), "", "consent was read, not taken as missing");
    h.stop().await;
}

/// For every row: its status cell must be the state of its record's latest message, or empty
/// for a record that never had one. Returns the rows that are wrong.
async fn misplaced(h: &Harness) -> Vec<String> {
    let messages = h.messages().await;
    let mut latest: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    for m in &messages {
        latest.insert(m.record_key.0.clone(), m.state.as_str().to_string());
    }
    let rows = h.sandbox.google().rows(SHEET, TAB);
    let header = &rows[0];
    let status_col = header.iter().position(|v| v == "Estado WhatsApp").unwrap();
    let mut wrong = Vec::new();
    for r in rows.iter().skip(1) {
        let key = match r.first() {
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::String(s)) => s.clone(),
            _ => continue,
        };
        let status = r.get(status_col).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let want = latest.get(&key).cloned().unwrap_or_default();
        if status != want {
            wrong.push(format!("row {key}: shows '{status}', its own state is '{want}'"));
        }
    }
    wrong
}

/// The sheet is sorted, and rows inserted, between a flush's read and its write: values land
/// on other people's rows for at most one flush, then the check puts them back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_repairs_what_a_sort_during_a_flush_put_on_the_wrong_rows() {
    let mut h = Harness::new((1..=8).map(|i| row(i, &format!("M{i}"), "Sí", "Activo")).collect()).await;
    for i in 20..40 {
        h.user(i, true, None);
    }
    h.start().await;
    // Right after each of the next flushes' reads, someone sorts or inserts a row.
    let g = h.sandbox.google();
    g.after_next(Kind::ValuesBatchGet, SheetAction::sort(SHEET, TAB, "Nombre", true));
    g.after_next(
        Kind::ValuesBatchGet,
        SheetAction::insert_row(SHEET, TAB, Some(2), row(90, "Insertada", "Sí", "Activo")),
    );
    g.after_next(Kind::ValuesBatchGet, SheetAction::sort(SHEET, TAB, "Nombre", false));
    g.after_next(Kind::ValuesBatchGet, SheetAction::sort(SHEET, TAB, "ID", true));
    for i in 20..40 {
        h.add_row(row(i, &format!("{}{i}", (b'A' + (i * 7 % 26) as u8) as char), "Sí", "Activo"));
    }
    for i in 20..40 {
        h.wait_cell(&i.to_string(), "Estado WhatsApp", "read").await;
    }
    h.quiesce().await;
    assert_eq!(g.pending_actions(), 0, "every sort and insert happened mid-flush");
    // One more flush interval: the last check has run.
    let wrong = misplaced(&h).await;
    assert!(wrong.is_empty(), "values on the wrong rows:\n{}", wrong.join("\n"));
    h.stop().await;
}

/// A write that Google applied but never answered (the call timed out), with a sort between
/// the flush's read and that write: the values that landed on other people's rows are still
/// found and put back, although recado saw the write fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_timed_out_but_landed_during_a_sort_is_still_checked() {
    let mut h = Harness::new((1..=8).map(|i| row(i, &format!("M{i}"), "Sí", "Activo")).collect()).await;
    h.extra_source = "    call_timeout: 1s\n".into();
    for i in 20..28 {
        h.user(i, true, None);
    }
    h.start().await;
    // One row all the way first, so the write-back columns exist.
    h.add_row(row(20, "Abril", "Sí", "Activo"));
    h.wait_cell("20", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    // The next flush: the sheet is sorted right after its read, and its write takes effect at
    // Google but its answer never comes.
    let g = h.sandbox.google();
    g.after_next(Kind::ValuesBatchGet, SheetAction::sort(SHEET, TAB, "Nombre", false));
    let fault = recado::sandbox::google::FaultSpec {
        timeout: true,
        applied: true,
        scope: Some("write".into()),
        ..Default::default()
    };
    g.try_inject(fault).unwrap();
    let writes = g.count(Kind::ValuesBatchUpdate);
    for i in 21..28 {
        h.add_row(row(i, &format!("A{i}"), "Sí", "Activo"));
    }
    wait_for("the write that times out", std::time::Duration::from_secs(20), || async {
        g.count(Kind::ValuesBatchUpdate) > writes
    })
    .await;
    for i in 21..28 {
        h.wait_cell(&i.to_string(), "Estado WhatsApp", "read").await;
    }
    h.quiesce().await;
    assert_eq!(g.pending_actions(), 0, "the sort happened mid-flush");
    let wrong = misplaced(&h).await;
    assert!(wrong.is_empty(), "values on the wrong rows:\n{}", wrong.join("\n"));
    g.release_held();
    h.stop().await;
}

/// Sorts and inserts at random moments while sixty people get their messages: in the end,
/// every row shows its own state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_sorts_and_inserts_during_write_back_leave_every_row_its_own_data() {
    let mut h = Harness::new((1..=10).map(|i| row(i, &format!("B{i}"), "Sí", "Activo")).collect()).await;
    h.flush_interval = "100ms";
    for i in 100..160 {
        h.user(i, true, None);
    }
    h.start().await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let shared = h.sandbox.shared();
    let shuffler = {
        let stop = std::sync::Arc::clone(&stop);
        tokio::spawn(async move {
            let mut n = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                n += 1;
                let google = &shared.google;
                match rand::random::<u8>() % 4 {
                    0 => {
                        google.sort_by(SHEET, TAB, "Nombre", rand::random());
                    }
                    1 => {
                        google.sort_by(SHEET, TAB, "Teléfono", rand::random());
                    }
                    2 => {
                        let at = Some(2 + (rand::random::<u8>() % 5) as usize);
                        google.insert_row(SHEET, TAB, at, row(5000 + n, "Nueva", "Sí", "Activo"));
                    }
                    _ => {
                        let _ = google
                            .try_after_next(Kind::ValuesBatchGet, SheetAction::sort(SHEET, TAB, "ID", rand::random()));
                    }
                }
                // The next disturbance comes once the daemon has read or written the sheet one to
                // three more times: every flush and poll meets sorts and inserts, at moments
                // that vary with the daemon's own pace.
                let seen =
                    |g: &recado::sandbox::GoogleState| g.count(Kind::ValuesBatchGet) + g.count(Kind::ValuesBatchUpdate);
                let (before, more) = (seen(google), 1 + u64::from(rand::random::<u8>() % 3));
                wait_for("the daemon to use the sheet again", std::time::Duration::from_secs(20), || async {
                    stop.load(std::sync::atomic::Ordering::Acquire) || seen(google) >= before + more
                })
                .await;
            }
        })
    };
    for i in 100..160 {
        h.add_row(row(i, &format!("{}{i}", (b'A' + (i % 26) as u8) as char), "Sí", "Activo"));
    }
    for i in 100..160 {
        h.wait_cell(&i.to_string(), "Estado WhatsApp", "read").await;
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    shuffler.await.unwrap();
    h.sandbox.google().clear_faults();
    h.quiesce().await;
    let wrong = misplaced(&h).await;
    assert!(wrong.is_empty(), "values on the wrong rows:\n{}", wrong.join("\n"));
    h.stop().await;
}

/// Values Google refuses (too large for one request, once cut to a cell's size) are isolated,
/// reported once and dropped; every other row's status is written, and nothing is retried for
/// ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_values_never_block_the_rest_of_write_back() {
    let mut h = Harness::new((1..=8).map(|i| row(i, &format!("C{i}"), "Sí", "Activo")).collect()).await;
    h.start().await;
    h.sandbox.google().set_payload_limit(4_000);
    let huge: String = "respuesta muy larga ".repeat(3_000);
    let writes: Vec<(String, &str, String)> = (1..=8u32)
        .map(|i| {
            if i <= 3 {
                (i.to_string(), "Última respuesta", huge.clone())
            } else {
                (i.to_string(), "Estado WhatsApp", format!("read {i}"))
            }
        })
        .collect();
    h.queue_writes(&writes).await;
    for i in 4..=8 {
        h.wait_cell(&i.to_string(), "Estado WhatsApp", &format!("read {i}")).await;
    }
    h.quiesce().await;
    for i in 1..=3 {
        assert_eq!(h.cell(&i.to_string(), "Última respuesta"), "", "refused, dropped, reported");
    }
    h.stop().await;
}

/// A refusal that is not about a value (Google's bare `400 INVALID_ARGUMENT`, as for a request
/// it cannot take) drops nothing: the flush fails and is reported by `/healthz`'s counters, the
/// queue waits, and every value lands once Google takes writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_that_names_no_value_keeps_every_value_queued() {
    let mut h = Harness::new((1..=4).map(|i| row(i, &format!("R{i}"), "Sí", "Activo")).collect()).await;
    h.start().await;
    let g = h.sandbox.google();
    // More refusals than halving four values takes: a bisecting writer would drop them all.
    let refusals = 8;
    g.try_inject(recado::sandbox::google::FaultSpec {
        status: Some(400),
        count: refusals,
        scope: Some("write".into()),
        ..Default::default()
    })
    .unwrap();
    let writes: Vec<(String, &str, String)> =
        (1..=4u32).map(|i| (i.to_string(), "Última respuesta", format!("respuesta {i}"))).collect();
    h.queue_writes(&writes).await;
    for i in 1..=4 {
        h.wait_cell(&i.to_string(), "Última respuesta", &format!("respuesta {i}")).await;
    }
    h.quiesce().await;
    let health = h.running().ctx().health.all();
    let flusher = health.iter().find(|(name, _)| name.starts_with("flusher:")).map(|(_, c)| c.clone());
    let failures = flusher.map(|c| c.failures).unwrap_or(0);
    assert!(failures >= 1, "the refused flushes are reported: {health:?}");
    h.stop().await;
}

/// A stop whose last write-back hangs (Google never answers) still ends within its budget, so
/// systemd never kills recado; the value stays queued and is written after the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_last_write_hangs_ends_in_time_and_the_value_lands_after_restart() {
    let mut h = Harness::new(vec![row(1, "Hugo", "Sí", "Activo")]).await;
    h.extra_source = "    call_timeout: 60s\n".into();
    h.start().await;
    let g = h.sandbox.google();
    g.try_inject(recado::sandbox::google::FaultSpec {
        timeout: true,
        count: 1_000,
        scope: Some("write".into()),
        ..Default::default()
    })
    .unwrap();
    let writes = g.count(Kind::ValuesBatchUpdate);
    h.queue_writes(&[("1".into(), "Última respuesta", "antes de parar".into())]).await;
    wait_for("a write to hang", std::time::Duration::from_secs(20), || async {
        g.count(Kind::ValuesBatchUpdate) > writes
    })
    .await;
    // The held write alone would keep a stop waiting for a minute.
    tokio::time::timeout(std::time::Duration::from_secs(30), h.stop_within(std::time::Duration::from_secs(3)))
        .await
        .expect("the stop ends within its budget although Google never answers");
    h.sandbox.google().clear_faults();
    h.sandbox.google().release_held();
    assert_eq!(h.cell("1", "Última respuesta"), "", "the held write never landed");
    h.start().await;
    h.wait_cell("1", "Última respuesta", "antes de parar").await;
    h.stop().await;
}

/// A date a person typed is a date cell: messages show it as a date, both when a change sends
/// at once and when a reminder fires from the stored snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_cells_appear_as_dates_in_messages() {
    let mut h = Harness::new(vec![]).await;
    // Typed by a person: "25/11/2026 10:30" in a Chilean sheet is a date-time cell.
    let appointment = (h.clock.now() + chrono::Duration::days(3)).with_timezone(&chrono_tz::America::Santiago);
    let typed = appointment.format("%d/%m/%Y %H:%M").to_string();
    let mut hd = crate::harness::header();
    hd.push(json!("Fecha cita"));
    let r: Vec<Value> = ["70", "Luz", "+56 9 8765 0070", "Soldadura", "Luis Pérez", "Sí", "Activo", typed.as_str()]
        .iter()
        .map(|v| json!(v))
        .collect();
    h.sandbox.google().seed_typed(SHEET, "America/Santiago", "es_CL", vec![(TAB.to_string(), vec![hd, r])]);
    assert!(h.sandbox.google().rows(SHEET, TAB)[1][7].is_number(), "a date cell, read as a serial number");
    h.extra_rules = r#"
  - id: cita
    source: inscripciones
    when: { changed: Estado, to: Citado }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Nombre }}", "{{ row['Fecha cita'] }}", "{{ Mentor }}"]
  - id: recordatorio
    source: inscripciones
    when: { date: Fecha cita, offset: -2d }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Nombre }}", "{{ row['Fecha cita'] }}", "{{ Mentor }}"]
"#
    .into();
    h.user(70, true, None);
    h.start().await;
    h.edit("70", "Estado", json!("Citado"));
    wait_for("the appointment message", std::time::Duration::from_secs(20), || async { h.sent_to(70).len() == 1 })
        .await;
    let param = |i: usize| h.sent_to(70)[i].params[1].clone();
    assert_eq!(param(0), typed, "shown as the date, not a serial number");
    h.clock.advance(std::time::Duration::from_secs(86_400 + 60));
    wait_for("the reminder", std::time::Duration::from_secs(20), || async { h.sent_to(70).len() == 2 }).await;
    assert_eq!(param(1), typed, "the reminder, from the snapshot, shows the date too");
    h.stop().await;
}

/// Date and time cells far down a tab, in columns empty in its first rows (a column filled
/// only for newer rows, or typed into after recado started), still appear as a date and a
/// time, not as serial numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_and_time_cells_below_the_first_rows_appear_as_dates_and_times() {
    dates_first_found_on_row(60).await;
}

/// The same, the first date far enough down to arrive in a later part of the read than the
/// header (the date columns are looked up when it does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn date_cells_first_found_in_a_later_part_of_the_read_appear_as_dates() {
    dates_first_found_on_row(4100).await;
}

async fn dates_first_found_on_row(last: u32) {
    let mut h = Harness::new(vec![]).await;
    let mut hd = crate::harness::header();
    hd.push(json!("Fecha cita"));
    hd.push(json!("Hora"));
    hd.push(json!("Inicio"));
    let mut rows = vec![hd];
    for i in 1..=last {
        let mut r: Vec<Value> = row(i, &format!("P{i}"), "Sí", "Activo")
            .into_iter()
            .map(|v| if v.is_number() { json!(v.to_string()) } else { v })
            .collect();
        r.extend([json!(""), json!(""), json!("")]);
        rows.push(r);
    }
    let typed = (h.clock.now() + chrono::Duration::days(30)).with_timezone(&chrono_tz::America::Santiago);
    let date = typed.format("%d/%m/%Y").to_string();
    let at = last as usize;
    rows[at][7] = json!(date);
    rows[at][8] = json!("15:30");
    h.sandbox.google().seed_typed(SHEET, "America/Santiago", "es_CL", vec![(TAB.to_string(), rows)]);
    assert!(h.sandbox.google().rows(SHEET, TAB)[at][7].is_number(), "a date cell, read as a serial number");
    assert!(h.sandbox.google().rows(SHEET, TAB)[at][8].is_number(), "a time cell, read as a fraction of a day");
    h.extra_rules = r#"
  - id: cita
    source: inscripciones
    when: { changed: Estado, to: Citado }
    provider: whatsapp
    template:
      name: confirmacion_inscripcion
      language: es
      body: ["{{ Nombre }}", "{{ row['Fecha cita'] or Inicio }}", "{{ Hora }}"]
"#
    .into();
    h.user(last, true, None);
    h.user(30, true, None);
    h.start().await;
    h.edit(&last.to_string(), "Estado", json!("Citado"));
    wait_for("the appointment message", std::time::Duration::from_secs(20), || async { h.sent_to(last).len() == 1 })
        .await;
    let param = |n: u32, i: usize| h.sent_to(n)[0].params[i].clone();
    assert_eq!(param(last, 1), date, "shown as the date, not a serial number");
    assert_eq!(param(last, 2), "15:30", "shown as the time");
    // Typed after recado started into a column that held nothing yet (once the header has
    // its write-back columns, so only the new number can make recado look again).
    h.quiesce().await;
    let google = h.sandbox.google();
    assert!(google.edit_by_key_typed(SHEET, TAB, "ID", "30", "Inicio", json!(date)));
    assert!(google.edit_by_key_typed(SHEET, TAB, "ID", "30", "Hora", json!("09:05")));
    h.quiesce_polls(1).await;
    h.edit("30", "Estado", json!("Citado"));
    wait_for("the second appointment message", std::time::Duration::from_secs(20), || async {
        h.sent_to(30).len() == 1
    })
    .await;
    assert_eq!(param(30, 1), date);
    assert_eq!(param(30, 2), "09:05");
    h.stop().await;
}

/// A tab whose grid has no spare column: recado widens it before writing its new headers
/// (Google refuses writes outside the grid).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_widens_a_tab_that_has_no_spare_column() {
    let mut h = Harness::new(vec![]).await;
    let mut hd = crate::harness::header();
    for i in hd.len()..26 {
        hd.push(json!(format!("Extra {i}")));
    }
    let mut r = row(71, "Paz", "Sí", "Activo");
    r.resize(26, json!("x"));
    h.sandbox.google().seed(SHEET, "America/Santiago", vec![(TAB.to_string(), vec![hd, r])]);
    assert_eq!(h.sandbox.google().grid(SHEET, TAB), Some((1000, 26)));
    h.user(72, true, None);
    h.start().await;
    h.add_row(row(72, "Gil", "Sí", "Activo"));
    h.wait_cell("72", "Estado WhatsApp", "read").await;
    let (_, columns) = h.sandbox.google().grid(SHEET, TAB).unwrap();
    assert_eq!(columns, 29, "widened for the three columns written so far: status, its time, the error");
    h.stop().await;
}

/// A tab is read in parts of a couple of thousand rows, each committed and let go before the
/// next: a key repeated parts apart is still a duplicate, whether it was new in that same read
/// or known before, and only its first row is used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_repeated_parts_apart_is_a_duplicate_and_only_its_first_row_is_used() {
    let mut rows: Vec<Vec<Value>> = (1..=2500).map(|i| row(i, &format!("P{i}"), "Sí", "Activo")).collect();
    // Sheet row 2502, far below the first row of key 7 (sheet row 8), in the first read.
    let mut copy = row(7, "Otra persona", "Sí", "Activo");
    copy[2] = json!(crate::harness::phone(3001));
    rows.push(copy);
    let mut h = Harness::new(rows).await;
    h.user(7, true, None);
    h.user(3001, true, None);
    h.start().await;
    let errors_of = |key: u32| {
        let rows = h.sandbox.google().rows(SHEET, TAB);
        let err_col = rows[0].iter().position(|v| v == "Error WhatsApp");
        rows.iter()
            .filter(|r| r[0] == json!(key))
            .map(|r| err_col.and_then(|c| r.get(c)).and_then(Value::as_str).unwrap_or("").to_string())
            .collect::<Vec<String>>()
    };
    wait_for("both copies of 7 told", std::time::Duration::from_secs(30), || async {
        errors_of(7).iter().filter(|e| e.contains("duplicate ID '7' in rows 8, 2502")).count() == 2
    })
    .await;
    // A record known before, repeated at the end of the tab.
    let mut again = row(9, "Otra más", "Sí", "Activo");
    again[2] = json!(crate::harness::phone(3001));
    h.add_row(again);
    wait_for("both copies of 9 told", std::time::Duration::from_secs(30), || async {
        errors_of(9).iter().filter(|e| e.contains("duplicate ID '9' in rows 10, 2503")).count() == 2
    })
    .await;
    // The first rows are the records: an edit there is news, sent to their numbers.
    h.edit("7", "Estado", json!("Egresado"));
    wait_for("the message to the first row's number", std::time::Duration::from_secs(20), || async {
        h.sent_to(7).len() == 1
    })
    .await;
    h.quiesce().await;
    assert!(h.sent_to(3001).is_empty(), "a later copy is never a record of its own");
    let snapshot = {
        let mut conn = h.store().conn().await.unwrap();
        recado::store::load_snapshot(&mut conn, "inscripciones").await.unwrap().0
    };
    assert_eq!(snapshot.len(), 2500, "one record per key");
    h.stop().await;
}
