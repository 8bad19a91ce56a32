//! `sources[*]` with `type: salesforce`: the YAML as written (every field documented) and its
//! validation.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::Secret;
use crate::sources::{RawConsent, RawSettings, RawWriteBack, SourceSettings};
use crate::validation::{Env, Problems, SecretSources};

/// Salesforce's production login host (also the JWT audience of production orgs).
pub const PRODUCTION_LOGIN: &str = "https://login.salesforce.com";
/// The login host of sandbox orgs (and their JWT audience).
pub const SANDBOX_LOGIN: &str = "https://test.salesforce.com";
/// The API version used when none is configured (Winter '25; every later org accepts it).
pub const DEFAULT_API_VERSION: &str = "62.0";

/// One object of a Salesforce org, as written in YAML.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawSalesforce {
    /// Name used by rules.
    pub id: String,
    /// Where tokens are asked for: `https://login.salesforce.com` (production, default),
    /// `https://test.salesforce.com` (sandboxes) or the org's My Domain
    /// (`https://acme.my.salesforce.com`, required for the client credentials flow).
    #[serde(default)]
    pub login_url: Option<String>,
    /// REST API version, e.g. `62.0`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// The object whose records are watched (API name), e.g. `Cita__c` or `Contact`.
    pub object: String,
    /// Fields to read (API names), relationship paths included (`Contacto__r.MobilePhone`).
    /// The key, phone, consent and time-zone fields and every field a rule's trigger names are
    /// read whether listed or not; list every other field a message uses.
    #[serde(default)]
    pub fields: Vec<String>,
    /// A SOQL condition records must meet, e.g. `Estado__c != 'Cancelada'`. Records that stop
    /// meeting it count as removed, records that start meeting it as added. With relative date
    /// literals (`Fecha__c = NEXT_N_DAYS:7`, `>= TODAY`) the set changes with the calendar, not
    /// only with edits: such a source is read in full once more on the first poll of each day
    /// (in the source's time zone).
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// The field that identifies a record (default `Id`).
    #[serde(default)]
    pub key_field: Option<String>,
    /// The field with the WhatsApp number (a relationship path is fine:
    /// `Contacto__r.MobilePhone`).
    pub phone_field: String,
    /// Region for numbers written without a country code (ISO 3166 alpha-2, e.g. `CL`).
    #[serde(default)]
    pub default_region: Option<String>,
    /// Consent field: records without consent get no business-initiated message.
    #[serde(default)]
    pub consent: Option<RawConsent>,
    /// A field holding each person's IANA time zone (optional).
    #[serde(default)]
    pub time_zone_field: Option<String>,
    /// The time zone Date fields and local times are read in (IANA); by default the org's
    /// (`Organization.TimeZoneSidKey`).
    #[serde(default)]
    pub time_zone: Option<String>,
    /// How text dates are written: `dmy` (default), `mdy`, `ymd`.
    #[serde(default)]
    pub date_order: Option<String>,
    /// How date fields appear in messages (strftime, e.g. `%d/%m/%Y`).
    #[serde(default)]
    pub date_format: Option<String>,
    /// How often to look for changes (default `30s`).
    #[serde(default)]
    pub poll_interval: Option<String>,
    /// How far back each look reaches past the last change seen (default `2m`): a save whose
    /// transaction took longer than this to commit could be missed.
    #[serde(default)]
    pub overlap: Option<String>,
    /// How often deletions are asked for (default `5m`, at least `2m`: Salesforce's deleted
    /// records window must span more than a minute).
    #[serde(default)]
    pub deletions_every: Option<String>,
    /// A field read through a relationship (`Contacto__r.MobilePhone`) can change without the
    /// record's `SystemModstamp` moving, so a source that reads any is read in full again this
    /// often (default `1h`, at least `10m`); a phone or consent changed on the Contact is seen
    /// within this time.
    #[serde(default)]
    pub full_read_every: Option<String>,
    /// How long write-back may wait to be batched (default `2s`).
    #[serde(default)]
    pub flush_interval: Option<String>,
    /// The longest one call to Salesforce may take (default `30s`).
    #[serde(default)]
    pub call_timeout: Option<String>,
    /// Share of the org's daily API allocation recado's own requests may use (default
    /// `0.5`, counted over the last 24 hours); above it, or when the whole org has used 95 %,
    /// polling slows down.
    #[serde(default)]
    pub max_api_share: Option<f64>,
    /// `baseline` (default) or `process_existing`.
    #[serde(default)]
    pub first_start: Option<String>,
    /// Whether a row here is a person's record (default `true`). `false` for a log such as
    /// the reports a bot adds: rules still run on it, but a conversation never takes one of
    /// its rows as the person's record (answers are not saved to it).
    #[serde(default)]
    pub person_records: Option<bool>,
    /// Fields recado writes to (they must exist on the object and be writable).
    #[serde(default)]
    pub write_back: Option<RawWriteBack>,
    /// How recado signs in.
    pub auth: RawAuth,
    /// Log every message and reply as a record of its own (a Task, or a custom object).
    #[serde(default)]
    pub interaction_log: Option<RawInteractionLog>,
}

/// `interaction_log:` of a Salesforce source.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawInteractionLog {
    /// `Task` (default: an activity on the Contact and the record) or a custom object such as
    /// `WhatsApp_Message__c`.
    #[serde(default)]
    pub object: Option<String>,
    /// A text field of the log object holding recado's id for the entry, so a retry updates
    /// the entry instead of creating another (default `Recado_Id__c`; on a custom object, mark
    /// it External ID and Unique: entries are then upserted on it).
    #[serde(default)]
    pub key_field: Option<String>,
    /// The field of the watched record holding the Contact's id (e.g. `Contacto__c`; `Id`
    /// when the source is `Contact` itself).
    #[serde(default)]
    pub contact_field: Option<String>,
    /// Custom object: its lookup to the watched record (a Task uses `WhatId`).
    #[serde(default)]
    pub record_lookup: Option<String>,
    /// Custom object: its lookup to the Contact (a Task uses `WhoId`).
    #[serde(default)]
    pub contact_lookup: Option<String>,
    /// Task: its `Subject`; `{direction}` and `{rule}` are replaced (default
    /// `WhatsApp {direction} {rule}`).
    #[serde(default)]
    pub subject: Option<String>,
    /// The log object's field for each value recado records: `direction`, `content`, `rule`,
    /// `status`, `status_at`, `sent_at`, `delivered_at`, `read_at`, `error`, `message_id`. A
    /// Task puts `content` in `Description` unless it is mapped.
    #[serde(default)]
    pub fields: std::collections::BTreeMap<String, String>,
}

/// A validated interaction log.
#[derive(Debug, Clone)]
pub struct InteractionLog {
    pub object: String,
    pub key_field: String,
    pub contact_field: Option<String>,
    pub record_lookup: Option<String>,
    pub contact_lookup: Option<String>,
    pub subject: String,
    /// (neutral name, field of the log object).
    pub fields: Vec<(String, String)>,
}

impl InteractionLog {
    pub fn is_task(&self) -> bool {
        self.object.eq_ignore_ascii_case("Task")
    }
}

/// `auth:` of a Salesforce source.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// `jwt_bearer` (a connected app with a certificate; recommended) or `client_credentials`
    /// (a connected app's client id and secret; My Domain login URL only).
    pub flow: String,
    /// The connected app's consumer key (both flows).
    #[serde(alias = "client_id")]
    pub consumer_key: String,
    /// JWT bearer: the integration user's username.
    #[serde(default)]
    pub username: Option<String>,
    /// JWT bearer: the PKCS#8 PEM private key whose certificate the connected app holds
    /// (`private_key_file`, `private_key_env` or inline `private_key`).
    #[serde(default)]
    pub private_key: Option<Value>,
    #[serde(default)]
    pub private_key_env: Option<Value>,
    #[serde(default)]
    pub private_key_file: Option<Value>,
    /// Client credentials: the consumer secret (`client_secret_file`, `client_secret_env` or
    /// inline).
    #[serde(default)]
    pub client_secret: Option<Value>,
    #[serde(default)]
    pub client_secret_env: Option<Value>,
    #[serde(default)]
    pub client_secret_file: Option<Value>,
    /// JWT bearer: the `aud` claim. Default: `https://test.salesforce.com` when the login URL
    /// is a sandbox's, else `https://login.salesforce.com`.
    #[serde(default)]
    pub audience: Option<String>,
}

/// How recado signs in to an org.
#[derive(Debug, Clone)]
pub enum AuthConfig {
    JwtBearer { consumer_key: String, username: String, private_key: Secret, audience: String },
    ClientCredentials { client_id: String, client_secret: Secret },
}

/// A validated Salesforce source.
#[derive(Debug, Clone)]
pub struct SalesforceConfig {
    pub settings: SourceSettings,
    /// Without trailing slash.
    pub login_url: String,
    /// `vNN.N`.
    pub api_version: String,
    pub object: String,
    /// Configured fields, in order.
    pub fields: Vec<String>,
    pub filter: Option<String>,
    pub time_zone: Option<String>,
    pub overlap: Duration,
    pub deletions_every: Duration,
    /// How often a source reading relationship fields is read in full.
    pub full_read_every: Duration,
    pub max_api_share: f64,
    pub auth: AuthConfig,
    pub interaction_log: Option<InteractionLog>,
}

impl SalesforceConfig {
    /// Who the org's sessions belong to: sources of one org share a token and an API budget.
    pub fn org_key(&self) -> String {
        let who = match &self.auth {
            AuthConfig::JwtBearer { consumer_key, username, .. } => format!("{consumer_key}/{username}"),
            AuthConfig::ClientCredentials { client_id, .. } => client_id.clone(),
        };
        format!("{}#{who}", self.login_url)
    }
}

/// An API name (`Fecha__c`) or a relationship path (`Contacto__r.MobilePhone`).
pub fn is_field_path(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars.next().is_some_and(|c| c.is_ascii_alphabetic())
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !part.contains("___")
        })
        && name.split('.').count() <= 6
}

/// Validates one `type: salesforce` entry at `path`.
pub fn validate(
    p: &mut Problems,
    env: &Env,
    path: &str,
    value: Value,
    ids: &mut HashSet<String>,
) -> Option<SalesforceConfig> {
    let s: RawSalesforce = p.parse(path, value)?;
    p.unique(ids, &format!("{path}.id"), &s.id);
    if !is_field_path(&s.object) || s.object.contains('.') {
        p.push(format!("{path}.object"), format!("expected an object's API name such as Cita__c, got '{}'", s.object));
    }
    let login_url = p.url(&format!("{path}.login_url"), s.login_url, PRODUCTION_LOGIN, false);
    let version = s.api_version.unwrap_or_else(|| DEFAULT_API_VERSION.into());
    let version = version.trim_start_matches('v').to_string();
    let version_ok = version
        .split_once('.')
        .is_some_and(|(a, b)| a.parse::<u32>().is_ok_and(|a| (31..=99).contains(&a)) && b == "0");
    if !version_ok {
        p.push(
            format!("{path}.api_version"),
            format!("expected a REST API version such as 62.0 (31.0 or later), got '{version}'"),
        );
    }
    let key_field = s.key_field.unwrap_or_else(|| "Id".into());
    for (i, f) in s.fields.iter().enumerate() {
        if !is_field_path(f) {
            p.push(
                format!("{path}.fields[{i}]"),
                format!("expected a field API name or relationship path such as Contacto__r.MobilePhone, got '{f}'"),
            );
        }
    }
    for (name, value) in [
        ("key_field", Some(&key_field)),
        ("phone_field", Some(&s.phone_field)),
        ("time_zone_field", s.time_zone_field.as_ref()),
    ] {
        if let Some(v) = value {
            if !is_field_path(v) {
                p.push(format!("{path}.{name}"), format!("expected a field API name or relationship path, got '{v}'"));
            }
        }
    }
    if let Some(c) = &s.consent {
        if !is_field_path(&c.column) {
            p.push(
                format!("{path}.consent.field"),
                format!("expected a field API name or relationship path, got '{}'", c.column),
            );
        }
    }
    if let Some(w) = &s.write_back {
        for (name, f) in [
            ("status", &w.status),
            ("status_at", &w.status_at),
            ("error", &w.error),
            ("last_reply", &w.last_reply),
            ("last_reply_at", &w.last_reply_at),
        ] {
            if let Some(f) = f {
                if !is_field_path(f) || f.contains('.') {
                    p.push(
                        format!("{path}.write_back.{name}"),
                        format!("expected a field of {} itself (API name, no relationship path), got '{f}'", s.object),
                    );
                }
                if s.fields.iter().any(|x| x.eq_ignore_ascii_case(f)) {
                    p.push(
                        format!("{path}.write_back.{name}"),
                        format!("'{f}' is also in fields: recado's own writes are never read as changes"),
                    );
                }
            }
        }
    }
    if let Some(f) = &s.filter {
        let upper = f.to_uppercase();
        if f.trim().is_empty() {
            p.push(format!("{path}.where"), "must not be empty");
        } else if [" ORDER BY ", " LIMIT ", "SELECT "].iter().any(|k| format!(" {upper} ").contains(k)) {
            p.push(
                format!("{path}.where"),
                "expected only a condition (what follows WHERE), without ORDER BY, LIMIT or a subquery",
            );
        }
    }
    if let Some(tz) = &s.time_zone {
        p.time_zone(&format!("{path}.time_zone"), tz);
    }
    let overlap = p.duration(
        &format!("{path}.overlap"),
        s.overlap.as_deref(),
        Duration::from_secs(120),
        Duration::from_secs(1),
        Duration::from_secs(3600),
    );
    let deletions_every = p.duration(
        &format!("{path}.deletions_every"),
        s.deletions_every.as_deref(),
        Duration::from_secs(300),
        Duration::from_secs(120),
        Duration::from_secs(24 * 3600),
    );
    let full_read_every = p.duration(
        &format!("{path}.full_read_every"),
        s.full_read_every.as_deref(),
        Duration::from_secs(3600),
        Duration::from_secs(600),
        Duration::from_secs(7 * 24 * 3600),
    );
    let max_api_share = p.number(&format!("{path}.max_api_share"), s.max_api_share, 0.5, 0.0..=1.0);
    let auth = validate_auth(p, env, &format!("{path}.auth"), s.auth, &login_url);
    let interaction_log = s.interaction_log.map(|l| validate_log(p, &format!("{path}.interaction_log"), l));
    let mut settings = SourceSettings::validate(
        p,
        path,
        RawSettings {
            id: s.id,
            key_field: ("key_field".into(), key_field),
            phone_field: ("phone_field".into(), s.phone_field),
            default_region: s.default_region,
            consent: s.consent,
            time_zone_field: s.time_zone_field,
            date_order: s.date_order,
            date_format: s.date_format,
            poll_interval: s.poll_interval,
            flush_interval: s.flush_interval,
            first_start: s.first_start,
            person_records: s.person_records,
            write_back: s.write_back,
            call_timeout: s.call_timeout,
        },
    );
    settings.logs_interactions = interaction_log.is_some();
    Some(SalesforceConfig {
        settings,
        login_url,
        api_version: format!("v{version}"),
        object: s.object,
        fields: s.fields,
        filter: s.filter,
        time_zone: s.time_zone,
        overlap,
        deletions_every,
        full_read_every,
        max_api_share,
        auth: auth?,
        interaction_log,
    })
}

fn validate_log(p: &mut Problems, path: &str, l: RawInteractionLog) -> InteractionLog {
    let object = l.object.unwrap_or_else(|| "Task".into());
    if !is_field_path(&object) || object.contains('.') {
        p.push(
            format!("{path}.object"),
            format!("expected an object's API name such as Task or WhatsApp_Message__c, got '{object}'"),
        );
    }
    let is_task = object.eq_ignore_ascii_case("Task");
    let key_field = l.key_field.unwrap_or_else(|| "Recado_Id__c".into());
    let check = |p: &mut Problems, name: &str, v: &str| {
        if !is_field_path(v) || v.contains('.') {
            p.push(format!("{path}.{name}"), format!("expected a field API name, got '{v}'"));
        }
    };
    check(p, "key_field", &key_field);
    for (name, v) in [
        ("contact_field", &l.contact_field),
        ("record_lookup", &l.record_lookup),
        ("contact_lookup", &l.contact_lookup),
    ] {
        if let Some(v) = v {
            check(p, name, v);
        }
    }
    for (k, v) in &l.fields {
        if !crate::domain::interaction::ALL.contains(&k.as_str()) {
            p.push(
                format!("{path}.fields.{k}"),
                format!("unknown value '{k}' (expected one of {})", crate::domain::interaction::ALL.join(", ")),
            );
        }
        check(p, &format!("fields.{k}"), v);
    }
    if is_task && (l.record_lookup.is_some() || l.contact_lookup.is_some()) {
        p.push(
            format!("{path}.record_lookup"),
            "a Task is linked through WhatId and WhoId; record_lookup and contact_lookup are for custom objects",
        );
    }
    if !is_task && l.fields.is_empty() {
        p.push(
            format!("{path}.fields"),
            format!("say which fields of {object} hold the direction, content, status, … of each entry"),
        );
    }
    let (record_lookup, contact_lookup) = if is_task {
        (Some("WhatId".to_string()), Some("WhoId".to_string()))
    } else {
        (l.record_lookup, l.contact_lookup)
    };
    let mut fields: Vec<(String, String)> = l.fields.into_iter().collect();
    if is_task && !fields.iter().any(|(k, _)| k == crate::domain::interaction::CONTENT) {
        fields.push((crate::domain::interaction::CONTENT.into(), "Description".into()));
    }
    InteractionLog {
        object,
        key_field,
        contact_field: l.contact_field,
        record_lookup,
        contact_lookup,
        subject: l.subject.unwrap_or_else(|| "WhatsApp {direction} {rule}".into()),
        fields,
    }
}

fn validate_auth(p: &mut Problems, env: &Env, path: &str, a: RawAuth, login_url: &str) -> Option<AuthConfig> {
    p.non_empty(&format!("{path}.consumer_key"), &a.consumer_key);
    match a.flow.as_str() {
        "jwt_bearer" => {
            if a.client_secret.is_some() || a.client_secret_env.is_some() || a.client_secret_file.is_some() {
                p.push(
                    format!("{path}.client_secret"),
                    "the JWT bearer flow signs with a private key; leave client_secret out",
                );
            }
            let username = a.username.unwrap_or_default();
            if username.trim().is_empty() {
                p.push(format!("{path}.username"), "the JWT bearer flow needs the integration user's username");
            }
            let key = p.secret(
                env,
                path,
                "private_key",
                SecretSources::new(a.private_key, a.private_key_env, a.private_key_file),
            );
            if let Some(k) = &key {
                if let Err(e) = crate::sources::jwt::signing_key(k.expose()) {
                    p.push(format!("{path}.private_key"), e);
                }
            }
            let default_audience =
                if login_url.starts_with(SANDBOX_LOGIN) || login_url.contains(".sandbox.my.salesforce.com") {
                    SANDBOX_LOGIN
                } else {
                    PRODUCTION_LOGIN
                };
            let audience = a.audience.unwrap_or_else(|| default_audience.into());
            Some(AuthConfig::JwtBearer { consumer_key: a.consumer_key, username, private_key: key?, audience })
        }
        "client_credentials" => {
            if login_url == PRODUCTION_LOGIN || login_url == SANDBOX_LOGIN {
                p.push(format!("{path}.flow"), "the client credentials flow needs the org's My Domain as login_url (https://<domain>.my.salesforce.com), not login. or test.salesforce.com");
            }
            if a.private_key.is_some()
                || a.private_key_file.is_some()
                || a.private_key_env.is_some()
                || a.username.is_some()
            {
                p.push(
                    format!("{path}.private_key"),
                    "the client credentials flow uses client_secret; leave private_key and username out",
                );
            }
            let secret = p.secret(
                env,
                path,
                "client_secret",
                SecretSources::new(a.client_secret, a.client_secret_env, a.client_secret_file),
            );
            Some(AuthConfig::ClientCredentials { client_id: a.consumer_key, client_secret: secret? })
        }
        other => {
            p.push(format!("{path}.flow"), format!("expected jwt_bearer or client_credentials, got '{other}'"));
            None
        }
    }
}
