//! `providers[*]` with `type: twilio`: the YAML as written (every field documented) and its
//! validation.
//!
//! Rules name templates the same way for every provider: `name` and `language`. Meta knows its
//! templates by exactly that; Twilio knows them by a Content SID (`HX…`), so a Twilio provider
//! maps each (name, language) a rule uses to its Content SID in `content_templates`, and
//! `recado check` refuses a rule whose template has no entry there. Parameters travel as
//! Twilio's `ContentVariables`: `body` item *n* is variable `"n"`, and a
//! `button_url_suffix` is the variable after the last body one.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::domain::Secret;
use crate::providers::{ProviderSettings, RawSettings};
use crate::validation::{Env, Problems, SecretSources};

/// Twilio's API, where `base_url` points unless told otherwise.
pub const DEFAULT_BASE_URL: &str = "https://api.twilio.com";

/// Twilio's Content API (templates and their WhatsApp approval), a host of its own.
pub const DEFAULT_CONTENT_BASE_URL: &str = "https://content.twilio.com";

/// Most characters of a `Body` Twilio accepts (error 21617 above it), WhatsApp included.
pub const MAX_BODY_CHARS: usize = 1600;

/// One approved template as Twilio's Content API knows it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ContentTemplate {
    /// The name rules use (`template.name`), usually the template's friendly name.
    pub name: String,
    /// The language rules use (`template.language`), e.g. `es`.
    pub language: String,
    /// The Content SID, `HX` and 32 hex digits.
    pub content_sid: String,
    /// How many variables the approved template takes (`{{1}}` … `{{n}}`, a URL button's
    /// included), when known: `recado check` then refuses a rule that gives another number.
    /// `recado check --online` reads it from the Content API either way.
    #[serde(default)]
    pub variables: Option<usize>,
}

/// One WhatsApp sender on Twilio, as written in YAML.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RawTwilio {
    /// Name used by rules and in the webhook path `/webhooks/<id>`.
    pub id: String,
    /// The Account SID (`AC…`).
    pub account_sid: String,
    /// The account's Auth Token: it signs every webhook Twilio sends (`X-Twilio-Signature`),
    /// and authenticates API calls unless an API key is given. Inline, `auth_token_env` or
    /// `auth_token_file`.
    #[serde(default)]
    pub auth_token: Option<Value>,
    #[serde(default)]
    pub auth_token_env: Option<Value>,
    #[serde(default)]
    pub auth_token_file: Option<Value>,
    /// An API key (`SK…`) to authenticate API calls with instead of the Auth Token (Twilio's
    /// recommendation for production); its secret as `api_key_secret`, `_env` or `_file`.
    #[serde(default)]
    pub api_key_sid: Option<String>,
    #[serde(default)]
    pub api_key_secret: Option<Value>,
    #[serde(default)]
    pub api_key_secret_env: Option<Value>,
    #[serde(default)]
    pub api_key_secret_file: Option<Value>,
    /// The WhatsApp sender, `whatsapp:+E164` (give this or `messaging_service_sid`).
    #[serde(default)]
    pub from: Option<String>,
    /// A Messaging Service (`MG…`) whose sender pool sends (give this or `from`).
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// The Content SID of each template rules name (see the module docs).
    #[serde(default)]
    pub content_templates: Vec<ContentTemplate>,
    /// The API base URL (default `https://api.twilio.com`; a regional edge such as
    /// `https://api.dublin.ie1.twilio.com`, or the sandbox).
    #[serde(default)]
    pub base_url: Option<String>,
    /// The Content API base URL, where `recado check --online` reads templates and their
    /// approval (default `https://content.twilio.com`, also with a regional `base_url`; when
    /// `base_url` is not a twilio.com host, such as the sandbox, which serves both, that).
    #[serde(default)]
    pub content_base_url: Option<String>,
    /// Where Twilio posts status callbacks. Default: `<http.public_url>/webhooks/<id>`, which
    /// is also the URL the signatures are checked against; set it only when Twilio reaches
    /// recado at another address.
    #[serde(default)]
    pub status_callback_url: Option<String>,
    /// Messages per second for this sender (Twilio's WhatsApp default is 10; up to 80 or
    /// more on request).
    #[serde(default)]
    pub messages_per_second: Option<f64>,
    /// Least time between two messages to the same person (WhatsApp's pair rate, about 6 s).
    #[serde(default)]
    pub pair_interval: Option<String>,
    /// Concurrent sends in flight (default 32).
    #[serde(default)]
    pub max_in_flight: Option<u64>,
    /// Attempts before a retryable error becomes a failure (default 8).
    #[serde(default)]
    pub max_attempts: Option<u64>,
    /// How long a send whose answer was lost waits before recado asks Twilio about it (the
    /// Messages list) and sends it again only if Twilio has no record of it (default `2m`).
    #[serde(default)]
    pub in_doubt_grace: Option<String>,
    /// The longest one call to Twilio may take (default `20s`).
    #[serde(default)]
    pub call_timeout: Option<String>,
}

/// Who sends: one sender, or a Messaging Service's pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TwilioSender {
    /// `whatsapp:+E164`
    From(String),
    /// `MG…`
    MessagingService(String),
}

/// A validated Twilio provider.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    pub settings: ProviderSettings,
    pub account_sid: String,
    pub auth_token: Secret,
    /// (API key SID, secret) for API calls, when given.
    pub api_key: Option<(String, Secret)>,
    pub sender: TwilioSender,
    pub content_templates: Vec<ContentTemplate>,
    /// Without trailing slash.
    pub base_url: String,
    /// Without trailing slash.
    pub content_base_url: String,
    pub status_callback_url: Option<String>,
}

impl TwilioConfig {
    /// The Content SID a rule's (name, language) maps to.
    pub fn content_sid(&self, name: &str, language: &str) -> Option<&str> {
        self.content_templates.iter().find(|t| t.name == name && t.language == language).map(|t| t.content_sid.as_str())
    }

    /// Why a rule cannot send this template through this provider, if it cannot.
    /// Every message names its status callback URL: against the real Twilio it must be an
    /// address Twilio can call, not the one recado listens on.
    pub fn reachability_problem(&self, public_url: Option<&str>) -> Option<String> {
        let real_twilio = self.base_url.trim_end_matches('/') == DEFAULT_BASE_URL;
        (real_twilio && public_url.is_none() && self.status_callback_url.is_none()).then(|| {
            "Twilio must be able to reach recado's webhooks: set http.public_url (or this provider's status_callback_url) to the https address Twilio calls".to_string()
        })
    }

    /// Why a rule cannot send template (`name`, `language`) with `parameters` variables
    /// through this provider, if the configuration can tell.
    pub fn template_problem(&self, name: &str, language: &str, parameters: usize) -> Option<String> {
        if let Some(t) = self.content_templates.iter().find(|t| t.name == name && t.language == language) {
            return t.variables.filter(|n| *n != parameters).map(|n| {
                format!(
                    "provider '{}' declares '{name}' in '{language}' with {n} variable(s), and {parameters} are given (Twilio refuses the message with 21656)",
                    self.settings.id
                )
            });
        }
        let known: Vec<String> =
            self.content_templates.iter().map(|t| format!("{} ({})", t.name, t.language)).collect();
        Some(format!(
            "provider '{}' (twilio) has no content_templates entry for '{name}' in '{language}' (known: {})",
            self.settings.id,
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        ))
    }
}

/// `^<prefix>[0-9a-fA-F]{32}$`, Twilio's SID shape.
pub fn is_sid(s: &str, prefix: &str) -> bool {
    s.len() == 34 && s.starts_with(prefix) && s[2..].chars().all(|c| c.is_ascii_hexdigit())
}

/// `whatsapp:+` and 7 to 15 digits.
fn is_whatsapp_address(s: &str) -> bool {
    s.strip_prefix("whatsapp:+").is_some_and(|d| (7..=15).contains(&d.len()) && d.chars().all(|c| c.is_ascii_digit()))
}

/// Validates one `type: twilio` entry at `path`.
pub fn validate(
    p: &mut Problems,
    env: &Env,
    path: &str,
    value: Value,
    ids: &mut HashSet<String>,
) -> Option<TwilioConfig> {
    let t: RawTwilio = p.parse(path, value)?;
    p.unique(ids, &format!("{path}.id"), &t.id);
    if !is_sid(&t.account_sid, "AC") {
        p.push(format!("{path}.account_sid"), "expected the Account SID: AC followed by 32 hex digits");
    }
    let auth_token =
        p.secret(env, path, "auth_token", SecretSources::new(t.auth_token, t.auth_token_env, t.auth_token_file));
    let key_secret_given =
        t.api_key_secret.is_some() || t.api_key_secret_env.is_some() || t.api_key_secret_file.is_some();
    let api_key = match (&t.api_key_sid, key_secret_given) {
        (None, false) => None,
        (None, true) => {
            p.push(format!("{path}.api_key_sid"), "an API key secret was given without its api_key_sid (SK…)");
            None
        }
        (Some(sid), _) => {
            if !is_sid(sid, "SK") {
                p.push(format!("{path}.api_key_sid"), "expected an API key SID: SK followed by 32 hex digits");
            }
            let secret = p.secret(
                env,
                path,
                "api_key_secret",
                SecretSources::new(t.api_key_secret, t.api_key_secret_env, t.api_key_secret_file),
            );
            secret.map(|s| (sid.clone(), s))
        }
    };
    let sender = match (t.from, t.messaging_service_sid) {
        (Some(from), None) => {
            if !is_whatsapp_address(&from) {
                p.push(
                    format!("{path}.from"),
                    format!("expected a WhatsApp sender such as whatsapp:+14155238886, got '{from}'"),
                );
            }
            Some(TwilioSender::From(from))
        }
        (None, Some(mg)) => {
            if !is_sid(&mg, "MG") {
                p.push(
                    format!("{path}.messaging_service_sid"),
                    "expected a Messaging Service SID: MG followed by 32 hex digits",
                );
            }
            Some(TwilioSender::MessagingService(mg))
        }
        (Some(_), Some(_)) => {
            p.push(path, "give from or messaging_service_sid, not both");
            None
        }
        (None, None) => {
            p.push(path, "no sender: give from (whatsapp:+…) or messaging_service_sid (MG…)");
            None
        }
    };
    let mut seen = HashSet::new();
    for (i, c) in t.content_templates.iter().enumerate() {
        let at = format!("{path}.content_templates[{i}]");
        p.non_empty(&format!("{at}.name"), &c.name);
        p.non_empty(&format!("{at}.language"), &c.language);
        if !is_sid(&c.content_sid, "HX") {
            p.push(format!("{at}.content_sid"), "expected a Content SID: HX followed by 32 hex digits");
        }
        if !seen.insert((c.name.clone(), c.language.clone())) {
            p.push(at.clone(), format!("'{}' in '{}' is listed twice", c.name, c.language));
        }
    }
    let base_url = p.url(&format!("{path}.base_url"), t.base_url, DEFAULT_BASE_URL, false);
    // Twilio's own hosts (api.twilio.com, a regional edge) keep the Content API on its own
    // host; anything else (the sandbox) serves both.
    let twilio_host = base_url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split(['/', ':']).next())
        .is_some_and(|host| host == "twilio.com" || host.ends_with(".twilio.com"));
    let content_default = if twilio_host { DEFAULT_CONTENT_BASE_URL } else { base_url.as_str() };
    let content_base_url = p.url(&format!("{path}.content_base_url"), t.content_base_url, content_default, false);
    let status_callback_url =
        t.status_callback_url.map(|u| p.url(&format!("{path}.status_callback_url"), Some(u), "", false));
    let settings = ProviderSettings::validate(
        p,
        path,
        RawSettings {
            id: t.id,
            messages_per_second: t.messages_per_second,
            default_messages_per_second: 10.0,
            pair_interval: t.pair_interval,
            default_pair_interval: Duration::from_secs(6),
            max_in_flight: t.max_in_flight,
            max_attempts: t.max_attempts,
            in_doubt_grace: t.in_doubt_grace,
            default_in_doubt_grace: Duration::from_secs(120),
            call_timeout: t.call_timeout,
        },
    );
    Some(TwilioConfig {
        settings,
        account_sid: t.account_sid,
        auth_token: auth_token?,
        api_key,
        sender: sender?,
        content_templates: t.content_templates,
        base_url,
        content_base_url,
        status_callback_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sids() {
        assert!(is_sid("ACaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "AC"));
        assert!(!is_sid("ACaaaa", "AC"));
        assert!(!is_sid("MGaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "AC"));
        assert!(!is_sid("ACzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", "AC"));
        assert!(is_whatsapp_address("whatsapp:+14155238886"));
        assert!(!is_whatsapp_address("+14155238886"));
        assert!(!is_whatsapp_address("whatsapp:14155238886"));
    }
}
