//! Salesforce's answers classified: the REST error array (`[{"message","errorCode"}]`), the
//! OAuth error object, and the per-record `statusCode`s of sObject Collections.

use std::time::Duration;

use serde::Deserialize;

use crate::sources::SourceError;

/// One entry of Salesforce's REST error array.
#[derive(Debug, Clone, Deserialize)]
pub struct ApiError {
    #[serde(default, rename = "errorCode")]
    pub code: String,
    #[serde(default)]
    pub message: String,
}

/// The first error of an error answer, if the body is one.
pub fn api_error(body: &[u8]) -> Option<ApiError> {
    let list: Vec<ApiError> = serde_json::from_slice(body).ok()?;
    list.into_iter().next()
}

/// How long recado waits after Salesforce says the org's daily allocation is spent.
pub const DAILY_LIMIT_PAUSE: Duration = Duration::from_secs(15 * 60);
/// And after too many long-running requests at once.
pub const CONCURRENCY_PAUSE: Duration = Duration::from_secs(30);

/// An HTTP answer that is not a success, for `what` (`the query`, `the write`, …).
pub fn classify(status: u16, body: &[u8], what: &str) -> SourceError {
    let e = api_error(body);
    let code = e.as_ref().map(|e| e.code.as_str()).unwrap_or("");
    let message = e.as_ref().map(|e| one_line(&e.message)).unwrap_or_default();
    match (status, code) {
        (_, "REQUEST_LIMIT_EXCEEDED") => {
            let pause = if message.contains("Concurrent") { CONCURRENCY_PAUSE } else { DAILY_LIMIT_PAUSE };
            SourceError::RateLimited { detail: format!("Salesforce: {message}"), pause }
        }
        // A few clients report the limit with 429.
        (429, _) => SourceError::RateLimited { detail: "Salesforce answered 429".into(), pause: CONCURRENCY_PAUSE },
        (_, "QUERY_TIMEOUT" | "SERVER_UNAVAILABLE" | "UNABLE_TO_LOCK_ROW") => {
            SourceError::Transient(format!("Salesforce {code} on {what}: {message}"))
        }
        (_, "INVALID_QUERY_LOCATOR") => {
            SourceError::Transient(format!("Salesforce dropped the query cursor ({message}); reading again"))
        }
        (500..=599, _) => SourceError::Transient(format!("Salesforce answered {status} to {what}{}", suffix(code, &message))),
        (401, _) => SourceError::Denied(format!("Salesforce refused the session for {what}{}", suffix(code, &message))),
        (403, _) => SourceError::Denied(format!(
            "Salesforce refused {what}{}: check the integration user's permission set (API Enabled, access to the object and fields)",
            suffix(code, &message)
        )),
        (404, _) => SourceError::Permanent(format!("Salesforce has no such resource for {what}{}: check the object name and api_version", suffix(code, &message))),
        _ => SourceError::Permanent(format!("Salesforce refused {what} ({status}){}", suffix(code, &message))),
    }
}

fn suffix(code: &str, message: &str) -> String {
    match (code.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(": {code}"),
        (true, false) => format!(": {message}"),
        (false, false) => format!(": {code}: {message}"),
    }
}

/// Salesforce's query errors span lines (the query, a caret, the position): one line for logs
/// and records.
pub fn one_line(message: &str) -> String {
    let lines: Vec<&str> = message.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "^").collect();
    // The last line says what is wrong; the line before it says where.
    match lines.as_slice() {
        [] => String::new(),
        [only] => (*only).to_string(),
        [.., at, what] if at.starts_with("ERROR at") => format!("{what} ({})", at.trim_start_matches("ERROR at ")),
        more => more.join(" "),
    }
}

/// What to do with one record's failed write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// Try again at the next flush (row lock, a rolled-back peer).
    Retry,
    /// The record is gone: nothing to write to.
    Gone,
    /// Salesforce refuses this value for this record (a validation rule, a value too long): report
    /// it once and drop it.
    Refused(String),
}

/// Classifies one SaveResult error by its `statusCode`.
pub fn record_outcome(status_code: &str, message: &str) -> RecordOutcome {
    match status_code {
        "UNABLE_TO_LOCK_ROW"
        | "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        | "REQUEST_RUNNING_TOO_LONG"
        | "SERVER_UNAVAILABLE" => RecordOutcome::Retry,
        "ENTITY_IS_DELETED" | "INVALID_CROSS_REFERENCE_KEY" | "MALFORMED_ID" | "INVALID_ID_FIELD" => {
            RecordOutcome::Gone
        }
        _ => RecordOutcome::Refused(format!("Salesforce refused the write ({status_code}): {}", one_line(message))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_classified_by_code() {
        let limit = br#"[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;
        assert!(
            matches!(classify(403, limit, "the query"), SourceError::RateLimited { pause, .. } if pause == DAILY_LIMIT_PAUSE)
        );
        let concurrent =
            br#"[{"message":"ConcurrentPerOrgLongTxn Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;
        assert!(
            matches!(classify(403, concurrent, "q"), SourceError::RateLimited { pause, .. } if pause == CONCURRENCY_PAUSE)
        );
        let field = br#"[{"message":"\nSELECT Id, Foo__c FROM Cita__c\n           ^\nERROR at Row:1:Column:12\nNo such column 'Foo__c' on entity 'Cita__c'.","errorCode":"INVALID_FIELD"}]"#;
        match classify(400, field, "the query") {
            SourceError::Permanent(m) => {
                assert!(
                    m.contains("INVALID_FIELD: No such column 'Foo__c' on entity 'Cita__c'. (Row:1:Column:12)"),
                    "{m}"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify(503, b"<html>", "q"), SourceError::Transient(_)));
        assert_eq!(record_outcome("ENTITY_IS_DELETED", "entity is deleted"), RecordOutcome::Gone);
        assert_eq!(record_outcome("UNABLE_TO_LOCK_ROW", ""), RecordOutcome::Retry);
        assert!(matches!(record_outcome("FIELD_CUSTOM_VALIDATION_EXCEPTION", "x"), RecordOutcome::Refused(_)));
    }
}
