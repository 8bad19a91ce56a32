//! One org's REST client: signing in (JWT bearer or client credentials), every call bounded
//! by a timeout, a session renewed once when Salesforce says it is no longer valid, the org's
//! API usage read from `Sforce-Limit-Info` on every answer, and the server's clock from `Date`.
//!
//! Salesforce returns no `expires_in`: a session lasts as long as the org's session timeout,
//! so a token is used until a call answers 401 `INVALID_SESSION_ID`; then recado signs in again
//! and repeats that call once. Tokens are [`Secret`]s: never logged.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ring::signature::RsaKeyPair;
use serde::Deserialize;
use serde_json::Value;

use super::config::{AuthConfig, SalesforceConfig};
use super::errors::{api_error, classify, one_line};
use crate::domain::Secret;
use crate::sources::SourceError;

/// Most pages one query may take (2,000 records each): beyond this something is wrong.
const MAX_PAGES: usize = 5_000;

#[derive(Clone)]
struct Session {
    token: Secret,
    /// `https://acme.my.salesforce.com`, without trailing slash.
    instance_url: String,
}

/// The org's API usage as Salesforce last reported it, and recado's own part of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Requests the whole org made in the last 24 hours (every integration, every user).
    pub used: u64,
    /// The org's allocation for 24 hours.
    pub max: u64,
    /// Requests this client made in the last 24 hours (counted here: Salesforce reports a
    /// connected app's own figure only when the app has a per-app limit).
    pub ours: u64,
}

/// Above this share of the allocation used by the whole org, recado slows down whatever its
/// own part: the org is about to be refused everything, other integrations included.
pub const ORG_NEARLY_SPENT: f64 = 0.95;

impl Usage {
    /// recado's share of the org's daily allocation.
    pub fn share(&self) -> f64 {
        ratio(self.ours, self.max)
    }

    /// The whole org's share of its allocation.
    pub fn org_share(&self) -> f64 {
        ratio(self.used, self.max)
    }

    /// Whether polls should be spaced out: recado used its share, or the org is nearly out.
    pub fn above(&self, max_share: f64) -> bool {
        self.max > 0 && (self.share() >= max_share || self.org_share() >= ORG_NEARLY_SPENT)
    }
}

fn ratio(used: u64, max: u64) -> f64 {
    if max == 0 {
        0.0
    } else {
        used as f64 / max as f64
    }
}

/// Requests counted per hour over the last 24 hours (Salesforce's allocation is a rolling
/// 24-hour window).
#[derive(Debug, Default)]
struct OwnRequests {
    /// (hour since the epoch, requests in it), oldest first.
    hours: std::collections::VecDeque<(i64, u64)>,
}

impl OwnRequests {
    fn count(&mut self, now_ms: i64) {
        let hour = now_ms.div_euclid(3_600_000);
        match self.hours.back_mut() {
            Some((h, n)) if *h == hour => *n += 1,
            _ => self.hours.push_back((hour, 1)),
        }
        while self.hours.front().is_some_and(|(h, _)| *h <= hour - 24) {
            self.hours.pop_front();
        }
    }

    fn total(&self) -> u64 {
        self.hours.iter().map(|(_, n)| n).sum()
    }
}

/// Parses `api-usage=25/5000; per-app-api-usage=17/250(appName=…)`: the org's figures.
pub fn parse_limit_info(header: &str) -> Option<Usage> {
    let part = header.split(';').map(str::trim).find_map(|p| p.strip_prefix("api-usage="))?;
    let (used, max) = part.split_once('/')?;
    Some(Usage { used: used.trim().parse().ok()?, max: max.trim().parse().ok()?, ours: 0 })
}

/// An answer: status, body, and the server's time when it answered (milliseconds).
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
    pub server_ms: Option<i64>,
}

struct Inner {
    http: reqwest::Client,
    login_url: String,
    version: String,
    auth: AuthConfig,
    signer: Option<RsaKeyPair>,
    timeout: Duration,
    session: tokio::sync::Mutex<Option<Session>>,
    usage: Mutex<Option<Usage>>,
    /// This client's own requests to the org's REST API.
    own_requests: Mutex<OwnRequests>,
    /// Sign-ins so far (for tests and logs).
    sign_ins: Mutex<u64>,
    /// The org's time zone, once asked (it is the same for every object of the org).
    time_zone: Mutex<Option<String>>,
    /// Salesforce said `REQUEST_LIMIT_EXCEEDED`: no call goes out before then (each refused
    /// call would only spend more of the allocation, and the reader and the writer share it).
    limited_until: Mutex<Option<std::time::Instant>>,
}

/// A client for one org (sources of one org share it: one session, one usage).
#[derive(Clone)]
pub struct OrgClient {
    inner: Arc<Inner>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    instance_url: String,
    #[serde(default)]
    token_type: Option<String>,
}

/// A query's result page.
#[derive(Deserialize)]
struct QueryPage {
    #[serde(default)]
    records: Vec<Value>,
    #[serde(default)]
    done: bool,
    #[serde(default, rename = "nextRecordsUrl")]
    next: Option<String>,
}

impl OrgClient {
    pub fn new(cfg: &SalesforceConfig, http: reqwest::Client, timeout: Duration) -> Result<Self, String> {
        let signer = match &cfg.auth {
            AuthConfig::JwtBearer { private_key, .. } => Some(crate::sources::jwt::signing_key(private_key.expose())?),
            AuthConfig::ClientCredentials { .. } => None,
        };
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                login_url: cfg.login_url.clone(),
                version: cfg.api_version.clone(),
                auth: cfg.auth.clone(),
                signer,
                timeout,
                session: tokio::sync::Mutex::new(None),
                usage: Mutex::new(None),
                own_requests: Mutex::new(OwnRequests::default()),
                sign_ins: Mutex::new(0),
                time_zone: Mutex::new(None),
                limited_until: Mutex::new(None),
            }),
        })
    }

    /// `/services/data/vNN.N`.
    pub fn data_path(&self) -> String {
        format!("/services/data/{}", self.inner.version)
    }

    pub fn usage(&self) -> Option<Usage> {
        let org = (*self.inner.usage.lock().unwrap_or_else(PoisonError::into_inner))?;
        let ours = self.inner.own_requests.lock().unwrap_or_else(PoisonError::into_inner).total();
        Some(Usage { ours, ..org })
    }

    /// How long calls still wait after Salesforce said the allocation is spent.
    pub fn limited_for(&self) -> Option<Duration> {
        let until = *self.inner.limited_until.lock().unwrap_or_else(PoisonError::into_inner);
        until.and_then(|u| u.checked_duration_since(std::time::Instant::now())).filter(|d| !d.is_zero())
    }

    pub fn sign_ins(&self) -> u64 {
        *self.inner.sign_ins.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The org's time zone (`Organization.TimeZoneSidKey`), asked once per process.
    pub async fn org_time_zone(&self) -> Result<String, SourceError> {
        if let Some(tz) = self.inner.time_zone.lock().unwrap_or_else(PoisonError::into_inner).clone() {
            return Ok(tz);
        }
        let (records, _, _) = self.query("SELECT TimeZoneSidKey FROM Organization", "the org's time zone").await?;
        let tz = records
            .first()
            .and_then(|r| r["TimeZoneSidKey"].as_str())
            .map(String::from)
            .ok_or_else(|| SourceError::Transient("Salesforce did not say the org's time zone".into()))?;
        *self.inner.time_zone.lock().unwrap_or_else(PoisonError::into_inner) = Some(tz.clone());
        Ok(tz)
    }

    async fn session(&self) -> Result<Session, SourceError> {
        let mut current = self.inner.session.lock().await;
        if let Some(s) = current.as_ref() {
            return Ok(s.clone());
        }
        let s = self.sign_in().await?;
        *current = Some(s.clone());
        Ok(s)
    }

    /// Forgets `token` (Salesforce said it is no longer valid), unless another call already
    /// replaced it.
    async fn forget(&self, token: &Secret) {
        let mut current = self.inner.session.lock().await;
        if current.as_ref().is_some_and(|s| s.token.expose() == token.expose()) {
            *current = None;
        }
    }

    async fn sign_in(&self) -> Result<Session, SourceError> {
        let i = &self.inner;
        let url = format!("{}/services/oauth2/token", i.login_url);
        let (form, who): (Vec<(&str, String)>, String) = match &i.auth {
            AuthConfig::JwtBearer { consumer_key, username, audience, .. } => {
                let now = chrono::Utc::now().timestamp();
                let claims =
                    serde_json::json!({ "iss": consumer_key, "sub": username, "aud": audience, "exp": now + 180 });
                let header = serde_json::json!({ "alg": "RS256" });
                let Some(signer) = &i.signer else {
                    return Err(SourceError::Permanent("no private key for the JWT bearer flow".into()));
                };
                let jwt = crate::sources::jwt::sign(signer, &header, &claims)
                    .map_err(|e| SourceError::Permanent(format!("Salesforce private key: {e}")))?;
                (
                    vec![("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer".into()), ("assertion", jwt)],
                    format!("user {username}"),
                )
            }
            AuthConfig::ClientCredentials { client_id, client_secret } => (
                vec![
                    ("grant_type", "client_credentials".into()),
                    ("client_id", client_id.clone()),
                    ("client_secret", client_secret.expose().to_string()),
                ],
                "the connected app's client credentials".to_string(),
            ),
        };
        let response = i.http.post(&url).timeout(i.timeout).form(&form).send().await.map_err(|e| {
            if e.is_timeout() {
                SourceError::Timeout { what: "the Salesforce token endpoint".into(), after: i.timeout }
            } else {
                SourceError::Transient(format!("cannot reach the Salesforce token endpoint: {}", without_url(&e)))
            }
        })?;
        let status = response.status().as_u16();
        let body = tokio::time::timeout(i.timeout, response.bytes())
            .await
            .map_err(|_| SourceError::Timeout { what: "the Salesforce token answer".into(), after: i.timeout })?
            .map_err(|_| SourceError::Transient("the Salesforce token answer was cut short".into()))?;
        *i.sign_ins.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        if status != 200 {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let error = v["error"].as_str().unwrap_or("");
            let description = v["error_description"].as_str().unwrap_or("");
            if status >= 500 || error.is_empty() && status == 429 {
                return Err(SourceError::Transient(format!("the Salesforce token endpoint answered {status}")));
            }
            let hint = match description {
                "user hasn't approved this consumer" => ": pre-authorize the user in the connected app (Admin approved users, and the user's profile or permission set)",
                "audience is invalid" => ": check auth.audience (https://login.salesforce.com for production, https://test.salesforce.com for sandboxes)",
                "invalid assertion" => ": the connected app's certificate does not match the private key",
                _ => "",
            };
            return Err(SourceError::Permanent(format!(
                "Salesforce refused the sign-in of {who} ({error}: {description}){hint}"
            )));
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| SourceError::Transient("unreadable answer from the Salesforce token endpoint".into()))?;
        if answer.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
            return Err(SourceError::Permanent("the Salesforce token endpoint did not return a bearer token".into()));
        }
        Ok(Session {
            token: Secret::new(answer.access_token),
            instance_url: answer.instance_url.trim_end_matches('/').to_string(),
        })
    }

    /// One call to the org; `path` is relative to the instance (`/services/data/…`). A session
    /// Salesforce no longer accepts is renewed and the call made once more.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, SourceError> {
        if let Some(pause) = self.limited_for() {
            return Err(SourceError::RateLimited {
                detail: format!("Salesforce refused the last call for the API allocation; {what} waits"),
                pause,
            });
        }
        let mut renewed = false;
        loop {
            let session = self.session().await?;
            let answer = self.send(&session, method.clone(), path, body, what).await?;
            if let Some(SourceError::RateLimited { pause, detail }) =
                (answer.status == 403 || answer.status == 429).then(|| classify(answer.status, &answer.body, what))
            {
                tracing::warn!(what, pause_s = pause.as_secs(), "Salesforce refused the call for its API limits: no calls to the org until the pause ends ({detail})");
                *self.inner.limited_until.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(std::time::Instant::now() + pause);
            }
            if answer.status == 401 && !renewed {
                let code = api_error(&answer.body).map(|e| e.code).unwrap_or_default();
                if code == "INVALID_SESSION_ID" || code.is_empty() {
                    tracing::info!(what, "Salesforce session ended: signing in again");
                    self.forget(&session.token).await;
                    renewed = true;
                    continue;
                }
            }
            return Ok(answer);
        }
    }

    async fn send(
        &self,
        session: &Session,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<Answer, SourceError> {
        let i = &self.inner;
        let url = format!("{}{path}", session.instance_url);
        let mut request = i
            .http
            .request(method, &url)
            .timeout(i.timeout)
            .bearer_auth(session.token.expose())
            .header("Sforce-Query-Options", "batchSize=2000");
        if let Some(b) = body {
            request = request.json(b);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                SourceError::Timeout { what: format!("Salesforce ({what})"), after: i.timeout }
            } else {
                SourceError::Transient(format!("cannot reach Salesforce for {what}: {}", without_url(&e)))
            }
        })?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        if let Some(u) = headers.get("sforce-limit-info").and_then(|v| v.to_str().ok()).and_then(parse_limit_info) {
            *i.usage.lock().unwrap_or_else(PoisonError::into_inner) = Some(u);
        }
        let server_ms = headers
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(|d| chrono::DateTime::parse_from_rfc2822(d).ok())
            .map(|t| t.timestamp_millis());
        let counted_at = server_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
        i.own_requests.lock().unwrap_or_else(PoisonError::into_inner).count(counted_at);
        let body = tokio::time::timeout(i.timeout, response.bytes())
            .await
            .map_err(|_| SourceError::Timeout { what: format!("Salesforce's answer to {what}"), after: i.timeout })?
            .map_err(|_| SourceError::Transient(format!("Salesforce's answer to {what} was cut short")))?;
        Ok(Answer { status, body: body.to_vec(), server_ms })
    }

    /// A GET whose answer must be a 2xx JSON document.
    pub async fn get_json(&self, path: &str, what: &str) -> Result<(Value, Option<i64>), SourceError> {
        let a = self.call(reqwest::Method::GET, path, None, what).await?;
        if !(200..300).contains(&a.status) {
            return Err(classify(a.status, &a.body, what));
        }
        let v = serde_json::from_slice(&a.body)
            .map_err(|_| SourceError::Transient(format!("unreadable answer from Salesforce to {what}")))?;
        Ok((v, a.server_ms))
    }

    /// Runs a SOQL query and follows `nextRecordsUrl` until `done`. Returns the records, the
    /// number of requests spent, and the server's time at the first answer.
    pub async fn query(&self, soql: &str, what: &str) -> Result<(Vec<Value>, usize, Option<i64>), SourceError> {
        self.query_at("query", soql, what).await
    }

    /// As [`query`](Self::query), through `queryAll`: records in the Recycle Bin come too,
    /// with `IsDeleted = true`.
    pub async fn query_all(&self, soql: &str, what: &str) -> Result<(Vec<Value>, usize, Option<i64>), SourceError> {
        self.query_at("queryAll", soql, what).await
    }

    async fn query_at(
        &self,
        resource: &str,
        soql: &str,
        what: &str,
    ) -> Result<(Vec<Value>, usize, Option<i64>), SourceError> {
        let q = percent_encoding::utf8_percent_encode(soql, percent_encoding::NON_ALPHANUMERIC).to_string();
        let (first, server_ms) = self.get_json(&format!("{}/{resource}?q={q}", self.data_path()), what).await?;
        let mut page: QueryPage = serde_json::from_value(first).map_err(|e| {
            SourceError::Transient(format!("unexpected query answer from Salesforce ({})", one_line(&e.to_string())))
        })?;
        let mut records = std::mem::take(&mut page.records);
        let mut requests = 1;
        while !page.done {
            let Some(next) = page.next.take() else {
                return Err(SourceError::Transient(
                    "Salesforce said the query was not done but gave no next page".into(),
                ));
            };
            if !next.starts_with("/services/data/") {
                return Err(SourceError::Transient("Salesforce gave a next page outside its REST API".into()));
            }
            if requests >= MAX_PAGES {
                return Err(SourceError::Permanent(format!("the query for {what} has more than {MAX_PAGES} pages")));
            }
            let (v, _) = self.get_json(&next, what).await?;
            requests += 1;
            page = serde_json::from_value(v)
                .map_err(|_| SourceError::Transient("unexpected query page from Salesforce".into()))?;
            records.append(&mut page.records);
        }
        Ok((records, requests, server_ms))
    }
}

/// A transport error in words, its URL (which carries ids) replaced by the vendor's name.
fn without_url(e: &reqwest::Error) -> String {
    let text = e.to_string();
    match e.url() {
        Some(url) => text.replace(url.as_str(), "Salesforce"),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_requests_are_counted_over_a_rolling_day() {
        let mut own = OwnRequests::default();
        let hour = 3_600_000;
        own.count(0);
        own.count(10);
        own.count(5 * hour);
        assert_eq!(own.total(), 3);
        own.count(24 * hour);
        assert_eq!(own.total(), 2, "the first hour left the window");
        let usage = Usage { used: 100, max: 1000, ours: 500 };
        assert!(usage.above(0.5));
        assert!(!Usage { ours: 10, ..usage }.above(0.5));
        assert!(Usage { used: 960, ours: 10, ..usage }.above(0.5), "the org is nearly spent");
    }

    #[test]
    fn limit_info_is_read() {
        assert_eq!(parse_limit_info("api-usage=18/5000"), Some(Usage { used: 18, max: 5000, ours: 0 }));
        assert_eq!(
            parse_limit_info("api-usage=25/5000; per-app-api-usage=17/250(appName=sample-connected-app)"),
            Some(Usage { used: 25, max: 5000, ours: 0 })
        );
        assert_eq!(parse_limit_info("nothing"), None);
    }
}
