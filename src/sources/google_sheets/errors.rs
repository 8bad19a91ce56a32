//! Google's error answers → [`SourceError`], by Google's own reason, not only by HTTP status.
//!
//! Two shapes arrive. Sheets answers `{"error":{"code","message","status","details"?}}`; Drive
//! still answers the legacy `{"error":{"errors":[{"domain","reason","message"}],"code","message"}}`
//! and signals its rate limit as `403 userRateLimitExceeded` as well as `429
//! rateLimitExceeded`. A quota answer is a pause, never an error shown to users.

use std::time::Duration;

use serde_json::Value;

use crate::sources::SourceError;

/// What Google said, read out of either shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoogleErrorBody {
    pub status: u16,
    /// `PERMISSION_DENIED`, `INVALID_ARGUMENT`, … (Sheets shape).
    pub status_name: String,
    /// `userRateLimitExceeded`, `notFound`, `RATE_LIMIT_EXCEEDED`, … (either shape).
    pub reasons: Vec<String>,
    pub message: String,
}

impl GoogleErrorBody {
    pub fn read(status: u16, body: &[u8]) -> Self {
        let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let e = &v["error"];
        let mut reasons: Vec<String> = e["errors"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["reason"].as_str().map(String::from)).collect())
            .unwrap_or_default();
        if let Some(details) = e["details"].as_array() {
            reasons.extend(details.iter().filter_map(|d| d["reason"].as_str().map(String::from)));
        }
        let message = match e["message"].as_str() {
            Some(m) => m.to_string(),
            // Not Google's JSON (a proxy's HTML page): a short, safe excerpt.
            None => {
                String::from_utf8_lossy(&body[..body.len().min(120)]).split_whitespace().collect::<Vec<_>>().join(" ")
            }
        };
        Self { status, status_name: e["status"].as_str().unwrap_or_default().to_string(), reasons, message }
    }

    pub fn is_rate_limit(&self) -> bool {
        self.status == 429
            || self.reasons.iter().any(|r| {
                matches!(
                    r.as_str(),
                    "userRateLimitExceeded" | "rateLimitExceeded" | "RATE_LIMIT_EXCEEDED" | "quotaExceeded"
                )
            })
    }

    /// `Invalid data[4]: …` → 4: which value of a batch Google refused.
    pub fn data_index(&self) -> Option<usize> {
        let rest = self.message.strip_prefix("Invalid data[")?;
        rest.split_once(']')?.0.parse().ok()
    }

    /// The request as a whole is too large (`Request payload size exceeds the limit`).
    pub fn is_payload_too_large(&self) -> bool {
        self.status == 413 || self.message.contains("payload size exceeds")
    }

    /// Google refused the request for the values it carries (one named value, or the size of
    /// the whole), not for where they go or how the request is formed: only then may a value
    /// be isolated and dropped.
    pub fn is_about_content(&self) -> bool {
        if self.is_payload_too_large() {
            return true;
        }
        match self.data_index() {
            // `Invalid data[0]: Unable to parse range: 'Old title'!C5` names an entry, but
            // what is wrong is the tab, not the value.
            Some(_) => !self.message.contains("Unable to parse range") && !self.is_grid_limit(),
            None => false,
        }
    }

    pub fn is_grid_limit(&self) -> bool {
        self.message.contains("exceeds grid limits")
    }

    pub fn describe(&self) -> String {
        let name = if self.status_name.is_empty() { String::new() } else { format!(" {}", self.status_name) };
        let message: String = self.message.chars().take(300).collect();
        format!("HTTP {}{name}: {message}", self.status)
    }
}

/// Classifies a non-2xx answer to `what` (`values.get`, `drive files.get`, …). Rate limits
/// come back as [`SourceError::RateLimited`] with a zero pause: the caller's budget decides
/// the pause.
pub fn classify(status: u16, body: &[u8], what: &str) -> SourceError {
    let e = GoogleErrorBody::read(status, body);
    if e.is_rate_limit() {
        return SourceError::RateLimited { detail: format!("{what}: {}", e.describe()), pause: Duration::ZERO };
    }
    if status >= 500 || status == 408 {
        return SourceError::Transient(format!("{what}: {}", e.describe()));
    }
    match status {
        401 | 403 => SourceError::Denied(format!(
            "{what}: {} (is the spreadsheet shared with the service account's e-mail as Editor?)",
            e.describe()
        )),
        404 => SourceError::Denied(format!(
            "{what}: {} (check spreadsheet_id; a spreadsheet not shared with the service account is not found either)",
            e.describe()
        )),
        _ => SourceError::Permanent(format!("{what}: {}", e.describe())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_shapes() {
        let drive_403 = br#"{"error":{"errors":[{"domain":"usageLimits","reason":"userRateLimitExceeded","message":"User Rate Limit Exceeded"}],"code":403,"message":"User Rate Limit Exceeded"}}"#;
        assert!(matches!(classify(403, drive_403, "drive"), SourceError::RateLimited { .. }));
        let drive_429 = br#"{"error":{"errors":[{"domain":"usageLimits","reason":"rateLimitExceeded","message":"Rate Limit Exceeded"}],"code":429,"message":"Rate Limit Exceeded"}}"#;
        assert!(matches!(classify(429, drive_429, "drive"), SourceError::RateLimited { .. }));
        let sheets_429 = br#"{"error":{"code":429,"message":"Quota exceeded","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED"}]}}"#;
        assert!(matches!(classify(429, sheets_429, "values.get"), SourceError::RateLimited { .. }));
        let denied =
            br#"{"error":{"code":403,"message":"The caller does not have permission","status":"PERMISSION_DENIED"}}"#;
        match classify(403, denied, "values.get") {
            SourceError::Denied(m) => {
                assert!(m.contains("PERMISSION_DENIED") && m.contains("shared with the service account"), "{m}")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(classify(503, b"<html>busy</html>", "values.get"), SourceError::Transient(_)));
    }

    #[test]
    fn only_refusals_of_values_may_drop_a_value() {
        let body = |m: &str| {
            GoogleErrorBody::read(
                400,
                format!(r#"{{"error":{{"code":400,"message":"{m}","status":"INVALID_ARGUMENT"}}}}"#).as_bytes(),
            )
        };
        assert!(body(
            "Invalid data[2]: Your input contains more than the maximum of 50000 characters in a single cell."
        )
        .is_about_content());
        assert!(body("Request payload size exceeds the limit: 10485760 bytes.").is_about_content());
        assert!(!body("Invalid data[0]: Unable to parse range: 'Old'!C5").is_about_content());
        assert!(!body("Invalid data[0]: Range ('Hoja'!AB5) exceeds grid limits. Max rows: 100, max columns: 26")
            .is_about_content());
        assert!(!body("Invalid JSON payload received. Unknown name \"foo\": Cannot find field.").is_about_content());
    }

    #[test]
    fn refused_values_are_found_by_index() {
        let e = GoogleErrorBody::read(
            400,
            br#"{"error":{"code":400,"message":"Invalid data[4]: Your input contains more than the maximum of 50000 characters in a single cell.","status":"INVALID_ARGUMENT"}}"#,
        );
        assert_eq!(e.data_index(), Some(4));
        let big = GoogleErrorBody::read(
            400,
            br#"{"error":{"code":400,"message":"Request payload size exceeds the limit: 10485760 bytes.","status":"INVALID_ARGUMENT"}}"#,
        );
        assert!(big.is_payload_too_large());
        assert_eq!(big.data_index(), None);
    }
}
