//! Conversation tests as data: each file in `tests/conversations/` is a scenario — the flows'
//! configuration, the people, and a transcript (what a person says or taps → what the bot
//! answers, which cells change) — run over real HTTP against the sandbox, on each provider the
//! scenario names (Meta shows buttons and lists; Twilio gets numbered options, answered by
//! number).
//!
//! Transcript lines (one key each, `as: N` to speak as person N instead of the first one):
//! `user: TEXT`, `tap: TITLE` (a button or list row of the bot's last message; on Twilio, its
//! number), `bot: TEXT` or `bot: {says: TEXT, options: [TITLE, …], file: URL}` (the next bot
//! message contains TEXT, offers exactly those options, and is that file or none),
//! `no_reply: true` (the daemon settles and
//! the bot said nothing more), `cell: {row: N, column: C, is: V}`, `restart: true`,
//! `advance: 3h` (moves the daemon's clock, and WhatsApp's 24-hour windows with it), `edit: {row: N, column: C, value: V}` (staff edit
//! the sheet), `tap_template: TITLE` (a quick-reply button of the last template the person got),
//! `change: {from: TEXT, to: TEXT}` (edits the configuration; a `restart` applies it),
//! `react: true` (a 👍 on the bot's last message), `photo: CAPTION` (Meta only),
//! `duplicate_webhooks: true` (each delivery from then on comes twice),
//! `holds: {replies: [TEXT, …], consent: C, consent_method: M, consent_version: V,
//! raw_without: [TEXT, …]}` (what recado's store holds about the person: the last things they
//! wrote, their answer to the privacy notice, raw deliveries without these texts; each key
//! optional).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::harness::{e164, header, row, wa_id, wait_for, Harness, Vendor, SHEET, TAB};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    about: String,
    #[serde(default = "meta_only")]
    vendors: Vec<String>,
    /// Extra columns of the sheet (for answers saved to the row).
    #[serde(default)]
    columns: Vec<String>,
    /// People with a row in the sheet.
    #[serde(default)]
    people: Vec<u32>,
    /// People with a row whose consent column is empty.
    #[serde(default)]
    unconsented: Vec<u32>,
    /// People on WhatsApp without a row.
    #[serde(default)]
    strangers: Vec<u32>,
    /// More rows for people already listed: `{id: 381, person: 380}` is row 381 with person
    /// 380's phone (one phone, two records).
    #[serde(default)]
    more_rows: Vec<MoreRow>,
    /// Values in the people's rows at the start: `{row: N, column: C, value: V}` (the column
    /// one of `columns`).
    #[serde(default)]
    cells: Vec<Value>,
    /// Quick-reply buttons of the approved templates, by template name (on every provider).
    #[serde(default)]
    template_buttons: HashMap<String, Vec<String>>,
    /// Rules added to the harness's (YAML list items indented by two spaces).
    #[serde(default)]
    rules: String,
    /// Top-level YAML added to the harness's configuration (`flows:`, `inbound:`).
    config: String,
    script: Vec<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MoreRow {
    id: u32,
    person: u32,
}

fn meta_only() -> Vec<String> {
    vec!["meta".into()]
}

/// A first question that asks for the contact's language (Spanish or English), as YAML steps.
const LANGUAGE_QUESTION: &str = r#"      - id: idioma
        ask:
          text: { es: "¿Idioma? / Language?", en: "¿Idioma? / Language?" }
          sets_language: true
          choices:
            - { title: { es: "Español", en: "Español" }, value: es }
            - { title: { es: "English", en: "English" }, value: en }
"#;

/// A bot message as the person sees it.
#[derive(Debug, Clone)]
struct BotMessage {
    provider_id: String,
    text: String,
    /// (id, title) of buttons or list rows (Meta); numbered lines are in `text` (Twilio).
    options: Vec<(String, String)>,
    list: bool,
    /// The address of the file it carries, if it is one.
    file: Option<String>,
}

fn bot_messages(h: &Harness, n: u32) -> Vec<BotMessage> {
    match h.vendor {
        Vendor::Meta => h
            .meta_sent_to(n)
            .into_iter()
            .filter(|m| m.body["type"] != "template")
            .map(|m| BotMessage {
                provider_id: m.wamid.clone(),
                text: recado::sandbox::meta::shown_text(&m),
                options: recado::sandbox::meta::interactive_options(&m),
                list: m.body["interactive"]["type"] == "list",
                file: m.body["type"].as_str().and_then(|k| m.body[k]["link"].as_str()).map(String::from),
            })
            .collect(),
        Vendor::Twilio => h
            .sandbox
            .twilio()
            .sent()
            .into_iter()
            .filter(|m| m.to == format!("whatsapp:{}", e164(n)) && m.template.is_none())
            .map(|m| BotMessage {
                provider_id: m.sid.clone(),
                text: m.body.clone(),
                options: Vec::new(),
                list: false,
                file: m.media_urls.first().cloned(),
            })
            .collect(),
    }
}

/// The numbered option `title` in a text (`2. Reportar un problema`).
fn numbered(text: &str, title: &str) -> Option<u32> {
    text.lines().find_map(|l| {
        let (n, t) = l.split_once(". ")?;
        (t.trim() == title).then(|| n.trim().parse().ok()).flatten()
    })
}

struct Runner {
    h: Harness,
    file: String,
    /// Bot messages already checked, per person.
    seen: HashMap<u32, usize>,
    last: HashMap<u32, BotMessage>,
    default_person: u32,
}

impl Runner {
    fn fail(&self, line: usize, what: &str) -> ! {
        panic!("{} ({:?}), line {}: {what}", self.file, self.h.vendor, line + 1)
    }

    async fn next_bot(&mut self, n: u32, line: usize) -> BotMessage {
        let want = self.seen.get(&n).copied().unwrap_or(0) + 1;
        let h = &self.h;
        let what = format!("{} ({:?}), line {}: bot message #{want}", self.file, h.vendor, line + 1);
        wait_for(&what, Duration::from_secs(20), || async { bot_messages(h, n).len() >= want }).await;
        let m = bot_messages(h, n)[want - 1].clone();
        self.seen.insert(n, want);
        self.last.insert(n, m.clone());
        m
    }

    async fn run_line(&mut self, i: usize, v: &Value) {
        let who = v.get("as").and_then(Value::as_u64).map(|n| n as u32).unwrap_or(self.default_person);
        if let Some(text) = v.get("user").and_then(Value::as_str) {
            self.h.says(who, text, None);
        } else if let Some(title) = v.get("tap").and_then(Value::as_str) {
            let Some(last) = self.last.get(&who).cloned() else { self.fail(i, "tap before any bot message") };
            match self.h.vendor {
                Vendor::Meta => {
                    let Some((id, t)) = last.options.iter().find(|(_, t)| t == title) else {
                        self.fail(i, &format!("no option '{title}' in {:?}", last.options))
                    };
                    self.h.sandbox.meta().user_picks(&wa_id(who), id, t, last.list, Some(&last.provider_id));
                }
                Vendor::Twilio => {
                    let Some(number) = numbered(&last.text, title) else {
                        self.fail(i, &format!("no numbered option '{title}' in {:?}", last.text))
                    };
                    self.h.says(who, &number.to_string(), None);
                }
            }
        } else if let Some(expect) = v.get("bot") {
            let m = self.next_bot(who, i).await;
            let (says, options) = match expect {
                Value::String(s) => (s.clone(), None),
                other => (
                    other.get("says").and_then(Value::as_str).unwrap_or("").to_string(),
                    other
                        .get("options")
                        .and_then(Value::as_array)
                        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect::<Vec<_>>()),
                ),
            };
            if !m.text.contains(&says) {
                self.fail(i, &format!("the bot said {:?}, expected it to contain {says:?}", m.text));
            }
            // `file: URL`: the message is that file (its caption in `says`).
            let file = expect.get("file").and_then(Value::as_str);
            if file != m.file.as_deref() {
                self.fail(i, &format!("the bot sent the file {:?}, expected {file:?}", m.file));
            }
            if let Some(options) = options {
                match self.h.vendor {
                    Vendor::Meta => {
                        let titles: Vec<&String> = m.options.iter().map(|(_, t)| t).collect();
                        if titles != options.iter().collect::<Vec<_>>() {
                            self.fail(i, &format!("options {titles:?}, expected {options:?}"));
                        }
                    }
                    Vendor::Twilio => {
                        for (k, o) in options.iter().enumerate() {
                            if numbered(&m.text, o) != Some(k as u32 + 1) {
                                self.fail(i, &format!("expected option {}. {o} in {:?}", k + 1, m.text));
                            }
                        }
                    }
                }
            }
        } else if v.get("no_reply").is_some() {
            self.h.quiet().await;
            let count = bot_messages(&self.h, who).len();
            let seen = self.seen.get(&who).copied().unwrap_or(0);
            if count != seen {
                let extra = &bot_messages(&self.h, who)[seen..];
                self.fail(i, &format!("expected no reply, the bot said {extra:?}"));
            }
        } else if let Some(c) = v.get("cell") {
            let key = c["row"].as_u64().map(|k| k.to_string()).unwrap_or_default();
            let column = c["column"].as_str().unwrap_or("");
            let want = c["is"].as_str().map(String::from).unwrap_or_else(|| c["is"].to_string());
            let h = &self.h;
            let seen = std::sync::Mutex::new(String::new());
            let found = crate::harness::holds_within(Duration::from_secs(20), || async {
                let now = h.cell(&key, column);
                let same = now == want;
                *seen.lock().unwrap() = now;
                same
            })
            .await;
            if !found {
                let seen = seen.lock().unwrap().clone();
                self.fail(i, &format!("row {key} {column} is {seen:?} after 20 s, expected {want:?}"));
            }
        } else if let Some(want) = v.get("holds") {
            // What recado's store holds about the person once the daemon settled: `replies`
            // (the last things they wrote, oldest first), `consent`, `consent_method`,
            // `consent_version` (a held consent also has its time).
            self.h.quiet().await;
            let mut conn = self.h.store().conn().await.expect("conn");
            let history = recado::store::report::contact_history(&mut conn, &e164(who)).await.expect("history");
            if let Some(replies) = want.get("replies").and_then(Value::as_array) {
                let replies: Vec<&str> = replies.iter().filter_map(Value::as_str).collect();
                let all: Vec<&str> = history.replies.iter().map(|r| r.body.as_str()).collect();
                let held = &all[all.len().saturating_sub(replies.len())..];
                if held != replies {
                    self.fail(i, &format!("recado holds the replies {held:?}, expected {replies:?}"));
                }
            }
            // `raw_without: [TEXT, …]`: no stored raw delivery holds any of these.
            for text in
                want.get("raw_without").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str)
            {
                let found: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhooks WHERE body LIKE $1")
                    .bind(format!("%{text}%"))
                    .fetch_one(&mut *conn)
                    .await
                    .expect("webhooks");
                if found > 0 {
                    self.fail(i, &format!("{found} raw deliveries still hold {text:?}"));
                }
            }
            let standing = history.standing.clone().unwrap_or_default();
            for (key, held) in [
                ("consent", standing.consent.clone()),
                ("consent_method", standing.consent_method.clone()),
                ("consent_version", standing.consent_version.clone()),
            ] {
                // A value, or one per provider (`{meta: button, twilio: typed}`).
                let vendor = match self.h.vendor {
                    Vendor::Meta => "meta",
                    Vendor::Twilio => "twilio",
                };
                if let Some(w) = want.get(key).and_then(|v| v.as_str().or(v[vendor].as_str())) {
                    if held.as_deref() != Some(w) {
                        self.fail(i, &format!("recado holds {key} {held:?}, expected {w:?}"));
                    }
                }
            }
            if want.get("consent").is_some() && standing.consent_at.is_none() {
                self.fail(i, "recado holds a consent answer without its time");
            }
        } else if let Some(e) = v.get("edit") {
            let key = e["row"].as_u64().map(|k| k.to_string()).unwrap_or_default();
            self.h.edit(&key, e["column"].as_str().unwrap_or(""), e["value"].clone());
        } else if let Some(t) = v.get("tap_template") {
            // `TITLE` (on the last template), or `{title: TITLE, template: N}` (the N-th, from 1).
            let title = t.as_str().or(t["title"].as_str()).unwrap_or("").to_string();
            let nth = t["template"].as_u64().map(|n| n as usize);
            let title = title.as_str();
            let h = &self.h;
            let mut template = None;
            wait_for("a template to tap", Duration::from_secs(20), || {
                let templates: Vec<_> = h.sent_to(who).into_iter().filter(|m| m.template.is_some()).collect();
                template = match nth {
                    Some(n) => templates.get(n.saturating_sub(1)).cloned(),
                    None => templates.last().cloned(),
                };
                let found = template.is_some();
                async move { found }
            })
            .await;
            let id = template.map(|t| t.id).unwrap_or_default();
            let tapped = match h.vendor {
                Vendor::Meta => h.sandbox.meta().user_taps(&wa_id(who), title, &id),
                Vendor::Twilio => h.sandbox.twilio().user_taps(&e164(who), title, &id),
            };
            if let Err(e) = tapped {
                self.fail(i, &e);
            }
        } else if let Some(on) = v.get("duplicate_webhooks").and_then(Value::as_bool) {
            // Every delivery from now on comes twice, as providers redeliver.
            self.h.sandbox.meta().update_settings(|s| s.duplicate_webhooks = on);
            self.h.sandbox.twilio().update_settings(|s| s.duplicate_webhooks = on);
        } else if v.get("react").is_some() {
            let Some(last) = self.last.get(&who).cloned() else { self.fail(i, "a reaction before any bot message") };
            self.h.sandbox.meta().user_reacts(&wa_id(who), &last.provider_id, "👍");
        } else if let Some(caption) = v.get("photo").and_then(Value::as_str) {
            self.h.sandbox.meta().user_sends_image(&wa_id(who), caption);
        } else if let Some(c) = v.get("change") {
            // The configuration edited (takes effect at the next restart).
            let (from, to) = (c["from"].as_str().unwrap_or(""), c["to"].as_str().unwrap_or(""));
            if !self.h.extra_top.contains(from) {
                self.fail(i, &format!("the configuration has no {from:?} to change"));
            }
            self.h.extra_top = self.h.extra_top.replace(from, to);
        } else if v.get("restart").is_some() {
            self.h.quiet().await;
            self.h.stop().await;
            self.h.start().await;
        } else if let Some(d) = v.get("advance").and_then(Value::as_str) {
            let d = recado::validation::parse_duration(d).unwrap_or_else(|e| self.fail(i, &e));
            self.h.clock.advance(d);
            // WhatsApp's 24-hour window moves with it: free text the daemon sends after the
            // window closed is refused as WhatsApp refuses it.
            self.h.sandbox.meta().age_windows(d);
            self.h.sandbox.twilio().age_windows(d);
        } else {
            self.fail(i, &format!("unknown line {v}"));
        }
    }
}

fn scenarios() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conversations");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/conversations exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

fn yaml_to_json(y: &yaml_rust2::Yaml) -> Value {
    use yaml_rust2::Yaml;
    match y {
        Yaml::String(s) => json!(s),
        Yaml::Integer(i) => json!(i),
        Yaml::Real(r) => r.parse::<f64>().map(|f| json!(f)).unwrap_or_else(|_| json!(r)),
        Yaml::Boolean(b) => json!(b),
        Yaml::Array(a) => Value::Array(a.iter().map(yaml_to_json).collect()),
        Yaml::Hash(h) => Value::Object(
            h.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        Yaml::Integer(i) => i.to_string(),
                        other => format!("{other:?}"),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

fn load(path: &Path) -> Scenario {
    let text = std::fs::read_to_string(path).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let doc = docs.first().unwrap_or_else(|| panic!("{} is empty", path.display()));
    serde_json::from_value(yaml_to_json(doc)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

async fn run(path: &Path, vendor: Vendor) {
    let file = path.file_name().unwrap().to_string_lossy().to_string();
    let scenario = load(path);
    let mut rows: Vec<Vec<Value>> = scenario
        .people
        .iter()
        .map(|n| row(*n, &format!("P{n}"), "Sí", "Activo"))
        .chain(scenario.unconsented.iter().map(|n| row(*n, &format!("P{n}"), "", "Activo")))
        .chain(scenario.more_rows.iter().map(|r| {
            let mut v = row(r.id, &format!("P{}", r.id), "Sí", "Activo");
            v[2] = json!(crate::harness::phone(r.person));
            v
        }))
        .collect();
    for r in &mut rows {
        r.extend(scenario.columns.iter().map(|_| json!("")));
    }
    for c in &scenario.cells {
        let key = c["row"].as_u64().unwrap_or_default();
        let column = c["column"].as_str().unwrap_or_default();
        let at = scenario.columns.iter().position(|x| x == column);
        let row = rows.iter_mut().find(|r| r[0] == json!(key.to_string()) || r[0] == json!(key));
        match (at, row) {
            (Some(at), Some(row)) => row[header().len() + at] = c["value"].clone(),
            _ => panic!("{file}: cell {c} names no row or no column of `columns`"),
        }
    }
    let mut h = Harness::on(vendor, Vec::new()).await;
    let mut all = vec![header()];
    all[0].extend(scenario.columns.iter().map(|c| json!(c)));
    all.extend(rows);
    h.sandbox.google().seed(SHEET, "America/Santiago", vec![(TAB.to_string(), all)]);
    for (name, titles) in &scenario.template_buttons {
        h.set_quick_replies(name, &titles.iter().map(String::as_str).collect::<Vec<_>>());
    }
    for n in scenario.people.iter().chain(&scenario.unconsented).chain(&scenario.strangers) {
        h.user(*n, false, None);
    }
    h.extra_top = scenario.config.clone();
    h.extra_rules = scenario.rules.lines().map(|l| format!("  {l}\n")).collect();
    h.start().await;
    let default_person =
        scenario.people.first().or(scenario.unconsented.first()).or(scenario.strangers.first()).copied().unwrap_or(100);
    let mut r = Runner {
        h,
        file: format!("{file} ({})", scenario.about),
        seen: HashMap::new(),
        last: HashMap::new(),
        default_person,
    };
    for (i, line) in scenario.script.iter().enumerate() {
        r.run_line(i, line).await;
    }
    r.h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conversation_scenario_runs_as_written() {
    let files = scenarios();
    assert!(!files.is_empty(), "no scenario in tests/conversations");
    for path in files {
        for v in load(&path).vendors {
            let vendor = match v.as_str() {
                "meta" => Vendor::Meta,
                "twilio" => Vendor::Twilio,
                other => panic!("{}: unknown vendor {other}", path.display()),
            };
            run(&path, vendor).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_erases_a_person_and_keeps_only_their_opt_out() {
    use crate::harness::{phone, SOURCE};
    // 390 talks to the bot and opts out; 393 never wrote. Both have a row.
    let rows = vec![
        row(390, "Rosa Pérez", "Sí", "Activo"),
        row(393, "Ana Díaz", "Sí", "Activo"),
        row(394, "Luis Soto", "Sí", "Activo"),
    ];
    let mut h = Harness::new(rows).await;
    h.extra_top = r#"
inbound:
  entry_flow: menu
  opt_out_reply: "Listo, no te escribiremos más."
flows:
  - id: menu
    remind_after: 1h
    reminder: "¿Sigues ahí?"
    steps:
      - id: que
        ask: { text: "Cuéntanos tu consulta." }
      - id: gracias
        say: "Gracias."
"#
    .into();
    h.user(390, false, None);
    h.start().await;
    h.says(390, "hola", None);
    wait_for("the menu", Duration::from_secs(20), || async { bot_messages(&h, 390).len() == 1 }).await;
    h.clock.advance(Duration::from_secs(2 * 3600));
    wait_for("the reminder", Duration::from_secs(20), || async { bot_messages(&h, 390).len() == 2 }).await;
    h.says(390, "baja por favor", None);
    wait_for("the opt-out confirmation", Duration::from_secs(20), || async { bot_messages(&h, 390).len() == 3 }).await;
    h.quiet().await;
    // Not under a running daemon, which holds their record's copy in memory.
    let refused = recado::cli::forget(&h.config(), &phone(390), "CL").await.expect_err("the daemon runs");
    assert!(refused.to_string().contains("needs the daemon stopped"), "{refused}");
    h.stop().await;
    // A value still waiting to be written to her row when the daemon stopped.
    {
        let store = recado::store::Store::open(&h.state_path()).await.unwrap();
        let mut tx = store.begin().await.unwrap();
        let write = recado::domain::FieldWrite {
            source_id: SOURCE.into(),
            target: recado::domain::WriteTarget::Record(recado::domain::RecordKey("390".into())),
            field: "Última respuesta".into(),
            value: "baja por favor".into(),
        };
        // And a report her conversation was adding to another tab, with her number in it.
        let report = |field: &str, value: &str| recado::domain::FieldWrite {
            source_id: SOURCE.into(),
            target: recado::domain::WriteTarget::NewRecord(recado::domain::RecordKey("R-0123456789".into())),
            field: field.into(),
            value: value.into(),
        };
        let writes = [write, report("Problema", "Un bache"), report("Teléfono", &phone(390))];
        recado::store::queue_writes(&mut tx, &writes).await.unwrap();
        tx.commit().await.unwrap();
        store.close().await;
    }

    let report = recado::cli::forget(&h.config(), &phone(390), "CL").await.expect("forget");
    assert!(report.contains("3 message(s)"), "{report}");
    assert!(report.contains("2 reply(ies)"), "{report}");
    assert!(report.contains("recado's copy of 1 record(s)"), "{report}");
    assert!(report.contains("3 value(s) waiting"), "{report}");
    assert!(report.contains("kept: their opt-out"), "{report}");
    assert!(!report.contains(&e164(390)), "the report masks the number: {report}");
    for n in [393, 394] {
        let report = recado::cli::forget(&h.config(), &phone(n), "CL").await.expect("forget");
        assert!(report.contains("recado's copy of 1 record(s)"), "{report}");
        assert!(report.contains("kept: nothing"), "{report}");
    }
    {
        let store = recado::store::Store::open(&h.state_path()).await.unwrap();
        let mut c = store.conn().await.unwrap();
        let number = e164(390);
        let left: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM messages WHERE phone = $1) + (SELECT COUNT(*) FROM inbound WHERE phone = $1)
                  + (SELECT COUNT(*) FROM contacts WHERE phone = $1) + (SELECT COUNT(*) FROM webhooks WHERE body LIKE $2)",
        )
        .bind(&number)
        .bind(format!("%{}%", wa_id(390)))
        .fetch_one(&mut *c)
        .await
        .unwrap();
        assert_eq!(left, 0, "nothing with the number is left");
        // Provider ids can embed the number (Meta's wamids do), and bot messages' keys hold the
        // id of the message they answered: none is kept.
        let ids_left: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages WHERE phone = '' AND (provider_message_id IS NOT NULL OR idempotency_key LIKE 'flow:%')",
        )
        .fetch_one(&mut *c)
        .await
        .unwrap();
        assert_eq!(ids_left, 0, "no provider id and no bot message key is left");
        // Nor anywhere else: every column of every table.
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%'",
        )
        .fetch_all(&mut *c)
        .await
        .unwrap();
        for table in tables {
            let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
                .bind(&table)
                .fetch_all(&mut *c)
                .await
                .unwrap();
            for column in columns {
                // The number as WhatsApp sends it and as the sheet holds it, her name, what she
                // wrote; and the same of the person who never wrote.
                let held_texts = [wa_id(390), phone(390), "Rosa".into(), "baja".into(), "bache".into(), wa_id(393)];
                for held in held_texts.into_iter().chain([phone(393), "Ana".into(), phone(394), "Soto".into()]) {
                    // Names read from the schema itself, quoted.
                    let found: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                        "SELECT COUNT(*) FROM \"{table}\" WHERE CAST(\"{column}\" AS TEXT) LIKE $1"
                    )))
                    .bind(format!("%{held}%"))
                    .fetch_one(&mut *c)
                    .await
                    .unwrap();
                    assert_eq!(found, 0, "{held:?} is still in {table}.{column}");
                }
            }
        }
        drop(c);
        store.close().await;
    }

    // While recado is stopped, staff mark Luis as graduated.
    h.edit("394", "Estado", json!("Egresado"));
    // They write again: still opted out, so the bot says nothing; a new row with their number
    // gets nothing either.
    h.start().await;
    h.says(390, "hola", None);
    let mut again = row(391, "P391", "Sí", "Activo");
    again[2] = json!(phone(390));
    h.add_row(again);
    h.quiet().await;
    assert_eq!(bot_messages(&h, 390).len(), 3, "no answer after being forgotten");
    assert!(h.sent_to(390).iter().all(|m| m.template.is_none()), "no rule message either");

    // Rows still in the sheet are read again when recado starts: their copies are back, and
    // what changed while they were erased (Luis graduated) is not news: what it changed from
    // cannot be told. The next change is news again.
    let store = h.store();
    for key in ["393", "394"] {
        wait_for("the copy back", Duration::from_secs(20), || {
            let store = store.clone();
            async move {
                let mut c = store.conn().await.unwrap();
                recado::store::snapshot_row_of(&mut c, SOURCE, key).await.unwrap().is_some_and(|r| !r.is_erased())
            }
        })
        .await;
    }
    h.quiet().await;
    assert!(h.sent_to(394).is_empty(), "a change made while the copy was erased sends nothing");
    assert!(h.sent_to(393).is_empty());
    h.edit("393", "Estado", json!("Egresado"));
    wait_for("the survey of a change made later", Duration::from_secs(20), || async {
        h.sent_to(393).iter().any(|m| m.template.is_some())
    })
    .await;
}

/// A bot answer that could not go at once (the provider failed) and whose retry comes after
/// the person's 24-hour window closed is not sent as free text: it is skipped, with the reason
/// on record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_answer_still_waiting_when_the_window_closes_is_skipped_with_its_reason() {
    let mut h = Harness::new(Vec::new()).await;
    h.extra_top = r#"
inbound:
  entry_flow: menu
  opt_out_reply: "Listo, no te escribiremos más."
flows:
  - id: menu
    steps:
      - id: hola
        say: "Hola, soy el asistente."
"#
    .into();
    h.user(395, false, None);
    h.start().await;
    h.fault(crate::harness::Fault::ServerError, 1, 395);
    h.says(395, "hola", None);
    let store = h.store();
    let answer = || {
        let store = store.clone();
        async move {
            let mut c = store.conn().await.unwrap();
            recado::store::all_messages(&mut c).await.unwrap().into_iter().find(|m| m.phone.as_str() == e164(395))
        }
    };
    wait_for("the answer to fail once", Duration::from_secs(20), || async {
        answer().await.is_some_and(|m| m.attempts >= 1 && m.state == recado::domain::MessageState::Queued)
    })
    .await;
    let day = Duration::from_secs(25 * 3600);
    h.clock.advance(day);
    h.sandbox.meta().age_windows(day);
    wait_for("the answer skipped", Duration::from_secs(20), || async {
        answer().await.is_some_and(|m| m.state == recado::domain::MessageState::Skipped)
    })
    .await;
    let m = answer().await.unwrap();
    assert!(m.error.as_deref().is_some_and(|e| e.contains("outside the 24-hour window")), "{:?}", m.error);
    assert!(bot_messages(&h, 395).is_empty(), "nothing reached the person");
}

/// The report a resident makes in the chat becomes a row of its own in the `Incidencias` tab,
/// once, even when Google applies the append and the answer is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_taken_in_the_chat_becomes_one_new_row_of_another_tab_even_when_the_answer_is_lost() {
    use crate::harness::{SHEET, TAB};
    let mut h = Harness::new(Vec::new()).await;
    // Two handled reports, the first one's cells cleared by staff: new reports go after the
    // last row with data, not into the blank row.
    let incidencias = vec![
        vec![json!("ID"), json!("Problema"), json!("Lugar"), json!("Teléfono"), json!("Fecha")],
        vec![],
        vec![json!("R-handled"), json!("Basura"), json!("Calle 1"), json!(""), json!("")],
    ];
    h.sandbox.google().seed(
        SHEET,
        "America/Santiago",
        vec![(TAB.to_string(), vec![header()]), ("Incidencias".into(), incidencias)],
    );
    h.extra_source = another_tab(&h, "incidencias", "Incidencias", "    person_records: false\n");
    h.extra_top = r#"
inbound:
  opt_out_reply: "Listo, no te escribiremos más."
  entry_flow: reporte
flows:
  - id: reporte
    steps:
      - id: que
        ask: { text: "¿Qué problema quieres reportar?", save: Problema }
      - id: donde
        ask: { text: "¿Dónde está?", save: Lugar }
      - id: guardar
        save:
          to: incidencias
          fields:
            Problema: "{{ answers.que }}"
            Lugar: "{{ answers.donde }}"
            Teléfono: "{{ contact.phone }}"
            Fecha: "{{ now }}"
      - id: gracias
        say: "Gracias, registramos tu reporte."
"#
    .into();
    h.user(301, false, None);
    h.start().await;
    let bot_messages = |n: usize| {
        let h = &h;
        async move { h.meta_sent_to(301).len() >= n }
    };
    h.says(301, "hola", None);
    wait_for("the first question", Duration::from_secs(20), || bot_messages(1)).await;
    h.says(301, "Un bache grande", None);
    wait_for("the second question", Duration::from_secs(20), || bot_messages(2)).await;
    // Google adds the row and the answer never arrives.
    h.sandbox
        .google()
        .try_inject(recado::sandbox::google::FaultSpec {
            status: Some(503),
            applied: true,
            scope: Some("write".into()),
            ..Default::default()
        })
        .unwrap();
    h.says(301, "Av. Matta 1234", None);
    wait_for("the thanks", Duration::from_secs(20), || bot_messages(3)).await;
    let rows = || h.sandbox.google().rows(SHEET, "Incidencias");
    wait_for("the report's row", Duration::from_secs(20), || async { rows().len() == 4 }).await;
    h.quiesce().await;
    let rows = rows();
    assert_eq!(rows.len(), 4, "one row, not two, after the lost answer: {rows:?}");
    assert!(rows[1].iter().all(|v| v.as_str().is_none_or(str::is_empty)), "the blank row stays blank: {rows:?}");
    let row: Vec<String> = rows[3].iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect();
    assert!(row[0].starts_with("R-") && row[0].len() == 12, "recado's key: {row:?}");
    assert_eq!(&row[1..4], ["Un bache grande", "Av. Matta 1234", crate::harness::e164(301).as_str()]);
    assert!(row[4].starts_with("20"), "the local time: {row:?}");
    let health = h.running().ctx().health.all();
    assert!(
        health.iter().any(|(name, c)| name.starts_with("flusher:") && c.failures >= 1),
        "the lost answer was a failed flush: {health:?}"
    );
    let mut conn = h.store().conn().await.unwrap();
    let left = recado::store::pending_writes(&mut conn, &["incidencias".to_string()], 100).await.unwrap();
    assert!(left.is_empty(), "nothing left queued: {left:?}");
    drop(conn);
    // A second report is a row of its own: the first one's row is not the resident's record
    // (the tab holds reports, not people), so its answers are not written over it.
    h.says(301, "otra cosa", None);
    wait_for("the first question again", Duration::from_secs(20), || bot_messages(4)).await;
    h.says(301, "Luminaria apagada", None);
    wait_for("the second question again", Duration::from_secs(20), || bot_messages(5)).await;
    h.says(301, "Plaza de Armas", None);
    wait_for("the second report's row", Duration::from_secs(20), || async {
        h.sandbox.google().rows(SHEET, "Incidencias").len() == 5
    })
    .await;
    h.quiesce().await;
    let rows = h.sandbox.google().rows(SHEET, "Incidencias");
    assert_eq!(rows[3][1], "Un bache grande", "the first report is untouched: {rows:?}");
    assert_eq!(rows[4][1], "Luminaria apagada");
    assert_eq!(rows[4][2], "Plaza de Armas");
}

/// A contact who chose English in the chat, or whose record says English, gets a rule's
/// template in English when the template is approved in it; others get the rule's language.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rules_template_goes_in_the_language_the_contact_chose() {
    use crate::harness::{SHEET, TAB};
    let mut h = Harness::new(Vec::new()).await;
    let mut all = vec![header(), row(380, "Ana", "Sí", "Activo"), row(381, "Beto", "Sí", "Activo")];
    all.push(row(382, "Carla", "Sí", "Activo"));
    for (r, language) in all.iter_mut().zip(["Idioma", "", "", "en"]) {
        r.push(json!(language));
    }
    h.sandbox.google().seed(SHEET, "America/Santiago", vec![(TAB.to_string(), all)]);
    h.sandbox.meta().add_template(recado::sandbox::TemplateDef::new("encuesta_seguimiento", "en", 1, true));
    h.extra_top = format!(
        r#"
inbound:
  opt_out_reply: {{ es: "Listo, no te escribiremos más.", en: "Done: we will not write again." }}
  entry_flow: inicio
  default_language: es
  languages: [en]
  language_field: Idioma
flows:
  - id: inicio
    steps:
{LANGUAGE_QUESTION}      - id: listo
        say: {{ es: "Listo.", en: "Done." }}
"#
    );
    h.extra_rules = r#"
  - id: egreso
    source: inscripciones
    when: { changed: Estado, to: Graduado }
    provider: whatsapp
    template:
      name: encuesta_seguimiento
      language: es
      languages: [en]
      body: ["{{ Nombre }}"]
      button_url_suffix: "viewform?entry.1={{ ID | urlencode }}"
"#
    .into();
    for n in 380..=382 {
        h.user(n, false, None);
    }
    h.start().await;
    h.says(380, "hola", None);
    wait_for("the language question", Duration::from_secs(20), || async { h.meta_sent_to(380).len() == 1 }).await;
    h.says(380, "English", None);
    wait_for("the answer in English", Duration::from_secs(20), || async { h.meta_sent_to(380).len() == 2 }).await;
    for n in ["380", "381", "382"] {
        h.edit(n, "Estado", json!("Graduado"));
    }
    let template_language = |n: u32| {
        h.meta_sent_to(n)
            .iter()
            .find(|m| m.body["template"]["name"] == "encuesta_seguimiento")
            .map(|m| m.body["template"]["language"]["code"].as_str().unwrap_or_default().to_string())
    };
    wait_for("the three surveys", Duration::from_secs(20), || async {
        (380..=382).all(|n| template_language(n).is_some())
    })
    .await;
    assert_eq!(template_language(380).as_deref(), Some("en"), "Ana chose English");
    assert_eq!(template_language(381).as_deref(), Some("es"), "Beto chose nothing: the rule's language");
    assert_eq!(template_language(382).as_deref(), Some("en"), "Carla's record says English");
}

/// A flow can send an approved template (a procedure's requirements, approved with its
/// document): the texts before it go first, then the template, in the contact's language when
/// it is approved in it, its parameters filled from the answers and the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_says_an_approved_template_after_its_texts_in_the_contacts_language() {
    let mut h = Harness::new(vec![row(386, "Ana", "Sí", "Activo"), row(387, "Beto", "Sí", "Activo")]).await;
    for language in ["es", "en"] {
        h.sandbox.meta().add_template(recado::sandbox::TemplateDef::new("requisitos_tramite", language, 2, false));
    }
    h.extra_top = format!(
        r#"
inbound:
  opt_out_reply: {{ es: "Listo, no te escribiremos más.", en: "Done: we will not write again." }}
  entry_flow: tramite
  default_language: es
  languages: [en]
flows:
  - id: tramite
    steps:
{LANGUAGE_QUESTION}      - id: cual
        ask:
          text: {{ es: "¿Qué trámite?", en: "Which procedure?" }}
          choices:
            - {{ id: licencia, title: {{ es: "Licencia", en: "Licence" }}, value: Licencia }}
            - {{ id: patente, title: {{ es: "Patente", en: "Permit" }}, value: Patente }}
      - id: aviso
        say: {{ es: "Te enviamos los requisitos.", en: "Here are the requirements." }}
      - id: requisitos
        say:
          template:
            name: requisitos_tramite
            language: es
            languages: [en]
            body: ["{{{{ Nombre }}}}", "{{{{ answers.cual }}}}"]
        end: true
"#
    );
    h.start().await;
    for (n, language, procedure) in [(386, "Español", "Licencia"), (387, "English", "Permit")] {
        h.says(n, "hola", None);
        wait_for("the language question", Duration::from_secs(20), || async { h.meta_sent_to(n).len() == 1 }).await;
        h.says(n, language, None);
        wait_for("the procedure question", Duration::from_secs(20), || async { h.meta_sent_to(n).len() == 2 }).await;
        h.says(n, procedure, None);
        wait_for("the text and the template", Duration::from_secs(20), || async { h.meta_sent_to(n).len() == 4 }).await;
    }
    let ana = h.meta_sent_to(386);
    assert_eq!(ana[2].body["text"]["body"], "Te enviamos los requisitos.", "the text goes first");
    let template = &ana[3].body["template"];
    assert_eq!(template["name"], "requisitos_tramite");
    assert_eq!(template["language"]["code"], "es");
    assert_eq!(template["components"][0]["parameters"][0]["text"], "Ana");
    assert_eq!(template["components"][0]["parameters"][1]["text"], "Licencia");
    let beto = h.meta_sent_to(387);
    assert_eq!(beto[2].body["text"]["body"], "Here are the requirements.");
    assert_eq!(beto[3].body["template"]["language"]["code"], "en", "Beto chose English");
    assert_eq!(beto[3].body["template"]["components"][0]["parameters"][1]["text"], "Patente", "the saved value");
}

/// Someone known only in a second source (another tab) is recognised by their number: the bot
/// greets them with their record's fields, and their answer lands in that record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_in_another_source_is_found_by_phone_and_answers_land_there() {
    use crate::harness::{SHEET, TAB};
    let mut h = Harness::new(Vec::new()).await;
    let voluntarios = vec![
        vec![json!("ID"), json!("Nombre"), json!("Teléfono"), json!("Comentario")],
        vec![json!("V-1"), json!("Rosa"), json!(crate::harness::phone(391)), json!("")],
    ];
    h.sandbox.google().seed(
        SHEET,
        "America/Santiago",
        vec![(TAB.to_string(), vec![header(), row(390, "Ana", "Sí", "Activo")]), ("Voluntarios".into(), voluntarios)],
    );
    h.extra_source = another_tab(&h, "voluntarios", "Voluntarios", "");
    h.extra_top = GREETING.into();
    h.user(391, false, None);
    h.start().await;
    indexed(&h, 391, 1).await;
    h.says(391, "hola", None);
    wait_for("the greeting", Duration::from_secs(20), || async { h.meta_sent_to(391).len() == 1 }).await;
    assert_eq!(h.meta_sent_to(391)[0].body["text"]["body"], "Hola Rosa, ¿algo que contarnos?");
    h.says(391, "Quiero ayudar los sábados", None);
    wait_for("the answer in Rosa's row", Duration::from_secs(20), || async {
        h.sandbox.google().rows(SHEET, "Voluntarios").get(1).and_then(|r| r.get(3)).and_then(Value::as_str)
            == Some("Quiero ayudar los sábados")
    })
    .await;
}

/// One number in two sources (a participant who also volunteers): the conversation is about
/// the record of the first source in the configuration, and an opt-out is marked in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_number_in_two_sources_talks_about_the_first_and_opts_out_of_both() {
    use crate::harness::{SHEET, TAB};
    let mut h = Harness::new(Vec::new()).await;
    let mut inscripciones = vec![header(), row(396, "Ana", "Sí", "Activo")];
    inscripciones[0].push(json!("Comentario"));
    inscripciones[1].push(json!(""));
    let voluntarios = vec![
        vec![json!("ID"), json!("Nombre"), json!("Teléfono"), json!("Consentimiento"), json!("Comentario")],
        vec![json!("V-2"), json!("Ana María"), json!(crate::harness::phone(396)), json!("Sí"), json!("")],
    ];
    h.sandbox.google().seed(
        SHEET,
        "America/Santiago",
        vec![(TAB.to_string(), inscripciones), ("Voluntarios".into(), voluntarios)],
    );
    h.extra_source = another_tab(&h, "voluntarios", "Voluntarios", "    consent:\n      column: Consentimiento\n");
    h.extra_top = GREETING.into();
    h.user(396, false, None);
    h.start().await;
    indexed(&h, 396, 2).await;
    h.says(396, "hola", None);
    wait_for("the greeting", Duration::from_secs(20), || async { h.meta_sent_to(396).len() == 1 }).await;
    assert_eq!(
        h.meta_sent_to(396)[0].body["text"]["body"],
        "Hola Ana, ¿algo que contarnos?",
        "the first source's record"
    );
    h.says(396, "Todo bien", None);
    wait_for("the answer in the first source's row", Duration::from_secs(20), || async {
        h.cell("396", "Comentario") == "Todo bien"
    })
    .await;
    h.says(396, "BAJA", None);
    let volunteer = |column: usize| {
        h.sandbox
            .google()
            .rows(SHEET, "Voluntarios")
            .get(1)
            .and_then(|r| r.get(column))
            .and_then(Value::as_str)
            .map(String::from)
    };
    wait_for("the opt-out in both records", Duration::from_secs(20), || async {
        h.cell("396", "Consentimiento") == "BAJA" && volunteer(3).as_deref() == Some("BAJA")
    })
    .await;
    h.quiet().await;
    assert_eq!(volunteer(4).unwrap_or_default(), "", "the answer went to one record only");
}

/// A button of an earlier question, still on the person's screen, does not answer the question
/// the conversation waits on: that one is asked again, and nothing is saved for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_on_an_earlier_questions_button_does_not_answer_the_current_one() {
    let mut h = Harness::new(vec![row(392, "Ana", "Sí", "Activo")]).await;
    h.extra_top = r#"
inbound:
  opt_out_reply: "Listo, no te escribiremos más."
  entry_flow: encuesta
flows:
  - id: encuesta
    steps:
      - id: trabaja
        ask: { text: "¿Estás trabajando?", type: yes_no, yes: { title: "Sí" }, no: { title: "No" }, save: Trabaja, retry: "Responde con los botones." }
      - id: estudia
        ask: { text: "¿Estás estudiando?", type: yes_no, yes: { title: "Sí" }, no: { title: "No" }, save: Estudia, retry: "Responde con los botones." }
      - id: fin
        say: "Gracias."
"#
    .into();
    h.user(392, false, None);
    h.start().await;
    let meta = h.sandbox.meta();
    let sent = || h.meta_sent_to(392);
    h.says(392, "hola", None);
    wait_for("the first question", Duration::from_secs(20), || async { sent().len() == 1 }).await;
    let first = sent()[0].clone();
    let options = recado::sandbox::meta::interactive_options(&first);
    let (yes_id, yes_title) = options.iter().find(|(_, t)| t == "Sí").cloned().expect("a Sí button");
    meta.user_picks(&wa_id(392), &yes_id, &yes_title, false, Some(&first.wamid));
    wait_for("the second question", Duration::from_secs(20), || async { sent().len() == 2 }).await;
    h.wait_cell("392", "Trabaja", "Sí").await;
    // The first question's "Sí" again, tapped on the first message.
    meta.user_picks(&wa_id(392), &yes_id, &yes_title, false, Some(&first.wamid));
    wait_for("the second question asked again", Duration::from_secs(20), || async { sent().len() == 3 }).await;
    let again = recado::sandbox::meta::shown_text(&sent()[2]);
    assert!(again.contains("¿Estás estudiando?"), "the waiting question again: {again}");
    h.quiesce().await;
    assert_eq!(h.cell("392", "Estudia"), "", "the old tap answered nothing");
    // A tap on the second question's own button answers it.
    let second = sent()[2].clone();
    let no = recado::sandbox::meta::interactive_options(&second).into_iter().find(|(_, t)| t == "No").expect("No");
    meta.user_picks(&wa_id(392), &no.0, &no.1, false, Some(&second.wamid));
    h.wait_cell("392", "Estudia", "No").await;
}

/// A scripted person on Twilio writes, waits for the bot, and picks an option by its number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_person_on_twilio_follows_the_menu_by_numbers() {
    use recado::sandbox::ScriptLine;
    let mut h = Harness::on(Vendor::Twilio, Vec::new()).await;
    h.extra_top = r#"
inbound:
  opt_out_reply: "Listo, no te escribiremos más."
  entry_flow: menu
flows:
  - id: menu
    steps:
      - id: opcion
        ask:
          text: "¿En qué te podemos ayudar?"
          choices:
            - { id: horarios, title: "Horarios", goto: horarios }
            - { id: tramites, title: "Trámites", goto: tramites }
      - id: horarios
        say: "Atendemos de 8:30 a 14:00."
        end: true
      - id: tramites
        say: "Los trámites se hacen en línea."
        end: true
"#
    .into();
    let line = |say: Option<&str>, tap: Option<&str>, after: Option<&str>| ScriptLine {
        say: say.map(String::from),
        tap: tap.map(String::from),
        after: after.map(String::from),
        delay_ms: 10,
        ..Default::default()
    };
    h.sandbox.twilio().add_user(recado::sandbox::twilio::TwilioUser {
        number: e164(393),
        name: "Vecina".into(),
        read_after_ms: 20,
        script: vec![line(Some("hola"), None, None), line(None, Some("Trámites"), Some("¿En qué te podemos ayudar?"))],
        ..Default::default()
    });
    h.start().await;
    let twilio = h.sandbox.twilio();
    twilio.start_script(&e164(393));
    wait_for("the script to be done", Duration::from_secs(20), || async { twilio.scripts_done() }).await;
    wait_for("the answer to the second option", Duration::from_secs(20), || async {
        twilio.sent().iter().any(|m| m.body == "Los trámites se hacen en línea.")
    })
    .await;
    assert!(
        !twilio.sent().iter().any(|m| m.body.starts_with("Atendemos")),
        "the second option, typed as 2, not the first"
    );
}

/// A second Google Sheets source: tab `tab` of the harness's spreadsheet (keyed by `ID`, with
/// `Teléfono`), with `extra` settings lines.
/// A flow that greets a person by their record's name and saves what they say to `Comentario`.
const GREETING: &str = r#"
inbound:
  opt_out_reply: "Listo, no te escribiremos más."
  entry_flow: saludo
flows:
  - id: saludo
    steps:
      - id: pregunta
        ask: { text: "Hola {{ Nombre }}, ¿algo que contarnos?", save: Comentario }
      - id: gracias
        say: "Gracias, {{ Nombre }}."
"#;

/// Waits until the phone index holds exactly `records` records for person `n`.
async fn indexed(h: &Harness, n: u32, records: usize) {
    let store = h.store();
    wait_for("the records indexed by phone", Duration::from_secs(20), || {
        let store = store.clone();
        async move {
            let mut conn = store.conn().await.unwrap();
            recado::store::records_with_phone(&mut conn, &e164(n)).await.unwrap().len() == records
        }
    })
    .await;
}

fn another_tab(h: &Harness, id: &str, tab: &str, extra: &str) -> String {
    use crate::harness::SHEET;
    format!(
        r#"  - id: {id}
    type: google_sheets
    spreadsheet_id: {SHEET}
    tab: {tab}
    key_column: ID
    phone_column: Teléfono
{extra}    default_region: CL
    poll_interval: 150ms
    flush_interval: 200ms
    service_account_key_file: "{key}"
    sheets_base_url: "{base}/google/sheets/"
    drive_base_url: "{base}/google/"
"#,
        key = h.key_file.display(),
        base = h.sandbox.base_url()
    )
}
