//! `recado sandbox --config FILE`: rehearse one's own configuration against the emulators,
//! with no accounts and nothing sent to anyone.
//!
//! The configuration (its files merged, as `recado run` reads them) is rewritten into a
//! rehearsal copy in a directory of its own: every vendor URL points at the sandbox, every
//! secret is the sandbox's (the real ones are neither needed nor read), the state file and the
//! Google key live in that directory, and `http.public_url` is the local listening address.
//! Ids the configuration gives (the Meta phone number and business account, the Twilio
//! account and sender) are adopted by the emulators instead, so the copy differs from the
//! original only where it must. Then the sandbox is made ready for it:
//!
//! * each Google Sheets source's tab is seeded from a CSV (`--seed SOURCE=FILE`) or with a
//!   few example rows under the headers the configuration names, and its spreadsheet shared
//!   with the rehearsal's service account (a sheet is shared with nobody until someone does);
//!   every phone in the rows is a simulated WhatsApp user who reads what arrives;
//! * every template the rules and flows send is registered, approved, with the parameters the
//!   configuration fills (Twilio's Content SIDs are the sandbox's, rewritten in the copy);
//! * the emulators' webhooks point at the daemon's `/webhooks/<provider id>`.
//!
//! A Salesforce source's object is defined from what the configuration names (a related
//! `Contacto__r.MobilePhone` becomes a lookup to a Contact with that field; the consent field a
//! checkbox; date triggers and write-back times date-times; the rest text), and its records
//! created from a CSV whose columns are those fields, or a few examples; the source signs in to
//! the emulator's connected app with its key, written beside the copy.
//!
//! `recado run --config <dir>/recado.yaml` then works at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Map, Value};

use super::{ContentDef, Sandbox, SimUser, TemplateDef, TwilioUser};
use crate::config::{Config, Env, SourceConfig, Trigger};

/// The client e-mail of the rehearsal's Google service account.
pub const SERVICE_ACCOUNT: &str = "recado@ensayo.iam.gserviceaccount.com";
/// The dashboard password of a rehearsal whose configuration has one.
pub const DASHBOARD_PASSWORD: &str = "ensayo";
/// Example rows seeded under a tab with no CSV.
const EXAMPLE_ROWS: usize = 3;

/// What was prepared.
#[derive(Debug)]
pub struct Rehearsal {
    /// The rehearsal copy of the configuration.
    pub config_path: PathBuf,
    /// One line per thing done, for the person to read.
    pub notes: Vec<String>,
}

/// Rewrites the configuration in `paths` into `dir/recado.yaml` and readies `sandbox` for it.
/// `seeds`: (source id, CSV file); a single CSV may name no source when there is one sheet.
pub fn prepare(
    sandbox: &Sandbox,
    paths: &[PathBuf],
    dir: &Path,
    seeds: &[(Option<String>, PathBuf)],
) -> anyhow::Result<Rehearsal> {
    let env = Env::process();
    let merged = Config::merged(paths, &env).map_err(|e| anyhow::anyhow!("{e}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // Absolute, so the copy works from any directory.
    let dir = &dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let mut notes = Vec::new();
    let copy = rewrite(sandbox, merged, dir, &mut notes)?;
    let config_path = dir.join("recado.yaml");
    std::fs::write(&config_path, to_yaml(&copy)).with_context(|| format!("writing {}", config_path.display()))?;
    let config = Config::load_with(std::slice::from_ref(&config_path), &Env::fixed::<&str, &str>([]))
        .map_err(|e| anyhow::anyhow!("the rehearsal copy {} is not valid:\n{e}", config_path.display()))?;
    register_templates(sandbox, &config, &mut notes);
    seed_sources(sandbox, &config, seeds, &mut notes)?;
    seed_orgs(sandbox, &config, seeds, &mut notes)?;
    notes.push(format!(
        "run it: recado run --config {}   (state in {})",
        config_path.display(),
        config.state.path.display()
    ));
    Ok(Rehearsal { config_path, notes })
}

/// The rehearsal copy of the merged configuration tree.
fn rewrite(sandbox: &Sandbox, mut tree: Value, dir: &Path, notes: &mut Vec<String>) -> anyhow::Result<Value> {
    let Some(root) = tree.as_object_mut() else { bail!("the configuration is not a mapping") };
    // Its own state file; the rest of `state` (retention) as configured.
    let state = root.entry("state").or_insert_with(|| json!({}));
    match state.as_object_mut() {
        Some(s) => {
            s.insert("path".into(), json!(dir.join("recado.db").display().to_string()));
        }
        None => *state = json!({ "path": dir.join("recado.db").display().to_string() }),
    }
    let http = root.entry("http").or_insert_with(|| json!({}));
    let Some(http) = http.as_object_mut() else { bail!("http: expected a mapping") };
    let listen = http.get("listen").and_then(Value::as_str).unwrap_or("127.0.0.1:8080").to_string();
    let port = listen.rsplit(':').next().unwrap_or("8080").to_string();
    if port == "0" {
        bail!("http.listen: the rehearsal needs a fixed port (the emulators call the daemon there), not {listen}");
    }
    let daemon = format!("http://127.0.0.1:{port}");
    http.insert("public_url".into(), json!(daemon));
    if had_secret(http, "dashboard_password") {
        set_secret(http, "dashboard_password", DASHBOARD_PASSWORD);
        notes.push(format!("dashboard: {daemon}/dashboard, password '{DASHBOARD_PASSWORD}'"));
    }

    let mut meta_seen = false;
    let mut twilio_seen = false;
    for p in root.get_mut("providers").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(p) = p.as_object_mut() else { continue };
        let id = text(p, "id");
        let webhook = format!("{daemon}/webhooks/{id}");
        match text(p, "type").as_str() {
            "meta_cloud" => {
                if std::mem::replace(&mut meta_seen, true) {
                    bail!(
                        "providers: the sandbox emulates one Meta number; rehearse one meta_cloud provider at a time"
                    );
                }
                let settings = sandbox.meta().settings();
                let phone_number_id = text(p, "phone_number_id");
                let waba = p.get("business_account_id").and_then(Value::as_str).map(String::from);
                sandbox.meta().update_settings(|s| {
                    s.phone_number_id = phone_number_id;
                    if let Some(w) = waba {
                        s.business_account_id = w;
                    }
                    s.webhook_url = Some(webhook.clone());
                });
                p.insert("base_url".into(), json!(sandbox.meta_base_url()));
                set_secret(p, "access_token", &settings.access_token);
                set_secret(p, "app_secret", &settings.app_secret);
                set_secret(p, "verify_token", "ensayo");
                notes.push(format!("provider {id} (Meta): webhooks go to {webhook}"));
            }
            "twilio" => {
                if std::mem::replace(&mut twilio_seen, true) {
                    bail!("providers: the sandbox emulates one Twilio account; rehearse one twilio provider at a time");
                }
                let account = text(p, "account_sid");
                let from = p.get("from").and_then(Value::as_str).map(String::from);
                let service = p.get("messaging_service_sid").and_then(Value::as_str).map(String::from);
                sandbox.twilio().update_settings(|s| {
                    s.account_sid = account;
                    if let Some(f) = from {
                        s.sender = f;
                    }
                    if let Some(m) = service {
                        s.messaging_service_sid = m;
                    }
                    s.inbound_url = Some(webhook.clone());
                });
                let token = sandbox.twilio().settings().auth_token;
                for k in ["api_key_sid", "api_key_secret", "api_key_secret_env", "api_key_secret_file"] {
                    p.remove(k);
                }
                set_secret(p, "auth_token", &token);
                for k in ["content_base_url", "status_callback_url"] {
                    p.remove(k);
                }
                p.insert("base_url".into(), json!(sandbox.twilio_base_url()));
                for t in p.get_mut("content_templates").and_then(Value::as_array_mut).into_iter().flatten() {
                    let Some(t) = t.as_object_mut() else { continue };
                    let sid = super::twilio::content_sid(&text(t, "name"), &text(t, "language"));
                    t.insert("content_sid".into(), json!(sid));
                }
                notes.push(format!("provider {id} (Twilio): messages from people go to {webhook}"));
            }
            other => bail!("providers: the sandbox cannot rehearse a provider of type '{other}'"),
        }
    }

    let key_file = dir.join("google-service-account.json");
    let mut key_written = false;
    for s in root.get_mut("sources").and_then(Value::as_array_mut).into_iter().flatten() {
        let Some(s) = s.as_object_mut() else { continue };
        match text(s, "type").as_str() {
            "google_sheets" => {
                if !key_written {
                    std::fs::write(&key_file, sandbox.service_account_key(SERVICE_ACCOUNT))
                        .with_context(|| format!("writing {}", key_file.display()))?;
                    key_written = true;
                }
                for k in ["service_account_key", "service_account_key_env"] {
                    s.remove(k);
                }
                s.insert("service_account_key_file".into(), json!(key_file.display().to_string()));
                s.insert("sheets_base_url".into(), json!(sandbox.sheets_base_url()));
                s.insert("drive_base_url".into(), json!(sandbox.drive_base_url()));
            }
            "salesforce" => {
                let key = dir.join("salesforce-key.pem");
                std::fs::write(&key, super::keys::PRIVATE_KEY_PEM)
                    .with_context(|| format!("writing {}", key.display()))?;
                s.insert("login_url".into(), json!(sandbox.salesforce_url()));
                s.insert(
                    "auth".into(),
                    json!({
                        "flow": "jwt_bearer",
                        "consumer_key": super::salesforce::SANDBOX_CONSUMER_KEY,
                        "username": super::salesforce::SANDBOX_USERNAME,
                        "private_key_file": key.display().to_string(),
                    }),
                );
            }
            other => bail!("sources.{}: the sandbox cannot rehearse a source of type '{other}'", text(s, "id")),
        }
    }
    Ok(tree)
}

fn text(m: &Map<String, Value>, key: &str) -> String {
    m.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
}

fn had_secret(m: &Map<String, Value>, name: &str) -> bool {
    [name.to_string(), format!("{name}_env"), format!("{name}_file")].iter().any(|k| m.contains_key(k))
}

/// `name` given inline as `value`, its `_env` and `_file` forms removed.
fn set_secret(m: &mut Map<String, Value>, name: &str, value: &str) {
    m.remove(&format!("{name}_env"));
    m.remove(&format!("{name}_file"));
    m.insert(name.into(), json!(value));
}

/// Every template the configuration sends, approved, as it fills them.
fn register_templates(sandbox: &Sandbox, config: &Config, notes: &mut Vec<String>) {
    let mut names = std::collections::BTreeSet::new();
    for u in config.template_uses() {
        let t = &u.template;
        let Some(provider) = config.providers.iter().find(|p| p.id() == u.provider) else { continue };
        match provider {
            crate::config::ProviderConfig::MetaCloud(_) => {
                sandbox.meta().add_template(TemplateDef::new(&t.name, &t.language, t.parameters, t.url_button))
            }
            crate::config::ProviderConfig::Twilio(_) => {
                sandbox.twilio().add_content(ContentDef::new(&t.name, &t.language, t.parameters, t.url_button));
            }
        }
        names.insert(format!("{} ({})", t.name, t.language));
    }
    if !names.is_empty() {
        notes.push(format!("templates registered, approved: {}", names.into_iter().collect::<Vec<_>>().join(", ")));
    }
}

/// A tab's title and its rows, as the Sheets emulator is seeded.
type Tab = (String, Vec<Vec<Value>>);

/// Seeds every Google Sheets source's tab (tabs of one spreadsheet together).
fn seed_sources(
    sandbox: &Sandbox,
    config: &Config,
    seeds: &[(Option<String>, PathBuf)],
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    let sheets: Vec<_> = config
        .sources
        .iter()
        .filter_map(|s| match s {
            SourceConfig::GoogleSheets(g) => Some(g),
            _ => None,
        })
        .collect();
    for (source, path) in seeds {
        match source {
            Some(id) if config.source(id).is_none() => bail!("--seed {id}={}: no source '{id}'", path.display()),
            None if config.sources.len() != 1 => bail!(
                "--seed {}: name the source it is for (--seed SOURCE=FILE): there are {} sources",
                path.display(),
                config.sources.len()
            ),
            _ => {}
        }
    }
    let zone = config.defaults.time_zone.map(|z| z.name().to_string()).unwrap_or_else(|| "America/Santiago".into());
    let mut spreadsheets: BTreeMap<&str, Vec<Tab>> = BTreeMap::new();
    let mut phones: Vec<String> = Vec::new();
    for g in &sheets {
        let id = &g.settings.id;
        // The example rows, and one more to add by hand (its person is simulated too).
        let mut examples = example_rows(config, id, EXAMPLE_ROWS + 1);
        let extra = examples.pop().unwrap_or_default();
        if let Some(header) = examples.first() {
            phones.push(row_value(header, &extra, &g.settings.phone_field));
        }
        let csv = seeds.iter().find(|(s, _)| s.as_deref().is_none_or(|s| s == id)).map(|(_, p)| p);
        let rows = match csv {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let rows = parse_csv(&text).with_context(|| format!("reading {}", path.display()))?;
                notes.push(format!(
                    "source {id}: tab '{}' seeded from {} ({} row(s))",
                    g.tab,
                    path.display(),
                    rows.len().saturating_sub(1)
                ));
                rows
            }
            None => {
                let rows = examples;
                notes.push(format!(
                    "source {id}: tab '{}' seeded with {EXAMPLE_ROWS} example rows under the headers the configuration names: {}",
                    g.tab,
                    rows.first().map(|h| h.join(", ")).unwrap_or_default()
                ));
                rows
            }
        };
        let tab_url = format!(
            "{}/admin/google/spreadsheets/{}/tabs/{}",
            sandbox.base_url(),
            g.spreadsheet_id,
            percent_encoding::utf8_percent_encode(&g.tab, percent_encoding::NON_ALPHANUMERIC)
        );
        notes.push(format!(
            "  see the tab: curl {tab_url}\n    add a row as a person would (rules for new rows fire; the rows above are the baseline): curl -X POST {tab_url}/rows -H 'content-type: application/json' -d '{}'",
            json!({ "values": extra })
        ));
        let phone_at = rows.first().and_then(|h| h.iter().position(|c| c.trim() == g.settings.phone_field));
        phones.extend(rows.iter().skip(1).filter_map(|r| phone_at.and_then(|i| r.get(i)).cloned()));
        let values = rows.into_iter().map(|r| r.into_iter().map(Value::String).collect()).collect();
        spreadsheets.entry(g.spreadsheet_id.as_str()).or_default().push((g.tab.clone(), values));
    }
    for (id, tabs) in spreadsheets {
        // As a person typing them: "23/11/2026" becomes a date, "42" a number.
        sandbox.google().seed_typed(id, &zone, "es_CL", tabs);
        // As the team does once with the real sheet.
        sandbox.google().share(id, SERVICE_ACCOUNT);
    }
    let users = add_users(sandbox, phones);
    if users > 0 {
        notes.push(format!(
            "{users} simulated WhatsApp user(s), one per phone in the rows (and the example row), read what arrives"
        ));
    }
    Ok(())
}

/// Fields of the watched object recado reads about itself, never defined by the rehearsal.
const SYSTEM_FIELDS: &[&str] = &["Id", "CreatedDate", "LastModifiedDate", "SystemModstamp", "IsDeleted", "OwnerId"];
/// Contact fields every org has.
const CONTACT_FIELDS: &[&str] = &["Id", "FirstName", "LastName", "Name", "MobilePhone", "Phone", "Email"];

/// Defines each Salesforce source's object (every field the configuration names, related
/// ones on the Contact, the interaction log's fields) and creates its records from a CSV (a
/// column per field, `Contacto__r.MobilePhone` included) or a few examples.
fn seed_orgs(
    sandbox: &Sandbox,
    config: &Config,
    seeds: &[(Option<String>, PathBuf)],
    notes: &mut Vec<String>,
) -> anyhow::Result<()> {
    use super::salesforce::{FieldDef, FieldKind, ObjectDef};
    let sf = sandbox.salesforce();
    for source in &config.sources {
        let SourceConfig::Salesforce(c) = source else { continue };
        let s = &c.settings;
        let id = &s.id;
        let dates: Vec<&str> = config
            .rules
            .iter()
            .filter(|r| &r.source == id)
            .filter_map(|r| match &r.trigger {
                Trigger::Date { field, .. } => Some(field.as_str()),
                _ => None,
            })
            .collect();
        let consent = s.consent.as_ref().map(|c| c.field.as_str());
        // A checkbox when "true" means yes; otherwise a text (a picklist) holding the values.
        let consent_is_checkbox = s.consent.as_ref().is_some_and(|c| c.is_granted("true"));
        let times = [s.write_back.status_at.as_deref(), s.write_back.last_reply_at.as_deref()];
        let kind_of = |f: &str| {
            if Some(f) == consent && consent_is_checkbox {
                FieldKind::Boolean
            } else if dates.contains(&f) || times.contains(&Some(f)) {
                FieldKind::Datetime
            } else {
                FieldKind::String
            }
        };
        let mut names: Vec<String> = c.fields.clone();
        names.extend(crate::rules::named_fields(config, id).into_iter().map(|(f, _)| f));
        names.sort();
        names.dedup();
        let mut own: Vec<FieldDef> = Vec::new();
        let mut lookups: Vec<String> = Vec::new();
        for name in &names {
            match name.split_once('.') {
                None if SYSTEM_FIELDS.contains(&name.as_str()) => {}
                None if *name == s.key_field => own.push(FieldDef::new(name, FieldKind::String).external_id()),
                None => own.push(FieldDef::new(name, kind_of(name)).with_length(255)),
                Some((relationship, field)) => {
                    let lookup = lookup_field(relationship);
                    if !lookups.contains(&lookup) {
                        lookups.push(lookup.clone());
                        own.push(FieldDef::reference(&lookup, "Contact"));
                    }
                    if !CONTACT_FIELDS.contains(&field) {
                        sf.add_field("Contact", FieldDef::new(field, kind_of(name)).with_length(255));
                    }
                }
            }
        }
        if let Some(log) = &c.interaction_log {
            let mut log_fields: Vec<FieldDef> =
                std::iter::once(FieldDef::new(&log.key_field, FieldKind::String).with_length(255))
                    .chain(log.fields.iter().map(|(_, f)| FieldDef::new(f, FieldKind::String).with_length(255)))
                    .collect();
            if let Some(f) = &log.contact_field {
                if !lookups.contains(f) && !own.iter().any(|d| &d.name == f) {
                    lookups.push(f.clone());
                    own.push(FieldDef::reference(f, "Contact"));
                }
            }
            if log.is_task() {
                for f in log_fields {
                    sf.add_field("Task", f);
                }
            } else {
                log_fields.extend(log.record_lookup.iter().map(|f| FieldDef::reference(f, &c.object)));
                log_fields.extend(log.contact_lookup.iter().map(|f| FieldDef::reference(f, "Contact")));
                sf.define_object(ObjectDef::new(&log.object, "a0L", log_fields));
            }
        }
        sf.define_object(ObjectDef::new(&c.object, "a0R", own).with_activities());

        let csv = seeds.iter().find(|(source, _)| source.as_deref().is_none_or(|x| x == id)).map(|(_, p)| p);
        let rows = match csv {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                parse_csv(&text).with_context(|| format!("reading {}", path.display()))?
            }
            None => {
                let header: Vec<String> = names
                    .iter()
                    .filter(|n| !s.write_back.fields().contains(&n.as_str()) && !SYSTEM_FIELDS.contains(&n.as_str()))
                    .cloned()
                    .collect();
                let today = chrono::Utc::now();
                let mut rows = vec![header.clone()];
                for n in 1..=EXAMPLE_ROWS {
                    rows.push(
                        header
                            .iter()
                            .map(|f| {
                                if *f == s.phone_field {
                                    format!("+56 9 8765 {:04}", 9100 + n)
                                } else if Some(f.as_str()) == consent {
                                    s.consent.as_ref().map(|c| c.granted_value.clone()).unwrap_or_default()
                                } else if dates.contains(&f.as_str()) {
                                    (today + chrono::Duration::days(2 + n as i64)).to_rfc3339()
                                } else if *f == s.key_field {
                                    format!("R-{n:04}")
                                } else {
                                    format!("ejemplo {n}")
                                }
                            })
                            .collect(),
                    );
                }
                rows
            }
        };
        let Some((header, data)) = rows.split_first() else { continue };
        let mut created = 0;
        let mut phones = Vec::new();
        for row in data {
            let mut record = Map::new();
            let mut related: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
            for (name, value) in header.iter().zip(row) {
                // The org sets these itself.
                if SYSTEM_FIELDS.contains(&name.as_str()) {
                    continue;
                }
                let value = match kind_of(name) {
                    FieldKind::Boolean => json!(c.settings.consent.as_ref().is_some_and(|c| c.is_granted(value))),
                    _ if value.is_empty() => Value::Null,
                    _ => json!(value),
                };
                if *name == s.phone_field {
                    phones.push(row_value(header, row, name));
                }
                match name.split_once('.') {
                    Some((relationship, field)) => {
                        related.entry(lookup_field(relationship)).or_default().insert(field.to_string(), value);
                    }
                    None => {
                        record.insert(name.clone(), value);
                    }
                }
            }
            for (lookup, mut fields) in related {
                fields.entry("LastName").or_insert_with(|| json!(format!("Ejemplo {}", created + 1)));
                let contact =
                    sf.create("Contact", fields).map_err(|e| anyhow::anyhow!("sources.{id}: a Contact: {e}"))?;
                record.insert(lookup, json!(contact));
            }
            sf.create(&c.object, record).map_err(|e| anyhow::anyhow!("sources.{id}: a {} record: {e}", c.object))?;
            created += 1;
        }
        notes.push(format!(
            "source {id}: object {} defined ({} field(s), related ones on Contact) with {created} record(s){}",
            c.object,
            names.len(),
            csv.map(|p| format!(" from {}", p.display())).unwrap_or_default()
        ));
        let records = format!("{}/admin/salesforce/records", sandbox.base_url());
        notes.push(format!(
            "  see the records: curl {records}/{object}\n    add one as staff would (rules for new records fire; those above are the baseline): POST a Contact to {records}/Contact, then a {object} with its id in the lookup field, e.g. curl -X POST {records}/{object} -H 'content-type: application/json' -d '{{...}}'",
            object = c.object
        ));
        let users = add_users(sandbox, phones);
        notes.push(format!("{users} simulated WhatsApp user(s), one per phone in the records, read what arrives"));
    }
    Ok(())
}

/// The lookup field of a relationship: `Contacto__r` → `Contacto__c`, `Contact` → `ContactId`.
fn lookup_field(relationship: &str) -> String {
    match relationship.strip_suffix("__r") {
        Some(stem) => format!("{stem}__c"),
        None => format!("{relationship}Id"),
    }
}

fn row_value(header: &[String], row: &[String], name: &str) -> String {
    header.iter().position(|h| h == name).and_then(|i| row.get(i)).cloned().unwrap_or_default()
}

/// Simulated WhatsApp users who read what arrives, one per phone.
fn add_users(sandbox: &Sandbox, phones: Vec<String>) -> usize {
    let mut users = 0;
    for phone in phones {
        let digits: String = phone.chars().filter(char::is_ascii_digit).collect();
        if digits.len() < 8 {
            continue;
        }
        sandbox.meta().add_user(SimUser { wa_id: digits.clone(), ..Default::default() });
        let u = SimUser::default();
        sandbox.twilio().add_user(TwilioUser {
            number: format!("+{digits}"),
            name: u.name,
            on_whatsapp: true,
            reads: true,
            read_after_ms: u.read_after_ms,
            reply: None,
            reply_after_ms: u.reply_after_ms,
            script: Vec::new(),
        });
        users += 1;
    }
    users
}

/// A header with every field the configuration names in `source` (write-back columns are
/// added by recado) and a few rows that rules can act on.
fn example_rows(config: &Config, source: &str, count: usize) -> Vec<Vec<String>> {
    let Some(s) = config.source(source) else { return Vec::new() };
    let write_back: Vec<String> = s.write_back.fields().into_iter().map(String::from).collect();
    let header: Vec<String> = crate::rules::named_fields(config, source)
        .into_iter()
        .map(|(f, _)| f)
        .filter(|f| !write_back.contains(f) && !f.contains('.'))
        .collect();
    let dates: Vec<&str> = config
        .rules
        .iter()
        .filter(|r| r.source == source)
        .filter_map(|r| match &r.trigger {
            Trigger::Date { field, .. } => Some(field.as_str()),
            _ => None,
        })
        .collect();
    let today = chrono::Utc::now().date_naive();
    let mut rows = vec![header.clone()];
    for n in 1..=count {
        rows.push(
            header
                .iter()
                .map(|f| {
                    if *f == s.key_field {
                        n.to_string()
                    } else if *f == s.phone_field {
                        format!("+56 9 8765 {:04}", 9000 + n)
                    } else if s.consent.as_ref().is_some_and(|c| c.field == *f) {
                        s.consent.as_ref().map(|c| c.granted_value.clone()).unwrap_or_default()
                    } else if dates.contains(&f.as_str()) {
                        (today + chrono::Duration::days(2 + n as i64)).format("%d/%m/%Y").to_string()
                    } else if s.time_zone_field.as_deref() == Some(f.as_str()) {
                        config
                            .defaults
                            .time_zone
                            .map(|z| z.name().to_string())
                            .unwrap_or_else(|| "America/Santiago".into())
                    } else if config.inbound.language_field.as_deref() == Some(f.as_str()) {
                        config.inbound.default_language.clone()
                    } else {
                        format!("ejemplo {n}")
                    }
                })
                .collect(),
        );
    }
    rows
}

/// Comma-separated values as spreadsheets export them (RFC 4180): quoted fields may hold
/// commas, line breaks and doubled quotes; a byte-order mark is ignored.
pub fn parse_csv(text: &str) -> anyhow::Result<Vec<Vec<String>>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                field.push(c)
            }
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => row.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
                line += 1;
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        bail!("a quoted field opened before line {line} is never closed");
    }
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows.retain(|r| !(r.len() == 1 && r[0].is_empty()));
    if rows.is_empty() {
        bail!("expected a header row and data rows, found nothing");
    }
    Ok(rows)
}

/// The tree as YAML (block style, strings quoted where YAML needs it).
fn to_yaml(v: &Value) -> String {
    let mut out = String::new();
    let mut emitter = yaml_rust2::YamlEmitter::new(&mut out);
    // Writing to a String cannot fail.
    let _ = emitter.dump(&yaml(v));
    out.push('\n');
    format!("# Rehearsal copy written by `recado sandbox --config`: every vendor is the sandbox.\n{out}")
}

fn yaml(v: &Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(yaml).collect()),
        Value::Object(o) => {
            Yaml::Hash(o.iter().map(|(k, v)| (Yaml::String(k.clone()), yaml(v))).collect::<yaml_rust2::yaml::Hash>())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_as_spreadsheets_export_it() {
        let rows = parse_csv(
            "\u{feff}ID,Nombre,Nota\r\n1,\"Pérez, Ana\",\"dijo \"\"sí\"\"\"\r\n2,Beto,\"dos\nlíneas\"\r\n\r\n",
        )
        .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1], vec!["1", "Pérez, Ana", "dijo \"sí\""]);
        assert_eq!(rows[2][2], "dos\nlíneas");
        assert!(parse_csv("ID\n\"abierto").unwrap_err().to_string().contains("never closed"));
        assert!(parse_csv("").is_err());
    }

    #[test]
    fn the_copy_is_yaml_that_reads_back_the_same() {
        let tree = json!({ "http": { "listen": "127.0.0.1:8080" }, "rules": [ { "id": "r", "text": "Hola {{ Nombre }}: sí" } ], "n": 3, "yes": "yes" });
        let back = yaml_rust2::YamlLoader::load_from_str(&to_yaml(&tree)).unwrap();
        assert_eq!(back[0]["rules"][0]["text"].as_str(), Some("Hola {{ Nombre }}: sí"));
        assert_eq!(back[0]["yes"].as_str(), Some("yes"), "a string that looks like a boolean stays a string");
        assert_eq!(back[0]["n"].as_i64(), Some(3));
    }
}
