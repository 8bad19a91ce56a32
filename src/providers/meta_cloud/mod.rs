//! Meta WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages`.
//!
//! * [`config`] — `type: meta_cloud` in YAML and its validation.
//! * [`account`] — what `recado check --online` asks Meta: the number, and the templates.
//! * this module — builds Meta's JSON from [`MessageContent`], reads `messages[0].id` and the
//!   recipient's ids from the answer; every call has a timeout.
//! * [`errors`] — Meta's error `code` → what to do, for synchronous answers and failed-status
//!   webhooks alike.
//! * [`webhook`] — the `hub.*` handshake, `X-Hub-Signature-256` over the raw body, and
//!   tolerant parsing of deliveries.
//!
//! Meta has no API to look a sent message up, so a send whose answer was lost is reconciled
//! from the status webhooks Meta retries for days: every send carries our outbox id in
//! `biz_opaque_callback_data`, which the webhooks echo.

pub mod account;
pub mod config;
pub mod errors;
pub mod media;
pub mod upload;
pub mod webhook;

use serde::Deserialize;
use serde_json::{json, Value};

pub use config::MetaCloudConfig;

use super::{
    Accepted, Acknowledgement, Handshake, InDoubtSend, ProviderSettings, Reconciliation, SendError, WebhookRejection,
    WebhookRequest,
};
use crate::domain::{MessageContent, PhoneNumber};

/// Meta expects a plain 200 with any body.
pub const ACKNOWLEDGEMENT: Acknowledgement = Acknowledgement { content_type: "text/plain; charset=utf-8", body: "" };

/// A Meta Cloud API sender.
#[derive(Clone)]
pub struct MetaCloud {
    config: MetaCloudConfig,
    http: reqwest::Client,
    url: String,
    /// Files on this machine already uploaded, shared by clones.
    uploads: std::sync::Arc<upload::Uploads>,
}

#[derive(Deserialize)]
struct SendResponse {
    #[serde(default)]
    contacts: Vec<SendContact>,
    #[serde(default)]
    messages: Vec<SendMessage>,
}

#[derive(Deserialize)]
struct SendContact {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Deserialize)]
struct SendMessage {
    id: String,
}

impl MetaCloud {
    pub fn new(config: MetaCloudConfig, http: reqwest::Client) -> Self {
        let url = format!("{}/{}/{}/messages", config.base_url, config.api_version, config.phone_number_id);
        Self { config, http, url, uploads: Default::default() }
    }

    pub fn settings(&self) -> &ProviderSettings {
        &self.config.settings
    }

    pub async fn send(
        &self,
        to: &PhoneNumber,
        content: &MessageContent,
        callback_data: &str,
    ) -> Result<Accepted, SendError> {
        let uploaded = self.media_ids(content).await?;
        let body = request_body(to, content, callback_data, &uploaded);
        let request = self.http.post(&self.url).bearer_auth(self.config.access_token.expose()).json(&body);
        let (status, bytes) = super::exchange(request, "Meta", self.config.settings.call_timeout).await?;
        if status.is_success() {
            let parsed: SendResponse = serde_json::from_slice(&bytes)
                .map_err(|e| SendError::InDoubt { reason: format!("unreadable answer from Meta: {e}") })?;
            let id = parsed
                .messages
                .into_iter()
                .next()
                .map(|m| m.id)
                .ok_or_else(|| SendError::InDoubt { reason: "Meta answered without a message id".into() })?;
            let recipient_ids = parsed
                .contacts
                .into_iter()
                .next()
                .map(|c| c.user_id.into_iter().chain(c.wa_id).collect())
                .unwrap_or_default();
            return Ok(Accepted { provider_message_id: id, recipient_ids });
        }
        Err(errors::classify(status.as_u16(), &bytes))
    }

    /// 131053 ("Media upload error"): a media id Meta no longer holds (it keeps uploads 30 days,
    /// and may drop them sooner): the next send uploads its files again.
    pub fn note_failure(&self, error: &crate::domain::ProviderError) {
        if error.code == 131053 {
            self.uploads.forget_all();
        }
    }

    pub fn verify_webhook(&self, request: &WebhookRequest<'_>) -> Result<(), WebhookRejection> {
        let header = request.headers.get(webhook::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
        webhook::verify_signature(self.config.app_secret.expose(), request.body, header).map_err(|e| match e {
            webhook::SignatureError::Missing => WebhookRejection::Unsigned(e.to_string()),
            _ => WebhookRejection::Forged(e.to_string()),
        })
    }

    pub fn handshake(&self, query: &str) -> Handshake {
        let pairs: Vec<(String, String)> = super::form_pairs(query);
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        match webhook::verify_subscription(
            get("hub.mode"),
            get("hub.verify_token"),
            get("hub.challenge"),
            self.config.verify_token.expose(),
        ) {
            Some(challenge) => Handshake::Accepted(challenge.to_string()),
            None => Handshake::Refused,
        }
    }

    /// Meta cannot be asked about a message: its status webhooks (retried for days) are the
    /// only source, so the answer is always "wait".
    pub async fn reconcile(&self, _send: &InDoubtSend) -> Reconciliation {
        Reconciliation::Unknown
    }
}

/// A file by its uploaded media id when it is a file on this machine (`uploaded`: path → id),
/// else by its public address.
fn media_object(link: &str, uploaded: &std::collections::HashMap<String, String>) -> Value {
    match uploaded.get(link) {
        Some(id) => json!({ "id": id }),
        None => json!({ "link": link }),
    }
}

/// The JSON body Meta expects for `content`, with local files by the media ids in `uploaded`.
pub fn request_body(
    to: &PhoneNumber,
    content: &MessageContent,
    callback_data: &str,
    uploaded: &std::collections::HashMap<String, String>,
) -> Value {
    let mut body = json!({
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": to.digits(),
        "biz_opaque_callback_data": callback_data,
    });
    match content {
        MessageContent::Text { body: text } => {
            body["type"] = json!("text");
            body["text"] = json!({ "preview_url": true, "body": text });
        }
        MessageContent::Media { kind, url, caption, filename } => {
            let mut media = media_object(url, uploaded);
            if let Some(c) = caption {
                media["caption"] = json!(c);
            }
            if let (crate::domain::MediaKind::Document, Some(f)) = (kind, filename) {
                media["filename"] = json!(f);
            }
            body["type"] = json!(kind.name());
            body[kind.name()] = media;
        }
        MessageContent::Choice { body: text, options, list_button } => {
            let action = match list_button {
                None => json!({ "buttons": options.iter().map(|o| json!({
                    "type": "reply", "reply": { "id": o.id, "title": o.title }
                })).collect::<Vec<_>>() }),
                Some(label) => json!({ "button": label, "sections": [ { "rows": options.iter().map(|o| json!({
                    "id": o.id, "title": o.title
                })).collect::<Vec<_>>() } ] }),
            };
            body["type"] = json!("interactive");
            body["interactive"] = json!({
                "type": if list_button.is_some() { "list" } else { "button" },
                "body": { "text": text },
                "action": action,
            });
        }
        MessageContent::Template(t) => {
            let mut components = Vec::new();
            if let Some(h) = &t.header {
                let mut media = media_object(&h.link, uploaded);
                if let (crate::domain::MediaKind::Document, Some(f)) = (h.kind, &h.filename) {
                    media["filename"] = json!(f);
                }
                let kind = h.kind.name();
                components.push(json!({ "type": "header", "parameters": [ { "type": kind, kind: media } ] }));
            }
            if !t.body.is_empty() {
                let params: Vec<Value> = t.body.iter().map(|p| json!({ "type": "text", "text": p })).collect();
                components.push(json!({ "type": "body", "parameters": params }));
            }
            if let Some(suffix) = &t.button_url_suffix {
                components.push(json!({
                    "type": "button", "sub_type": "url", "index": "0",
                    "parameters": [ { "type": "text", "text": suffix } ]
                }));
            }
            body["type"] = json!("template");
            body["template"] = json!({ "name": t.name, "language": { "code": t.language }, "components": components });
        }
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::TemplateMessage;

    #[test]
    fn template_body_shape() {
        let to = PhoneNumber::from_e164_unchecked("+56912345678");
        let content = MessageContent::Template(TemplateMessage {
            name: "encuesta".into(),
            language: "es".into(),
            body: vec!["Ana".into()],
            button_url_suffix: Some("A7".into()),
            header: None,
        });
        let none = std::collections::HashMap::new();
        let b = request_body(&to, &content, "42", &none);
        let with_file = MessageContent::Template(TemplateMessage {
            name: "requisitos".into(),
            language: "es".into(),
            body: Vec::new(),
            button_url_suffix: None,
            header: Some(crate::domain::HeaderMedia {
                kind: crate::domain::MediaKind::Document,
                link: "https://muni.example/r.pdf".into(),
                filename: Some("Requisitos.pdf".into()),
            }),
        });
        let h = &request_body(&to, &with_file, "43", &none)["template"]["components"][0];
        assert_eq!(h["type"], "header");
        assert_eq!(h["parameters"][0]["type"], "document");
        assert_eq!(h["parameters"][0]["document"]["link"], "https://muni.example/r.pdf");
        assert_eq!(h["parameters"][0]["document"]["filename"], "Requisitos.pdf");
        assert_eq!(b["to"], "56912345678");
        assert_eq!(b["biz_opaque_callback_data"], "42");
        assert_eq!(b["template"]["components"][0]["parameters"][0]["text"], "Ana");
        assert_eq!(b["template"]["components"][1]["sub_type"], "url");
        assert_eq!(b["template"]["language"]["code"], "es");
    }

    #[test]
    fn handshake_query() {
        assert_eq!(
            crate::providers::form_pairs("hub.mode=subscribe&hub.verify_token=a%20b&hub.challenge=1"),
            vec![
                ("hub.mode".into(), "subscribe".into()),
                ("hub.verify_token".into(), "a b".into()),
                ("hub.challenge".into(), "1".into())
            ]
        );
    }
}
