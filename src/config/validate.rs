//! Raw configuration → typed [`Config`], collecting every error with its path.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::raw::*;
use super::*;

/// Collects errors as validation walks the tree.
#[derive(Default)]
struct Errors(Vec<ConfigError>);

impl Errors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError { path: path.into(), message: message.into() });
    }

    /// Deserializes one node, recording the error (with its inner path) if it does not fit.
    fn parse<T: DeserializeOwned>(&mut self, path: &str, value: Value) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(e) => {
                let mut inner = e.path().to_string();
                let msg = e.inner().to_string();
                // "missing field `path`" belongs at `state.path`, not at `state`.
                if let Some(field) = msg.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
                    inner = if inner == "." { field.to_string() } else { format!("{inner}.{field}") };
                }
                let full = if inner == "." || inner.is_empty() {
                    path.to_string()
                } else if inner.starts_with('[') {
                    format!("{path}{inner}")
                } else {
                    format!("{path}.{inner}")
                };
                self.push(full, msg);
                None
            }
        }
    }

    /// A list section: each element parsed on its own so one bad entry hides no other.
    fn parse_list<T: DeserializeOwned>(&mut self, path: &str, value: Option<Value>) -> Vec<(String, T)> {
        match value {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .into_iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let p = format!("{path}[{i}]");
                    self.parse::<T>(&p, v).map(|t| (p, t))
                })
                .collect(),
            Some(_) => {
                self.push(path, "expected a list");
                Vec::new()
            }
        }
    }
}

/// Parses `500ms`, `30s`, `2m`, `1h`, `1d`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("expected a duration such as 30s, 5m or 1h, got '{s}'"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => return Err(format!("expected a duration such as 30s, 5m or 1h, got '{s}'")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("expected a non-negative duration, got '{s}'"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn duration(errs: &mut Errors, path: String, value: Option<&str>, default: Duration, min: Duration) -> Duration {
    match value {
        None => default,
        Some(s) => match parse_duration(s) {
            Ok(d) if d >= min => d,
            Ok(_) => {
                errs.push(path, format!("must be at least {}ms", min.as_millis()));
                default
            }
            Err(e) => {
                errs.push(path, e);
                default
            }
        },
    }
}

/// Resolves a secret given as `x`, `x_env` or `x_file` (exactly one).
fn secret(
    errs: &mut Errors,
    path: &str,
    name: &str,
    inline: Option<String>,
    env: Option<String>,
    file: Option<String>,
) -> Option<Secret> {
    let given = [inline.is_some(), env.is_some(), file.is_some()].iter().filter(|b| **b).count();
    if given != 1 {
        errs.push(format!("{path}.{name}"), format!("give exactly one of {name}, {name}_env or {name}_file"));
        return None;
    }
    if let Some(v) = inline {
        return Some(Secret::new(v));
    }
    if let Some(var) = env {
        return match std::env::var(&var) {
            Ok(v) if !v.is_empty() => Some(Secret::new(v)),
            _ => {
                errs.push(format!("{path}.{name}_env"), format!("environment variable {var} is not set"));
                None
            }
        };
    }
    let file = file.unwrap_or_default();
    match std::fs::read_to_string(&file) {
        Ok(v) => Some(Secret::new(v.trim_end_matches(['\n', '\r']).to_string())),
        Err(e) => {
            errs.push(format!("{path}.{name}_file"), format!("cannot read {file}: {e}"));
            None
        }
    }
}

fn non_empty(errs: &mut Errors, path: String, value: &str) {
    if value.trim().is_empty() {
        errs.push(path, "must not be empty");
    }
}

fn unique(errs: &mut Errors, seen: &mut HashSet<String>, path: String, id: &str) {
    non_empty(errs, path.clone(), id);
    if !seen.insert(id.to_string()) {
        errs.push(path, format!("duplicate id '{id}'"));
    }
}

fn url(errs: &mut Errors, path: String, value: Option<String>, default: &str, trailing_slash: bool) -> String {
    let mut v = value.unwrap_or_else(|| default.to_string());
    if !(v.starts_with("http://") || v.starts_with("https://")) {
        errs.push(path, format!("expected an http(s) URL, got '{v}'"));
    }
    if trailing_slash && !v.ends_with('/') {
        v.push('/');
    }
    if !trailing_slash {
        while v.ends_with('/') {
            v.pop();
        }
    }
    v
}

/// Upper case without accents, for keyword matching (`Bája` = `BAJA`).
pub fn normalise_keyword(s: &str) -> String {
    s.trim()
        .chars()
        .map(|c| match c {
            'á' | 'à' | 'ä' | 'â' | 'Á' | 'À' | 'Ä' | 'Â' => 'A',
            'é' | 'è' | 'ë' | 'ê' | 'É' | 'È' | 'Ë' | 'Ê' => 'E',
            'í' | 'ì' | 'ï' | 'î' | 'Í' | 'Ì' | 'Ï' | 'Î' => 'I',
            'ó' | 'ò' | 'ö' | 'ô' | 'Ó' | 'Ò' | 'Ö' | 'Ô' => 'O',
            'ú' | 'ù' | 'ü' | 'û' | 'Ú' | 'Ù' | 'Ü' | 'Û' => 'U',
            'ñ' | 'Ñ' => 'N',
            other => other.to_ascii_uppercase(),
        })
        .collect()
}

/// The whole validation.
pub(super) fn validate(value: Value) -> Result<Config, ConfigErrors> {
    let mut errs = Errors::default();
    let raw: RawConfig = match value {
        Value::Null => RawConfig::default(),
        v => errs.parse("config", v).unwrap_or_default(),
    };

    let state = match raw.state {
        None => {
            errs.push("state", "missing section: give state.path (the SQLite file)");
            None
        }
        Some(v) => errs.parse::<RawState>("state", v).map(|s| {
            non_empty(&mut errs, "state.path".into(), &s.path);
            StateConfig { path: PathBuf::from(s.path) }
        }),
    };

    let http = match raw.http {
        None => {
            HttpConfig { listen: SocketAddr::from(([127, 0, 0, 1], 8080)), public_url: None, max_body_bytes: 1 << 20 }
        }
        Some(v) => {
            let h = errs.parse::<RawHttp>("http", v);
            let h = h.unwrap_or(RawHttp { listen: None, public_url: None, max_body_bytes: None });
            let listen = match h.listen.as_deref().map(SocketAddr::from_str) {
                None => SocketAddr::from(([127, 0, 0, 1], 8080)),
                Some(Ok(a)) => a,
                Some(Err(_)) => {
                    errs.push("http.listen", "expected an address such as 0.0.0.0:8080");
                    SocketAddr::from(([127, 0, 0, 1], 8080))
                }
            };
            let public_url = h.public_url.map(|u| url(&mut errs, "http.public_url".into(), Some(u), "", false));
            HttpConfig { listen, public_url, max_body_bytes: h.max_body_bytes.unwrap_or(1 << 20) as usize }
        }
    };

    // Ids of entries that failed to parse still count for references, so one mistake does not
    // cascade into "no such source" errors elsewhere.
    let raw_ids = |v: &Option<Value>| -> HashSet<String> {
        v.as_ref()
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|e| e.get("id")?.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let declared_providers = raw_ids(&raw.providers);
    let declared_sources = raw_ids(&raw.sources);

    // Providers.
    let mut provider_ids = HashSet::new();
    let mut providers = Vec::new();
    for (path, p) in errs.parse_list::<RawProvider>("providers", raw.providers) {
        match p {
            RawProvider::MetaCloud(m) => {
                unique(&mut errs, &mut provider_ids, format!("{path}.id"), &m.id);
                non_empty(&mut errs, format!("{path}.phone_number_id"), &m.phone_number_id);
                let token =
                    secret(&mut errs, &path, "access_token", m.access_token, m.access_token_env, m.access_token_file);
                let app_secret =
                    secret(&mut errs, &path, "app_secret", m.app_secret, m.app_secret_env, m.app_secret_file);
                let verify =
                    secret(&mut errs, &path, "verify_token", m.verify_token, m.verify_token_env, m.verify_token_file);
                let api_version = m.api_version.unwrap_or_else(|| "v23.0".into());
                let version_ok = api_version.strip_prefix('v').and_then(|r| r.split_once('.')).is_some_and(|(a, b)| {
                    !a.is_empty() && !b.is_empty() && (a.to_owned() + b).chars().all(|c| c.is_ascii_digit())
                });
                if !version_ok {
                    errs.push(
                        format!("{path}.api_version"),
                        format!("expected a version such as v23.0, got '{api_version}'"),
                    );
                }
                let mps = m.messages_per_second.unwrap_or(80.0);
                if !(mps > 0.0 && mps <= 10_000.0) {
                    errs.push(format!("{path}.messages_per_second"), "expected a number between 0 and 10000");
                }
                let pair = duration(
                    &mut errs,
                    format!("{path}.pair_interval"),
                    m.pair_interval.as_deref(),
                    Duration::from_secs(6),
                    Duration::ZERO,
                );
                let base_url =
                    url(&mut errs, format!("{path}.base_url"), m.base_url, "https://graph.facebook.com", false);
                let max_in_flight = m.max_in_flight.unwrap_or(32);
                if max_in_flight == 0 || max_in_flight > 1024 {
                    errs.push(format!("{path}.max_in_flight"), "expected a number between 1 and 1024");
                }
                let max_attempts = m.max_attempts.unwrap_or(8);
                if max_attempts == 0 || max_attempts > 100 {
                    errs.push(format!("{path}.max_attempts"), "expected a number between 1 and 100");
                }
                if let (Some(access_token), Some(app_secret), Some(verify_token)) = (token, app_secret, verify) {
                    providers.push(ProviderConfig::MetaCloud(MetaCloudConfig {
                        id: m.id,
                        phone_number_id: m.phone_number_id,
                        access_token,
                        app_secret,
                        verify_token,
                        api_version,
                        base_url,
                        messages_per_second: mps,
                        pair_interval: pair,
                        max_in_flight: max_in_flight.clamp(1, 1024) as usize,
                        max_attempts: max_attempts.clamp(1, 100) as u32,
                    }));
                }
            }
        }
    }

    // Sources.
    let mut source_ids = HashSet::new();
    let mut sources = Vec::new();
    for (path, s) in errs.parse_list::<RawSource>("sources", raw.sources) {
        match s {
            RawSource::GoogleSheets(g) => {
                unique(&mut errs, &mut source_ids, format!("{path}.id"), &g.id);
                for (name, v) in [
                    ("spreadsheet_id", &g.spreadsheet_id),
                    ("tab", &g.tab),
                    ("key_column", &g.key_column),
                    ("phone_column", &g.phone_column),
                ] {
                    non_empty(&mut errs, format!("{path}.{name}"), v);
                }
                let region_text = g.default_region.clone().unwrap_or_else(|| "CL".into());
                let region = match phonenumber::country::Id::from_str(&region_text.to_uppercase()) {
                    Ok(r) => r,
                    Err(_) => {
                        errs.push(
                            format!("{path}.default_region"),
                            format!("expected an ISO 3166 country code such as CL, AR or MX, got '{region_text}'"),
                        );
                        phonenumber::country::Id::CL
                    }
                };
                let poll = duration(
                    &mut errs,
                    format!("{path}.poll_interval"),
                    g.poll_interval.as_deref(),
                    Duration::from_secs(30),
                    Duration::from_millis(50),
                );
                let flush = duration(
                    &mut errs,
                    format!("{path}.flush_interval"),
                    g.flush_interval.as_deref(),
                    Duration::from_secs(2),
                    Duration::from_millis(10),
                );
                let key = secret(
                    &mut errs,
                    &path,
                    "service_account_key",
                    g.service_account_key,
                    g.service_account_key_env,
                    g.service_account_key_file,
                );
                if let Some(k) = &key {
                    if let Err(e) = serde_json::from_str::<yup_oauth2::ServiceAccountKey>(k.expose()) {
                        errs.push(
                            format!("{path}.service_account_key"),
                            format!("not a service-account key JSON: {e}"),
                        );
                    }
                }
                let rpm = g.requests_per_minute.unwrap_or(50);
                if rpm == 0 || rpm > 100_000 {
                    errs.push(format!("{path}.requests_per_minute"), "expected a number between 1 and 100000");
                }
                let first_start = match g.first_start.as_deref() {
                    None | Some("baseline") => FirstStart::Baseline,
                    Some("process_existing") => FirstStart::ProcessExisting,
                    Some(other) => {
                        errs.push(
                            format!("{path}.first_start"),
                            format!("expected baseline or process_existing, got '{other}'"),
                        );
                        FirstStart::Baseline
                    }
                };
                let consent = g.consent.map(|c| {
                    non_empty(&mut errs, format!("{path}.consent.column"), &c.column);
                    ConsentConfig {
                        column: c.column,
                        granted_values: c
                            .granted_values
                            .unwrap_or_else(|| ["sí", "si", "yes", "x", "true", "1"].map(String::from).to_vec())
                            .into_iter()
                            .map(|v| v.trim().to_lowercase())
                            .collect(),
                        opted_out_value: c.opted_out_value.unwrap_or_else(|| "BAJA".into()),
                    }
                });
                let write_back = g
                    .write_back
                    .map(|w| WriteBackColumns {
                        status: w.status,
                        status_at: w.status_at,
                        error: w.error,
                        last_reply: w.last_reply,
                        last_reply_at: w.last_reply_at,
                    })
                    .unwrap_or_default();
                let mut wb_seen = HashSet::new();
                for h in write_back.headers() {
                    if h.trim().is_empty() {
                        errs.push(format!("{path}.write_back"), "column headers must not be empty");
                    } else if !wb_seen.insert(h.to_string()) {
                        errs.push(format!("{path}.write_back"), format!("column '{h}' is used twice"));
                    }
                    if h == g.key_column || h == g.phone_column {
                        errs.push(
                            format!("{path}.write_back"),
                            format!("column '{h}' is the key or phone column; recado must not overwrite it"),
                        );
                    }
                }
                let date_order = match g.date_order.as_deref().map(str::parse::<crate::schedule::DateOrder>) {
                    None => crate::schedule::DateOrder::Dmy,
                    Some(Ok(o)) => o,
                    Some(Err(e)) => {
                        errs.push(format!("{path}.date_order"), e);
                        crate::schedule::DateOrder::Dmy
                    }
                };
                let sheets_base_url = url(
                    &mut errs,
                    format!("{path}.sheets_base_url"),
                    g.sheets_base_url,
                    "https://sheets.googleapis.com/",
                    true,
                );
                let drive_base_url = url(
                    &mut errs,
                    format!("{path}.drive_base_url"),
                    g.drive_base_url,
                    "https://www.googleapis.com/",
                    true,
                );
                if let Some(service_account_key) = key {
                    sources.push(SourceConfig::GoogleSheets(GoogleSheetsConfig {
                        id: g.id,
                        spreadsheet_id: g.spreadsheet_id,
                        tab: g.tab,
                        key_column: g.key_column,
                        phone_column: g.phone_column,
                        default_region: region,
                        poll_interval: poll,
                        flush_interval: flush,
                        service_account_key,
                        sheets_base_url,
                        drive_base_url,
                        requests_per_minute: rpm.clamp(1, 100_000) as u32,
                        first_start,
                        consent,
                        write_back,
                        date_order,
                        time_zone_column: g.time_zone_column,
                    }));
                }
            }
        }
    }

    // Defaults.
    let raw_defaults = match raw.defaults {
        None => RawDefaults::default(),
        Some(v) => errs.parse::<RawDefaults>("defaults", v).unwrap_or_default(),
    };
    let defaults = Defaults {
        time_zone: raw_defaults.time_zone.as_deref().and_then(|t| time_zone(&mut errs, "defaults.time_zone", t)),
        window: window(
            &mut errs,
            "defaults",
            raw_defaults.send_between.as_deref(),
            raw_defaults.send_days.as_deref(),
            raw_defaults.holidays.as_deref(),
        ),
        lateness: duration(
            &mut errs,
            "defaults.lateness".into(),
            raw_defaults.lateness.as_deref(),
            DEFAULT_LATENESS,
            Duration::ZERO,
        ),
    };

    // Rules.
    let mut rule_ids = HashSet::new();
    let mut rules = Vec::new();
    for (path, r) in errs.parse_list::<RawRule>("rules", raw.rules) {
        unique(&mut errs, &mut rule_ids, format!("{path}.id"), &r.id);
        if r.id.contains(':') {
            errs.push(format!("{path}.id"), "must not contain ':'");
        }
        if !source_ids.contains(&r.source) && !declared_sources.contains(&r.source) {
            errs.push(
                format!("{path}.source"),
                format!("no source with id '{}' (known: {})", r.source, list(&source_ids)),
            );
        }
        if !provider_ids.contains(&r.provider) && !declared_providers.contains(&r.provider) {
            errs.push(
                format!("{path}.provider"),
                format!("no provider with id '{}' (known: {})", r.provider, list(&provider_ids)),
            );
        }
        let trigger = parse_trigger(&mut errs, &format!("{path}.when"), &r.when);
        if let Some(f) = &r.filter {
            if let Err(e) = crate::rules::check_expression(f) {
                errs.push(format!("{path}.if"), e);
            }
        }
        let template = r.template.map(|t| template_spec(&mut errs, &format!("{path}.template"), t));
        let fallback = r.fallback_template.map(|t| template_spec(&mut errs, &format!("{path}.fallback_template"), t));
        let send = match (template, r.text) {
            (Some(t), None) => {
                if fallback.is_some() {
                    errs.push(format!("{path}.fallback_template"), "only used with text: a template needs no fallback");
                }
                Some(SendSpec::Template(t))
            }
            (None, Some(body)) => {
                if let Err(e) = crate::rules::check_template(&body) {
                    errs.push(format!("{path}.text"), e);
                }
                non_empty(&mut errs, format!("{path}.text"), &body);
                Some(SendSpec::Text { body, fallback })
            }
            (Some(_), Some(_)) => {
                errs.push(path.clone(), "give either template or text (with an optional fallback_template), not both");
                None
            }
            (None, None) => {
                errs.push(path.clone(), "nothing to send: give template or text");
                None
            }
        };
        let rule_tz = r.time_zone.as_deref().and_then(|t| time_zone(&mut errs, &format!("{path}.time_zone"), t));
        let rule_window =
            window(&mut errs, &path, r.send_between.as_deref(), r.send_days.as_deref(), r.holidays.as_deref());
        let lateness = r
            .lateness
            .as_deref()
            .map(|l| duration(&mut errs, format!("{path}.lateness"), Some(l), DEFAULT_LATENESS, Duration::ZERO));
        if let (Some(trigger), Some(send)) = (trigger, send) {
            rules.push(RuleConfig {
                id: r.id,
                source: r.source,
                trigger,
                filter: r.filter,
                provider: r.provider,
                send,
                time_zone: rule_tz,
                window: rule_window,
                lateness,
            });
        }
    }

    let inbound = match raw.inbound {
        None => None,
        Some(v) => errs.parse::<RawInbound>("inbound", v),
    };
    let keywords = inbound
        .and_then(|i| i.opt_out_keywords)
        .unwrap_or_else(|| ["BAJA", "STOP", "SALIR", "CANCELAR", "UNSUBSCRIBE"].map(String::from).to_vec());
    let inbound = InboundConfig { opt_out_keywords: keywords.iter().map(|k| normalise_keyword(k)).collect() };

    if errs.0.is_empty() {
        if let Some(state) = state {
            return Ok(Config { state, http, providers, sources, rules, inbound, defaults });
        }
    }
    Err(ConfigErrors(errs.0))
}

fn list(ids: &HashSet<String>) -> String {
    let mut v: Vec<&str> = ids.iter().map(String::as_str).collect();
    v.sort();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn template_spec(errs: &mut Errors, path: &str, t: RawTemplate) -> TemplateSpec {
    non_empty(errs, format!("{path}.name"), &t.name);
    non_empty(errs, format!("{path}.language"), &t.language);
    for (i, b) in t.body.iter().enumerate() {
        if let Err(e) = crate::rules::check_template(b) {
            errs.push(format!("{path}.body[{i}]"), e);
        }
    }
    if let Some(s) = &t.button_url_suffix {
        if let Err(e) = crate::rules::check_template(s) {
            errs.push(format!("{path}.button_url_suffix"), e);
        }
    }
    TemplateSpec { name: t.name, language: t.language, body: t.body, button_url_suffix: t.button_url_suffix }
}

fn parse_trigger(errs: &mut Errors, path: &str, when: &Value) -> Option<Trigger> {
    const EXPECTED: &str =
        "expected row_added, {changed: FIELD, to: VALUE}, {date: FIELD, offset: -2d, at: \"10:00\"} or {cron: \"0 10 1 */3 *\"}";
    match when {
        Value::String(s) if s == "row_added" => Some(Trigger::RowAdded),
        Value::String(s) => {
            errs.push(path, format!("unknown trigger '{s}': {EXPECTED}"));
            None
        }
        Value::Object(map) => {
            if let Some(field) = map.get("changed") {
                let mut ok = true;
                for k in map.keys() {
                    if k != "changed" && k != "to" {
                        errs.push(format!("{path}.{k}"), format!("unknown key: {EXPECTED}"));
                        ok = false;
                    }
                }
                let field = match field {
                    Value::String(f) if !f.trim().is_empty() => f.clone(),
                    _ => {
                        errs.push(format!("{path}.changed"), "expected the header of the column to watch");
                        return None;
                    }
                };
                let to = match map.get("to") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    Some(Value::Bool(b)) => Some(if *b { "TRUE" } else { "FALSE" }.into()),
                    Some(_) => {
                        errs.push(format!("{path}.to"), "expected a value such as Egresado");
                        ok = false;
                        None
                    }
                };
                ok.then_some(Trigger::Changed { field, to })
            } else if let Some(field) = map.get("date") {
                date_trigger(errs, path, map, field)
            } else if let Some(expr) = map.get("cron") {
                for k in map.keys().filter(|k| *k != "cron") {
                    errs.push(format!("{path}.{k}"), "unknown key: a cron trigger has only `cron`");
                }
                match expr {
                    Value::String(e) => match crate::schedule::CronSchedule::parse(e) {
                        Ok(_) => Some(Trigger::Cron { expr: e.clone() }),
                        Err(msg) => {
                            errs.push(format!("{path}.cron"), msg);
                            None
                        }
                    },
                    _ => {
                        errs.push(format!("{path}.cron"), "expected a cron expression such as \"0 10 1 */3 *\"");
                        None
                    }
                }
            } else {
                let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                errs.push(path, format!("unknown trigger {{{}}}: {EXPECTED}", keys.join(", ")));
                None
            }
        }
        _ => {
            errs.push(path, EXPECTED);
            None
        }
    }
}

fn date_trigger(errs: &mut Errors, path: &str, map: &serde_json::Map<String, Value>, field: &Value) -> Option<Trigger> {
    let mut ok = true;
    for k in map.keys() {
        if !["date", "offset", "at"].contains(&k.as_str()) {
            errs.push(format!("{path}.{k}"), "unknown key: a date trigger has date, offset and at");
            ok = false;
        }
    }
    let field = match field {
        Value::String(f) if !f.trim().is_empty() => f.clone(),
        _ => {
            errs.push(format!("{path}.date"), "expected the header of the date column");
            return None;
        }
    };
    let texts: Vec<(String, Value)> = match map.get("offset") {
        None | Some(Value::Null) => vec![(format!("{path}.offset"), Value::String("0d".into()))],
        Some(Value::Array(items)) if !items.is_empty() => {
            items.iter().enumerate().map(|(i, v)| (format!("{path}.offset[{i}]"), v.clone())).collect()
        }
        Some(other) => vec![(format!("{path}.offset"), other.clone())],
    };
    let mut offsets = Vec::new();
    for (p, v) in texts {
        let text = match &v {
            Value::String(s) => s.clone(),
            _ => String::new(),
        };
        match text.parse::<crate::schedule::Offset>() {
            Ok(o) if !offsets.contains(&o) => offsets.push(o),
            Ok(o) => {
                errs.push(p, format!("offset {o} is listed twice"));
                ok = false;
            }
            Err(e) => {
                errs.push(p, e);
                ok = false;
            }
        }
    }
    let at = match map.get("at") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => match chrono::NaiveTime::parse_from_str(a.trim(), "%H:%M") {
            Ok(t) => Some(t),
            Err(_) => {
                errs.push(format!("{path}.at"), format!("expected a local time such as 10:00, got '{a}'"));
                ok = false;
                None
            }
        },
        Some(_) => {
            errs.push(format!("{path}.at"), "expected a local time such as \"10:00\" (quoted)");
            ok = false;
            None
        }
    };
    ok.then_some(Trigger::Date { field, offsets, at })
}

fn time_zone(errs: &mut Errors, path: &str, name: &str) -> Option<chrono_tz::Tz> {
    match name.trim().parse::<chrono_tz::Tz>() {
        Ok(tz) => Some(tz),
        Err(_) => {
            errs.push(path, format!("expected an IANA time zone such as America/Santiago, got '{name}'"));
            None
        }
    }
}

fn window(
    errs: &mut Errors,
    path: &str,
    between: Option<&str>,
    days: Option<&[String]>,
    holidays: Option<&[String]>,
) -> Option<crate::schedule::SendWindow> {
    if between.is_none() && days.is_none() && holidays.is_none() {
        return None;
    }
    match crate::schedule::SendWindow::parse(between, days.unwrap_or(&[]), holidays.unwrap_or(&[])) {
        Ok(w) => Some(w),
        Err(list) => {
            for (k, m) in list {
                errs.push(format!("{path}.{k}"), m);
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn keywords_normalise() {
        assert_eq!(normalise_keyword(" Bája "), "BAJA");
        assert_eq!(normalise_keyword("stop"), "STOP");
    }
}
