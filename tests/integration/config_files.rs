//! Configuration files: the examples validate; a bad file reports every error with its path.

use recado::config::Config;

#[test]
fn the_demo_configuration_validates() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.json");
    let sandbox_key = recado::sandbox::GoogleState::new().create_service_account("http://127.0.0.1:1", "a@b.c");
    std::fs::write(&key, sandbox_key).unwrap();
    let yaml = recado::demo::demo_config_yaml("http://127.0.0.1:1", &key.display().to_string(), "/tmp/x.db");
    let c = Config::from_yaml(&yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.rules.len(), 4);
    assert_eq!(c.sources.len(), 2);
}

#[test]
fn the_production_example_validates() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("google-service-account.json");
    std::fs::write(
        &key,
        recado::sandbox::GoogleState::new().create_service_account("https://oauth2.googleapis.com", "a@b.c"),
    )
    .unwrap();
    for (name, secret) in [("meta-access-token", "t"), ("meta-app-secret", "s"), ("meta-verify-token", "v")] {
        std::fs::write(dir.path().join(name), secret).unwrap();
    }
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/sheets-meta.example.yaml")).unwrap();
    // As under systemd: every secret is a credential file in $CREDENTIALS_DIRECTORY.
    let env = recado::config::Env::fixed([("CREDENTIALS_DIRECTORY", dir.path().display().to_string())]);
    let c = Config::from_yaml_with(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.providers[0].id(), "whatsapp");
    assert_eq!(c.http.public_url.as_deref(), Some("https://recado.example.org"));
}

#[test]
fn a_bad_file_yields_all_its_errors_with_their_paths() {
    let yaml = r#"
state: {}
http:
  listen: "not an address"
providers:
  - id: whatsapp
    type: meta_cloud
    phone_number_id: ""
    access_token: t
    app_secret_env: RECADO_TEST_SURELY_UNSET_VARIABLE
    verify_token: v
    api_version: "23"
    messages_per_second: -5
  - id: twilio
    type: carrier_pigeon
sources:
  - id: s
    type: google_sheets
    spreadsheet_id: x
    tab: T
    key_column: ID
    phone_column: Tel
    default_region: Chile
    poll_interval: soon
    service_account_key: "{}"
    colour: blue
rules:
  - id: r1
    source: nowhere
    when: row_added
    provider: whatsapp
    template: { name: t, language: es, body: ["{{ Nombre "] }
  - id: r2
    source: s
    when: { changed: "" }
    provider: nobody
    text: hola
  - id: r3
    source: s
    when: { sometimes: Fecha }
    provider: whatsapp
    if: "Curso =="
  - id: r4
    source: s
    when: { date: Fecha, offset: [-6w, -2x], at: "25:00" }
    provider: whatsapp
    text: hola
    time_zone: Chile/Santiago_de_Nada
    send_between: "9-20"
  - id: r5
    source: s
    when: { cron: "0 10 1 */3" }
    provider: whatsapp
    text: hola
    lateness: ages
defaults:
  send_days: [lunes, funday]
"#;
    let errs = Config::from_yaml_with(yaml, &recado::config::Env::fixed::<&str, &str>([])).unwrap_err();
    let paths: Vec<&str> = errs.0.iter().map(|e| e.path.as_str()).collect();
    for want in [
        "state.path",
        "http.listen",
        "providers[0].phone_number_id",
        "providers[0].app_secret_env",
        "providers[0].api_version",
        "providers[0].messages_per_second",
        "providers[1].type",
        "sources[0].colour",
        "rules[0].source",
        "rules[0].template.body[0]",
        "rules[1].when.changed",
        "rules[1].provider",
        "rules[2].when",
        "rules[2].if",
        "rules[3].when.offset[1]",
        "rules[3].when.at",
        "rules[3].time_zone",
        "rules[3].send_between",
        "rules[4].when.cron",
        "rules[4].lateness",
        "defaults.send_days[1]",
    ] {
        assert!(paths.contains(&want), "missing an error at {want}; got:\n{errs}");
    }
    let text = errs.to_string();
    assert!(text.contains("environment variable RECADO_TEST_SURELY_UNSET_VARIABLE is not set"), "{text}");
    assert!(text.contains("unknown variant `carrier_pigeon`"), "{text}");
    assert!(text.contains("unknown field `colour`"), "{text}");
}

/// The Twilio demo is the Meta demo with one provider entry swapped: rules are untouched, and
/// the Content SIDs it names are the ones the sandbox gives its templates.
#[test]
fn the_twilio_demo_switches_provider_by_its_entry_alone() {
    use recado::demo::{demo_config_yaml_for, DemoProvider};
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.json");
    std::fs::write(&key, recado::sandbox::GoogleState::new().create_service_account("http://127.0.0.1:1", "a@b.c"))
        .unwrap();
    let yaml = |p| demo_config_yaml_for(p, "http://127.0.0.1:1", &key.display().to_string(), "/tmp/x.db");
    let (meta, twilio) = (yaml(DemoProvider::Meta), yaml(DemoProvider::Twilio));
    let rules = |y: &str| y[y.find("\nrules:").unwrap()..].to_string();
    assert_eq!(rules(&meta), rules(&twilio), "the rules are the same text");
    let c = Config::from_yaml(&twilio).unwrap_or_else(|e| panic!("{e}"));
    let recado::config::ProviderConfig::Twilio(t) = &c.providers[0] else { panic!("not twilio") };
    for name in ["confirmacion_inscripcion", "encuesta_seguimiento", "recordatorio_cita"] {
        assert_eq!(t.content_sid(name, "es"), Some(recado::sandbox::twilio::content_sid(name, "es").as_str()));
    }
}

/// A Twilio entry with every kind of mistake, and a rule naming a template its provider does
/// not map:
/// all reported at once, each with its path.
#[test]
fn a_bad_twilio_provider_yields_all_its_errors_with_their_paths() {
    let yaml = r#"
state: { path: /tmp/x.db }
providers:
  - id: tw
    type: twilio
    account_sid: AC123
    auth_token_env: NOT_SET_ANYWHERE
    api_key_secret: s
    from: "+14155238886"
    content_templates:
      - { name: confirmacion, language: es, content_sid: HX12 }
      - { name: confirmacion, language: es, content_sid: HX7b18c4c6eedc4b4e129d688d79324a6f }
  - id: tw2
    type: twilio
    account_sid: AC00000000000000000000000000000001
    auth_token: t
    from: "whatsapp:+14155238886"
sources: []
rules:
  - id: r
    source: nada
    when: row_added
    provider: tw2
    template: { name: recordatorio, language: es, body: [] }
flows:
  - id: tramite
    steps:
      - id: requisitos
        say: { template: { name: requisitos, language: es, languages: [en], body: ["{{ Nombre"] } }
      - id: otra
        say: { template: { name: requisitos, idioma: es }, es: "Hola" }
      - id: largo
        say: LARGO
inbound:
  opt_out_reply: LARGO
"#
    .replace("LARGO", &"a".repeat(1700));
    let e = Config::from_yaml_with(&yaml, &recado::config::Env::fixed::<&str, &str>([])).unwrap_err().to_string();
    for want in [
        // A template a flow says is checked like a rule's, on every provider.
        "flows.tramite.requisitos.say.template.name: provider 'tw2' (twilio) has no content_templates entry for 'requisitos' in 'es'",
        "flows.tramite.requisitos.say.template.languages[0]: provider 'tw2' (twilio) has no content_templates entry for 'requisitos' in 'en'",
        "flows[0].steps[0].say.template.body[0]",
        "flows[0].steps[1].say.template.idioma: unknown field `idioma`",
        "flows[0].steps[1].say.es: unknown field: say takes a text, {template: …} or a file",
        // Meta takes 4,096 characters; Twilio 1,600, and the bot answers on either.
        "flows.tramite.largo.say.es: 1700 characters: provider 'tw2' delivers at most 1600",
        "inbound.opt_out_reply.es: 1700 characters: provider 'tw2' delivers at most 1600",
        "providers[0].account_sid",
        "providers[0].auth_token",
        "providers[0].api_key_sid",
        "providers[0].from",
        "providers[0].content_templates[0].content_sid",
        "providers[0].content_templates[1]",
        "rules[0].template.name: provider 'tw2' (twilio) has no content_templates entry for 'recordatorio' in 'es'",
        // At the real Twilio with no public URL, status callbacks could never reach recado.
        "providers[1]: Twilio must be able to reach recado's webhooks: set http.public_url",
    ] {
        assert!(e.contains(want), "missing {want} in:\n{e}");
    }
}

/// Parameter counts are checked offline where the configuration can tell: a Twilio template
/// that declares its variables, and one template filled with different counts in two places.
/// A rule's own status columns must be its own: not the source's, not the key or phone.
#[test]
fn template_parameter_counts_and_rule_status_columns_are_checked_offline() {
    let yaml = r#"
state: { path: /tmp/x.db }
http: { public_url: "https://recado.example.org" }
providers:
  - id: tw
    type: twilio
    account_sid: AC00000000000000000000000000000001
    auth_token: t
    from: "whatsapp:+14155238886"
    content_templates:
      - { name: recordatorio, language: es, content_sid: HX7b18c4c6eedc4b4e129d688d79324a6f, variables: 2 }
      - { name: aviso, language: es, content_sid: HX7b18c4c6eedc4b4e129d688d79324a70 }
sources:
  - id: s
    type: google_sheets
    spreadsheet_id: x
    tab: t
    key_column: ID
    phone_column: Teléfono
    service_account_key: "{}"
    write_back: { status: Estado }
rules:
  - { id: uno, source: s, when: row_added, provider: tw, template: { name: recordatorio, language: es, body: ["a"] } }
  - { id: dos, source: s, when: row_added, provider: tw, template: { name: aviso, language: es, body: ["a"] } }
  - { id: tres, source: s, when: row_added, provider: tw, template: { name: aviso, language: es, body: ["a", "b"] } }
  - { id: cuatro, source: s, when: row_added, provider: tw, template: { name: aviso, language: es, body: ["a"] }, write_back: { status: Estado, error: Teléfono } }
"#;
    let e = Config::from_yaml_with(yaml, &recado::config::Env::fixed::<&str, &str>([])).unwrap_err().to_string();
    for want in [
        "rules[3].write_back: 'Estado' is already one of source 's''s write_back fields",
        "rules[3].write_back: 'Teléfono' is the key or phone field",
        "rules[0].template.name: provider 'tw' declares 'recordatorio' in 'es' with 2 variable(s), and 1 are given",
        "rules[2].template: template 'aviso' (es) is given 2 parameter(s) here and 1 at rules[1].template",
    ] {
        assert!(e.contains(want), "missing {want} in:\n{e}");
    }
}

#[test]
fn the_salesforce_example_validates_and_a_bad_salesforce_source_says_everything_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/salesforce.example.yaml")).unwrap();
    for name in ["meta-access-token", "meta-app-secret", "meta-verify-token", "salesforce-key.pem"] {
        let path = dir.path().join(name);
        let content = if name.ends_with(".pem") { recado::sandbox::keys::PRIVATE_KEY_PEM } else { "secret" };
        std::fs::write(&path, content).unwrap();
    }
    let credentials = recado::config::Env::fixed([("CREDENTIALS_DIRECTORY", dir.path().display().to_string())]);
    let c = Config::from_yaml_with(&text, &credentials).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.sources[0].id(), "citas");

    let bad = text
        .replace("object: Cita__c", "object: \"Cita c\"")
        .replace("flow: jwt_bearer", "flow: password")
        .replace("Contacto__r.FirstName]", "Contacto__r.FirstName, \"no es un campo\"]")
        .replace("max_api_share: 0.2", "max_api_share: 2");
    let e = Config::from_yaml_with(&bad, &credentials).unwrap_err().to_string();
    for want in [
        "sources[0].object",
        "sources[0].auth.flow: expected jwt_bearer or client_credentials",
        "sources[0].fields[4]",
        "sources[0].max_api_share",
    ] {
        assert!(e.contains(want), "missing {want} in:\n{e}");
    }
}

/// The configuration reference and the JSON Schema in `docs/` are what the code generates
/// (`recado schema`), and the schema accepts every example configuration: each key of each
/// example is a field the schema knows, with a vendor entry checked against its own type.
#[test]
fn the_configuration_reference_and_schema_match_the_code_and_accept_the_examples() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let schema = recado::config::schema::schema();
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("docs/recado.schema.json")).unwrap()).unwrap();
    assert!(
        committed == schema,
        "docs/recado.schema.json is stale: run `cargo run -- schema > docs/recado.schema.json`"
    );
    let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
    assert!(
        reference == recado::config::schema::markdown(),
        "docs/configuration.md is stale: run `cargo run -- schema --format markdown > docs/configuration.md`"
    );
    let examples: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("config"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("demo-twilio-provider.yaml"))
        .collect();
    assert!(examples.len() >= 5, "{examples:?}");
    for example in &examples {
        let example = example.strip_prefix(root).unwrap().display().to_string();
        let tree =
            recado::config::Config::merged(&[root.join(&example)], &recado::config::Env::fixed::<&str, &str>([]))
                .unwrap_or_else(|e| panic!("{example}: {e}"));
        let mut unknown = Vec::new();
        accepts(&schema, &schema, &tree, &example, &mut unknown);
        assert!(unknown.is_empty(), "keys the schema does not know: {unknown:?}");
    }
    // And it refuses what is not a field.
    let mut unknown = Vec::new();
    accepts(&schema, &schema, &serde_json::json!({ "rules": [ { "id": "r", "cuando": "x" } ] }), "t", &mut unknown);
    assert_eq!(unknown, vec!["t.rules[0].cuando"]);
}

/// Collects every key of `value` that `node` does not allow (a small walker over the parts of
/// JSON Schema the generated schema uses: `$ref`, `anyOf`/`oneOf`, objects and arrays).
fn accepts(
    root: &serde_json::Value,
    node: &serde_json::Value,
    value: &serde_json::Value,
    path: &str,
    unknown: &mut Vec<String>,
) {
    if let Some(r) = node["$ref"].as_str() {
        let name = r.rsplit('/').next().unwrap();
        return accepts(root, &root["$defs"][name], value, path, unknown);
    }
    // Alternatives (an option, a vendor entry); a definition with fields of its own uses
    // `oneOf` only to say which of two names is required.
    for key in ["anyOf", "oneOf"] {
        if let Some(options) = node[key].as_array().filter(|_| node.get("properties").is_none()) {
            // The option whose `type` constant matches, else the first that takes the value.
            let resolve = |o: &serde_json::Value| match o["$ref"].as_str() {
                Some(r) => root["$defs"][r.rsplit('/').next().unwrap()].clone(),
                None => o.clone(),
            };
            let chosen = options
                .iter()
                .map(resolve)
                .find(|o| o["properties"]["type"]["const"] == value["type"] && !value["type"].is_null())
                .or_else(|| {
                    options.iter().map(resolve).find(|o| {
                        let mut u = Vec::new();
                        accepts(root, o, value, path, &mut u);
                        u.is_empty() && o["type"] != "null"
                    })
                });
            match chosen {
                Some(o) => accepts(root, &o, value, path, unknown),
                None => unknown.push(format!("{path}: none of its allowed forms")),
            }
            return;
        }
    }
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match node["properties"].get(k) {
                    Some(p) => accepts(root, p, v, &format!("{path}.{k}"), unknown),
                    None if node["additionalProperties"] == false => unknown.push(format!("{path}.{k}")),
                    None => {
                        if let Some(extra) = node.get("additionalProperties").filter(|a| a.is_object()) {
                            accepts(root, extra, v, &format!("{path}.{k}"), unknown);
                        }
                    }
                }
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                accepts(root, &node["items"], v, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}
