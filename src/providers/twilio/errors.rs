//! Twilio error codes → what to do about them, for synchronous answers (HTTP 4xx/5xx with
//! `{code, message, more_info, status}`) and for `ErrorCode` in status callbacks alike.
//!
//! Twilio warns not to build logic on its error *messages*, and status callbacks often carry
//! no message at all, so the meaning written to a row comes from the table below where the code
//! is known, and from Twilio's message otherwise; the code always goes with it.

use std::time::Duration;

use serde::Deserialize;

use crate::domain::ProviderError;
use crate::providers::SendError;

#[derive(Deserialize)]
struct Envelope {
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    more_info: Option<String>,
}

/// What a code means, in words a programme team can act on.
pub fn meaning(code: i64) -> Option<&'static str> {
    Some(match code {
        20003 => "Twilio refused the credentials (Account SID, Auth Token or API key)",
        20404 => "Twilio resource not found",
        20429 => "too many requests to Twilio at once",
        21211 => "invalid 'To' phone number",
        21408 => "the account may not send to this region",
        21606 => "the 'From' number is not a WhatsApp sender of this account",
        21610 => "the recipient unsubscribed (replied STOP) from this sender",
        21611 => "the sender's queue is full (more than ten hours of messages at its pace)",
        21614 => "the 'To' number is not a mobile number",
        21617 => "the message is longer than 1,600 characters",
        21656 => "the ContentVariables are not valid",
        21655 => "the ContentSid is not valid",
        30001 => "the sender's queue overflowed (more than ten hours of messages at its pace)",
        30003 => "unreachable: the phone is off or out of coverage",
        30005 => "unknown destination: the number does not exist",
        30006 => "landline or unreachable carrier",
        30007 => "filtered as spam by the carrier or WhatsApp",
        30008 => "unknown delivery error",
        30036 => "not sent within its validity period (it waited too long in Twilio's queue)",
        63003 => "the number is not on WhatsApp (channel could not find the 'To' address)",
        63013 => "WhatsApp refused the message as against its policy",
        63016 => "outside the 24-hour window: a template is needed",
        63017 => "the account's combined throughput was exceeded",
        63018 => "the sender's WhatsApp rate limit was exceeded",
        63019 => "WhatsApp could not download the message's media",
        63024 => "invalid message recipient",
        63028 => "the template's variables do not match the approved template",
        63038 => "the account's daily message limit was reached",
        63049 => "Meta chose not to deliver this marketing message (its per-person marketing limit)",
        63112 => "the WhatsApp Business Account was disabled by Meta",
        _ => return None,
    })
}

/// Classifies a non-2xx answer by its Twilio code; the HTTP status only decides when the body
/// has no code.
pub fn classify(http_status: u16, body: &[u8]) -> SendError {
    let Ok(env) = serde_json::from_slice::<Envelope>(body) else {
        let snippet: String = crate::domain::mask_phones_in(
            &String::from_utf8_lossy(&body[..body.len().min(200)]).split_whitespace().collect::<Vec<_>>().join(" "),
        );
        return if http_status >= 500 && http_status != 503 {
            // Not Twilio's own answer but a gateway's (502, 504): the request may have reached
            // Twilio and been accepted behind it. Looked up before any new send.
            SendError::InDoubt { reason: format!("Twilio's gateway answered HTTP {http_status}: {snippet}") }
        } else if http_status == 503 || http_status == 429 || http_status == 408 {
            // Refused before processing: safe to send again.
            SendError::Retry { reason: format!("Twilio answered HTTP {http_status}: {snippet}") }
        } else {
            SendError::Permanent {
                error: ProviderError {
                    code: i64::from(http_status),
                    title: format!("HTTP {http_status}"),
                    details: Some(snippet),
                },
            }
        };
    };
    let code = env.code.unwrap_or(i64::from(http_status));
    let message = env.message.unwrap_or_default();
    classify_code(code, http_status, error_of(code, &message, env.more_info))
}

/// The error as written to a row: the code's meaning, with Twilio's own words when they add
/// something.
pub fn error_of(code: i64, message: &str, _more_info: Option<String>) -> ProviderError {
    // Twilio's messages quote the number ("The 'To' number whatsapp:+… is not valid"): masked,
    // as they reach logs.
    let masked = crate::domain::mask_phones_in(message);
    let message = masked.as_str();
    match meaning(code) {
        Some(m) => ProviderError {
            code,
            title: m.to_string(),
            details: (!message.trim().is_empty()).then(|| message.trim().to_string()),
        },
        None => ProviderError {
            code,
            title: if message.trim().is_empty() { "Twilio error".to_string() } else { message.trim().to_string() },
            details: None,
        },
    }
}

/// Classification of a code, shared by synchronous answers and status callbacks
/// (`http_status` 0 for those).
pub fn classify_code(code: i64, http_status: u16, error: ProviderError) -> SendError {
    let reason = error.describe();
    match code {
        // REST concurrency: "never processed and always safe to retry".
        20429 => SendError::Throttled { reason, pause: Duration::from_secs(1) },
        63017 => SendError::Throttled { reason, pause: Duration::from_secs(2) },
        // The sender's WhatsApp limit: Twilio queued what it could; slow right down.
        63018 => SendError::Throttled { reason, pause: Duration::from_secs(60) },
        // Ten hours of messages already wait in the sender's queue: nothing was sent; wait for
        // the queue to drain rather than adding to it.
        21611 | 30001 => SendError::Throttled { reason, pause: Duration::from_secs(300) },
        // A daily cap: nothing goes for a long while.
        63038 => SendError::Throttled { reason, pause: Duration::from_secs(3600) },
        63016 => SendError::WindowClosed { error },
        21610 => SendError::OptedOut { error },
        // Credentials, a sender that is not this account's, a disabled account: nothing is
        // wrong with the message; pause and alert.
        20003 | 20005 | 21606 | 63112 => SendError::Unavailable { reason },
        20500 | 20503 => SendError::Retry { reason },
        _ if http_status == 429 => SendError::Throttled { reason, pause: Duration::from_secs(1) },
        _ if http_status >= 500 => SendError::Retry { reason },
        _ if http_status == 401 => SendError::Unavailable { reason },
        _ => SendError::Permanent { error },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: i64, status: u16, msg: &str) -> Vec<u8> {
        format!(r#"{{"code":{code},"message":"{msg}","more_info":"https://www.twilio.com/docs/errors/{code}","status":{status}}}"#)
            .into_bytes()
    }

    #[test]
    fn by_code_not_by_status() {
        assert!(matches!(classify(429, &body(20429, 429, "Too Many Requests")), SendError::Throttled { .. }));
        assert!(matches!(
            classify(400, &body(21610, 400, "Attempt to send to unsubscribed recipient")),
            SendError::OptedOut { .. }
        ));
        assert!(matches!(classify(401, &body(20003, 401, "Authenticate")), SendError::Unavailable { .. }));
        assert!(matches!(classify(500, &body(20500, 500, "Internal Server Error")), SendError::Retry { .. }));
        assert!(matches!(classify(503, b"<html>busy</html>"), SendError::Retry { .. }));
        assert!(
            matches!(classify(504, b"<html>gateway timeout</html>"), SendError::InDoubt { .. }),
            "a gateway's timeout may hide an accepted send"
        );
        assert!(matches!(classify(400, b"nope"), SendError::Permanent { .. }));
        match classify(400, &body(21211, 400, "The 'To' number whatsapp:+5691 is not a valid phone number.")) {
            SendError::Permanent { error } => {
                assert_eq!(error.code, 21211);
                assert!(error.describe().contains("invalid 'To' phone number"), "{}", error.describe());
            }
            other => panic!("{other:?}"),
        }
        match classify(400, &body(99999, 400, "Something new")) {
            SendError::Permanent { error } => assert_eq!(error.describe(), "Something new (99999)"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn callback_codes_are_classified_like_synchronous_ones() {
        let e = |code| error_of(code, "", None);
        assert!(matches!(classify_code(63016, 0, e(63016)), SendError::WindowClosed { .. }));
        assert!(matches!(classify_code(63018, 0, e(63018)), SendError::Throttled { .. }));
        assert!(matches!(classify_code(21610, 0, e(21610)), SendError::OptedOut { .. }));
        // A full queue: the sender refuses the create, a Messaging Service fails it afterwards;
        // either way nothing went out and it is tried again later.
        assert!(matches!(classify(400, &body(21611, 400, "queue full")), SendError::Throttled { .. }));
        assert!(matches!(classify_code(30001, 0, e(30001)), SendError::Throttled { .. }));
        for code in [30003, 30005, 30006, 30007, 30008, 63003, 63024] {
            match classify_code(code, 0, e(code)) {
                SendError::Permanent { error } => {
                    assert!(meaning(code).is_some_and(|m| error.describe().starts_with(m)), "{code}")
                }
                other => panic!("{code}: {other:?}"),
            }
        }
        assert_eq!(e(12345).describe(), "Twilio error (12345)", "unknown and silent: the code is kept");
    }
}
