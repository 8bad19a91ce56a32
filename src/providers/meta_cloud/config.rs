//! `providers[*]` with `type: meta_cloud`: the YAML as written (every field documented) and its
//! validation.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::Secret;
use crate::providers::{ProviderSettings, RawSettings};
use crate::validation::{Env, Problems, SecretSources};

/// One WhatsApp Business number on Meta's Cloud API, as written in YAML.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawMetaCloud {
    /// Name used by rules and in the webhook path `/webhooks/<id>`.
    pub id: String,
    /// The WhatsApp Business phone number id (not the phone number itself).
    pub phone_number_id: String,
    /// The WhatsApp Business Account id (WhatsApp Manager → Account tools → Phone numbers, or
    /// the `entry[].id` of a webhook). Optional: `recado check --online` reads the account's
    /// message templates through it to find a missing, unapproved or mismatched one before a
    /// message fails.
    #[serde(default)]
    pub business_account_id: Option<String>,
    /// Access token (system-user token): inline, `access_token_env` or `access_token_file`.
    #[serde(default)]
    pub access_token: Option<Value>,
    #[serde(default)]
    pub access_token_env: Option<Value>,
    #[serde(default)]
    pub access_token_file: Option<Value>,
    /// App secret that signs webhooks.
    #[serde(default)]
    pub app_secret: Option<Value>,
    #[serde(default)]
    pub app_secret_env: Option<Value>,
    #[serde(default)]
    pub app_secret_file: Option<Value>,
    /// Token Meta echoes in the webhook verification handshake.
    #[serde(default)]
    pub verify_token: Option<Value>,
    #[serde(default)]
    pub verify_token_env: Option<Value>,
    #[serde(default)]
    pub verify_token_file: Option<Value>,
    /// Graph API version, e.g. `v23.0`.
    #[serde(default)]
    pub api_version: Option<String>,
    /// Graph API base URL (default `https://graph.facebook.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Throughput of this number (Meta's default 80, up to 1000).
    #[serde(default)]
    pub messages_per_second: Option<f64>,
    /// Least time between two messages to the same person (Meta's pair rate, about 6 s).
    #[serde(default)]
    pub pair_interval: Option<String>,
    /// Concurrent sends in flight (default 32).
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// Attempts before a retryable error becomes a failure (default 8).
    #[serde(default)]
    pub max_attempts: Option<u64>,
    /// How long a send whose answer was lost waits for Meta's status webhook before it is sent
    /// again (default `15m`; Meta retries webhooks for days, at growing intervals).
    #[serde(default)]
    pub in_doubt_grace: Option<String>,
    /// The longest one call to Meta may take (default `20s`).
    #[serde(default)]
    pub call_timeout: Option<String>,
}

/// A validated Meta Cloud API provider.
#[derive(Debug, Clone)]
pub struct MetaCloudConfig {
    pub settings: ProviderSettings,
    pub phone_number_id: String,
    pub business_account_id: Option<String>,
    pub access_token: Secret,
    pub app_secret: Secret,
    pub verify_token: Secret,
    pub api_version: String,
    /// Without trailing slash, e.g. `https://graph.facebook.com`.
    pub base_url: String,
}

/// Validates one `type: meta_cloud` entry at `path`.
pub fn validate(
    p: &mut Problems,
    env: &Env,
    path: &str,
    value: Value,
    ids: &mut HashSet<String>,
) -> Option<MetaCloudConfig> {
    let m: RawMetaCloud = p.parse(path, value)?;
    p.unique(ids, &format!("{path}.id"), &m.id);
    p.non_empty(&format!("{path}.phone_number_id"), &m.phone_number_id);
    if !m.phone_number_id.chars().all(|c| c.is_ascii_digit()) {
        p.push(format!("{path}.phone_number_id"), "expected the number's id (digits), not the phone number");
    }
    if let Some(waba) = &m.business_account_id {
        if waba.is_empty() || !waba.chars().all(|c| c.is_ascii_digit()) {
            p.push(format!("{path}.business_account_id"), "expected the WhatsApp Business Account id (digits)");
        }
    }
    let access_token = p.secret(
        env,
        path,
        "access_token",
        SecretSources::new(m.access_token, m.access_token_env, m.access_token_file),
    );
    let app_secret =
        p.secret(env, path, "app_secret", SecretSources::new(m.app_secret, m.app_secret_env, m.app_secret_file));
    let verify_token = p.secret(
        env,
        path,
        "verify_token",
        SecretSources::new(m.verify_token, m.verify_token_env, m.verify_token_file),
    );
    let api_version = m.api_version.unwrap_or_else(|| "v23.0".into());
    let version_ok = api_version.strip_prefix('v').and_then(|r| r.split_once('.')).is_some_and(|(a, b)| {
        !a.is_empty()
            && !b.is_empty()
            && a.len() < 4
            && b.len() < 4
            && (a.to_owned() + b).chars().all(|c| c.is_ascii_digit())
    });
    if !version_ok {
        p.push(format!("{path}.api_version"), format!("expected a version such as v23.0, got '{api_version}'"));
    }
    let base_url = p.url(&format!("{path}.base_url"), m.base_url, "https://graph.facebook.com", false);
    let settings = ProviderSettings::validate(
        p,
        path,
        RawSettings {
            id: m.id,
            messages_per_second: m.messages_per_second,
            default_messages_per_second: 80.0,
            pair_interval: m.pair_interval,
            default_pair_interval: Duration::from_secs(6),
            max_in_flight: m.max_in_flight,
            max_attempts: m.max_attempts,
            in_doubt_grace: m.in_doubt_grace,
            default_in_doubt_grace: Duration::from_secs(15 * 60),
            call_timeout: m.call_timeout,
        },
    );
    Some(MetaCloudConfig {
        settings,
        phone_number_id: m.phone_number_id,
        business_account_id: m.business_account_id,
        access_token: access_token?,
        app_secret: app_secret?,
        verify_token: verify_token?,
        api_version,
        base_url,
    })
}
