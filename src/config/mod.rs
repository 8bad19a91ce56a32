//! Configuration: YAML files (layered, with `RECADO__…` environment overrides) → validation
//! that reports every problem with its path → the typed [`Config`] the rest of the program uses.
//!
//! This module owns the shared sections (state, http, rules, inbound, defaults) and the closed
//! enums [`SourceConfig`] and [`ProviderConfig`] that dispatch each `sources[*]`/`providers[*]`
//! entry, by its `type`, to the vendor folder that owns that section's fields and validation
//! (as Vector keeps one config per component). Secrets may be given inline, by environment
//! variable (`*_env`) or by file (`*_file`, which is how systemd credentials arrive).
//!
//! A file is looked at before it is loaded ([`yaml_guard`]): size, encoding, shape, and how many
//! nodes its aliases expand to, so no file can exhaust memory.

mod raw;
pub mod schema;
mod validate;
pub mod yaml_guard;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::validation::{ConfigError, ConfigErrors, Env};
pub use validate::normalise_keyword;

use crate::providers::meta_cloud::MetaCloudConfig;
use crate::providers::twilio::TwilioConfig;
use crate::providers::ProviderSettings;
use crate::schedule::{Offset, SendWindow};
use crate::sources::google_sheets::GoogleSheetsConfig;
use crate::sources::salesforce::SalesforceConfig;
use crate::sources::SourceSettings;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub state: StateConfig,
    pub http: HttpConfig,
    pub providers: Vec<ProviderConfig>,
    pub sources: Vec<SourceConfig>,
    pub rules: Vec<RuleConfig>,
    pub inbound: InboundConfig,
    pub defaults: Defaults,
    /// The conversations (`flows:`).
    pub flows: std::sync::Arc<crate::flows::FlowSet>,
    /// The hand-off to a person (`handoff:`), when configured.
    pub handoff: Option<crate::handoff::HandoffConfig>,
}

/// Time settings every rule inherits unless it sets its own.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub time_zone: Option<chrono_tz::Tz>,
    pub window: Option<SendWindow>,
    pub lateness: Duration,
}

/// Lateness when none is configured.
pub const DEFAULT_LATENESS: Duration = Duration::from_secs(3 * 3600);

#[derive(Debug, Clone)]
pub struct StateConfig {
    pub path: PathBuf,
    pub retention: Retention,
    /// The largest file a person sends that recado keeps (`state.media_max_mb`).
    pub media_max_bytes: u64,
}

impl StateConfig {
    /// Where files people send are kept: a folder next to the state file.
    pub fn media_dir(&self) -> PathBuf {
        let mut name = self.path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".media");
        self.path.with_file_name(name)
    }
}

/// How long the store keeps what it no longer needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Raw webhook bodies, once applied.
    pub raw_webhooks: Duration,
    /// Which statuses were seen (duplicates of older ones no longer arrive).
    pub status_events: Duration,
    /// Inbound messages.
    pub inbound_messages: Duration,
    /// Files people sent (photos, documents, voice notes).
    pub media: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            raw_webhooks: Duration::from_secs(90 * 86_400),
            status_events: Duration::from_secs(90 * 86_400),
            inbound_messages: Duration::from_secs(365 * 86_400),
            media: Duration::from_secs(90 * 86_400),
        }
    }
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
    /// The dashboard's password; `None` turns the dashboard off.
    pub dashboard_password: Option<crate::domain::Secret>,
}

/// A configured provider, by vendor (closed set).
#[derive(Debug, Clone)]
pub enum ProviderConfig {
    MetaCloud(MetaCloudConfig),
    Twilio(TwilioConfig),
}

impl ProviderConfig {
    /// The provider this configuration describes, ready to send. `public_base` is where the
    /// vendor reaches recado (`http.public_url`, else the address it listens on).
    pub fn connect(&self, http: &reqwest::Client, public_base: Option<&str>) -> crate::providers::Provider {
        match self {
            ProviderConfig::MetaCloud(m) => crate::providers::Provider::MetaCloud(
                crate::providers::meta_cloud::MetaCloud::new(m.clone(), http.clone()),
            ),
            ProviderConfig::Twilio(t) => crate::providers::Provider::Twilio(crate::providers::twilio::Twilio::new(
                t.clone(),
                http.clone(),
                public_base,
            )),
        }
    }

    /// Why a rule cannot send template `t` in `language` through this provider, when the
    /// configuration can tell (Twilio maps templates to Content SIDs, which may declare their
    /// variable count; Meta knows them by name, and only `check --online` can ask).
    pub fn template_problem(&self, t: &TemplateSpec, language: &str) -> Option<String> {
        match self {
            ProviderConfig::MetaCloud(_) => None,
            // A Content template's media is part of the Content itself.
            ProviderConfig::Twilio(c) if t.header.is_some() => Some(format!(
                "provider '{}' (twilio) sends a Content template's header file from the Content itself: set the media in the Content template and leave header out",
                c.settings.id
            )),
            ProviderConfig::Twilio(c) => c.template_problem(&t.name, language, t.variables()),
        }
    }

    /// Whether this provider uploads a file on this machine through its media API and sends it
    /// by media id (Meta); otherwise files go only by public address (Twilio's `MediaUrl`).
    pub fn uploads_files(&self) -> bool {
        matches!(self, ProviderConfig::MetaCloud(_))
    }

    /// Most characters of a free text this provider delivers (Meta: WhatsApp's 4,096; Twilio:
    /// its own 1,600).
    pub fn max_text_chars(&self) -> usize {
        match self {
            ProviderConfig::MetaCloud(_) => crate::flows::MAX_TEXT_BODY,
            ProviderConfig::Twilio(_) => crate::providers::twilio::config::MAX_BODY_CHARS,
        }
    }

    /// Why the vendor could not reach recado's webhooks with this configuration, when the
    /// configuration can tell.
    pub fn reachability_problem(&self, public_url: Option<&str>) -> Option<String> {
        match self {
            // Meta's callback URL is set in its dashboard, not per message.
            ProviderConfig::MetaCloud(_) => None,
            ProviderConfig::Twilio(t) => t.reachability_problem(public_url),
        }
    }

    pub fn settings(&self) -> &ProviderSettings {
        match self {
            ProviderConfig::MetaCloud(m) => &m.settings,
            ProviderConfig::Twilio(t) => &t.settings,
        }
    }

    pub fn id(&self) -> &str {
        &self.settings().id
    }
}

/// A configured source, by vendor (closed set).
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per configured source, made once
pub enum SourceConfig {
    GoogleSheets(GoogleSheetsConfig),
    Salesforce(SalesforceConfig),
}

impl SourceConfig {
    pub fn settings(&self) -> &SourceSettings {
        match self {
            SourceConfig::GoogleSheets(g) => &g.settings,
            SourceConfig::Salesforce(s) => &s.settings,
        }
    }

    pub fn id(&self) -> &str {
        &self.settings().id
    }

    pub fn settings_mut(&mut self) -> &mut SourceSettings {
        match self {
            SourceConfig::GoogleSheets(g) => &mut g.settings,
            SourceConfig::Salesforce(s) => &mut s.settings,
        }
    }

    /// Whether a conversation can add records to it (`save: {to: …}`).
    /// A Salesforce object can when its key is a field of its own (an External ID recado
    /// upserts on), not `Id`, which Salesforce assigns.
    pub fn adds_records(&self) -> bool {
        match self {
            SourceConfig::GoogleSheets(_) => true,
            SourceConfig::Salesforce(s) => !s.settings.key_field.eq_ignore_ascii_case("Id"),
        }
    }
    /// Whether its records' keys are the ids the vendor itself gives them (a Salesforce object
    /// keyed by `Id`), so another record can point to one (a Case's `ContactId`).
    pub fn keys_are_record_ids(&self) -> bool {
        match self {
            SourceConfig::GoogleSheets(_) => false,
            SourceConfig::Salesforce(s) => s.settings.key_field.eq_ignore_ascii_case("Id"),
        }
    }
    /// Whether it can hold the hand-off inbox: records recado adds under its own keys (a
    /// Salesforce object, such as Case, with an External ID key field), and a field staff
    /// fill that recado empties only while it still holds the text it took.
    pub fn keeps_handoff_inbox(&self) -> bool {
        self.adds_records()
    }

    /// Makes sure the source reads `fields` (a Salesforce source reads only the fields it
    /// names; a table reads every column).
    pub fn read_also(&mut self, fields: &[&str]) {
        if let SourceConfig::Salesforce(s) = self {
            for f in fields {
                if !s.fields.iter().any(|have| have.eq_ignore_ascii_case(f)) {
                    s.fields.push(f.to_string());
                }
            }
        }
    }
}

/// A rule's trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    /// A key not seen before (after the baseline).
    RowAdded,
    /// `field` changed; to `to` when given (case-insensitive).
    Changed { field: String, to: Option<String> },
    /// A reminder per offset relative to the date in `field`, at local time `at` if given.
    Date { field: String, offsets: Vec<Offset>, at: Option<chrono::NaiveTime> },
    /// A recurring campaign to every matching record.
    Cron { expr: String },
}

pub use crate::domain::{TemplateSpec, DEFAULT_BODY_TEXT_CHARS, TEMPLATE_TEXT_LIMIT};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendSpec {
    Template(TemplateSpec),
    Text { body: String, fallback: Option<TemplateSpec> },
}

#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub id: String,
    pub source: String,
    pub trigger: Trigger,
    pub filter: Option<String>,
    pub provider: String,
    pub send: SendSpec,
    pub time_zone: Option<chrono_tz::Tz>,
    pub window: Option<SendWindow>,
    pub lateness: Option<Duration>,
    /// The flow that takes replies to this rule's messages (its first question is the one the
    /// template asked).
    pub on_reply: Option<String>,
    /// A reply that `on_reply`'s flow does not take opens a hand-off to a person.
    pub hands_off_other_replies: bool,
    /// The rule's own status fields, when it has them (else the source's).
    pub write_back: Option<RuleWriteBack>,
}

/// Where one rule writes its messages' status on the record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleWriteBack {
    pub status: Option<String>,
    pub status_at: Option<String>,
    pub error: Option<String>,
}

impl RuleWriteBack {
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        [&self.status, &self.status_at, &self.error].into_iter().filter_map(|f| f.as_deref())
    }
}

#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Normalised (upper case, accents removed).
    pub opt_out_keywords: Vec<String>,
    /// The flow a message nothing else handles starts.
    pub entry_flow: Option<String>,
    /// The language texts fall back to.
    pub default_language: String,
    /// Languages every flow text must have.
    pub languages: Vec<String>,
    /// The record field holding a contact's language.
    pub language_field: Option<String>,
    /// Normalised.
    pub opt_in_keywords: Vec<String>,
    pub opt_out_reply: Option<crate::flows::LocalText>,
    pub opt_in_reply: Option<crate::flows::LocalText>,
    /// The privacy notice's version when one is configured (its flow is
    /// [`crate::flows::config::CONSENT_FLOW`] in `flows`).
    pub consent_version: Option<String>,
}

/// One template the configuration sends through one provider, in one language.
#[derive(Debug, Clone)]
pub struct ProviderTemplateUse {
    pub provider: String,
    /// Where the configuration names it, e.g. `rules[2].template`.
    pub path: String,
    pub template: crate::providers::TemplateUse,
}

/// Every template `rules` and `flows` send, in each language, through each provider that may
/// carry it (a rule's own provider; for a flow, every provider, since the bot answers on the
/// one the person wrote to).
pub fn template_uses(
    rules: &[RuleConfig],
    flows: &crate::flows::FlowSet,
    provider_ids: &[&str],
) -> Vec<ProviderTemplateUse> {
    let mut out = Vec::new();
    let mut push = |provider: &str,
                    path: String,
                    t: &TemplateSpec,
                    used_by: String,
                    replies: Option<crate::providers::ReplyReader>| {
        for language in t.all_languages() {
            out.push(ProviderTemplateUse {
                provider: provider.to_string(),
                path: path.clone(),
                template: crate::providers::TemplateUse {
                    name: t.name.clone(),
                    language: language.to_string(),
                    parameters: t.body.len(),
                    url_button: t.button_url_suffix.is_some(),
                    header: t.header.as_ref().map(|h| h.kind),
                    used_by: used_by.clone(),
                    replies_read_by: replies.clone(),
                },
            });
        }
    };
    for (i, r) in rules.iter().enumerate() {
        let (t, at) = match &r.send {
            SendSpec::Template(t) => (t, "template"),
            SendSpec::Text { fallback: Some(t), .. } => (t, "fallback_template"),
            SendSpec::Text { fallback: None, .. } => continue,
        };
        // Replies to the rule's message go to its `on_reply` flow: its buttons must be answers.
        let replies = r.on_reply.as_deref().and_then(|id| flows.get(id)).map(|f| {
            let flow = f.clone();
            crate::providers::ReplyReader::new(&f.id, move |text| crate::flows::opening_accepts(&flow, text))
        });
        push(&r.provider, format!("rules[{i}].{at}"), t, format!("rule {}", r.id), replies);
    }
    for flow in flows.flows.values() {
        for step in &flow.steps {
            let crate::flows::StepKind::SayTemplate(t) = &step.kind else { continue };
            for provider in provider_ids {
                push(
                    provider,
                    format!("flows.{}.{}.say.template", flow.id, step.id),
                    t,
                    format!("flow {}", flow.id),
                    None,
                );
            }
        }
    }
    out
}

impl Config {
    /// Every template this configuration sends (see [`template_uses`]).
    pub fn template_uses(&self) -> Vec<ProviderTemplateUse> {
        let ids: Vec<&str> = self.providers.iter().map(ProviderConfig::id).collect();
        template_uses(&self.rules, &self.flows, &ids)
    }

    /// Loads and validates `paths` (later files override earlier ones), then applies
    /// `RECADO__SECTION__KEY` overrides from the process environment.
    pub fn load(paths: &[PathBuf]) -> Result<Config, ConfigErrors> {
        Self::load_with(paths, &Env::process())
    }

    /// The same, with secrets and overrides looked up in `env`.
    pub fn load_with(paths: &[PathBuf], env: &Env) -> Result<Config, ConfigErrors> {
        validate::validate(Self::merged(paths, env)?, env)
    }

    /// The files merged (later ones override earlier ones, then `RECADO__…` overrides from
    /// `env`) as one tree, before validation: what `recado sandbox --config` rewrites into a
    /// rehearsal copy.
    pub fn merged(paths: &[PathBuf], env: &Env) -> Result<serde_json::Value, ConfigErrors> {
        let mut texts = Vec::new();
        let mut problems = Vec::new();
        for p in paths {
            match std::fs::read(p) {
                Ok(bytes) => match yaml_guard::check(&bytes) {
                    Ok(text) => texts.push(text.to_string()),
                    Err(e) => problems.push(single(p, &e)),
                },
                Err(e) => problems.push(single(p, &format!("cannot read it: {e}"))),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigErrors(problems));
        }
        let origin = paths.first().map(|p| p.display().to_string()).unwrap_or_default();
        Self::merge(&texts, &origin, env)
    }

    /// Validates YAML text (used by tests and the demo); process-environment overrides apply.
    pub fn from_yaml(yaml: &str) -> Result<Config, ConfigErrors> {
        Self::from_yaml_with(yaml, &Env::process())
    }

    /// Validates YAML text with secrets and overrides looked up in `env`.
    pub fn from_yaml_with(yaml: &str, env: &Env) -> Result<Config, ConfigErrors> {
        let text =
            yaml_guard::check(yaml.as_bytes()).map_err(|e| ConfigErrors(vec![single(Path::new("<yaml>"), &e)]))?;
        Self::build(&[text.to_string()], "<yaml>", env)
    }

    fn build(texts: &[String], origin: &str, env: &Env) -> Result<Config, ConfigErrors> {
        validate::validate(Self::merge(texts, origin, env)?, env)
    }

    fn merge(texts: &[String], origin: &str, env: &Env) -> Result<serde_json::Value, ConfigErrors> {
        let mut builder = config::Config::builder();
        for t in texts {
            builder = builder.add_source(config::File::from_str(t, config::FileFormat::Yaml));
        }
        let overrides = env.with_prefix("RECADO__");
        let built = builder
            .add_source(
                config::Environment::with_prefix("RECADO")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(overrides.into_iter().collect())),
            )
            .build()
            .map_err(|e| ConfigErrors(vec![single(Path::new(origin), &e.to_string())]))?;
        built.try_deserialize().map_err(|e| ConfigErrors(vec![single(Path::new(origin), &e.to_string())]))
    }

    /// The settings of a source by id.
    pub fn source(&self, id: &str) -> Option<&SourceSettings> {
        self.sources.iter().map(SourceConfig::settings).find(|s| s.id == id)
    }
}

/// A configuration with one provider (pointing nowhere) and no source, for unit tests of the
/// loops.
#[cfg(test)]
pub(crate) fn one_provider_for_tests(state: &Path) -> Config {
    let yaml = format!(
        "state: {{path: '{}'}}\nproviders:\n  - id: w\n    type: meta_cloud\n    phone_number_id: '1'\n    access_token: t\n    app_secret: s\n    verify_token: v\n    base_url: http://127.0.0.1:9\n    pair_interval: 6s\n",
        state.display()
    );
    match Config::from_yaml_with(&yaml, &Env::fixed::<&str, &str>([])) {
        Ok(c) => c,
        Err(e) => panic!("the test configuration is invalid: {e}"),
    }
}

fn single(path: &Path, message: &str) -> ConfigError {
    ConfigError { path: path.display().to_string(), message: message.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "state:\n  path: /tmp/a.db\n";

    #[test]
    fn environment_overrides_a_file() {
        let env = Env::fixed([("RECADO__STATE__PATH", "/tmp/from-env.db")]);
        let c = Config::from_yaml_with(MINIMAL, &env).unwrap();
        assert_eq!(c.state.path, PathBuf::from("/tmp/from-env.db"));
    }

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let e = Config::from_yaml("state: [unclosed").unwrap_err();
        assert_eq!(e.0.len(), 1);
    }
}
