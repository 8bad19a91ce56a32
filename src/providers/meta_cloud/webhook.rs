//! Meta webhooks: the GET verification handshake (`hub.mode`, `hub.verify_token`,
//! `hub.challenge`), `X-Hub-Signature-256` verification over the raw body, and tolerant parsing
//! of status and message notifications into [`ProviderEvent`]s.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::domain::{InboundKind, MessageState, PhoneNumber, ProviderError, ProviderEvent, Sender};
use crate::providers::ParsedWebhook;

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
        // HMAC accepts keys of any length; this key is fixed and non-empty.
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(b"recado-compare") else { return [0u8; 32] };
        m.update(x);
        let mut out = [0u8; 32];
        out.copy_from_slice(&m.finalize().into_bytes());
        out
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
    match Hmac::<Sha256>::new_from_slice(app_secret.as_bytes()) {
        Ok(mut mac) => {
            mac.update(body);
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        }
        // Unreachable: HMAC takes keys of any length.
        Err(_) => String::new(),
    }
}

/// Parses a (verified) delivery. Tolerant, as Meta's format grows: unknown fields and change
/// types are ignored, statuses that are not part of a message's life (`played`, …) are
/// dropped, a message without a visible phone number (a user with a username) is kept with
/// the ids it has, and one unreadable item never drops the others (it is reported in
/// `problems`).
pub fn parse(body: &[u8]) -> Result<ParsedWebhook, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not a Meta webhook (not JSON: {e})"))?;
    match v.get("object").and_then(Value::as_str) {
        Some("whatsapp_business_account") => {}
        Some(other) => return Err(format!("unexpected object '{other}'")),
        None => return Err("not a Meta webhook (no object)".into()),
    }
    let mut out = ParsedWebhook::default();
    for (ei, entry) in list(&v["entry"]).iter().enumerate() {
        for (ci, change) in list(&entry["changes"]).iter().enumerate() {
            if change["field"].as_str() != Some("messages") {
                continue;
            }
            let value = &change["value"];
            let contacts = list(&value["contacts"]);
            for (si, s) in list(&value["statuses"]).iter().enumerate() {
                match status_event(s) {
                    Ok(Some(ev)) => out.events.push(ev),
                    Ok(None) => {}
                    Err(e) => out.problems.push(format!("entry[{ei}].changes[{ci}].statuses[{si}]: {e}")),
                }
            }
            for (mi, m) in list(&value["messages"]).iter().enumerate() {
                match message_event(m, &contacts) {
                    Ok(ev) => out.events.push(ev),
                    Err(e) => out.problems.push(format!("entry[{ei}].changes[{ci}].messages[{mi}]: {e}")),
                }
            }
        }
    }
    Ok(out)
}

fn list(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Meta sends timestamps as strings of Unix seconds; some payloads carry numbers.
fn seconds(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.trim().parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The E.164 number of a WhatsApp id (see [`PhoneNumber::from_whatsapp_id`]).
fn phone_of(wa_id: &str) -> Option<PhoneNumber> {
    PhoneNumber::from_whatsapp_id(wa_id)
}

fn status_event(s: &Value) -> Result<Option<ProviderEvent>, String> {
    let id = text(&s["id"]).ok_or("status without id")?;
    let status = match s["status"].as_str().ok_or("status without status")? {
        "sent" => MessageState::Sent,
        "delivered" => MessageState::Delivered,
        "read" => MessageState::Read,
        "failed" => MessageState::Failed,
        _ => return Ok(None),
    };
    let error = list(&s["errors"]).first().map(|e| ProviderError {
        code: e["code"].as_i64().unwrap_or(0),
        title: text(&e["title"]).or_else(|| text(&e["message"])).unwrap_or_else(|| "error".into()),
        details: text(&e["error_data"]["details"]),
    });
    // Business-scoped ids first: they outlive a change of number.
    let recipient_ids: Vec<String> =
        ["recipient_user_id", "recipient_id"].iter().filter_map(|k| text(&s[*k])).collect();
    Ok(Some(ProviderEvent::Status {
        provider_message_id: id,
        status,
        timestamp: seconds(&s["timestamp"]),
        recipient_ids,
        callback_data: text(&s["biz_opaque_callback_data"]),
        error,
    }))
}

/// A coordinate as Meta sends it (a JSON number), kept as written.
fn coordinate(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if s.trim().parse::<f64>().is_ok() => Some(s.trim().to_string()),
        _ => None,
    }
}

fn message_event(m: &Value, contacts: &[Value]) -> Result<ProviderEvent, String> {
    let id = text(&m["id"]).ok_or("message without id")?;
    let from = text(&m["from"]);
    let from_user = text(&m["from_user_id"]);
    if from.is_none() && from_user.is_none() {
        return Err("message without a sender (neither from nor from_user_id)".into());
    }
    let contact = contacts.iter().find(|c| {
        (from.is_some() && text(&c["wa_id"]) == from) || (from_user.is_some() && text(&c["user_id"]) == from_user)
    });
    let kind = match m["type"].as_str().unwrap_or("") {
        "text" => InboundKind::Text { body: text(&m["text"]["body"]).unwrap_or_default() },
        "button" => InboundKind::Button {
            payload: text(&m["button"]["payload"]).unwrap_or_default(),
            text: text(&m["button"]["text"]).unwrap_or_default(),
        },
        "interactive" => {
            let reply = if m["interactive"]["button_reply"].is_object() {
                &m["interactive"]["button_reply"]
            } else {
                &m["interactive"]["list_reply"]
            };
            match (text(&reply["id"]), text(&reply["title"])) {
                (Some(id), title) => InboundKind::Interactive { id, title: title.unwrap_or_default() },
                (None, _) => InboundKind::Other { message_type: "interactive".into() },
            }
        }
        media @ ("image" | "document" | "audio" | "video" | "sticker") => match text(&m[media]["id"]) {
            Some(id) => InboundKind::Media {
                media_type: media.to_string(),
                media: crate::domain::MediaRef(id),
                mime_type: text(&m[media]["mime_type"]).unwrap_or_default(),
                caption: text(&m[media]["caption"]).unwrap_or_default(),
                filename: text(&m[media]["filename"]),
            },
            None => InboundKind::Other { message_type: media.to_string() },
        },
        "location" => {
            let l = &m["location"];
            match (coordinate(&l["latitude"]), coordinate(&l["longitude"])) {
                (Some(latitude), Some(longitude)) => InboundKind::Location {
                    latitude,
                    longitude,
                    name: text(&l["name"]).unwrap_or_default(),
                    address: text(&l["address"]).unwrap_or_default(),
                },
                _ => InboundKind::Other { message_type: "location".into() },
            }
        }
        "" => InboundKind::Other { message_type: "unknown".into() },
        other => InboundKind::Other { message_type: other.to_string() },
    };
    Ok(ProviderEvent::Inbound {
        provider_message_id: id,
        from: Sender {
            phone: from.as_deref().and_then(phone_of),
            user_ids: from_user.into_iter().chain(from).collect(),
        },
        profile_name: contact.and_then(|c| text(&c["profile"]["name"])),
        timestamp: seconds(&m["timestamp"]),
        context_message_id: text(&m["context"]["id"]),
        kind,
    })
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
        let events = parse(PYWA_BODY.as_bytes()).unwrap().events;
        assert_eq!(
            events,
            vec![ProviderEvent::Inbound {
                provider_message_id: "wamid.HBgMOTcyNTQ0NDAxMjQzFQIAEhggM0RFQTNCMEEwRTY3QzUwODYzMDc4NjQ4QzM4ODAxM0YA"
                    .into(),
                from: Sender {
                    phone: Some(PhoneNumber::from_e164_unchecked("+972544401243")),
                    user_ids: vec!["972544401243".into()]
                },
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
        let events = parse(body.as_bytes()).unwrap().events;
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

    /// Media and locations as Meta's webhook reference documents them (the image from the
    /// reference in `api-facts.md`, with a caption; a voice note; a shared place).
    #[test]
    fn parses_media_and_locations() {
        let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
          "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"2"},
          "messages":[
            {"from":"972987654321","id":"wamid.I","timestamp":"1697043379","type":"image","image":{"mime_type":"image/jpeg","sha256":"4654+8g=","id":"65463453","caption":"el bache"}},
            {"from":"972987654321","id":"wamid.V","timestamp":"1697043380","type":"audio","audio":{"mime_type":"audio/ogg; codecs=opus","sha256":"x","id":"778","voice":true}},
            {"from":"972987654321","id":"wamid.D","timestamp":"1697043381","type":"document","document":{"mime_type":"application/pdf","sha256":"y","id":"779","filename":"carnet.pdf"}},
            {"from":"972987654321","id":"wamid.L","timestamp":"1697043382","type":"location","location":{"latitude":-33.4372,"longitude":-70.6506,"name":"Municipalidad","address":"Plaza de Armas"}},
            {"from":"972987654321","id":"wamid.X","timestamp":"1697043383","type":"image","image":{"mime_type":"image/jpeg"}}]
        }}]}]}"#;
        let kinds: Vec<InboundKind> = parse(body.as_bytes())
            .unwrap()
            .events
            .into_iter()
            .filter_map(|e| match e {
                ProviderEvent::Inbound { kind, .. } => Some(kind),
                _ => None,
            })
            .collect();
        assert_eq!(
            kinds[0],
            InboundKind::Media {
                media_type: "image".into(),
                media: crate::domain::MediaRef("65463453".into()),
                mime_type: "image/jpeg".into(),
                caption: "el bache".into(),
                filename: None,
            }
        );
        assert_eq!(kinds[0].text(), "[image] el bache");
        assert!(matches!(&kinds[1], InboundKind::Media { media_type, .. } if media_type == "audio"));
        assert!(matches!(&kinds[2], InboundKind::Media { filename: Some(f), .. } if f == "carnet.pdf"));
        assert_eq!(
            kinds[3],
            InboundKind::Location {
                latitude: "-33.4372".into(),
                longitude: "-70.6506".into(),
                name: "Municipalidad".into(),
                address: "Plaza de Armas".into()
            }
        );
        assert_eq!(
            kinds[3].text(),
            "[location] -33.4372,-70.6506 Municipalidad, Plaza de Armas https://www.openstreetmap.org/?mlat=-33.4372&mlon=-70.6506#map=17/-33.4372/-70.6506"
        );
        assert_eq!(kinds[4], InboundKind::Other { message_type: "image".into() }, "no media id: nothing to fetch");
    }

    #[test]
    fn whatsapp_ids_become_the_numbers_records_hold() {
        let e164 = |w: &str| phone_of(w).map(|p| p.as_str().to_string());
        assert_eq!(e164("5215512345678").as_deref(), Some("+525512345678"), "Mexico: the old 1 goes");
        assert_eq!(e164("551187654321").as_deref(), Some("+5511987654321"), "Brazil: the ninth digit comes");
        assert_eq!(e164("551132654321").as_deref(), Some("+551132654321"), "Brazil: a landline stays");
        assert_eq!(e164("5511987654321").as_deref(), Some("+5511987654321"));
        assert_eq!(e164("5491123456789").as_deref(), Some("+5491123456789"), "Argentina keeps its 9");
        assert_eq!(e164("56987654321").as_deref(), Some("+56987654321"));
        assert_eq!(e164("12"), None);
    }

    /// Meta's own example of a message from a user with a username and no visible number
    /// (Business-scoped user IDs page, 2026), next to an ordinary status and a broken item.
    #[test]
    fn a_user_without_a_visible_number_and_a_broken_item_drop_nothing_else() {
        let body = r#"{"object":"whatsapp_business_account","entry":[{"id":"1","changes":[{"field":"messages","value":{
          "messaging_product":"whatsapp","metadata":{"display_phone_number":"1","phone_number_id":"2"},
          "contacts":[{"profile":{"name":"Sheena Nelson","username":"@realsheenanelson"},"user_id":"US.13491208655302741918","parent_user_id":"US.ENT.11815799212886844830"}],
          "messages":[
            {"from_user_id":"US.13491208655302741918","from_parent_user_id":"US.ENT.11815799212886844830","id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgASGBQzQTRBNjU5OUFFRTAzODEwMTQ0RgA=","timestamp":"1749416383","type":"text","text":{"body":"Does it come in another color?"}},
            {"timestamp":"1749416384","type":"text","text":{"body":"no id, no sender"}}],
          "statuses":[
            {"id":"wamid.S","status":"delivered","timestamp":"1750030073","recipient_id":"16505551234","recipient_user_id":"US.1","new_field":{"x":1}},
            {"status":"read"}]
        }}]}]}"#;
        let parsed = parse(body.as_bytes()).unwrap();
        assert_eq!(parsed.events.len(), 2, "{parsed:?}");
        assert_eq!(parsed.problems.len(), 2, "{parsed:?}");
        match &parsed.events[0] {
            ProviderEvent::Status { recipient_ids, status: MessageState::Delivered, .. } => {
                assert_eq!(recipient_ids, &vec!["US.1".to_string(), "16505551234".to_string()])
            }
            other => panic!("{other:?}"),
        }
        match &parsed.events[1] {
            ProviderEvent::Inbound { from, profile_name, .. } => {
                assert_eq!(from.phone, None);
                assert_eq!(from.user_ids, vec!["US.13491208655302741918".to_string()]);
                assert_eq!(profile_name.as_deref(), Some("Sheena Nelson"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handshake() {
        assert_eq!(verify_subscription(Some("subscribe"), Some("tok"), Some("1158201444"), "tok"), Some("1158201444"));
        assert_eq!(verify_subscription(Some("subscribe"), Some("bad"), Some("1"), "tok"), None);
        assert_eq!(verify_subscription(Some("unsubscribe"), Some("tok"), Some("1"), "tok"), None);
        assert_eq!(verify_subscription(Some("subscribe"), None, Some("1"), "tok"), None);
    }
}
