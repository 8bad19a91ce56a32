//! Google service-account OAuth: the JWT bearer grant (RFC 7523) that Google documents for
//! server-to-server access.
//!
//! A JWT (`{"alg":"RS256","typ":"JWT"}`; claims `iss` = the account's e-mail, `scope`, `aud` =
//! the key's `token_uri`, `iat`, `exp` = `iat` + 1 h) is signed with the key's RSA private key
//! and exchanged at `token_uri` for an access token, which is cached until a minute before it
//! expires. Because `token_uri` is both the endpoint and the audience, a key issued by the
//! sandbox points every token request at the sandbox. Tokens are [`Secret`]s: never logged.

use std::sync::Arc;
use std::time::Duration;

use ring::signature::RsaKeyPair;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::config::ServiceAccountKey;
use super::errors::classify;
use crate::domain::Secret;
use crate::sources::SourceError;

/// The scopes recado asks for: read and write the sheet, read Drive's version of it.
pub const SCOPES: &str =
    "https://www.googleapis.com/auth/spreadsheets https://www.googleapis.com/auth/drive.metadata.readonly";

pub use crate::sources::jwt::signing_key;

/// A service account that hands out access tokens.
#[derive(Clone)]
pub struct ServiceAccount {
    key: Arc<ServiceAccountKey>,
    signer: Arc<RsaKeyPair>,
    http: reqwest::Client,
    timeout: Duration,
    cached: Arc<Mutex<Option<(Secret, Instant)>>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    token_type: Option<String>,
}

impl ServiceAccount {
    pub fn new(key_json: &Secret, http: reqwest::Client, timeout: Duration) -> Result<Self, String> {
        let key = ServiceAccountKey::parse(key_json.expose())?;
        let signer = signing_key(&key.private_key)?;
        Ok(Self { key: Arc::new(key), signer: Arc::new(signer), http, timeout, cached: Arc::new(Mutex::new(None)) })
    }

    /// The account's e-mail: the address the sheet must be shared with.
    pub fn client_email(&self) -> &str {
        &self.key.client_email
    }

    /// A valid access token, from the cache or a fresh grant.
    pub async fn token(&self) -> Result<Secret, SourceError> {
        let mut cached = self.cached.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if *until > Instant::now() {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = self.grant().await?;
        // Renew a minute early so a token never expires in flight.
        *cached = Some((token.clone(), Instant::now() + lifetime.saturating_sub(Duration::from_secs(60))));
        Ok(token)
    }

    /// Forgets the cached token (Google said it is no longer valid).
    pub async fn forget(&self) {
        *self.cached.lock().await = None;
    }

    fn assertion(&self) -> Result<String, SourceError> {
        let now = chrono::Utc::now().timestamp();
        let mut header = serde_json::json!({ "alg": "RS256", "typ": "JWT" });
        if let Some(kid) = &self.key.private_key_id {
            header["kid"] = serde_json::json!(kid);
        }
        let claims = serde_json::json!({
            "iss": self.key.client_email,
            "scope": SCOPES,
            "aud": self.key.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        crate::sources::jwt::sign(&self.signer, &header, &claims)
            .map_err(|e| SourceError::Permanent(format!("service-account key: {e}")))
    }

    async fn grant(&self) -> Result<(Secret, Duration), SourceError> {
        let assertion = self.assertion()?;
        let request = self
            .http
            .post(&self.key.token_uri)
            .timeout(self.timeout)
            .form(&[("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"), ("assertion", assertion.as_str())]);
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                SourceError::Timeout { what: "the Google token endpoint".into(), after: self.timeout }
            } else {
                SourceError::Transient(format!("cannot reach the Google token endpoint: {}", without_url(&e)))
            }
        })?;
        let status = response.status().as_u16();
        let body = response
            .bytes()
            .await
            .map_err(|e| SourceError::Transient(format!("token answer cut short: {}", without_url(&e))))?;
        if status != 200 {
            // OAuth errors are `{"error":"invalid_grant","error_description":"…"}`.
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let code = v["error"].as_str().unwrap_or("");
            let description = v["error_description"].as_str().unwrap_or("");
            return Err(match status {
                400 | 401 | 403 => SourceError::Permanent(format!(
                    "Google refused the service account {} ({code}: {description})",
                    self.key.client_email
                )),
                _ => classify(status, &body, "token"),
            });
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| SourceError::Transient("unreadable answer from the Google token endpoint".into()))?;
        if answer.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(SourceError::Permanent("the Google token endpoint did not return a bearer token".into()));
        }
        Ok((Secret::new(answer.access_token), Duration::from_secs(answer.expires_in.unwrap_or(3600).clamp(60, 86_400))))
    }
}

/// A reqwest error's text without its URL (which can carry ids but never secrets; kept short).
pub fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(url.as_str(), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace(" ()", "")
}
