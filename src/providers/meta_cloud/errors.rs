//! Meta error codes → what to do about them, for synchronous answers and for errors reported
//! later in `failed` status webhooks alike (see the reference's error table).

use std::time::Duration;

use serde::Deserialize;

use crate::domain::ProviderError;
use crate::providers::SendError;

#[derive(Deserialize)]
struct Envelope {
    error: GraphError,
}

#[derive(Deserialize)]
struct GraphError {
    #[serde(default)]
    message: String,
    code: Option<i64>,
    #[serde(default)]
    error_data: Option<ErrorData>,
    #[serde(default)]
    error_user_title: Option<String>,
}

#[derive(Deserialize)]
struct ErrorData {
    #[serde(default)]
    details: Option<String>,
}

/// Classifies a non-2xx answer by its error code; the HTTP status only decides when the body
/// has no code.
pub fn classify(http_status: u16, body: &[u8]) -> SendError {
    let Ok(env) = serde_json::from_slice::<Envelope>(body) else {
        let snippet: String =
            String::from_utf8_lossy(&body[..body.len().min(200)]).split_whitespace().collect::<Vec<_>>().join(" ");
        return if http_status >= 500 || http_status == 429 || http_status == 408 {
            SendError::Retry { reason: format!("Meta answered HTTP {http_status}: {snippet}") }
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
    let e = env.error;
    let code = e.code.unwrap_or(i64::from(http_status));
    let title = e.error_user_title.clone().unwrap_or_else(|| strip_code_prefix(&e.message));
    let error = ProviderError { code, title, details: e.error_data.and_then(|d| d.details) };
    classify_code(code, http_status, error)
}

/// Classification of an error code, shared by synchronous answers and failed-status webhooks
/// (`http_status` 0 for those).
pub fn classify_code(code: i64, http_status: u16, error: ProviderError) -> SendError {
    let reason = error.describe();
    match code {
        // Throughput and WABA rate limits: the whole number slows down.
        4 | 80007 | 130429 => {
            SendError::Throttled { reason, pause: Duration::from_secs(if code == 80007 { 60 } else { 2 }) }
        }
        // Meta restricts a number whose messages people block or report: slow right down.
        131048 => SendError::Throttled { reason, pause: Duration::from_secs(300) },
        131056 => SendError::PairRate { reason },
        131047 => SendError::WindowClosed { error },
        // Transient server-side trouble.
        1 | 2 | 131000 | 131016 => SendError::Retry { reason },
        // Credentials, permissions, a locked or restricted account: nothing is wrong with the
        // message; pause and alert.
        0 | 10 | 190 | 368 | 131031 | 200..=299 => SendError::Unavailable { reason },
        _ if http_status >= 500 => SendError::Retry { reason },
        _ => SendError::Permanent { error },
    }
}

/// "(#130429) Rate limit hit" → "Rate limit hit".
fn strip_code_prefix(message: &str) -> String {
    match message.strip_prefix("(#").and_then(|r| r.split_once(") ")) {
        Some((_, rest)) => rest.to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(code: i64, msg: &str) -> Vec<u8> {
        format!(r#"{{"error":{{"message":"{msg}","type":"OAuthException","code":{code},"error_data":{{"messaging_product":"whatsapp","details":"d"}},"fbtrace_id":"x"}}}}"#).into_bytes()
    }

    #[test]
    fn by_code_not_by_status() {
        assert!(matches!(classify(400, &body(130429, "(#130429) Rate limit hit")), SendError::Throttled { .. }));
        assert!(matches!(
            classify(429, &body(4, "(#4) Application request limit reached")),
            SendError::Throttled { .. }
        ));
        assert!(matches!(classify(400, &body(131056, "pair")), SendError::PairRate { .. }));
        assert!(matches!(classify(400, &body(131047, "Re-engagement message")), SendError::WindowClosed { .. }));
        assert!(matches!(classify(500, &body(131000, "Something went wrong")), SendError::Retry { .. }));
        assert!(matches!(classify(401, &body(190, "expired")), SendError::Unavailable { .. }));
        match classify(404, &body(132001, "(#132001) Template name does not exist in the translation")) {
            SendError::Permanent { error } => {
                assert_eq!(error.code, 132001);
                assert_eq!(error.title, "Template name does not exist in the translation");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify(503, b"<html>"), SendError::Retry { .. }));
        assert!(matches!(classify(400, b"nope"), SendError::Permanent { .. }));
    }

    #[test]
    fn asynchronous_failures_are_classified_like_synchronous_ones() {
        let e = |code| ProviderError { code, title: "t".into(), details: None };
        assert!(matches!(classify_code(131047, 0, e(131047)), SendError::WindowClosed { .. }));
        assert!(matches!(classify_code(130429, 0, e(130429)), SendError::Throttled { .. }));
        assert!(matches!(classify_code(131056, 0, e(131056)), SendError::PairRate { .. }));
        assert!(matches!(classify_code(131026, 0, e(131026)), SendError::Permanent { .. }));
        assert!(matches!(classify_code(131000, 0, e(131000)), SendError::Retry { .. }));
    }
}
