//! Emulator of Google's OAuth token endpoint, Sheets v4 and Drive v3 `files.get`, as strict as
//! Google where recado depends on it (see `/tmp/research/google.md`, `api-facts.md` §C):
//!
//! * JWT bearer assertions are verified (RS256 against the service account's public key,
//!   audience = token URL); per-minute quotas answer 429 `RESOURCE_EXHAUSTED`.
//! * Cells are typed: a value, a number format (`DATE`, `PERCENT`, …) and a formula.
//!   `USER_ENTERED` parses text as a person typing it into the UI does, by the spreadsheet's
//!   locale (`"0042"` → 42, `"+56987654321"` → 56987654321, `"23/11/2026"` → a date in es_CL
//!   and text in en_US, `"15%"`, `"10:30"`, `"TRUE"`, `"'0123"`, `=4/2`); `RAW` never parses.
//! * Reads honour `valueRenderOption` / `dateTimeRenderOption` / `majorDimension`, trim
//!   trailing empties, omit `values` for an empty range and echo the range clipped to the grid,
//!   with the tab quoted only when Google quotes it.
//! * Every tab has a grid (1000 × 26 by default). `values.update` / `values.batchUpdate` never
//!   grow it: a write outside is `400 … exceeds grid limits` and the whole batch is refused;
//!   `values.append` grows rows; `spreadsheets.batchUpdate` (`appendCells` after the last row
//!   with data, `appendDimension`,
//!   `insertDimension`, `deleteDimension`, `updateSheetProperties`,
//!   `updateSpreadsheetProperties`) is validated whole before anything is applied.
//! * Size limits: 50,000 characters in a cell, a configurable request payload limit (400, not
//!   413), 10,000,000 cells in a workbook.
//! * Drive answers errors in its legacy shape (`errors[]` with `reason`); Sheets in its own.
//! * Faults are validated (a typo in a test fails loudly) and can be HTTP statuses, answers
//!   that never come (`timeout`) or late answers (`delay_ms`), optionally after the request
//!   took effect (`applied`). [`GoogleState::after_next`] changes the sheet right after a given
//!   request was answered, to stage races.
//!
//! Recorded behaviours are marked in the research notes; where Google's exact text is unknown
//! the emulator says so in a comment (`[U]`).

// Handlers return ready HTTP responses as their error type: the axum idiom, and the size of a
// Response does not matter on this path.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use base64::Engine;
use chrono::{Datelike, NaiveDate};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::SandboxState;
use crate::sources::google_sheets::a1::{column_index, column_letters};

/// Request payload limit of Sheets (`Request payload size exceeds the limit: 10485760 bytes.`).
pub const DEFAULT_PAYLOAD_LIMIT: usize = 10_485_760;
/// Most characters one cell holds.
pub const MAX_CELL_CHARS: usize = 50_000;
/// Most cells in one spreadsheet.
pub const MAX_WORKBOOK_CELLS: usize = 10_000_000;
/// The grid of a new tab.
pub const DEFAULT_ROWS: usize = 1000;
pub const DEFAULT_COLUMNS: usize = 26;
/// The locale of seeded spreadsheets unless another is given.
pub const DEFAULT_LOCALE: &str = "es_CL";
/// Longest a `timeout` fault holds a request (the client's own timeout fires long before).
const MAX_HOLD: Duration = Duration::from_secs(300);

const CELL_TOO_LONG: &str = "Your input contains more than the maximum of 50000 characters in a single cell.";

// ---------------------------------------------------------------------------------------------
// Cells

/// What a cell holds (its effective value).
#[derive(Debug, Clone, PartialEq, Default)]
pub enum CellData {
    #[default]
    Empty,
    Text(String),
    Number(f64),
    Bool(bool),
    /// A formula's error (`#NAME?`, `#DIV/0!`, `#ERROR!`).
    Error(String),
}

/// `numberFormat.type`, as Google names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormatType {
    Text,
    Number,
    Percent,
    Currency,
    Date,
    Time,
    DateTime,
    Scientific,
}

impl FormatType {
    pub fn name(self) -> &'static str {
        match self {
            FormatType::Text => "TEXT",
            FormatType::Number => "NUMBER",
            FormatType::Percent => "PERCENT",
            FormatType::Currency => "CURRENCY",
            FormatType::Date => "DATE",
            FormatType::Time => "TIME",
            FormatType::DateTime => "DATE_TIME",
            FormatType::Scientific => "SCIENTIFIC",
        }
    }

    fn is_date_like(self) -> bool {
        matches!(self, FormatType::Date | FormatType::Time | FormatType::DateTime)
    }
}

/// A cell's number format: its type and how it displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberFormat {
    /// Plain text (`@`): what is typed stays text.
    Text,
    /// `#,##0.00` with this many decimals (typed with thousands separators).
    Grouped(u8),
    /// `0.00%` with this many decimals.
    Percent(u8),
    /// `"$"#,##0.00` with this many decimals.
    Currency(u8),
    /// `0.00E+00`.
    Scientific(u8),
    /// `yyyy-mm-dd`: typed in ISO form, displayed so in any locale (recorded).
    IsoDate,
    /// The locale's numeric date: `dd/mm/yyyy` (es_CL, en_GB, fr_FR), `m/d/yyyy` (en_US).
    LocaleDate,
    /// `yyyy-mm-dd hh:mm:ss`.
    IsoDateTime,
    /// The locale's date and `hh:mm:ss`.
    LocaleDateTime,
    /// `hh:mm:ss` (`h:mm:ss am/pm` in en_US) [U: the exact pattern].
    Time,
}

impl NumberFormat {
    pub fn kind(self) -> FormatType {
        match self {
            NumberFormat::Text => FormatType::Text,
            NumberFormat::Grouped(_) => FormatType::Number,
            NumberFormat::Percent(_) => FormatType::Percent,
            NumberFormat::Currency(_) => FormatType::Currency,
            NumberFormat::Scientific(_) => FormatType::Scientific,
            NumberFormat::IsoDate | NumberFormat::LocaleDate => FormatType::Date,
            NumberFormat::IsoDateTime | NumberFormat::LocaleDateTime => FormatType::DateTime,
            NumberFormat::Time => FormatType::Time,
        }
    }

    fn pattern(self, loc: &Loc) -> String {
        let decimals = |d: u8| if d == 0 { String::new() } else { format!(".{}", "0".repeat(d as usize)) };
        let time = if loc.twelve_hour { "h:mm:ss am/pm" } else { "hh:mm:ss" };
        match self {
            NumberFormat::Text => "@".into(),
            NumberFormat::Grouped(d) => format!("#,##0{}", decimals(d)),
            NumberFormat::Percent(d) => format!("0{}%", decimals(d)),
            NumberFormat::Currency(d) => format!("\"$\"#,##0{}", decimals(d)),
            NumberFormat::Scientific(d) => format!("0{}E+00", decimals(d)),
            NumberFormat::IsoDate => "yyyy-mm-dd".into(),
            NumberFormat::LocaleDate => loc.date_pattern(),
            NumberFormat::IsoDateTime => "yyyy-mm-dd hh:mm:ss".into(),
            NumberFormat::LocaleDateTime => {
                format!("{} {}", loc.date_pattern(), if loc.twelve_hour { "H:mm:ss" } else { "hh:mm:ss" })
            }
            NumberFormat::Time => time.into(),
        }
    }
}

/// One cell: value, number format, formula.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cell {
    pub value: CellData,
    /// The cell's own format (`userEnteredFormat.numberFormat`); it stays when values change.
    pub format: Option<NumberFormat>,
    /// The formula as typed (`=4/2`); `value` is its result.
    pub formula: Option<String>,
}

impl Cell {
    pub fn text(s: &str) -> Cell {
        if s.is_empty() {
            return Cell::default();
        }
        Cell { value: CellData::Text(s.to_string()), ..Cell::default() }
    }

    pub fn number(n: f64) -> Cell {
        Cell { value: CellData::Number(n), ..Cell::default() }
    }

    /// No value (a format alone does not make a cell non-empty for values reads).
    pub fn is_empty(&self) -> bool {
        matches!(self.value, CellData::Empty)
    }

    /// `effectiveFormat.numberFormat.type`: the cell's format, or NUMBER for a number with
    /// the automatic format; none for text, booleans and empty cells.
    pub fn format_type(&self) -> Option<FormatType> {
        match (self.format, &self.value) {
            (Some(f), _) => Some(f.kind()),
            (None, CellData::Number(_)) => Some(FormatType::Number),
            _ => None,
        }
    }

    /// The value as `UNFORMATTED_VALUE` + `SERIAL_NUMBER` gives it (`Null` when empty).
    pub fn unformatted(&self) -> Value {
        render(self, Render::Unformatted, DtRender::Serial, &loc(DEFAULT_LOCALE))
    }

    /// The value as `FORMATTED_VALUE` gives it in `locale` (`""` when empty).
    pub fn formatted(&self, locale: &str) -> String {
        match render(self, Render::Formatted, DtRender::Serial, &loc(locale)) {
            Value::String(s) => s,
            _ => String::new(),
        }
    }
}

/// How written values are interpreted (`valueInputOption`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueInput {
    /// Stored as given: strings stay strings.
    Raw,
    /// Parsed as a person typing into the UI.
    UserEntered,
}

impl ValueInput {
    fn parse(s: &str) -> Result<ValueInput, String> {
        match s {
            "RAW" => Ok(ValueInput::Raw),
            "USER_ENTERED" => Ok(ValueInput::UserEntered),
            "" | "INPUT_VALUE_OPTION_UNSPECIFIED" => {
                Err("Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED".to_string())
            }
            other => Err(bad_enum("value_input_option", "ValueInputOption", other)),
        }
    }
}

fn bad_enum(field: &str, ty: &str, value: &str) -> String {
    format!("Invalid value at '{field}' (type.googleapis.com/google.apps.sheets.v4.{ty}), \"{value}\"")
}

// ---------------------------------------------------------------------------------------------
// Locales

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Dmy,
    Mdy,
    Ymd,
}

/// What a locale changes: date order, separators, clock.
#[derive(Debug, Clone, Copy)]
struct Loc {
    order: Order,
    decimal: char,
    group: char,
    /// `23.11.2026` is a date (de_DE, ru_RU, …).
    dot_dates: bool,
    twelve_hour: bool,
    currency_decimals: u8,
}

impl Loc {
    fn date_pattern(&self) -> String {
        match self.order {
            Order::Dmy if self.dot_dates => "dd.mm.yyyy".into(),
            Order::Dmy => "dd/mm/yyyy".into(),
            Order::Mdy => "m/d/yyyy".into(),
            Order::Ymd => "yyyy/mm/dd".into(),
        }
    }

    fn is_group(&self, c: char) -> bool {
        if self.group == ' ' {
            matches!(c, ' ' | '\u{a0}' | '\u{202f}')
        } else {
            c == self.group
        }
    }
}

/// The locale's conventions. Unknown locales are day-first with a decimal comma, like most of
/// the world; en_US (Google's default), en_PH and es_US are month-first [U for the rarer ones].
fn loc(code: &str) -> Loc {
    let (lang, region) = code.split_once(['_', '-']).unwrap_or((code, ""));
    let lang = lang.to_ascii_lowercase();
    let region = region.to_ascii_uppercase();
    let order = match (lang.as_str(), region.as_str()) {
        ("en", "US" | "PH" | "") | ("es", "US") => Order::Mdy,
        ("ja" | "zh" | "ko" | "hu" | "lt" | "sv", _) => Order::Ymd,
        _ => Order::Dmy,
    };
    let point = matches!(lang.as_str(), "en" | "ja" | "zh" | "ko" | "th" | "he" | "iw" | "hi" | "ms" | "fil" | "ga")
        || (lang == "es" && matches!(region.as_str(), "MX" | "US" | "PR" | "GT" | "HN" | "NI" | "PA" | "SV" | "DO"));
    let space_group =
        matches!(lang.as_str(), "fr" | "ru" | "pl" | "sv" | "fi" | "cs" | "sk" | "nb" | "no" | "uk" | "hu");
    let dot_dates =
        matches!(lang.as_str(), "de" | "ru" | "pl" | "fi" | "nb" | "no" | "da" | "cs" | "sk" | "tr" | "uk" | "ro");
    Loc {
        order,
        decimal: if point { '.' } else { ',' },
        group: if point {
            ','
        } else if space_group {
            ' '
        } else {
            '.'
        },
        dot_dates,
        twelve_hour: order == Order::Mdy && lang == "en",
        currency_decimals: if code == "es_CL" { 0 } else { 2 },
    }
}

// ---------------------------------------------------------------------------------------------
// Typing (USER_ENTERED)

/// What a person typing `text` into a cell of a spreadsheet in `locale` gets.
pub fn type_in(text: &str, locale: &str) -> Cell {
    parse_typed(text, &loc(locale), chrono::Utc::now().year())
}

/// A written JSON value → a cell. `current` is the cell written over: its format stays unless
/// the typed text brings its own (a date typed into a number cell becomes a date), and a cell
/// formatted as plain text takes typed text as it is.
fn cell_from_json(v: &Value, input: ValueInput, current: Option<&Cell>, loc: &Loc) -> Cell {
    let kept = current.and_then(|c| c.format);
    let mut cell = match v {
        Value::Null => Cell::default(),
        Value::Bool(b) => Cell { value: CellData::Bool(*b), ..Cell::default() },
        Value::Number(n) => Cell::number(n.as_f64().unwrap_or(0.0)),
        Value::String(s) => match input {
            ValueInput::UserEntered if kept != Some(NumberFormat::Text) => {
                parse_typed(s, loc, chrono::Utc::now().year())
            }
            _ => Cell::text(s),
        },
        other => Cell::text(&other.to_string()),
    };
    if cell.format.is_none() {
        cell.format = kept;
    }
    cell
}

fn parse_typed(s: &str, loc: &Loc, this_year: i32) -> Cell {
    if s.is_empty() {
        return Cell::default();
    }
    if let Some(rest) = s.strip_prefix('\'') {
        // The quote prefix makes the rest text and is not part of the value.
        return Cell::text(rest);
    }
    if s.len() > 1 && s.starts_with('=') {
        return Cell { value: eval_formula(&s[1..], loc), format: None, formula: Some(s.to_string()) };
    }
    let t = s.trim();
    if t.eq_ignore_ascii_case("true") || t.eq_ignore_ascii_case("false") {
        return Cell { value: CellData::Bool(t.eq_ignore_ascii_case("true")), ..Cell::default() };
    }
    if let Some((n, format)) = parse_number(t, loc) {
        return Cell { value: CellData::Number(n), format, formula: None };
    }
    if let Some((serial, format)) = parse_date_time(t, loc, this_year) {
        return Cell { value: CellData::Number(serial), format: Some(format), formula: None };
    }
    Cell::text(s)
}

/// Numbers as the UI reads them: sign (`+` dropped), thousands separators in groups of three,
/// the locale's decimal separator, leading zeros, `%`, a leading `$`, exponents.
fn parse_number(t: &str, loc: &Loc) -> Option<(f64, Option<NumberFormat>)> {
    let (negative, rest) = match t.chars().next()? {
        '-' => (true, &t[1..]),
        '+' => (false, &t[1..]),
        _ => (false, t),
    };
    let (percent, rest) = match rest.strip_suffix('%') {
        Some(r) => (true, r.trim_end()),
        None => (false, rest),
    };
    let (currency, rest) = match rest.strip_prefix('$') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    let (mantissa, exponent) = match rest.find(['e', 'E']) {
        Some(i) => (&rest[..i], Some(&rest[i + 1..])),
        None => (rest, None),
    };
    let (int_part, frac) = match mantissa.split_once(loc.decimal) {
        Some((i, f)) => (i, Some(f)),
        None => (mantissa, None),
    };
    let grouped = int_part.chars().any(|c| loc.is_group(c));
    let mut digits = String::new();
    if grouped {
        let groups: Vec<&str> = int_part.split(|c| loc.is_group(c)).collect();
        let first_ok = (1..=3).contains(&groups[0].len());
        if !first_ok || groups[1..].iter().any(|g| g.len() != 3) {
            return None;
        }
        groups.iter().for_each(|g| digits.push_str(g));
    } else {
        digits.push_str(int_part);
    }
    let frac = frac.unwrap_or("");
    if !digits.chars().all(|c| c.is_ascii_digit()) || !frac.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if digits.is_empty() && frac.is_empty() {
        return None;
    }
    let mut text =
        format!("{}.{}", if digits.is_empty() { "0" } else { &digits }, if frac.is_empty() { "0" } else { frac });
    if let Some(e) = exponent {
        let body = e.strip_prefix(['+', '-']).unwrap_or(e);
        if body.is_empty() || !body.chars().all(|c| c.is_ascii_digit()) || grouped || percent || currency {
            return None;
        }
        text.push('e');
        text.push_str(e);
    }
    let mut n: f64 = text.parse().ok()?;
    if !n.is_finite() {
        return None;
    }
    if percent {
        n /= 100.0;
    }
    if negative {
        n = -n;
    }
    let decimals = frac.len().min(30) as u8;
    let format = if percent {
        Some(NumberFormat::Percent(decimals))
    } else if currency {
        Some(NumberFormat::Currency(decimals.max(loc.currency_decimals)))
    } else if exponent.is_some() {
        Some(NumberFormat::Scientific(2))
    } else if grouped {
        Some(NumberFormat::Grouped(decimals))
    } else {
        None
    };
    Some((n, format))
}

/// Days since 1899-12-30 (Sheets' serial numbers, which skip Lotus's 1900 leap-year bug).
fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1899, 12, 30).unwrap_or_default()
}

pub fn date_serial(date: NaiveDate) -> i64 {
    (date - epoch()).num_days()
}

/// A serial → (date, seconds into the day).
fn serial_parts(serial: f64) -> (NaiveDate, u32) {
    let mut days = serial.floor();
    let mut secs = ((serial - days) * 86_400.0).round() as u32;
    if secs >= 86_400 {
        days += 1.0;
        secs = 0;
    }
    (epoch() + chrono::Duration::days(days as i64), secs)
}

fn parse_date_time(t: &str, loc: &Loc, this_year: i32) -> Option<(f64, NumberFormat)> {
    if let Some(secs) = parse_time(t) {
        return Some((secs / 86_400.0, NumberFormat::Time));
    }
    let (date_part, time_part) = match t.split_once(' ') {
        Some((d, rest)) => (d, Some(rest.trim())),
        None => (t, None),
    };
    let (date, iso) = parse_date(date_part, loc, this_year)?;
    let serial = date_serial(date) as f64;
    match time_part {
        None => Some((serial, if iso { NumberFormat::IsoDate } else { NumberFormat::LocaleDate })),
        Some(tp) => {
            let secs = parse_time(tp)?;
            Some((serial + secs / 86_400.0, if iso { NumberFormat::IsoDateTime } else { NumberFormat::LocaleDateTime }))
        }
    }
}

/// `10:30`, `10:30:15`, `9:05 PM` → seconds into the day.
fn parse_time(t: &str) -> Option<f64> {
    let lower = t.to_ascii_lowercase();
    let (clock, pm) = if let Some(c) = lower.strip_suffix("pm") {
        (c.trim_end().to_string(), Some(true))
    } else if let Some(c) = lower.strip_suffix("am") {
        (c.trim_end().to_string(), Some(false))
    } else {
        (lower, None)
    };
    let parts: Vec<&str> = clock.split(':').collect();
    if !(2..=3).contains(&parts.len())
        || parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit() || c == '.'))
    {
        return None;
    }
    if parts[0].len() > 2 || parts[0].contains('.') || parts[1].len() != 2 || parts[1].contains('.') {
        return None;
    }
    let mut h: u32 = parts[0].parse().ok()?;
    let m: u32 = parts[1].parse().ok()?;
    let s: f64 = match parts.get(2) {
        Some(p) if p.len() >= 2 && !p.starts_with('.') => p.parse().ok()?,
        Some(_) => return None,
        None => 0.0,
    };
    match pm {
        Some(pm) => {
            if !(1..=12).contains(&h) {
                return None;
            }
            h = (h % 12) + if pm { 12 } else { 0 };
        }
        None if h > 23 => return None,
        None => {}
    }
    if m > 59 || s >= 60.0 {
        return None;
    }
    Some(f64::from(h * 3600 + m * 60) + s)
}

/// `2026-11-23` (ISO, any locale), or the locale's order with `/`, `-` (and `.` where dates
/// use it); without a year, this year. Returns the date and whether it was ISO.
fn parse_date(s: &str, loc: &Loc, this_year: i32) -> Option<(NaiveDate, bool)> {
    let sep = s.chars().find(|c| matches!(c, '/' | '-' | '.'))?;
    if sep == '.' && !loc.dot_dates {
        return None;
    }
    let parts: Vec<&str> = s.split(sep).collect();
    if parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
        return None;
    }
    let num = |p: &str| p.parse::<u32>().ok();
    let year = |p: &str| -> Option<i32> {
        let y = p.parse::<i32>().ok()?;
        match p.len() {
            4 => Some(y),
            2 if y < 30 => Some(2000 + y),
            2 => Some(1900 + y),
            _ => None,
        }
    };
    let small = |p: &str| p.len() <= 2;
    let (y, m, d, iso) = match parts.as_slice() {
        [a, b, c] if a.len() == 4 => {
            if !small(b) || !small(c) {
                return None;
            }
            (year(a)?, num(b)?, num(c)?, sep == '-')
        }
        [a, b, c] => match loc.order {
            Order::Dmy if small(a) && small(b) => (year(c)?, num(b)?, num(a)?, false),
            Order::Mdy if small(a) && small(b) => (year(c)?, num(a)?, num(b)?, false),
            Order::Ymd if small(b) && small(c) => (year(a)?, num(b)?, num(c)?, false),
            _ => return None,
        },
        [a, b] if small(a) && small(b) => match loc.order {
            Order::Dmy => (this_year, num(b)?, num(a)?, false),
            Order::Mdy | Order::Ymd => (this_year, num(a)?, num(b)?, false),
        },
        _ => return None,
    };
    NaiveDate::from_ymd_opt(y, m, d).map(|date| (date, iso))
}

/// Plain arithmetic of numbers (`+ - * / ^ %`, parentheses); anything else (functions,
/// references, text) is `#NAME?`, a syntax error `#ERROR!`, a division by zero `#DIV/0!`.
fn eval_formula(src: &str, loc: &Loc) -> CellData {
    if src.chars().any(|c| c.is_alphabetic() || matches!(c, '"' | '!' | ':' | '$' | '&' | '{' | '}')) {
        return CellData::Error("#NAME?".into());
    }
    let chars: Vec<char> = src.chars().filter(|c| !c.is_whitespace()).collect();
    let mut p = Arith { chars, pos: 0, decimal: loc.decimal };
    match p.expr() {
        Ok(v) if p.pos == p.chars.len() => {
            if v.is_finite() {
                CellData::Number(v)
            } else {
                CellData::Error("#NUM!".into())
            }
        }
        Ok(_) => CellData::Error("#ERROR!".into()),
        Err(e) => CellData::Error(e.into()),
    }
}

struct Arith {
    chars: Vec<char>,
    pos: usize,
    decimal: char,
}

impl Arith {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn expr(&mut self) -> Result<f64, &'static str> {
        let mut v = self.term()?;
        while let Some(op @ ('+' | '-')) = self.peek() {
            self.pos += 1;
            let r = self.term()?;
            v = if op == '+' { v + r } else { v - r };
        }
        Ok(v)
    }

    fn term(&mut self) -> Result<f64, &'static str> {
        let mut v = self.power()?;
        while let Some(op @ ('*' | '/')) = self.peek() {
            self.pos += 1;
            let r = self.power()?;
            if op == '/' && r == 0.0 {
                return Err("#DIV/0!");
            }
            v = if op == '*' { v * r } else { v / r };
        }
        Ok(v)
    }

    fn power(&mut self) -> Result<f64, &'static str> {
        let mut v = self.unary()?;
        while self.peek() == Some('^') {
            self.pos += 1;
            let r = self.unary()?;
            v = v.powf(r);
        }
        Ok(v)
    }

    // Sheets binds unary minus tighter than `^`: `=-2^2` is 4.
    fn unary(&mut self) -> Result<f64, &'static str> {
        match self.peek() {
            Some('-') => {
                self.pos += 1;
                Ok(-self.unary()?)
            }
            Some('+') => {
                self.pos += 1;
                self.unary()
            }
            _ => {
                let mut v = self.primary()?;
                while self.peek() == Some('%') {
                    self.pos += 1;
                    v /= 100.0;
                }
                Ok(v)
            }
        }
    }

    fn primary(&mut self) -> Result<f64, &'static str> {
        match self.peek() {
            Some('(') => {
                self.pos += 1;
                let v = self.expr()?;
                if self.peek() != Some(')') {
                    return Err("#ERROR!");
                }
                self.pos += 1;
                Ok(v)
            }
            Some(c) if c.is_ascii_digit() || c == '.' || c == self.decimal => {
                let mut s = String::new();
                while let Some(c) = self.peek() {
                    if c.is_ascii_digit() {
                        s.push(c);
                    } else if c == '.' || c == self.decimal {
                        s.push('.');
                    } else {
                        break;
                    }
                    self.pos += 1;
                }
                s.parse().map_err(|_| "#ERROR!")
            }
            _ => Err("#ERROR!"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Render {
    Formatted,
    Unformatted,
    Formula,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DtRender {
    Serial,
    Formatted,
}

/// A number as Google's JSON writes a double: integral values without a decimal point.
fn num_json(n: f64) -> Value {
    if n.fract() == 0.0 && n.abs() < 9.0e15 {
        json!(n as i64)
    } else {
        json!(n)
    }
}

fn render(cell: &Cell, r: Render, dt: DtRender, loc: &Loc) -> Value {
    if r == Render::Formula {
        if let Some(f) = &cell.formula {
            return Value::String(f.clone());
        }
    }
    match &cell.value {
        CellData::Empty => Value::Null,
        CellData::Text(s) => Value::String(s.clone()),
        CellData::Error(e) => Value::String(e.clone()),
        CellData::Bool(b) if r == Render::Formatted => Value::String(if *b { "TRUE" } else { "FALSE" }.into()),
        CellData::Bool(b) => Value::Bool(*b),
        CellData::Number(n) => {
            let date_like = cell.format.is_some_and(|f| f.kind().is_date_like());
            // dateTimeRenderOption is ignored under FORMATTED_VALUE.
            if r == Render::Formatted || (date_like && dt == DtRender::Formatted) {
                Value::String(display_number(*n, cell.format, loc))
            } else {
                num_json(*n)
            }
        }
    }
}

/// The text of a cell as tests compare it: text as is, numbers in their shortest form (`1001`),
/// booleans `TRUE`/`FALSE`, dates, times and percentages as displayed.
fn plain_text(cell: &Cell, loc: &Loc) -> String {
    match (&cell.value, cell.format) {
        (CellData::Empty, _) => String::new(),
        (CellData::Text(s) | CellData::Error(s), _) => s.clone(),
        (CellData::Bool(b), _) => if *b { "TRUE" } else { "FALSE" }.into(),
        (CellData::Number(n), None | Some(NumberFormat::Text | NumberFormat::Grouped(_))) => {
            crate::domain::CellValue::Number(*n).canonical()
        }
        (CellData::Number(n), f) => display_number(*n, f, loc),
    }
}

fn display_number(n: f64, format: Option<NumberFormat>, loc: &Loc) -> String {
    match format {
        None | Some(NumberFormat::Text) => general(n, loc),
        Some(NumberFormat::Grouped(d)) => fixed(n, d, true, loc),
        Some(NumberFormat::Percent(d)) => format!("{}%", fixed(n * 100.0, d, false, loc)),
        Some(NumberFormat::Currency(d)) => {
            let body = fixed(n.abs(), d, true, loc);
            if n < 0.0 {
                format!("-${body}")
            } else {
                format!("${body}")
            }
        }
        Some(NumberFormat::Scientific(d)) => scientific(n, d, loc),
        Some(NumberFormat::IsoDate) => serial_parts(n).0.format("%Y-%m-%d").to_string(),
        Some(NumberFormat::LocaleDate) => locale_date(serial_parts(n).0, loc),
        Some(NumberFormat::IsoDateTime) => {
            let (d, s) = serial_parts(n);
            format!("{} {}", d.format("%Y-%m-%d"), clock24(s, true))
        }
        Some(NumberFormat::LocaleDateTime) => {
            let (d, s) = serial_parts(n);
            format!("{} {}", locale_date(d, loc), clock24(s, !loc.twelve_hour))
        }
        Some(NumberFormat::Time) => {
            let (_, s) = serial_parts(n);
            if loc.twelve_hour {
                let h = s / 3600;
                let h12 = if h % 12 == 0 { 12 } else { h % 12 };
                format!("{h12}:{:02}:{:02} {}", (s / 60) % 60, s % 60, if h < 12 { "AM" } else { "PM" })
            } else {
                clock24(s, true)
            }
        }
    }
}

fn clock24(secs: u32, pad_hours: bool) -> String {
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    if pad_hours {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h}:{m:02}:{s:02}")
    }
}

fn locale_date(d: NaiveDate, loc: &Loc) -> String {
    match loc.order {
        Order::Dmy => {
            let sep = if loc.dot_dates { '.' } else { '/' };
            format!("{:02}{sep}{:02}{sep}{}", d.day(), d.month(), d.year())
        }
        Order::Mdy => format!("{}/{}/{}", d.month(), d.day(), d.year()),
        Order::Ymd => format!("{}/{:02}/{:02}", d.year(), d.month(), d.day()),
    }
}

/// The automatic number format: up to 15 significant digits, the locale's decimal separator,
/// scientific notation for very large or very small magnitudes [U: exact thresholds].
fn general(n: f64, loc: &Loc) -> String {
    if n == 0.0 {
        return "0".into();
    }
    if n.fract() == 0.0 && n.abs() < 1e15 {
        return format!("{}", n as i64);
    }
    let sci = format!("{:.14e}", n.abs());
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mant.chars().filter(char::is_ascii_digit).collect();
    let digits = digits.trim_end_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    let sign = if n < 0.0 { "-" } else { "" };
    if !(-10..15).contains(&exp) {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { String::new() } else { format!("{}{rest}", loc.decimal) };
        return format!("{sign}{first}{rest}E{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let (int, frac) = if exp >= 0 {
        let e = exp as usize + 1;
        if digits.len() <= e {
            (format!("{digits}{}", "0".repeat(e - digits.len())), String::new())
        } else {
            (digits[..e].to_string(), digits[e..].to_string())
        }
    } else {
        ("0".to_string(), format!("{}{digits}", "0".repeat((-exp - 1) as usize)))
    };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}{}{frac}", loc.decimal)
    }
}

fn fixed(n: f64, decimals: u8, grouped: bool, loc: &Loc) -> String {
    let s = format!("{:.*}", decimals as usize, n.abs());
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let int = if grouped {
        let mut out = String::new();
        for (i, c) in int.chars().enumerate() {
            if i > 0 && (int.len() - i) % 3 == 0 {
                out.push(loc.group);
            }
            out.push(c);
        }
        out
    } else {
        int.to_string()
    };
    let sign = if n < 0.0 && s.chars().any(|c| c.is_ascii_digit() && c != '0') { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}{}{frac}", loc.decimal)
    }
}

fn scientific(n: f64, decimals: u8, loc: &Loc) -> String {
    let s = format!("{:.*e}", decimals as usize, n);
    let (mant, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    format!("{}E{}{:02}", mant.replace('.', &loc.decimal.to_string()), if exp < 0 { '-' } else { '+' }, exp.abs())
}

// ---------------------------------------------------------------------------------------------
// Spreadsheets, tabs, grids

/// One tab of a spreadsheet.
#[derive(Debug, Clone)]
pub struct Tab {
    pub sheet_id: i64,
    pub title: String,
    /// The grid (`gridProperties.rowCount` × `columnCount`): no cell exists outside it.
    pub row_count: usize,
    pub column_count: usize,
    /// Row-major cells as far as anything was written; what is not there is empty.
    pub cells: Vec<Vec<Cell>>,
}

impl Tab {
    fn new(sheet_id: i64, title: String, cells: Vec<Vec<Cell>>) -> Tab {
        let row_count = cells.len().max(DEFAULT_ROWS);
        let column_count = cells.iter().map(Vec::len).max().unwrap_or(0).max(DEFAULT_COLUMNS);
        Tab { sheet_id, title, row_count, column_count, cells }
    }

    pub fn get(&self, r: usize, c: usize) -> Option<&Cell> {
        self.cells.get(r).and_then(|row| row.get(c))
    }

    fn set(&mut self, r: usize, c: usize, cell: Cell) {
        if self.cells.len() <= r {
            self.cells.resize(r + 1, Vec::new());
        }
        let row = &mut self.cells[r];
        if row.len() <= c {
            row.resize(c + 1, Cell::default());
        }
        row[c] = cell;
    }

    /// Rows up to the last one holding a value.
    fn used_rows(&self) -> usize {
        self.cells.iter().rposition(|r| r.iter().any(|c| !c.is_empty())).map(|i| i + 1).unwrap_or(0)
    }

    fn used_columns(&self) -> usize {
        self.cells.iter().filter_map(|r| r.iter().rposition(|c| !c.is_empty())).max().map(|i| i + 1).unwrap_or(0)
    }

    /// Drops what lies outside the grid (after it shrank).
    fn clip(&mut self) {
        self.cells.truncate(self.row_count);
        for row in &mut self.cells {
            row.truncate(self.column_count);
        }
    }

    fn column_of(&self, header: &str, loc: &Loc) -> Option<usize> {
        self.cells.first()?.iter().position(|h| plain_text(h, loc) == header)
    }

    fn row_of_key(&self, key_col: usize, key: &str, loc: &Loc) -> Option<usize> {
        (1..self.cells.len()).find(|&r| self.get(r, key_col).map(|c| plain_text(c, loc)).as_deref() == Some(key))
    }

    fn insert_rows(&mut self, at: usize, n: usize) {
        if at < self.cells.len() {
            self.cells.splice(at..at, std::iter::repeat_n(Vec::new(), n));
        }
        self.row_count += n;
    }

    fn delete_rows(&mut self, at: usize, n: usize) {
        if at < self.cells.len() {
            let end = (at + n).min(self.cells.len());
            self.cells.drain(at..end);
        }
        self.row_count -= n;
    }

    fn insert_columns(&mut self, at: usize, n: usize) {
        for row in &mut self.cells {
            if at < row.len() {
                row.splice(at..at, std::iter::repeat_n(Cell::default(), n));
            }
        }
        self.column_count += n;
    }

    fn delete_columns(&mut self, at: usize, n: usize) {
        for row in &mut self.cells {
            if at < row.len() {
                let end = (at + n).min(row.len());
                row.drain(at..end);
            }
        }
        self.column_count -= n;
    }
}

/// One spreadsheet.
#[derive(Debug, Clone)]
pub struct Spreadsheet {
    pub id: String,
    pub title: String,
    pub time_zone: String,
    /// `properties.locale` (`es_CL`, `en_US`, …): how typed text is parsed and values display.
    pub locale: String,
    pub tabs: Vec<Tab>,
    pub version: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

impl Spreadsheet {
    fn loc(&self) -> Loc {
        loc(&self.locale)
    }

    fn touch(&mut self) {
        self.version += 1;
        self.modified = chrono::Utc::now();
    }

    fn tab_index(&self, title: &str) -> Option<usize> {
        self.tabs.iter().position(|t| t.title == title)
    }

    fn tab_mut(&mut self, title: &str) -> Option<&mut Tab> {
        self.tabs.iter_mut().find(|t| t.title == title)
    }

    fn total_cells(&self) -> usize {
        self.tabs.iter().map(|t| t.row_count.saturating_mul(t.column_count)).sum()
    }

    fn check_cell_limit(&self) -> Result<(), String> {
        if self.total_cells() > MAX_WORKBOOK_CELLS {
            return Err(format!(
                "This action would increase the number of cells in the workbook above the limit of {MAX_WORKBOOK_CELLS} cells."
            ));
        }
        Ok(())
    }

    /// The tab a range names (the first tab when it names none).
    fn range_tab(&self, a1: &A1) -> Option<usize> {
        match &a1.tab {
            Some(t) => self.tab_index(t),
            None if self.tabs.is_empty() => None,
            None => Some(0),
        }
    }
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

impl A1 {
    fn is_single_cell(&self) -> bool {
        self.col0.is_some() && self.row0.is_some() && self.col0 == self.col1 && self.row0 == self.row1
    }

    fn is_whole_tab(&self) -> bool {
        self.col0.is_none() && self.row0.is_none() && self.col1.is_none() && self.row1.is_none()
    }

    /// Reversed ranges (`D4:A1`) are the same as the normal ones.
    fn normalised(mut self) -> A1 {
        if let (Some(a), Some(b)) = (self.col0, self.col1) {
            (self.col0, self.col1) = (Some(a.min(b)), Some(a.max(b)));
        }
        if let (Some(a), Some(b)) = (self.row0, self.row1) {
            (self.row0, self.row1) = (Some(a.min(b)), Some(a.max(b)));
        }
        self
    }

    /// The cells part as Google writes it in messages: `Y1`, `A11539:N15385`, `151154:151354`.
    fn cells_text(&self) -> String {
        let one = |c: Option<usize>, r: Option<usize>| {
            format!(
                "{}{}",
                c.map(column_letters).unwrap_or_default(),
                r.map(|r| (r + 1).to_string()).unwrap_or_default()
            )
        };
        if self.is_single_cell() {
            one(self.col0, self.row0)
        } else {
            format!("{}:{}", one(self.col0, self.row0), one(self.col1, self.row1))
        }
    }
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

/// A tab title as Google writes it in ranges: bare when it can be, quoted when it has spaces or
/// symbols or looks like a cell reference (`'D3'`, `'tab01'`), e.g. `Sheet1` but `'Mi hoja'`.
pub fn quote_if_needed(title: &str) -> String {
    let plain = !title.is_empty()
        && title.chars().all(|c| c.is_alphanumeric() || c == '_')
        && !title.starts_with(|c: char| c.is_ascii_digit());
    let letters = title.chars().take_while(|c| c.is_ascii_alphabetic()).count();
    let rest = &title[letters..];
    let cell_like = (1..=3).contains(&letters) && !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit());
    let r1c1_like = {
        let up = title.to_ascii_uppercase();
        up.starts_with('R')
            && up[1..]
                .split_once('C')
                .is_some_and(|(r, c)| r.chars().all(|x| x.is_ascii_digit()) && c.chars().all(|x| x.is_ascii_digit()))
    };
    if plain && !cell_like && !r1c1_like {
        title.to_string()
    } else {
        format!("'{}'", title.replace('\'', "''"))
    }
}

/// `Tab!A1:C5`, or `Tab!D4` for one cell.
fn a1_text(tab: &str, c0: usize, r0: usize, c1: usize, r1: usize) -> String {
    let a = A1 { tab: None, col0: Some(c0), row0: Some(r0), col1: Some(c1), row1: Some(r1) };
    format!("{}!{}", quote_if_needed(tab), a.cells_text())
}

fn grid_error(tab: &Tab, cells: &str) -> String {
    format!(
        "Range ({}!{cells}) exceeds grid limits. Max rows: {}, max columns: {}",
        quote_if_needed(&tab.title),
        tab.row_count,
        tab.column_count
    )
}

// ---------------------------------------------------------------------------------------------
// Request kinds, faults, actions

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Token,
    DriveGet,
    SpreadsheetsGet,
    SpreadsheetsBatchUpdate,
    ValuesGet,
    ValuesBatchGet,
    ValuesBatchUpdate,
    ValuesUpdate,
    ValuesAppend,
    ValuesClear,
}

impl Kind {
    pub const ALL: [Kind; 10] = [
        Kind::Token,
        Kind::DriveGet,
        Kind::SpreadsheetsGet,
        Kind::SpreadsheetsBatchUpdate,
        Kind::ValuesGet,
        Kind::ValuesBatchGet,
        Kind::ValuesBatchUpdate,
        Kind::ValuesUpdate,
        Kind::ValuesAppend,
        Kind::ValuesClear,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Token => "token",
            Kind::DriveGet => "drive.files.get",
            Kind::SpreadsheetsGet => "spreadsheets.get",
            Kind::SpreadsheetsBatchUpdate => "spreadsheets.batchUpdate",
            Kind::ValuesGet => "values.get",
            Kind::ValuesBatchGet => "values.batchGet",
            Kind::ValuesBatchUpdate => "values.batchUpdate",
            Kind::ValuesUpdate => "values.update",
            Kind::ValuesAppend => "values.append",
            Kind::ValuesClear => "values.clear",
        }
    }

    /// `values.get` → `Kind::ValuesGet`.
    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Paid from the Sheets write quota.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Kind::ValuesBatchUpdate
                | Kind::ValuesUpdate
                | Kind::ValuesAppend
                | Kind::ValuesClear
                | Kind::SpreadsheetsBatchUpdate
        )
    }

    fn is_sheets_read(self) -> bool {
        matches!(self, Kind::SpreadsheetsGet | Kind::ValuesGet | Kind::ValuesBatchGet)
    }
}

/// A fault answering an HTTP status to upcoming Google requests (the original form; see
/// [`FaultSpec`] for timeouts and delays).
#[derive(Debug, Clone, Deserialize)]
pub struct GoogleFault {
    /// HTTP status to answer (429, 500, 503, …).
    pub status: u16,
    /// How many requests get it.
    pub count: u32,
    /// `read`, `write`, `drive`, `token` or `any` (default).
    #[serde(default)]
    pub scope: Option<String>,
}

/// A fault in full, as `POST /admin/google/faults` takes it:
/// `{"status":503,"count":2,"scope":"write"}`, `{"timeout":true,"scope":"read"}`,
/// `{"delay_ms":1500,"scope":"drive"}`, `{"status":500,"applied":true,"scope":"write"}`.
///
/// * `status`: answer this HTTP status (400–599) in the shape of the API concerned.
/// * `timeout`: never answer (the request is held until the client gives up).
/// * `delay_ms`: answer this much later (with `status`, a late error; alone, a late normal answer).
/// * `applied`: the request takes effect first and only its answer is lost, late or an error
///   (a write Google made although the client saw it fail); without it nothing is applied.
/// * `cut`: the request is served as usual (a write takes effect), then its answer, whatever
///   its status, starts (status, headers) and the connection drops halfway through its body
///   (`{"cut":true,"scope":"read"}`): a reader must fail, not take half a tab for the tab.
/// * `count` (default 1): how many requests get it. `scope`: `read` (Sheets reads), `write`
///   (Sheets writes), `drive`, `token` or `any` (every Sheets and Drive request; default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub timeout: bool,
    #[serde(default)]
    pub delay_ms: Option<u64>,
    #[serde(default)]
    pub applied: bool,
    #[serde(default)]
    pub cut: bool,
    #[serde(default = "one")]
    pub count: u32,
    #[serde(default)]
    pub scope: Option<String>,
}

fn one() -> u32 {
    1
}

impl Default for FaultSpec {
    fn default() -> Self {
        FaultSpec { status: None, timeout: false, delay_ms: None, applied: false, cut: false, count: 1, scope: None }
    }
}

impl From<GoogleFault> for FaultSpec {
    fn from(f: GoogleFault) -> Self {
        FaultSpec { status: Some(f.status), count: f.count, scope: f.scope, ..FaultSpec::default() }
    }
}

/// An answer whose connection drops halfway through its body: the status and headers go out,
/// then half the body, then the stream fails (hyper closes the connection mid-body).
async fn cut_short(answer: Response) -> Response {
    let (mut parts, body) = answer.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return (StatusCode::INTERNAL_SERVER_ERROR, "the sandbox could not read its own answer").into_response();
    };
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let half = bytes.slice(..bytes.len() / 2);
    // The half goes out first (a moment before the failure, so it is not lost with the
    // connection's unsent buffer).
    let pieces = futures_util::stream::unfold(Some(Some(half)), |left| async move {
        match left? {
            Some(half) => Some((Ok(half), Some(None))),
            None => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Some((Err(std::io::Error::other("the sandbox cut the connection")), None))
            }
        }
    });
    Response::from_parts(parts, axum::body::Body::from_stream(pieces))
}

/// Which requests a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultScope {
    Read,
    Write,
    Drive,
    Token,
    /// Every Sheets and Drive request (not the token endpoint).
    Any,
}

impl FaultScope {
    pub fn parse(s: Option<&str>) -> Result<FaultScope, String> {
        match s.unwrap_or("any") {
            "read" => Ok(FaultScope::Read),
            "write" => Ok(FaultScope::Write),
            "drive" => Ok(FaultScope::Drive),
            "token" => Ok(FaultScope::Token),
            "any" => Ok(FaultScope::Any),
            other => Err(format!("unknown fault scope '{other}' (read, write, drive, token or any)")),
        }
    }

    fn covers(self, kind: Kind) -> bool {
        match self {
            FaultScope::Read => kind.is_sheets_read(),
            FaultScope::Write => kind.is_write(),
            FaultScope::Drive => kind == Kind::DriveGet,
            FaultScope::Token => kind == Kind::Token,
            FaultScope::Any => kind != Kind::Token,
        }
    }
}

#[derive(Debug, Clone)]
struct ActiveFault {
    scope: FaultScope,
    left: u32,
    status: Option<u16>,
    timeout: bool,
    delay: Option<Duration>,
    applied: bool,
    cut: bool,
}

impl FaultSpec {
    /// Checks that the fault means something; the reason when it does not.
    pub fn validate(&self) -> Result<(), String> {
        self.active().map(|_| ())
    }

    fn active(&self) -> Result<ActiveFault, String> {
        let scope = FaultScope::parse(self.scope.as_deref())?;
        if self.count == 0 {
            return Err("count must be at least 1".into());
        }
        if let Some(s) = self.status {
            if !(400..=599).contains(&s) {
                return Err(format!("status {s} is not an HTTP error status (400-599)"));
            }
        }
        if self.timeout && self.status.is_some() {
            return Err("a timeout never answers, so it takes no status".into());
        }
        if self.timeout && self.delay_ms.is_some() {
            return Err("a timeout never answers, so it takes no delay_ms".into());
        }
        if self.cut && (self.timeout || self.status.is_some() || self.delay_ms.is_some() || self.applied) {
            return Err(
                "a cut answer is the normal one cut short: it takes no status, timeout, delay_ms or applied".into()
            );
        }
        if !self.cut && !self.timeout && self.status.is_none() && self.delay_ms.is_none() {
            return Err("a fault needs a status, timeout: true, delay_ms or cut: true".into());
        }
        Ok(ActiveFault {
            scope,
            left: self.count,
            status: self.status,
            timeout: self.timeout,
            delay: self.delay_ms.map(Duration::from_millis),
            applied: self.applied,
            cut: self.cut,
        })
    }
}

/// A change a person makes to a sheet, run by [`GoogleState::after_next`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum SheetAction {
    /// Data → Sort range by a header.
    Sort {
        spreadsheet: String,
        tab: String,
        column: String,
        #[serde(default)]
        descending: bool,
    },
    /// Inserts a row at sheet row `at` (2 = first data row), or fills the next empty row.
    InsertRow {
        spreadsheet: String,
        tab: String,
        #[serde(default)]
        at: Option<usize>,
        values: Vec<Value>,
    },
    /// Deletes sheet row `row` (2 = first data row).
    DeleteRow { spreadsheet: String, tab: String, row: usize },
    /// Edits the cell of `column` on the row whose `key_column` is `key`.
    Edit {
        spreadsheet: String,
        tab: String,
        key_column: String,
        key: String,
        column: String,
        value: Value,
        #[serde(default)]
        user_entered: bool,
    },
}

impl SheetAction {
    pub fn sort(spreadsheet: &str, tab: &str, column: &str, descending: bool) -> SheetAction {
        SheetAction::Sort { spreadsheet: spreadsheet.into(), tab: tab.into(), column: column.into(), descending }
    }

    pub fn insert_row(spreadsheet: &str, tab: &str, at: Option<usize>, values: Vec<Value>) -> SheetAction {
        SheetAction::InsertRow { spreadsheet: spreadsheet.into(), tab: tab.into(), at, values }
    }

    pub fn delete_row(spreadsheet: &str, tab: &str, row: usize) -> SheetAction {
        SheetAction::DeleteRow { spreadsheet: spreadsheet.into(), tab: tab.into(), row }
    }

    fn spreadsheet(&self) -> &str {
        match self {
            SheetAction::Sort { spreadsheet, .. }
            | SheetAction::InsertRow { spreadsheet, .. }
            | SheetAction::DeleteRow { spreadsheet, .. }
            | SheetAction::Edit { spreadsheet, .. } => spreadsheet,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// State

/// Everything the Google emulator knows.
pub struct GoogleState {
    inner: Mutex<Inner>,
    /// Wakes requests held by `timeout` faults.
    release: tokio::sync::Notify,
}

struct Inner {
    spreadsheets: HashMap<String, Spreadsheet>,
    /// Spreadsheets shared with named service accounts only (`share_only_with`); the others
    /// are readable by every account the sandbox issued a token to.
    shared_with: HashMap<String, Vec<String>>,
    /// Accounts a spreadsheet is shared with as Viewer: they read, every write is refused.
    viewers: HashMap<String, Vec<String>>,
    /// The account of the request being served (Drive's `capabilities` depend on it).
    caller: String,
    /// client_email → PKCS#1 public key DER.
    accounts: HashMap<String, Vec<u8>>,
    tokens: HashMap<String, (String, Instant)>,
    /// Per-minute quotas per user (client_email).
    read_quota: u32,
    write_quota: u32,
    window_start: Instant,
    used: HashMap<(String, bool), u32>,
    faults: VecDeque<ActiveFault>,
    counts: HashMap<&'static str, u64>,
    next_sheet_id: i64,
    payload_limit: usize,
    /// Actions to run right after the next answered request of a kind.
    after: Vec<(Kind, SheetAction)>,
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
                shared_with: HashMap::new(),
                viewers: HashMap::new(),
                caller: String::new(),
                accounts: HashMap::new(),
                tokens: HashMap::new(),
                read_quota: 60,
                write_quota: 60,
                window_start: Instant::now(),
                used: HashMap::new(),
                faults: VecDeque::new(),
                counts: HashMap::new(),
                next_sheet_id: 1000,
                payload_limit: DEFAULT_PAYLOAD_LIMIT,
                after: Vec::new(),
            }),
            release: tokio::sync::Notify::new(),
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

    /// Creates or replaces a spreadsheet (locale es_CL). `tabs`: (title, rows). Values are
    /// stored as given (RAW): strings stay strings, numbers numbers.
    pub fn seed(&self, id: &str, time_zone: &str, tabs: Vec<(String, Vec<Vec<Value>>)>) {
        self.seed_with(id, time_zone, DEFAULT_LOCALE, ValueInput::Raw, tabs);
    }

    /// Shares spreadsheet `id` with these service accounts only (by `client_email`), as a person
    /// sharing it from the sheet's Share dialog: any other account gets Google's refusal.
    pub fn share_only_with(&self, id: &str, emails: &[&str]) {
        self.lock().shared_with.insert(id.to_string(), emails.iter().map(|e| e.to_string()).collect());
    }

    /// Shares spreadsheet `id` with a service account as Viewer: it reads, and every write
    /// (values and batchUpdate) gets 403 PERMISSION_DENIED; Drive says `canEdit: false`.
    pub fn share_as_viewer(&self, id: &str, email: &str) {
        let mut g = self.lock();
        if let Some(editors) = g.shared_with.get_mut(id) {
            editors.retain(|u| u != email);
        }
        g.viewers.entry(id.to_string()).or_default().push(email.to_string());
    }

    /// Shares spreadsheet `id` with one more service account (by `client_email`), as a person
    /// adding it in the sheet's Share dialog. As at Google, a sheet is shared with nobody until
    /// then: every service account's reads are refused. Sharing outlives re-seeding the id.
    pub fn share(&self, id: &str, email: &str) {
        let mut g = self.lock();
        let users = g.shared_with.entry(id.to_string()).or_default();
        if !users.iter().any(|u| u == email) {
            users.push(email.to_string());
        }
    }

    /// Creates or replaces a spreadsheet whose strings are parsed as a person typing them
    /// (USER_ENTERED) in `locale`: `"23/11/2026"` is a date in es_CL, `"0042"` the number 42.
    pub fn seed_typed(&self, id: &str, time_zone: &str, locale: &str, tabs: Vec<(String, Vec<Vec<Value>>)>) {
        self.seed_with(id, time_zone, locale, ValueInput::UserEntered, tabs);
    }

    /// Creates or replaces a spreadsheet. Each tab's grid fits its data (at least 1000 × 26).
    pub fn seed_with(
        &self,
        id: &str,
        time_zone: &str,
        locale: &str,
        input: ValueInput,
        tabs: Vec<(String, Vec<Vec<Value>>)>,
    ) {
        let l = loc(locale);
        let mut g = self.lock();
        let mut sheet_tabs = Vec::new();
        for (title, rows) in tabs {
            g.next_sheet_id += 1;
            let cells = rows.iter().map(|r| r.iter().map(|v| cell_from_json(v, input, None, &l)).collect()).collect();
            sheet_tabs.push(Tab::new(g.next_sheet_id, title, cells));
        }
        let version = g.spreadsheets.get(id).map(|s| s.version + 1).unwrap_or(1);
        g.spreadsheets.insert(
            id.to_string(),
            Spreadsheet {
                id: id.to_string(),
                title: format!("Sandbox {id}"),
                time_zone: time_zone.to_string(),
                locale: locale.to_string(),
                tabs: sheet_tabs,
                version,
                modified: chrono::Utc::now(),
            },
        );
    }

    /// Rows of a tab as `UNFORMATTED_VALUE` reads them (dates as serial numbers), header first,
    /// up to the last row with a value; empty cells are `Null`, trailing ones left out.
    pub fn rows(&self, id: &str, tab: &str) -> Vec<Vec<Value>> {
        let g = self.lock();
        let Some(s) = g.spreadsheets.get(id) else { return Vec::new() };
        let Some(t) = s.tabs.iter().find(|t| t.title == tab) else { return Vec::new() };
        let l = s.loc();
        t.cells[..t.used_rows()]
            .iter()
            .map(|row| {
                let end = row.iter().rposition(|c| !c.is_empty()).map(|i| i + 1).unwrap_or(0);
                row[..end].iter().map(|c| render(c, Render::Unformatted, DtRender::Serial, &l)).collect()
            })
            .collect()
    }

    /// One cell (`C7`) of a tab, typed.
    pub fn cell_at(&self, id: &str, tab: &str, cell: &str) -> Option<Cell> {
        let a = parse_a1(cell)?;
        let g = self.lock();
        let t = g.spreadsheets.get(id)?.tabs.iter().find(|t| t.title == tab)?;
        Some(t.get(a.row0?, a.col0?).cloned().unwrap_or_default())
    }

    /// Reads a range as `values.get` would (`value_render`: FORMATTED_VALUE, UNFORMATTED_VALUE
    /// or FORMULA; `date_time_render`: SERIAL_NUMBER or FORMATTED_STRING): the ValueRange, or
    /// Google's error message.
    pub fn read(&self, id: &str, range: &str, value_render: &str, date_time_render: &str) -> Result<Value, String> {
        let q = vec![
            ("valueRenderOption".to_string(), value_render.to_string()),
            ("dateTimeRenderOption".to_string(), date_time_render.to_string()),
        ];
        let opts = ReadOpts::from_query(&q)?;
        let g = self.lock();
        let s = g.spreadsheets.get(id).ok_or("Requested entity was not found.")?;
        read_range(s, range, opts)
    }

    /// The text of a cell by the value of `key_column` and a header name: text as is, numbers
    /// in their shortest form (`1001`), dates and percentages as displayed.
    pub fn cell_by_key(&self, id: &str, tab: &str, key_column: &str, key: &str, column: &str) -> Option<String> {
        let g = self.lock();
        let s = g.spreadsheets.get(id)?;
        let l = s.loc();
        let t = s.tabs.iter().find(|t| t.title == tab)?;
        let (kc, c) = (t.column_of(key_column, &l)?, t.column_of(column, &l)?);
        let r = t.row_of_key(kc, key, &l)?;
        Some(t.get(r, c).map(|cell| plain_text(cell, &l)).unwrap_or_default())
    }

    /// Edits a cell as stored (RAW) by key and header. False when not found.
    pub fn edit_by_key(&self, id: &str, tab: &str, key_column: &str, key: &str, column: &str, value: Value) -> bool {
        self.act(&SheetAction::Edit {
            spreadsheet: id.into(),
            tab: tab.into(),
            key_column: key_column.into(),
            key: key.into(),
            column: column.into(),
            value,
            user_entered: false,
        })
    }

    /// Edits a cell as a person typing into it (USER_ENTERED, the spreadsheet's locale).
    pub fn edit_by_key_typed(
        &self,
        id: &str,
        tab: &str,
        key_column: &str,
        key: &str,
        column: &str,
        value: Value,
    ) -> bool {
        self.act(&SheetAction::Edit {
            spreadsheet: id.into(),
            tab: tab.into(),
            key_column: key_column.into(),
            key: key.into(),
            column: column.into(),
            value,
            user_entered: true,
        })
    }

    /// Inserts a data row at sheet row `at` (2 = first data row), or appends when `None`.
    pub fn insert_row(&self, id: &str, tab: &str, at: Option<usize>, values: Vec<Value>) -> bool {
        self.act(&SheetAction::insert_row(id, tab, at, values))
    }

    /// Appends data rows at once, as a paste does: no read sees some of them and not the
    /// others. False if any could not be added.
    pub fn append_rows(&self, id: &str, tab: &str, rows: Vec<Vec<Value>>) -> bool {
        let mut g = self.lock();
        rows.into_iter().all(|values| g.apply(&SheetAction::insert_row(id, tab, None, values)).is_ok())
    }

    /// Deletes sheet row `n` (2 = first data row).
    pub fn delete_row(&self, id: &str, tab: &str, n: usize) -> bool {
        self.act(&SheetAction::delete_row(id, tab, n))
    }

    /// Sorts the data rows by a header, as "Data → Sort range" does: numbers (and dates) before
    /// text, text without regard to case or accents, empty cells last either way.
    pub fn sort_by(&self, id: &str, tab: &str, column: &str, descending: bool) -> bool {
        self.act(&SheetAction::sort(id, tab, column, descending))
    }

    fn act(&self, a: &SheetAction) -> bool {
        self.lock().apply(a).is_ok()
    }

    /// A tab's grid: (rowCount, columnCount).
    pub fn grid(&self, id: &str, tab: &str) -> Option<(usize, usize)> {
        let g = self.lock();
        let t = g.spreadsheets.get(id)?.tabs.iter().find(|t| t.title == tab)?;
        Some((t.row_count, t.column_count))
    }

    /// Resizes a tab's grid as a person would (cells outside it are lost). False when not found
    /// or a size is zero.
    pub fn set_grid(&self, id: &str, tab: &str, rows: usize, columns: usize) -> bool {
        if rows == 0 || columns == 0 {
            return false;
        }
        let mut g = self.lock();
        let Some(s) = g.spreadsheets.get_mut(id) else { return false };
        let Some(t) = s.tab_mut(tab) else { return false };
        (t.row_count, t.column_count) = (rows, columns);
        t.clip();
        s.touch();
        true
    }

    pub fn set_quota(&self, read_per_minute: u32, write_per_minute: u32) {
        let mut g = self.lock();
        g.read_quota = read_per_minute;
        g.write_quota = write_per_minute;
    }

    /// The request payload limit in bytes (Google's: 10,485,760); tests lower it.
    pub fn set_payload_limit(&self, bytes: usize) {
        self.lock().payload_limit = bytes;
    }

    /// Queues a fault, or says why it means nothing (unknown scope, no effect, …).
    pub fn try_inject(&self, fault: impl Into<FaultSpec>) -> Result<(), String> {
        let f = fault.into().active()?;
        self.lock().faults.push_back(f);
        Ok(())
    }

    /// Queues a status fault. Meant for tests with literal faults: an invalid one (an unknown
    /// scope, a status that is not an error) panics with the reason so a typo cannot pass
    /// silently. Use [`GoogleState::try_inject`] for faults that come from outside.
    pub fn inject(&self, fault: GoogleFault) {
        if let Err(e) = self.try_inject(fault) {
            panic!("invalid Google fault: {e}");
        }
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Lets go of every request a `timeout` fault is holding (they answer 504).
    pub fn release_held(&self) {
        self.release.notify_waiters();
    }

    /// Runs `action` right after the next successful (2xx) answer to a request of `kind` to
    /// the action's spreadsheet was produced, before any other request is served: the sheet changes between two calls of
    /// the daemon exactly there. Test code with literal actions: an action naming a spreadsheet,
    /// tab or column that does not exist panics (see [`GoogleState::try_after_next`]).
    pub fn after_next(&self, kind: Kind, action: SheetAction) {
        if let Err(e) = self.try_after_next(kind, action) {
            panic!("invalid sheet action: {e}");
        }
    }

    /// [`GoogleState::after_next`], saying why an action cannot run instead of panicking.
    pub fn try_after_next(&self, kind: Kind, action: SheetAction) -> Result<(), String> {
        let mut g = self.lock();
        // Checked on a copy now, so a typo is reported here and not lost later.
        let mut probe = g
            .spreadsheets
            .get(action.spreadsheet())
            .cloned()
            .ok_or_else(|| format!("no spreadsheet '{}'", action.spreadsheet()))?;
        apply_action(&mut probe, &action)?;
        g.after.push((kind, action));
        Ok(())
    }

    /// Actions registered with [`GoogleState::after_next`] that have not run yet.
    pub fn pending_actions(&self) -> usize {
        self.lock().after.len()
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

    /// Counts a request and admits it: payload size, bearer token, injected faults, quotas.
    /// Returns the fault it drew, if any.
    fn admit(
        &self,
        headers: &HeaderMap,
        (kind, subject): (Kind, &str),
        body_len: usize,
    ) -> Result<(Option<ActiveFault>, String), Response> {
        let mut g = self.lock();
        *g.counts.entry(kind.name()).or_insert(0) += 1;
        if body_len > g.payload_limit {
            return Err(payload_error(g.payload_limit));
        }
        let mut user = String::new();
        if kind != Kind::Token {
            let token = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            match g.tokens.get(token) {
                Some((u, exp)) if *exp > Instant::now() => user = u.clone(),
                _ => return Err(unauthenticated(kind)),
            }
            // A file not shared with the caller (every file, until a person shares it): Drive
            // does not admit it exists; the Sheets API says the caller lacks permission.
            let editor = g.shared_with.get(subject).is_some_and(|users| users.contains(&user));
            let viewer = g.viewers.get(subject).is_some_and(|users| users.contains(&user));
            if !editor && !viewer {
                return Err(match kind {
                    Kind::DriveGet => drive_not_found(subject),
                    _ => {
                        google_error(StatusCode::FORBIDDEN, "PERMISSION_DENIED", "The caller does not have permission")
                    }
                });
            }
            // A Viewer reads; Sheets refuses its writes.
            if !editor && kind.is_write() {
                return Err(google_error(
                    StatusCode::FORBIDDEN,
                    "PERMISSION_DENIED",
                    "The caller does not have permission",
                ));
            }
        }
        if let Some(pos) = g.faults.iter().position(|f| f.scope.covers(kind)) {
            let f = g.faults[pos].clone();
            g.faults[pos].left -= 1;
            if g.faults[pos].left == 0 {
                g.faults.remove(pos);
            }
            return Ok((Some(f), user));
        }
        if g.window_start.elapsed() >= Duration::from_secs(60) {
            g.window_start = Instant::now();
            g.used.clear();
        }
        if matches!(kind, Kind::Token | Kind::DriveGet) {
            return Ok((None, user)); // Drive's quotas are far larger than Sheets'.
        }
        let limit = if kind.is_write() { g.write_quota } else { g.read_quota };
        let used = g.used.entry((user.clone(), kind.is_write())).or_insert(0);
        if *used >= limit {
            return Err(quota_error(kind.is_write()));
        }
        *used += 1;
        Ok((None, user))
    }

    /// One request from admission to answer: the fault it drew (delay, hold, status), the work
    /// under the lock, then the actions waiting for this kind of request.
    async fn serve(
        &self,
        headers: &HeaderMap,
        (kind, subject): (Kind, &str),
        body_len: usize,
        work: impl FnOnce(&mut Inner) -> Response,
    ) -> Response {
        let (fault, caller) = match self.admit(headers, (kind, subject), body_len) {
            Ok(admitted) => admitted,
            Err(r) => return r,
        };
        let Some(f) = fault else { return self.work((kind, subject), &caller, work) };
        if f.cut {
            return cut_short(self.work((kind, subject), &caller, work)).await;
        }
        if f.applied {
            let answer = self.work((kind, subject), &caller, work);
            return self.misbehave(&f, kind, subject).await.unwrap_or(answer);
        }
        match self.misbehave(&f, kind, subject).await {
            Some(r) => r,
            None => self.work((kind, subject), &caller, work),
        }
    }

    /// What a fault does to an answer: waits, then holds it forever or replaces it with an
    /// error; `None` when the answer goes out (late).
    async fn misbehave(&self, f: &ActiveFault, kind: Kind, subject: &str) -> Option<Response> {
        if let Some(d) = f.delay {
            tokio::time::sleep(d).await;
        }
        if f.timeout {
            return Some(self.hold().await);
        }
        f.status.map(|status| fault_error(kind, status, subject))
    }

    /// The work of a request, under the lock, with `caller` (the account it came from) set for
    /// the length of it.
    fn work(&self, (kind, subject): (Kind, &str), caller: &str, work: impl FnOnce(&mut Inner) -> Response) -> Response {
        let mut g = self.lock();
        g.caller = caller.to_string();
        let r = work(&mut g);
        if r.status().is_success() {
            g.run_after(kind, subject);
        }
        r
    }

    async fn hold(&self) -> Response {
        let released = self.release.notified();
        tokio::select! {
            _ = released => {}
            _ = tokio::time::sleep(MAX_HOLD) => {}
        }
        google_error(
            StatusCode::GATEWAY_TIMEOUT,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
        )
    }
}

impl Inner {
    fn apply(&mut self, a: &SheetAction) -> Result<(), String> {
        let s = self
            .spreadsheets
            .get_mut(a.spreadsheet())
            .ok_or_else(|| format!("no spreadsheet '{}'", a.spreadsheet()))?;
        apply_action(s, a)
    }

    /// Runs the actions waiting for a request of `kind` to the spreadsheet `subject` (a
    /// request to another spreadsheet leaves them waiting).
    fn run_after(&mut self, kind: Kind, subject: &str) {
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.after)
            .into_iter()
            .partition(|(k, a)| *k == kind && (a.spreadsheet() == subject || subject.is_empty()));
        self.after = later;
        for (_, a) in now {
            if let Err(e) = self.apply(&a) {
                tracing::warn!(action = ?a, "sandbox: a sheet action after {} could not run: {e}", kind.name());
            }
        }
    }
}

/// A person's change to a sheet.
fn apply_action(s: &mut Spreadsheet, a: &SheetAction) -> Result<(), String> {
    let l = s.loc();
    let tab_name = match a {
        SheetAction::Sort { tab, .. }
        | SheetAction::InsertRow { tab, .. }
        | SheetAction::DeleteRow { tab, .. }
        | SheetAction::Edit { tab, .. } => tab,
    };
    let t = s.tab_mut(tab_name).ok_or_else(|| format!("no tab '{tab_name}'"))?;
    match a {
        SheetAction::Sort { column, descending, .. } => {
            let c = t.column_of(column, &l).ok_or_else(|| format!("no column '{column}'"))?;
            let end = t.used_rows().max(1);
            let mut data: Vec<Vec<Cell>> = t.cells.drain(1..end).collect();
            data.sort_by(|x, y| compare_for_sort(x.get(c), y.get(c), *descending));
            t.cells.splice(1..1, data);
        }
        SheetAction::InsertRow { at, values, .. } => {
            let cells: Vec<Cell> = values.iter().map(|v| cell_from_json(v, ValueInput::Raw, None, &l)).collect();
            if cells.len() > t.column_count {
                t.column_count = cells.len();
            }
            match at {
                Some(n) if *n >= 2 && n - 1 <= t.cells.len() => {
                    t.insert_rows(n - 1, 1);
                    if t.cells.len() < *n {
                        t.cells.resize(*n, Vec::new());
                    }
                    t.cells[n - 1] = cells;
                }
                Some(n) => return Err(format!("row {n} is not a data row of the tab")),
                None => {
                    let r = t.used_rows();
                    t.cells.truncate(r);
                    t.cells.push(cells);
                    if t.row_count <= r {
                        t.row_count = r + 1;
                    }
                }
            }
        }
        SheetAction::DeleteRow { row, .. } => {
            if *row < 2 || *row > t.cells.len() || t.row_count <= 1 {
                return Err(format!("row {row} is not a data row of the tab"));
            }
            t.delete_rows(row - 1, 1);
        }
        SheetAction::Edit { key_column, key, column, value, user_entered, .. } => {
            let kc = t.column_of(key_column, &l).ok_or_else(|| format!("no column '{key_column}'"))?;
            let c = t.column_of(column, &l).ok_or_else(|| format!("no column '{column}'"))?;
            let r = t.row_of_key(kc, key, &l).ok_or_else(|| format!("no row with {key_column} '{key}'"))?;
            let input = if *user_entered { ValueInput::UserEntered } else { ValueInput::Raw };
            let cell = cell_from_json(value, input, t.get(r, c), &l);
            t.set(r, c, cell);
        }
    }
    s.touch();
    Ok(())
}

fn compare_for_sort(a: Option<&Cell>, b: Option<&Cell>, descending: bool) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    fn rank(c: Option<&Cell>) -> (u8, f64, String) {
        match c.map(|c| &c.value) {
            Some(CellData::Number(n)) => (0, *n, String::new()),
            Some(CellData::Text(s)) => (1, 0.0, fold(s)),
            Some(CellData::Bool(b)) => (2, f64::from(u8::from(*b)), String::new()),
            Some(CellData::Error(e)) => (3, 0.0, e.clone()),
            Some(CellData::Empty) | None => (4, 0.0, String::new()),
        }
    }
    let (x, y) = (rank(a), rank(b));
    match (x.0 == 4, y.0 == 4) {
        (true, true) => return Ordering::Equal,
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        _ => {}
    }
    let o = x.0.cmp(&y.0).then(x.1.partial_cmp(&y.1).unwrap_or(Ordering::Equal)).then_with(|| x.2.cmp(&y.2));
    if descending {
        o.reverse()
    } else {
        o
    }
}

/// Lower case without accents, for sorting text as Sheets does.
fn fold(s: &str) -> String {
    s.chars()
        .flat_map(char::to_lowercase)
        .map(|c| match c {
            'á' | 'à' | 'ä' | 'â' | 'ã' => 'a',
            'é' | 'è' | 'ë' | 'ê' => 'e',
            'í' | 'ì' | 'ï' | 'î' => 'i',
            'ó' | 'ò' | 'ö' | 'ô' | 'õ' => 'o',
            'ú' | 'ù' | 'ü' | 'û' => 'u',
            'ç' => 'c',
            other => other,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Error answers

/// Sheets' error shape: `{"error":{"code","message","status"}}`.
pub fn google_error(status: StatusCode, code_name: &str, message: &str) -> Response {
    (status, Json(json!({ "error": { "code": status.as_u16(), "message": message, "status": code_name } })))
        .into_response()
}

fn invalid(message: &str) -> Response {
    google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

fn sheets_not_found() -> Response {
    google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.")
}

/// Recorded from a Java client (values.update): 400 with `errors[]`, not 413.
fn payload_error(limit: usize) -> Response {
    let message = format!("Request payload size exceeds the limit: {limit} bytes.");
    let body = json!({ "error": {
        "code": 400,
        "errors": [ { "domain": "global", "message": message, "reason": "badRequest" } ],
        "message": message,
        "status": "INVALID_ARGUMENT"
    }});
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Drive's legacy shape: `{"error":{"errors":[{domain,reason,message,…}],"code","message"}}`.
fn drive_error(status: u16, reason: &str, message: &str, extra: &[(&str, &str)]) -> Response {
    let domain = if matches!(reason, "userRateLimitExceeded" | "rateLimitExceeded") { "usageLimits" } else { "global" };
    let mut e = json!({ "domain": domain, "reason": reason, "message": message });
    for (k, v) in extra {
        e[*k] = json!(v);
    }
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(json!({ "error": { "errors": [e], "code": status, "message": message } }))).into_response()
}

fn drive_not_found(id: &str) -> Response {
    drive_error(
        404,
        "notFound",
        &format!("File not found: {id}."),
        &[("locationType", "parameter"), ("location", "fileId")],
    )
}

fn unauthenticated(kind: Kind) -> Response {
    match kind {
        Kind::DriveGet => drive_error(
            401,
            "authError",
            "Invalid Credentials",
            &[("locationType", "header"), ("location", "Authorization")],
        ),
        _ => google_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        ),
    }
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

/// An injected status, in the shape of the API the request went to.
fn fault_error(kind: Kind, status: u16, subject: &str) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match kind {
        Kind::Token => {
            // OAuth's own shape [U: the texts for statuses other than 400].
            let (error, description) = match status {
                400 => ("invalid_grant", "Invalid JWT Signature."),
                401 => ("invalid_client", "The OAuth client was not found."),
                403 => ("access_denied", "Requested client not authorized."),
                429 => ("rate_limit_exceeded", "Rate Limit Exceeded"),
                _ => ("internal_failure", "Backend Error"),
            };
            (code, Json(json!({ "error": error, "error_description": description }))).into_response()
        }
        Kind::DriveGet => match status {
            403 => drive_error(403, "userRateLimitExceeded", "User Rate Limit Exceeded", &[]),
            429 => drive_error(429, "rateLimitExceeded", "Rate Limit Exceeded", &[]),
            404 => drive_not_found(subject),
            401 => unauthenticated(kind),
            400 => drive_error(400, "badRequest", "Bad Request", &[]),
            _ => drive_error(status, "backendError", "Backend Error", &[]),
        },
        _ => match status {
            429 => quota_error(kind.is_write()),
            401 => unauthenticated(kind),
            // Google's front end answers 502 with an HTML page, not JSON.
            502 => (
                code,
                [("content-type", "text/html; charset=UTF-8")],
                "<!DOCTYPE html><html lang=en><title>Error 502 (Server Error)!!1</title><p><b>502.</b> <ins>That’s an error.</ins><p>The server encountered a temporary error and could not complete your request.<p>Please try again in 30 seconds.  <ins>That’s all we know.</ins></html>",
            )
                .into_response(),
            _ => {
                let (name, message) = match status {
                    400 => ("INVALID_ARGUMENT", "Request contains an invalid argument."),
                    403 => ("PERMISSION_DENIED", "The caller does not have permission"),
                    404 => ("NOT_FOUND", "Requested entity was not found."),
                    409 => ("ABORTED", "The operation was aborted."),
                    500 => ("INTERNAL", "Internal error encountered."),
                    501 => ("NOT_IMPLEMENTED", "Operation is not implemented, or supported, or enabled."),
                    503 => ("UNAVAILABLE", "The service is currently unavailable."),
                    504 => ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
                    _ => ("UNKNOWN", "Unknown error."),
                };
                google_error(code, name, message)
            }
        },
    }
}

// ---------------------------------------------------------------------------------------------
// Reading values

#[derive(Debug, Clone, Copy)]
struct ReadOpts {
    render: Render,
    dt: DtRender,
    columns: bool,
}

impl ReadOpts {
    fn from_query(q: &[(String, String)]) -> Result<ReadOpts, String> {
        let render = match opt(q, "valueRenderOption", "FORMATTED_VALUE") {
            "FORMATTED_VALUE" => Render::Formatted,
            "UNFORMATTED_VALUE" => Render::Unformatted,
            "FORMULA" => Render::Formula,
            other => return Err(bad_enum("value_render_option", "ValueRenderOption", other)),
        };
        let dt = match opt(q, "dateTimeRenderOption", "SERIAL_NUMBER") {
            "SERIAL_NUMBER" => DtRender::Serial,
            "FORMATTED_STRING" => DtRender::Formatted,
            other => return Err(bad_enum("date_time_render_option", "DateTimeRenderOption", other)),
        };
        let columns = match opt(q, "majorDimension", "ROWS") {
            "ROWS" | "DIMENSION_UNSPECIFIED" => false,
            "COLUMNS" => true,
            other => return Err(bad_enum("major_dimension", "Dimension", other)),
        };
        Ok(ReadOpts { render, dt, columns })
    }
}

/// A range resolved against a tab's grid for reading: (tab index, c0, r0, c1, r1), clipped.
/// A range that starts outside the grid is Google's "exceeds grid limits".
fn resolve_read(s: &Spreadsheet, range: &str) -> Result<(usize, usize, usize, usize, usize), String> {
    let unable = || format!("Unable to parse range: {range}");
    let a = parse_a1(range).ok_or_else(unable)?.normalised();
    let ti = s.range_tab(&a).ok_or_else(unable)?;
    let t = &s.tabs[ti];
    let (c0, r0) = (a.col0.unwrap_or(0), a.row0.unwrap_or(0));
    if r0 >= t.row_count || c0 >= t.column_count {
        return Err(grid_error(t, &a.cells_text()));
    }
    let c1 = a.col1.unwrap_or(t.column_count - 1).min(t.column_count - 1);
    let r1 = a.row1.unwrap_or(t.row_count - 1).min(t.row_count - 1);
    Ok((ti, c0, r0, c1, r1))
}

/// Row `r`'s cells from column `c0` to `c1` as `values.get` renders them, without trailing
/// empty cells.
fn rendered_row(t: &Tab, r: usize, c0: usize, c1: usize, o: ReadOpts, l: &Loc) -> Vec<Value> {
    let Some(row) = t.cells.get(r) else { return Vec::new() };
    let mut out: Vec<Value> = match row.get(c0..=c1.min(row.len().saturating_sub(1))) {
        Some(cells) if c0 < row.len() => cells.iter().map(|c| render(c, o.render, o.dt, l)).collect(),
        _ => Vec::new(),
    };
    while out.last().is_some_and(Value::is_null) {
        out.pop();
    }
    out
}

/// [`read_range`]'s answer as JSON text, written row by row: no JSON tree of the whole range
/// is built first (for a million-row tab that tree took longer to build than the daemon takes
/// to read the answer, all of it under the emulator's lock before the first byte).
fn read_range_json(s: &Spreadsheet, range: &str, o: ReadOpts) -> Result<Vec<u8>, String> {
    if o.columns {
        let v = read_range(s, range, o)?;
        return serde_json::to_vec(&v).map_err(|e| e.to_string());
    }
    let (ti, c0, r0, c1, r1) = resolve_read(s, range)?;
    let t = &s.tabs[ti];
    let l = s.loc();
    let mut out = Vec::with_capacity(1024);
    let text = |out: &mut Vec<u8>, v: &Value| serde_json::to_writer(out, v).map_err(|e| e.to_string());
    out.extend_from_slice(b"{\"range\":");
    text(&mut out, &Value::String(a1_text(&t.title, c0, r0, c1, r1)))?;
    out.extend_from_slice(b",\"majorDimension\":\"ROWS\"");
    // Empty rows are written only once a later row has cells (trailing ones are left out).
    let mut empty_rows = 0usize;
    let mut rows = 0usize;
    for r in r0..=r1.min(t.cells.len().saturating_sub(1)) {
        let row = rendered_row(t, r, c0, c1, o, &l);
        if row.is_empty() {
            empty_rows += 1;
            continue;
        }
        for _ in 0..empty_rows {
            out.extend_from_slice(if rows == 0 { b",\"values\":[[]" } else { b",[]" });
            rows += 1;
        }
        empty_rows = 0;
        out.extend_from_slice(if rows == 0 { b",\"values\":[[" } else { b",[" });
        rows += 1;
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match cell {
                Value::Null => out.extend_from_slice(b"\"\""),
                v => text(&mut out, v)?,
            }
        }
        out.push(b']');
    }
    if rows > 0 {
        out.push(b']');
    }
    out.push(b'}');
    Ok(out)
}

/// Reads a range with render options: trailing empty cells and rows trimmed, inner empty cells
/// `""`, no `values` at all for an empty range, the range echoed as clipped to the grid.
fn read_range(s: &Spreadsheet, range: &str, o: ReadOpts) -> Result<Value, String> {
    let (ti, c0, r0, c1, r1) = resolve_read(s, range)?;
    let t = &s.tabs[ti];
    let l = s.loc();
    let mut rows: Vec<Vec<Value>> = Vec::new();
    for r in r0..=r1.min(t.cells.len().saturating_sub(1)) {
        rows.push(rendered_row(t, r, c0, c1, o, &l));
    }
    while rows.last().is_some_and(Vec::is_empty) {
        rows.pop();
    }
    if o.columns {
        let width = rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut cols = vec![Vec::new(); width];
        for row in &rows {
            for (i, col) in cols.iter_mut().enumerate() {
                col.push(row.get(i).cloned().unwrap_or(Value::Null));
            }
        }
        for col in cols.iter_mut() {
            while col.last().is_some_and(Value::is_null) {
                col.pop();
            }
        }
        rows = cols;
    }
    let mut body = json!({ "range": a1_text(&t.title, c0, r0, c1, r1), "majorDimension": if o.columns { "COLUMNS" } else { "ROWS" } });
    if !rows.is_empty() {
        // Moved, not copied (a million-row answer is built once).
        let rows = rows.into_iter().map(|mut r| {
            for v in r.iter_mut().filter(|v| v.is_null()) {
                *v = Value::String(String::new());
            }
            Value::Array(r)
        });
        body["values"] = Value::Array(rows.collect());
    }
    Ok(body)
}

// ---------------------------------------------------------------------------------------------
// Writing values

/// A checked write: where and what.
struct WritePlan {
    tab: usize,
    r0: usize,
    c0: usize,
    values: Vec<Vec<Value>>,
}

/// The values of a ValueRange as rows: `values` must be a list of lists of bool, number,
/// string or null; `majorDimension: COLUMNS` transposes. `field` names it in messages
/// (`data.values`, `data[2].values`).
fn value_rows(body: &Value, field: &str) -> Result<Vec<Vec<Value>>, String> {
    let list_error =
        |at: &str, v: &Value| format!("Invalid value at '{at}' (type.googleapis.com/google.protobuf.ListValue), {v}");
    let rows = match body.get("values") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(rows)) => rows
            .iter()
            .enumerate()
            .map(|(i, r)| match r {
                Value::Array(cells) => Ok(cells.clone()),
                other => Err(list_error(&format!("{field}[{i}]"), other)),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => return Err(list_error(field, other)),
    };
    for (i, row) in rows.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            match v {
                Value::Array(_) => return Err(format!("Invalid values[{i}][{j}]: list_value {{\n}}")),
                Value::Object(_) => return Err(format!("Invalid values[{i}][{j}]: struct_value {{\n}}")),
                Value::String(s) if s.chars().count() > MAX_CELL_CHARS => return Err(CELL_TOO_LONG.into()),
                _ => {}
            }
        }
    }
    match body.get("majorDimension").and_then(Value::as_str).unwrap_or("ROWS") {
        "ROWS" | "DIMENSION_UNSPECIFIED" => Ok(rows),
        "COLUMNS" => {
            let height = rows.iter().map(Vec::len).max().unwrap_or(0);
            Ok((0..height)
                .map(|r| rows.iter().map(|col| col.get(r).cloned().unwrap_or(Value::Null)).collect())
                .collect())
        }
        other => Err(bad_enum("data.major_dimension", "Dimension", other)),
    }
}

/// Checks a values.update / values.batchUpdate entry against the spreadsheet as it is: the
/// range parses and names a tab, the data fits the range asked for, and everything lies inside
/// the grid (these writes never grow it).
fn plan_write(s: &Spreadsheet, range: &str, values: Vec<Vec<Value>>) -> Result<WritePlan, String> {
    let unable = || format!("Unable to parse range: {range}");
    let a = parse_a1(range).ok_or_else(unable)?.normalised();
    let ti = s.range_tab(&a).ok_or_else(unable)?;
    let t = &s.tabs[ti];
    let (c0, r0) = (a.col0.unwrap_or(0), a.row0.unwrap_or(0));
    let height = values.len();
    let width = values.iter().map(Vec::len).max().unwrap_or(0);
    if !a.is_single_cell() && !a.is_whole_tab() {
        let asked = format!("{}!{}", quote_if_needed(&t.title), a.cells_text());
        if let Some(r1) = a.row1 {
            if height > 0 && r0 + height - 1 > r1 {
                return Err(format!(
                    "Requested writing within range [{asked}], but tried writing to row [{}]",
                    r0 + height
                ));
            }
        }
        if let Some(c1) = a.col1 {
            if width > 0 && c0 + width - 1 > c1 {
                return Err(format!(
                    "Requested writing within range [{asked}], but tried writing to column [{}]",
                    column_letters(c0 + width - 1)
                ));
            }
        }
        let outside = r0 >= t.row_count
            || c0 >= t.column_count
            || a.row1.is_some_and(|r| r >= t.row_count)
            || a.col1.is_some_and(|c| c >= t.column_count);
        if outside {
            return Err(grid_error(t, &a.cells_text()));
        }
    }
    let (r1, c1) = (r0 + height.max(1) - 1, c0 + width.max(1) - 1);
    if r1 >= t.row_count || c1 >= t.column_count {
        let block = A1 { tab: None, col0: Some(c0), row0: Some(r0), col1: Some(c1), row1: Some(r1) };
        return Err(grid_error(t, &block.cells_text()));
    }
    Ok(WritePlan { tab: ti, r0, c0, values })
}

/// Applies a checked write; returns its UpdateValuesResponse.
fn apply_write(s: &mut Spreadsheet, p: &WritePlan, input: ValueInput) -> Value {
    let l = s.loc();
    let t = &mut s.tabs[p.tab];
    let (mut cells, mut width) = (0, 0);
    for (i, row) in p.values.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            if v.is_null() {
                continue; // null means "leave as is"
            }
            let (r, c) = (p.r0 + i, p.c0 + j);
            let cell = cell_from_json(v, input, t.get(r, c), &l);
            t.set(r, c, cell);
            cells += 1;
            width = width.max(j + 1);
        }
    }
    let range = a1_text(&t.title, p.c0, p.r0, p.c0 + width.saturating_sub(1), p.r0 + p.values.len().saturating_sub(1));
    let rows = p.values.iter().filter(|r| r.iter().any(|v| !v.is_null())).count();
    if cells > 0 {
        s.touch();
    }
    json!({ "spreadsheetId": s.id, "updatedRange": range, "updatedRows": rows, "updatedColumns": width, "updatedCells": cells })
}

/// values.append: after the last row with a value, growing the grid as needed.
fn append(
    s: &mut Spreadsheet,
    range: &str,
    values: Vec<Vec<Value>>,
    input: ValueInput,
    insert_rows: bool,
) -> Result<Value, String> {
    let unable = || format!("Unable to parse range: {range}");
    let a = parse_a1(range).ok_or_else(unable)?.normalised();
    let ti = s.range_tab(&a).ok_or_else(unable)?;
    let (rows_before, cols_before) = (s.tabs[ti].row_count, s.tabs[ti].column_count);
    let t = &s.tabs[ti];
    let c0 = a.col0.unwrap_or(0);
    let last = t.used_rows();
    let table = (last > 0).then(|| a1_text(&t.title, 0, 0, t.used_columns().max(1) - 1, last - 1));
    let height = values.len();
    let width = values.iter().map(Vec::len).max().unwrap_or(0);
    {
        let t = &mut s.tabs[ti];
        if insert_rows {
            t.insert_rows(last.min(t.row_count), height);
        }
        t.row_count = t.row_count.max(last + height);
        t.column_count = t.column_count.max(c0 + width);
    }
    if let Err(e) = s.check_cell_limit() {
        let t = &mut s.tabs[ti];
        (t.row_count, t.column_count) = (rows_before, cols_before);
        t.clip();
        return Err(e);
    }
    let plan = WritePlan { tab: ti, r0: last, c0, values };
    let updates = apply_write(s, &plan, input);
    if (s.tabs[ti].row_count, s.tabs[ti].column_count) != (rows_before, cols_before) {
        s.touch();
    }
    let mut out = json!({ "spreadsheetId": s.id, "updates": updates });
    if let Some(t) = table {
        out["tableRange"] = json!(t);
    }
    Ok(out)
}

/// Checks that a JSON object has only the given fields (Google refuses unknown ones).
fn known_fields(v: &Value, allowed: &[&str], at: &str) -> Result<(), String> {
    if let Some(o) = v.as_object() {
        if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            let place = if at.is_empty() { String::new() } else { format!(" at '{at}'") };
            return Err(format!("Invalid JSON payload received. Unknown name \"{k}\"{place}: Cannot find field."));
        }
    }
    Ok(())
}

fn parse_body(body: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("Invalid JSON payload received. Expected an object.".into()),
        Err(e) => Err(format!("Invalid JSON payload received. {e}.")),
    }
}

// ---------------------------------------------------------------------------------------------
// spreadsheets.get

/// A `fields` mask: `properties(timeZone,locale),sheets.properties(sheetId,title)`.
#[derive(Debug, Default, Clone)]
struct Mask {
    all: bool,
    fields: BTreeMap<String, Mask>,
}

impl Mask {
    fn parse(s: &str) -> Result<Mask, String> {
        let chars: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
        let mut pos = 0;
        let mut m = Mask::default();
        Mask::list(&chars, &mut pos, &mut m)?;
        if pos != chars.len() {
            return Err(format!("Invalid field selection {s}"));
        }
        Ok(m)
    }

    fn list(chars: &[char], pos: &mut usize, into: &mut Mask) -> Result<(), String> {
        loop {
            let mut node = &mut *into;
            loop {
                let start = *pos;
                while *pos < chars.len() && !matches!(chars[*pos], ',' | '(' | ')' | '/' | '.') {
                    *pos += 1;
                }
                let name: String = chars[start..*pos].iter().collect();
                if name.is_empty() {
                    return Err("Invalid field selection".into());
                }
                if name == "*" {
                    node.all = true;
                } else {
                    node = node.fields.entry(name).or_default();
                }
                if *pos < chars.len() && matches!(chars[*pos], '/' | '.') {
                    *pos += 1;
                } else {
                    break;
                }
            }
            if *pos < chars.len() && chars[*pos] == '(' {
                *pos += 1;
                Mask::list(chars, pos, node)?;
                if *pos >= chars.len() || chars[*pos] != ')' {
                    return Err("Invalid field selection".into());
                }
                *pos += 1;
            } else {
                node.all = true;
            }
            if *pos < chars.len() && chars[*pos] == ',' {
                *pos += 1;
            } else {
                return Ok(());
            }
        }
    }

    fn wants(&self, path: &[&str]) -> bool {
        if self.all {
            return true;
        }
        match path.split_first() {
            None => true,
            Some((first, rest)) => self.fields.get(*first).is_some_and(|m| m.wants(rest)),
        }
    }

    fn apply(&self, v: &Value) -> Value {
        if self.all {
            return v.clone();
        }
        match v {
            Value::Object(o) => {
                let mut out = Map::new();
                for (k, sub) in &self.fields {
                    if let Some(x) = o.get(k) {
                        let y = sub.apply(x);
                        if sub.all || !y.as_object().is_some_and(Map::is_empty) {
                            out.insert(k.clone(), y);
                        }
                    }
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(|x| self.apply(x)).collect()),
            other => other.clone(),
        }
    }
}

fn cell_json(cell: Option<&Cell>, loc: &Loc) -> Value {
    let Some(cell) = cell else { return json!({}) };
    let mut out = Map::new();
    let typed = |d: &CellData| match d {
        CellData::Text(s) => Some(json!({ "stringValue": s })),
        CellData::Number(n) => Some(json!({ "numberValue": num_json(*n) })),
        CellData::Bool(b) => Some(json!({ "boolValue": b })),
        CellData::Error(e) => Some(json!({ "errorValue": {
            "type": match e.as_str() { "#NAME?" => "NAME", "#DIV/0!" => "DIVIDE_BY_ZERO", "#NUM!" => "NUM", _ => "ERROR" },
            "message": "The sandbox evaluates plain arithmetic only." } })),
        CellData::Empty => None,
    };
    match &cell.formula {
        Some(f) => {
            out.insert("userEnteredValue".into(), json!({ "formulaValue": f }));
        }
        None => {
            if let Some(v) = typed(&cell.value) {
                out.insert("userEnteredValue".into(), v);
            }
        }
    }
    if let Some(v) = typed(&cell.value) {
        out.insert("effectiveValue".into(), v);
        if let Value::String(s) = render(cell, Render::Formatted, DtRender::Serial, loc) {
            out.insert("formattedValue".into(), json!(s));
        }
    }
    if let Some(f) = cell.format {
        out.insert(
            "userEnteredFormat".into(),
            json!({ "numberFormat": { "type": f.kind().name(), "pattern": f.pattern(loc) } }),
        );
    }
    if let Some(kind) = cell.format_type() {
        let mut nf = json!({ "type": kind.name() });
        if let Some(f) = cell.format {
            nf["pattern"] = json!(f.pattern(loc));
        }
        out.insert("effectiveFormat".into(), json!({ "numberFormat": nf }));
    }
    Value::Object(out)
}

/// GridData of a block: rowData trimmed of trailing empty cells and rows.
fn grid_data(t: &Tab, loc: &Loc, (c0, r0, c1, r1): (usize, usize, usize, usize)) -> Value {
    let mut rows = Vec::new();
    for r in r0..=r1.min(t.cells.len().saturating_sub(1)) {
        let mut cells: Vec<Value> = (c0..=c1).map(|c| cell_json(t.get(r, c), loc)).collect();
        while cells.last().is_some_and(|c| c.as_object().is_some_and(Map::is_empty)) {
            cells.pop();
        }
        rows.push(if cells.is_empty() { json!({}) } else { json!({ "values": cells }) });
    }
    while rows.last().is_some_and(|r| r.as_object().is_some_and(Map::is_empty)) {
        rows.pop();
    }
    let mut d = Map::new();
    if r0 > 0 {
        d.insert("startRow".into(), json!(r0));
    }
    if c0 > 0 {
        d.insert("startColumn".into(), json!(c0));
    }
    if !rows.is_empty() {
        d.insert("rowData".into(), json!(rows));
    }
    d.insert("rowMetadata".into(), json!((r0..=r1).map(|_| json!({ "pixelSize": 21 })).collect::<Vec<_>>()));
    d.insert("columnMetadata".into(), json!((c0..=c1).map(|_| json!({ "pixelSize": 100 })).collect::<Vec<_>>()));
    Value::Object(d)
}

fn spreadsheet_json(s: &Spreadsheet, q: &[(String, String)]) -> Result<Value, String> {
    let mask = q.iter().find(|(k, _)| k == "fields").map(|(_, f)| Mask::parse(f)).transpose()?;
    let include = match opt(q, "includeGridData", "false") {
        "true" => true,
        "false" => false,
        other => return Err(format!("Invalid value at 'include_grid_data' (TYPE_BOOL), \"{other}\"")),
    };
    // "If a field mask is set, the includeGridData parameter is ignored."
    let with_data = match &mask {
        Some(m) => m.wants(&["sheets", "data"]),
        None => include,
    };
    let mut blocks: Vec<Vec<(usize, usize, usize, usize)>> = vec![Vec::new(); s.tabs.len()];
    let ranges: Vec<&str> = q.iter().filter(|(k, _)| k == "ranges").map(|(_, v)| v.as_str()).collect();
    for range in &ranges {
        let (ti, c0, r0, c1, r1) = resolve_read(s, range)?;
        blocks[ti].push((c0, r0, c1, r1));
    }
    let l = s.loc();
    let sheets: Vec<Value> = s
        .tabs
        .iter()
        .enumerate()
        .filter(|(i, _)| ranges.is_empty() || !blocks[*i].is_empty())
        .map(|(i, t)| {
            let mut sheet = json!({ "properties": { "sheetId": t.sheet_id, "title": t.title, "index": i, "sheetType": "GRID",
                "gridProperties": { "rowCount": t.row_count, "columnCount": t.column_count } } });
            if with_data {
                let whole = [(0, 0, t.column_count - 1, t.row_count - 1)];
                let blocks = if ranges.is_empty() { &whole[..] } else { &blocks[i][..] };
                sheet["data"] = json!(blocks.iter().map(|b| grid_data(t, &l, *b)).collect::<Vec<_>>());
            }
            sheet
        })
        .collect();
    let full = json!({
        "spreadsheetId": s.id,
        "properties": { "title": s.title, "locale": s.locale, "autoRecalc": "ON_CHANGE", "timeZone": s.time_zone,
            "defaultFormat": { "backgroundColor": { "red": 1, "green": 1, "blue": 1 } } },
        "sheets": sheets,
        "spreadsheetUrl": format!("https://docs.google.com/spreadsheets/d/{}/edit", s.id)
    });
    Ok(match mask {
        Some(m) => m.apply(&full),
        None => full,
    })
}

// ---------------------------------------------------------------------------------------------
// spreadsheets.batchUpdate

/// Request kinds Google has that the sandbox does not emulate (refused by name, so a test
/// that needs one fails clearly).
const UNEMULATED_REQUESTS: &[&str] = &[
    "addSheet",
    "deleteSheet",
    "duplicateSheet",
    "updateCells",
    "repeatCell",
    "sortRange",
    "setDataValidation",
    "mergeCells",
    "unmergeCells",
    "autoResizeDimensions",
    "updateDimensionProperties",
    "moveDimension",
    "insertRange",
    "deleteRange",
    "copyPaste",
    "cutPaste",
    "pasteData",
    "findReplace",
    "createDeveloperMetadata",
    "updateDeveloperMetadata",
    "deleteDeveloperMetadata",
    "addNamedRange",
    "updateBorders",
    "addProtectedRange",
    "addConditionalFormatRule",
    "setBasicFilter",
    "clearBasicFilter",
    "addFilterView",
    "trimWhitespace",
    "deleteDuplicates",
    "textToColumns",
    "autoFill",
    "addChart",
    "addBanding",
    "randomizeRange",
];

fn grid_of<'a>(s: &'a mut Spreadsheet, sheet_id: &Value) -> Result<&'a mut Tab, String> {
    let id = sheet_id.as_i64().unwrap_or(0);
    s.tabs.iter_mut().find(|t| t.sheet_id == id).ok_or_else(|| format!("No grid with id: {id}"))
}

fn dimension(v: &Value) -> Result<bool, String> {
    match v.as_str().unwrap_or("DIMENSION_UNSPECIFIED") {
        "ROWS" => Ok(true),
        "COLUMNS" => Ok(false),
        // [U] the exact text.
        _ => Err("dimension must be ROWS or COLUMNS".into()),
    }
}

/// A DimensionRange → (rows?, start, end) checked against the tab.
fn dimension_range(t: &Tab, r: &Value, inserting: bool) -> Result<(bool, usize, usize), String> {
    let rows = dimension(&r["dimension"])?;
    let count = if rows { t.row_count } else { t.column_count };
    let start = r["startIndex"].as_u64().unwrap_or(0) as usize;
    let end = r["endIndex"].as_u64().map(|e| e as usize).unwrap_or(count);
    // [U] the exact texts.
    if end <= start {
        return Err(format!("Invalid dimension range: startIndex ({start}) must be less than endIndex ({end})"));
    }
    if (inserting && start > count) || (!inserting && end > count) {
        return Err(format!(
            "Invalid dimension range: the {} has only {count} {}",
            "sheet",
            if rows { "rows" } else { "columns" }
        ));
    }
    Ok((rows, start, end))
}

fn one_request(s: &mut Spreadsheet, kind: &str, r: &Value) -> Result<(), String> {
    match kind {
        "appendCells" => {
            // After the last row with data (not after a "table" as values.append finds it),
            // from column A, inserting rows when the grid is full.
            if r["fields"].as_str().is_none_or(|f| f.trim().is_empty()) {
                return Err("At least one field must be specified.".into()); // [U]
            }
            let id = r["sheetId"].as_i64().unwrap_or(0);
            let ti = s.tabs.iter().position(|t| t.sheet_id == id).ok_or_else(|| format!("No grid with id: {id}"))?;
            let rows: Vec<Vec<Value>> = r["rows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|row| {
                    row["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|cell| {
                            let v = &cell["userEnteredValue"];
                            ["stringValue", "numberValue", "boolValue"]
                                .iter()
                                .find_map(|k| v.get(*k).cloned())
                                .unwrap_or(Value::Null)
                        })
                        .collect()
                })
                .collect();
            let width = rows.iter().map(Vec::len).max().unwrap_or(0);
            let t = &mut s.tabs[ti];
            if width > t.column_count {
                return Err(format!(
                    "Range ({}!{}) exceeds grid limits. Max rows: {}, max columns: {}",
                    t.title,
                    a1_text(&t.title, 0, 0, width - 1, 0).rsplit('!').next().unwrap_or_default(),
                    t.row_count,
                    t.column_count
                ));
            }
            let last = t.used_rows();
            t.row_count = t.row_count.max(last + rows.len());
            let plan = WritePlan { tab: ti, r0: last, c0: 0, values: rows };
            apply_write(s, &plan, ValueInput::Raw);
        }
        "appendDimension" => {
            let rows = dimension(&r["dimension"])?;
            let length = r["length"].as_i64().unwrap_or(0);
            if length <= 0 {
                return Err("length must be greater than 0".into()); // [U]
            }
            let t = grid_of(s, &r["sheetId"])?;
            if rows {
                t.row_count += length as usize;
            } else {
                t.column_count += length as usize;
            }
        }
        "insertDimension" => {
            let range = &r["range"];
            let t = grid_of(s, &range["sheetId"])?;
            let (rows, start, end) = dimension_range(t, range, true)?;
            if start == 0 && r["inheritFromBefore"].as_bool() == Some(true) {
                return Err("Cannot inherit from before the first row or column.".into());
                // [U]
            }
            if rows {
                t.insert_rows(start, end - start);
            } else {
                t.insert_columns(start, end - start);
            }
        }
        "deleteDimension" => {
            let range = &r["range"];
            let t = grid_of(s, &range["sheetId"])?;
            let (rows, start, end) = dimension_range(t, range, false)?;
            if rows && end - start >= t.row_count {
                return Err("You can't delete all the rows on the sheet.".into());
            }
            if !rows && end - start >= t.column_count {
                return Err("You can't delete all the columns on the sheet.".into());
            }
            if rows {
                t.delete_rows(start, end - start);
            } else {
                t.delete_columns(start, end - start);
            }
        }
        "updateSheetProperties" => {
            let p = &r["properties"];
            let fields = r["fields"].as_str().unwrap_or("");
            if fields.is_empty() {
                return Err("At least one field must be updated (fields is empty).".into());
                // [U]
            }
            let title_taken =
                |s: &Spreadsheet, title: &str, id: i64| s.tabs.iter().any(|t| t.title == title && t.sheet_id != id);
            let id = p["sheetId"].as_i64().unwrap_or(0);
            let mut title = None;
            let (mut rows, mut cols) = (None, None);
            for f in fields.split(',').map(|f| f.trim().replace('/', ".")) {
                match f.as_str() {
                    "*" => {
                        title = p["title"].as_str().map(String::from);
                        rows = Some(p["gridProperties"]["rowCount"].as_u64().unwrap_or(0));
                        cols = Some(p["gridProperties"]["columnCount"].as_u64().unwrap_or(0));
                    }
                    "title" => title = Some(p["title"].as_str().unwrap_or("").to_string()),
                    "gridProperties" => {
                        rows = Some(p["gridProperties"]["rowCount"].as_u64().unwrap_or(0));
                        cols = Some(p["gridProperties"]["columnCount"].as_u64().unwrap_or(0));
                    }
                    "gridProperties.rowCount" => rows = Some(p["gridProperties"]["rowCount"].as_u64().unwrap_or(0)),
                    "gridProperties.columnCount" => {
                        cols = Some(p["gridProperties"]["columnCount"].as_u64().unwrap_or(0))
                    }
                    // Accepted and not modelled.
                    "index"
                    | "hidden"
                    | "tabColor"
                    | "tabColorStyle"
                    | "rightToLeft"
                    | "gridProperties.frozenRowCount"
                    | "gridProperties.frozenColumnCount"
                    | "gridProperties.hideGridlines" => {}
                    other => return Err(format!("Invalid field mask: {other}")), // [U]
                }
            }
            if let Some(t) = &title {
                if t.is_empty() {
                    return Err("The sheet name cannot be empty.".into()); // [U]
                }
                if title_taken(s, t, id) {
                    return Err(format!("A sheet with the name \"{t}\" already exists. Please enter another name."));
                }
            }
            if rows == Some(0) {
                return Err("You can't delete all the rows on the sheet.".into());
            }
            if cols == Some(0) {
                return Err("You can't delete all the columns on the sheet.".into());
            }
            let t = grid_of(s, &p["sheetId"])?;
            if let Some(title) = title {
                t.title = title;
            }
            if let Some(n) = rows {
                t.row_count = n as usize;
            }
            if let Some(n) = cols {
                t.column_count = n as usize;
            }
            t.clip();
        }
        "updateSpreadsheetProperties" => {
            let p = &r["properties"];
            let fields = r["fields"].as_str().unwrap_or("");
            if fields.is_empty() {
                return Err("At least one field must be updated (fields is empty).".into());
                // [U]
            }
            for f in fields.split(',').map(str::trim) {
                let all = f == "*";
                if all || f == "locale" {
                    s.locale = p["locale"].as_str().unwrap_or(DEFAULT_LOCALE).to_string();
                }
                if all || f == "timeZone" {
                    let tz = p["timeZone"].as_str().unwrap_or("");
                    if tz.parse::<chrono_tz::Tz>().is_err() {
                        return Err(format!("Invalid timeZone: {tz}")); // [U]
                    }
                    s.time_zone = tz.to_string();
                }
                if all || f == "title" {
                    s.title = p["title"].as_str().unwrap_or("").to_string();
                }
                if !all && !matches!(f, "locale" | "timeZone" | "title" | "autoRecalc" | "defaultFormat") {
                    return Err(format!("Invalid field mask: {f}")); // [U]
                }
            }
        }
        other => return Err(format!("this request ({other}) is not emulated by the sandbox")),
    }
    s.check_cell_limit()
}

/// Validates and applies every request on a copy; the spreadsheet changes only if all pass.
fn batch_update_spreadsheet(s: &Spreadsheet, body: &Value) -> Result<(Spreadsheet, usize), String> {
    known_fields(body, &["requests", "includeSpreadsheetInResponse", "responseRanges", "responseIncludeGridData"], "")?;
    let requests = match &body["requests"] {
        Value::Array(r) if !r.is_empty() => r,
        Value::Array(_) | Value::Null => return Err("Must specify at least one request.".into()),
        other => {
            return Err(format!(
                "Invalid value at 'requests' (type.googleapis.com/google.apps.sheets.v4.Request), {other}"
            ))
        }
    };
    let mut copy = s.clone();
    for (i, r) in requests.iter().enumerate() {
        let Some(o) = r.as_object() else {
            return Err(format!(
                "Invalid value at 'requests[{i}]' (type.googleapis.com/google.apps.sheets.v4.Request), {r}"
            ));
        };
        let mut keys = o.keys();
        let Some(kind) = keys.next() else {
            return Err(format!("Invalid requests[{i}]: No request set.")); // [U]
        };
        if let Some(second) = keys.next() {
            return Err(format!(
                "Invalid value at 'requests[{i}]' (oneof), oneof field 'kind' is already set. Cannot set '{second}'"
            ));
        }
        let known = matches!(
            kind.as_str(),
            "appendDimension"
                | "appendCells"
                | "insertDimension"
                | "deleteDimension"
                | "updateSheetProperties"
                | "updateSpreadsheetProperties"
        );
        if !known && !UNEMULATED_REQUESTS.contains(&kind.as_str()) {
            return Err(format!(
                "Invalid JSON payload received. Unknown name \"{kind}\" at 'requests[{i}]': Cannot find field."
            ));
        }
        one_request(&mut copy, kind, &o[kind]).map_err(|e| format!("Invalid requests[{i}].{kind}: {e}"))?;
    }
    Ok((copy, requests.len()))
}

// ---------------------------------------------------------------------------------------------
// HTTP handlers

fn opt<'a>(q: &'a [(String, String)], name: &str, default: &'a str) -> &'a str {
    q.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).unwrap_or(default)
}

fn parse_query(raw: Option<String>) -> Vec<(String, String)> {
    raw.map(|r| crate::providers::form_pairs(&r)).unwrap_or_default()
}

#[derive(Deserialize)]
pub struct TokenForm {
    grant_type: String,
    assertion: String,
}

pub async fn token(State(st): State<SandboxState>, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    let expected_aud = format!("{}/google/token", st.base_url());
    st.google.serve(&headers, (Kind::Token, ""), 0, move |g| issue_token(g, &f, &expected_aud)).await
}

fn issue_token(g: &mut Inner, f: &TokenForm, expected_aud: &str) -> Response {
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
    let Some(key) = g.accounts.get(&iss).cloned() else {
        return invalid("Invalid grant: account not found");
    };
    let signed = format!("{}.{}", parts[0], parts[1]);
    let pk = ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key);
    if pk.verify(signed.as_bytes(), &sig).is_err() {
        return invalid("Invalid JWT Signature.");
    }
    if claims["aud"].as_str() != Some(expected_aud) {
        return invalid("Invalid JWT: audience does not match the token URI.");
    }
    let now = chrono::Utc::now().timestamp();
    let (iat, exp) = (claims["iat"].as_i64().unwrap_or(0), claims["exp"].as_i64().unwrap_or(0));
    if exp <= now || iat > now + 300 || exp - iat > 3600 {
        return invalid("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.");
    }
    let access = format!("ya29.sandbox-{}", hex::encode(rand::random::<[u8; 16]>()));
    g.tokens.insert(access.clone(), (iss, Instant::now() + Duration::from_secs(3600)));
    Json(json!({ "access_token": access, "expires_in": 3599, "token_type": "Bearer" })).into_response()
}

/// Drive v3 file fields (a request for another is `Invalid field selection`).
const DRIVE_FIELDS: &[&str] = &[
    "capabilities",
    "kind",
    "id",
    "name",
    "mimeType",
    "description",
    "starred",
    "trashed",
    "explicitlyTrashed",
    "parents",
    "properties",
    "appProperties",
    "spaces",
    "version",
    "webContentLink",
    "webViewLink",
    "iconLink",
    "hasThumbnail",
    "thumbnailLink",
    "thumbnailVersion",
    "viewedByMe",
    "viewedByMeTime",
    "createdTime",
    "modifiedTime",
    "modifiedByMeTime",
    "modifiedByMe",
    "sharedWithMeTime",
    "sharingUser",
    "owners",
    "teamDriveId",
    "driveId",
    "lastModifyingUser",
    "shared",
    "ownedByMe",
    "viewersCanCopyContent",
    "copyRequiresWriterPermission",
    "writersCanShare",
    "permissions",
    "permissionIds",
    "hasAugmentedPermissions",
    "folderColorRgb",
    "originalFilename",
    "fullFileExtension",
    "fileExtension",
    "md5Checksum",
    "sha1Checksum",
    "sha256Checksum",
    "size",
    "quotaBytesUsed",
    "headRevisionId",
    "contentHints",
    "imageMediaMetadata",
    "videoMediaMetadata",
    "isAppAuthorized",
    "exportLinks",
    "shortcutDetails",
    "contentRestrictions",
    "resourceKey",
    "linkShareMetadata",
    "labelInfo",
    "trashedTime",
    "trashingUser",
    "inheritedPermissionsDisabled",
    "downloadRestrictions",
];

pub async fn drive_get(
    State(st): State<SandboxState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = parse_query(raw);
    st.google
        .serve(&headers, (Kind::DriveGet, &id.clone()), 0, move |g| {
            let Some(s) = g.spreadsheets.get(&id) else { return drive_not_found(&id) };
            let can_edit = g.shared_with.get(&id).is_some_and(|users| users.contains(&g.caller));
            let file = json!({
                "capabilities": { "canEdit": can_edit },
                "kind": "drive#file", "id": s.id, "name": s.title, "mimeType": "application/vnd.google-apps.spreadsheet",
                "version": s.version.to_string(), "trashed": false,
                "modifiedTime": s.modified.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "webViewLink": format!("https://docs.google.com/spreadsheets/d/{}/edit?usp=drivesdk", s.id),
            });
            let Some(fields) = q.iter().find(|(k, _)| k == "fields").map(|(_, v)| v.as_str()) else {
                // Without `fields`, v3 answers a minimal default set.
                return Json(json!({ "kind": "drive#file", "id": s.id, "name": s.title, "mimeType": "application/vnd.google-apps.spreadsheet" })).into_response();
            };
            let bad = |f: &str| {
                drive_error(
                    400,
                    "invalidParameter",
                    &format!("Invalid field selection {f}"),
                    &[("locationType", "parameter"), ("location", "fields")],
                )
            };
            let Ok(mask) = Mask::parse(fields) else { return bad(fields) };
            if let Some(f) = mask.fields.keys().find(|f| !DRIVE_FIELDS.contains(&f.as_str())) {
                return bad(f);
            }
            Json(mask.apply(&file)).into_response()
        })
        .await
}

pub async fn spreadsheets_get(
    State(st): State<SandboxState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = parse_query(raw);
    st.google
        .serve(&headers, (Kind::SpreadsheetsGet, &id.clone()), 0, move |g| {
            let Some(s) = g.spreadsheets.get(&id) else { return sheets_not_found() };
            match spreadsheet_json(s, &q) {
                Ok(v) => Json(v).into_response(),
                Err(m) => invalid(&m),
            }
        })
        .await
}

/// `POST spreadsheets/{id}:batchUpdate` (axum delivers `{id}` as `demo:batchUpdate`).
pub async fn spreadsheets_post(
    State(st): State<SandboxState>,
    Path(id_op): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let Some(id) = id_op.strip_suffix(":batchUpdate").map(String::from) else {
        return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found.");
    };
    st.google
        .serve(&headers, (Kind::SpreadsheetsBatchUpdate, &id.clone()), body.len(), move |g| {
            let Some(s) = g.spreadsheets.get(&id) else { return sheets_not_found() };
            let parsed = parse_body(&body).and_then(|b| batch_update_spreadsheet(s, &b));
            match parsed {
                Ok((mut next, n)) => {
                    next.touch();
                    g.spreadsheets.insert(id.clone(), next);
                    Json(json!({ "spreadsheetId": id, "replies": vec![json!({}); n] })).into_response()
                }
                Err(m) => invalid(&m),
            }
        })
        .await
}

pub async fn values_batch_get(
    State(st): State<SandboxState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let q = parse_query(raw);
    st.google
        .serve(&headers, (Kind::ValuesBatchGet, &id.clone()), 0, move |g| {
            let Some(s) = g.spreadsheets.get(&id) else { return sheets_not_found() };
            let opts = match ReadOpts::from_query(&q) {
                Ok(o) => o,
                Err(m) => return invalid(&m),
            };
            let mut out = Vec::new();
            for (_, range) in q.iter().filter(|(k, _)| k == "ranges") {
                match read_range(s, range, opts) {
                    Ok(v) => out.push(v),
                    Err(m) => return invalid(&m),
                }
            }
            let mut body = json!({ "spreadsheetId": id });
            if !out.is_empty() {
                body["valueRanges"] = json!(out);
            }
            Json(body).into_response()
        })
        .await
}

pub async fn values_batch_update(
    State(st): State<SandboxState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    st.google
        .serve(&headers, (Kind::ValuesBatchUpdate, &id.clone()), body.len(), move |g| {
            let Some(s) = g.spreadsheets.get_mut(&id) else { return sheets_not_found() };
            match batch_update_values(s, &body) {
                Ok(v) => Json(v).into_response(),
                Err(m) => invalid(&m),
            }
        })
        .await
}

/// values:batchUpdate: every entry checked against the spreadsheet before anything is
/// written; a refused entry is named `Invalid data[i]: …` and nothing is written.
fn batch_update_values(s: &mut Spreadsheet, body: &[u8]) -> Result<Value, String> {
    let body = parse_body(body)?;
    known_fields(
        &body,
        &[
            "valueInputOption",
            "data",
            "includeValuesInResponse",
            "responseValueRenderOption",
            "responseDateTimeRenderOption",
        ],
        "",
    )?;
    let input = ValueInput::parse(body["valueInputOption"].as_str().unwrap_or(""))?;
    let data = match &body["data"] {
        Value::Array(d) => d.clone(),
        Value::Null => Vec::new(),
        other => {
            return Err(format!(
                "Invalid value at 'data' (type.googleapis.com/google.apps.sheets.v4.ValueRange), {other}"
            ))
        }
    };
    let mut plans = Vec::new();
    for (i, d) in data.iter().enumerate() {
        known_fields(d, &["range", "majorDimension", "values"], &format!("data[{i}]"))?;
        let plan = value_rows(d, &format!("data[{i}].values"))
            .and_then(|values| plan_write(s, d["range"].as_str().unwrap_or(""), values))
            .map_err(|e| format!("Invalid data[{i}]: {e}"))?;
        plans.push(plan);
    }
    let mut responses = Vec::new();
    let (mut rows, mut cols, mut cells) = (0, 0, 0);
    let mut tabs: Vec<usize> = Vec::new();
    for p in &plans {
        let r = apply_write(s, p, input);
        let n = r["updatedCells"].as_u64().unwrap_or(0);
        if n > 0 && !tabs.contains(&p.tab) {
            tabs.push(p.tab);
        }
        rows += r["updatedRows"].as_u64().unwrap_or(0);
        cols = cols.max(r["updatedColumns"].as_u64().unwrap_or(0));
        cells += n;
        responses.push(r);
    }
    let mut out = json!({ "spreadsheetId": s.id, "totalUpdatedRows": rows, "totalUpdatedColumns": cols,
        "totalUpdatedCells": cells, "totalUpdatedSheets": tabs.len() });
    if !responses.is_empty() {
        out["responses"] = json!(responses);
    }
    Ok(out)
}

/// `values/{range}`: GET reads; PUT writes; POST `{range}:append` appends, `{range}:clear` clears.
pub async fn values_range(
    State(st): State<SandboxState>,
    Path((id, range)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
    body: axum::body::Bytes,
) -> Response {
    let q = parse_query(raw);
    let (range, op) = match range.rsplit_once(':') {
        Some((r, op @ ("append" | "clear"))) => (r.to_string(), Some(op)),
        _ => (range, None),
    };
    let kind = match (&method, op) {
        (&Method::GET, None) => Kind::ValuesGet,
        (&Method::PUT, None) => Kind::ValuesUpdate,
        (&Method::POST, Some("append")) => Kind::ValuesAppend,
        (&Method::POST, Some("clear")) => Kind::ValuesClear,
        _ => return google_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Method not found."),
    };
    st.google
        .serve(&headers, (kind, &id.clone()), body.len(), move |g| {
            let Some(s) = g.spreadsheets.get_mut(&id) else { return sheets_not_found() };
            let result = match kind {
                Kind::ValuesGet => ReadOpts::from_query(&q)
                    .and_then(|o| read_range_json(s, &range, o))
                    .map(|text| ([(axum::http::header::CONTENT_TYPE, "application/json")], text).into_response()),
                Kind::ValuesClear => clear(s, &range).map(|v| Json(v).into_response()),
                _ => write_one(s, kind, &range, &q, &body).map(|v| Json(v).into_response()),
            };
            result.unwrap_or_else(|m| invalid(&m))
        })
        .await
}

/// values.update and values.append (no `Invalid data[i]` prefix for these).
fn write_one(
    s: &mut Spreadsheet,
    kind: Kind,
    range: &str,
    q: &[(String, String)],
    body: &[u8],
) -> Result<Value, String> {
    let input = ValueInput::parse(opt(q, "valueInputOption", ""))?;
    let body = parse_body(body)?;
    known_fields(&body, &["range", "majorDimension", "values"], "")?;
    let values = value_rows(&body, "data.values")?;
    if kind == Kind::ValuesAppend {
        let insert_rows = match opt(q, "insertDataOption", "OVERWRITE") {
            "OVERWRITE" => false,
            "INSERT_ROWS" => true,
            other => return Err(bad_enum("insert_data_option", "InsertDataOption", other)),
        };
        return append(s, range, values, input, insert_rows);
    }
    let plan = plan_write(s, range, values)?;
    Ok(apply_write(s, &plan, input))
}

/// values.clear: values go, formats stay.
fn clear(s: &mut Spreadsheet, range: &str) -> Result<Value, String> {
    let (ti, c0, r0, c1, r1) = resolve_read(s, range)?;
    let t = &mut s.tabs[ti];
    for row in t.cells.iter_mut().take(r1 + 1).skip(r0) {
        for cell in row.iter_mut().take(c1 + 1).skip(c0) {
            cell.value = CellData::Empty;
            cell.formula = None;
        }
    }
    let cleared = a1_text(&t.title, c0, r0, c1, r1);
    s.touch();
    Ok(json!({ "spreadsheetId": s.id, "clearedRange": cleared }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::{CellValue, Secret};
    use crate::sandbox::{MetaSettings, Sandbox};
    use crate::sources::google_sheets::auth::ServiceAccount;
    use crate::sources::google_sheets::budget::Budget;
    use crate::sources::google_sheets::client::{SheetsClient, WriteFailure};
    use crate::sources::SourceError;

    fn sheet(locale: &str, tabs: Vec<(&str, Vec<Vec<Value>>)>) -> Spreadsheet {
        let state = GoogleState::new();
        state.seed_with(
            "x",
            "UTC",
            locale,
            ValueInput::Raw,
            tabs.into_iter().map(|(t, r)| (t.to_string(), r)).collect(),
        );
        let g = state.lock();
        g.spreadsheets["x"].clone()
    }

    fn opts(render: &str, dt: &str) -> ReadOpts {
        ReadOpts::from_query(&[("valueRenderOption".into(), render.into()), ("dateTimeRenderOption".into(), dt.into())])
            .unwrap()
    }

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

    /// Recorded: Google quotes a title only when it has to.
    #[test]
    fn titles_are_quoted_only_when_needed() {
        for (title, written) in [
            ("Sheet1", "Sheet1"),
            ("Inscripciones", "Inscripciones"),
            ("Solar", "Solar"),
            ("D3", "'D3'"),
            ("tab01", "'tab01'"),
            ("R1C1", "'R1C1'"),
            ("Test ClientTest test_import_csv", "'Test ClientTest test_import_csv'"),
            ("🌵 test_values_get 1", "'🌵 test_values_get 1'"),
            ("It's", "'It''s'"),
            ("2024", "'2024'"),
        ] {
            assert_eq!(quote_if_needed(title), written, "{title}");
        }
    }

    /// What a person typing each text gets: (locale, typed, UNFORMATTED value, number format
    /// type, FORMATTED_VALUE).
    #[test]
    fn typing_follows_the_ui_and_the_locale() {
        let cases: &[(&str, &str, Value, Option<&str>, &str)] = &[
            ("en_US", "0042", json!(42), Some("NUMBER"), "42"),
            ("en_US", "2,000,000.01", json!(2000000.01), Some("NUMBER"), "2,000,000.01"),
            ("en_US", "= 1 / 1024", json!(0.0009765625), Some("NUMBER"), "0.0009765625"),
            ("en_US", "42.01", json!(42.01), Some("NUMBER"), "42.01"),
            ("es_CL", "+56987654321", json!(56987654321_i64), Some("NUMBER"), "56987654321"),
            ("es_CL", "+56 9 8765 0061", json!("+56 9 8765 0061"), None, "+56 9 8765 0061"),
            ("es_CL", "2026-11-23", json!(46349), Some("DATE"), "2026-11-23"),
            ("en_US", "2026-11-23", json!(46349), Some("DATE"), "2026-11-23"),
            ("es_CL", "23/11/2026", json!(46349), Some("DATE"), "23/11/2026"),
            ("es_AR", "23-11-2026", json!(46349), Some("DATE"), "23/11/2026"),
            ("en_GB", "23/11/2026", json!(46349), Some("DATE"), "23/11/2026"),
            ("fr_FR", "23/11/2026", json!(46349), Some("DATE"), "23/11/2026"),
            ("de_DE", "23.11.2026", json!(46349), Some("DATE"), "23.11.2026"),
            ("en_US", "23/11/2026", json!("23/11/2026"), None, "23/11/2026"),
            ("en_US", "11/23/2026", json!(46349), Some("DATE"), "11/23/2026"),
            ("es_CL", "31/02/2026", json!("31/02/2026"), None, "31/02/2026"),
            ("es_CL", "2026-11-23 10:30", json!(46349.4375), Some("DATE_TIME"), "2026-11-23 10:30:00"),
            ("es_CL", "23/11/2026 10:30:00", json!(46349.4375), Some("DATE_TIME"), "23/11/2026 10:30:00"),
            ("es_CL", "10:30", json!(0.4375), Some("TIME"), "10:30:00"),
            ("en_US", "10:30 PM", json!(0.9375), Some("TIME"), "10:30:00 PM"),
            ("es_CL", "15%", json!(0.15), Some("PERCENT"), "15%"),
            ("en_US", "12.5%", json!(0.125), Some("PERCENT"), "12.5%"),
            ("es_CL", "TRUE", json!(true), None, "TRUE"),
            ("es_CL", "false", json!(false), None, "FALSE"),
            ("es_CL", "'0123", json!("0123"), None, "0123"),
            ("es_CL", "=4/2", json!(2), Some("NUMBER"), "2"),
            ("es_CL", "=-2^2", json!(4), Some("NUMBER"), "4"),
            ("es_CL", "=SUM(1;2)", json!("#NAME?"), None, "#NAME?"),
            ("es_CL", "=1/0", json!("#DIV/0!"), None, "#DIV/0!"),
            ("es_CL", "1,5", json!(1.5), Some("NUMBER"), "1,5"),
            ("es_CL", "2.000.000,01", json!(2000000.01), Some("NUMBER"), "2.000.000,01"),
            ("en_US", "1,5", json!("1,5"), None, "1,5"),
            ("en_US", "$1,000", json!(1000), Some("CURRENCY"), "$1,000.00"),
            ("es_CL", "no tiene", json!("no tiene"), None, "no tiene"),
            ("es_CL", "Sí", json!("Sí"), None, "Sí"),
        ];
        for (locale, typed, value, kind, shown) in cases {
            let c = type_in(typed, locale);
            assert_eq!(&c.unformatted(), value, "{locale} {typed:?}: value");
            assert_eq!(c.format_type().map(FormatType::name), *kind, "{locale} {typed:?}: format");
            assert_eq!(c.formatted(locale), *shown, "{locale} {typed:?}: displayed");
        }
        assert_eq!(type_in("=4/2", "es_CL").formula.as_deref(), Some("=4/2"));
        // Without a year, a date of this year: "1/2" is not a fraction.
        let year = chrono::Utc::now().year();
        let jan2 = date_serial(NaiveDate::from_ymd_opt(year, 2, 1).unwrap());
        assert_eq!(type_in("1/2", "es_CL").unformatted(), json!(jan2));
    }

    #[test]
    fn raw_never_parses_and_formats_stay_with_the_cell() {
        let l = loc("es_CL");
        let c = cell_from_json(&json!("2026-11-23"), ValueInput::Raw, None, &l);
        assert_eq!((c.unformatted(), c.format_type()), (json!("2026-11-23"), None));
        let c = cell_from_json(&json!("=1+1"), ValueInput::Raw, None, &l);
        assert_eq!((c.unformatted(), c.formula), (json!("=1+1"), None));
        // A number written RAW into a date cell displays as a date (the format is the cell's).
        let date = type_in("23/11/2026", "es_CL");
        let c = cell_from_json(&json!(46350), ValueInput::Raw, Some(&date), &l);
        assert_eq!(c.formatted("es_CL"), "24/11/2026");
        // A cell formatted as plain text keeps typed text as it is.
        let text = Cell { format: Some(NumberFormat::Text), ..Cell::default() };
        let c = cell_from_json(&json!("0042"), ValueInput::UserEntered, Some(&text), &l);
        assert_eq!(c.unformatted(), json!("0042"));
    }

    #[test]
    fn reads_trim_render_and_clip_to_the_grid() {
        let s = sheet(
            "es_CL",
            vec![(
                "T",
                vec![
                    vec![json!("ID"), json!("N"), Value::Null],
                    vec![json!(1.0), Value::Null, json!("")],
                    vec![],
                    vec![json!(2), json!(true)],
                ],
            )],
        );
        let v = read_range(&s, "T", opts("UNFORMATTED_VALUE", "SERIAL_NUMBER")).unwrap();
        assert_eq!(
            v,
            json!({ "range": "T!A1:Z1000", "majorDimension": "ROWS", "values": [["ID", "N"], [1], [], [2, true]] })
        );
        // The answer as served, written row by row, says the same.
        for range in ["T", "'T'!A:A", "T!B1:B4", "T!D4:A1", "T!Z1:Z9", "T!A1:ZZ1", "T!C1:C9", "T!A3:B3"] {
            for render in ["UNFORMATTED_VALUE", "FORMATTED_VALUE"] {
                let o = opts(render, "SERIAL_NUMBER");
                let text = read_range_json(&s, range, o).unwrap();
                let served: Value = serde_json::from_slice(&text).unwrap();
                assert_eq!(served, read_range(&s, range, o).unwrap(), "{range} {render}");
            }
        }
        let v = read_range(&s, "'T'!A:A", opts("FORMATTED_VALUE", "SERIAL_NUMBER")).unwrap();
        assert_eq!((&v["range"], &v["values"]), (&json!("T!A1:A1000"), &json!([["ID"], ["1"], [], ["2"]])));
        let v = read_range(&s, "T!B1:B4", opts("FORMATTED_VALUE", "SERIAL_NUMBER")).unwrap();
        assert_eq!(v["values"], json!([["N"], [], [], ["TRUE"]]));
        let v = read_range(&s, "T!D4:A1", opts("UNFORMATTED_VALUE", "SERIAL_NUMBER")).unwrap();
        assert_eq!(v["range"], json!("T!A1:D4"), "reversed ranges are normalised");
        let v = read_range(&s, "T!Z1:Z9", opts("FORMATTED_VALUE", "SERIAL_NUMBER")).unwrap();
        assert!(v.get("values").is_none(), "an empty range has no values key");
        let v = read_range(&s, "T!A1:ZZ1", opts("FORMATTED_VALUE", "SERIAL_NUMBER")).unwrap();
        assert_eq!(v["range"], json!("T!A1:Z1"), "clipped to the grid");
        let mut cols = opts("UNFORMATTED_VALUE", "SERIAL_NUMBER");
        cols.columns = true;
        let v = read_range(&s, "T!A1:B4", cols).unwrap();
        assert_eq!(v["values"], json!([["ID", 1, "", 2], ["N", "", "", true]]));
        for (range, message) in [
            ("Nope!A1", "Unable to parse range: Nope!A1"),
            ("T!AA1", "Range (T!AA1) exceeds grid limits. Max rows: 1000, max columns: 26"),
            ("T!1001:1200", "Range (T!1001:1200) exceeds grid limits. Max rows: 1000, max columns: 26"),
        ] {
            assert_eq!(read_range(&s, range, opts("FORMATTED_VALUE", "SERIAL_NUMBER")).unwrap_err(), message);
        }
        assert_eq!(
            ReadOpts::from_query(&[("valueRenderOption".into(), "UNFORMATTED".into())]).unwrap_err(),
            "Invalid value at 'value_render_option' (type.googleapis.com/google.apps.sheets.v4.ValueRenderOption), \"UNFORMATTED\""
        );
    }

    #[test]
    fn writes_never_grow_the_grid_and_refuse_whole_batches() {
        let mut s = sheet("es_CL", vec![("Tab", vec![vec![json!("ID"), json!("Estado")], vec![json!(1), json!("a")]])]);
        let cases: &[(&str, Value, &str)] = &[
            ("Tab!AA1", json!([["x"]]), "Range (Tab!AA1) exceeds grid limits. Max rows: 1000, max columns: 26"),
            (
                "'Tab'!Z1",
                json!([["x", "y"]]),
                "Range (Tab!Z1:AA1) exceeds grid limits. Max rows: 1000, max columns: 26",
            ),
            (
                "Tab!A1000",
                json!([["x"], ["y"]]),
                "Range (Tab!A1000:A1001) exceeds grid limits. Max rows: 1000, max columns: 26",
            ),
            (
                "Tab!A1001:B1002",
                json!([["x"]]),
                "Range (Tab!A1001:B1002) exceeds grid limits. Max rows: 1000, max columns: 26",
            ),
            (
                "Tab!A1:B1",
                json!([["x", "y", "z"]]),
                "Requested writing within range [Tab!A1:B1], but tried writing to column [C]",
            ),
            (
                "Tab!A1:B1",
                json!([["x"], ["y"]]),
                "Requested writing within range [Tab!A1:B1], but tried writing to row [2]",
            ),
            ("Otra!A1", json!([["x"]]), "Unable to parse range: Otra!A1"),
        ];
        for (range, values, message) in cases {
            let body = json!({ "valueInputOption": "RAW", "data": [
                { "range": "Tab!B2", "values": [["changed"]] },
                { "range": range, "values": values } ] });
            let err = batch_update_values(&mut s, body.to_string().as_bytes()).unwrap_err();
            assert_eq!(err, format!("Invalid data[1]: {message}"), "{range}");
            let plan = value_rows(&json!({ "values": values }), "data.values").and_then(|v| plan_write(&s, range, v));
            assert_eq!(plan.err().as_deref(), Some(*message), "values.update {range}: no prefix");
        }
        assert_eq!(s.tabs[0].get(1, 1).unwrap().unformatted(), json!("a"), "nothing of a refused batch is written");
        let long = "x".repeat(MAX_CELL_CHARS + 1);
        let body = json!({ "valueInputOption": "RAW", "data": [{ "range": "Tab!B2", "values": [[long]] }] });
        assert_eq!(
            batch_update_values(&mut s, body.to_string().as_bytes()).unwrap_err(),
            "Invalid data[0]: Your input contains more than the maximum of 50000 characters in a single cell."
        );
        let body = json!({ "valueInputOption": "RAW", "data": [{ "range": "Tab!B2", "values": [["x".repeat(MAX_CELL_CHARS)]] }] });
        assert!(batch_update_values(&mut s, body.to_string().as_bytes()).is_ok(), "exactly 50,000 is fine");
        let body =
            json!({ "valueInputOption": "RAW", "data": [{ "range": "Tab!B2", "values": [["x"]], "valueRange": 1 }] });
        assert_eq!(
            batch_update_values(&mut s, body.to_string().as_bytes()).unwrap_err(),
            "Invalid JSON payload received. Unknown name \"valueRange\" at 'data[0]': Cannot find field."
        );
        let body = json!({ "data": [{ "range": "Tab!B2", "values": [["x"]] }] });
        assert_eq!(
            batch_update_values(&mut s, body.to_string().as_bytes()).unwrap_err(),
            "Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED"
        );
        // Append grows the grid by the rows it needs.
        s.tabs[0].row_count = 2;
        let out =
            append(&mut s, "Tab!A1", vec![vec![json!(2), json!("b")], vec![json!(3)]], ValueInput::Raw, false).unwrap();
        assert_eq!(out["tableRange"], json!("Tab!A1:B2"));
        assert_eq!(out["updates"]["updatedRange"], json!("Tab!A3:B4"));
        assert_eq!((s.tabs[0].row_count, s.tabs[0].column_count), (4, 26));
    }

    /// Recorded (gspread `test_get_all_values_date_time_render_options`): written USER_ENTERED
    /// in an en_US spreadsheet, read with each render option.
    #[tokio::test]
    async fn recorded_round_trip_through_every_render_option() {
        let e = Env::new(300_000).await;
        e.sb.google().seed_with("rt", "Etc/GMT", "en_US", ValueInput::Raw, vec![("Sheet1".into(), vec![])]);
        let body = json!({ "values": [["=4/2", "2020-01-01", "string", 53], ["=3/2", 0.12, "1999-01-02", ""]] });
        let (status, v) =
            e.send(Method::PUT, &e.url("rt/values/%27Sheet1%27!A1:D2?valueInputOption=USER_ENTERED"), body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            v,
            json!({ "spreadsheetId": "rt", "updatedRange": "Sheet1!A1:D2", "updatedRows": 2, "updatedColumns": 4, "updatedCells": 8 })
        );
        for (query, values) in [
            (
                "valueRenderOption=UNFORMATTED_VALUE&dateTimeRenderOption=SERIAL_NUMBER",
                json!([[2, 43831, "string", 53], [1.5, 0.12, 36162]]),
            ),
            (
                "valueRenderOption=UNFORMATTED_VALUE&dateTimeRenderOption=FORMATTED_STRING",
                json!([[2, "2020-01-01", "string", 53], [1.5, 0.12, "1999-01-02"]]),
            ),
            (
                "valueRenderOption=FORMATTED_VALUE&dateTimeRenderOption=SERIAL_NUMBER",
                json!([["2", "2020-01-01", "string", "53"], ["1.5", "0.12", "1999-01-02"]]),
            ),
            (
                "valueRenderOption=FORMATTED_VALUE&dateTimeRenderOption=FORMATTED_STRING",
                json!([["2", "2020-01-01", "string", "53"], ["1.5", "0.12", "1999-01-02"]]),
            ),
            ("valueRenderOption=FORMULA", json!([["=4/2", 43831, "string", 53], ["=3/2", 0.12, 36162]])),
        ] {
            let (status, v) = e.get(&e.url(&format!("rt/values/%27Sheet1%27!A1:D2?{query}"))).await;
            assert_eq!(status, 200);
            assert_eq!(v, json!({ "range": "Sheet1!A1:D2", "majorDimension": "ROWS", "values": values }), "{query}");
        }
        let (_, v) = e.get(&e.url("rt/values/Sheet1!D4")).await;
        assert_eq!(v, json!({ "range": "Sheet1!D4", "majorDimension": "ROWS" }), "recorded empty range");
        e.stop().await;
    }

    #[tokio::test]
    async fn the_clients_metadata_and_format_calls_see_typed_cells() {
        let e = Env::new(300_000).await;
        let rows = vec![
            vec![
                json!("ID"),
                json!("Fecha"),
                json!("Hora"),
                json!("Avance"),
                json!("Nombre"),
                json!("Cita"),
                json!("Teléfono"),
            ],
            vec![
                json!(1),
                json!("23/11/2026"),
                json!("10:30"),
                json!("15%"),
                json!("Ana"),
                json!("2026-11-23 10:30"),
                json!("+56987654321"),
            ],
            vec![json!(2), json!("24/11/2026")],
        ];
        e.sb.google().seed_typed("s", "America/Santiago", "es_CL", vec![("Inscripciones".into(), rows)]);
        let meta = e.client.metadata().await.unwrap();
        assert_eq!((meta.time_zone.as_str(), meta.locale.as_str()), ("America/Santiago", "es_CL"));
        assert_eq!((meta.tabs[0].title.as_str(), meta.tabs[0].rows, meta.tabs[0].columns), ("Inscripciones", 1000, 26));
        let formats = e.client.formats("'Inscripciones'!2:51").await.unwrap();
        let f = |s: &str| Some(s.to_string());
        assert_eq!(
            formats,
            vec![
                vec![f("NUMBER"), f("DATE"), f("TIME"), f("PERCENT"), None, f("DATE_TIME"), f("NUMBER")],
                vec![f("NUMBER"), f("DATE")],
            ]
        );
        let values = e.client.values("'Inscripciones'").await.unwrap();
        assert_eq!(
            values[1],
            [1.0, 46349.0, 0.4375, 0.15]
                .map(CellValue::Number)
                .into_iter()
                .chain([CellValue::Text("Ana".into()), CellValue::Number(46349.4375), CellValue::Number(56987654321.0)])
                .collect::<Vec<_>>()
        );
        // The masks return only what they name; empty cells are {}.
        let (_, v) =
            e.get(&e.url("s?fields=properties(timeZone,locale),sheets.properties(sheetId,title,gridProperties)")).await;
        assert_eq!(v["properties"], json!({ "timeZone": "America/Santiago", "locale": "es_CL" }));
        assert_eq!(v["sheets"][0]["properties"].as_object().unwrap().len(), 3);
        assert!(v.get("spreadsheetId").is_none());
        let (_, v) = e.get(&e.url("s?ranges=Inscripciones!A3:C3&includeGridData=true&fields=sheets.data.rowData.values.effectiveFormat.numberFormat.type")).await;
        assert_eq!(
            v,
            json!({ "sheets": [ { "data": [ { "rowData": [ { "values": [
            { "effectiveFormat": { "numberFormat": { "type": "NUMBER" } } },
            { "effectiveFormat": { "numberFormat": { "type": "DATE" } } } ] } ] } ] } ] })
        );
        let (_, v) = e.get(&e.url("s?ranges=Inscripciones!E2:G2&includeGridData=true&fields=sheets.data.rowData.values.effectiveFormat.numberFormat.type")).await;
        assert_eq!(v["sheets"][0]["data"][0]["rowData"][0]["values"][0], json!({}), "a text cell has no number format");
        let (status, v) = e.get(&e.url("s?ranges=Inscripciones!2000:2001&includeGridData=true")).await;
        assert_eq!(
            (status, v["error"]["message"].as_str()),
            (400, Some("Range (Inscripciones!2000:2001) exceeds grid limits. Max rows: 1000, max columns: 26"))
        );
        // rows(), cell_by_key(), typed edits.
        let g = e.sb.google();
        assert_eq!(g.rows("s", "Inscripciones")[2], vec![json!(2), json!(46350)]);
        assert_eq!(g.cell_by_key("s", "Inscripciones", "ID", "1", "Fecha").as_deref(), Some("23/11/2026"));
        assert_eq!(g.cell_by_key("s", "Inscripciones", "ID", "1", "Teléfono").as_deref(), Some("56987654321"));
        assert!(g.edit_by_key_typed("s", "Inscripciones", "ID", "2", "Hora", json!("9:05")));
        assert_eq!(g.cell_at("s", "Inscripciones", "C3").unwrap().format_type(), Some(FormatType::Time));
        assert!(g.edit_by_key("s", "Inscripciones", "ID", "2", "Nombre", json!("0042")));
        assert_eq!(g.cell_by_key("s", "Inscripciones", "ID", "2", "Nombre").as_deref(), Some("0042"));
        e.stop().await;
    }

    #[tokio::test]
    async fn spreadsheets_batch_update_grows_grids_atomically() {
        let e = Env::new(300_000).await;
        e.sb.google().seed("s", "UTC", vec![("T".into(), vec![vec![json!("a")], vec![json!("b")]])]);
        let id = e.client.metadata().await.unwrap().tabs[0].sheet_id;
        e.client.append_columns(id, 4).await.unwrap();
        assert_eq!(e.sb.google().grid("s", "T"), Some((1000, 30)));
        assert_eq!(e.sb.google().count(Kind::SpreadsheetsBatchUpdate), 1);
        let url = e.url("s:batchUpdate");
        let cases: &[(Value, &str)] = &[
            (json!([{ "appendDimension": { "sheetId": id, "dimension": "ROWS", "length": 5 } },
                    { "appendDimension": { "sheetId": 999, "dimension": "ROWS", "length": 5 } }]),
             "Invalid requests[1].appendDimension: No grid with id: 999"),
            (json!([{ "appendDimension": { "sheetId": id, "dimension": "ROWS", "length": 10_000_000 } }]),
             "Invalid requests[0].appendDimension: This action would increase the number of cells in the workbook above the limit of 10000000 cells."),
            (json!([{ "updateSheetProperties": { "properties": { "sheetId": id, "gridProperties": { "rowCount": 0 } }, "fields": "gridProperties.rowCount" } }]),
             "Invalid requests[0].updateSheetProperties: You can't delete all the rows on the sheet."),
            (json!([{ "appendDimensions": {} }]),
             "Invalid JSON payload received. Unknown name \"appendDimensions\" at 'requests[0]': Cannot find field."),
            (json!([{ "appendDimension": {}, "insertDimension": {} }]),
             "Invalid value at 'requests[0]' (oneof), oneof field 'kind' is already set. Cannot set 'insertDimension'"),
            (json!([]), "Must specify at least one request."),
        ];
        for (requests, message) in cases {
            let (status, v) = e.send(Method::POST, &url, json!({ "requests": requests })).await;
            assert_eq!((status, v["error"]["message"].as_str()), (400, Some(*message)));
        }
        assert_eq!(e.sb.google().grid("s", "T"), Some((1000, 30)), "refused batches change nothing");
        let requests = json!({ "requests": [
            { "insertDimension": { "range": { "sheetId": id, "dimension": "ROWS", "startIndex": 1, "endIndex": 3 }, "inheritFromBefore": false } },
            { "updateSheetProperties": { "properties": { "sheetId": id, "gridProperties": { "columnCount": 3 } }, "fields": "gridProperties/columnCount" } } ] });
        let (status, v) = e.send(Method::POST, &url, requests).await;
        assert_eq!((status, v), (200, json!({ "spreadsheetId": "s", "replies": [{}, {}] })));
        assert_eq!(e.sb.google().grid("s", "T"), Some((1002, 3)));
        assert_eq!(e.sb.google().rows("s", "T"), vec![vec![json!("a")], vec![], vec![], vec![json!("b")]]);
        e.sb.google().set_quota(100, 0);
        let (status, v) = e
            .send(
                Method::POST,
                &url,
                json!({ "requests": [{ "appendDimension": { "sheetId": id, "dimension": "ROWS", "length": 1 } }] }),
            )
            .await;
        assert_eq!((status, v["error"]["status"].as_str()), (429, Some("RESOURCE_EXHAUSTED")), "a write for quotas");
        e.stop().await;
    }

    #[tokio::test]
    async fn payload_limit_answers_400_in_googles_shape() {
        let e = Env::new(300_000).await;
        e.sb.google().seed("s", "UTC", vec![("T".into(), vec![vec![json!("a")]])]);
        e.sb.google().set_payload_limit(1000);
        let body = json!({ "valueInputOption": "RAW", "data": [{ "range": "T!A2", "values": [["y".repeat(2000)]] }] });
        let (status, v) = e.send(Method::POST, &e.url("s/values:batchUpdate"), body).await;
        assert_eq!(status, 400);
        assert_eq!(
            v,
            json!({ "error": { "code": 400, "message": "Request payload size exceeds the limit: 1000 bytes.", "status": "INVALID_ARGUMENT",
            "errors": [{ "domain": "global", "message": "Request payload size exceeds the limit: 1000 bytes.", "reason": "badRequest" }] } })
        );
        match e
            .client
            .batch_update(&[("T!A2".into(), "y".repeat(2000))], crate::sources::google_sheets::client::Paid::Now)
            .await
        {
            Err(WriteFailure::Refused(b)) => assert!(b.is_payload_too_large()),
            other => panic!("{:?}", other.err().map(|_| "not refused")),
        }
        // Beyond axum's own 2 MB default: Google's limit applies, not the framework's.
        e.sb.google().set_payload_limit(DEFAULT_PAYLOAD_LIMIT);
        let body = json!({ "valueInputOption": "RAW", "data": (0..60).map(|i| json!({ "range": format!("T!A{}", i + 2), "values": [["z".repeat(49_000)]] })).collect::<Vec<_>>() });
        let (status, _) = e.send(Method::POST, &e.url("s/values:batchUpdate"), body).await;
        assert_eq!(status, 200);
        e.stop().await;
    }

    #[tokio::test]
    async fn drive_answers_in_its_legacy_shape() {
        let e = Env::new(300_000).await;
        e.sb.google().seed("s", "UTC", vec![("T".into(), vec![])]);
        let drive = |id: &str| {
            format!("{}drive/v3/files/{id}?fields=version,modifiedTime&supportsAllDrives=true", e.sb.drive_base_url())
        };
        let (status, v) = e.get(&drive("s")).await;
        assert_eq!((status, v["version"].as_str()), (200, Some("1")));
        assert_eq!(v.as_object().unwrap().len(), 2);
        let (status, v) = e.get(&drive("nope")).await;
        assert_eq!(status, 404);
        assert_eq!(
            v,
            json!({ "error": { "code": 404, "message": "File not found: nope.", "errors": [{
            "domain": "global", "reason": "notFound", "message": "File not found: nope.", "location": "fileId", "locationType": "parameter" }] } })
        );
        e.sb.google().inject(GoogleFault { status: 403, count: 1, scope: Some("drive".into()) });
        e.sb.google().inject(GoogleFault { status: 429, count: 1, scope: Some("drive".into()) });
        let (status, v) = e.get(&drive("s")).await;
        assert_eq!(status, 403);
        assert_eq!(
            v,
            json!({ "error": { "errors": [{ "domain": "usageLimits", "reason": "userRateLimitExceeded", "message": "User Rate Limit Exceeded" }],
            "code": 403, "message": "User Rate Limit Exceeded" } })
        );
        assert!(
            matches!(e.client.drive_version().await, Err(SourceError::RateLimited { .. })),
            "429 rateLimitExceeded"
        );
        e.sb.google().inject(GoogleFault { status: 404, count: 1, scope: Some("drive".into()) });
        let (status, v) = e.get(&drive("s")).await;
        assert_eq!((status, v["error"]["message"].as_str()), (404, Some("File not found: s.")));
        let (status, v) = e.get(&format!("{}drive/v3/files/s?fields=versions", e.sb.drive_base_url())).await;
        assert_eq!((status, v["error"]["message"].as_str()), (400, Some("Invalid field selection versions")));
        e.stop().await;
    }

    #[test]
    fn faults_are_validated() {
        let cases: &[(Value, Option<&str>)] = &[
            (json!({ "status": 429, "count": 2, "scope": "drive" }), None),
            (json!({ "status": 503, "count": 1 }), None),
            (json!({ "timeout": true, "scope": "read" }), None),
            (json!({ "delay_ms": 200, "scope": "token" }), None),
            (json!({ "status": 500, "delay_ms": 200, "applied": true, "scope": "write" }), None),
            (
                json!({ "status": 429, "count": 1, "scope": "wirte" }),
                Some("unknown fault scope 'wirte' (read, write, drive, token or any)"),
            ),
            (json!({ "status": 200, "count": 1 }), Some("status 200 is not an HTTP error status (400-599)")),
            (json!({ "status": 500, "count": 0 }), Some("count must be at least 1")),
            (json!({ "timeout": true, "status": 500 }), Some("a timeout never answers, so it takes no status")),
            (json!({ "count": 3 }), Some("a fault needs a status, timeout: true, delay_ms or cut: true")),
            (json!({ "cut": true, "scope": "read" }), None),
            (
                json!({ "cut": true, "status": 500 }),
                Some("a cut answer is the normal one cut short: it takes no status, timeout, delay_ms or applied"),
            ),
        ];
        let g = GoogleState::new();
        for (json, error) in cases {
            let spec: FaultSpec = serde_json::from_value(json.clone()).unwrap();
            assert_eq!(g.try_inject(spec).err().as_deref(), *error, "{json}");
        }
        let typo = serde_json::from_value::<FaultSpec>(json!({ "status": 500, "scopes": "write" }));
        assert!(typo.unwrap_err().to_string().contains("unknown field `scopes`"));
    }

    #[test]
    #[should_panic(expected = "unknown fault scope 'reads'")]
    fn inject_panics_on_a_typo() {
        GoogleState::new().inject(GoogleFault { status: 429, count: 1, scope: Some("reads".into()) });
    }

    #[tokio::test]
    async fn timeouts_delays_and_applied_faults() {
        let e = Env::new(400).await;
        let g = e.sb.google();
        g.seed("s", "UTC", vec![("T".into(), vec![vec![json!("ID"), json!("Estado")], vec![json!(1)]])]);
        e.client.metadata().await.unwrap(); // a token first: token faults are their own scope
        g.try_inject(FaultSpec { timeout: true, scope: Some("read".into()), ..FaultSpec::default() }).unwrap();
        let started = Instant::now();
        let err = e.client.values("T").await.unwrap_err();
        assert!(matches!(err, SourceError::Timeout { .. }), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        g.try_inject(FaultSpec { delay_ms: Some(250), scope: Some("read".into()), ..FaultSpec::default() }).unwrap();
        let started = Instant::now();
        assert_eq!(e.client.values("T").await.unwrap()[1], vec![CellValue::Number(1.0)]);
        assert!(started.elapsed() >= Duration::from_millis(250), "answered late");
        // Applied: the write happens, the client sees a 500.
        g.try_inject(FaultSpec {
            status: Some(500),
            applied: true,
            scope: Some("write".into()),
            ..FaultSpec::default()
        })
        .unwrap();
        let r = e
            .client
            .batch_update(&[("T!B2".into(), "sent".into())], crate::sources::google_sheets::client::Paid::Now)
            .await;
        assert!(matches!(r, Err(WriteFailure::Later(SourceError::Transient(_)))));
        assert_eq!(g.cell_by_key("s", "T", "ID", "1", "Estado").as_deref(), Some("sent"));
        // Not applied: nothing happens.
        g.inject(GoogleFault { status: 503, count: 1, scope: Some("write".into()) });
        assert!(e
            .client
            .batch_update(&[("T!B2".into(), "again".into())], crate::sources::google_sheets::client::Paid::Now)
            .await
            .is_err());
        assert_eq!(g.cell_by_key("s", "T", "ID", "1", "Estado").as_deref(), Some("sent"));
        e.stop().await;
    }

    #[tokio::test]
    async fn actions_run_right_after_the_next_answer_of_their_kind() {
        let e = Env::new(300_000).await;
        let g = e.sb.google();
        let rows = vec![
            vec![json!("ID"), json!("Nombre")],
            vec![json!(10), json!("beta")],
            vec![json!(9), json!("Álvaro")],
            vec![json!(2), json!("Carla")],
        ];
        g.seed("s", "UTC", vec![("T".into(), rows)]);
        assert!(
            g.try_after_next(Kind::ValuesBatchGet, SheetAction::sort("s", "T", "Nombres", false)).is_err(),
            "typo in the column"
        );
        g.after_next(Kind::ValuesBatchGet, SheetAction::sort("s", "T", "ID", false));
        g.after_next(
            Kind::ValuesBatchUpdate,
            SheetAction::insert_row("s", "T", Some(2), vec![json!(1), json!("nuevo")]),
        );
        let before =
            e.client.batch_get(&["T!A:A".into()], crate::sources::google_sheets::client::Paid::Now).await.unwrap();
        assert_eq!(
            (0..4).map(|i| before[0].first(i)).collect::<Vec<_>>(),
            ["ID", "10", "9", "2"],
            "the answer is from before"
        );
        assert_eq!(g.pending_actions(), 1);
        let ids: Vec<Value> = g.rows("s", "T").iter().map(|r| r[0].clone()).collect();
        assert_eq!(ids, vec![json!("ID"), json!(2), json!(9), json!(10)], "numbers sort as numbers");
        e.client
            .batch_update(&[("T!B2".into(), "x".into())], crate::sources::google_sheets::client::Paid::Now)
            .await
            .unwrap();
        assert_eq!(g.rows("s", "T")[1], vec![json!(1), json!("nuevo")]);
        assert_eq!(g.grid("s", "T"), Some((1001, 26)), "an inserted row grows the grid");
        assert!(g.sort_by("s", "T", "Nombre", true));
        let names: Vec<Value> = g.rows("s", "T").iter().skip(1).map(|r| r[1].clone()).collect();
        assert_eq!(names, vec![json!("x"), json!("nuevo"), json!("beta"), json!("Álvaro")], "case and accents ignored");
        e.stop().await;
    }

    #[tokio::test]
    async fn admin_endpoints_seed_typed_and_refuse_meaningless_faults() {
        let e = Env::new(300_000).await;
        let admin = |rest: &str| format!("{}/admin/google/{rest}", e.sb.base_url());
        let seed = json!({ "time_zone": "UTC", "locale": "en_US", "user_entered": true,
            "tabs": [{ "title": "T", "rows": [["ID", "Fecha"], [1, "11/23/2026"], [2, "23/11/2026"]] }] });
        let r = e.http.put(admin("spreadsheets/s")).json(&seed).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            e.sb.google().rows("s", "T")[1..],
            [vec![json!(1), json!(46349)], vec![json!(2), json!("23/11/2026")]]
        );
        let (_, v) = e.get(&e.url("s?fields=properties.locale")).await;
        assert_eq!(v, json!({ "properties": { "locale": "en_US" } }));
        let edit =
            json!({ "key_column": "ID", "key": "2", "column": "Fecha", "value": "12/24/2026", "user_entered": true });
        let r = e.http.post(admin("spreadsheets/s/tabs/T/edit")).json(&edit).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(e.sb.google().cell_at("s", "T", "B3").unwrap().format_type(), Some(FormatType::Date));
        for (fault, reason) in [
            (json!({ "status": 429, "count": 1, "scope": "reads" }), "unknown fault scope 'reads'"),
            (json!({ "status": 429, "count": 1, "scopes": "read" }), "unknown field `scopes`"),
            (json!({ "count": 1 }), "a fault needs a status"),
        ] {
            let r = e.http.post(admin("faults")).json(&fault).send().await.unwrap();
            assert_eq!(r.status(), 400);
            let body: Value = r.json().await.unwrap();
            assert!(body["error"].as_str().unwrap().contains(reason), "{body}");
        }
        let r = e.http.post(admin("faults")).json(&json!({ "timeout": true, "scope": "read" })).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let r = e.http.delete(admin("faults")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let after = json!({ "kind": "values.get", "action": { "action": "delete_row", "spreadsheet": "s", "tab": "T", "row": 2 } });
        let r = e.http.post(admin("after")).json(&after).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(e.client.values("T").await.unwrap().len(), 3, "no fault left; the row goes after the answer");
        assert_eq!(e.sb.google().rows("s", "T").len(), 2);
        let bad = json!({ "kind": "values.got", "action": { "action": "delete_row", "spreadsheet": "s", "tab": "T", "row": 2 } });
        assert_eq!(e.http.post(admin("after")).json(&bad).send().await.unwrap().status(), 400);
        e.stop().await;
    }

    /// A sandbox, an HTTP client with a token, and recado's own Sheets client for spreadsheet `s`.
    struct Env {
        sb: Sandbox,
        http: reqwest::Client,
        account: ServiceAccount,
        client: SheetsClient,
    }

    impl Env {
        async fn new(timeout_ms: u64) -> Env {
            let sb = Sandbox::start(([127, 0, 0, 1], 0).into(), MetaSettings::default()).await.unwrap();
            sb.google().set_quota(1000, 1000);
            let http = reqwest::Client::new();
            let key = Secret::new(sb.service_account_key("unit@sandbox.iam.gserviceaccount.com"));
            // The spreadsheets these tests seed, shared with the account as a person would.
            for id in ["s", "rt"] {
                sb.google().share(id, "unit@sandbox.iam.gserviceaccount.com");
            }
            let account = ServiceAccount::new(&key, http.clone(), Duration::from_secs(5)).unwrap();
            let client = SheetsClient::new(
                http.clone(),
                account.clone(),
                (&sb.sheets_base_url(), &sb.drive_base_url()),
                "s",
                (Arc::new(Budget::new(1000)), Arc::new(Budget::new(1000))),
                Duration::from_millis(timeout_ms),
            );
            Env { sb, http, account, client }
        }

        fn url(&self, rest: &str) -> String {
            format!("{}v4/spreadsheets/{rest}", self.sb.sheets_base_url())
        }

        async fn send(&self, method: Method, url: &str, body: Value) -> (u16, Value) {
            let token = self.account.token().await.unwrap();
            let r = self.http.request(method, url).bearer_auth(token.expose()).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        }

        async fn get(&self, url: &str) -> (u16, Value) {
            let token = self.account.token().await.unwrap();
            let r = self.http.get(url).bearer_auth(token.expose()).send().await.unwrap();
            (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
        }

        async fn stop(self) {
            self.sb.google().release_held();
            self.sb.stop().await;
        }
    }
}
