//! Raw configuration → typed [`Config`], collecting every problem with its path.
//!
//! The top level is walked key by key, so an unknown section is one problem among the others
//! and hides none of them. Each `sources[*]` and `providers[*]` entry is dispatched by its
//! `type` to its vendor's validation.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde_json::Value;

use super::raw::*;
use super::*;
use crate::validation::{Env, Problems, SecretSources, LONGEST_DURATION};

pub use crate::domain::normalise_keyword;

/// Validates one list entry of a vendor section (problems, environment, path, the entry
/// without its `type`, the ids seen so far).
type Validator<T> = fn(&mut Problems, &Env, &str, Value, &mut HashSet<String>) -> Option<T>;

/// `providers[*].type` → the vendor that validates the entry. A new provider is one line here.
const PROVIDER_TYPES: &[(&str, Validator<ProviderConfig>)] = &[("meta_cloud", meta_cloud), ("twilio", twilio)];

/// `sources[*].type` → the vendor that validates the entry. A new source is one line here.
const SOURCE_TYPES: &[(&str, Validator<SourceConfig>)] =
    &[("google_sheets", google_sheets), ("salesforce", salesforce)];

fn meta_cloud(p: &mut Problems, env: &Env, path: &str, v: Value, ids: &mut HashSet<String>) -> Option<ProviderConfig> {
    crate::providers::meta_cloud::config::validate(p, env, path, v, ids).map(ProviderConfig::MetaCloud)
}

fn twilio(p: &mut Problems, env: &Env, path: &str, v: Value, ids: &mut HashSet<String>) -> Option<ProviderConfig> {
    crate::providers::twilio::config::validate(p, env, path, v, ids).map(ProviderConfig::Twilio)
}

fn salesforce(p: &mut Problems, env: &Env, path: &str, v: Value, ids: &mut HashSet<String>) -> Option<SourceConfig> {
    crate::sources::salesforce::config::validate(p, env, path, v, ids).map(SourceConfig::Salesforce)
}

fn google_sheets(p: &mut Problems, env: &Env, path: &str, v: Value, ids: &mut HashSet<String>) -> Option<SourceConfig> {
    crate::sources::google_sheets::config::validate(p, env, path, v, ids).map(SourceConfig::GoogleSheets)
}

/// The whole validation.
pub(super) fn validate(value: Value, env: &Env) -> Result<Config, ConfigErrors> {
    let mut p = Problems::new();
    let mut sections = match value {
        Value::Null => serde_json::Map::new(),
        Value::Object(map) => map,
        _ => {
            p.push("config", "expected sections (state, http, providers, sources, rules, …) at the top level");
            serde_json::Map::new()
        }
    };
    let mut unknown: Vec<String> = sections.keys().filter(|k| !SECTIONS.contains(&k.as_str())).cloned().collect();
    unknown.sort();
    for k in unknown {
        sections.remove(&k);
        p.push(k.clone(), format!("unknown section; expected one of {}", SECTIONS.join(", ")));
    }
    // Rules may hand replies to a person: whether `handoff:` is there (it is read later).
    let has_handoff = sections.get("handoff").is_some_and(|v| !v.is_null());
    let mut take = |name: &str| sections.remove(name).filter(|v| !v.is_null());

    let state = match take("state") {
        None => {
            p.push("state", "missing section: give state.path (the SQLite file)");
            None
        }
        Some(v) => p.parse::<RawState>("state", v).map(|s| {
            p.non_empty("state.path", &s.path);
            let r = s.retention.unwrap_or_default();
            let d = Retention::default();
            let keep = |p: &mut Problems, name: &str, v: Option<String>, default: Duration| {
                p.duration(
                    &format!("state.retention.{name}"),
                    v.as_deref(),
                    default,
                    Duration::from_secs(3600),
                    LONGEST_DURATION,
                )
            };
            let retention = Retention {
                raw_webhooks: keep(&mut p, "raw_webhooks", r.raw_webhooks, d.raw_webhooks),
                status_events: keep(&mut p, "status_events", r.status_events, d.status_events),
                inbound_messages: keep(&mut p, "inbound_messages", r.inbound_messages, d.inbound_messages),
                media: keep(&mut p, "media", r.media, d.media),
            };
            let media_max_bytes = p.count("state.media_max_mb", s.media_max_mb, 16, 1..=100) * 1_000_000;
            StateConfig { path: PathBuf::from(s.path), retention, media_max_bytes }
        }),
    };

    let default_listen = SocketAddr::from(([127, 0, 0, 1], 8080));
    let h = match take("http") {
        None => RawHttp::default(),
        Some(v) => p.parse::<RawHttp>("http", v).unwrap_or_default(),
    };
    let listen = match h.listen.as_deref().map(SocketAddr::from_str) {
        None => default_listen,
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            p.push("http.listen", "expected an address such as 0.0.0.0:8080");
            default_listen
        }
    };
    let public_url = h.public_url.map(|u| p.url("http.public_url", Some(u), "", false));
    let max_body_bytes = p.count("http.max_body_bytes", h.max_body_bytes, 1 << 20, 1024..=(64 << 20)) as usize;
    let dashboard_password =
        (h.dashboard_password.is_some() || h.dashboard_password_env.is_some() || h.dashboard_password_file.is_some())
            .then(|| {
                p.secret(
                    env,
                    "http",
                    "dashboard_password",
                    SecretSources::new(h.dashboard_password, h.dashboard_password_env, h.dashboard_password_file),
                )
            })
            .flatten();
    let http = HttpConfig { listen, public_url, max_body_bytes, dashboard_password };

    // Ids of entries that failed to parse still count for references, so one mistake does not
    // cascade into "no such source" problems elsewhere.
    let raw_ids = |v: &Option<Value>| -> HashSet<String> {
        v.as_ref()
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|e| e.get("id")?.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let raw_providers = take("providers");
    let raw_sources = take("sources");
    let declared_providers = raw_ids(&raw_providers);
    let declared_sources = raw_ids(&raw_sources);

    let mut provider_ids = HashSet::new();
    let mut providers = Vec::new();
    let provider_types: Vec<&str> = PROVIDER_TYPES.iter().map(|(t, _)| *t).collect();
    for (path, entry) in p.list("providers", raw_providers) {
        let Some((kind, body)) = typed(&mut p, &path, entry, &provider_types) else { continue };
        if let Some((_, validate)) = PROVIDER_TYPES.iter().find(|(t, _)| *t == kind) {
            if let Some(provider) = validate(&mut p, env, &path, body, &mut provider_ids) {
                if let Some(problem) = provider.reachability_problem(http.public_url.as_deref()) {
                    p.push(path.clone(), problem);
                }
                providers.push(provider);
            }
        }
    }

    let mut source_ids = HashSet::new();
    let mut sources = Vec::new();
    let source_types: Vec<&str> = SOURCE_TYPES.iter().map(|(t, _)| *t).collect();
    for (path, entry) in p.list("sources", raw_sources) {
        let Some((kind, body)) = typed(&mut p, &path, entry, &source_types) else { continue };
        if let Some((_, validate)) = SOURCE_TYPES.iter().find(|(t, _)| *t == kind) {
            sources.extend(validate(&mut p, env, &path, body, &mut source_ids));
        }
    }

    let raw_defaults = match take("defaults") {
        None => RawDefaults::default(),
        Some(v) => p.parse::<RawDefaults>("defaults", v).unwrap_or_default(),
    };
    let defaults = Defaults {
        time_zone: raw_defaults.time_zone.as_deref().and_then(|t| p.time_zone("defaults.time_zone", t)),
        window: window(
            &mut p,
            "defaults",
            raw_defaults.send_between.as_deref(),
            raw_defaults.send_days.as_deref(),
            raw_defaults.holidays.as_deref(),
        ),
        lateness: p.duration(
            "defaults.lateness",
            raw_defaults.lateness.as_deref(),
            DEFAULT_LATENESS,
            Duration::ZERO,
            LONGEST_DURATION,
        ),
    };

    // A Salesforce date-time is an instant: it becomes a local time in one zone when read, and
    // rules then read that local time in theirs. Both must be the same zone: a source without
    // its own `time_zone` reads in `defaults.time_zone` (else the org's).
    for (i, source) in sources.iter_mut().enumerate() {
        let SourceConfig::Salesforce(sf) = source else { continue };
        match (&sf.time_zone, defaults.time_zone) {
            (None, Some(d)) => sf.time_zone = Some(d.name().to_string()),
            (Some(own), Some(d)) if own.parse::<chrono_tz::Tz>().is_ok_and(|o| o != d) => p.push(
                format!("sources[{i}].time_zone"),
                format!(
                    "differs from defaults.time_zone ({}): rules would read this source's date-times, converted to {own}, as times in {}; set one of them",
                    d.name(),
                    d.name()
                ),
            ),
            _ => {}
        }
    }

    let mut rule_ids = HashSet::new();
    let mut rules = Vec::new();
    for (path, r) in p.parse_list::<RawRule>("rules", take("rules")) {
        p.unique(&mut rule_ids, &format!("{path}.id"), &r.id);
        if r.id.contains(':') {
            p.push(format!("{path}.id"), "must not contain ':'");
        }
        if !source_ids.contains(&r.source) && !declared_sources.contains(&r.source) {
            p.push(
                format!("{path}.source"),
                format!("no source with id '{}' (known: {})", r.source, list(&source_ids)),
            );
        }
        if !provider_ids.contains(&r.provider) && !declared_providers.contains(&r.provider) {
            p.push(
                format!("{path}.provider"),
                format!("no provider with id '{}' (known: {})", r.provider, list(&provider_ids)),
            );
        }
        let trigger = parse_trigger(&mut p, &format!("{path}.when"), &r.when);
        if let Some(f) = &r.filter {
            if let Err(e) = crate::expressions::check_expression(f) {
                p.push(format!("{path}.if"), e);
            }
        }
        let template = r.template.map(|t| template_spec(&mut p, &format!("{path}.template"), t));
        let fallback = r.fallback_template.map(|t| template_spec(&mut p, &format!("{path}.fallback_template"), t));
        // A provider that knows templates by its own ids must know each one the rule names.
        if let Some(provider) = providers.iter().find(|c: &&ProviderConfig| c.id() == r.provider) {
            for (at, t) in [("template", &template), ("fallback_template", &fallback)] {
                let Some(t) = t else { continue };
                if let Some(problem) = provider.template_problem(t, &t.language) {
                    p.push(format!("{path}.{at}.name"), problem);
                }
                for (i, language) in t.languages.iter().enumerate() {
                    if let Some(problem) = provider.template_problem(t, language) {
                        p.push(format!("{path}.{at}.languages[{i}]"), problem);
                    }
                }
            }
        }
        let send = match (template, r.text) {
            (Some(t), None) => {
                if fallback.is_some() {
                    p.push(format!("{path}.fallback_template"), "only used with text: a template needs no fallback");
                }
                Some(SendSpec::Template(t))
            }
            (None, Some(body)) => {
                if let Err(e) = crate::expressions::check_template(&body) {
                    p.push(format!("{path}.text"), e);
                }
                p.non_empty(&format!("{path}.text"), &body);
                Some(SendSpec::Text { body, fallback })
            }
            (Some(_), Some(_)) => {
                p.push(path.clone(), "give either template or text (with an optional fallback_template), not both");
                None
            }
            (None, None) => {
                p.push(path.clone(), "nothing to send: give template or text");
                None
            }
        };
        let rule_tz = r.time_zone.as_deref().and_then(|t| p.time_zone(&format!("{path}.time_zone"), t));
        let instants_in = sources.iter().find_map(|s| match s {
            SourceConfig::Salesforce(sf) if sf.settings.id == r.source => Some(sf.time_zone.clone()),
            _ => None,
        });
        if let (Some(tz), Some(Some(source_tz))) = (rule_tz, &instants_in) {
            if tz.name() != source_tz.as_str() {
                p.push(
                    format!("{path}.time_zone"),
                    format!(
                        "source '{}' reads date-times in {source_tz}: a rule on it cannot use another zone",
                        r.source
                    ),
                );
            }
        }
        let rule_window =
            window(&mut p, &path, r.send_between.as_deref(), r.send_days.as_deref(), r.holidays.as_deref());
        let lateness = r.lateness.as_deref().map(|l| {
            p.duration(&format!("{path}.lateness"), Some(l), DEFAULT_LATENESS, Duration::ZERO, LONGEST_DURATION)
        });
        let write_back = r.write_back.map(|w| {
            let w = RuleWriteBack { status: w.status, status_at: w.status_at, error: w.error };
            let source = sources.iter().map(SourceConfig::settings).find(|s| s.id == r.source);
            let mut seen = HashSet::new();
            for f in w.fields() {
                let at = format!("{path}.write_back");
                let same = |other: &str| other.trim().to_lowercase() == f.trim().to_lowercase();
                if f.trim().is_empty() {
                    p.push(at, "field names must not be empty");
                } else if !seen.insert(f.trim().to_lowercase()) {
                    p.push(at, format!("'{f}' is used twice"));
                } else if let Some(s) = source {
                    if same(&s.key_field) || same(&s.phone_field) {
                        p.push(at, format!("'{f}' is the key or phone field; recado must not overwrite it"));
                    } else if s.consent.as_ref().is_some_and(|c| same(&c.field)) {
                        p.push(at, format!("'{f}' is the consent field; a person's consent is not a status"));
                    } else if s.write_back.fields().iter().any(|o| same(o)) {
                        p.push(
                            at,
                            format!("'{f}' is already one of source '{}''s write_back fields; give the rule fields of its own", s.id),
                        );
                    }
                }
            }
            w
        });
        let hands_off_other_replies = match r.on_other_reply.as_deref() {
            None | Some("bot") => false,
            Some("handoff") => {
                if !has_handoff {
                    p.push(
                        format!("{path}.on_other_reply"),
                        "a hand-off needs the handoff: section (its inbox and fields)",
                    );
                }
                true
            }
            Some(other) => {
                p.push(format!("{path}.on_other_reply"), format!("expected handoff or bot, got '{other}'"));
                false
            }
        };
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
                on_reply: r.on_reply,
                hands_off_other_replies,
                write_back,
            });
        }
    }

    // A rule's own status fields are recado's, like the source's write-back fields: never
    // read as data, never a change that triggers a rule.
    for r in &rules {
        let Some(w) = &r.write_back else { continue };
        if let Some(source) = sources.iter_mut().find(|s| s.settings().id == r.source) {
            let own = &mut source.settings_mut().write_back.rule_fields;
            for f in w.fields() {
                if !own.iter().any(|o| o == f) {
                    own.push(f.to_string());
                }
            }
        }
    }

    let inbound = match take("inbound") {
        None => None,
        Some(v) => p.parse::<RawInbound>("inbound", v),
    };
    let inbound = inbound.unwrap_or_default();
    let keywords =
        inbound.opt_out_keywords.unwrap_or_else(|| ["BAJA", "STOP", "UNSUBSCRIBE"].map(String::from).to_vec());
    let default_language = inbound.default_language.unwrap_or_else(|| "es".into());
    p.non_empty("inbound.default_language", &default_language);
    let languages: Vec<String> = inbound.languages.unwrap_or_default();
    let flow_languages = crate::flows::config::Languages { default: &default_language, required: &languages };
    let mut flows = crate::flows::config::validate(&mut p, take("flows"), &flow_languages, &flow_template);
    let consent_version = match inbound.consent {
        Some(v) => crate::flows::config::consent_flow(&mut p, v, &flow_languages).map(|(flow, version)| {
            flows.flows.insert(flow.id.clone(), flow);
            version
        }),
        None => None,
    };
    for (i, r) in rules.iter().enumerate() {
        if let Some(id) = &r.on_reply {
            match flows.get(id) {
                None => p.push(format!("rules[{i}].on_reply"), format!("no flow '{id}'")),
                Some(f) if !matches!(f.steps.first().map(|s| &s.kind), Some(crate::flows::StepKind::Ask(_))) => p.push(
                    format!("rules[{i}].on_reply"),
                    format!("flow '{id}' must start with an ask step: the reply is read as its answer"),
                ),
                Some(_) => {}
            }
        }
    }
    // A template a flow says must be known to every provider a contact may write on (the
    // bot answers on the provider the message came in on).
    for flow in flows.flows.values() {
        for step in &flow.steps {
            let crate::flows::StepKind::SayTemplate(t) = &step.kind else { continue };
            let path = format!("flows.{}.{}.say.template", flow.id, step.id);
            for provider in &providers {
                for (at, language) in std::iter::once(("name".to_string(), &t.language))
                    .chain(t.languages.iter().enumerate().map(|(i, l)| (format!("languages[{i}]"), l)))
                {
                    if let Some(problem) = provider.template_problem(t, language) {
                        p.push(format!("{path}.{at}"), problem);
                    }
                }
            }
        }
    }
    // A file on this machine needs a provider that uploads files (the flow answers on the
    // provider the message came in on).
    for flow in flows.flows.values() {
        for step in &flow.steps {
            let crate::flows::StepKind::SayMedia(m) = &step.kind else { continue };
            if crate::domain::local_media_path(&m.url).is_none() {
                continue;
            }
            for provider in providers.iter().filter(|p| !p.uploads_files()) {
                p.push(
                    format!("flows.{}.{}.say.{}", flow.id, step.id, m.kind.name()),
                    format!(
                        "provider '{}' sends files only from a public address: put the file at an https:// address",
                        provider.id()
                    ),
                );
            }
        }
    }
    // A template has one number of parameters: two places that fill it differently cannot
    // both be right, and the provider refuses one of them at send time.
    {
        let ids: Vec<&str> = providers.iter().map(ProviderConfig::id).collect();
        let mut first: std::collections::HashMap<(String, String, String), (usize, String)> =
            std::collections::HashMap::new();
        for u in crate::config::template_uses(&rules, &flows, &ids) {
            let t = &u.template;
            let key = (u.provider.clone(), t.name.clone(), t.language.clone());
            let given = t.parameters + usize::from(t.url_button);
            match first.get(&key) {
                None => {
                    first.insert(key, (given, u.path));
                }
                Some((n, at)) if *n != given && *at != u.path => p.push(
                    u.path,
                    format!(
                        "template '{}' ({}) is given {given} parameter(s) here and {n} at {at}: one template takes one number",
                        t.name, t.language
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    // A flow that adds records adds them to a source that can take them.
    for flow in flows.flows.values() {
        for step in &flow.steps {
            let crate::flows::StepKind::Create { source, fields } = &step.kind else { continue };
            let path = format!("flows.{}.{}.save.to", flow.id, step.id);
            if let Some(target) = sources.iter_mut().find(|s| s.id() == source.as_str()) {
                let settings = target.settings_mut();
                // Rows a conversation adds (reports) are not people, unless said otherwise.
                settings.person_records.get_or_insert(false);
                let key = settings.key_field.clone();
                let mut seen: HashSet<String> = HashSet::new();
                for (name, _) in fields {
                    let fields_path = format!("flows.{}.{}.save.fields.{name}", flow.id, step.id);
                    if name.trim().eq_ignore_ascii_case(key.trim()) {
                        p.push(
                            fields_path,
                            format!("'{key}' is the source's key: recado fills it with the new record's key"),
                        );
                    } else if !seen.insert(name.trim().to_lowercase()) {
                        p.push(fields_path, "the same field twice (names are matched ignoring case)");
                    }
                }
            }
            match sources.iter().find(|s| s.id() == source.as_str()) {
                None => p.push(path, format!("no source with id '{source}' (known: {})", list(&source_ids))),
                Some(s) if !s.adds_records() => p.push(
                    path,
                    format!(
                        "source '{source}' cannot take new records from a conversation: a Salesforce source needs key_field set to an External ID field of its object (recado upserts on it)"
                    ),
                ),
                Some(_) => {}
            }
        }
    }
    let handoff = crate::handoff::config::validate(&mut p, take("handoff"), &flow_languages, &flow_template);
    if let Some(h) = &handoff {
        check_handoff(&mut p, h, &mut sources, &providers, &flows);
    }
    let opt_in = inbound.opt_in_keywords.unwrap_or_else(|| ["ALTA", "START"].map(String::from).to_vec());
    let mut reply = |name: &str, text: Option<crate::flows::config::RawText>| {
        text.map(|t| crate::flows::config::local_text(&mut p, &flow_languages, &format!("inbound.{name}"), t))
    };
    let opt_out_reply = reply("opt_out_reply", inbound.opt_out_reply);
    let opt_in_reply = reply("opt_in_reply", inbound.opt_in_reply);
    // A text longer than a provider delivers would leave the person without an answer: the bot
    // answers on the provider the person wrote through, so every provider's limit counts.
    // (Answers rendered into a flow's texts are split at run time; the texts as written are
    // the author's to keep short.)
    if let Some(provider) = providers.iter().min_by_key(|c| c.max_text_chars()) {
        let max = provider.max_text_chars();
        let mut texts: Vec<(String, &crate::flows::LocalText)> = Vec::new();
        for flow in flows.flows.values() {
            texts.extend(flow.reminder.iter().map(|(_, t)| (format!("flows.{}.reminder", flow.id), t)));
            for step in &flow.steps {
                let at = format!("flows.{}.{}", flow.id, step.id);
                match &step.kind {
                    crate::flows::StepKind::Say(t) => texts.push((format!("{at}.say"), t)),
                    crate::flows::StepKind::Ask(a) => {
                        texts.push((format!("{at}.ask.text"), &a.prompt));
                        texts.extend(a.retry.iter().map(|r| (format!("{at}.ask.retry"), r)));
                    }
                    _ => {}
                }
            }
        }
        texts.extend(opt_out_reply.iter().map(|t| ("inbound.opt_out_reply".to_string(), t)));
        texts.extend(opt_in_reply.iter().map(|t| ("inbound.opt_in_reply".to_string(), t)));
        if let Some(h) = &handoff {
            texts.extend(h.opened_reply.iter().map(|t| ("handoff.opened_reply".to_string(), t)));
            texts.extend(h.closed_reply.iter().map(|t| ("handoff.closed_reply".to_string(), t)));
        }
        for (path, text) in texts {
            for (language, t) in &text.by_language {
                let n = t.chars().count();
                if n > max {
                    p.push(
                        format!("{path}.{language}"),
                        format!("{n} characters: provider '{}' delivers at most {max}; shorten it", provider.id()),
                    );
                }
            }
        }
    }
    if let Some(entry) = &inbound.entry_flow {
        if flows.get(entry).is_none() {
            let known: Vec<&str> = flows.flows.keys().map(String::as_str).filter(|k| !k.starts_with("__")).collect();
            p.push(
                "inbound.entry_flow",
                format!(
                    "no flow '{entry}'; expected one of {}",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ),
            );
        }
    }
    // A bot that answers people tells someone who opts out that it worked (the one message an
    // opted-out person gets); the text is configuration, so it must be there.
    let converses = consent_version.is_some() || handoff.is_some() || flows.flows.keys().any(|k| !k.starts_with("__"));
    if converses && opt_out_reply.is_none() {
        p.push(
            "inbound.opt_out_reply",
            "required when recado answers people (flows or a privacy notice are configured): someone who writes an opt-out keyword is told it worked, e.g. \"Listo, no te escribiremos más. Escribe ALTA para volver.\"",
        );
    }
    if let Some(h) = &handoff {
        for (i, k) in h.keywords.iter().enumerate() {
            let taken = keywords.iter().chain(opt_in.iter()).any(|o| normalise_keyword(o) == *k);
            if taken {
                p.push(format!("handoff.keywords[{i}]"), format!("'{k}' is already an opt-out or opt-in keyword"));
            }
        }
    }
    let inbound = InboundConfig {
        opt_out_keywords: keywords.iter().map(|k| normalise_keyword(k)).collect(),
        entry_flow: inbound.entry_flow,
        default_language,
        languages,
        language_field: inbound.language_field,
        opt_in_keywords: opt_in.iter().map(|k| normalise_keyword(k)).collect(),
        opt_out_reply,
        opt_in_reply,
        consent_version,
    };

    if p.is_empty() {
        if let Some(state) = state {
            return Ok(Config {
                state,
                http,
                providers,
                sources,
                rules,
                inbound,
                defaults,
                flows: std::sync::Arc::new(flows),
                handoff,
            });
        }
    }
    Err(p.into_errors())
}

/// The `handoff:` section against the rest: its inbox is a source that can take the records
/// recado adds (not people; recado's own fields never read as changes), and its template is
/// one every provider knows.
fn check_handoff(
    p: &mut Problems,
    h: &crate::handoff::HandoffConfig,
    sources: &mut [SourceConfig],
    providers: &[ProviderConfig],
    flows: &crate::flows::FlowSet,
) {
    let ids: HashSet<String> = sources.iter().map(|s| s.id().to_string()).collect();
    if h.fields.record_id.is_some() && !sources.iter().any(|s| s.id() != h.inbox && s.keys_are_record_ids()) {
        p.push(
            "handoff.fields.record_id",
            "links the inbox record to the person's record by the id the system gives it: no source of people is keyed by it (a Salesforce object with key_field Id, e.g. Contact)",
        );
    }
    match sources.iter_mut().find(|s| s.id() == h.inbox) {
        None => p.push("handoff.inbox", format!("no source with id '{}' (known: {})", h.inbox, list(&ids))),
        Some(source) if !source.keeps_handoff_inbox() => p.push(
            "handoff.inbox",
            format!(
                "source '{}' cannot hold the hand-off inbox: it must take records recado adds (a Salesforce object needs key_field set to an External ID field, e.g. Recado_Key__c on Case)",
                h.inbox
            ),
        ),
        Some(source) => {
            // What staff fill is read at each poll.
            let staff: Vec<&str> =
                [Some(h.fields.reply.as_str()), Some(h.fields.close.as_str()), h.fields.assigned.as_deref()]
                    .into_iter()
                    .flatten()
                    .collect();
            source.read_also(&staff);
            let settings = source.settings_mut();
            // Rows of the inbox are hand-offs, not people.
            settings.person_records = Some(false);
            let same = |a: &str, b: &str| a.trim().eq_ignore_ascii_case(b.trim());
            for (name, field) in h.fields.all() {
                if same(field, &settings.key_field) || same(field, &settings.phone_field) {
                    p.push(
                        format!("handoff.fields.{name}"),
                        format!("'{field}' is the inbox's key or phone field: recado fills those itself"),
                    );
                }
            }
            // recado's own fields of the inbox, like write-back fields: never read as data.
            let own = &mut settings.write_back.rule_fields;
            for f in h.fields.recado_owned() {
                if !own.iter().any(|o| o == f) {
                    own.push(f.to_string());
                }
            }
        }
    }
    if let Some(t) = &h.reopen_template {
        for provider in providers {
            for language in t.all_languages() {
                if let Some(problem) = provider.template_problem(t, language) {
                    p.push("handoff.reopen_template", problem);
                }
            }
        }
    }
    let has_step =
        flows.flows.values().any(|f| f.steps.iter().any(|s| matches!(s.kind, crate::flows::StepKind::Handoff { .. })));
    if h.keywords.is_empty() && !has_step {
        p.push(
            "handoff.keywords",
            "nothing opens a hand-off: give keywords (e.g. [AGENTE, PERSONA]) or a flow step `handoff`",
        );
    }
}

/// An entry of a list whose `type` selects its vendor: the type, and the entry without it.
fn typed(p: &mut Problems, path: &str, entry: Value, known: &[&str]) -> Option<(String, Value)> {
    let Value::Object(mut map) = entry else {
        p.push(path, "expected a mapping with a type");
        return None;
    };
    match map.remove("type") {
        Some(Value::String(t)) if known.contains(&t.as_str()) => Some((t, Value::Object(map))),
        Some(Value::String(t)) => {
            p.push(format!("{path}.type"), format!("unknown variant `{t}`, expected one of {}", known.join(", ")));
            None
        }
        Some(_) => {
            p.push(format!("{path}.type"), format!("expected one of {}", known.join(", ")));
            None
        }
        None => {
            p.push(format!("{path}.type"), format!("missing: give one of {}", known.join(", ")));
            None
        }
    }
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

/// A template written in a flow (`say: {template: …}`), read and checked like a rule's.
fn flow_template(p: &mut Problems, path: &str, v: Value) -> Option<TemplateSpec> {
    let t = p.parse::<RawTemplate>(path, v)?;
    Some(template_spec(p, path, t))
}

fn template_spec(errs: &mut Problems, path: &str, t: RawTemplate) -> TemplateSpec {
    errs.non_empty(&format!("{path}.name"), &t.name);
    errs.non_empty(&format!("{path}.language"), &t.language);
    for (i, b) in t.body.iter().enumerate() {
        if let Err(e) = crate::expressions::check_template(b) {
            errs.push(format!("{path}.body[{i}]"), e);
        }
    }
    if let Some(s) = &t.button_url_suffix {
        if let Err(e) = crate::expressions::check_template(s) {
            errs.push(format!("{path}.button_url_suffix"), e);
        }
    }
    let body_text_chars = match t.body_text_chars {
        None => crate::config::DEFAULT_BODY_TEXT_CHARS,
        Some(n) if n < crate::config::TEMPLATE_TEXT_LIMIT as u64 => n as usize,
        Some(n) => {
            errs.push(
                format!("{path}.body_text_chars"),
                format!(
                    "expected fewer than {} characters (WhatsApp's limit for a template's text and parameters), got {n}",
                    crate::config::TEMPLATE_TEXT_LIMIT
                ),
            );
            crate::config::DEFAULT_BODY_TEXT_CHARS
        }
    };
    for (i, l) in t.languages.iter().enumerate() {
        errs.non_empty(&format!("{path}.languages[{i}]"), l);
    }
    let header = t.header.and_then(|h| {
        let at = format!("{path}.header");
        let given: Vec<(crate::domain::MediaKind, String)> = [
            (crate::domain::MediaKind::Image, h.image),
            (crate::domain::MediaKind::Document, h.document),
            (crate::domain::MediaKind::Video, h.video),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect();
        let [(kind, url)] = given.as_slice() else {
            errs.push(at, "give exactly one of image, document, video (the file's public address)");
            return None;
        };
        if let Err(e) = crate::expressions::check_template(url) {
            errs.push(format!("{at}.{}", kind.name()), e);
        } else if !url.trim_start().starts_with("{{") {
            // A whole expression (`{{ Certificado }}`) is checked when it is filled.
            errs.media_source(&format!("{at}.{}", kind.name()), *kind, url);
        }
        if h.filename.is_some() && *kind != crate::domain::MediaKind::Document {
            errs.push(format!("{at}.filename"), "only a document has a file name");
        }
        Some(crate::domain::HeaderSpec { kind: *kind, url: url.clone(), filename: h.filename })
    });
    TemplateSpec {
        header,
        name: t.name,
        language: t.language,
        languages: t.languages,
        body: t.body,
        button_url_suffix: t.button_url_suffix,
        body_text_chars,
    }
}

fn parse_trigger(errs: &mut Problems, path: &str, when: &Value) -> Option<Trigger> {
    const EXPECTED: &str =
        "expected row_added (or record_added), {changed: FIELD, to: VALUE}, {date: FIELD, offset: -2d, at: \"10:00\"} or {cron: \"0 10 1 */3 *\"}";
    match when {
        Value::String(s) if s == "row_added" || s == "record_added" => Some(Trigger::RowAdded),
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
                        errs.push(
                            format!("{path}.changed"),
                            "expected the field to watch (a column header, a field name)",
                        );
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

fn date_trigger(
    errs: &mut Problems,
    path: &str,
    map: &serde_json::Map<String, Value>,
    field: &Value,
) -> Option<Trigger> {
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
            errs.push(format!("{path}.date"), "expected the date field (a column header, a field name)");
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

fn window(
    errs: &mut Problems,
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
    fn keywords_normalise() {
        assert_eq!(normalise_keyword(" Bája "), "BAJA");
        assert_eq!(normalise_keyword("stop"), "STOP");
    }
}
