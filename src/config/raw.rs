//! The configuration exactly as written in YAML. Unknown keys are errors; values are checked
//! later by [`super::validate`], which reports every problem at once.

use serde::Deserialize;
use serde_json::Value;

/// The top level of a configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Where the state store lives.
    #[serde(default)]
    pub state: Option<Value>,
    /// The HTTP server that receives webhooks.
    #[serde(default)]
    pub http: Option<Value>,
    /// WhatsApp senders (one per phone number).
    #[serde(default)]
    pub providers: Option<Value>,
    /// Watched tables (sheet tabs).
    #[serde(default)]
    pub sources: Option<Value>,
    /// What to send, to whom, when.
    #[serde(default)]
    pub rules: Option<Value>,
    /// How inbound messages are treated (opt-out keywords).
    #[serde(default)]
    pub inbound: Option<Value>,
    /// Time zone, quiet hours and lateness for every rule that does not set its own.
    #[serde(default)]
    pub defaults: Option<Value>,
}

/// `defaults:` (each can be overridden per rule).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    /// IANA time zone for rule times, e.g. `America/Santiago` (else the spreadsheet's).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Business-initiated messages only go out between these local times, e.g. `09:00-20:00`.
    #[serde(default)]
    pub send_between: Option<String>,
    /// Days messages may go out (`mon`…`sun` or `lun`…`dom`); all when absent.
    #[serde(default)]
    pub send_days: Option<Vec<String>>,
    /// Dates nothing is sent (`2026-12-25`); messages wait for the next allowed day.
    #[serde(default)]
    pub holidays: Option<Vec<String>>,
    /// How late a reminder or campaign missed while recado was stopped may still go out
    /// (default `3h`); older ones are skipped with the reason written back.
    #[serde(default)]
    pub lateness: Option<String>,
}

/// `state:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawState {
    /// Path of the SQLite database file (created if missing).
    pub path: String,
}

/// `http:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Address to listen on, e.g. `0.0.0.0:8080`.
    #[serde(default)]
    pub listen: Option<String>,
    /// The URL the world uses to reach this server (behind a reverse proxy), e.g.
    /// `https://recado.example.org`. Webhook URLs are `<public_url>/webhooks/<provider id>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Largest webhook body accepted, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
}

/// One entry of `providers:`; the `type` selects the vendor.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawProvider {
    /// Meta WhatsApp Cloud API.
    MetaCloud(RawMetaCloud),
}

/// `providers[*]` with `type: meta_cloud`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetaCloud {
    /// Name used by rules and in the webhook path `/webhooks/<id>`.
    pub id: String,
    /// The WhatsApp Business phone number id (not the phone number itself).
    pub phone_number_id: String,
    /// Access token (system-user token): inline, `access_token_env` or `access_token_file`.
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub access_token_env: Option<String>,
    #[serde(default)]
    pub access_token_file: Option<String>,
    /// App secret that signs webhooks (`X-Hub-Signature-256`).
    #[serde(default)]
    pub app_secret: Option<String>,
    #[serde(default)]
    pub app_secret_env: Option<String>,
    #[serde(default)]
    pub app_secret_file: Option<String>,
    /// Token Meta echoes in the webhook verification handshake.
    #[serde(default)]
    pub verify_token: Option<String>,
    #[serde(default)]
    pub verify_token_env: Option<String>,
    #[serde(default)]
    pub verify_token_file: Option<String>,
    /// Graph API version, e.g. `v23.0`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Graph API base URL (default `https://graph.facebook.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Throughput budget of this number (Meta default 80, up to 1000).
    #[serde(default)]
    pub messages_per_second: Option<f64>,
    /// Minimum time between two messages to the same person (Meta's pair rate, ~6s).
    #[serde(default)]
    pub pair_interval: Option<String>,
    /// Concurrent HTTP sends in flight (default 32).
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// Attempts before a retryable error becomes a failure (default 8).
    #[serde(default)]
    pub max_attempts: Option<u64>,
}

/// One entry of `sources:`; the `type` selects the system of record.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RawSource {
    /// One tab of a Google Sheet.
    GoogleSheets(RawGoogleSheets),
}

/// `sources[*]` with `type: google_sheets`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoogleSheets {
    /// Name used by rules.
    pub id: String,
    /// The id in the sheet's URL: `docs.google.com/spreadsheets/d/<id>/edit`.
    pub spreadsheet_id: String,
    /// Tab title, e.g. `Inscripciones`.
    pub tab: String,
    /// Header of the column that identifies a row (unique, never blank).
    pub key_column: String,
    /// Header of the column with the WhatsApp number.
    pub phone_column: String,
    /// Region for numbers written without a country code (ISO 3166 alpha-2, e.g. `CL`).
    #[serde(default)]
    pub default_region: Option<String>,
    /// How often to look for changes (default `30s`).
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// How long write-back may wait to be batched (default `2s`).
    #[serde(default)]
    pub flush_interval: Option<String>,
    /// Service-account key JSON: file path (`service_account_key_file`), env var holding the
    /// JSON (`service_account_key_env`), or inline JSON (`service_account_key`).
    #[serde(default)]
    pub service_account_key: Option<String>,
    #[serde(default)]
    pub service_account_key_env: Option<String>,
    #[serde(default)]
    pub service_account_key_file: Option<String>,
    /// Sheets API base URL (default `https://sheets.googleapis.com/`).
    #[serde(default)]
    pub sheets_base_url: Option<String>,
    /// Drive API base URL (default `https://www.googleapis.com/`).
    #[serde(default)]
    pub drive_base_url: Option<String>,
    /// Google requests per minute this source may spend (default 50; Google allows 60 per user).
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// `baseline` (default): rows present at first start are not new. `process_existing`: treat
    /// them as added (sends to every matching row: use with care).
    #[serde(default)]
    pub first_start: Option<String>,
    /// Consent column: rows without consent get no business-initiated message.
    #[serde(default)]
    pub consent: Option<RawConsent>,
    /// Column headers recado writes to. Missing headers are added to the header row.
    #[serde(default)]
    pub write_back: Option<RawWriteBack>,
    /// Order of day, month and year in text dates: `dmy` (default, 21/11/2026), `mdy`, `ymd`.
    #[serde(default)]
    pub date_order: Option<String>,
    /// Header of a column holding each person's IANA time zone (optional).
    #[serde(default)]
    pub time_zone_column: Option<String>,
}

/// `sources[*].consent`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsent {
    /// Header of the consent column.
    pub column: String,
    /// Values meaning yes (case-insensitive). Default: sí, si, yes, x, true, 1.
    #[serde(default)]
    pub granted_values: Option<Vec<String>>,
    /// Written to the consent column when the person opts out (default `BAJA`).
    #[serde(default)]
    pub opted_out_value: Option<String>,
}

/// `sources[*].write_back`: each entry is a column header; leave one out to not write it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWriteBack {
    pub status: Option<String>,
    pub status_at: Option<String>,
    pub error: Option<String>,
    pub last_reply: Option<String>,
    pub last_reply_at: Option<String>,
}

/// One entry of `rules:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique name; part of every message's idempotency key, so do not rename a live rule.
    pub id: String,
    /// The source whose records this rule watches.
    pub source: String,
    /// The trigger: `row_added`, `{changed: FIELD, to: VALUE}`,
    /// `{date: FIELD, offset: -2d | [-6w, -1w], at: "10:00"}` or `{cron: "0 10 1 */3 *"}`.
    pub when: Value,
    /// Optional filter expression over the row, e.g. `Curso == "Soldadura"`.
    #[serde(default, rename = "if")]
    pub filter: Option<String>,
    /// Provider id that sends this rule's messages.
    pub provider: String,
    /// Send an approved template.
    #[serde(default)]
    pub template: Option<RawTemplate>,
    /// Or send free text (only inside the 24-hour window) …
    #[serde(default)]
    pub text: Option<String>,
    /// … falling back to this template outside the window.
    #[serde(default)]
    pub fallback_template: Option<RawTemplate>,
    // The time settings below repeat `RawDefaults` field by field: serde cannot combine
    // `flatten` with `deny_unknown_fields`, and unknown keys must stay errors.
    /// Overrides `defaults.time_zone` for this rule.
    #[serde(default)]
    pub time_zone: Option<String>,
    /// Overrides `defaults.send_between` (and `send_days`, `holidays`) for this rule.
    #[serde(default)]
    pub send_between: Option<String>,
    #[serde(default)]
    pub send_days: Option<Vec<String>>,
    #[serde(default)]
    pub holidays: Option<Vec<String>>,
    /// Overrides `defaults.lateness` for this rule.
    #[serde(default)]
    pub lateness: Option<String>,
}

/// A template and how to fill its parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    /// The approved template's name.
    pub name: String,
    /// Language code, e.g. `es` or `es_MX`.
    pub language: String,
    /// Body parameters in order, each an expression such as `{{ Nombre }}`.
    #[serde(default)]
    pub body: Vec<String>,
    /// Suffix for the template's dynamic URL button, e.g. `{{ ID | urlencode }}`.
    #[serde(default)]
    pub button_url_suffix: Option<String>,
}

/// `inbound:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInbound {
    /// A reply that is exactly one of these words (case- and accent-insensitive) opts the
    /// person out. Default: BAJA, STOP, SALIR, CANCELAR, UNSUBSCRIBE.
    #[serde(default)]
    pub opt_out_keywords: Option<Vec<String>>,
}
