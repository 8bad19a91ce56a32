//! Meta WhatsApp Cloud API: `POST /{version}/{phone_number_id}/messages`.
//!
//! Builds the vendor's JSON from [`MessageContent`], reads `messages[0].id` and
//! `contacts[0].wa_id` from the answer, and classifies errors by Meta's error `code`
//! ([`errors::classify`]), never by HTTP status alone.

pub mod errors;
pub mod webhook;

use serde::Deserialize;
use serde_json::{json, Value};

use super::{Accepted, SendError};
use crate::config::MetaCloudConfig;
use crate::domain::{MessageContent, PhoneNumber};

/// A Meta Cloud API sender.
#[derive(Clone)]
pub struct MetaCloud {
    config: MetaCloudConfig,
    http: reqwest::Client,
    url: String,
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
    wa_id: Option<String>,
}

#[derive(Deserialize)]
struct SendMessage {
    id: String,
}

impl MetaCloud {
    pub fn new(config: MetaCloudConfig, http: reqwest::Client) -> Self {
        let url = format!("{}/{}/{}/messages", config.base_url, config.api_version, config.phone_number_id);
        Self { config, http, url }
    }

    pub fn config(&self) -> &MetaCloudConfig {
        &self.config
    }

    pub async fn send(
        &self,
        to: &PhoneNumber,
        content: &MessageContent,
        callback_data: &str,
    ) -> Result<Accepted, SendError> {
        let body = request_body(to, content, callback_data);
        let response =
            self.http.post(&self.url).bearer_auth(self.config.access_token.expose()).json(&body).send().await.map_err(
                |e| {
                    // A refused or failed connection never reached Meta: safe to retry. Anything
                    // after the request was written may have been accepted.
                    if e.is_connect() {
                        SendError::Retry { reason: format!("cannot reach Meta: {e}") }
                    } else {
                        SendError::InDoubt { reason: format!("no answer from Meta: {e}") }
                    }
                },
            )?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| SendError::InDoubt { reason: format!("answer from Meta cut short: {e}") })?;
        if status.is_success() {
            let parsed: SendResponse = serde_json::from_slice(&bytes)
                .map_err(|e| SendError::InDoubt { reason: format!("unreadable answer from Meta: {e}") })?;
            let id = parsed
                .messages
                .into_iter()
                .next()
                .map(|m| m.id)
                .ok_or_else(|| SendError::InDoubt { reason: "Meta answered without a message id".into() })?;
            return Ok(Accepted {
                provider_message_id: id,
                recipient_id: parsed.contacts.into_iter().next().and_then(|c| c.wa_id),
            });
        }
        Err(errors::classify(status.as_u16(), &bytes))
    }
}

/// The JSON body Meta expects for `content`.
pub fn request_body(to: &PhoneNumber, content: &MessageContent, callback_data: &str) -> Value {
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
        MessageContent::Template(t) => {
            let mut components = Vec::new();
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
        });
        let b = request_body(&to, &content, "42");
        assert_eq!(b["to"], "56912345678");
        assert_eq!(b["biz_opaque_callback_data"], "42");
        assert_eq!(b["template"]["components"][0]["parameters"][0]["text"], "Ana");
        assert_eq!(b["template"]["components"][1]["sub_type"], "url");
        assert_eq!(b["template"]["language"]["code"], "es");
    }
}
