//! Twilio Programmable Messaging for WhatsApp: `POST /2010-04-01/Accounts/{sid}/Messages.json`.
//!
//! * [`config`] — `type: twilio` in YAML and its validation, and how rules' template names map
//!   to Content SIDs.
//! * this module — builds Twilio's form from [`MessageContent`] (approved templates as
//!   `ContentSid` + `ContentVariables`, free text as `Body`), with a `StatusCallback` that
//!   carries our outbox id; reads the message SID from the 201; looks up sends whose answer was
//!   lost in the Messages list; every call has a timeout.
//! * [`account`] — what `recado check --online` asks Twilio: the account, and each template's
//!   content and WhatsApp approval.
//! * [`errors`] — Twilio's error `code` → what to do, for synchronous answers and `ErrorCode`s
//!   in status callbacks alike.
//! * [`webhook`] — `X-Twilio-Signature` over the public URL and the form, and tolerant parsing.
//!
//! Twilio has no idempotency key on create. A send whose outcome is unknown is therefore
//! looked up in the Messages list (to this person, from this sender, created since just before
//! the send, with the same content) and sent again only when Twilio has no record of it.

pub mod account;
pub mod config;
pub mod errors;
pub mod media;
pub mod webhook;

#[cfg(test)]
mod signature_vectors;

use serde::Deserialize;
use serde_json::{Map, Value};

pub use config::TwilioConfig;

use super::{
    Accepted, Acknowledgement, CatchUp, FetchedDelivery, Handshake, InDoubtSend, ParsedWebhook, ProviderSettings,
    Reconciliation, SendError, WebhookRejection, WebhookRequest,
};
use crate::domain::{MessageContent, MessageState, PhoneNumber, ProviderError};
use config::TwilioSender;

/// Appended to the status callback URL: Twilio's connection overrides asking for five retries
/// of a failed callback, on any failure.
const CONNECTION_OVERRIDES: &str = "#rc=5&rp=all";

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
    #[serde(default)]
    num_media: Option<String>,
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
            // Buttons need a Content template made in advance: a question made up in the
            // conversation goes as numbered text, which the flow also reads.
            MessageContent::Choice { .. } => form.push(("Body", content.readable_text())),
            // Twilio fetches the file from its address; a document's name is the address's.
            MessageContent::Media { url, caption, .. } => {
                form.push(("MediaUrl", url.clone()));
                if let Some(c) = caption {
                    form.push(("Body", c.clone()));
                }
            }
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
            form.push((
                "StatusCallback",
                format!("{url}{sep}{}={id}{CONNECTION_OVERRIDES}", webhook::CALLBACK_PARAMETER),
            ));
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
        let (user, password) = self.credentials();
        let request = self.http.post(&self.messages_url).basic_auth(user, Some(password)).form(&form);
        let (status, bytes) = super::exchange(request, "Twilio", self.config.settings.call_timeout).await?;
        if status.is_success() {
            let m: MessageResource = serde_json::from_slice(&bytes)
                .map_err(|e| SendError::InDoubt { reason: format!("unreadable answer from Twilio: {e}") })?;
            return Ok(Accepted { provider_message_id: m.sid, recipient_ids: Vec::new() });
        }
        Err(errors::classify(status.as_u16(), &bytes))
    }

    pub fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookRejection> {
        let header = request.headers.get(webhook::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        // Twilio signs the URL it called: recado's public URL, or `status_callback_url` when
        // that is where callbacks are sent (then with the query recado added to it). In case
        // Twilio signs the connection overrides recado appended, those variants are tried too.
        let token = self.config.auth_token.expose();
        let query = request.url.split_once('?').map(|(_, q)| q);
        let mut urls = vec![request.url.to_string()];
        if let Some(cb) = &self.config.status_callback_url {
            let base = cb.split('?').next().unwrap_or(cb);
            urls.push(query.map_or_else(|| base.to_string(), |q| format!("{base}?{q}")));
        }
        if query.is_some_and(|q| q.contains(webhook::CALLBACK_PARAMETER)) {
            let with_overrides: Vec<String> = urls.iter().map(|u| format!("{u}{CONNECTION_OVERRIDES}")).collect();
            urls.extend(with_overrides);
        }
        let mut outcome = Err(webhook::SignatureError::Missing);
        for url in &urls {
            outcome = webhook::verify(token, url, request.body, header);
            if !matches!(outcome, Err(webhook::SignatureError::Mismatch)) {
                break;
            }
        }
        // Unsigned is refused like mis-signed (403): to Twilio's side both mean "not from us".
        outcome.map_err(|e| WebhookRejection::Forged(e.to_string()))
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
                    Err(e) => return Reconciliation::Undecided(format!("unreadable Messages list page: {e}")),
                },
                Ok(r) => {
                    let status = r.status().as_u16();
                    let bytes = r.bytes().await.unwrap_or_default();
                    return Reconciliation::Undecided(format!(
                        "listing messages: {}",
                        errors::classify(status, &bytes).describe()
                    ));
                }
                Err(e) => return Reconciliation::Undecided(format!("listing messages: {}", reason(&e))),
            };
            let mut older_seen = false;
            for m in &page.messages {
                let created = m.date_created.as_deref().and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok());
                let Some(created) = created.map(|c| c.timestamp()) else { continue };
                if created < since {
                    older_seen = true;
                    continue;
                }
                if !send.known_ids.contains(&m.sid) && self.is_the_send(m, &to, &send.content) {
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
        Reconciliation::Undecided(format!(
            "more than {} recent messages to this person: not sure which is this send",
            RECONCILE_PAGES * 50
        ))
    }

    /// Reads the Messages list since `since_ms`: messages people wrote to this sender, and the
    /// current status of what it sent, as the form-encoded webhooks Twilio would have posted.
    /// Twilio retries a webhook only within seconds (its connection overrides), so after an
    /// outage this is the only way to hear them.
    pub async fn catch_up(&self, ask: &CatchUp) -> Result<Vec<FetchedDelivery>, String> {
        let since = ask.since_ms / 1000 - RECONCILE_SKEW_SECONDS;
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
            let mut complete = false;
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
                        Some(c) if c >= since => out.extend(self.as_webhook(m, ask)),
                        Some(_) => older_seen = true,
                        None => {}
                    }
                }
                match page.next_page_uri.filter(|u| !u.is_empty()) {
                    Some(next) if !older_seen => request = self.http.get(format!("{}{}", self.config.base_url, next)),
                    _ => {
                        complete = true;
                        break;
                    }
                }
            }
            if !complete {
                // Ran out of pages before reaching `since`: say so rather than pretend.
                return Err(format!(
                    "more than {} messages since the last delivery: only the newest were caught up",
                    CATCH_UP_PAGES * CATCH_UP_PAGE_SIZE
                ));
            }
        }
        Ok(out)
    }

    /// A listed message as the webhook Twilio would have sent about it, when it is one this
    /// sender received or sent.
    fn as_webhook(&self, m: &MessageResource, ask: &CatchUp) -> Option<FetchedDelivery> {
        let ours = match &self.config.sender {
            TwilioSender::From(from) => m.to.as_deref() == Some(from) || m.from.as_deref() == Some(from),
            // The account may have other services and numbers: only this service's messages.
            TwilioSender::MessagingService(mg) => m.messaging_service_sid.as_deref() == Some(mg),
        };
        if !ours {
            return None;
        }
        let inbound = m.direction.as_deref() == Some("inbound");
        if inbound && ask.known_inbound.contains(&m.sid) {
            return None;
        }
        if !inbound {
            let listed = match m.status.as_deref() {
                Some("sent") => MessageState::Sent,
                Some("delivered") => MessageState::Delivered,
                Some("read") => MessageState::Read,
                Some("failed" | "undelivered") => MessageState::Failed,
                _ => return None,
            };
            // Nothing new about a message whose state recado has already reached.
            if ask.known_states.get(&m.sid).is_some_and(|known| known.advance(listed).is_none()) {
                return None;
            }
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
            if let Some(n) = &m.num_media {
                form.push(("NumMedia", n.clone()));
            }
            // Not a field of Twilio's webhooks: when the person wrote, which the webhook's
            // arrival would have told.
            if let Some(d) = &m.date_created {
                form.push((webhook::CAUGHT_UP_DATE, d.clone()));
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
        Some(FetchedDelivery { query: String::new(), body: super::encode_form(&form) })
    }

    /// Whether a listed message is the send in doubt: to the same person, from this sender,
    /// not already failed (an earlier attempt refused later, e.g. for throughput, carries the
    /// same content), with the same content. Messages already recorded for other sends were
    /// excluded by the caller.
    fn is_the_send(&self, m: &MessageResource, to: &str, content: &MessageContent) -> bool {
        if m.to.as_deref() != Some(to) || !m.direction.as_deref().is_some_and(|d| d.starts_with("outbound")) {
            return false;
        }
        if matches!(m.status.as_deref(), Some("failed" | "undelivered" | "canceled")) {
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
                MessageContent::Choice { .. } => body == content.readable_text(),
                MessageContent::Media { caption, .. } => body == caption.as_deref().unwrap_or(""),
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
    super::transport_reason(e, "Twilio")
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
