//! Emulator of Google's OAuth token endpoint, Sheets v4 values/spreadsheets endpoints and
//! Drive v3 `files.get`, faithful to the reference: JWT bearer assertions are verified (RS256
//! against the service account's public key, audience = token URL), ranges are real A1,
//! trailing empty cells are trimmed, render options are honoured, Drive's `version` moves on
//! every write, and per-minute quotas answer 429 `RESOURCE_EXHAUSTED` in Google's error shape.

// Handlers return ready HTTP responses as their error type: the axum idiom, and the size of a
// Response does not matter on this path.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::SandboxState;
use crate::sources::google_sheets::a1::{column_index, column_letters, quote_tab};

/// One tab of a spreadsheet.
#[derive(Debug, Clone)]
pub struct Tab {
    pub sheet_id: i64,
    pub title: String,
    /// Row-major cells; `Value::Null` is an empty cell.
    pub cells: Vec<Vec<Value>>,
}

/// One spreadsheet.
#[derive(Debug, Clone)]
pub struct Spreadsheet {
    pub id: String,
    pub title: String,
    pub time_zone: String,
    pub tabs: Vec<Tab>,
    pub version: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

impl Spreadsheet {
    fn touch(&mut self) {
        self.version += 1;
        self.modified = chrono::Utc::now();
    }

    fn tab_mut(&mut self, title: &str) -> Option<&mut Tab> {
        self.tabs.iter_mut().find(|t| t.title == title)
    }
}

/// A fault to inject into upcoming Google requests.
#[derive(Debug, Clone, Deserialize)]
pub struct GoogleFault {
    /// HTTP status to answer (429, 500, 503, …).
    pub status: u16,
    /// How many requests get it.
    pub count: u32,
    /// `read`, `write`, `drive` or `any` (default).
    #[serde(default)]
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Token,
    DriveGet,
    SpreadsheetsGet,
    ValuesGet,
    ValuesBatchGet,
    ValuesBatchUpdate,
    ValuesUpdate,
    ValuesAppend,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::DriveGet => "drive.files.get",
            Kind::SpreadsheetsGet => "spreadsheets.get",
            Kind::ValuesGet => "values.get",
            Kind::ValuesBatchGet => "values.batchGet",
            Kind::ValuesBatchUpdate => "values.batchUpdate",
            Kind::ValuesUpdate => "values.update",
            Kind::ValuesAppend => "values.append",
        }
    }

    fn is_write(self) -> bool {
        matches!(self, Kind::ValuesBatchUpdate | Kind::ValuesUpdate | Kind::ValuesAppend)
    }
}

/// Everything the Google emulator knows.
pub struct GoogleState {
    inner: Mutex<Inner>,
}

struct Inner {
    spreadsheets: HashMap<String, Spreadsheet>,
    /// client_email → PKCS#1 public key DER.
    accounts: HashMap<String, Vec<u8>>,
    tokens: HashMap<String, (String, Instant)>,
    /// Per-minute quotas per user (client_email).
    read_quota: u32,
    write_quota: u32,
    window_start: Instant,
    used: HashMap<(String, bool), u32>,
    faults: VecDeque<GoogleFault>,
    counts: HashMap<&'static str, u64>,
    next_sheet_id: i64,
}

impl Default for GoogleState {
    fn default() -> Self {
        Self::new()
    }
}

impl GoogleState {
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                spreadsheets: HashMap::new(),
                accounts: HashMap::new(),
                tokens: HashMap::new(),
                read_quota: 60,
                write_quota: 60,
                window_start: Instant::now(),
                used: HashMap::new(),
                faults: VecDeque::new(),
                counts: HashMap::new(),
                next_sheet_id: 1000,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a service account and returns its key JSON (token_uri → this emulator).
    pub fn create_service_account(&self, base_url: &str, client_email: &str) -> String {
        let der = base64::engine::general_purpose::STANDARD.decode(super::keys::PUBLIC_KEY_DER_B64).unwrap_or_default();
        self.lock().accounts.insert(client_email.to_string(), der);
        json!({
            "type": "service_account",
            "project_id": "recado-sandbox",
            "private_key_id": "sandbox-key-1",
            "private_key": super::keys::PRIVATE_KEY_PEM,
            "client_email": client_email,
            "client_id": "100000000000000000001",
            "auth_uri": format!("{base_url}/google/auth"),
            "token_uri": format!("{base_url}/google/token"),
            "auth_provider_x509_cert_url": format!("{base_url}/google/certs"),
            "client_x509_cert_url": format!("{base_url}/google/certs/{client_email}"),
            "universe_domain": "googleapis.com"
        })
        .to_string()
    }

    /// Creates or replaces a spreadsheet. `tabs`: (title, rows).
    pub fn seed(&self, id: &str, time_zone: &str, tabs: Vec<(String, Vec<Vec<Value>>)>) {
        let mut g = self.lock();
        let mut sheet_tabs = Vec::new();
        for (title, cells) in tabs {
            g.next_sheet_id += 1;
            sheet_tabs.push(Tab { sheet_id: g.next_sheet_id, title, cells });
        }
        let version = g.spreadsheets.get(id).map(|s| s.version + 1).unwrap_or(1);
        g.spreadsheets.insert(
            id.to_string(),
            Spreadsheet {
                id: id.to_string(),
                title: format!("Sandbox {id}"),
                time_zone: time_zone.to_string(),
                tabs: sheet_tabs,
                version,
                modified: chrono::Utc::now(),
            },
        );
    }

    /// Rows of a tab as stored (header first).
    pub fn rows(&self, id: &str, tab: &str) -> Vec<Vec<Value>> {
        self.lock()
            .spreadsheets
            .get(id)
            .and_then(|s| s.tabs.iter().find(|t| t.title == tab))
            .map(|t| t.cells.clone())
            .unwrap_or_default()
    }

    /// The text of a cell by the value of `key_column` and a header name.
    pub fn cell_by_key(&self, id: &str, tab: &str, key_column: &str, key: &str, column: &str) -> Option<String> {
        let rows = self.rows(id, tab);
        let header = rows.first()?;
        let kc = header.iter().position(|h| text(h) == key_column)?;
        let c = header.iter().position(|h| text(h) == column)?;
        rows.iter()
            .skip(1)
            .find(|r| r.get(kc).map(text).as_deref() == Some(key))
            .map(|r| r.get(c).map(text).unwrap_or_default())
    }

    /// Edits a cell as a person would (by key and header). False when not found.
    pub fn edit_by_key(&self, id: &str, tab: &str, key_column: &str, key: &str, column: &str, value: Value) -> bool {
        let mut g = self.lock();
        let Some(s) = g.spreadsheets.get_mut(id) else { return false };
        let Some(t) = s.tab_mut(tab) else { return false };
        let Some(header) = t.cells.first().cloned() else { return false };
        let (Some(kc), Some(c)) =
            (header.iter().position(|h| text(h) == key_column), header.iter().position(|h| text(h) == column))
        else {
            return false;
        };
        let Some(row) = t.cells.iter_mut().skip(1).find(|r| r.get(kc).map(text).as_deref() == Some(key)) else {
            return false;
        };
        if row.len() <= c {
            row.resize(c + 1, Value::Null);
        }
        row[c] = value;
        s.touch();
        true
    }

    /// Inserts a data row at sheet row `at` (2 = first data row), or appends when `None`.
    pub fn insert_row(&self, id: &str, tab: &str, at: Option<usize>, values: Vec<Value>) -> bool {
        let mut g = self.lock();
        let Some(s) = g.spreadsheets.get_mut(id) else { return false };
        let Some(t) = s.tab_mut(tab) else { return false };
        match at {
            Some(n) if n >= 2 && n - 1 <= t.cells.len() => t.cells.insert(n - 1, values),
            _ => {
                while t.cells.len() > 1 && t.cells.last().is_some_and(|r| r.iter().all(is_empty)) {
                    t.cells.pop();
                }
                t.cells.push(values)
            }
        }
        s.touch();
        true
    }

    /// Deletes sheet row `n` (2 = first data row).
    pub fn delete_row(&self, id: &str, tab: &str, n: usize) -> bool {
        let mut g = self.lock();
        let Some(s) = g.spreadsheets.get_mut(id) else { return false };
        let Some(t) = s.tab_mut(tab) else { return false };
        if n < 2 || n > t.cells.len() {
            return false;
        }
        t.cells.remove(n - 1);
        s.touch();
        true
    }

    /// Sorts the data rows by a header, as "Data → Sort range" does.
    pub fn sort_by(&self, id: &str, tab: &str, column: &str, descending: bool) -> bool {
        let mut g = self.lock();
        let Some(s) = g.spreadsheets.get_mut(id) else { return false };
        let Some(t) = s.tab_mut(tab) else { return false };
        let Some(c) = t.cells.first().and_then(|h| h.iter().position(|v| text(v) == column)) else { return false };
        let mut data: Vec<Vec<Value>> = t.cells.drain(1..).collect();
        data.sort_by(|a, b| {
            let (x, y) = (a.get(c).map(text).unwrap_or_default(), b.get(c).map(text).unwrap_or_default());
            if descending {
                y.cmp(&x)
            } else {
                x.cmp(&y)
            }
        });
        t.cells.extend(data);
        s.touch();
        true
    }

    pub fn set_quota(&self, read_per_minute: u32, write_per_minute: u32) {
        let mut g = self.lock();
        g.read_quota = read_per_minute;
        g.write_quota = write_per_minute;
    }

    pub fn inject(&self, fault: GoogleFault) {
        self.lock().faults.push_back(fault);
    }

    /// How many requests of each kind were answered (for tests and benchmarks).
    pub fn counts(&self) -> HashMap<&'static str, u64> {
        self.lock().counts.clone()
    }

    pub fn count(&self, kind: Kind) -> u64 {
        self.lock().counts.get(kind.name()).copied().unwrap_or(0)
    }

    pub fn reset_counts(&self) {
        self.lock().counts.clear();
    }

    /// Authorises a request: bearer token, injected faults, quotas. Counts it.
    fn admit(&self, headers: &HeaderMap, kind: Kind) -> Result<(), Response> {
        let mut g = self.lock();
        *g.counts.entry(kind.name()).or_insert(0) += 1;
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let user = match g.tokens.get(token) {
            Some((user, exp)) if *exp > Instant::now() => user.clone(),
            _ => {
                return Err(google_error(
                    StatusCode::UNAUTHORIZED,
                    "UNAUTHENTICATED",
                    "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
                ))
            }
        };
        let scope_matches = |f: &GoogleFault| match f.scope.as_deref().unwrap_or("any") {
            "read" => !kind.is_write() && kind != Kind::DriveGet,
            "write" => kind.is_write(),
            "drive" => kind == Kind::DriveGet,
            _ => true,
        };
        if let Some(pos) = g.faults.iter().position(scope_matches) {
            let status = g.faults[pos].status;
            g.faults[pos].count = g.faults[pos].count.saturating_sub(1);
            if g.faults[pos].count == 0 {
                g.faults.remove(pos);
            }
            return Err(if status == 429 { quota_error(kind.is_write()) } else { fault_error(status) });
        }
        if g.window_start.elapsed() >= Duration::from_secs(60) {
            g.window_start = Instant::now();
            g.used.clear();
        }
        if kind == Kind::DriveGet {
            return Ok(()); // Drive's quotas are far larger than Sheets'.
        }
        let limit = if kind.is_write() { g.write_quota } else { g.read_quota };
        let used = g.used.entry((user, kind.is_write())).or_insert(0);
        if *used >= limit {
            return Err(quota_error(kind.is_write()));
        }
        *used += 1;
        Ok(())
    }
}

fn is_empty(v: &Value) -> bool {
    matches!(v, Value::Null) || v.as_str().is_some_and(str::is_empty)
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        Value::Number(n) => n.as_f64().map(|f| crate::domain::CellValue::Number(f).canonical()).unwrap_or_default(),
        Value::Bool(b) => if *b { "TRUE" } else { "FALSE" }.to_string(),
        other => other.to_string(),
    }
}

pub fn google_error(status: StatusCode, code_name: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": status.as_u16(), "message": message, "status": code_name } })))
        .into_response()
}

fn quota_error(write: bool) -> Response {
    let (metric, limit, qname) = if write {
        ("Write requests", "Write requests per minute per user", "WriteRequestsPerMinutePerUser")
    } else {
        ("Read requests", "Read requests per minute per user", "ReadRequestsPerMinutePerUser")
    };
    let body = json!({ "error": {
        "code": 429,
        "message": format!("Quota exceeded for quota metric '{metric}' and limit '{limit}' of service 'sheets.googleapis.com' for consumer 'project_number:172856096362'."),
        "status": "RESOURCE_EXHAUSTED",
        "details": [ { "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED", "domain": "googleapis.com",
            "metadata": { "quota_limit": qname, "service": "sheets.googleapis.com", "consumer": "projects/172856096362",
                          "quota_metric": if write { "sheets.googleapis.com/write_requests" } else { "sheets.googleapis.com/read_requests" } } } ]
    }});
    (StatusCode::TOO_MANY_REQUESTS, Json(body)).into_response()
}

fn fault_error(status: u16) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let name = match status {
        500 => "INTERNAL",
        503 => "UNAVAILABLE",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        _ => "UNKNOWN",
    };
    google_error(code, name, "Injected fault (sandbox).")
}

// ---------------------------------------------------------------------------------------------
// A1 ranges

/// A parsed A1 range: tab title and inclusive 0-based bounds (None = open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct A1 {
    pub tab: Option<String>,
    pub col0: Option<usize>,
    pub row0: Option<usize>,
    pub col1: Option<usize>,
    pub row1: Option<usize>,
}

fn split_ref(s: &str) -> Option<(Option<usize>, Option<usize>)> {
    let letters: String = s.chars().take_while(|c| c.is_ascii_alphabetic()).collect();
    let digits = &s[letters.len()..];
    if !digits.chars().all(|c| c.is_ascii_digit()) || (letters.is_empty() && digits.is_empty()) {
        return None;
    }
    let col = if letters.is_empty() { None } else { Some(column_index(&letters)?) };
    let row = if digits.is_empty() {
        None
    } else {
        let n: usize = digits.parse().ok()?;
        if n == 0 {
            return None;
        }
        Some(n - 1)
    };
    Some((col, row))
}

/// Parses `'My tab'!A1:C5`, `Tab!C:C`, `Tab!1:1`, `Tab`, `A1:B2`.
pub fn parse_a1(range: &str) -> Option<A1> {
    let range = range.trim();
    let (tab, cells) = if let Some(rest) = range.strip_prefix('\'') {
        let mut title = String::new();
        let mut chars = rest.char_indices().peekable();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            if c == '\'' {
                if chars.peek().map(|(_, n)| *n) == Some('\'') {
                    title.push('\'');
                    chars.next();
                } else {
                    end = Some(i + 1);
                    break;
                }
            } else {
                title.push(c);
            }
        }
        let after = &rest[end?..];
        match after.strip_prefix('!') {
            Some(cells) => (Some(title), cells.to_string()),
            None if after.is_empty() => (Some(title), String::new()),
            None => return None,
        }
    } else if let Some((t, c)) = range.split_once('!') {
        (Some(t.to_string()), c.to_string())
    } else if (range.contains(':') || range.chars().any(|c| c.is_ascii_digit()))
        && split_ref(range.split(':').next().unwrap_or("")).is_some()
    {
        (None, range.to_string())
    } else {
        (Some(range.to_string()), String::new())
    };
    if cells.is_empty() {
        return Some(A1 { tab, col0: None, row0: None, col1: None, row1: None });
    }
    let (a, b) = match cells.split_once(':') {
        Some((a, b)) => (a, Some(b)),
        None => (cells.as_str(), None),
    };
    let (col0, row0) = split_ref(a)?;
    let (col1, row1) = match b {
        Some(b) => split_ref(b)?,
        None => (col0, row0),
    };
    Some(A1 { tab, col0, row0, col1, row1 })
}

fn a1_text(tab: &str, c0: usize, r0: usize, c1: usize, r1: usize) -> String {
    format!("{}!{}{}:{}{}", quote_tab(tab), column_letters(c0), r0 + 1, column_letters(c1), r1 + 1)
}

fn find_tab<'a>(s: &'a Spreadsheet, a1: &A1) -> Option<&'a Tab> {
    match &a1.tab {
        Some(t) => s.tabs.iter().find(|x| &x.title == t),
        None => s.tabs.first(),
    }
}

/// Reads a range with render options, trimming trailing empties.
fn read_range(s: &Spreadsheet, range: &str, render: &str, dt_render: &str, major: &str) -> Result<Value, Response> {
    let bad = || google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &format!("Unable to parse range: {range}"));
    let a1 = parse_a1(range).ok_or_else(bad)?;
    let tab = find_tab(s, &a1).ok_or_else(bad)?;
    let grid_rows = tab.cells.len().max(1000);
    let grid_cols = tab.cells.iter().map(Vec::len).max().unwrap_or(0).max(26);
    let (c0, r0) = (a1.col0.unwrap_or(0), a1.row0.unwrap_or(0));
    let c1 = a1.col1.unwrap_or(grid_cols - 1);
    let r1 = a1.row1.unwrap_or(grid_rows - 1);
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for r in r0..=r1.min(tab.cells.len().saturating_sub(1)) {
        let Some(row) = tab.cells.get(r) else { break };
        let mut out: Vec<Value> = (c0..=c1.min(row.len().saturating_sub(1)))
            .map(|c| render_cell(row.get(c).cloned().unwrap_or(Value::Null), render, dt_render))
            .collect();
        if row.is_empty() || c0 >= row.len() {
            out.clear();
        }
        while out.last().is_some_and(is_empty) {
            out.pop();
        }
        rows.push(out);
    }
    while rows.last().is_some_and(Vec::is_empty) {
        rows.pop();
    }
    if major == "COLUMNS" {
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut cols = vec![Vec::new(); width];
        for row in &rows {
            for (i, col) in cols.iter_mut().enumerate() {
                col.push(row.get(i).cloned().unwrap_or(Value::String(String::new())));
            }
        }
        for col in cols.iter_mut() {
            while col.last().is_some_and(is_empty) {
                col.pop();
            }
        }
        rows = cols;
    }
    let mut body = json!({ "range": a1_text(&tab.title, c0, r0, c1, r1), "majorDimension": if major == "COLUMNS" { "COLUMNS" } else { "ROWS" } });
    if !rows.is_empty() {
        // Interior empty cells come back as "".
        let rows: Vec<Vec<Value>> = rows
            .into_iter()
            .map(|r| r.into_iter().map(|v| if v.is_null() { Value::String(String::new()) } else { v }).collect())
            .collect();
        body["values"] = json!(rows);
    }
    Ok(body)
}

fn render_cell(v: Value, render: &str, _dt_render: &str) -> Value {
    match render {
        "UNFORMATTED_VALUE" | "FORMULA" => v,
        // FORMATTED_VALUE (the default): everything as text.
        _ => match v {
            Value::Null => Value::Null,
            other => Value::String(text(&other)),
        },
    }
}

/// Writes a 2-D block at the top-left of `range`. Returns (range written, rows, cols, cells).
fn write_range(
    s: &mut Spreadsheet,
    range: &str,
    values: &[Vec<Value>],
    input: &str,
) -> Result<(String, usize, usize, usize), Response> {
    let bad = || google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &format!("Unable to parse range: {range}"));
    let a1 = parse_a1(range).ok_or_else(bad)?;
    let title = match &a1.tab {
        Some(t) => t.clone(),
        None => s.tabs.first().map(|t| t.title.clone()).ok_or_else(bad)?,
    };
    let tab = s.tab_mut(&title).ok_or_else(bad)?;
    let (c0, r0) = (a1.col0.unwrap_or(0), a1.row0.unwrap_or(0));
    let mut cells = 0;
    let mut width = 0;
    for (i, row) in values.iter().enumerate() {
        let r = r0 + i;
        while tab.cells.len() <= r {
            tab.cells.push(Vec::new());
        }
        for (j, v) in row.iter().enumerate() {
            if v.is_null() {
                continue; // null means "leave as is"
            }
            let c = c0 + j;
            let target = &mut tab.cells[r];
            if target.len() <= c {
                target.resize(c + 1, Value::Null);
            }
            target[c] = if input == "USER_ENTERED" { user_entered(v) } else { v.clone() };
            cells += 1;
            width = width.max(j + 1);
        }
    }
    let written = a1_text(&title, c0, r0, c0 + width.saturating_sub(1), r0 + values.len().saturating_sub(1));
    s.touch();
    Ok((written, values.len(), width, cells))
}

fn user_entered(v: &Value) -> Value {
    match v {
        Value::String(s) => {
            if let Ok(n) = s.trim().parse::<f64>() {
                json!(n)
            } else if s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false") {
                json!(s.eq_ignore_ascii_case("true"))
            } else {
                v.clone()
            }
        }
        other => other.clone(),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP handlers

#[derive(Deserialize)]
pub struct TokenForm {
    grant_type: String,
    assertion: String,
}

pub async fn token(State(st): State<SandboxState>, Form(f): Form<TokenForm>) -> Response {
    {
        let mut g = st.google.lock();
        *g.counts.entry(Kind::Token.name()).or_insert(0) += 1;
    }
    let invalid = |desc: &str| {
        (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_grant", "error_description": desc }))).into_response()
    };
    if f.grant_type != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "unsupported_grant_type", "error_description": "Invalid grant_type." })),
        )
            .into_response();
    }
    let parts: Vec<&str> = f.assertion.split('.').collect();
    if parts.len() != 3 {
        return invalid("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe.");
    }
    // Google accepts base64url with or without padding (yup-oauth2 pads).
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('='));
    let (Ok(header), Ok(claims), Ok(sig)) = (b64(parts[0]), b64(parts[1]), b64(parts[2])) else {
        return invalid("Invalid JWT Signature.");
    };
    let (Ok(header), Ok(claims)) = (serde_json::from_slice::<Value>(&header), serde_json::from_slice::<Value>(&claims))
    else {
        return invalid("Invalid JWT Signature.");
    };
    if header["alg"] != "RS256" {
        return invalid("Invalid JWT Signature.");
    }
    let iss = claims["iss"].as_str().unwrap_or_default().to_string();
    let key = st.google.lock().accounts.get(&iss).cloned();
    let Some(key) = key else {
        return invalid("Invalid grant: account not found");
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key);
    if pk.verify(signed.as_bytes(), &sig).is_err() {
        return invalid("Invalid JWT Signature.");
    }
    let expected_aud = format!("{}/google/token", st.base_url());
    if claims["aud"].as_str() != Some(expected_aud.as_str()) {
        return invalid("Invalid JWT: audience does not match the token URI.");
    }
    let now = chrono::Utc::now().timestamp();
    let (iat, exp) = (claims["iat"].as_i64().unwrap_or(0), claims["exp"].as_i64().unwrap_or(0));
    if exp <= now || iat > now + 300 || exp - iat > 3600 {
        return invalid("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
    }
    let access = format!("ya29.sandbox-{}", hex::encode(rand::random::<[u8; 16]>()));
    st.google.lock().tokens.insert(access.clone(), (iss, Instant::now() + Duration::from_secs(3600)));
    Json(json!({ "access_token": access, "expires_in": 3599, "token_type": "Bearer" })).into_response()
}

pub async fn drive_get(
    State(st): State<SandboxState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = st.google.admit(&headers, Kind::DriveGet) {
        return r;
    }
    let g = st.google.lock();
    let Some(s) = g.spreadsheets.get(&id) else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", &format!("File not found: {id}."));
    };
    match q.get("fields") {
        Some(fields) => {
            let mut out = serde_json::Map::new();
            for f in fields.split(',').map(str::trim) {
                match f {
                    "version" => out.insert("version".into(), json!(s.version.to_string())),
                    "modifiedTime" => out.insert("modifiedTime".into(), json!(s.modified.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))),
                    "id" => out.insert("id".into(), json!(s.id)),
                    "name" => out.insert("name".into(), json!(s.title)),
                    _ => None,
                };
            }
            Json(Value::Object(out)).into_response()
        }
        None => Json(json!({ "kind": "drive#file", "id": s.id, "name": s.title, "mimeType": "application/vnd.google-apps.spreadsheet" })).into_response(),
    }
}

pub async fn spreadsheets_get(State(st): State<SandboxState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = st.google.admit(&headers, Kind::SpreadsheetsGet) {
        return r;
    }
    let g = st.google.lock();
    let Some(s) = g.spreadsheets.get(&id) else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.");
    };
    let sheets: Vec<Value> = s
        .tabs
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({ "properties": { "sheetId": t.sheet_id, "title": t.title, "index": i, "sheetType": "GRID",
                "gridProperties": { "rowCount": t.cells.len().max(1000), "columnCount": t.cells.iter().map(Vec::len).max().unwrap_or(0).max(26) } } })
        })
        .collect();
    Json(json!({
        "spreadsheetId": s.id,
        "properties": { "title": s.title, "locale": "es_CL", "autoRecalc": "ON_CHANGE", "timeZone": s.time_zone },
        "sheets": sheets,
        "spreadsheetUrl": format!("https://docs.google.com/spreadsheets/d/{}/edit", s.id)
    }))
    .into_response()
}

fn opt<'a>(q: &'a [(String, String)], name: &str, default: &'a str) -> &'a str {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or(default)
}

fn parse_query(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|r| url_decode_pairs(&r)).unwrap_or_default()
}

fn url_decode_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().to_string();
            (dec(k), dec(v))
        })
        .collect()
}

pub async fn values_batch_get(
    State(st): State<SandboxState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if let Err(r) = st.google.admit(&headers, Kind::ValuesBatchGet) {
        return r;
    }
    let q = parse_query(raw);
    let g = st.google.lock();
    let Some(s) = g.spreadsheets.get(&id) else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.");
    };
    let (render, dt, major) = (
        opt(&q, "valueRenderOption", "FORMATTED_VALUE"),
        opt(&q, "dateTimeRenderOption", "SERIAL_NUMBER"),
        opt(&q, "majorDimension", "ROWS"),
    );
    let mut out = Vec::new();
    for (_, range) in q.iter().filter(|(k, _)| k == "ranges") {
        match read_range(s, range, render, dt, major) {
            Ok(v) => out.push(v),
            Err(r) => return r,
        }
    }
    Json(json!({ "spreadsheetId": id, "valueRanges": out })).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ValueRangeIn {
    range: Option<String>,
    #[serde(default)]
    values: Vec<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BatchUpdateIn {
    value_input_option: Option<String>,
    #[serde(default)]
    data: Vec<ValueRangeIn>,
}

pub async fn values_batch_update(
    State(st): State<SandboxState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(body): Json<BatchUpdateIn>,
) -> Response {
    if let Err(r) = st.google.admit(&headers, Kind::ValuesBatchUpdate) {
        return r;
    }
    let input = match body.value_input_option.as_deref() {
        Some(v @ ("RAW" | "USER_ENTERED")) => v.to_string(),
        _ => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED",
            )
        }
    };
    let mut g = st.google.lock();
    let Some(s) = g.spreadsheets.get_mut(&id) else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.");
    };
    // Atomic: validate every range first.
    for d in &body.data {
        let ok = d.range.as_deref().and_then(parse_a1).is_some_and(|a| find_tab(s, &a).is_some());
        if !ok {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!("Unable to parse range: {}", d.range.clone().unwrap_or_default()),
            );
        }
    }
    let mut responses = Vec::new();
    let (mut rows, mut cols, mut cells) = (0, 0, 0);
    for d in &body.data {
        match write_range(s, d.range.as_deref().unwrap_or(""), &d.values, &input) {
            Ok((range, r, c, n)) => {
                rows += r;
                cols = cols.max(c);
                cells += n;
                responses.push(json!({ "spreadsheetId": id, "updatedRange": range, "updatedRows": r, "updatedColumns": c, "updatedCells": n }));
            }
            Err(r) => return r,
        }
    }
    Json(
        json!({ "spreadsheetId": id, "totalUpdatedRows": rows, "totalUpdatedColumns": cols, "totalUpdatedCells": cells,
                 "totalUpdatedSheets": if body.data.is_empty() { 0 } else { 1 }, "responses": responses }),
    )
    .into_response()
}

/// `values/{range}`: GET reads; PUT writes; POST with `{range}:append` appends.
pub async fn values_range(
    State(st): State<SandboxState>,
    Path((id, range)): Path<(String, String)>,
    method: axum::http::Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    let q = parse_query(raw);
    if method == axum::http::Method::GET {
        if let Err(r) = st.google.admit(&headers, Kind::ValuesGet) {
            return r;
        }
        let g = st.google.lock();
        let Some(s) = g.spreadsheets.get(&id) else {
            return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.");
        };
        return match read_range(
            s,
            &range,
            opt(&q, "valueRenderOption", "FORMATTED_VALUE"),
            opt(&q, "dateTimeRenderOption", "SERIAL_NUMBER"),
            opt(&q, "majorDimension", "ROWS"),
        ) {
            Ok(v) => Json(v).into_response(),
            Err(r) => r,
        };
    }
    let append = range.ends_with(":append");
    let kind = if append { Kind::ValuesAppend } else { Kind::ValuesUpdate };
    if let Err(r) = st.google.admit(&headers, kind) {
        return r;
    }
    let input = match opt(&q, "valueInputOption", "") {
        v @ ("RAW" | "USER_ENTERED") => v.to_string(),
        _ => {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                "Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED",
            )
        }
    };
    let Ok(vr) = serde_json::from_slice::<ValueRangeIn>(&body) else {
        return google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    let range = range.trim_end_matches(":append").to_string();
    let mut g = st.google.lock();
    let Some(s) = g.spreadsheets.get_mut(&id) else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.");
    };
    if append {
        let Some(a) = parse_a1(&range) else {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!("Unable to parse range: {range}"),
            );
        };
        let Some(tab) = find_tab(s, &a) else {
            return google_error(
                StatusCode::BAD_REQUEST,
                "INVALID_ARGUMENT",
                &format!("Unable to parse range: {range}"),
            );
        };
        let title = tab.title.clone();
        let last = tab.cells.iter().rposition(|r| !r.iter().all(is_empty)).map(|i| i + 1).unwrap_or(0);
        let table_range = if last > 0 {
            a1_text(&title, 0, 0, tab.cells.iter().map(Vec::len).max().unwrap_or(1).saturating_sub(1), last - 1)
        } else {
            String::new()
        };
        let target = format!("{}!A{}", quote_tab(&title), last + 1);
        return match write_range(s, &target, &vr.values, &input) {
            Ok((r, rows, cols, cells)) => Json(json!({ "spreadsheetId": id, "tableRange": table_range,
                "updates": { "spreadsheetId": id, "updatedRange": r, "updatedRows": rows, "updatedColumns": cols, "updatedCells": cells } })).into_response(),
            Err(r) => r,
        };
    }
    match write_range(s, &range, &vr.values, &input) {
        Ok((r, rows, cols, cells)) => Json(json!({ "spreadsheetId": id, "updatedRange": r, "updatedRows": rows, "updatedColumns": cols, "updatedCells": cells })).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a1_forms() {
        let a = parse_a1("'Mi hoja'!A1:C5").unwrap();
        assert_eq!(
            (a.tab.as_deref(), a.col0, a.row0, a.col1, a.row1),
            (Some("Mi hoja"), Some(0), Some(0), Some(2), Some(4))
        );
        let a = parse_a1("Tab!C:C").unwrap();
        assert_eq!((a.col0, a.row0, a.col1, a.row1), (Some(2), None, Some(2), None));
        let a = parse_a1("'It''s'!1:1").unwrap();
        assert_eq!((a.tab.as_deref(), a.row0, a.row1, a.col0), (Some("It's"), Some(0), Some(0), None));
        let a = parse_a1("Inscripciones").unwrap();
        assert_eq!((a.tab.as_deref(), a.col0), (Some("Inscripciones"), None));
        let a = parse_a1("B2").unwrap();
        assert_eq!((a.tab, a.col0, a.row0), (None, Some(1), Some(1)));
        assert!(parse_a1("Tab!A0").is_none());
    }

    #[test]
    fn reads_trim_and_render() {
        let s = Spreadsheet {
            id: "x".into(),
            title: "x".into(),
            time_zone: "UTC".into(),
            tabs: vec![Tab {
                sheet_id: 1,
                title: "T".into(),
                cells: vec![
                    vec![json!("ID"), json!("N"), Value::Null],
                    vec![json!(1.0), Value::Null, json!("")],
                    vec![],
                    vec![json!(2), json!(true)],
                ],
            }],
            version: 1,
            modified: chrono::Utc::now(),
        };
        let v = read_range(&s, "T", "UNFORMATTED_VALUE", "SERIAL_NUMBER", "ROWS").unwrap();
        assert_eq!(v["values"], json!([["ID", "N"], [1.0], [], [2, true]]));
        let v = read_range(&s, "'T'!A:A", "FORMATTED_VALUE", "SERIAL_NUMBER", "ROWS").unwrap();
        assert_eq!(v["values"], json!([["ID"], ["1"], [], ["2"]]));
        let v = read_range(&s, "T!Z1:Z9", "FORMATTED_VALUE", "SERIAL_NUMBER", "ROWS").unwrap();
        assert!(v.get("values").is_none(), "an empty range has no values key");
        assert!(read_range(&s, "Nope!A1", "FORMATTED_VALUE", "SERIAL_NUMBER", "ROWS").is_err());
    }
}
