//! The `recado` binary as an operator runs it: logs at debug level carry no phone number and no
//! secret, and `recado check` reports every problem of a bad file without echoing secrets or
//! exhausting memory.

use std::process::Command;

fn recado() -> Command {
    Command::new(env!("CARGO_BIN_EXE_recado"))
}

/// The demo's participants' numbers, as digits.
fn demo_numbers() -> Vec<String> {
    (4301..=4320).map(|n| format!("5698765{n}")).collect()
}

#[test]
fn a_whole_demo_at_debug_level_logs_no_phone_number_and_no_secret() {
    let out = recado()
        .args(["demo", "--until-settled", "--timeout", "120"])
        .env("RECADO_LOG", "debug")
        .output()
        .expect("recado runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the demo settles:\n{}", &text[text.len().saturating_sub(3000)..]);
    assert!(text.lines().filter(|l| l.contains("DEBUG")).count() > 10, "debug logs were on");
    let squeezed: String = text.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')')).collect();
    for n in demo_numbers() {
        let national = &n[2..];
        for form in [n.clone(), format!("+{n}"), national.to_string()] {
            assert!(!squeezed.contains(&form), "the number {form} appears in the output");
        }
    }
    for secret in ["sandbox-token", "sandbox-app-secret", "sandbox-verify", "ya29.", "BEGIN PRIVATE KEY", "MIIEv"] {
        assert!(!text.contains(secret), "the secret '{secret}' appears in the output");
    }
}

fn check(yaml: &[u8]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("recado.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = recado().args(["check", "--config"]).arg(&path).output().expect("recado runs");
    (
        out.status.code().unwrap_or(-1),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn check_names_the_field_of_a_secret_given_as_a_number_and_never_echoes_it() {
    let (code, text) = check(
        b"state: {path: /tmp/x.db}\nproviders:\n  - id: w\n    type: meta_cloud\n    phone_number_id: \"1\"\n    access_token: 20261122\n    app_secret: s\n    verify_token: v\n",
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("providers[0].access_token"), "{text}");
    assert!(!text.contains("20261122"), "the secret was echoed:\n{text}");
}

#[test]
fn check_refuses_an_alias_bomb_quickly_and_says_why() {
    let bomb = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\ng: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]\nh: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g]\ni: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h]\n";
    let (code, text) = check(bomb.as_bytes());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("expands to more than"), "{text}");
}

#[test]
fn check_says_a_binary_file_is_not_yaml() {
    let garbage: Vec<u8> = (0..2048u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (code, text) = check(&garbage);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not a text file"), "{text}");
    assert!(!text.contains("missing section"), "{text}");
}

#[test]
fn an_unknown_section_hides_none_of_the_other_problems() {
    let (code, text) = check(b"state: {path: /tmp/x.db}\ncolour: blue\nhttp: {listen: nowhere}\nrules:\n  - id: r\n    source: s\n    when: row_added\n    provider: p\n    text: hola\n");
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("colour: unknown section"), "{text}");
    assert!(text.contains("http.listen"), "{text}");
    assert!(text.contains("rules[0].source"), "{text}");
    assert!(!text.contains("state: missing section"), "{text}");
}

#[test]
fn numbers_too_large_are_reported_with_their_path_not_a_panic() {
    let yaml = "state: {path: /tmp/x.db}\ndefaults: {lateness: 99999999999999999999d}\nsources:\n  - id: s\n    type: google_sheets\n    spreadsheet_id: x\n    tab: T\n    key_column: ID\n    phone_column: Tel\n    poll_interval: 1e308s\n    service_account_key: \"{}\"\nrules:\n  - id: r\n    source: s\n    when: {date: Fecha, offset: -99999999999999d}\n    provider: p\n    text: hola\n";
    let (code, text) = check(yaml.as_bytes());
    assert_eq!(code, 1, "{text}");
    assert!(!text.contains("panicked"), "{text}");
    for path in ["defaults.lateness", "sources[0].poll_interval", "rules[0].when.offset"] {
        assert!(text.contains(path), "missing {path}:\n{text}");
    }
}

/// With `inbound.languages`, `recado check` names every text missing a language, with its path;
/// the same configuration with the texts completed is valid.
#[test]
fn check_reports_each_text_missing_a_configured_language() {
    let yaml = r#"
state: {path: /tmp/x.db}
inbound:
  entry_flow: menu
  languages: [en, qu]
  opt_out_reply: { es: "Listo.", en: "Done.", qu: "Listo." }
flows:
  - id: menu
    steps:
      - id: hola
        say: { es: "Hola", en: "Hello" }
      - id: opcion
        ask:
          text: { es: "¿Qué necesitas?", en: "What do you need?", qu: "¿Imata munanki?" }
          choices:
            - { title: { es: "Horarios", en: "Hours", qu: "Pachakuna" } }
            - { title: { es: "Trámites", qu: "Ruraykuna" } }
"#;
    let (code, text) = check(yaml.as_bytes());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("flows[0].steps[0].say: missing the text in 'qu'"), "{text}");
    assert!(text.contains("flows[0].steps[1].ask.choices[1].title: missing the text in 'en'"), "{text}");
    assert_eq!(text.matches("missing the text").count(), 2, "{text}");
    let fixed = yaml
        .replace(r#"en: "Hello" }"#, r#"en: "Hello", qu: "Napaykullayki" }"#)
        .replace(r#"{ es: "Trámites", qu"#, r#"{ es: "Trámites", en: "Procedures", qu"#);
    let (code, text) = check(fixed.as_bytes());
    assert_eq!(code, 0, "{text}");
    // A bot tells someone who opts out that it worked: the text is required.
    let silent = fixed.replace("  opt_out_reply: { es: \"Listo.\", en: \"Done.\", qu: \"Listo.\" }\n", "");
    assert_ne!(silent, fixed);
    let (code, text) = check(silent.as_bytes());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("inbound.opt_out_reply: required when recado answers people"), "{text}");
}

/// `--log-format json`: every line on stderr is one JSON event with its level and fields, for a
/// log collector; and a whole conversation demo, at debug level, logs no phone number and no
/// secret there either (its stdout prints the sheets, phones included, on purpose).
#[test]
fn json_logs_of_a_whole_conversation_demo_are_json_and_carry_no_phone_number_and_no_secret() {
    let out = recado()
        .args(["--log-format", "json", "demo", "--scenario", "municipio", "--until-settled", "--timeout", "120"])
        .env("RECADO_LOG", "debug")
        .output()
        .expect("recado runs");
    let logs = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "the demo settles:\n{}", &logs[logs.len().saturating_sub(3000)..]);
    let events: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON event ({e}): {l}")))
        .collect();
    assert!(events.len() > 10, "debug logs were on: {} events", events.len());
    assert!(events.iter().all(|e| e["level"].is_string() && e["fields"].is_object()), "{:?}", events.first());
    assert!(
        events.iter().any(|e| e["fields"]["flow"].is_string()),
        "conversation events carry the flow as a field, not only in the message"
    );
    let squeezed: String = logs.chars().filter(|c| !matches!(c, ' ' | '-' | '(' | ')')).collect();
    for n in ["56987654401", "56987654402", "56987654403", "56987654301"] {
        for form in [n.to_string(), format!("+{n}"), n[2..].to_string()] {
            assert!(!squeezed.contains(&form), "the number {form} appears in the logs");
        }
    }
    for secret in ["sandbox-token", "sandbox-app-secret", "sandbox-verify", "ya29.", "BEGIN PRIVATE KEY", "MIIEv"] {
        assert!(!logs.contains(secret), "the secret '{secret}' appears in the logs");
    }
}

/// Rehearsing one's own configuration: `recado sandbox --config` on the packaged example
/// config (only its listening port and intervals changed) with a CSV of rows writes a copy
/// pointed at the sandbox; `recado run` on that copy under a notify socket reports READY=1,
/// and a row added as a person would gets its message, read, written back to the row. Both
/// are the real binary over real HTTP; nothing else is set up by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_rehearsed_on_the_sandbox_runs_at_once_and_sends() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sheets-meta.example.yaml"))
        .unwrap()
        .replace("listen: 127.0.0.1:8080", &format!("listen: 127.0.0.1:{port}"))
        .replace("poll_interval: 30s", "poll_interval: 200ms")
        .replace("flush_interval: 5s", "flush_interval: 200ms");
    let config = dir.path().join("recado.yaml");
    std::fs::write(&config, example).unwrap();
    let csv = dir.path().join("inscripciones.csv");
    std::fs::write(
        &csv,
        "ID,Nombre,Teléfono,Curso,Mentor,Consentimiento,Estado\r\n1,\"Pérez, Ana\",+56 9 8765 0101,Soldadura,Luis,Sí,Activo\r\n",
    )
    .unwrap();
    let out = dir.path().join("ensayo");
    let mut sandbox = recado()
        .args(["sandbox", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--seed")
        .arg(format!("inscripciones={}", csv.display()))
        .arg("--out")
        .arg(&out)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(sandbox.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let done = line.contains("run it: recado run --config");
        printed.push(line);
        if done {
            break;
        }
    }
    let text = printed.join("\n");
    assert!(
        text.contains("templates registered, approved: confirmacion_inscripcion (es), encuesta_seguimiento (es)"),
        "{text}"
    );
    assert!(text.contains("seeded from") && text.contains("(1 row(s))"), "{text}");
    let base =
        printed[0].split_whitespace().find(|w| w.starts_with("http://")).unwrap().trim_end_matches(';').to_string();

    let socket = dir.path().join("notify");
    let notify = tokio::net::UnixDatagram::bind(&socket).unwrap();
    let mut daemon = recado()
        .args(["run", "--config"])
        .arg(out.join("recado.yaml"))
        .env("NOTIFY_SOCKET", &socket)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let ready = loop {
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), notify.recv(&mut buf))
            .await
            .expect("the daemon notifies within 30 s")
            .unwrap();
        let m = String::from_utf8_lossy(&buf[..n]).to_string();
        if m.starts_with("READY=1") {
            break m;
        }
    };
    assert!(ready.contains("STATUS=running"), "{ready}");

    let tab =
        format!("{base}/admin/google/spreadsheets/1AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefg/tabs/Inscripciones");
    let client = reqwest::Client::new();
    let added = client
        .post(format!("{tab}/rows"))
        .json(&serde_json::json!({ "values": ["2", "Beto", "+56 9 8765 0102", "Soldadura", "Luis", "Sí", "Activo"] }))
        .send()
        .await
        .unwrap();
    assert!(added.status().is_success());
    let status_of_row_2 = || {
        let client = client.clone();
        let tab = tab.clone();
        async move {
            let rows: serde_json::Value = client.get(&tab).send().await.ok()?.json().await.ok()?;
            let rows = rows["rows"].as_array()?.clone();
            let header = rows.first()?.as_array()?.clone();
            let at = header.iter().position(|h| h == "Estado WhatsApp")?;
            let row = rows.iter().find(|r| r[0] == "2" || r[0] == 2)?;
            row.get(at)?.as_str().map(String::from)
        }
    };
    crate::harness::wait_for(
        "the added row's message delivered, on its row",
        std::time::Duration::from_secs(30),
        || {
            let status = status_of_row_2();
            async move { matches!(status.await.as_deref(), Some("delivered" | "read")) }
        },
    )
    .await;
    let _ = daemon.kill();
    let _ = sandbox.kill();
    let _ = daemon.wait();
    let _ = sandbox.wait();
}

/// A rule cannot watch or read a field recado writes itself (the source's `write_back`, or a
/// rule's own): such a field is never read as data, so `recado check` says so instead of the
/// source pausing for good at run time.
#[test]
fn check_refuses_a_rule_that_watches_or_reads_a_field_recado_writes() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.json");
    std::fs::write(&key, recado::sandbox::GoogleState::new().create_service_account("http://127.0.0.1:1", "a@b.c"))
        .unwrap();
    let yaml = format!(
        r#"
state: {{ path: /tmp/x.db }}
providers:
  - {{ id: w, type: meta_cloud, phone_number_id: "1", access_token: t, app_secret: s, verify_token: v }}
sources:
  - id: s
    type: google_sheets
    spreadsheet_id: x
    tab: t
    key_column: ID
    phone_column: Teléfono
    service_account_key_file: "{key}"
    write_back: {{ status: Estado WhatsApp }}
rules:
  - {{ id: a, source: s, when: {{ changed: Estado WhatsApp }}, provider: w, template: {{ name: t, language: es }} }}
  - {{ id: b, source: s, when: row_added, provider: w, template: {{ name: t, language: es }}, write_back: {{ status: Estado_hola }} }}
  - {{ id: c, source: s, when: row_added, if: "Estado_hola == ''", provider: w, template: {{ name: t, language: es }} }}
"#,
        key = key.display()
    );
    let (code, text) = check(yaml.as_bytes());
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("rules[0].when: 'Estado WhatsApp' is a field recado writes (write_back): a rule cannot watch it"),
        "{text}"
    );
    assert!(text.contains("rules[2]: its text or filter reads 'Estado_hola', a field recado writes"), "{text}");
}

/// `handoff:` is checked against the rest of the file, every problem at once: its inbox must
/// be a source, its fields distinct, its keywords not the opt-out ones, and something must
/// open a hand-off.
#[test]
fn check_reports_every_problem_of_the_hand_off_section_at_once() {
    let yaml = r#"
state: {path: /tmp/x.db}
inbound:
  opt_out_reply: "Listo."
handoff:
  inbox: bandeja
  keywords: [Baja]
  reopen_template: { name: retomar, language: es }
  fields:
    opened_at: Abierta
    record_id: ContactId
    transcript: Conversación
    state: Estado
    reply: Respuesta
    close: respuesta
"#;
    let (code, text) = check(yaml.as_bytes());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("handoff.inbox: no source with id 'bandeja'"), "{text}");
    assert!(text.contains("handoff.fields.record_id: links the inbox record to the person's record"), "{text}");
    assert!(text.contains("handoff.fields.close: 'respuesta' is also handoff.fields.reply"), "{text}");
    assert!(text.contains("handoff.keywords[0]: 'BAJA' is already an opt-out or opt-in keyword"), "{text}");
    let no_trigger = yaml.replace("  keywords: [Baja]\n", "");
    let (code, text) = check(no_trigger.as_bytes());
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("handoff.keywords: nothing opens a hand-off"), "{text}");
}

/// A template header is checked where it is written: one file, a document's name only on a
/// document, and never on Twilio, whose Content templates carry their own media.
#[test]
fn check_reports_template_header_problems() {
    let yaml = r#"
state: {path: /tmp/x.db}
providers:
  - id: whatsapp
    type: twilio
    account_sid: AC00000000000000000000000000000001
    auth_token: t0k3n
    from: "whatsapp:+14155238886"
    content_templates:
      - { name: requisitos, language: es, content_sid: HX0db333688ebbf6bebfbd754fbe15277f }
sources:
  - id: s
    type: google_sheets
    spreadsheet_id: x
    tab: T
    key_column: ID
    phone_column: Tel
    service_account_key: {"client_email": "a@b.c", "private_key": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n", "token_uri": "https://oauth2.googleapis.com/token"}
rules:
  - id: r
    source: s
    when: row_added
    provider: whatsapp
    template:
      name: requisitos
      language: es
      header: { image: "https://muni.example/a.jpg", filename: "a.jpg" }
  - id: r2
    source: s
    when: row_added
    provider: whatsapp
    template:
      name: requisitos
      language: es
      header: { image: "https://muni.example/a.jpg", document: "https://muni.example/b.pdf" }
  - id: r3
    source: s
    when: row_added
    provider: whatsapp
    template:
      name: requisitos
      language: es
      header: { image: "/nonexistent/afiche.gif" }
  - id: r4
    source: s
    when: row_added
    provider: whatsapp
    template:
      name: requisitos
      language: es
      header: { document: "muni.example/b.pdf" }
flows:
  - id: menu
    steps:
      - id: requisitos
        say: { document: "/nonexistent/requisitos.pdf" }
"#;
    let (code, text) = check(yaml.as_bytes());
    assert!(
        text.contains("rules[2].template.header.image: WhatsApp takes an image as .jpg, .jpeg or .png: /nonexistent/afiche.gif is not one"),
        "{text}"
    );
    assert!(text.contains("rules[2].template.header.image: cannot read /nonexistent/afiche.gif"), "{text}");
    assert!(
        text.contains(
            "rules[3].template.header.document: expected the file's public address (https://…) or an absolute path"
        ),
        "{text}"
    );
    assert!(text.contains("flows[0].steps[0].say.document: cannot read /nonexistent/requisitos.pdf"), "{text}");
    assert!(
        text.contains("flows.menu.requisitos.say.document: provider 'whatsapp' sends files only from a public address"),
        "{text}"
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("rules[0].template.header.filename: only a document has a file name"), "{text}");
    assert!(text.contains("rules[1].template.header: give exactly one of image, document, video"), "{text}");
    assert!(text.contains("sends a Content template's header file from the Content itself"), "{text}");
}
