//! `sources[*]` with `type: google_sheets`: the YAML as written (every field documented) and
//! its validation.

use std::collections::HashSet;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::Secret;
use crate::sources::{RawConsent, RawSettings, RawWriteBack, SourceSettings};
use crate::validation::{Env, Problems, SecretSources};

/// One tab of a Google Sheet, as written in YAML.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
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
    /// The longest one call to Google may take (default `30s`). Reading a whole tab may spend
    /// ten of them waiting for its answer, each part of it within one; recado's own work on the
    /// rows as they come is not counted, and the whole read takes at most four minutes.
    #[serde(default)]
    pub call_timeout: Option<String>,
    /// Service-account key JSON: file path (`service_account_key_file`), env var holding the
    /// JSON (`service_account_key_env`), or inline JSON (`service_account_key`).
    #[serde(default)]
    pub service_account_key: Option<Value>,
    #[serde(default)]
    pub service_account_key_env: Option<Value>,
    #[serde(default)]
    pub service_account_key_file: Option<Value>,
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
    /// Whether a row here is a person's record (default `true`). `false` for a log such as
    /// the reports a bot adds: rules still run on it, but a conversation never takes one of
    /// its rows as the person's record (answers are not saved to it).
    #[serde(default)]
    pub person_records: Option<bool>,
    /// Consent column: rows without consent get no business-initiated message.
    #[serde(default)]
    pub consent: Option<RawConsent>,
    /// Column headers recado writes to. Missing headers are added to the header row.
    #[serde(default)]
    pub write_back: Option<RawWriteBack>,
    /// Order of day, month and year in text dates: `dmy` (default, 21/11/2026), `mdy`, `ymd`.
    #[serde(default)]
    pub date_order: Option<String>,
    /// How date cells appear in messages (strftime, e.g. `%d/%m/%Y`); by default the date order's
    /// numeric form, with the time when the cell has one.
    #[serde(default)]
    pub date_format: Option<String>,
    /// Header of a column holding each person's IANA time zone (optional).
    #[serde(default)]
    pub time_zone_column: Option<String>,
}

/// A validated Google Sheets source.
#[derive(Debug, Clone)]
pub struct GoogleSheetsConfig {
    pub settings: SourceSettings,
    pub spreadsheet_id: String,
    pub tab: String,
    /// The service-account key JSON.
    pub service_account_key: Secret,
    /// With trailing slash, e.g. `https://sheets.googleapis.com/`.
    pub sheets_base_url: String,
    /// With trailing slash, e.g. `https://www.googleapis.com/`.
    pub drive_base_url: String,
    pub requests_per_minute: u32,
}

/// The parts of a service-account key recado uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccountKey {
    pub client_email: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub private_key: String,
    /// The token endpoint, also the JWT audience.
    pub token_uri: String,
    #[serde(default)]
    pub private_key_id: Option<String>,
}

impl ServiceAccountKey {
    /// Parses and checks a key: fields present, private key readable.
    pub fn parse(json: &str) -> Result<Self, String> {
        let key: ServiceAccountKey =
            serde_json::from_str(json).map_err(|e| format!("not a service-account key JSON ({e})"))?;
        if !(key.token_uri.starts_with("https://") || key.token_uri.starts_with("http://")) {
            return Err("token_uri is not an http(s) URL".into());
        }
        super::auth::signing_key(&key.private_key).map_err(|e| format!("private_key: {e}"))?;
        Ok(key)
    }
}

/// Validates one `type: google_sheets` entry at `path`.
pub fn validate(
    p: &mut Problems,
    env: &Env,
    path: &str,
    value: Value,
    ids: &mut HashSet<String>,
) -> Option<GoogleSheetsConfig> {
    let g: RawGoogleSheets = p.parse(path, value)?;
    p.unique(ids, &format!("{path}.id"), &g.id);
    p.non_empty(&format!("{path}.spreadsheet_id"), &g.spreadsheet_id);
    p.non_empty(&format!("{path}.tab"), &g.tab);
    let key = p.secret(
        env,
        path,
        "service_account_key",
        SecretSources::new(g.service_account_key, g.service_account_key_env, g.service_account_key_file),
    );
    if let Some(k) = &key {
        if let Err(e) = ServiceAccountKey::parse(k.expose()) {
            p.push(format!("{path}.service_account_key"), e);
        }
    }
    let rpm = p.count(&format!("{path}.requests_per_minute"), g.requests_per_minute, 50, 1..=100_000) as u32;
    let sheets_base_url =
        p.url(&format!("{path}.sheets_base_url"), g.sheets_base_url, "https://sheets.googleapis.com/", true);
    let drive_base_url =
        p.url(&format!("{path}.drive_base_url"), g.drive_base_url, "https://www.googleapis.com/", true);
    let settings = SourceSettings::validate(
        p,
        path,
        RawSettings {
            id: g.id,
            key_field: ("key_column".into(), g.key_column),
            phone_field: ("phone_column".into(), g.phone_column),
            default_region: g.default_region,
            consent: g.consent,
            time_zone_field: g.time_zone_column,
            date_order: g.date_order,
            date_format: g.date_format,
            poll_interval: g.poll_interval,
            flush_interval: g.flush_interval,
            first_start: g.first_start,
            person_records: g.person_records,
            write_back: g.write_back,
            call_timeout: g.call_timeout,
        },
    );
    Some(GoogleSheetsConfig {
        settings,
        spreadsheet_id: g.spreadsheet_id,
        tab: g.tab,
        service_account_key: key?,
        sheets_base_url,
        drive_base_url,
        requests_per_minute: rpm,
    })
}
