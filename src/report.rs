//! `recado report` and `recado contact`: what happened, on the command line, read from the
//! state store (safe beside a running daemon: readers never block its writes).
//!
//! The report is each rule's funnel, the same numbers `/metrics` and the dashboard show
//! ([`crate::store::report`]); `contact` is one person's history with the number masked unless
//! the operator asks for it.

use std::fmt::Write as _;

use anyhow::Context;
use chrono::{TimeZone, Utc};

use crate::config::Config;
use crate::domain::mask_phone;
use crate::store::report::{ContactHistory, RuleFunnel, FUNNEL_STAGES};
use crate::store::Store;

/// Output formats of `recado report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Csv,
    Json,
}

/// `--since`: a duration back from now (`7d`, `12h`), or a date (`2026-11-01`, midnight UTC).
pub fn parse_since(text: &str, now: chrono::DateTime<Utc>) -> Result<i64, String> {
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
        let midnight = d.and_hms_opt(0, 0, 0).map(|t| Utc.from_utc_datetime(&t));
        return midnight.map(|t| t.timestamp_millis()).ok_or_else(|| format!("'{text}' is not a date"));
    }
    match crate::validation::parse_duration(text) {
        Ok(d) => Ok(now.timestamp_millis() - d.as_millis() as i64),
        Err(e) => Err(format!("--since expects a duration such as 7d or 12h, or a date such as 2026-11-01: {e}")),
    }
}

/// The funnel of every rule (or of `rule`) since `since_ms`.
pub async fn funnels(config: &Config, since_ms: i64, rule: Option<&str>) -> anyhow::Result<Vec<RuleFunnel>> {
    let store = open(config).await?;
    let mut conn = store.conn().await?;
    let out = crate::store::report::funnel(&mut conn, since_ms, rule).await?;
    drop(conn);
    store.close().await;
    Ok(out)
}

async fn open(config: &Config) -> anyhow::Result<Store> {
    if !config.state.path.exists() {
        anyhow::bail!(
            "no state store at {}: recado has not run with this configuration yet (or state.path differs)",
            config.state.path.display()
        );
    }
    Store::open(&config.state.path)
        .await
        .with_context(|| format!("opening the state store {}", config.state.path.display()))
}

/// Renders funnels.
pub fn render(funnels: &[RuleFunnel], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(funnels).unwrap_or_else(|_| "[]".into()),
        Format::Csv => {
            let mut out = format!("rule,total,{}\n", FUNNEL_STAGES.join(","));
            for f in funnels {
                let stages: Vec<String> = FUNNEL_STAGES.iter().map(|s| f.stage(s).to_string()).collect();
                let _ = writeln!(out, "\"{}\",{},{}", f.rule.replace('"', "\"\""), f.total, stages.join(","));
            }
            out
        }
        Format::Table => {
            if funnels.is_empty() {
                return "no messages in this period\n".to_string();
            }
            let wr = funnels.iter().map(|f| f.rule.chars().count()).max().unwrap_or(4).max(4);
            let mut out = format!("{:<wr$}  {:>7}", "rule", "total");
            for s in FUNNEL_STAGES {
                let _ = write!(out, "  {s:>9}");
            }
            out.push('\n');
            for f in funnels {
                let _ = write!(out, "{:<wr$}  {:>7}", f.rule, f.total);
                for s in FUNNEL_STAGES {
                    let _ = write!(out, "  {:>9}", f.stage(s));
                }
                out.push('\n');
            }
            out.push_str(
                "\nsent, delivered and read count every message that got that far (a read message was also delivered);\nreplied counts messages that got an answer.\n",
            );
            out
        }
    }
}

/// One person's history, read from the store.
pub async fn contact(config: &Config, phone: &str) -> anyhow::Result<ContactHistory> {
    let store = open(config).await?;
    let mut conn = store.conn().await?;
    let out = crate::store::report::contact_history(&mut conn, phone).await?;
    drop(conn);
    store.close().await;
    Ok(out)
}

fn when(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms).single().map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string()).unwrap_or_default()
}

/// Renders a person's history as text; `show_phone` prints the number in full.
pub fn render_contact(phone: &str, h: &ContactHistory, show_phone: bool, now_ms: i64) -> String {
    let shown = if show_phone { phone.to_string() } else { mask_phone(phone) };
    let mut out = format!("{shown}\n");
    match &h.standing {
        None => out.push_str("  no contact on record (they never wrote, and no consent or opt-out is stored)\n"),
        Some(s) => {
            match s.opted_out_at {
                Some(at) => {
                    let _ = writeln!(out, "  opted out {}: nothing is sent to them", when(at));
                }
                None => out.push_str("  not opted out\n"),
            }
            match (&s.consent, s.consent_at) {
                (Some(c), Some(at)) => {
                    let _ = writeln!(
                        out,
                        "  consent: {c} {} ({}; notice version {})",
                        when(at),
                        s.consent_method.as_deref().unwrap_or("-"),
                        s.consent_version.as_deref().unwrap_or("-")
                    );
                }
                _ => out.push_str("  consent: not asked in the chat (the record's consent field decides)\n"),
            }
            if let Some(l) = &s.language {
                let _ = writeln!(out, "  language: {l}");
            }
            if let Some(at) = s.last_inbound_at {
                let open = now_ms - at < 24 * 3600 * 1000;
                let _ = writeln!(
                    out,
                    "  last wrote {} (24-hour window {})",
                    when(at),
                    if open { "open" } else { "closed" }
                );
            }
        }
    }
    let _ = writeln!(out, "\nmessages ({}):", h.messages.len());
    for m in &h.messages {
        let record = if m.source.is_empty() { "-".to_string() } else { format!("{}/{}", m.source, m.record) };
        let _ = write!(out, "  {}  {:<24}  {:<20}  {:<9}", when(m.created_at), m.rule, record, m.state);
        if m.state == "queued" && m.next_attempt_at > now_ms {
            let _ = write!(out, "  until {}", when(m.next_attempt_at));
        }
        if let Some(e) = &m.error {
            let _ = write!(out, "  {e}");
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\nwhat they wrote ({}):", h.replies.len());
    for r in &h.replies {
        let answered = r.in_reply_to.map(|id| format!(" (answering message {id})")).unwrap_or_default();
        let _ = writeln!(out, "  {}  {}{answered}: {}", when(r.received_at), r.kind, r.body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_duration_or_a_date() {
        let now = Utc.with_ymd_and_hms(2026, 11, 22, 12, 0, 0).single().expect("valid time");
        assert_eq!(parse_since("1d", now), Ok(now.timestamp_millis() - 86_400_000));
        let nov1 = Utc.with_ymd_and_hms(2026, 11, 1, 0, 0, 0).single().expect("valid time");
        assert_eq!(parse_since("2026-11-01", now), Ok(nov1.timestamp_millis()));
        assert!(parse_since("last week", now).unwrap_err().contains("--since"));
    }

    #[test]
    fn a_funnel_renders_as_table_csv_and_json() {
        let f = RuleFunnel {
            rule: "confirmacion".into(),
            total: 3,
            sent: 2,
            delivered: 2,
            read: 1,
            replied: 1,
            skipped: 1,
            ..Default::default()
        };
        let table = render(std::slice::from_ref(&f), Format::Table);
        assert!(table.lines().nth(1).is_some_and(|l| l.starts_with("confirmacion") && l.contains("  3  ")), "{table}");
        let csv = render(std::slice::from_ref(&f), Format::Csv);
        assert_eq!(csv.lines().nth(1), Some("\"confirmacion\",3,0,2,2,1,1,0,1"), "{csv}");
        let json: serde_json::Value = serde_json::from_str(&render(&[f], Format::Json)).expect("json");
        assert_eq!(json[0]["replied"], 1);
    }
}
