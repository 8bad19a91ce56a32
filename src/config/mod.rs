//! Configuration: YAML files (layered, with `RECADO__…` environment overrides) → raw serde
//! structs that reject unknown keys → [`validate`](validate::validate) → the typed [`Config`]
//! the rest of the program uses.
//!
//! Validation never stops at the first problem: `recado check` prints every error with its path
//! (`rules[2].when.changed`) and what was expected. Secrets may be given inline, by environment
//! variable (`*_env`) or by file (`*_file`, which is how systemd credentials arrive).

mod raw;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use validate::{normalise_keyword, parse_duration};

use crate::schedule::{DateOrder, Offset, SendWindow};

/// A secret value; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

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
}

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    pub public_url: Option<String>,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub enum ProviderConfig {
    MetaCloud(MetaCloudConfig),
}

impl ProviderConfig {
    pub fn id(&self) -> &str {
        match self {
            ProviderConfig::MetaCloud(m) => &m.id,
        }
    }
}

#[derive(Debug, Clone)]
pub struct MetaCloudConfig {
    pub id: String,
    pub phone_number_id: String,
    pub access_token: Secret,
    pub app_secret: Secret,
    pub verify_token: Secret,
    pub api_version: String,
    /// Without trailing slash, e.g. `https://graph.facebook.com`.
    pub base_url: String,
    pub messages_per_second: f64,
    pub pair_interval: Duration,
    pub max_in_flight: usize,
    pub max_attempts: u32,
}

#[derive(Debug, Clone)]
pub enum SourceConfig {
    GoogleSheets(GoogleSheetsConfig),
}

impl SourceConfig {
    pub fn id(&self) -> &str {
        match self {
            SourceConfig::GoogleSheets(g) => &g.id,
        }
    }
}

/// Whether rows that exist at first start count as added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstStart {
    Baseline,
    ProcessExisting,
}

#[derive(Debug, Clone)]
pub struct GoogleSheetsConfig {
    pub id: String,
    pub spreadsheet_id: String,
    pub tab: String,
    pub key_column: String,
    pub phone_column: String,
    pub default_region: phonenumber::country::Id,
    pub poll_interval: Duration,
    pub flush_interval: Duration,
    /// The service-account key JSON.
    pub service_account_key: Secret,
    /// With trailing slash, e.g. `https://sheets.googleapis.com/`.
    pub sheets_base_url: String,
    /// With trailing slash, e.g. `https://www.googleapis.com/`.
    pub drive_base_url: String,
    pub requests_per_minute: u32,
    pub first_start: FirstStart,
    pub consent: Option<ConsentConfig>,
    pub write_back: WriteBackColumns,
    pub date_order: DateOrder,
    pub time_zone_column: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ConsentConfig {
    pub column: String,
    /// Lower-cased.
    pub granted_values: Vec<String>,
    pub opted_out_value: String,
}

impl ConsentConfig {
    pub fn is_granted(&self, value: &str) -> bool {
        let v = value.trim().to_lowercase();
        self.granted_values.contains(&v)
    }
}

/// The columns recado writes. `None` means "do not write this".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBackColumns {
    pub status: Option<String>,
    pub status_at: Option<String>,
    pub error: Option<String>,
    pub last_reply: Option<String>,
    pub last_reply_at: Option<String>,
}

impl WriteBackColumns {
    /// Every configured write-back header.
    pub fn headers(&self) -> Vec<&str> {
        [&self.status, &self.status_at, &self.error, &self.last_reply, &self.last_reply_at]
            .into_iter()
            .filter_map(|c| c.as_deref())
            .collect()
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    pub name: String,
    pub language: String,
    pub body: Vec<String>,
    pub button_url_suffix: Option<String>,
}

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
}

#[derive(Debug, Clone)]
pub struct InboundConfig {
    /// Normalised (upper case, accents removed).
    pub opt_out_keywords: Vec<String>,
}

/// One configuration problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `rules[2].when.changed`, or the file for YAML syntax errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the configuration:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Config {
    /// Loads and validates `paths` (later files override earlier ones), then applies
    /// `RECADO__SECTION__KEY` environment overrides.
    pub fn load(paths: &[PathBuf]) -> Result<Config, ConfigErrors> {
        let mut builder = config::Config::builder();
        for p in paths {
            if !p.exists() {
                return Err(single(p, "file not found"));
            }
            builder = builder.add_source(config::File::from(p.as_path()).format(config::FileFormat::Yaml));
        }
        Self::build(builder, paths.first().map(|p| p.display().to_string()).unwrap_or_default())
    }

    /// Validates YAML text (used by tests and the demo); environment overrides apply too.
    pub fn from_yaml(yaml: &str) -> Result<Config, ConfigErrors> {
        let builder = config::Config::builder().add_source(config::File::from_str(yaml, config::FileFormat::Yaml));
        Self::build(builder, "<yaml>".into())
    }

    fn build(
        builder: config::ConfigBuilder<config::builder::DefaultState>,
        origin: String,
    ) -> Result<Config, ConfigErrors> {
        let built = builder
            .add_source(
                config::Environment::with_prefix("RECADO").prefix_separator("__").separator("__").try_parsing(true),
            )
            .build()
            .map_err(|e| single(Path::new(&origin), &e.to_string()))?;
        let value: serde_json::Value =
            built.try_deserialize().map_err(|e| single(Path::new(&origin), &e.to_string()))?;
        validate::validate(value)
    }
}

fn single(path: &Path, message: &str) -> ConfigErrors {
    ConfigErrors(vec![ConfigError { path: path.display().to_string(), message: message.to_string() }])
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "state:\n  path: /tmp/a.db\n";

    #[test]
    fn environment_overrides_a_file() {
        // Only this test in the library's test binary reads RECADO__ variables.
        std::env::set_var("RECADO__STATE__PATH", "/tmp/from-env.db");
        let c = Config::from_yaml(MINIMAL);
        std::env::remove_var("RECADO__STATE__PATH");
        assert_eq!(c.map(|c| c.state.path), Ok(PathBuf::from("/tmp/from-env.db")).map_err(|e: ConfigErrors| e));
    }

    #[test]
    fn secrets_are_never_printed() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }

    #[test]
    fn yaml_syntax_errors_are_reported() {
        let e = Config::from_yaml("state: [unclosed").unwrap_err();
        assert_eq!(e.0.len(), 1);
    }
}
