//! Twilio Programmable Messaging for WhatsApp: `POST /2010-04-01/Accounts/{sid}/Messages.json`.
//!
//! * [`config`] — `type: twilio` in YAML and its validation, and how rules' template names map
//!   to Content SIDs.
//! * this module — builds Twilio's form from [`MessageContent`] (approved templates as
//!   `ContentSid` + `ContentVariables`, free text as `Body`), with a `StatusCallback` that
//!   carries our outbox id; reads the message SID from the 201; looks up sends whose answer was
//!   lost in the Messages list; every call has a timeout.
//! * [`errors`] — Twilio's error `code` → what to do, for synchronous answers and `ErrorCode`s
//!   in status callbacks alike.
//! * [`webhook`] — `X-Twilio-Signature` over the public URL and the form, and tolerant parsing.
//!
//! Twilio has no idempotency key on create. A send whose outcome is unknown is therefore
//! looked up in the Messages list (to this person, from this sender, created since just before
//! the send, with the same content) and sent again only when Twilio has no record of it.

pub mod config;
pub mod errors;
pub mod webhook;

#[cfg(test)]
mod signature_vectors;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use config::TwilioConfig;

use super::{
    Accepted, Acknowledgement, FetchedDelivery, Handshake, InDoubtSend, ParsedWebhook, ProviderSettings,
    Reconciliation, SendError, WebhookRejection, WebhookRequest,
};
use crate::domain::{MessageContent, PhoneNumber, ProviderError};
use config::TwilioSender;

/// Twilio expects a 200; an empty TwiML document tells it to answer nothing.
pub const ACKNOWLEDGEMENT: Acknowledgement = Acknowledgement {
    content_type: "text/xml; charset=utf-8",
    body: r#"<?xml version="1.0" encoding="UTF-8"?><Response></Response>"#,
};

/// How far before the send (clock skew, second-resolution dates) a listed message may have
/// been created and still be the one in doubt.
const RECONCILE_SKEW_SECONDS: i64 = 120;
/// Pages of the Messages list read at most when looking a send up.
const RECONCILE_PAGES: usize = 5;
/// Pages (of [`CATCH_UP_PAGE_SIZE`]) of the Messages list read at most when catching up.
const CATCH_UP_PAGES: usize = 20;
const CATCH_UP_PAGE_SIZE: usize = 1000;

/// A Twilio WhatsApp sender.
#[derive(Clone)]
pub struct Twilio {
    config: TwilioConfig,
    http: reqwest::Client,
    messages_url: String,
    /// The status callback URL without our outbox id.
    callback_url: Option<String>,
}

#[derive(Deserialize)]
struct MessageResource {
    sid: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    error_code: Option<i64>,
    #[serde(default)]
    account_sid: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    date_created: Option<String>,
    #[serde(default)]
    direction: Option<String>,
    #[serde(default)]
    messaging_service_sid: Option<String>,
}

#[derive(Deserialize)]
struct MessagePage {
    #[serde(default)]
    messages: Vec<MessageResource>,
    #[serde(default)]
    next_page_uri: Option<String>,
}

impl Twilio {
    /// `public_base` is recado's public URL (or its listening address when none is
    /// configured): status callbacks go to `<public_base>/webhooks/<id>` unless the config
    /// says otherwise.
    pub fn new(config: TwilioConfig, http: reqwest::Client, public_base: Option<&str>) -> Self {
        let messages_url = format!("{}/2010-04-01/Accounts/{}/Messages.json", config.base_url, config.account_sid);
        let callback_url = config
            .status_callback_url
            .clone()
            .or_else(|| public_base.map(|b| format!("{}/webhooks/{}", b.trim_end_matches('/'), config.settings.id)));
        Self { config, http, messages_url, callback_url }
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.config.settings
    }

    fn credentials(&self) -> (&str, &str) {
        match &self.config.api_key {
            Some((sid, secret)) => (sid.as_str(), secret.expose()),
            None => (self.config.account_sid.as_str(), self.config.auth_token.expose()),
        }
    }

    /// The form Twilio expects for `content`.
    pub fn form(
        &self,
        to: &PhoneNumber,
        content: &MessageContent,
        callback_data: &str,
    ) -> Result<Vec<(&'static str, String)>, ProviderError> {
        let mut form = vec![("To", format!("whatsapp:{}", to.as_str()))];
        match &self.config.sender {
            TwilioSender::From(from) => form.push(("From", from.clone())),
            TwilioSender::MessagingService(mg) => form.push(("MessagingServiceSid", mg.clone())),
        }
        match content {
            MessageContent::Text { body } => form.push(("Body", body.clone())),
            MessageContent::Template(t) => {
                let sid = self.config.content_sid(&t.name, &t.language).ok_or_else(|| ProviderError {
                    code: 0,
                    title: format!("no Content SID for template '{}' in '{}'", t.name, t.language),
                    details: Some(format!("add it to content_templates of provider '{}'", self.config.settings.id)),
                })?;
                form.push(("ContentSid", sid.to_string()));
                let variables = content_variables(&t.body, t.button_url_suffix.as_deref());
                if !variables.is_empty() {
                    form.push(("ContentVariables", Value::Object(variables).to_string()));
                }
            }
        }
        if let Some(url) = &self.callback_url {
            let sep = if url.contains('?') { '&' } else { '?' };
            let id: String =
                percent_encoding::utf8_percent_encode(callback_data, percent_encoding::NON_ALPHANUMERIC).to_string();
            // The fragment (Twilio's connection overrides, never sent or signed) asks for
            // retries of a failed callback: five, on any failure.
            form.push(("StatusCallback", format!("{url}{sep}{}={id}#rc=5&rp=all", webhook::CALLBACK_PARAMETER)));
        }
        Ok(form)
    }

    pub async fn send(
        &self,
        to: &PhoneNumber,
        content: &MessageContent,
        callback_data: &str,
    ) -> Result<Accepted, SendError> {
        let form = self.form(to, content, callback_data).map_err(|error| SendError::Permanent { error })?;
        let timeout = self.config.settings.call_timeout;
        let (user, password) = self.credentials();
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(user, Some(password))
            .form(&form)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| {
                // A refused connection never reached Twilio: safe to retry. Anything after
                // the request was written (a timeout included) may have been accepted.
                if e.is_connect() {
                    SendError::Retry { reason: format!("cannot reach Twilio: {}", reason(&e)) }
                } else if e.is_timeout() {
                    SendError::InDoubt { reason: format!("no answer from Twilio within {} s", timeout.as_secs()) }
                } else {
                    SendError::InDoubt { reason: format!("no answer from Twilio: {}", reason(&e)) }
                }
            })?;
        let status = response.status();
        let bytes = tokio::time::timeout(timeout, response.bytes())
            .await
            .map_err(|_| SendError::InDoubt { reason: "the answer from Twilio did not finish in time".into() })?
            .map_err(|e| SendError::InDoubt { reason: format!("answer from Twilio cut short: {}", reason(&e)) })?;
        if status.is_success() {
            let m: MessageResource = serde_json::from_slice(&bytes)
                .map_err(|e| SendError::InDoubt { reason: format!("unreadable answer from Twilio: {e}") })?;
            return Ok(Accepted { provider_message_id: m.sid, recipient_ids: Vec::new() });
        }
        Err(errors::classify(status.as_u16(), &bytes))
    }

    pub fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookRejection> {
        let header = request.headers.get(webhook::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        // Unsigned is refused like mis-signed (403): to Twilio's side both mean "not from us".
        webhook::verify(self.config.auth_token.expose(), request.url, request.body, header)
            .map_err(|e| WebhookRejection::Forged(e.to_string()))
    }

    /// Twilio has no subscription handshake.
    pub fn handshake(&self, _query: &str) -> Handshake {
        Handshake::NotSupported
    }

    pub fn parse_webhook(&self, query: &str, body: &[u8]) -> Result<ParsedWebhook, String> {
        webhook::parse(query, body)
    }

    /// Looks the send up in the Messages list: to this person, from this sender, created
    /// since shortly before it was marked, with the same content (the text, or every template
    /// variable in the rendered body). Found: accepted. Listed completely without it: not
    /// sent. The list could not be read: unknown (asked again later).
    pub async fn reconcile(&self, send: &InDoubtSend) -> Reconciliation {
        let to = format!("whatsapp:{}", send.to.as_str());
        let mut query: Vec<(&str, String)> = vec![("To", to.clone()), ("PageSize", "50".into())];
        if let TwilioSender::From(from) = &self.config.sender {
            query.push(("From", from.clone()));
        }
        let since = send.marked_at / 1000 - RECONCILE_SKEW_SECONDS;
        let (user, password) = self.credentials();
        let mut request = self.http.get(&self.messages_url).query(&query);
        for _ in 0..RECONCILE_PAGES {
            let page = match request
                .basic_auth(user, Some(password))
                .timeout(self.config.settings.call_timeout)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => match r.json::<MessagePage>().await {
                    Ok(p) => p,
                    Err(_) => return Reconciliation::Unknown,
                },
                _ => return Reconciliation::Unknown,
            };
            let mut older_seen = false;
            for m in &page.messages {
                let created = m.date_created.as_deref().and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
                let Some(created) = created.map(|c| c.timestamp()) else { continue };
                if created < since {
                    older_seen = true;
                    continue;
                }
                if self.is_the_send(m, &to, &send.content) {
                    return Reconciliation::Accepted(Accepted {
                        provider_message_id: m.sid.clone(),
                        recipient_ids: Vec::new(),
                    });
                }
            }
            match page.next_page_uri.filter(|u| !u.is_empty()) {
                Some(next) if !older_seen => {
                    request = self.http.get(format!("{}{}", self.config.base_url, next));
                }
                _ => return Reconciliation::NotSent,
            }
        }
        // Too many recent messages to this person to be sure: wait.
        Reconciliation::Unknown
    }

    /// Reads the Messages list since `since_ms`: messages people wrote to this sender, and the
    /// current status of what it sent, as the form-encoded webhooks Twilio would have posted.
    /// Twilio retries a webhook only within seconds (its connection overrides), so after an
    /// outage this is the only way to hear them.
    pub async fn catch_up(&self, since_ms: i64) -> Result<Vec<FetchedDelivery>, String> {
        let since = since_ms / 1000 - RECONCILE_SKEW_SECONDS;
        let mut out = Vec::new();
        let filters: Vec<Vec<(&str, String)>> = match &self.config.sender {
            TwilioSender::From(from) => vec![vec![("To", from.clone())], vec![("From", from.clone())]],
            TwilioSender::MessagingService(_) => vec![Vec::new()],
        };
        let (user, password) = self.credentials();
        for filter in filters {
            let mut query = filter;
            query.push(("PageSize", CATCH_UP_PAGE_SIZE.to_string()));
            let mut request = self.http.get(&self.messages_url).query(&query);
            for _ in 0..CATCH_UP_PAGES {
                let response = request
                    .basic_auth(user, Some(password))
                    .timeout(self.config.settings.call_timeout)
                    .send()
                    .await
                    .map_err(|e| format!("listing messages: {}", reason(&e)))?;
                let status = response.status();
                if !status.is_success() {
                    let bytes = response.bytes().await.unwrap_or_default();
                    return Err(format!("listing messages: {}", errors::classify(status.as_u16(), &bytes).describe()));
                }
                let page: MessagePage =
                    response.json().await.map_err(|e| format!("listing messages: unreadable page: {e}"))?;
                let mut older_seen = false;
                for m in &page.messages {
                    let created = m
                        .date_created
                        .as_deref()
                        .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
                        .map(|c| c.timestamp());
                    match created {
                        Some(c) if c >= since => out.extend(self.as_webhook(m)),
                        Some(_) => older_seen = true,
                        None => {}
                    }
                }
                match page.next_page_uri.filter(|u| !u.is_empty()) {
                    Some(next) if !older_seen => request = self.http.get(format!("{}{}", self.config.base_url, next)),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// A listed message as the webhook Twilio would have sent about it, when it is one this
    /// sender received or sent.
    fn as_webhook(&self, m: &MessageResource) -> Option<FetchedDelivery> {
        let ours = match &self.config.sender {
            TwilioSender::From(from) => m.to.as_deref() == Some(from) || m.from.as_deref() == Some(from),
            TwilioSender::MessagingService(mg) => {
                m.messaging_service_sid.as_deref() == Some(mg) || m.direction.as_deref() == Some("inbound")
            }
        };
        if !ours {
            return None;
        }
        let mut form: Vec<(&str, String)> = vec![("MessageSid", m.sid.clone()), ("SmsSid", m.sid.clone())];
        if let Some(a) = &m.account_sid {
            form.push(("AccountSid", a.clone()));
        }
        form.extend(m.from.clone().map(|f| ("From", f)));
        form.extend(m.to.clone().map(|t| ("To", t)));
        if m.direction.as_deref() == Some("inbound") {
            form.push(("SmsStatus", "received".into()));
            form.push(("Body", m.body.clone().unwrap_or_default()));
            if let Some(digits) = m.from.as_deref().and_then(|f| f.strip_prefix("whatsapp:+")) {
                form.push(("WaId", digits.to_string()));
            }
        } else {
            let status = m.status.clone()?;
            if !matches!(status.as_str(), "sent" | "delivered" | "read" | "failed" | "undelivered") {
                return None;
            }
            form.push(("MessageStatus", status.clone()));
            form.push(("SmsStatus", status));
            if let Some(code) = m.error_code {
                form.push(("ErrorCode", code.to_string()));
            }
        }
        let body = form
            .iter()
            .map(|(k, v)| {
                format!("{k}={}", percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC))
            })
            .collect::<Vec<_>>()
            .join("&");
        Some(FetchedDelivery { query: String::new(), body })
    }

    fn is_the_send(&self, m: &MessageResource, to: &str, content: &MessageContent) -> bool {
        if m.to.as_deref() != Some(to) || !m.direction.as_deref().is_some_and(|d| d.starts_with("outbound")) {
            return false;
        }
        let sender_ok = match &self.config.sender {
            TwilioSender::From(from) => m.from.as_deref() == Some(from.as_str()),
            TwilioSender::MessagingService(mg) => m.messaging_service_sid.as_deref() == Some(mg.as_str()),
        };
        let body = m.body.as_deref().unwrap_or("");
        sender_ok
            && match content {
                MessageContent::Text { body: text } => body == text,
                MessageContent::Template(t) => t
                    .body
                    .iter()
                    .chain(t.button_url_suffix.iter())
                    .filter(|v| !v.trim().is_empty())
                    .all(|v| body.contains(v.as_str())),
            }
    }
}

/// `ContentVariables`: body parameter *n* is `"n"`; a URL button's suffix is the next one.
pub fn content_variables(body: &[String], button_url_suffix: Option<&str>) -> Map<String, Value> {
    let mut vars = Map::new();
    for (i, v) in body.iter().enumerate() {
        vars.insert((i + 1).to_string(), Value::String(v.clone()));
    }
    if let Some(s) = button_url_suffix {
        vars.insert((body.len() + 1).to_string(), Value::String(s.to_string()));
    }
    vars
}

/// A reqwest error without its URL (which names the account).
fn reason(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "Twilio");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_follow_the_body_and_the_button_comes_last() {
        let v = content_variables(&["Ana".into(), "Soldadura".into()], Some("viewform?entry.1=3"));
        assert_eq!(Value::Object(v).to_string(), r#"{"1":"Ana","2":"Soldadura","3":"viewform?entry.1=3"}"#);
    }
}
