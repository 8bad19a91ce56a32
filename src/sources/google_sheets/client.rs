//! The calls recado makes to Google, over reqwest: Drive `files.get` (the version probe),
//! Sheets `spreadsheets.get` (time zone, tabs and grid sizes, column formats),
//! `values.get`, `values.batchGet`, `values.batchUpdate` and `spreadsheets.batchUpdate`
//! (`appendDimension`, to make room for new write-back columns).
//!
//! Every call is paid for from the source's [`Budget`] (or from budget the caller paid for in
//! advance), carries the service account's token, and has a timeout: one call that never
//! answers never stops a loop for longer than `call_timeout`. The two reads whose answers may
//! be whole columns of a large tab (`values.get` of the tab, `values.batchGet` of the
//! write-back) must start within `call_timeout` and bring each chunk within it, and may take
//! up to ten of them in all (at most [`WHOLE_READ_MOST`]).

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{without_url, ServiceAccount};
use super::budget::Budget;
use super::errors::{classify, GoogleErrorBody};
use crate::domain::CellValue;
use crate::sources::SourceError;

/// Whether a call pays for itself or was paid for in advance ([`Budget::acquire`] with n > 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paid {
    Now,
    Already,
}

/// A client for one spreadsheet.
#[derive(Clone)]
pub struct SheetsClient {
    http: reqwest::Client,
    account: ServiceAccount,
    sheets_base: String,
    drive_base: String,
    spreadsheet_id: String,
    /// Sheets requests (Google's per-user Sheets quota).
    budget: Arc<Budget>,
    /// Drive requests (a separate and much larger quota).
    drive_budget: Arc<Budget>,
    timeout: Duration,
}

/// One tab as `spreadsheets.get` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TabMeta {
    pub sheet_id: i64,
    pub title: String,
    pub rows: u64,
    pub columns: u64,
}

/// What `spreadsheets.get` says about the spreadsheet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub time_zone: String,
    pub locale: String,
    pub tabs: Vec<TabMeta>,
}

/// A refused `values.batchUpdate`, with what is needed to retry the rest.
#[derive(Debug, Clone)]
pub enum WriteFailure {
    /// Try the whole batch later (quota, network, server).
    Later(SourceError),
    /// Google refused the batch because of its content.
    Refused(GoogleErrorBody),
}

/// How many call timeouts a whole `values.get` may spend waiting for its answer's chunks (a
/// million-row tab arrives in well under one on a small machine). Time the reader of the rows
/// spends on them (turning them into records, committing them) is not counted: the transfer
/// waits for it, and a slow disk must not make a large tab unreadable.
pub const WHOLE_READ_CALL_TIMEOUTS: u32 = 10;

/// The longest a whole `values.get` may take from its request on, the rows' processing
/// included, whatever the call timeout: well inside the watchdog that calls a loop stuck after
/// ten minutes (the engine's `STUCK_AFTER`; an integration test holds them apart), with room
/// for the poll's other calls and its last commit.
pub const WHOLE_READ_MOST: Duration = Duration::from_secs(240);

/// Why an answer's body could not be read: reqwest's limit (`after`) or a broken transfer.
fn body_error(what: &str, e: &reqwest::Error, after: Duration) -> SourceError {
    if e.is_timeout() {
        SourceError::Timeout { what: format!("Google {what}"), after }
    } else {
        SourceError::Transient(format!("{what}: answer cut short: {}", without_url(e)))
    }
}

/// What a `values.get` answer brings, a part at a time (see [`SheetsClient::values_in_parts`]).
#[derive(Debug)]
pub enum RowsPart {
    /// The next rows (the first part starts with the range's first row).
    Rows(Vec<Vec<CellValue>>),
    /// The answer was read to its end and is whole JSON: every row has come.
    End,
}

/// A `values.get` answer's rows, read from a byte stream and handed to `emit` `per_part` at a
/// time as they are decoded (the answer is never held whole). `emit` says `false` when nobody
/// wants more. The answer is whole only when this returns `Ok`: rows emitted before an error
/// were read as they are, but a cut answer may have more.
fn decode_values(
    answer: impl std::io::Read,
    per_part: usize,
    emit: &mut dyn FnMut(Vec<Vec<CellValue>>) -> bool,
) -> Result<(), serde_json::Error> {
    let reader = std::io::BufReader::with_capacity(64 * 1024, answer);
    let mut de = serde_json::Deserializer::from_reader(reader);
    serde::de::DeserializeSeed::deserialize(RangeParts { per_part: per_part.max(1), emit }, &mut de)?;
    de.end()
}

/// The `ValueRange` object: its `values` go to `emit`; everything else is skipped.
struct RangeParts<'a> {
    per_part: usize,
    emit: &'a mut dyn FnMut(Vec<Vec<CellValue>>) -> bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for RangeParts<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RangeParts<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a value range")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "values" {
                map.next_value_seed(RowParts { per_part: self.per_part, emit: &mut *self.emit })?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The `values` array, row by row.
struct RowParts<'a> {
    per_part: usize,
    emit: &'a mut dyn FnMut(Vec<Vec<CellValue>>) -> bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for RowParts<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RowParts<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rows of cells")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let stopped = || <A::Error as serde::de::Error>::custom("the reader of the rows stopped");
        let mut part = Vec::with_capacity(self.per_part);
        while let Some(row) = seq.next_element::<Vec<Cell>>()? {
            // The rows are unwrapped in place (same layout).
            part.push(row.into_iter().map(|c| c.0).collect());
            if part.len() >= self.per_part
                && !(self.emit)(std::mem::replace(&mut part, Vec::with_capacity(self.per_part)))
            {
                return Err(stopped());
            }
        }
        if !part.is_empty() && !(self.emit)(part) {
            return Err(stopped());
        }
        Ok(())
    }
}

/// An answer that may be large (whole columns of a big tab), read a chunk at a time: each
/// chunk must come within the call timeout, and all the waits together within
/// [`WHOLE_READ_CALL_TIMEOUTS`] of them (at most [`WHOLE_READ_MOST`]).
struct LongAnswer {
    response: reqwest::Response,
    what: &'static str,
    timeout: Duration,
    waiting: Duration,
    waited: Duration,
}

impl LongAnswer {
    /// The next chunk, or `None` at the end of the answer.
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, SourceError> {
        let timed_out = |after| SourceError::Timeout { what: format!("Google {}", self.what), after };
        let asked = tokio::time::Instant::now();
        let chunk = tokio::time::timeout(self.timeout, self.response.chunk()).await;
        self.waited += asked.elapsed();
        if self.waited > self.waiting {
            return Err(timed_out(self.waiting));
        }
        match chunk {
            Err(_) => Err(timed_out(self.timeout)),
            Ok(Ok(chunk)) => Ok(chunk),
            Ok(Err(e)) => Err(body_error(self.what, &e, WHOLE_READ_MOST)),
        }
    }
}

/// The chunks of an answer as they arrive, read as one byte stream by a blocking decoder. The
/// stream ends when the transfer does, however it ends: a transfer that failed reports its own
/// error, and a cut answer is never whole JSON.
struct ChunkReader {
    arriving: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    current: bytes::Bytes,
}

impl std::io::Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.arriving.blocking_recv() {
                Some(chunk) => self.current = chunk,
                // The transfer ended (or stopped): end of input.
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        let taken = self.current.split_to(n);
        if let Some(into) = buf.get_mut(..n) {
            into.copy_from_slice(&taken);
        }
        Ok(n)
    }
}

/// One cell of an UNFORMATTED `values.get`, read without building a JSON tree first: a
/// million-row tab is not held as `serde_json::Value`s on its way to records. Numbers stay
/// numbers here; the reader knows which columns hold dates.
struct Cell(CellValue);

impl<'de> Deserialize<'de> for Cell {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CellVisitor)
    }
}

struct CellVisitor;

impl<'de> serde::de::Visitor<'de> for CellVisitor {
    type Value = Cell;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a cell value")
    }
    fn visit_unit<E>(self) -> Result<Cell, E> {
        Ok(Cell(CellValue::Empty))
    }
    fn visit_none<E>(self) -> Result<Cell, E> {
        Ok(Cell(CellValue::Empty))
    }
    fn visit_bool<E>(self, b: bool) -> Result<Cell, E> {
        Ok(Cell(CellValue::Bool(b)))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Cell, E> {
        Ok(Cell(CellValue::Number(n as f64)))
    }
    fn visit_u64<E>(self, n: u64) -> Result<Cell, E> {
        Ok(Cell(CellValue::Number(n as f64)))
    }
    fn visit_f64<E>(self, n: f64) -> Result<Cell, E> {
        Ok(Cell(CellValue::Number(n)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Cell, E> {
        Ok(Cell(if s.is_empty() { CellValue::Empty } else { CellValue::Text(s.into()) }))
    }
    fn visit_string<E>(self, s: String) -> Result<Cell, E> {
        Ok(Cell(if s.is_empty() { CellValue::Empty } else { CellValue::Text(s.into()) }))
    }
    // Google never sends these in a cell; kept as their JSON text rather than refused.
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Cell, A::Error> {
        let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(Cell(CellValue::Text(v.to_string().into())))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Cell, A::Error> {
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(Cell(CellValue::Text(v.to_string().into())))
    }
}

/// The cells of one range of a `values.batchGet`, as the text a cell shows (strings trimmed,
/// numbers in their shortest form), every cell of the range in one buffer: a million-row
/// column is a handful of allocations, not a million strings and a JSON tree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeText {
    text: String,
    /// Where each cell ends in `text`.
    cell_ends: Vec<u32>,
    /// Where each row ends in `cell_ends`.
    row_ends: Vec<u32>,
}

impl RangeText {
    /// Rows the answer had (Google leaves out trailing empty rows).
    pub fn rows(&self) -> usize {
        self.row_ends.len()
    }

    /// The cells of row `i` (0-based); none past the end.
    pub fn row(&self, i: usize) -> impl Iterator<Item = &str> {
        let (first, end) = self.row_span(i);
        (first..end).map(|c| self.cell(c))
    }

    /// The first cell of row `i` (0-based), or "" (an empty row, or past the end).
    pub fn first(&self, i: usize) -> &str {
        let (first, end) = self.row_span(i);
        if first < end {
            self.cell(first)
        } else {
            ""
        }
    }

    fn row_span(&self, i: usize) -> (usize, usize) {
        let end = self.row_ends.get(i).map_or(0, |e| *e as usize);
        let first = match i.checked_sub(1) {
            Some(before) => self.row_ends.get(before).map_or(0, |e| *e as usize),
            None => 0,
        };
        (first, end.max(first))
    }

    fn cell(&self, c: usize) -> &str {
        let end = self.cell_ends.get(c).map_or(0, |e| *e as usize);
        let start = c.checked_sub(1).and_then(|b| self.cell_ends.get(b)).map_or(0, |s| *s as usize);
        self.text.get(start..end).unwrap_or("")
    }

    fn push_cell(&mut self, s: &str) -> Result<(), String> {
        self.text.push_str(s);
        let end = u32::try_from(self.text.len()).map_err(|_| "an answer of more than 4 GB of text".to_string())?;
        self.cell_ends.push(end);
        Ok(())
    }

    fn end_row(&mut self) -> Result<(), String> {
        let end =
            u32::try_from(self.cell_ends.len()).map_err(|_| "an answer of more than 4 billion cells".to_string())?;
        self.row_ends.push(end);
        Ok(())
    }

    /// A range as rows of texts (tests build layouts with it).
    #[cfg(test)]
    pub(crate) fn from_rows<'a>(rows: impl IntoIterator<Item = impl IntoIterator<Item = &'a str>>) -> Self {
        let mut out = Self::default();
        for row in rows {
            for cell in row {
                // Tests and small ranges only: far from the limits.
                let _ = out.push_cell(cell.trim());
            }
            let _ = out.end_row();
        }
        out
    }
}

/// A `values.batchGet` answer decoded straight into [`RangeText`]s: only `valueRanges[*].values`
/// is read, everything else skipped.
fn decode_batch_get(answer: &[u8]) -> Result<Vec<RangeText>, serde_json::Error> {
    let mut ranges = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(answer);
    serde::de::DeserializeSeed::deserialize(BatchText(&mut ranges), &mut de)?;
    de.end()?;
    Ok(ranges)
}

/// The answer object: its `valueRanges`.
struct BatchText<'a>(&'a mut Vec<RangeText>);

impl<'de> serde::de::DeserializeSeed<'de> for BatchText<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BatchText<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a batchGet answer")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "valueRanges" {
                map.next_value_seed(RangeList(&mut *self.0))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `valueRanges`: one [`RangeText`] each, in order.
struct RangeList<'a>(&'a mut Vec<RangeText>);

impl<'de> serde::de::DeserializeSeed<'de> for RangeList<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for RangeList<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("value ranges")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let mut range = RangeText::default();
            if seq.next_element_seed(OneRange(&mut range))?.is_none() {
                return Ok(());
            }
            self.0.push(range);
        }
    }
}

/// One `ValueRange` object: its `values` (absent when the range is empty).
struct OneRange<'a>(&'a mut RangeText);

impl<'de> serde::de::DeserializeSeed<'de> for OneRange<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for OneRange<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a value range")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "values" {
                map.next_value_seed(TextRows(&mut *self.0))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// `values` (rows of cells) or one row of it (`TextRows` of a row pushes cells, not rows).
struct TextRows<'a>(&'a mut RangeText);

impl<'de> serde::de::DeserializeSeed<'de> for TextRows<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TextRows<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("rows of cells")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(TextRow(&mut *self.0))?.is_some() {
            self.0.end_row().map_err(<A::Error as serde::de::Error>::custom)?;
        }
        Ok(())
    }
}

/// One row: its cells pushed as text.
struct TextRow<'a>(&'a mut RangeText);

impl<'de> serde::de::DeserializeSeed<'de> for TextRow<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TextRow<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a row of cells")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(cell) = seq.next_element::<Cell>()? {
            let pushed = match cell.0 {
                CellValue::Text(s) => self.0.push_cell(crate::domain::record::trim_cell(&s)),
                CellValue::Empty => self.0.push_cell(""),
                other => self.0.push_cell(&other.canonical()),
            };
            pushed.map_err(<A::Error as serde::de::Error>::custom)?;
        }
        Ok(())
    }
}

impl SheetsClient {
    pub fn new(
        http: reqwest::Client,
        account: ServiceAccount,
        bases: (&str, &str),
        spreadsheet_id: &str,
        budgets: (Arc<Budget>, Arc<Budget>),
        timeout: Duration,
    ) -> Self {
        Self {
            http,
            account,
            sheets_base: bases.0.to_string(),
            drive_base: bases.1.to_string(),
            spreadsheet_id: spreadsheet_id.to_string(),
            budget: budgets.0,
            drive_budget: budgets.1,
            timeout,
        }
    }

    pub fn spreadsheet_id(&self) -> &str {
        &self.spreadsheet_id
    }

    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    pub fn account(&self) -> &ServiceAccount {
        &self.account
    }

    fn sheets_url(&self, rest: &str) -> String {
        format!("{}v4/spreadsheets/{}{rest}", self.sheets_base, encode(&self.spreadsheet_id))
    }

    /// Sends one request (built by `build` with a fresh token) and returns the body of a 2xx
    /// answer, or the classified failure. A 401 renews the token and retries once.
    async fn call(
        &self,
        what: &str,
        paid: Paid,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, (u16, Vec<u8>, SourceError)> {
        self.call_with(&self.budget, what, paid, build).await
    }

    async fn call_with(
        &self,
        budget: &Budget,
        what: &str,
        paid: Paid,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<Vec<u8>, (u16, Vec<u8>, SourceError)> {
        let response = self.send(budget, what, paid, self.timeout, build).await?;
        let body = self.body(response, what).await.map_err(|e| (0, Vec::new(), e))?;
        budget.succeeded();
        Ok(body)
    }

    /// An answer's body, whole, within the call's timeout.
    async fn body(&self, response: reqwest::Response, what: &str) -> Result<Vec<u8>, SourceError> {
        let body = tokio::time::timeout(self.timeout, response.bytes())
            .await
            .map_err(|_| SourceError::Timeout { what: format!("Google {what}"), after: self.timeout })?
            .map_err(|e| body_error(what, &e, self.timeout))?;
        Ok(body.into())
    }

    /// Sends a request with the account's token, paid from `budget` unless paid already, and
    /// with the token renewed once if Google says 401. A 2xx answer comes back unread (its
    /// body may be streamed; the caller counts it a success once read); any other is read and
    /// classified. The answer must start within the call timeout, and be read whole within
    /// `whole`.
    async fn send(
        &self,
        budget: &Budget,
        what: &str,
        paid: Paid,
        whole: Duration,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, (u16, Vec<u8>, SourceError)> {
        if paid == Paid::Now {
            budget.acquire(1).await;
        }
        let mut renewed = false;
        loop {
            let token = self.account.token().await.map_err(|e| (0, Vec::new(), e))?;
            let timed_out = || SourceError::Timeout { what: format!("Google {what}"), after: self.timeout };
            let request = build(token.expose()).timeout(whole);
            let response = tokio::time::timeout(self.timeout, request.send())
                .await
                .map_err(|_| (0, Vec::new(), timed_out()))?
                .map_err(|e| {
                    let err = if e.is_timeout() {
                        timed_out()
                    } else {
                        SourceError::Transient(format!("{what}: {}", without_url(&e)))
                    };
                    (0, Vec::new(), err)
                })?;
            let status = response.status().as_u16();
            if (200..300).contains(&status) {
                return Ok(response);
            }
            let body = self.body(response, what).await.map_err(|e| (0, Vec::new(), e))?;
            if status == 401 && !renewed {
                renewed = true;
                self.account.forget().await;
                continue;
            }
            let mut err = classify(status, &body, what);
            if let SourceError::RateLimited { pause, .. } = &mut err {
                *pause = budget.rate_limited();
            }
            return Err((status, body, err));
        }
    }

    async fn get_json(
        &self,
        what: &str,
        paid: Paid,
        url: String,
        query: &[(&str, &str)],
    ) -> Result<Value, SourceError> {
        let body = self
            .call(what, paid, |token| self.http.get(&url).query(query).bearer_auth(token))
            .await
            .map_err(|(_, _, e)| e)?;
        serde_json::from_slice(&body).map_err(|e| SourceError::Transient(format!("{what}: unreadable answer ({e})")))
    }

    /// Drive's `version` of the spreadsheet: it moves on every change. One request, paid from
    /// the Drive budget.
    pub async fn drive_version(&self) -> Result<String, SourceError> {
        let v = self.drive_file("version,modifiedTime").await?;
        match &v["version"] {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            _ => Err(SourceError::Permanent("Drive did not return the file's version".into())),
        }
    }

    /// Whether the account may edit the spreadsheet (Drive's `capabilities.canEdit`): a sheet
    /// shared as Viewer reads fine and refuses every write-back.
    pub async fn drive_can_edit(&self) -> Result<bool, SourceError> {
        let v = self.drive_file("capabilities/canEdit").await?;
        v["capabilities"]["canEdit"]
            .as_bool()
            .ok_or_else(|| SourceError::Permanent("Drive did not say whether the file can be edited".into()))
    }

    /// Drive's `files.get` of the spreadsheet with `fields`, paid from the Drive budget.
    async fn drive_file(&self, fields: &str) -> Result<Value, SourceError> {
        let url = format!("{}drive/v3/files/{}", self.drive_base, encode(&self.spreadsheet_id));
        let query = [("fields", fields), ("supportsAllDrives", "true")];
        let body = self
            .call_with(&self.drive_budget, "drive files.get", Paid::Now, |token| {
                self.http.get(&url).query(&query).bearer_auth(token)
            })
            .await
            .map_err(|(_, _, e)| e)?;
        serde_json::from_slice(&body)
            .map_err(|e| SourceError::Transient(format!("drive files.get: unreadable answer ({e})")))
    }

    /// Time zone, locale and tabs.
    pub async fn metadata(&self) -> Result<Metadata, SourceError> {
        let v = self
            .get_json(
                "spreadsheets.get",
                Paid::Now,
                self.sheets_url(""),
                &[("fields", "properties(timeZone,locale),sheets.properties(sheetId,title,gridProperties)")],
            )
            .await?;
        let tabs = v["sheets"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|s| {
                        let p = &s["properties"];
                        TabMeta {
                            sheet_id: p["sheetId"].as_i64().unwrap_or(0),
                            title: p["title"].as_str().unwrap_or_default().to_string(),
                            rows: p["gridProperties"]["rowCount"].as_u64().unwrap_or(1000),
                            columns: p["gridProperties"]["columnCount"].as_u64().unwrap_or(26),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(Metadata {
            time_zone: v["properties"]["timeZone"].as_str().unwrap_or("UTC").to_string(),
            locale: v["properties"]["locale"].as_str().unwrap_or_default().to_string(),
            tabs,
        })
    }

    /// The number-format type (`DATE`, `DATE_TIME`, `TIME`, `NUMBER`, …) of each cell of a block
    /// of rows, by column.
    pub async fn formats(&self, range: &str) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        Ok(self.formats_of(&[range.to_string()]).await?.into_iter().next().unwrap_or_default())
    }

    /// [`SheetsClient::formats`] of several ranges of one tab in one request, in the order
    /// asked (Google answers one grid block per range, in that order).
    pub async fn formats_of(&self, ranges: &[String]) -> Result<Vec<Vec<Vec<Option<String>>>>, SourceError> {
        let mut query: Vec<(&str, &str)> = ranges.iter().map(|r| ("ranges", r.as_str())).collect();
        query.push(("includeGridData", "true"));
        query.push(("fields", "sheets.data.rowData.values.effectiveFormat.numberFormat.type"));
        let v = self.get_json("spreadsheets.get (formats)", Paid::Now, self.sheets_url(""), &query).await?;
        let blocks = v["sheets"][0]["data"].as_array().cloned().unwrap_or_default();
        let mut out: Vec<Vec<Vec<Option<String>>>> = blocks
            .iter()
            .map(|block| {
                block["rowData"]
                    .as_array()
                    .map(|rows| {
                        rows.iter()
                            .map(|r| {
                                r["values"]
                                    .as_array()
                                    .map(|cells| {
                                        cells
                                            .iter()
                                            .map(|c| {
                                                c["effectiveFormat"]["numberFormat"]["type"].as_str().map(String::from)
                                            })
                                            .collect()
                                    })
                                    .unwrap_or_default()
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        out.resize(ranges.len(), Vec::new());
        Ok(out)
    }

    /// The cells of a range, unformatted: rows of [`CellValue`]s (numbers as numbers, dates as
    /// serial numbers).
    ///
    /// The answer is decoded off the runtime as it arrives, and its rows handed on `per_part`
    /// at a time while the rest is still coming: a million-row tab's answer (about a hundred
    /// megabytes) is never held whole, as bytes or as rows. The channels hold a few parts, so
    /// the reader of the rows sets the pace. The answer must start, and each of its chunks
    /// arrive, within one call timeout; all the waits for chunks together may take
    /// [`WHOLE_READ_CALL_TIMEOUTS`] of them (at most [`WHOLE_READ_MOST`]); and the whole read,
    /// from the request on and the rows' processing included, at most [`WHOLE_READ_MOST`]. The last part is
    /// [`RowsPart::End`], sent only once the answer was read whole; a failure is the last
    /// instead, and rows sent before it may not be all of them.
    pub async fn values_in_parts(
        &self,
        range: &str,
        per_part: usize,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<RowsPart, SourceError>>, SourceError> {
        let url = self.sheets_url(&format!("/values/{}", encode(range)));
        let query = [
            ("valueRenderOption", "UNFORMATTED_VALUE"),
            ("dateTimeRenderOption", "SERIAL_NUMBER"),
            ("majorDimension", "ROWS"),
        ];
        let started = tokio::time::Instant::now();
        let response = self
            .send(&self.budget, "values.get", Paid::Now, WHOLE_READ_MOST, |token| {
                self.http.get(&url).query(&query).bearer_auth(token)
            })
            .await
            .map_err(|(_, _, e)| e)?;
        let (parts, out) = tokio::sync::mpsc::channel::<Result<RowsPart, SourceError>>(2);
        let budget = Arc::clone(&self.budget);
        let mut answer = self.long_answer(response, "values.get");
        tokio::spawn(async move {
            let (chunks, arriving) = tokio::sync::mpsc::channel::<bytes::Bytes>(8);
            let rows = parts.clone();
            let decoder = tokio::task::spawn_blocking(move || {
                let answer = ChunkReader { arriving, current: bytes::Bytes::new() };
                decode_values(answer, per_part, &mut |part| rows.blocking_send(Ok(RowsPart::Rows(part))).is_ok())
            });
            let timed_out = |after| SourceError::Timeout { what: "Google values.get".into(), after };
            let transfer = async {
                while let Some(chunk) = answer.next_chunk().await? {
                    // The decoder stopped early (the answer is unreadable, or nobody wants the
                    // rows): it says why.
                    if chunks.send(chunk).await.is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            };
            let transferred = tokio::time::timeout_at(started + WHOLE_READ_MOST, transfer)
                .await
                .unwrap_or_else(|_| Err(timed_out(WHOLE_READ_MOST)));
            // Whatever happened, the decoder sees the end of its input now.
            drop(chunks);
            let decoded = decoder.await;
            // A transfer that failed is the reason, not what the decoder made of the cut answer.
            let last = transferred.and_then(|()| {
                decoded
                    .map_err(|e| SourceError::Transient(format!("values.get: decoding the answer failed ({e})")))?
                    .map_err(|e| SourceError::Transient(format!("values.get: unreadable answer ({e})")))
            });
            if last.is_ok() {
                budget.succeeded();
            }
            // Nobody may be listening any more: then nothing is owed.
            let _ = parts.send(last.map(|()| RowsPart::End)).await;
        });
        Ok(out)
    }

    /// A range's rows, whole (for small ranges: a header row).
    pub async fn values(&self, range: &str) -> Result<Vec<Vec<CellValue>>, SourceError> {
        let mut parts = self.values_in_parts(range, 1_000).await?;
        let mut rows = Vec::new();
        loop {
            match parts.recv().await {
                Some(Ok(RowsPart::Rows(more))) => rows.extend(more),
                Some(Ok(RowsPart::End)) => return Ok(rows),
                Some(Err(e)) => return Err(e),
                None => return Err(SourceError::Transient("values.get: the answer stopped before its end".into())),
            }
        }
    }

    /// Reads several ranges in one request, as text. The answer may be large (whole columns
    /// of a million-row tab): it must start within the call timeout and each chunk of it come
    /// within one, and all of it within [`WHOLE_READ_CALL_TIMEOUTS`] of them (at most
    /// [`WHOLE_READ_MOST`]); it is decoded off the async runtime.
    pub async fn batch_get(&self, ranges: &[String], paid: Paid) -> Result<Vec<RangeText>, SourceError> {
        let mut query: Vec<(&str, &str)> = vec![
            ("valueRenderOption", "UNFORMATTED_VALUE"),
            ("dateTimeRenderOption", "SERIAL_NUMBER"),
            ("majorDimension", "ROWS"),
        ];
        for r in ranges {
            query.push(("ranges", r.as_str()));
        }
        let url = self.sheets_url("/values:batchGet");
        let response = self
            .send(&self.budget, "values.batchGet", paid, WHOLE_READ_MOST, |token| {
                self.http.get(&url).query(&query).bearer_auth(token)
            })
            .await
            .map_err(|(_, _, e)| e)?;
        let body = self.long_body(response, "values.batchGet").await?;
        let decoded = tokio::task::spawn_blocking(move || decode_batch_get(&body))
            .await
            .map_err(|e| SourceError::Transient(format!("values.batchGet: decoding the answer failed ({e})")))?
            .map_err(|e| SourceError::Transient(format!("values.batchGet: unreadable answer ({e})")))?;
        self.budget.succeeded();
        let mut ranges_read = decoded;
        ranges_read.resize(ranges.len(), RangeText::default());
        Ok(ranges_read)
    }

    /// A large answer read chunk by chunk under this client's call timeout.
    fn long_answer(&self, response: reqwest::Response, what: &'static str) -> LongAnswer {
        let waiting = self.timeout.saturating_mul(WHOLE_READ_CALL_TIMEOUTS).min(WHOLE_READ_MOST).max(self.timeout);
        LongAnswer { response, what, timeout: self.timeout, waiting, waited: Duration::ZERO }
    }

    /// A large answer's body, whole (see [`LongAnswer`]).
    async fn long_body(&self, response: reqwest::Response, what: &'static str) -> Result<Vec<u8>, SourceError> {
        let capacity = response.content_length().unwrap_or(0).min(64 << 20) as usize;
        let mut answer = self.long_answer(response, what);
        let mut body = Vec::with_capacity(capacity);
        while let Some(chunk) = answer.next_chunk().await? {
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }

    /// Writes cells (`'Tab'!C7` → text) in one `values.batchUpdate`, as RAW text so a reply that
    /// starts with `=` is never run as a formula.
    pub async fn batch_update(&self, cells: &[(String, String)], paid: Paid) -> Result<(), WriteFailure> {
        if cells.is_empty() {
            return Ok(());
        }
        let data: Vec<Value> =
            cells.iter().map(|(range, value)| json!({ "range": range, "values": [[value]] })).collect();
        let body = json!({ "valueInputOption": "RAW", "data": data });
        let url = self.sheets_url("/values:batchUpdate");
        match self.call("values.batchUpdate", paid, |token| self.http.post(&url).json(&body).bearer_auth(token)).await {
            Ok(_) => Ok(()),
            Err((400, body, _)) => Err(WriteFailure::Refused(GoogleErrorBody::read(400, &body))),
            Err((413, body, _)) => Err(WriteFailure::Refused(GoogleErrorBody::read(413, &body))),
            Err((_, _, e)) => Err(WriteFailure::Later(e)),
        }
    }

    /// Appends rows after the last row with data of a tab, from column A (`spreadsheets.
    /// batchUpdate` + `appendCells`: unlike `values.append`, a blank row inside the data does not
    /// decide where they go), as strings, so a resident's text is never a formula.
    pub async fn append_rows(&self, sheet_id: i64, rows: &[Vec<String>]) -> Result<(), SourceError> {
        let rows: Vec<Value> = rows
            .iter()
            .map(|row| {
                let values: Vec<Value> = row
                    .iter()
                    .map(|v| if v.is_empty() { json!({}) } else { json!({ "userEnteredValue": { "stringValue": v } }) })
                    .collect();
                json!({ "values": values })
            })
            .collect();
        let body = json!({ "requests": [ { "appendCells": { "sheetId": sheet_id, "rows": rows, "fields": "userEnteredValue" } } ] });
        let url = format!("{}v4/spreadsheets/{}:batchUpdate", self.sheets_base, encode(&self.spreadsheet_id));
        self.call("spreadsheets.batchUpdate (appendCells)", Paid::Now, |token| {
            self.http.post(&url).json(&body).bearer_auth(token)
        })
        .await
        .map(|_| ())
        .map_err(|(_, _, e)| e)
    }

    /// Adds `n` columns at the right of a tab (`spreadsheets.batchUpdate` + `appendDimension`):
    /// Google refuses writes outside a tab's grid.
    pub async fn append_columns(&self, sheet_id: i64, n: u64) -> Result<(), SourceError> {
        let body = json!({ "requests": [ { "appendDimension": { "sheetId": sheet_id, "dimension": "COLUMNS", "length": n } } ] });
        let url = format!("{}v4/spreadsheets/{}:batchUpdate", self.sheets_base, encode(&self.spreadsheet_id));
        self.call("spreadsheets.batchUpdate (appendDimension)", Paid::Now, |token| {
            self.http.post(&url).json(&body).bearer_auth(token)
        })
        .await
        .map(|_| ())
        .map_err(|(_, _, e)| e)
    }
}

/// Characters left as they are in a path segment: RFC 3986's unreserved set.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// Percent-encodes a path segment (spreadsheet ids are URL-safe; ranges are not).
fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(pieces: Vec<&[u8]>) -> ChunkReader {
        let (chunks, arriving) = tokio::sync::mpsc::channel(pieces.len() + 1);
        for piece in pieces {
            chunks.try_send(bytes::Bytes::copy_from_slice(piece)).unwrap();
        }
        ChunkReader { arriving, current: bytes::Bytes::new() }
    }

    /// Every row of an answer, and the sizes of the parts they came in.
    fn decode_all(
        answer: impl std::io::Read,
        per_part: usize,
    ) -> Result<(Vec<Vec<CellValue>>, Vec<usize>), serde_json::Error> {
        let mut rows = Vec::new();
        let mut sizes = Vec::new();
        decode_values(answer, per_part, &mut |part| {
            sizes.push(part.len());
            rows.extend(part);
            true
        })?;
        Ok((rows, sizes))
    }

    fn decode_values_whole(answer: impl std::io::Read) -> Result<Vec<Vec<CellValue>>, serde_json::Error> {
        decode_all(answer, 2).map(|(rows, _)| rows)
    }

    #[test]
    fn rows_come_in_parts_and_stop_when_nobody_wants_more() {
        let body = r#"{"range":"T!A1:A5","majorDimension":"ROWS","values":[["ID"],["1"],["2"],["3"],["4"]]}"#;
        let (rows, sizes) = decode_all(body.as_bytes(), 2).unwrap();
        assert_eq!(rows.len(), 5);
        assert_eq!(sizes, [2, 2, 1]);
        let (_, sizes) = decode_all(r#"{"range":"T!A1:A5","majorDimension":"ROWS"}"#.as_bytes(), 2).unwrap();
        assert!(sizes.is_empty(), "an empty tab has no values at all, so no part");
        let mut parts = 0;
        let stopped = decode_values(body.as_bytes(), 2, &mut |_| {
            parts += 1;
            false
        });
        assert!(stopped.is_err());
        assert_eq!(parts, 1, "no row is decoded for a reader that left");
    }

    #[test]
    fn an_answer_split_anywhere_decodes_as_a_whole_one() {
        let body = r#"{"range":"T!A1:C3","values":[["ID","Ñandú","Fecha"],[1,"Ana \"la\" Pérez",46352.5],[]]}"#;
        let whole = decode_values_whole(body.as_bytes()).unwrap();
        assert_eq!(whole[1][1], CellValue::Text("Ana \"la\" Pérez".into()));
        // Every chunk size, so chunks end inside an escape and inside a two-byte letter.
        for size in 1..body.len() {
            let pieces = body.as_bytes().chunks(size).collect();
            assert_eq!(decode_values_whole(chunked(pieces)).unwrap(), whole, "chunks of {size} bytes");
        }
    }

    #[test]
    fn an_answer_that_stops_midway_is_unreadable_not_a_shorter_tab() {
        let body = br#"{"values":[["ID"],["1"],["2"]]}"#;
        let (first, _) = body.split_at(14);
        // Even right after a whole row.
        assert!(decode_values_whole(chunked(vec![first])).is_err());
        assert!(decode_values_whole(chunked(vec![br#"{"values":[["ID"],["1"]"#])).is_err());
        // An empty chunk in the middle is not the end.
        let (a, b) = body.split_at(20);
        let rows = decode_values_whole(chunked(vec![a, b"", b])).unwrap();
        assert_eq!(rows.len(), 3);
    }

    #[test]
    fn a_batch_get_answer_is_read_straight_into_text() {
        let answer = br#"{"spreadsheetId": "x", "valueRanges": [
            {"range": "T!1:1", "majorDimension": "ROWS", "values": [["ID", " Estado ", 3, true]]},
            {"range": "T!A1:A4", "majorDimension": "ROWS", "values": [["ID"], [1001], [], [" k2 "], [1.5]]},
            {"range": "T!C1:C9"}
        ]}"#;
        let ranges = decode_batch_get(answer).unwrap();
        assert_eq!(ranges.len(), 3);
        assert_eq!(ranges[0].row(0).collect::<Vec<_>>(), ["ID", "Estado", "3", "TRUE"]);
        let column: Vec<&str> = (0..6).map(|i| ranges[1].first(i)).collect();
        assert_eq!(column, ["ID", "1001", "", "k2", "1.5", ""]);
        assert_eq!(ranges[1].rows(), 5);
        assert_eq!(ranges[2].rows(), 0);
        assert_eq!(ranges[2].first(0), "");
        assert!(decode_batch_get(br#"{"valueRanges": [{"values": [["a"]"#).is_err(), "a cut answer is unreadable");
    }

    #[test]
    fn cells_are_read_straight_into_values() {
        let body = r#"{"range":"'Hoja 1'!A1:H3","majorDimension":"ROWS","values":[
            ["ID","Nombre","Fecha"],["1","Ana \"la\" Pérez",46352.4375,true,"",7],[],[["x"],{"a":1}]]}"#;
        let rows = decode_values_whole(body.as_bytes()).unwrap();
        assert_eq!(rows[0][2], CellValue::Text("Fecha".into()));
        assert_eq!(
            rows[1],
            [
                CellValue::Text("1".into()),
                CellValue::Text("Ana \"la\" Pérez".into()),
                CellValue::Number(46352.4375),
                CellValue::Bool(true),
                CellValue::Empty,
                CellValue::Number(7.0),
            ]
        );
        assert!(rows[2].is_empty(), "a blank row in the middle stays a row");
        assert_eq!(rows[3], [CellValue::Text(r#"["x"]"#.into()), CellValue::Text(r#"{"a":1}"#.into())]);
    }
}
