//! Rows: bad rows get their error, and write-back finds rows that moved.

use recado::sandbox::GoogleFault;
use serde_json::json;

use crate::harness::{row, Harness, SHEET, TAB};

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
    let mut h = Harness::new((1..=6).map(|i| row(i, &format!("Z{i}"), "Sí", "Activo")).collect()).await;
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
    assert_eq!(sent[0].body["template"]["components"][0]["parameters"][0]["text"], "Pía");
    assert_eq!(h.cell("81", "Error WhatsApp"), "", "consent was read, not taken as missing");
    h.stop().await;
}
