//! What an operator sees and what the store keeps: `/readyz` names a component that keeps
//! failing (`/healthz` stays alive), systemd hears ready / watchdog / stopping, one daemon per
//! state file, and old rows are pruned after their retention.

use std::time::Duration;

use recado::store;
use serde_json::Value;

use crate::harness::{wait_for, Harness, SHEET};

/// A source that fails every poll (its tab is gone) makes `/readyz` fail, naming it and why,
/// while `/healthz` (liveness: no loop stuck) stays 200 and reports it degraded: restarting
/// recado would not bring the tab back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_names_a_source_that_keeps_failing_while_healthz_stays_alive() {
    let mut h = Harness::new(vec![]).await;
    h.sandbox.google().seed(SHEET, "America/Santiago", vec![("Otra pestaña".to_string(), vec![])]);
    h.start_without_waiting().await;
    let url = h.webhook_url().replace("/webhooks/whatsapp", "/readyz");
    let last = std::sync::Mutex::new(Value::Null);
    wait_for("/readyz to name the failing source", Duration::from_secs(20), || async {
        let r = reqwest::get(&url).await.unwrap();
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        let named = code == 503
            && body["status"] == "not ready"
            && body["reasons"].as_array().is_some_and(|r| {
                r.iter().any(|r| r.as_str().is_some_and(|r| r.starts_with("source:inscripciones: failed 3 times")))
            });
        *last.lock().unwrap() = body;
        named
    })
    .await;
    let last = last.into_inner().unwrap();
    let source = &last["components"]["source:inscripciones"];
    assert_eq!(source["degraded"], true, "{last:#}");
    assert!(source["last_error"].as_str().unwrap_or("").contains("no tab 'Inscripciones'"), "{last:#}");
    assert_eq!(last["components"]["provider:whatsapp"]["degraded"], false);
    let live = reqwest::get(h.webhook_url().replace("/webhooks/whatsapp", "/healthz")).await.unwrap();
    assert_eq!(live.status().as_u16(), 200, "alive: no loop is stuck");
    let live: Value = live.json().await.unwrap();
    assert_eq!(live["status"], "degraded", "{live:#}");
    h.stop().await;
}

/// Once every source has completed its first read and nothing fails, `/readyz` is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_ready_after_the_first_read() {
    let mut h = Harness::new(vec![crate::harness::row(301, "Ana", "Sí", "Activo")]).await;
    h.start().await;
    let url = h.webhook_url().replace("/webhooks/whatsapp", "/readyz");
    let r = reqwest::get(&url).await.unwrap();
    let code = r.status().as_u16();
    let body: Value = r.json().await.unwrap();
    assert_eq!((code, body["status"].as_str()), (200, Some("ready")), "{body:#}");
    h.stop().await;
}

/// Every component `/healthz` lists is one a loop reports its rounds to: a supervised loop's
/// restarts count where its good rounds clear them, never under a name nothing clears.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_component_in_healthz_is_reported_to_by_its_loop() {
    let mut h = Harness::new(vec![]).await;
    h.user(90, true, None);
    h.start().await;
    h.add_row(crate::harness::row(90, "Eloísa", "Sí", "Activo"));
    h.wait_cell("90", "Estado WhatsApp", "read").await;
    h.quiesce().await;
    let all = h.running().ctx().health.all();
    let silent: Vec<&String> =
        all.iter().filter(|(name, c)| c.rounds == 0 && name.as_str() != "loop:retention").map(|(n, _)| n).collect();
    assert!(silent.is_empty(), "components no loop reports to: {silent:?} (all: {:?})", all.keys());
    for name in ["source:inscripciones", "provider:whatsapp", "loop:timers", "loop:inbox"] {
        assert!(all.contains_key(name), "{name} missing: {:?}", all.keys());
    }
    h.stop().await;
}

/// Raw webhooks, status de-duplication entries and inbound messages older than their retention
/// are pruned; recent ones and unapplied deliveries are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_rows_are_pruned_after_their_retention() {
    let mut h = Harness::new(vec![]).await;
    h.extra_top = "".into();
    h.start().await;
    let now = h.clock.now_ms();
    let day = 86_400_000i64;
    let mut c = h.store().conn().await.unwrap();
    for (age_days, processed) in [(100, true), (100, false), (10, true)] {
        let id = store::insert_webhook(&mut c, "whatsapp", "", "{}", now - age_days * day).await.unwrap();
        if processed {
            store::finish_webhook(&mut c, id, "applied", now - age_days * day).await.unwrap();
        }
    }
    for (id, age) in [("wamid.old", 100), ("wamid.new", 1)] {
        store::record_status_event(&mut c, id, "read", now - age * day).await.unwrap();
    }
    // Inbound messages are kept a year by default.
    for (id, age) in [("wamid.in.old", 400), ("wamid.in.new", 10)] {
        let row = store::InboundRow {
            provider_message_id: id,
            provider_id: "whatsapp",
            sender_id: None,
            phone: Some("+56987654321"),
            record: None,
            in_reply_to: None,
            kind: "text",
            body: "hola",
            received_at: now - age * day,
        };
        assert!(store::insert_inbound(&mut c, &row).await.unwrap());
    }
    drop(c);
    let ctx = std::sync::Arc::clone(h.running().ctx());
    let (_stop, shutdown) = recado::engine::Shutdown::new();
    let pruned = recado::engine::retention::RetentionLoop::new(ctx).prune_all(&shutdown).await.unwrap();
    assert_eq!((pruned.webhooks, pruned.status_events, pruned.inbound), (1, 1, 1), "{pruned:?}");
    let mut c = h.store().conn().await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE received_at < $1")
        .bind(now - day)
        .fetch_one(&mut *c)
        .await
        .unwrap();
    assert_eq!(left, 2, "the recent one and the one never applied stay");
    assert_eq!(store::inbound_count(&mut c).await.unwrap(), 1, "the recent inbound message stays");
    drop(c);
    h.stop().await;
}

/// The state holds phone numbers and what people wrote: it is readable by its owner only. Two
/// daemons on one state would both send what is queued, so a second one refuses to start, and
/// starts once the first has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_is_private_and_a_second_daemon_on_it_refuses_to_start() {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new(vec![]).await;
    h.start().await;
    let path = h.state_path();
    for file in [path.clone(), std::path::PathBuf::from(format!("{}-wal", path.display()))] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", file.display());
    }
    let second = recado::app::start(h.config()).await;
    let Err(e) = second else { panic!("a second daemon started on the same state") };
    let e = format!("{e:#}");
    assert!(e.contains("another recado is running on the state store"), "{e}");
    h.stop().await;
    let third = recado::app::start(h.config()).await.expect("starts once the first has stopped");
    third.stop().await;
}

/// Under a `Type=notify` unit: `READY=1` comes only once every source has completed its first
/// read, with a status line; the watchdog is fed while the loops are alive; `STOPPING=1` comes
/// when the stop begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_after_the_first_read_then_watchdog_pings_and_stopping() {
    let h = Harness::new(vec![crate::harness::row(300, "Ana", "Sí", "Activo")]).await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("notify");
    let server = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let notifier = recado::systemd::Notifier::to_socket(socket, Some(Duration::from_millis(200)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(recado::app::run_notifying(h.config(), notifier, async move {
        let _ = stopped.await;
    }));
    let mut heard: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut next = async |heard: &mut Vec<String>| {
        let n = tokio::time::timeout(Duration::from_secs(20), server.recv(&mut buf))
            .await
            .expect("a notification")
            .unwrap();
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        heard.push(m.clone());
        m
    };
    let ready = loop {
        let m = next(&mut heard).await;
        if m.starts_with("READY=1") {
            break m;
        }
    };
    let store = store::Store::open(&h.state_path()).await.unwrap();
    let mut c = store.conn().await.unwrap();
    assert!(
        store::source_state(&mut c, "inscripciones").await.unwrap().baseline_done,
        "ready before the first read was committed; heard {heard:?}"
    );
    assert!(ready.contains("\nSTATUS=running: 0 message(s) queued"), "{ready}");
    while next(&mut heard).await != "WATCHDOG=1" {}
    let _ = stop.send(());
    while !next(&mut heard).await.starts_with("STOPPING=1") {}
    run.await.unwrap().unwrap();
}

/// `/metrics` shows each rule's funnel as the store has it, webhooks by result at the door,
/// polls, send latency and the source's quota, and never a phone number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_each_rules_funnel_and_what_came_in() {
    let mut h = Harness::new(vec![]).await;
    h.user(91, true, None);
    h.user(92, false, Some("Gracias"));
    h.start().await;
    h.add_row(crate::harness::row(91, "Ana", "Sí", "Activo"));
    h.add_row(crate::harness::row(92, "Beto", "Sí", "Activo"));
    h.wait_cell("91", "Estado WhatsApp", "read").await;
    h.wait_cell("92", "Última respuesta", "Gracias").await;
    let forged = reqwest::Client::new()
        .post(h.webhook_url())
        .header("X-Hub-Signature-256", format!("sha256={}", "0".repeat(64)))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status().as_u16(), 403);
    h.quiesce().await;
    let r = reqwest::get(h.webhook_url().replace("/webhooks/whatsapp", "/metrics")).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(r.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));
    let text = r.text().await.unwrap();
    for want in [
        r#"recado_messages{rule="confirmacion",stage="sent"} 2"#,
        r#"recado_messages{rule="confirmacion",stage="delivered"} 2"#,
        r#"recado_messages{rule="confirmacion",stage="read"} 1"#,
        r#"recado_messages{rule="confirmacion",stage="replied"} 1"#,
        r#"recado_messages{rule="confirmacion",stage="failed"} 0"#,
        r#"recado_webhooks_total{provider="whatsapp",result="forged"} 1"#,
        r#"recado_webhooks_total{provider="whatsapp",result="accepted"}"#,
        r#"recado_webhook_events_total{provider="whatsapp",kind="status"}"#,
        r#"recado_webhook_events_total{provider="whatsapp",kind="message"} 1"#,
        r#"recado_send_seconds_count{provider="whatsapp"} 2"#,
        r#"recado_polls_total{source="inscripciones",result="ok"}"#,
        r#"recado_poll_seconds_count{source="inscripciones"}"#,
        r#"recado_source_quota_limit{source="inscripciones",window="minute"} 5000"#,
        "recado_write_back_pending 0",
        "recado_webhooks_pending 0",
        "# EOF",
    ] {
        assert!(text.contains(want), "missing {want} in:\n{text}");
    }
    for n in [91, 92] {
        let digits = crate::harness::e164(n).trim_start_matches('+').to_string();
        assert!(!text.contains(&digits[digits.len() - 8..]), "a phone number in /metrics:\n{text}");
    }
    h.stop().await;
}

/// `recado report` prints each rule's funnel from the store (table and CSV), and `recado
/// contact` one person's history with the number masked unless asked; both beside a daemon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_contact_read_what_happened_from_the_store() {
    let mut h = Harness::new(vec![]).await;
    h.user(94, true, None);
    h.user(95, false, Some("Gracias, ahí estaré"));
    h.start().await;
    h.add_row(crate::harness::row(94, "Ana", "Sí", "Activo"));
    h.add_row(crate::harness::row(95, "Beto", "Sí", "Activo"));
    h.wait_cell("94", "Estado WhatsApp", "read").await;
    h.wait_cell("95", "Última respuesta", "Gracias, ahí estaré").await;
    h.quiesce().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("recado.yaml");
    std::fs::write(&config, h.yaml()).unwrap();
    let run = |args: &[&str]| {
        let (code, text) = recado_with_config(args, &config);
        assert_eq!(code, Some(0), "{args:?}:\n{text}");
        text
    };
    // While the daemon runs.
    let table = run(&["report"]);
    let line = table.lines().find(|l| l.starts_with("confirmacion")).unwrap_or_else(|| panic!("{table}"));
    let numbers: Vec<&str> = line.split_whitespace().skip(1).collect();
    assert_eq!(
        numbers,
        ["2", "0", "2", "2", "1", "1", "0", "0"],
        "total queued sent delivered read replied failed skipped:\n{table}"
    );
    let csv = run(&["report", "--format", "csv", "--since", "1d", "--rule", "confirmacion"]);
    assert_eq!(
        csv.lines().collect::<Vec<_>>(),
        ["rule,total,queued,sent,delivered,read,replied,failed,skipped", "\"confirmacion\",2,0,2,2,1,1,0,0"],
        "{csv}"
    );

    let number = crate::harness::e164(95);
    let masked = run(&["contact", &number]);
    assert!(!masked.contains(&number[number.len() - 8..]), "masked by default:\n{masked}");
    assert!(masked.contains("confirmacion") && masked.contains("delivered"), "{masked}");
    assert!(masked.contains("Gracias, ahí estaré"), "what they wrote:\n{masked}");
    let shown = run(&["contact", &number, "--show-phone"]);
    assert!(shown.starts_with(&number), "{shown}");
    h.stop().await;
}

/// The dashboard is refused without its password (401 asking for Basic) and, with it, shows
/// each rule's funnel as a chart, the sources and providers, and a failure with its reason,
/// numbers masked and record text escaped. Then a real headless Chromium renders it to a PNG
/// (`target/dashboard.png`): CI installs Chromium and fails without it; elsewhere that part needs
/// `chromium` on the PATH or in RECADO_CHROMIUM, and is skipped with a note when it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_needs_its_password_and_shows_the_funnel_in_a_real_browser() {
    let mut h = Harness::new(vec![]).await;
    h.extra_http = "  dashboard_password: \"clave del equipo\"\n".to_string();
    h.user(96, true, Some("Sí, gracias"));
    h.start().await;
    let refused = h.fault(crate::harness::Fault::Refused, 1, 97).to_string();
    h.add_row(crate::harness::row(96, "Ana", "Sí", "Activo"));
    h.add_row(crate::harness::row(97, "<b>Beto</b>", "Sí", "Activo"));
    h.wait_cell("96", "Última respuesta", "Sí, gracias").await;
    h.wait_cell("97", "Estado WhatsApp", "failed").await;
    h.quiesce().await;
    let url = h.webhook_url().replace("/webhooks/whatsapp", "/dashboard");
    let client = reqwest::Client::new();
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status().as_u16(), 401);
    assert!(anonymous.headers()["www-authenticate"].to_str().unwrap().starts_with("Basic"));
    let wrong = client.get(&url).basic_auth("equipo", Some("otra")).send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let page = client.get(&url).basic_auth("equipo", Some("clave del equipo")).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    for want in [
        "aria-label=\"funnel of confirmacion\"",
        "source:inscripciones",
        "provider:whatsapp",
        &refused,
        "inscripciones/97",
    ] {
        assert!(html.contains(want), "missing {want} in the dashboard:\n{html}");
    }
    assert!(!html.contains("<script"), "no JavaScript");
    for n in [96, 97] {
        let number = crate::harness::e164(n);
        assert!(!html.contains(&number[number.len() - 8..]), "a full number on the dashboard");
    }

    let Some(chromium) = crate::harness::chromium() else {
        assert!(std::env::var_os("CI").is_none(), "CI installs chromium (.ci/run): the browser check must run there");
        eprintln!("note: no chromium found; the dashboard was checked over HTTP only");
        h.stop().await;
        return;
    };
    let address = url.replace("http://", "http://equipo:clave%20del%20equipo@");
    let png = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/dashboard.png");
    let _ = std::fs::remove_file(&png);
    let profile = tempfile::tempdir().unwrap();
    let browse = |extra: &[&str]| {
        std::process::Command::new(&chromium)
            .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
            .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&address)
            .output()
            .expect("chromium runs")
    };
    let dom = browse(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("funnel of confirmacion"), "the browser got the page past the password:\n{dom}");
    let shot = browse(&[&format!("--screenshot={}", png.display()), "--window-size=1100,1400", "--hide-scrollbars"]);
    assert!(shot.status.success(), "{}", String::from_utf8_lossy(&shot.stderr));
    let bytes = std::fs::read(&png).expect("the screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000, "a real picture ({} bytes)", bytes.len());
    h.stop().await;
}

/// A misspelt consent column does not read as "nobody consented": the daemon pauses the
/// source, `/readyz` names the column with the header meant, nothing is sent and no row is
/// marked "no consent".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_consent_column_pauses_the_source_and_says_which_column_was_meant() {
    let mut h = Harness::new(vec![crate::harness::row(120, "Ana", "Sí", "Activo")]).await;
    h.consent_column = "Consentimento";
    h.user(120, true, None);
    h.start_without_waiting().await;
    let url = h.webhook_url().replace("/webhooks/whatsapp", "/readyz");
    let last = std::sync::Mutex::new(Value::Null);
    wait_for("/readyz to name the misspelt column", Duration::from_secs(20), || async {
        let r = reqwest::get(&url).await.unwrap();
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        let error = body["components"]["source:inscripciones"]["last_error"].as_str().unwrap_or("").to_string();
        *last.lock().unwrap() = body;
        code == 503 && error.contains("'Consentimento' (did you mean 'Consentimiento'?)")
    })
    .await;
    h.add_row(crate::harness::row(121, "Beto", "Sí", "Activo"));
    h.quiesce().await;
    assert!(h.messages().await.is_empty(), "nothing queued while the source is paused");
    assert_eq!(h.sandbox.meta().sent_count(), 0);
    assert_eq!(h.cell("120", "Error WhatsApp"), "", "no row says 'no consent'");
    h.stop().await;
}

/// `recado check --online` reaches the sheet as the daemon will: a misspelt column (in a rule's
/// text) and a misspelt consent column each get "did you mean" and the real headers; a sheet
/// not shared with the service account is named with the account's e-mail, and one shared as
/// Viewer is refused too (write-back would fail); a right configuration passes. Through the binary, over real HTTP against the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_catches_misspelt_headers_and_an_unshared_sheet() {
    let mut h = Harness::new(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("recado.yaml");
    let check = |yaml: String| check_online(&config, &yaml);
    let (code, text) = check(h.yaml());
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("online: every source answered"), "{text}");

    h.consent_column = "Consentimento";
    h.extra_rules = "  - id: curso\n    source: inscripciones\n    when: row_added\n    provider: whatsapp\n    text: \"Hola {{ Nombre }}, tu curso es {{ Cruso }}\"\n".to_string();
    let (code, text) = check(h.yaml());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("'Cruso' (named by the text or filter of rule curso)"), "{text}");
    assert!(text.contains("did you mean 'Curso'?"), "{text}");
    assert!(
        text.contains(
            "'Consentimento' (named by consent) is not a field of the source; did you mean 'Consentimiento'?"
        ),
        "{text}"
    );
    assert!(text.contains("its fields: 'ID', 'Nombre'"), "the real headers are listed:\n{text}");

    h.sandbox.google().share_only_with(crate::harness::SHEET, &["someone-else@example.org"]);
    let (code, text) = check(h.yaml());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("PERMISSION_DENIED"), "{text}");
    assert!(text.contains("recado-test@sandbox.iam.gserviceaccount.com"), "names the account to share with:\n{text}");

    // Shared, but as Viewer: it reads, and every write-back would be refused.
    h.sandbox.google().share_as_viewer(crate::harness::SHEET, "recado-test@sandbox.iam.gserviceaccount.com");
    let (code, text) = check(h.yaml());
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("readable but not writable (shared as Viewer)"), "{text}");
    assert!(text.contains("which must be an Editor"), "{text}");
}

/// `recado check --online` asks the provider about every template the configuration sends:
/// one that does not exist (with "did you mean"), one not approved, and one given the wrong
/// number of parameters are each named with the rule that sends it, on Meta (the business
/// account's message_templates) and on Twilio (the Content API and its WhatsApp approval); a
/// token the provider refuses is reported as such. Through the binary, over real HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_catches_a_missing_an_unapproved_and_a_mismatched_template() {
    for vendor in [crate::harness::Vendor::Meta, crate::harness::Vendor::Twilio] {
        let mut h = Harness::on(vendor, vec![]).await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("recado.yaml");
        let check = |yaml: String| check_online(&config, &yaml);
        let (code, text) = check(h.yaml());
        assert_eq!(code, Some(0), "{vendor:?}: {text}");
        assert!(text.contains("every template, approved"), "{text}");
        if vendor == crate::harness::Vendor::Twilio {
            // With an API key (which may not read the Accounts resource) the check still passes.
            h.twilio_service_with_api_key = true;
            let (code, text) = check(h.yaml());
            assert_eq!(code, Some(0), "with an API key: {text}");
            h.twilio_service_with_api_key = false;
        }

        h.sandbox.meta().add_template(recado::sandbox::TemplateDef {
            status: "PENDING".into(),
            ..recado::sandbox::TemplateDef::new("aviso_pendiente", "es", 1, false)
        });
        h.sandbox.twilio().add_content(recado::sandbox::ContentDef {
            approval: "rejected".into(),
            rejection_reason: "INVALID_FORMAT".into(),
            ..recado::sandbox::ContentDef::new("aviso_pendiente", "es", 1, false)
        });
        let rule = |id: &str, name: &str, body: &str| {
            format!("  - id: {id}\n    source: inscripciones\n    when: row_added\n    provider: whatsapp\n    template: {{ name: {name}, language: es, body: [{body}] }}\n")
        };
        h.extra_rules = [
            rule("mal_escrita", "confirmacion_inscripcoin", "\"{{ Nombre }}\", \"{{ Curso }}\", \"{{ Mentor }}\""),
            rule("pendiente", "aviso_pendiente", "\"{{ Nombre }}\""),
            rule("faltan", "encuesta_seguimiento", "\"{{ Nombre }}\", \"{{ Curso }}\""),
        ]
        .concat();
        // Twilio needs the Content SID of each; the misspelt one maps to a SID Twilio does not
        // have.
        let mapped = format!(
            "    content_templates:\n      - {{ name: confirmacion_inscripcoin, language: es, content_sid: {} }}\n      - {{ name: aviso_pendiente, language: es, content_sid: {} }}\n",
            recado::sandbox::twilio::content_sid("confirmacion_inscripcoin", "es"),
            recado::sandbox::twilio::content_sid("aviso_pendiente", "es"),
        );
        let (code, text) = check(h.yaml().replace("    content_templates:\n", &mapped));
        assert_eq!(code, Some(1), "{vendor:?}: {text}");
        let expected: &[&str] = match vendor {
            crate::harness::Vendor::Meta => &[
                "template 'confirmacion_inscripcoin' (es, sent by rule mal_escrita) does not exist in the business account; did you mean 'confirmacion_inscripcion'?",
                "template 'aviso_pendiente' (es, sent by rule pendiente) is PENDING, not APPROVED",
                "template 'encuesta_seguimiento' (es, sent by rule faltan): its body takes 1 parameter(s) and the configuration gives 2",
                "its URL button takes a suffix and the configuration gives no button_url_suffix",
            ],
            crate::harness::Vendor::Twilio => &[
                "template 'confirmacion_inscripcoin' (es, sent by rule mal_escrita), Content SID HX",
                "was not found",
                "template 'aviso_pendiente' (es, sent by rule pendiente), Content SID HX",
                "WhatsApp approval is 'rejected', not 'approved' (reason: INVALID_FORMAT)",
                "template 'encuesta_seguimiento' (es, sent by rule faltan), Content SID HX",
                "its URL button takes a variable and the configuration gives no button_url_suffix",
            ],
        };
        for want in expected {
            assert!(text.contains(want), "{vendor:?}: missing {want:?} in:\n{text}");
        }
        assert!(!text.contains("sent by rule confirmacion"), "{vendor:?}: the right templates pass:\n{text}");

        // A token the provider refuses says so, once, instead of a line per template.
        h.extra_rules.clear();
        let wrong = match vendor {
            crate::harness::Vendor::Meta => h.yaml().replace("access_token: sandbox-token", "access_token: caducado"),
            crate::harness::Vendor::Twilio => {
                let token = h.sandbox.twilio().settings().auth_token;
                h.yaml().replace(&format!("auth_token: {token}"), "auth_token: caducado")
            }
        };
        let (code, text) = check(wrong);
        assert_eq!(code, Some(1), "{vendor:?}: {text}");
        let refused = match vendor {
            crate::harness::Vendor::Meta => "could not be read with the access token",
            crate::harness::Vendor::Twilio => "could not be read with the configured credentials",
        };
        assert!(text.contains(refused), "{vendor:?}: {text}");
        assert_eq!(text.matches("providers.whatsapp").count(), 1, "{vendor:?}: one line for a refused token:\n{text}");
    }
}

/// A template whose replies a flow reads: every quick-reply button a person can tap must be an
/// answer to the flow's first question, or the person who taps it is asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_online_finds_a_template_button_the_replying_flow_does_not_take() {
    for vendor in [crate::harness::Vendor::Meta, crate::harness::Vendor::Twilio] {
        let mut h = Harness::on(vendor, vec![]).await;
        h.set_quick_replies("confirmacion_inscripcion", &["Confirmo", "No puedo"]);
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("recado.yaml");
        h.extra_rules = "  - id: citacion\n    source: inscripciones\n    when: { changed: Estado, to: Citado }\n    provider: whatsapp\n    template: { name: confirmacion_inscripcion, language: es, body: [\"{{ Nombre }}\", \"{{ Curso }}\", \"{{ Mentor }}\"] }\n    on_reply: confirmar\n".into();
        let flows = |second: &str| {
            format!(
                "inbound:\n  opt_out_reply: \"Listo.\"\nflows:\n  - id: confirmar\n    steps:\n      - id: respuesta\n        ask:\n          text: \"¿Confirmas?\"\n          choices: [{{ title: Confirmo }}, {{ title: \"{second}\" }}]\n"
            )
        };
        h.extra_top = flows("Cambiar la hora");
        let (code, text) = check_online(&config, &h.yaml());
        assert_eq!(code, Some(1), "{vendor:?}: {text}");
        assert!(
            text.contains("quick-reply button(s) 'No puedo' are not an answer flow 'confirmar' takes"),
            "{vendor:?}: {text}"
        );
        assert!(!text.contains("'Confirmo'"), "{vendor:?}: a button the flow takes passes: {text}");
        // Typed differently (case, accents) still counts: the flow reads it the same.
        h.extra_top = flows("no puedo");
        let (code, text) = check_online(&config, &h.yaml());
        assert_eq!(code, Some(0), "{vendor:?}: {text}");
    }
}

/// Runs the `recado` binary with `args` and `--config config`: its exit code and what it printed
/// (stdout, then stderr).
/// `recado check --online` on `yaml`, written to `config` first.
fn check_online(config: &std::path::Path, yaml: &str) -> (Option<i32>, String) {
    std::fs::write(config, yaml).unwrap();
    recado_with_config(&["check", "--online"], config)
}

pub fn recado_with_config(args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recado"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("recado runs");
    (out.status.code(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}
