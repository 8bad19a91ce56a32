//! Twilio webhooks: `X-Twilio-Signature` verification and tolerant parsing of status callbacks
//! and inbound WhatsApp messages (both form-encoded) into [`ProviderEvent`]s.
//!
//! The signature is HMAC-SHA1, keyed with the account's Auth Token, over the URL Twilio called
//! followed by every form parameter's name and value, names sorted and each name's distinct
//! values sorted, Base64. JSON bodies are signed over the URL only, which carries
//! `bodySHA256=<hex SHA-256 of the body>`. As Twilio's own validators do, the URL is tried
//! with its default port added and with any port removed, because Twilio's signing side is not
//! consistent about ports. The URL is the one Twilio called: behind a reverse proxy, the
//! configured public URL, never the address recado listens on.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::domain::{InboundKind, MessageState, PhoneNumber, ProviderEvent, Sender};
pub use crate::providers::form_pairs;
use crate::providers::ParsedWebhook;

use super::errors::error_of;

/// The header Twilio signs requests with.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// The query parameter recado adds to its status callback URL: the outbox id, echoed back as
/// the status's callback data (what Meta's `biz_opaque_callback_data` is).
pub const CALLBACK_PARAMETER: &str = "recado_message";

/// Why a request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing X-Twilio-Signature header")]
    Missing,
    #[error("X-Twilio-Signature does not match the URL and parameters")]
    Mismatch,
    #[error("bodySHA256 does not match the body")]
    BodyMismatch,
}

/// The string Twilio signs: the URL, then for each parameter name (sorted) each of its
/// distinct values (sorted), name and value concatenated.
pub fn signing_string(url: &str, params: &[(String, String)]) -> String {
    let mut by_name: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (k, v) in params {
        by_name.entry(k.as_str()).or_default().insert(v.as_str());
    }
    let mut s = url.to_string();
    for (k, values) in by_name {
        for v in values {
            s.push_str(k);
            s.push_str(v);
        }
    }
    s
}

/// Base64(HMAC-SHA1(auth token, signing string)).
pub fn compute_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, auth_token.as_bytes());
    let tag = ring::hmac::sign(&key, signing_string(url, params).as_bytes());
    base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
}

/// Hex SHA-256 of a JSON body, as Twilio puts it in `bodySHA256`.
pub fn body_sha256(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// The URL with its scheme's default port added (unchanged when it has a port), and with any
/// port removed: the two forms Twilio's validators accept.
pub fn port_variants(url: &str) -> (String, String) {
    let Some((scheme, rest)) = url.split_once("://") else {
        return (url.to_string(), url.to_string());
    };
    let split = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(split);
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (format!("{u}@"), h),
        None => (String::new(), authority),
    };
    // A port is the digits after the last ':' outside an IPv6 literal's brackets.
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) && !h.ends_with(':') => (h, Some(p)),
        _ => (hostport, None),
    };
    let default = if scheme.eq_ignore_ascii_case("https") { "443" } else { "80" };
    let with_port = format!("{scheme}://{userinfo}{host}:{}{tail}", port.unwrap_or(default));
    let without_port = format!("{scheme}://{userinfo}{host}{tail}");
    (with_port, without_port)
}

/// Verifies a request as Twilio's SDK validators do. `url` is the URL Twilio called; `body`
/// the raw body (form parameters, or JSON when the URL carries `bodySHA256`).
pub fn verify(auth_token: &str, url: &str, body: &[u8], header: Option<&str>) -> Result<(), SignatureError> {
    let signature = header.map(str::trim).filter(|s| !s.is_empty()).ok_or(SignatureError::Missing)?;
    let query = url.split_once('?').map(|(_, q)| q.split('#').next().unwrap_or(q)).unwrap_or("");
    let body_hash = form_pairs(query).into_iter().find(|(k, _)| k == "bodySHA256").map(|(_, v)| v);
    let params = match &body_hash {
        Some(expected) => {
            if !constant_time_eq(body_sha256(body).as_bytes(), expected.to_ascii_lowercase().as_bytes()) {
                return Err(SignatureError::BodyMismatch);
            }
            Vec::new()
        }
        None => form_pairs(&String::from_utf8_lossy(body)),
    };
    let (with_port, without_port) = port_variants(url);
    let matches =
        |u: &str| constant_time_eq(compute_signature(auth_token, u, &params).as_bytes(), signature.as_bytes());
    if matches(&without_port) || matches(&with_port) {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// Compares without stopping at the first difference (a signature's length is no secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The field a delivery caught up from the Messages list adds: when the message was created
/// (RFC 2822, as the list gives it). Not one of Twilio's.
pub const CAUGHT_UP_DATE: &str = "RecadoDateCreated";

/// Parses a (verified) request: a status callback or an inbound message. `query` is the query
/// string of the URL Twilio called (it carries the outbox id of the message a status is about).
/// Tolerant, as Twilio adds parameters without notice: unknown ones are ignored, and statuses
/// that are not part of a message's life as recado tracks it (`queued`, `sending`, …) are
/// dropped.
pub fn parse(query: &str, body: &[u8]) -> Result<ParsedWebhook, String> {
    let text = std::str::from_utf8(body).map_err(|_| "not a Twilio request (the body is not UTF-8)".to_string())?;
    let mut form: HashMap<String, String> = HashMap::new();
    for (k, v) in form_pairs(text) {
        form.entry(k).or_insert(v);
    }
    let get = |k: &str| form.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let sid = get("MessageSid").or_else(|| get("SmsSid")).ok_or("not a Twilio message request (no MessageSid)")?;
    let status = get("MessageStatus").or_else(|| get("SmsStatus")).unwrap_or("received");
    let mut out = ParsedWebhook::default();
    if status == "received" {
        out.events.push(inbound_event(sid, &get)?);
        return Ok(out);
    }
    let state = match status {
        "sent" => MessageState::Sent,
        "delivered" => MessageState::Delivered,
        "read" => MessageState::Read,
        "failed" | "undelivered" => MessageState::Failed,
        // queued, sending, accepted, scheduled, canceled, partially_delivered, receiving, …
        _ => return Ok(out),
    };
    let error = match state {
        MessageState::Failed => {
            let code = get("ErrorCode").and_then(|c| c.parse::<i64>().ok()).unwrap_or(0);
            Some(error_of(code, get("ErrorMessage").unwrap_or(""), None))
        }
        _ => None,
    };
    let callback_data = form_pairs(query).into_iter().find(|(k, _)| k == CALLBACK_PARAMETER).map(|(_, v)| v);
    out.events.push(ProviderEvent::Status {
        provider_message_id: sid.to_string(),
        status: state,
        timestamp: 0,
        recipient_ids: Vec::new(),
        callback_data,
        error,
    });
    Ok(out)
}

fn inbound_event<'a>(sid: &str, get: &impl Fn(&str) -> Option<&'a str>) -> Result<ProviderEvent, String> {
    let from = get("From").ok_or("inbound message without From")?;
    let number = from.strip_prefix("whatsapp:").unwrap_or(from);
    let wa_id = get("WaId").map(str::to_string);
    let phone = wa_id
        .as_deref()
        .and_then(PhoneNumber::from_whatsapp_id)
        .or_else(|| number.strip_prefix('+').and_then(PhoneNumber::from_whatsapp_id));
    let num_media = get("NumMedia").and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    let kind = match (get("MessageType"), get("ButtonPayload"), get("ListId")) {
        (_, Some(payload), _) => InboundKind::Button {
            payload: payload.to_string(),
            text: get("ButtonText").or_else(|| get("Body")).unwrap_or_default().to_string(),
        },
        (_, None, Some(id)) => InboundKind::Interactive {
            id: id.to_string(),
            title: get("ListTitle").or_else(|| get("Body")).unwrap_or_default().to_string(),
        },
        _ if num_media > 0 => {
            let mime_type = get("MediaContentType0").unwrap_or_default().to_string();
            // Twilio's MessageType says image, video, audio or document; else the content type does.
            let ty = get("MessageType")
                .filter(|t| !t.is_empty() && *t != "text")
                .map(str::to_string)
                .or_else(|| match mime_type.split('/').next() {
                    Some(t @ ("image" | "video" | "audio")) => Some(t.to_string()),
                    Some(_) if !mime_type.is_empty() => Some("document".to_string()),
                    _ => None,
                })
                .unwrap_or_else(|| "media".into());
            match get("MediaUrl0") {
                Some(url) => InboundKind::Media {
                    media_type: ty,
                    media: crate::domain::MediaRef(url.to_string()),
                    mime_type,
                    caption: get("Body").unwrap_or_default().to_string(),
                    filename: None,
                },
                None => InboundKind::Other { message_type: ty },
            }
        }
        (Some("location"), _, _) | (None, _, _) if get("Latitude").is_some() && get("Longitude").is_some() => {
            match (
                get("Latitude").filter(|v| v.parse::<f64>().is_ok()),
                get("Longitude").filter(|v| v.parse::<f64>().is_ok()),
            ) {
                (Some(latitude), Some(longitude)) => InboundKind::Location {
                    latitude: latitude.to_string(),
                    longitude: longitude.to_string(),
                    name: get("Label").unwrap_or_default().to_string(),
                    address: get("Address").unwrap_or_default().to_string(),
                },
                _ => InboundKind::Other { message_type: "location".into() },
            }
        }
        (Some("text") | None, _, _) => InboundKind::Text { body: get("Body").unwrap_or_default().to_string() },
        (Some(other), _, _) => InboundKind::Other { message_type: other.to_string() },
    };
    // Twilio's webhooks carry no time (they arrive as it happens); a caught-up one does.
    let timestamp =
        get(CAUGHT_UP_DATE).and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok()).map_or(0, |d| d.timestamp());
    Ok(ProviderEvent::Inbound {
        provider_message_id: sid.to_string(),
        from: Sender { phone, user_ids: wa_id.into_iter().collect() },
        profile_name: get("ProfileName").map(str::to_string),
        timestamp,
        context_message_id: get("OriginalRepliedMessageSid").map(str::to_string),
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(
            port_variants("https://example.com/webhooks/t?a=1"),
            ("https://example.com:443/webhooks/t?a=1".into(), "https://example.com/webhooks/t?a=1".into())
        );
        assert_eq!(
            port_variants("http://user:pass@example.com:1234/x"),
            ("http://user:pass@example.com:1234/x".into(), "http://user:pass@example.com/x".into())
        );
        assert_eq!(port_variants("http://example.com"), ("http://example.com:80".into(), "http://example.com".into()));
    }

    #[test]
    fn a_status_callback_carries_the_outbox_id_from_the_url() {
        let body = b"SmsSid=SMc4&SmsStatus=undelivered&MessageStatus=undelivered&To=whatsapp%3A%2B56987650001&MessageSid=SMc4&AccountSid=AC8e&From=whatsapp%3A%2B14155238886&ApiVersion=2010-04-01&ErrorCode=30008";
        let parsed = parse("recado_message=42", body).unwrap();
        match &parsed.events[0] {
            ProviderEvent::Status { provider_message_id, status, callback_data, error, .. } => {
                assert_eq!(provider_message_id, "SMc4");
                assert_eq!(*status, MessageState::Failed);
                assert_eq!(callback_data.as_deref(), Some("42"));
                assert_eq!(error.as_ref().map(|e| e.code), Some(30008));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse("", b"MessageSid=SM1&MessageStatus=queued").unwrap().events.is_empty());
        assert!(parse("", b"Body=hola").is_err());
    }

    #[test]
    fn inbound_messages() {
        let body = b"SmsMessageSid=SM45&NumMedia=0&ProfileName=Ranjit+Sankar&SmsSid=SM45&WaId=5215512345678&SmsStatus=received&Body=hey&To=whatsapp%3A%2B14155238886&NumSegments=1&MessageSid=SM45&AccountSid=AC8e&From=whatsapp%3A%2B5215512345678&ApiVersion=2010-04-01";
        match &parse("", body).unwrap().events[0] {
            ProviderEvent::Inbound { from, kind, profile_name, .. } => {
                assert_eq!(from.phone.as_ref().map(|p| p.as_str()), Some("+525512345678"), "Mexico's 521 ids");
                assert_eq!(kind, &InboundKind::Text { body: "hey".into() });
                assert_eq!(profile_name.as_deref(), Some("Ranjit Sankar"));
            }
            other => panic!("{other:?}"),
        }
        let tap = b"MessageSid=SM9&SmsStatus=received&From=whatsapp%3A%2B56987650001&WaId=56987650001&MessageType=button&ButtonPayload=si&ButtonText=Confirmo&Body=Confirmo&OriginalRepliedMessageSid=MM0d";
        match &parse("", tap).unwrap().events[0] {
            ProviderEvent::Inbound { kind, context_message_id, .. } => {
                assert_eq!(kind, &InboundKind::Button { payload: "si".into(), text: "Confirmo".into() });
                assert_eq!(context_message_id.as_deref(), Some("MM0d"));
            }
            other => panic!("{other:?}"),
        }
        let media = b"MessageSid=MM1&SmsStatus=received&From=whatsapp%3A%2B56987650001&NumMedia=1&MediaContentType0=image%2Fjpeg&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fm&MessageType=image&Body=la+esquina";
        match &parse("", media).unwrap().events[0] {
            ProviderEvent::Inbound { kind, .. } => assert_eq!(
                kind,
                &InboundKind::Media {
                    media_type: "image".into(),
                    media: crate::domain::MediaRef("https://api.twilio.com/m".into()),
                    mime_type: "image/jpeg".into(),
                    caption: "la esquina".into(),
                    filename: None,
                }
            ),
            other => panic!("{other:?}"),
        }
        // A PDF: Twilio's MessageType is document; without one, the content type says it.
        let pdf = b"MessageSid=MM2&SmsStatus=received&From=whatsapp%3A%2B56987650001&NumMedia=1&MediaContentType0=application%2Fpdf&MediaUrl0=https%3A%2F%2Fapi.twilio.com%2Fd";
        match &parse("", pdf).unwrap().events[0] {
            ProviderEvent::Inbound { kind: InboundKind::Media { media_type, .. }, .. } => {
                assert_eq!(media_type, "document")
            }
            other => panic!("{other:?}"),
        }
        // A shared location (Twilio's documented fields).
        let place = b"MessageSid=SM3&SmsStatus=received&From=whatsapp%3A%2B56987650001&NumMedia=0&MessageType=location&Latitude=-33.4372&Longitude=-70.6506&Address=Plaza+de+Armas&Label=Municipalidad&Body=";
        match &parse("", place).unwrap().events[0] {
            ProviderEvent::Inbound { kind, .. } => {
                assert_eq!(
                    kind,
                    &InboundKind::Location {
                        latitude: "-33.4372".into(),
                        longitude: "-70.6506".into(),
                        name: "Municipalidad".into(),
                        address: "Plaza de Armas".into(),
                    }
                );
                assert!(
                    kind.text().contains("https://www.openstreetmap.org/?mlat=-33.4372&mlon=-70.6506"),
                    "{}",
                    kind.text()
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
