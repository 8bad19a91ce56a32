//! Google Sheets source: reads a tab through `google-sheets4` with a service account
//! (`yup-oauth2`), probes Drive's `version` so an unchanged sheet costs one request, and
//! writes back in one `values.batchUpdate`.
//!
//! Everything that knows Google's URLs, JSON and error shapes is in this folder. Every call
//! goes through the source's [`Budget`]; a 429 pauses the budget and surfaces as
//! [`GoogleError::RateLimited`], which callers treat as "try later".

pub mod a1;
pub mod budget;

use std::sync::Arc;

use google_sheets4::api::{BatchUpdateValuesRequest, ValueRange};
use google_sheets4::hyper_rustls::{self, HttpsConnector};
use google_sheets4::hyper_util::client::legacy::connect::HttpConnector;
use google_sheets4::hyper_util::{client::legacy::Client, rt::TokioExecutor};
use google_sheets4::yup_oauth2::{self, authenticator::Authenticator};
use google_sheets4::Sheets;
use serde::Deserialize;
use serde_json::Value;

pub use budget::Budget;

use crate::config::GoogleSheetsConfig;
use crate::domain::CellValue;
use crate::sources::Table;

const SCOPE: &str = "https://www.googleapis.com/auth/spreadsheets";
const DRIVE_SCOPE: &str = "https://www.googleapis.com/auth/drive.metadata.readonly";

/// A Google failure, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GoogleError {
    /// 429 / rate-limit 403: the budget is paused; try later.
    #[error("google quota exceeded, pausing: {0}")]
    RateLimited(String),
    /// Network trouble or a 5xx: try later.
    #[error("google unavailable: {0}")]
    Transient(String),
    /// The request itself is wrong (no such tab, no permission, bad id).
    #[error("google refused the request: {0}")]
    Permanent(String),
}

type Connector = HttpsConnector<HttpConnector>;

/// A client for one spreadsheet.
#[derive(Clone)]
pub struct GoogleSheets {
    hub: Sheets<Connector>,
    auth: Authenticator<Connector>,
    http: reqwest::Client,
    drive_base_url: String,
    spreadsheet_id: String,
    budget: Arc<Budget>,
}

#[derive(Deserialize)]
struct DriveFile {
    version: Option<String>,
}

impl GoogleSheets {
    pub async fn connect(
        config: &GoogleSheetsConfig,
        http: reqwest::Client,
        budget: Arc<Budget>,
    ) -> anyhow::Result<Self> {
        let key: yup_oauth2::ServiceAccountKey = serde_json::from_str(config.service_account_key.expose())
            .map_err(|e| anyhow::anyhow!("source {}: service-account key is not valid JSON: {e}", config.id))?;
        let connector = connector()?;
        // The token flow and the Sheets hub use different body types, so two clients share
        // one connector configuration.
        let auth_client = Client::builder(TokioExecutor::new()).build(connector.clone());
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let auth = yup_oauth2::ServiceAccountAuthenticator::with_client(
            key,
            yup_oauth2::client::CustomHyperClientBuilder::from(auth_client),
        )
        .build()
        .await
        .map_err(|e| anyhow::anyhow!("source {}: cannot set up Google authentication: {e}", config.id))?;
        let mut hub = Sheets::new(client, auth.clone());
        hub.base_url(config.sheets_base_url.clone());
        hub.root_url(config.sheets_base_url.clone());
        Ok(Self {
            hub,
            auth,
            http,
            drive_base_url: config.drive_base_url.clone(),
            spreadsheet_id: config.spreadsheet_id.clone(),
            budget,
        })
    }

    pub fn spreadsheet_id(&self) -> &str {
        &self.spreadsheet_id
    }

    /// Drive's `version` of the spreadsheet: it moves on every change, so an unchanged value
    /// means there is nothing to read. One request.
    pub async fn probe_version(&self) -> Result<String, GoogleError> {
        self.budget.acquire().await;
        let token = self
            .auth
            .token(&[DRIVE_SCOPE])
            .await
            .map_err(|e| GoogleError::Transient(format!("cannot get an access token: {e}")))?;
        let url = format!("{}drive/v3/files/{}", self.drive_base_url, self.spreadsheet_id);
        let resp = self
            .http
            .get(url)
            .query(&[("fields", "version,modifiedTime"), ("supportsAllDrives", "true")])
            .bearer_auth(token.token().unwrap_or_default())
            .send()
            .await
            .map_err(|e| GoogleError::Transient(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| GoogleError::Transient(e.to_string()))?;
        if !(200..300).contains(&status) {
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(self.classify_status(status, &json));
        }
        self.budget.succeeded();
        let file: DriveFile = serde_json::from_slice(&body)
            .map_err(|e| GoogleError::Transient(format!("unreadable Drive answer: {e}")))?;
        file.version.ok_or_else(|| GoogleError::Permanent("Drive did not return a version".into()))
    }

    /// The spreadsheet's time zone (dates in cells are in it).
    pub async fn time_zone(&self) -> Result<String, GoogleError> {
        self.budget.acquire().await;
        let result = self
            .hub
            .spreadsheets()
            .get(&self.spreadsheet_id)
            .param("fields", "properties.timeZone,sheets.properties.title")
            .add_scope(SCOPE)
            .doit()
            .await;
        let (_, sheet) = self.map(result)?;
        Ok(sheet.properties.and_then(|p| p.time_zone).unwrap_or_else(|| "UTC".into()))
    }

    /// Reads a whole tab, unformatted, dates as serial numbers.
    pub async fn read_tab(&self, tab: &str) -> Result<Table, GoogleError> {
        self.budget.acquire().await;
        let result = self
            .hub
            .spreadsheets()
            .values_get(&self.spreadsheet_id, &a1::quote_tab(tab))
            .value_render_option("UNFORMATTED_VALUE")
            .date_time_render_option("SERIAL_NUMBER")
            .major_dimension("ROWS")
            .add_scope(SCOPE)
            .doit()
            .await;
        let (_, range) = self.map(result)?;
        Ok(table_from_values(range.values.unwrap_or_default()))
    }

    /// Reads several ranges in one request (the flush's key-column read).
    pub async fn batch_get(&self, ranges: &[String]) -> Result<Vec<Vec<Vec<Value>>>, GoogleError> {
        self.budget.acquire().await;
        let mut call = self
            .hub
            .spreadsheets()
            .values_batch_get(&self.spreadsheet_id)
            .value_render_option("UNFORMATTED_VALUE")
            .major_dimension("ROWS")
            .add_scope(SCOPE);
        for r in ranges {
            call = call.add_ranges(r);
        }
        let (_, resp) = self.map(call.doit().await)?;
        let mut out: Vec<Vec<Vec<Value>>> =
            resp.value_ranges.unwrap_or_default().into_iter().map(|v| v.values.unwrap_or_default()).collect();
        out.resize(ranges.len(), Vec::new());
        Ok(out)
    }

    /// Writes cells (`'Tab'!C7` → text) in one `values.batchUpdate`, as RAW text so a reply
    /// starting with `=` is never run as a formula.
    pub async fn batch_update(&self, cells: Vec<(String, String)>) -> Result<(), GoogleError> {
        if cells.is_empty() {
            return Ok(());
        }
        self.budget.acquire().await;
        let data = cells
            .into_iter()
            .map(|(range, value)| ValueRange {
                major_dimension: None,
                range: Some(range),
                values: Some(vec![vec![Value::String(value)]]),
            })
            .collect();
        let req =
            BatchUpdateValuesRequest { data: Some(data), value_input_option: Some("RAW".into()), ..Default::default() };
        let result =
            self.hub.spreadsheets().values_batch_update(req, &self.spreadsheet_id).add_scope(SCOPE).doit().await;
        self.map(result).map(|_| ())
    }

    fn map<T>(&self, result: google_sheets4::Result<T>) -> Result<T, GoogleError> {
        match result {
            Ok(v) => {
                self.budget.succeeded();
                Ok(v)
            }
            Err(google_sheets4::Error::BadRequest(json)) => {
                let code = json.pointer("/error/code").and_then(Value::as_u64).unwrap_or(400) as u16;
                Err(self.classify_status(code, &json))
            }
            Err(google_sheets4::Error::Failure(resp)) => {
                Err(self.classify_status(resp.status().as_u16(), &Value::Null))
            }
            Err(google_sheets4::Error::MissingToken(e)) => {
                Err(GoogleError::Transient(format!("cannot get an access token: {e}")))
            }
            Err(
                e @ (google_sheets4::Error::HttpError(_)
                | google_sheets4::Error::Io(_)
                | google_sheets4::Error::JsonDecodeError(..)),
            ) => Err(GoogleError::Transient(e.to_string())),
            Err(e) => Err(GoogleError::Permanent(e.to_string())),
        }
    }

    fn classify_status(&self, status: u16, json: &Value) -> GoogleError {
        let message = json.pointer("/error/message").and_then(Value::as_str).unwrap_or("").to_string();
        let reason = json.pointer("/error/errors/0/reason").and_then(Value::as_str).unwrap_or("");
        let text = format!("HTTP {status} {message}").trim().to_string();
        if status == 429 || (status == 403 && reason.to_lowercase().contains("ratelimit")) {
            let pause = self.budget.rate_limited();
            GoogleError::RateLimited(format!("{text} (pausing {:.1}s)", pause.as_secs_f64()))
        } else if status >= 500 {
            GoogleError::Transient(text)
        } else {
            GoogleError::Permanent(text)
        }
    }
}

fn connector() -> anyhow::Result<Connector> {
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| anyhow::anyhow!("cannot load the system's TLS root certificates: {e}"))?;
    Ok(builder.https_or_http().enable_http1().enable_http2().build())
}

/// Values as Google returns them → a [`Table`] (first row is the header).
pub fn table_from_values(values: Vec<Vec<Value>>) -> Table {
    let mut rows = values.into_iter();
    let header = rows.next().unwrap_or_default().into_iter().map(|v| cell_value(v).canonical()).collect();
    Table { header, rows: rows.map(|r| r.into_iter().map(cell_value).collect()).collect() }
}

fn cell_value(v: Value) -> CellValue {
    match v {
        Value::Null => CellValue::Empty,
        Value::String(s) if s.is_empty() => CellValue::Empty,
        Value::String(s) => CellValue::Text(s),
        Value::Number(n) => n.as_f64().map(CellValue::Number).unwrap_or(CellValue::Empty),
        Value::Bool(b) => CellValue::Bool(b),
        other => CellValue::Text(other.to_string()),
    }
}
