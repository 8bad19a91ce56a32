//! Meta webhooks: the GET verification handshake, `X-Hub-Signature-256` verification over the
//! raw body, and parsing of status and message notifications into [`ProviderEvent`]s.

use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use crate::domain::{InboundKind, MessageState, ProviderError, ProviderEvent};

/// The header Meta signs deliveries with.
pub const SIGNATURE_HEADER: &str = "x-hub-signature-256";

/// Answers the subscription handshake: the challenge when mode and token match.
pub fn verify_subscription<'a>(
    mode: Option<&str>,
    token: Option<&str>,
    challenge: Option<&'a str>,
    verify_token: &str,
) -> Option<&'a str> {
    let token_ok = token.is_some_and(|t| constant_time_eq(t.as_bytes(), verify_token.as_bytes()));
    (mode == Some("subscribe") && token_ok).then_some(challenge).flatten()
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare HMACs of both sides: equal length, constant time, no length leak.
    let mac = |x: &[u8]| {
        let mut m = Hmac::<Sha256>::new_from_slice(b"recado-compare").expect("any key length is valid for HMAC");
        m.update(x);
        m.finalize().into_bytes()
    };
    let (ma, mb) = (mac(a), mac(b));
    ma.iter().zip(mb.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Hub-Signature-256 header")]
    Missing,
    #[error("malformed X-Hub-Signature-256 header: expected sha256=<hex>")]
    Malformed,
    #[error("signature does not match the body")]
    Mismatch,
}

/// Verifies `sha256=<hex>` against HMAC-SHA256(app secret, raw body), in constant time.
pub fn verify_signature(app_secret: &str, body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let hex_sig = header.trim().strip_prefix("sha256=").ok_or(SignatureError::Malformed)?;
    let expected = hex::decode(hex_sig).map_err(|_| SignatureError::Malformed)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).map_err(|_| SignatureError::Mismatch)?;
    mac.update(body);
    mac.verify_slice(&expected).map_err(|_| SignatureError::Mismatch)
}

/// `sha256=<hex>` for a body (used by the sandbox to sign what it sends).
pub fn sign(app_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()).expect("any key length is valid for HMAC");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    object: String,
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<ChangeItem>,
}

#[derive(Deserialize)]
struct ChangeItem {
    #[serde(default)]
    field: String,
    #[serde(default)]
    value: Option<Value>,
}

#[derive(Deserialize)]
struct Value {
    #[serde(default)]
    contacts: Vec<Contact>,
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    statuses: Vec<Status>,
}

#[derive(Deserialize)]
struct Contact {
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    profile: Option<Profile>,
}

#[derive(Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    id: String,
    from: String,
    #[serde(default)]
    timestamp: Option<StringOrNumber>,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    context: Option<Context>,
    #[serde(default)]
    text: Option<Text>,
    #[serde(default)]
    button: Option<Button>,
    #[serde(default)]
    interactive: Option<Interactive>,
}

#[derive(Deserialize)]
struct Context {
    #[serde(default)]
    id: Option<String>,
}

#[derive(Deserialize)]
struct Text {
    body: String,
}

#[derive(Deserialize)]
struct Button {
    #[serde(default)]
    payload: String,
    #[serde(default)]
    text: String,
}

#[derive(Deserialize)]
struct Interactive {
    #[serde(default)]
    button_reply: Option<Reply>,
    #[serde(default)]
    list_reply: Option<Reply>,
}

#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    id: String,
    #[serde(default)]
    title: String,
}

#[derive(Deserialize)]
struct Status {
    id: String,
    status: String,
    #[serde(default)]
    timestamp: Option<StringOrNumber>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    biz_opaque_callback_data: Option<String>,
    #[serde(default)]
    errors: Vec<StatusError>,
}

#[derive(Deserialize)]
struct StatusError {
    code: i64,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    error_data: Option<ErrorData>,
}

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: Option<String>,
}

/// Meta sends timestamps as strings; some payloads carry numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    S(String),
    N(i64),
}

impl StringOrNumber {
    fn secs(&self) -> i64 {
        match self {
            StringOrNumber::S(s) => s.parse().unwrap_or(0),
            StringOrNumber::N(n) => *n,
        }
    }
}

/// Parses a (verified) delivery. Unknown fields and change types are ignored; statuses that
/// are not part of a message's life (`played`, `deleted`, …) are dropped.
pub fn parse(body: &[u8]) -> Result<Vec<ProviderEvent>, String> {
    let env: Envelope = serde_json::from_slice(body).map_err(|e| format!("not a Meta webhook: {e}"))?;
    if env.object != "whatsapp_business_account" {
        return Err(format!("unexpected object '{}'", env.object));
    }
    let mut events = Vec::new();
    for change in env.entry.into_iter().flat_map(|e| e.changes) {
        let Some(value) = change.value else { continue };
        if change.field != "messages" {
            continue;
        }
        let profile_of = |wa: &str| {
            value
                .contacts
                .iter()
                .find(|c| c.wa_id.as_deref() == Some(wa))
                .and_then(|c| c.profile.as_ref())
                .and_then(|p| p.name.clone())
        };
        for s in &value.statuses {
            let status = match s.status.as_str() {
                "sent" => MessageState::Sent,
                "delivered" => MessageState::Delivered,
                "read" => MessageState::Read,
                "failed" => MessageState::Failed,
                _ => continue,
            };
            let error = s.errors.first().map(|e| ProviderError {
                code: e.code,
                title: e.title.clone().or_else(|| e.message.clone()).unwrap_or_else(|| "error".into()),
                details: e.error_data.as_ref().and_then(|d| d.details.clone()),
            });
            events.push(ProviderEvent::Status {
                provider_message_id: s.id.clone(),
                status,
                timestamp: s.timestamp.as_ref().map(StringOrNumber::secs).unwrap_or(0),
                recipient_id: s.recipient_id.clone(),
                callback_data: s.biz_opaque_callback_data.clone(),
                error,
            });
        }
        for m in &value.messages {
            let kind = match m.kind.as_str() {
                "text" => InboundKind::Text { body: m.text.as_ref().map(|t| t.body.clone()).unwrap_or_default() },
                "button" => match &m.button {
                    Some(b) => InboundKind::Button { payload: b.payload.clone(), text: b.text.clone() },
                    None => InboundKind::Other { message_type: "button".into() },
                },
                "interactive" => {
                    match m.interactive.as_ref().and_then(|i| i.button_reply.as_ref().or(i.list_reply.as_ref())) {
                        Some(r) => InboundKind::Interactive { id: r.id.clone(), title: r.title.clone() },
                        None => InboundKind::Other { message_type: "interactive".into() },
                    }
                }
                other => InboundKind::Other { message_type: other.to_string() },
            };
            events.push(ProviderEvent::Inbound {
                provider_message_id: m.id.clone(),
                from: m.from.clone(),
                profile_name: profile_of(&m.from),
                timestamp: m.timestamp.as_ref().map(StringOrNumber::secs).unwrap_or(0),
                context_message_id: m.context.as_ref().and_then(|c| c.id.clone()),
                kind,
            });
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real delivery signed by Meta, published in pywa's test suite
    /// (`tests/test_utils.py`, `test_webhook_updates_validator`; the app secret was reset).
    const PYWA_SECRET: &str = "1222e786b144d0e85b9f365372d93676";
    const PYWA_BODY: &str = r#"{"object":"whatsapp_business_account","entry":[{"id":"264937493375603","changes":[{"value":{"messaging_product":"whatsapp","metadata":{"display_phone_number":"15550953877","phone_number_id":"277321005464405"},"contacts":[{"profile":{"name":"PyWa Tests"},"wa_id":"972544401243"}],"messages":[{"from":"972544401243","id":"wamid.HBgMOTcyNTQ0NDAxMjQzFQIAEhggM0RFQTNCMEEwRTY3QzUwODYzMDc4NjQ4QzM4ODAxM0YA","timestamp":"1730231903","text":{"body":"Hey there! I am using PyWa."},"type":"text"}]},"field":"messages"}]}]}"#;
    const PYWA_SIGNATURE: &str = "sha256=54edfa1d7259e0eb13c677cc7d73d1b5c86cfa12433d19156e058ab9251bc441";

    #[test]
    fn published_vector_verifies() {
        assert_eq!(verify_signature(PYWA_SECRET, PYWA_BODY.as_bytes(), Some(PYWA_SIGNATURE)), Ok(()));
        assert_eq!(sign(PYWA_SECRET, PYWA_BODY.as_bytes()), PYWA_SIGNATURE);
    }

    #[test]
    fn tampering_is_refused() {
        let mut body = PYWA_BODY.as_bytes().to_vec();
        body[10] ^= 1;
        assert_eq!(verify_signature(PYWA_SECRET, &body, Some(PYWA_SIGNATURE)), Err(SignatureError::Mismatch));
        assert_eq!(
            verify_signature("other", PYWA_BODY.as_bytes(), Some(PYWA_SIGNATURE)),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(verify_signature(PYWA_SECRET, PYWA_BODY.as_bytes(), None), Err(SignatureError::Missing));
        assert_eq!(
            verify_signature(PYWA_SECRET, PYWA_BODY.as_bytes(), Some("54edfa1d")),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(PYWA_SECRET, PYWA_BODY.as_bytes(), Some("sha256=zz")),
            Err(SignatureError::Malformed)
        );
    }

    #[test]
    fn parses_the_published_text_message() {
        let events = parse(PYWA_BODY.as_bytes()).unwrap();
        assert_eq!(
            events,
            vec![ProviderEvent::Inbound {
                provider_message_id: "wamid.HBgMOTcyNTQ0NDAxMjQzFQIAEhggM0RFQTNCMEEwRTY3QzUwODYzMDc4NjQ4QzM4ODAxM0YA"
                    .into(),
                from: "972544401243".into(),
                profile_name: Some("PyWa Tests".into()),
                timestamp: 1730231903,
                context_message_id: None,
                kind: InboundKind::Text { body: "Hey there! I am using PyWa.".into() },
            }]
        );
    }

    #[test]
    fn parses_statuses_buttons_and_failures() {
        let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
          "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"2"},
          "statuses":[
            {"id":"wamid.A","status":"read","timestamp":"1698266945","recipient_id":"56912345678","biz_opaque_callback_data":"42"},
            {"id":"wamid.B","status":"failed","timestamp":1698266946,"recipient_id":"56912345678",
             "errors":[{"code":131026,"title":"Message undeliverable","message":"Message undeliverable","error_data":{"details":"not on WhatsApp"}}]},
            {"id":"wamid.C","status":"played","timestamp":"1"}],
          "messages":[{"context":{"from":"1","id":"wamid.A"},"from":"56912345678","id":"wamid.R","timestamp":"1698269027","type":"button","button":{"payload":"si","text":"Sí"}}]
        }}]}]}"#;
        let events = parse(body.as_bytes()).unwrap();
        assert_eq!(events.len(), 3);
        assert!(
            matches!(&events[0], ProviderEvent::Status { status: MessageState::Read, callback_data: Some(c), .. } if c == "42")
        );
        match &events[1] {
            ProviderEvent::Status { status: MessageState::Failed, error: Some(e), timestamp, .. } => {
                assert_eq!(e.code, 131026);
                assert_eq!(*timestamp, 1698266946);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(&events[2], ProviderEvent::Inbound { context_message_id: Some(c), kind: InboundKind::Button { text, .. }, .. } if c == "wamid.A" && text == "Sí")
        );
        assert!(parse(b"{}").is_err());
        assert!(parse(b"not json").is_err());
    }

    #[test]
    fn handshake() {
        assert_eq!(verify_subscription(Some("subscribe"), Some("tok"), Some("1158201444"), "tok"), Some("1158201444"));
        assert_eq!(verify_subscription(Some("subscribe"), Some("bad"), Some("1"), "tok"), None);
        assert_eq!(verify_subscription(Some("unsubscribe"), Some("tok"), Some("1"), "tok"), None);
        assert_eq!(verify_subscription(Some("subscribe"), None, Some("1"), "tok"), None);
    }
}
