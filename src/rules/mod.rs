//! Rules: which record changes produce which messages (pure).
//!
//! A [`RuleSet`] is compiled once from the validated configuration. For every change a source
//! reports, [`RuleSet::evaluate`] returns what each matching rule wants: an [`Intent`] (a
//! message with its idempotency key and rendered content) or a [`Blocked`] reason (no consent,
//! invalid phone, a template that cannot be rendered). It reads no clock and does no IO.
//!
//! Filters and parameters are minijinja expressions over the row. Every field is a variable
//! under its header (`{{ Nombre }}`) and all fields are also in `row` for headers that are not
//! identifiers (`{{ row["Fecha cita"] }}`). Undefined names are errors, so a misspelt header
//! never sends an empty parameter.

use std::collections::HashSet;

use minijinja::{Environment, Value};

use crate::config::{RuleConfig, SendSpec, TemplateSpec, Trigger};
use crate::diff::Change;
use crate::domain::{same_field, Intent, MessageContent, PhoneError, PhoneNumber, Record, RecordKey, TemplateMessage};
use crate::expressions::{context_with, environment, DateStyle};

use crate::domain::TEMPLATE_TEXT_LIMIT;

pub use crate::domain::{normalise_parameters, one_line};

/// A rule matched but nothing can be sent, and why (written back to the row).
#[derive(Debug, Clone, PartialEq)]
pub struct Blocked {
    pub rule_id: String,
    pub record_key: RecordKey,
    pub reason: String,
}

/// What the rules made of one change.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    pub intents: Vec<Intent>,
    pub blocked: Vec<Blocked>,
}

/// A reminder a date rule wants for one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTimer {
    pub rule_id: String,
    pub record_key: RecordKey,
    /// The offset (`-2d`): one timer per rule, record and slot.
    pub slot: String,
    /// The date it is relative to (`2026-11-23T10:00`); a new date is a new occurrence.
    pub occurrence: String,
    pub due_at: chrono::DateTime<chrono::Utc>,
}

impl PlannedTimer {
    /// The message's idempotency occurrence: `-2d@2026-11-23T10:00`.
    pub fn occurrence_key(&self) -> String {
        format!("{}@{}", self.slot, self.occurrence)
    }
}

/// What a date rule makes of one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimerPlan {
    Due(PlannedTimer),
    /// Its time passed longer ago than the rule's lateness: never sent.
    TooLate(PlannedTimer),
    /// Filter, consent or phone: no timer.
    Ineligible {
        rule_id: String,
        reason: String,
    },
    /// The date cell cannot be read: reported on the row.
    BadDate {
        rule_id: String,
        reason: String,
    },
}

/// What planning needs to know about time.
#[derive(Debug, Clone)]
pub struct TimeContext<'a> {
    pub now: chrono::DateTime<chrono::Utc>,
    /// The source's zone.
    pub source_tz: chrono_tz::Tz,
    /// The record's own zone (time-zone column), when it has a valid one.
    pub record_tz: Option<chrono_tz::Tz>,
    pub defaults: &'a crate::config::Defaults,
    pub date_order: crate::schedule::DateOrder,
}

impl TimeContext<'_> {
    /// The zone a rule's local times are in for this record: the record's, else the rule's,
    /// else the configured default, else the source's.
    pub fn zone_for(&self, r: &RuleConfig) -> chrono_tz::Tz {
        self.record_tz.or(r.time_zone).or(self.defaults.time_zone).unwrap_or(self.source_tz)
    }

    /// When a message created now may go out: now, or the next minute the sending window allows.
    pub fn send_at(&self, r: &RuleConfig) -> chrono::DateTime<chrono::Utc> {
        match r.window.as_ref().or(self.defaults.window.as_ref()) {
            Some(w) => w.next_allowed(self.now, self.zone_for(r)),
            None => self.now,
        }
    }
}

/// Facts about a record that rules need besides its fields.
#[derive(Debug, Clone)]
pub struct RecordFacts<'a> {
    pub phone: &'a Result<PhoneNumber, PhoneError>,
    /// `None` when the source has no consent field.
    pub consent: Option<bool>,
    /// Fields whose change may unblock a `row_added` rule (phone, consent).
    pub gate_columns: &'a [&'a str],
    /// How the record's source writes and shows dates.
    pub dates: &'a DateStyle,
}

struct CompiledRule {
    config: RuleConfig,
}

/// All rules, compiled.
pub struct RuleSet {
    env: Environment<'static>,
    rules: Vec<CompiledRule>,
    /// Every name the rules' expressions use, so a name that matches a field only by case is a
    /// variable too.
    aliases: Vec<String>,
}

impl RuleSet {
    /// Compiles the rules. Configuration validation already checked every template, so an
    /// error here is a bug, reported as a plain message.
    pub fn compile(rules: &[RuleConfig]) -> Result<Self, String> {
        let mut env = environment();
        for r in rules {
            if let Some(f) = &r.filter {
                env.add_template_owned(format!("{}#if", r.id), format!("{{% if {f} %}}1{{% endif %}}"))
                    .map_err(|e| format!("rule {}: filter: {e}", r.id))?;
            }
            let mut add = |name: String, src: &str| {
                env.add_template_owned(name, src.to_string()).map_err(|e| format!("rule {}: {e}", r.id))
            };
            match &r.send {
                SendSpec::Template(t) => add_template_spec(&mut add, &r.id, "t", t)?,
                SendSpec::Text { body, fallback } => {
                    add(format!("{}#text", r.id), body)?;
                    if let Some(t) = fallback {
                        add_template_spec(&mut add, &r.id, "f", t)?;
                    }
                }
            }
        }
        let mut aliases: Vec<String> = Vec::new();
        let mut sources: Vec<&str> = rules.iter().map(|r| r.source.as_str()).collect();
        sources.sort_unstable();
        sources.dedup();
        for s in sources {
            aliases.extend(referenced_fields(rules, s));
        }
        aliases.sort();
        aliases.dedup();
        Ok(Self { env, rules: rules.iter().cloned().map(|config| CompiledRule { config }).collect(), aliases })
    }

    pub fn rule_ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.config.id.as_str())
    }

    /// Rules watching `source_id`.
    pub fn for_source<'a>(&'a self, source_id: &'a str) -> impl Iterator<Item = &'a RuleConfig> + 'a {
        self.rules.iter().map(|r| &r.config).filter(move |r| r.source == source_id)
    }

    /// Evaluates every rule of `source_id` against one change of `record`.
    pub fn evaluate(&self, source_id: &str, change: &Change, record: &Record, facts: &RecordFacts<'_>) -> Outcome {
        let mut out = Outcome::default();
        for rule in self.rules.iter().filter(|r| r.config.source == source_id) {
            let r = &rule.config;
            let occurrence = match (&r.trigger, change) {
                (Trigger::RowAdded, Change::Added(_)) => Some("added".to_string()),
                // A row that could not be messaged when it appeared (no consent, bad phone) gets
                // its welcome when that is fixed; the idempotency key stops a second one.
                (Trigger::RowAdded, Change::Changed { fields, .. })
                    if fields.iter().any(|f| facts.gate_columns.iter().any(|g| same_field(g, &f.field))) =>
                {
                    Some("added".to_string())
                }
                (Trigger::Changed { field, to }, Change::Changed { fields, .. }) => fields
                    .iter()
                    .find(|f| same_field(&f.field, field))
                    .filter(|f| {
                        to.as_ref().is_none_or(|want| f.new.trim().to_lowercase() == want.trim().to_lowercase())
                    })
                    .map(|f| match to {
                        Some(want) => format!("{field}={}", want.trim().to_lowercase()),
                        None => format!("{field}={}", f.new),
                    }),
                _ => None,
            };
            let Some(occurrence) = occurrence else { continue };
            // The gate path only ever unblocks: a row that is still blocked was reported when
            // it appeared, and an opt-out written to the consent column must not read as news.
            let gate_path = matches!((&r.trigger, change), (Trigger::RowAdded, Change::Changed { .. }));
            if let Some(outcome) = self.apply(r, &occurrence, record, facts) {
                match outcome {
                    Ok(intent) => out.intents.push(intent),
                    Err(_) if gate_path => {}
                    Err(reason) => {
                        out.blocked.push(Blocked { rule_id: r.id.clone(), record_key: record.key.clone(), reason })
                    }
                }
            }
        }
        out
    }

    /// Filter, gates and rendering for one rule that triggered. `None` when the filter does
    /// not match (nothing to report).
    /// Filter, consent and phone, without rendering anything. `None`: the filter does not match.
    fn eligible_with(&self, r: &RuleConfig, ctx: &Value, facts: &RecordFacts<'_>) -> Option<Result<(), String>> {
        if r.filter.is_some() {
            match self.render(&format!("{}#if", r.id), ctx) {
                Ok(s) if s == "1" => {}
                Ok(_) => return None,
                Err(e) => return Some(Err(format!("rule {}: filter failed: {e}", r.id))),
            }
        }
        if facts.consent == Some(false) {
            return Some(Err("not sent: no consent".to_string()));
        }
        if let Err(e) = facts.phone {
            return Some(Err(format!("not sent: {e}")));
        }
        Some(Ok(()))
    }

    fn apply(
        &self,
        r: &RuleConfig,
        occurrence: &str,
        record: &Record,
        facts: &RecordFacts<'_>,
    ) -> Option<Result<Intent, String>> {
        let ctx = context_with(record, facts.dates, &self.aliases);
        match self.eligible_with(r, &ctx, facts) {
            None => return None,
            Some(Err(e)) => return Some(Err(e)),
            Some(Ok(())) => {}
        }
        let phone = match facts.phone {
            Ok(p) => p.clone(),
            Err(e) => return Some(Err(format!("not sent: {e}"))),
        };
        let mut adjustments = Vec::new();
        let rendered = match &r.send {
            SendSpec::Template(t) => self.render_template(&r.id, "t", t, &ctx, &mut adjustments).map(|c| (c, None)),
            SendSpec::Text { fallback, .. } => self.render(&format!("{}#text", r.id), &ctx).and_then(|body| {
                let fb = match fallback {
                    Some(t) => Some(self.render_template(&r.id, "f", t, &ctx, &mut adjustments)?),
                    None => None,
                };
                Ok((MessageContent::Text { body }, fb))
            }),
        };
        Some(match rendered {
            Ok((content, fallback)) => Ok(Intent {
                rule_id: r.id.clone(),
                source_id: r.source.clone(),
                record_key: record.key.clone(),
                provider_id: r.provider.clone(),
                idempotency_key: format!("{}:{}:{}", r.id, record.key.0, occurrence),
                phone,
                content,
                fallback,
                adjustments,
            }),
            Err(e) => Err(format!("rule {}: {e}", r.id)),
        })
    }

    /// The rule with this id.
    pub fn rule(&self, rule_id: &str) -> Option<&RuleConfig> {
        self.rules.iter().map(|r| &r.config).find(|r| r.id == rule_id)
    }

    /// The message a rule would send to `record` for `occurrence` (timers and campaigns), with
    /// filter, consent and phone checked against the record as it is now. `None` when the filter
    /// does not match.
    pub fn intent_for(
        &self,
        rule_id: &str,
        occurrence: &str,
        record: &Record,
        facts: &RecordFacts<'_>,
    ) -> Option<Result<Intent, String>> {
        let r = self.rule(rule_id)?;
        self.apply(r, occurrence, record, facts)
    }

    /// What the date rules of `source_id` want for one record: a timer per offset, or why not.
    pub fn plan_timers(
        &self,
        source_id: &str,
        record: &Record,
        facts: &RecordFacts<'_>,
        time: &TimeContext<'_>,
    ) -> Vec<TimerPlan> {
        let mut out = Vec::new();
        for rule in self.rules.iter().filter(|r| r.config.source == source_id) {
            let r = &rule.config;
            let Trigger::Date { field, offsets, at } = &r.trigger else { continue };
            // Eligibility now (filter, consent, phone); re-checked, and the message rendered, when
            // the timer fires. The record's template context is built only when a rule has a filter.
            let eligible = match &r.filter {
                Some(_) => self.eligible_with(r, &context_with(record, facts.dates, &self.aliases), facts),
                None => self.eligible_with(r, &Value::UNDEFINED, facts),
            };
            match eligible {
                None => {
                    out.push(TimerPlan::Ineligible {
                        rule_id: r.id.clone(),
                        reason: "does not match the rule's filter".into(),
                    });
                    continue;
                }
                Some(Err(reason)) => {
                    out.push(TimerPlan::Ineligible { rule_id: r.id.clone(), reason });
                    continue;
                }
                Some(Ok(_)) => {}
            }
            let text = record.text(field);
            if text.is_empty() {
                out.push(TimerPlan::Ineligible { rule_id: r.id.clone(), reason: format!("no date in {field}") });
                continue;
            }
            let date = match crate::schedule::parse_date(&text, time.date_order) {
                Ok(d) => d,
                Err(e) => {
                    out.push(TimerPlan::BadDate { rule_id: r.id.clone(), reason: format!("{field}: {e}") });
                    continue;
                }
            };
            let tz = time.zone_for(r);
            let lateness = r.lateness.unwrap_or(time.defaults.lateness);
            for offset in offsets {
                let Some(due_at) = crate::schedule::fire_at(&date, *offset, *at, tz) else { continue };
                let timer = PlannedTimer {
                    rule_id: r.id.clone(),
                    record_key: record.key.clone(),
                    slot: offset.to_string(),
                    occurrence: date.to_string(),
                    due_at,
                };
                if crate::schedule::too_late(due_at, time.now, lateness) {
                    out.push(TimerPlan::TooLate(timer));
                } else {
                    out.push(TimerPlan::Due(timer));
                }
            }
        }
        out
    }

    fn render(&self, name: &str, ctx: &Value) -> Result<String, String> {
        let t = self.env.get_template(name).map_err(|e| e.to_string())?;
        t.render(ctx).map_err(|e| match e.detail() {
            Some(d) => d.to_string(),
            None => e.to_string(),
        })
    }

    fn render_template(
        &self,
        rule: &str,
        tag: &str,
        t: &TemplateSpec,
        ctx: &Value,
        adjustments: &mut Vec<String>,
    ) -> Result<MessageContent, String> {
        let mut body = Vec::with_capacity(t.body.len());
        for i in 0..t.body.len() {
            let v = self
                .render(&format!("{rule}#{tag}.body.{i}"), ctx)
                .map_err(|e| format!("template parameter {}: {e}", i + 1))?;
            if v.trim().is_empty() {
                return Err(format!("template parameter {} is empty ({})", i + 1, t.body[i]));
            }
            body.push(v);
        }
        // Adjustments are visible in the content (and so in `recado plan`) and returned for the
        // engine to log: the rules are pure.
        let budget = TEMPLATE_TEXT_LIMIT.saturating_sub(t.body_text_chars);
        adjustments.extend(normalise_parameters(&mut body, budget));
        let button_url_suffix = match &t.button_url_suffix {
            Some(_) => {
                let suffix =
                    self.render(&format!("{rule}#{tag}.button"), ctx).map_err(|e| format!("button URL: {e}"))?;
                Some(match one_line(&suffix) {
                    Some(fixed) => {
                        adjustments.push("button URL: line breaks, tabs or repeated spaces replaced".into());
                        fixed
                    }
                    None => suffix,
                })
            }
            None => None,
        };
        let header = match &t.header {
            Some(h) => {
                let link =
                    self.render(&format!("{rule}#{tag}.header"), ctx).map_err(|e| format!("header file: {e}"))?;
                let link = crate::domain::media_link(&h.url, &link).map_err(|e| format!("header file: {e}"))?;
                Some(crate::domain::HeaderMedia { kind: h.kind, link, filename: h.filename.clone() })
            }
            None => None,
        };
        Ok(MessageContent::Template(TemplateMessage {
            name: t.name.clone(),
            language: t.language.clone(),
            body,
            button_url_suffix,
            header,
        }))
    }
}

fn add_template_spec(
    add: &mut impl FnMut(String, &str) -> Result<(), String>,
    rule: &str,
    tag: &str,
    t: &TemplateSpec,
) -> Result<(), String> {
    for (i, b) in t.body.iter().enumerate() {
        add(format!("{rule}#{tag}.body.{i}"), b)?;
    }
    if let Some(s) = &t.button_url_suffix {
        add(format!("{rule}#{tag}.button"), s)?;
    }
    if let Some(h) = &t.header {
        add(format!("{rule}#{tag}.header"), &h.url)?;
    }
    Ok(())
}

/// Field names the rules of `source_id` refer to in their filters, templates and texts (the
/// top-level variables; fields under `row[...]` are not seen).
pub fn referenced_fields(rules: &[RuleConfig], source_id: &str) -> Vec<String> {
    referenced(rules, source_id, false)
}

/// Every field the configuration names in source `id`, with what names it.
pub fn named_fields(config: &crate::config::Config, id: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let Some(s) = config.source(id) else {
        return out;
    };
    out.push((s.key_field.clone(), "key".into()));
    out.push((s.phone_field.clone(), "phone".into()));
    if let Some(c) = &s.consent {
        out.push((c.field.clone(), "consent".into()));
    }
    if let Some(f) = &s.time_zone_field {
        out.push((f.clone(), "time_zone".into()));
    }
    if let Some(f) = &config.inbound.language_field {
        out.push((f.clone(), "inbound.language_field".into()));
    }
    for f in s.write_back.fields() {
        out.push((f.to_string(), "write_back".into()));
    }
    for r in config.rules.iter().filter(|r| r.source == id) {
        match &r.trigger {
            Trigger::Changed { field, .. } | Trigger::Date { field, .. } => {
                out.push((field.clone(), format!("rule {}", r.id)))
            }
            Trigger::RowAdded | Trigger::Cron { .. } => {}
        }
    }
    // Which rules' texts and filters read each field, so the finding names them.
    let mut readers: std::collections::BTreeMap<String, Vec<&str>> = std::collections::BTreeMap::new();
    for r in config.rules.iter().filter(|r| r.source == id) {
        for f in crate::rules::referenced_paths(std::slice::from_ref(r), id) {
            readers.entry(f).or_default().push(r.id.as_str());
        }
    }
    for (f, rules) in readers {
        out.push((f, format!("the text or filter of rule {}", rules.join(", "))));
    }
    let mut seen = std::collections::HashSet::new();
    out.retain(|(f, _)| seen.insert(f.clone()));
    out
}

/// Fields a source's rules cannot work without (what triggers watch, and the consent field):
/// a read without one of them fails and names it, instead of every record looking changed or
/// without consent.
pub fn required_fields<'a>(
    rules: impl Iterator<Item = &'a RuleConfig>,
    settings: &crate::sources::SourceSettings,
) -> Vec<String> {
    let mut required: Vec<String> = rules
        .filter_map(|r| match &r.trigger {
            Trigger::Changed { field, .. } | Trigger::Date { field, .. } => Some(field.clone()),
            Trigger::RowAdded | Trigger::Cron { .. } => None,
        })
        .chain(settings.consent.iter().map(|c| c.field.clone()))
        .collect();
    required.sort();
    required.dedup();
    required
}

/// What only the rules, compiled, can tell about a configuration: a rule that watches or reads
/// a field recado writes itself (`write_back`, the source's or a rule's own). Such a field is
/// never read as data, so the trigger would never fire and the text would fail on every record.
pub fn config_problems(config: &crate::config::Config) -> Vec<crate::config::ConfigError> {
    let mut out = Vec::new();
    for (i, r) in config.rules.iter().enumerate() {
        let Some(s) = config.source(&r.source) else { continue };
        let written: Vec<String> = s.write_back.fields().iter().map(|f| f.trim().to_lowercase()).collect();
        let is_written = |f: &str| written.contains(&f.trim().to_lowercase());
        if let Trigger::Changed { field, .. } | Trigger::Date { field, .. } = &r.trigger {
            if is_written(field) {
                out.push(crate::config::ConfigError {
                    path: format!("rules[{i}].when"),
                    message: format!("'{field}' is a field recado writes (write_back): a rule cannot watch it"),
                });
            }
        }
        for f in referenced_paths(std::slice::from_ref(r), &r.source) {
            if is_written(&f) {
                out.push(crate::config::ConfigError {
                    path: format!("rules[{i}]"),
                    message: format!(
                        "its text or filter reads '{f}', a field recado writes (write_back), which is never read as data"
                    ),
                });
            }
        }
    }
    out
}

/// As [`referenced_fields`], with attribute access kept as a path: `{{ Contacto__r.FirstName }}`
/// gives `Contacto__r.FirstName` (a source that reads fields by name selects these).
pub fn referenced_paths(rules: &[RuleConfig], source_id: &str) -> Vec<String> {
    referenced(rules, source_id, true)
}

fn referenced(rules: &[RuleConfig], source_id: &str, nested: bool) -> Vec<String> {
    let env = environment();
    let mut out: HashSet<String> = HashSet::new();
    let mut add = |text: &str| {
        if let Ok(t) = env.template_from_str(text) {
            out.extend(t.undeclared_variables(nested));
        }
    };
    for r in rules.iter().filter(|r| r.source == source_id) {
        if let Some(f) = &r.filter {
            add(&format!("{{% if {f} %}}{{% endif %}}"));
        }
        let mut specs: Vec<&TemplateSpec> = Vec::new();
        match &r.send {
            SendSpec::Template(t) => specs.push(t),
            SendSpec::Text { body, fallback } => {
                add(body);
                specs.extend(fallback.iter());
            }
        }
        for t in specs {
            for b in &t.body {
                add(b);
            }
            if let Some(s) = &t.button_url_suffix {
                add(s);
            }
        }
    }
    // `row` holds every field (`row.Fecha__c`, `row['Fecha cita']`): not a field itself.
    out.retain(|name| name != "row" && !name.starts_with("row."));
    let mut v: Vec<String> = out.into_iter().collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::FieldChange;
    use crate::domain::CellValue;

    const DATES: DateStyle = DateStyle { order: crate::schedule::DateOrder::Dmy, format: None };

    fn record(fields: &[(&str, &str)]) -> Record {
        Record {
            key: RecordKey("7".into()),
            fields: fields.iter().map(|(k, v)| (k.to_string(), CellValue::Text((*v).into()))).collect(),
        }
    }

    fn rule(trigger: Trigger, filter: Option<&str>, send: SendSpec) -> RuleConfig {
        RuleConfig {
            id: "r".into(),
            source: "s".into(),
            trigger,
            filter: filter.map(String::from),
            provider: "whatsapp".into(),
            send,
            time_zone: None,
            window: None,
            lateness: None,
            on_reply: None,
            hands_off_other_replies: false,
            write_back: None,
        }
    }

    fn tmpl(body: &[&str], button: Option<&str>) -> SendSpec {
        SendSpec::Template(TemplateSpec {
            name: "confirmacion".into(),
            language: "es".into(),
            languages: Vec::new(),
            body: body.iter().map(|s| s.to_string()).collect(),
            button_url_suffix: button.map(String::from),
            body_text_chars: crate::config::DEFAULT_BODY_TEXT_CHARS,
            header: None,
        })
    }

    fn ok_phone() -> Result<PhoneNumber, PhoneError> {
        Ok(PhoneNumber::from_e164_unchecked("+56912345678"))
    }

    fn eval(rules: &[RuleConfig], change: &Change, rec: &Record, consent: Option<bool>) -> Outcome {
        let set = RuleSet::compile(rules).unwrap();
        let phone = ok_phone();
        set.evaluate(
            "s",
            change,
            rec,
            &RecordFacts { phone: &phone, consent, gate_columns: &["Consentimiento", "Teléfono"], dates: &DATES },
        )
    }

    #[test]
    fn row_added_renders_parameters_and_key() {
        let rec = record(&[("Nombre", "Ana"), ("Curso", "Soldadura"), ("ID", "A 7")]);
        let out = eval(
            &[rule(
                Trigger::RowAdded,
                None,
                tmpl(&["{{ Nombre }}", "{{ row['Curso'] }}"], Some("{{ ID | urlencode }}")),
            )],
            &Change::Added(rec.key.clone()),
            &rec,
            Some(true),
        );
        assert_eq!(out.blocked, vec![]);
        let i = &out.intents[0];
        assert_eq!(i.idempotency_key, "r:7:added");
        match &i.content {
            MessageContent::Template(t) => {
                assert_eq!(t.body, vec!["Ana", "Soldadura"]);
                assert_eq!(t.button_url_suffix.as_deref(), Some("A%207"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn changed_to_value_fires_only_for_that_value() {
        let r = rule(
            Trigger::Changed { field: "Estado".into(), to: Some("Egresado".into()) },
            None,
            tmpl(&["{{ Nombre }}"], None),
        );
        let rec = record(&[("Nombre", "Ana"), ("Estado", "egresado ")]);
        let ch = |new: &str| Change::Changed {
            key: rec.key.clone(),
            fields: vec![FieldChange { field: "Estado".into(), old: "Activo".into(), new: new.into() }],
        };
        let out = eval(std::slice::from_ref(&r), &ch("egresado "), &rec, None);
        assert_eq!(out.intents.len(), 1);
        assert_eq!(out.intents[0].idempotency_key, "r:7:Estado=egresado");
        assert!(eval(std::slice::from_ref(&r), &ch("Activo"), &rec, None).intents.is_empty());
        assert!(eval(&[r], &Change::Added(rec.key.clone()), &rec, None).intents.is_empty());
    }

    #[test]
    fn filter_consent_and_phone_gates() {
        let rec = record(&[("Nombre", "Ana"), ("Curso", "Gasfitería")]);
        let added = Change::Added(rec.key.clone());
        let filtered = rule(Trigger::RowAdded, Some("Curso == 'Soldadura'"), tmpl(&["{{ Nombre }}"], None));
        assert_eq!(eval(&[filtered], &added, &rec, Some(true)), Outcome::default());
        let plain = rule(Trigger::RowAdded, None, tmpl(&["{{ Nombre }}"], None));
        let out = eval(std::slice::from_ref(&plain), &added, &rec, Some(false));
        assert_eq!(out.blocked[0].reason, "not sent: no consent");
        let set = RuleSet::compile(&[plain]).unwrap();
        let bad: Result<PhoneNumber, PhoneError> = Err(PhoneError::Unparseable(crate::domain::MaskedText::new("abc")));
        let out = set.evaluate(
            "s",
            &added,
            &rec,
            &RecordFacts { phone: &bad, consent: None, gate_columns: &[], dates: &DATES },
        );
        assert_eq!(out.blocked[0].reason, "not sent: 'abc' is not a phone number");
    }

    #[test]
    fn consent_given_later_unblocks_the_welcome() {
        let rec = record(&[("Nombre", "Ana"), ("Consentimiento", "Sí")]);
        let ch = Change::Changed {
            key: rec.key.clone(),
            fields: vec![FieldChange { field: "Consentimiento".into(), old: "".into(), new: "Sí".into() }],
        };
        let out = eval(&[rule(Trigger::RowAdded, None, tmpl(&["{{ Nombre }}"], None))], &ch, &rec, Some(true));
        assert_eq!(out.intents[0].idempotency_key, "r:7:added");
    }

    #[test]
    fn misspelt_field_blocks_with_reason_instead_of_sending_blank() {
        let rec = record(&[("Nombre", "Ana")]);
        let out = eval(
            &[rule(Trigger::RowAdded, None, tmpl(&["{{ Nombres }}"], None))],
            &Change::Added(rec.key.clone()),
            &rec,
            None,
        );
        assert!(out.intents.is_empty());
        assert!(out.blocked[0].reason.contains("template parameter 1"), "{}", out.blocked[0].reason);
        let rec = record(&[("Nombre", "")]);
        let out = eval(
            &[rule(Trigger::RowAdded, None, tmpl(&["{{ Nombre }}"], None))],
            &Change::Added(rec.key.clone()),
            &rec,
            None,
        );
        assert!(out.blocked[0].reason.contains("is empty"));
    }

    #[test]
    fn text_with_fallback() {
        let send = SendSpec::Text {
            body: "Hola {{ Nombre }}".into(),
            fallback: Some(TemplateSpec {
                name: "hola".into(),
                language: "es".into(),
                languages: Vec::new(),
                body: vec!["{{ Nombre }}".into()],
                button_url_suffix: None,
                body_text_chars: crate::config::DEFAULT_BODY_TEXT_CHARS,
                header: None,
            }),
        };
        let rec = record(&[("Nombre", "Ana")]);
        let out = eval(&[rule(Trigger::RowAdded, None, send)], &Change::Added(rec.key.clone()), &rec, None);
        assert_eq!(out.intents[0].content, MessageContent::Text { body: "Hola Ana".into() });
        assert!(matches!(&out.intents[0].fallback, Some(MessageContent::Template(t)) if t.body == vec!["Ana"]));
    }

    #[test]
    fn zones_and_quiet_hours_follow_the_most_specific_setting() {
        use crate::config::Defaults;
        let santiago: chrono_tz::Tz = "America/Santiago".parse().unwrap();
        let madrid: chrono_tz::Tz = "Europe/Madrid".parse().unwrap();
        let mexico: chrono_tz::Tz = "America/Mexico_City".parse().unwrap();
        let window = crate::schedule::SendWindow::parse(Some("09:00-20:00"), &[], &[]).unwrap();
        let defaults =
            Defaults { time_zone: Some(madrid), window: Some(window), lateness: std::time::Duration::from_secs(3600) };
        // 02:00 UTC: 23:00 the day before in Santiago (UTC-3), 20:00 in Mexico City (UTC-6).
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-10T02:00:00Z").unwrap().with_timezone(&chrono::Utc);
        let mut r = rule(Trigger::RowAdded, None, tmpl(&["x"], None));
        let time = |record_tz| TimeContext {
            now,
            source_tz: santiago,
            record_tz,
            defaults: &defaults,
            date_order: Default::default(),
        };
        assert_eq!(time(None).zone_for(&r), madrid, "the default beats the source's");
        r.time_zone = Some(santiago);
        assert_eq!(time(None).zone_for(&r), santiago, "the rule's beats the default");
        assert_eq!(time(Some(mexico)).zone_for(&r), mexico, "the person's own zone beats all");
        // Outside 09:00-20:00 in the person's zone: deferred to 09:00 there.
        let at = time(Some(mexico)).send_at(&r);
        assert_eq!(at.with_timezone(&mexico).format("%Y-%m-%d %H:%M").to_string(), "2026-12-10 09:00");
        r.window = Some(crate::schedule::SendWindow::parse(Some("00:00-23:59"), &[], &[]).unwrap());
        assert_eq!(time(Some(mexico)).send_at(&r), now, "the rule's window beats the default's");
    }

    #[test]
    fn dates_render_with_the_date_filter() {
        let mut rec = record(&[("Nombre", "Ana")]);
        rec.fields.insert("Fecha".into(), CellValue::Number(46354.625));
        let out = eval(
            &[rule(Trigger::RowAdded, None, tmpl(&["{{ Fecha | date }}", "{{ Fecha | date('%Y-%m-%d') }}"], None))],
            &Change::Added(rec.key.clone()),
            &rec,
            None,
        );
        match &out.intents[0].content {
            MessageContent::Template(t) => assert_eq!(t.body, vec!["28/11/2026 15:00", "2026-11-28"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parameters_are_made_acceptable_to_whatsapp() {
        let mut p = vec!["Av. Grecia 123\nDepto 4".to_string(), "a\tb     c".to_string(), "ok".to_string()];
        let notes = normalise_parameters(&mut p, 824);
        assert_eq!(p, vec!["Av. Grecia 123 Depto 4", "a b c", "ok"]);
        assert_eq!(notes.len(), 2);
        let mut long = vec!["x".repeat(2000), "y".repeat(10)];
        normalise_parameters(&mut long, 824);
        assert!(long.iter().map(|s| s.chars().count()).sum::<usize>() <= 824);
        assert!(long[0].ends_with('…'));
        assert_eq!(long[1], "y".repeat(10), "the short one is left alone");
    }

    #[test]
    fn a_multi_line_cell_is_sent_on_one_line() {
        let rec = record(&[("Nombre", "Ana"), ("Dirección", "Calle 1\n\nCasa 2")]);
        let out = eval(
            &[rule(Trigger::RowAdded, None, tmpl(&["{{ Dirección }}"], None))],
            &Change::Added(rec.key.clone()),
            &rec,
            None,
        );
        match &out.intents[0].content {
            MessageContent::Template(t) => assert_eq!(t.body, vec!["Calle 1 Casa 2"]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn referenced_fields_are_found() {
        let r = rule(
            Trigger::RowAdded,
            Some("Curso == 'x'"),
            tmpl(&["{{ Nombre }} {{ row['Otro'] }}"], Some("{{ ID | urlencode }}")),
        );
        assert_eq!(referenced_fields(std::slice::from_ref(&r), "s"), vec!["Curso", "ID", "Nombre"]);
        let sf = rule(
            Trigger::RowAdded,
            None,
            tmpl(&["{{ Contacto__r.FirstName }} {{ Fecha__c | date }} {{ row.Centro__c }}"], None),
        );
        assert_eq!(referenced_paths(&[sf], "s"), vec!["Contacto__r.FirstName", "Fecha__c"]);
    }
}
