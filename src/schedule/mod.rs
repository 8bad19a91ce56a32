//! Time, purely: dates read from cells, offsets, the local time a reminder fires, cron
//! occurrences, sending windows (quiet hours) and lateness. Every function takes `now` or a
//! time as input; nothing here reads the clock.
//!
//! Local times are resolved in an IANA time zone with daylight-saving care: a local time that
//! does not exist (the spring-forward gap) moves to the first minute that does; an ambiguous one
//! (the autumn fold) takes the earlier instant. Day offsets move on the local calendar, so "two
//! days before at 10:00" stays 10:00 across a DST change; hour and minute offsets are absolute.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Datelike, Days, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Tz;

/// The largest offset a date rule may have: ten years either way.
pub const MAX_OFFSET_DAYS: i64 = 3660;

/// How far from the date a reminder fires: `-2d`, `-6w`, `+3h`, `-90m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Offset {
    /// Calendar days (weeks are 7 days).
    pub days: i64,
    /// Absolute minutes.
    pub minutes: i64,
}

impl FromStr for Offset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let bad = || format!("expected an offset such as -2d, -6w, +3h or -30m, got '{s}'");
        let (sign, rest) = match t.strip_prefix('-') {
            Some(r) => (-1, r),
            None => (1, t.strip_prefix('+').unwrap_or(t)),
        };
        let split = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = rest.split_at(split);
        if num.len() > 9 {
            return Err(format!("offset '{s}' is far too large (at most {MAX_OFFSET_DAYS} days)"));
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        let n = sign * n;
        let offset = match unit {
            "m" | "min" => Offset { days: 0, minutes: n },
            "h" => Offset { days: 0, minutes: n * 60 },
            "d" => Offset { days: n, minutes: 0 },
            "w" => Offset { days: n * 7, minutes: 0 },
            _ => return Err(bad()),
        };
        if offset.days.abs() > MAX_OFFSET_DAYS || offset.minutes.abs() > MAX_OFFSET_DAYS * 1440 {
            return Err(format!("offset '{s}' is too large (at most {MAX_OFFSET_DAYS} days)"));
        }
        Ok(offset)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.days, self.minutes) {
            (d, 0) if d % 7 == 0 && d != 0 => write!(f, "{:+}w", d / 7),
            (d, 0) => write!(f, "{d:+}d"),
            (0, m) if m % 60 == 0 => write!(f, "{:+}h", m / 60),
            (0, m) => write!(f, "{m:+}m"),
            (d, m) => write!(f, "{d:+}d{m:+}m"),
        }
    }
}

/// The order of day, month and year in text dates (`21/11/2026` is day-month-year).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DateOrder {
    #[default]
    Dmy,
    Mdy,
    Ymd,
}

impl FromStr for DateOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_lowercase().as_str() {
            "dmy" | "dd/mm/yyyy" => Ok(DateOrder::Dmy),
            "mdy" | "mm/dd/yyyy" => Ok(DateOrder::Mdy),
            "ymd" | "yyyy/mm/dd" => Ok(DateOrder::Ymd),
            _ => Err(format!("expected dmy, mdy or ymd, got '{s}'")),
        }
    }
}

/// A date read from a cell, with its time of day when it had one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateValue {
    pub date: NaiveDate,
    pub time: Option<NaiveTime>,
}

impl fmt::Display for DateValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.time {
            Some(t) => write!(f, "{}T{}", self.date, t.format("%H:%M")),
            None => write!(f, "{}", self.date),
        }
    }
}

/// Serial day numbers count days from 1899-12-30; the fraction is the time of day.
fn from_serial(n: f64) -> Option<DateValue> {
    if !n.is_finite() || !(1.0..=2_958_465.0).contains(&n) {
        return None;
    }
    let days = n.floor();
    let date = NaiveDate::from_ymd_opt(1899, 12, 30)?.checked_add_days(Days::new(days as u64))?;
    let secs = ((n - days) * 86_400.0).round() as u32;
    let time = if secs == 0 || secs >= 86_400 { None } else { NaiveTime::from_num_seconds_from_midnight_opt(secs, 0) };
    Some(DateValue { date, time })
}

/// Reads a date from a field's canonical text: a serial day number (how date fields arrive from
/// tabular sources), ISO `2026-11-21[ 10:30]`, or day/month/year text in `order`
/// (`21/11/2026`, `21-11-26 10:30`, `21.11.2026`).
pub fn parse_date(text: &str, order: DateOrder) -> Result<DateValue, String> {
    let t = text.trim();
    // The text goes to logs: a phone pasted into a date column is shown masked.
    let bad = || {
        format!("'{}' is not a date (expected a date cell, 2026-11-21 or 21/11/2026)", crate::domain::mask_if_phone(t))
    };
    if t.is_empty() {
        return Err("the date is empty".into());
    }
    if let Ok(n) = t.replace(',', ".").parse::<f64>() {
        return from_serial(n).ok_or_else(bad);
    }
    let (date_part, time_part) = match t.split_once(['T', ' ']) {
        Some((d, rest)) => (d, Some(rest.trim())),
        None => (t, None),
    };
    let time = match time_part {
        None | Some("") => None,
        Some(tp) => Some(
            NaiveTime::parse_from_str(tp, "%H:%M:%S")
                .or_else(|_| NaiveTime::parse_from_str(tp, "%H:%M"))
                .or_else(|_| NaiveTime::parse_from_str(tp.trim_end_matches('Z'), "%H:%M:%S%.f"))
                .map_err(|_| bad())?,
        ),
    };
    let parts: Vec<&str> = date_part.split(['/', '-', '.']).collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit())) {
        return Err(bad());
    }
    let nums: Vec<i32> = parts.iter().map(|p| p.parse().unwrap_or(-1)).collect();
    // A four-digit first part is always year-month-day, whatever the configured order.
    let (y, m, d) = if parts[0].len() == 4 {
        (nums[0], nums[1], nums[2])
    } else {
        match order {
            DateOrder::Dmy => (nums[2], nums[1], nums[0]),
            DateOrder::Mdy => (nums[2], nums[0], nums[1]),
            DateOrder::Ymd => (nums[0], nums[1], nums[2]),
        }
    };
    let y = if (0..100).contains(&y) { 2000 + y } else { y };
    let date = NaiveDate::from_ymd_opt(y, m as u32, d as u32).ok_or_else(bad)?;
    Ok(DateValue { date, time })
}

/// The instant a local date-time names in `tz`: the gap moves forward, the fold takes the
/// earlier instant.
pub fn resolve_local(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(a, b) => a.min(b).with_timezone(&Utc),
        LocalResult::None => {
            for m in 1..=180 {
                if let LocalResult::Single(t) | LocalResult::Ambiguous(t, _) =
                    tz.from_local_datetime(&(local + chrono::Duration::minutes(m)))
                {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

/// When a date rule fires: the date moved by `offset.days` on the local calendar, at a local
/// time, then moved by `offset.minutes`. The local time is `at` for day offsets ("the day before
/// at 10:00"); for hour and minute offsets it is the date's own time when it has one ("3 hours
/// before the 15:00 appointment"), else `at`, else midnight.
pub fn fire_at(date: &DateValue, offset: Offset, at: Option<NaiveTime>, tz: Tz) -> Option<DateTime<Utc>> {
    let day = if offset.days >= 0 {
        date.date.checked_add_days(Days::new(offset.days as u64))?
    } else {
        date.date.checked_sub_days(Days::new(offset.days.unsigned_abs()))?
    };
    let time = if offset.minutes == 0 { at.or(date.time) } else { date.time.or(at) }.unwrap_or(NaiveTime::MIN);
    Some(resolve_local(tz, day.and_time(time)) + chrono::Duration::minutes(offset.minutes))
}

/// A cron schedule (5 fields, or 6 with seconds first), evaluated in a time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule(croner::Cron);

impl CronSchedule {
    pub fn parse(expr: &str) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if !(fields == 5 || fields == 6 || expr.trim().starts_with('@')) {
            return Err(format!(
                "expected 5 fields (minute hour day month weekday) or 6 with seconds first, got {fields}"
            ));
        }
        croner::Cron::from_str(expr).map(CronSchedule).map_err(|e| format!("invalid cron expression '{expr}': {e}"))
    }

    /// The first occurrence strictly after `after`, in `tz`.
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        self.0.find_next_occurrence(&after.with_timezone(&tz), false).ok().map(|t| t.with_timezone(&Utc))
    }
}

/// When business-initiated messages may go out (in the recipient's time zone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    pub start: NaiveTime,
    /// Exclusive; before `start` means the window crosses midnight.
    pub end: NaiveTime,
    /// Monday first.
    pub days: [bool; 7],
    pub holidays: BTreeSet<NaiveDate>,
}

impl SendWindow {
    /// `"09:00-20:00"`, days such as `mon`/`lun` (all when empty), holidays `2026-12-25`.
    pub fn parse(between: Option<&str>, days: &[String], holidays: &[String]) -> Result<Self, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let (start, end) = match between {
            None => (NaiveTime::MIN, NaiveTime::MIN),
            Some(b) => match b.split_once('-').map(|(a, z)| {
                (NaiveTime::parse_from_str(a.trim(), "%H:%M"), NaiveTime::parse_from_str(z.trim(), "%H:%M"))
            }) {
                Some((Ok(a), Ok(z))) if a != z => (a, z),
                _ => {
                    errs.push(("send_between".into(), format!("expected a range such as 09:00-20:00, got '{b}'")));
                    (NaiveTime::MIN, NaiveTime::MIN)
                }
            },
        };
        let mut mask = [days.is_empty(); 7];
        for (i, d) in days.iter().enumerate() {
            match weekday(d) {
                Some(w) => mask[w.num_days_from_monday() as usize] = true,
                None => {
                    errs.push((format!("send_days[{i}]"), format!("expected a weekday such as mon or lun, got '{d}'")))
                }
            }
        }
        let mut set = BTreeSet::new();
        for (i, h) in holidays.iter().enumerate() {
            match NaiveDate::parse_from_str(h.trim(), "%Y-%m-%d") {
                Ok(d) => {
                    set.insert(d);
                }
                Err(_) => {
                    errs.push((format!("holidays[{i}]"), format!("expected a date such as 2026-12-25, got '{h}'")))
                }
            }
        }
        if errs.is_empty() {
            Ok(SendWindow { start, end, days: mask, holidays: set })
        } else {
            Err(errs)
        }
    }

    fn whole_day(&self) -> bool {
        self.start == self.end
    }

    /// Is sending allowed at this local time?
    pub fn allows(&self, local: NaiveDateTime) -> bool {
        let t = local.time();
        let (in_hours, day) = if self.whole_day() {
            (true, local.date())
        } else if self.start < self.end {
            (t >= self.start && t < self.end, local.date())
        } else if t >= self.start {
            (true, local.date())
        } else {
            // Early morning of a window that began the evening before: that evening's day rules.
            (t < self.end, local.date().pred_opt().unwrap_or(local.date()))
        };
        in_hours && self.days[day.weekday().num_days_from_monday() as usize] && !self.holidays.contains(&day)
    }

    /// `t` if sending is allowed then, else the first allowed minute after it (within a year).
    pub fn next_allowed(&self, t: DateTime<Utc>, tz: Tz) -> DateTime<Utc> {
        let local = t.with_timezone(&tz).naive_local();
        if self.allows(local) {
            return t;
        }
        // Candidates: each day's window start, from today on.
        for d in 0..=370u64 {
            let Some(day) = local.date().checked_add_days(Days::new(d)) else { break };
            let candidate = day.and_time(self.start);
            if candidate > local && self.allows(candidate) {
                let at = resolve_local(tz, candidate);
                if at > t {
                    return at;
                }
            }
        }
        t
    }
}

fn weekday(s: &str) -> Option<Weekday> {
    let s = s.trim().to_lowercase();
    let s = s.as_str();
    Some(match s {
        "mon" | "monday" | "lun" | "lunes" => Weekday::Mon,
        "tue" | "tuesday" | "mar" | "martes" => Weekday::Tue,
        "wed" | "wednesday" | "mié" | "mie" | "miércoles" | "miercoles" => Weekday::Wed,
        "thu" | "thursday" | "jue" | "jueves" => Weekday::Thu,
        "fri" | "friday" | "vie" | "viernes" => Weekday::Fri,
        "sat" | "saturday" | "sáb" | "sab" | "sábado" | "sabado" => Weekday::Sat,
        "sun" | "sunday" | "dom" | "domingo" => Weekday::Sun,
        _ => return None,
    })
}

/// Was an occurrence due at `due` missed by more than `lateness` at `now`?
pub fn too_late(due: DateTime<Utc>, now: DateTime<Utc>, lateness: Duration) -> bool {
    now.signed_duration_since(due).to_std().is_ok_and(|late| late > lateness)
}

#[cfg(test)]
mod tests;
