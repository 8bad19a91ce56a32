//! `recado plan`: what the rules would send now and in the next days, and why some records
//! will get nothing — without sending and without changing the state.
//!
//! It reads the sources through the same clients as the daemon, evaluates date rules (their
//! timers) and campaigns (their occurrences) over the records as they are now, applies quiet
//! hours, and leaves out what the state store says was already queued. Event rules (`row_added`,
//! `changed`) fire on edits, so they have nothing planned in advance.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, RuleConfig, Trigger};
use crate::domain::MessageContent;
use crate::engine::RecordView;
use crate::rules::{RuleSet, TimeContext, TimerPlan};
use crate::schedule::CronSchedule;
use crate::sources::ReadSpec;
use crate::store;

/// One line of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanLine {
    /// When it would go out (after quiet hours), UTC.
    pub when_utc: Option<DateTime<Utc>>,
    /// The same in the recipient's zone, `2026-11-23 10:00`.
    pub when_local: String,
    pub time_zone: String,
    pub rule: String,
    pub record: String,
    /// Masked.
    pub phone: String,
    /// Template name or `text`.
    pub message: String,
    /// Rendered parameters (or the text).
    pub parameters: Vec<String>,
    /// `send` or `not sent`.
    pub status: String,
    pub reason: String,
}

/// Builds the plan for the next `days` days.
pub async fn plan(
    config: &Config,
    days: u32,
    only_rule: Option<&str>,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<PlanLine>> {
    let rules = RuleSet::compile(&config.rules).map_err(anyhow::Error::msg)?;
    let consent_version = config.inbound.consent_version.as_deref();
    let horizon = now + chrono::Duration::days(i64::from(days));
    let store = store::Store::open_read_only(&config.state.path).await?;
    let http = crate::app::http_client()?;
    let (sources, _writers) = crate::app::connect_sources(config, &http)?;
    let mut lines = Vec::new();
    for source in &sources {
        let cfg = source.settings();
        let wanted: Vec<&RuleConfig> = config
            .rules
            .iter()
            .filter(|r| r.source == cfg.id && only_rule.is_none_or(|id| r.id == id))
            .filter(|r| matches!(r.trigger, Trigger::Date { .. } | Trigger::Cron { .. }))
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let source_tz: chrono_tz::Tz = source.time_zone().await?.parse().unwrap_or(chrono_tz::UTC);
        // As the daemon reads it: a misspelt consent field is named, not taken for "no consent".
        let required = crate::rules::required_fields(config.rules.iter().filter(|r| r.source == cfg.id), cfg);
        let spec = ReadSpec { required, referenced: crate::rules::referenced_paths(&config.rules, &cfg.id) };
        let read = async { source.read(&spec, None).await?.into_whole(cfg, &spec).await }
            .await
            .map_err(|e| anyhow::anyhow!("source {}: {e}", cfg.id))?;
        let views: Vec<RecordView> = read
            .records
            .into_iter()
            .map(|r| {
                let phone = crate::domain::PhoneNumber::parse(&r.text(&cfg.phone_field), cfg.default_region);
                RecordView::with_phone(cfg, r, phone)
            })
            .collect();
        let time_for = |v: &RecordView, at: DateTime<Utc>| TimeContext {
            now: at,
            source_tz,
            record_tz: v.tz,
            defaults: &config.defaults,
            date_order: cfg.dates.order,
        };

        for rule in wanted {
            match &rule.trigger {
                Trigger::Date { .. } => {
                    for v in &views {
                        let time = time_for(v, now);
                        for p in rules.plan_timers(&cfg.id, &v.record, &v.facts(&[]), &time) {
                            match p {
                                TimerPlan::Due(t) if t.rule_id == rule.id && t.due_at <= horizon => {
                                    let key = format!("{}:{}:{}", rule.id, v.record.key.0, t.occurrence_key());
                                    if store.already(&key).await {
                                        continue;
                                    }
                                    let at = t.due_at.max(now);
                                    lines.push(line(
                                        &rules,
                                        rule,
                                        v,
                                        &t.occurrence_key(),
                                        &time_for(v, at),
                                        not_for_them(&store, rule, v, consent_version).await,
                                    ));
                                }
                                TimerPlan::TooLate(t)
                                    if t.rule_id == rule.id
                                        && t.due_at >= now - chrono::Duration::days(i64::from(days)) =>
                                {
                                    let key = format!("{}:{}:{}", rule.id, v.record.key.0, t.occurrence_key());
                                    if store.already(&key).await {
                                        continue;
                                    }
                                    let mut l =
                                        line(&rules, rule, v, &t.occurrence_key(), &time_for(v, t.due_at), None);
                                    l.status = "not sent".into();
                                    l.reason = format!("outside lateness: it was due at {}", l.when_local);
                                    lines.push(l);
                                }
                                TimerPlan::Ineligible { rule_id, reason }
                                    if rule_id == rule.id && !reason.contains("filter") =>
                                {
                                    lines.push(blocked(rule, v, &reason));
                                }
                                TimerPlan::BadDate { rule_id, reason } if rule_id == rule.id => {
                                    lines.push(blocked(rule, v, &format!("date unreadable: {reason}")));
                                }
                                _ => {}
                            }
                        }
                    }
                }
                Trigger::Cron { expr } => {
                    let Ok(schedule) = CronSchedule::parse(expr) else { continue };
                    let tz = rule.time_zone.or(config.defaults.time_zone).unwrap_or(source_tz);
                    let mut occurrence = schedule.next_after(now - chrono::Duration::seconds(1), tz);
                    let mut reported = std::collections::HashSet::new();
                    while let Some(occ) = occurrence.filter(|o| *o <= horizon) {
                        let occ_key = format!("cron@{}", occ.format("%Y-%m-%dT%H:%MZ"));
                        for v in &views {
                            let key = format!("{}:{}:{occ_key}", rule.id, v.record.key.0);
                            if store.already(&key).await {
                                continue;
                            }
                            match rules.intent_for(&rule.id, &occ_key, &v.record, &v.facts(&[])) {
                                // Why a record gets nothing is said once, not per occurrence.
                                Some(Err(reason)) if reported.insert(v.record.key.clone()) => {
                                    lines.push(blocked(rule, v, &reason));
                                }
                                None | Some(Err(_)) => {}
                                Some(Ok(_)) => lines.push(line(
                                    &rules,
                                    rule,
                                    v,
                                    &occ_key,
                                    &time_for(v, occ),
                                    not_for_them(&store, rule, v, consent_version).await,
                                )),
                            }
                        }
                        occurrence = schedule.next_after(occ, tz);
                    }
                }
                _ => {}
            }
        }
    }
    lines.sort_by(|a, b| {
        (a.when_utc.is_none(), a.when_utc, &a.rule, &a.record).cmp(&(
            b.when_utc.is_none(),
            b.when_utc,
            &b.rule,
            &b.record,
        ))
    });
    Ok(lines)
}

/// Why the person would not get `rule`'s message, as the dispatcher would decide it: they
/// opted out, or the message opens a conversation and they refused the privacy notice.
async fn not_for_them(
    store: &store::ReadOnlyStore,
    rule: &RuleConfig,
    v: &RecordView,
    consent_version: Option<&str>,
) -> Option<String> {
    let phone = v.phone.as_ref().ok()?;
    let contact = store.contact(phone.as_str()).await?;
    if contact.opted_out_at.is_some() {
        return Some("opted out".into());
    }
    (rule.on_reply.is_some() && contact.refused_notice(consent_version))
        .then(|| "its replies go to a conversation, and the contact refused the privacy notice".into())
}

fn line(
    rules: &RuleSet,
    rule: &RuleConfig,
    v: &RecordView,
    occurrence: &str,
    time: &TimeContext<'_>,
    opted_out: Option<String>,
) -> PlanLine {
    let tz = time.zone_for(rule);
    let at = time.send_at(rule);
    let mut failure = None;
    let (message, parameters) = match rules.intent_for(&rule.id, occurrence, &v.record, &v.facts(&[])) {
        Some(Ok(i)) => match i.content {
            MessageContent::Template(t) => {
                let mut p = t.body;
                p.extend(t.button_url_suffix);
                (t.name, p)
            }
            other => (other.label(), vec![other.readable_text()]),
        },
        Some(Err(e)) => {
            failure = Some(e.trim_start_matches("not sent: ").to_string());
            (String::new(), Vec::new())
        }
        None => (String::new(), Vec::new()),
    };
    let (status, reason) = match opted_out.or(failure) {
        Some(r) => ("not sent".to_string(), r),
        None => ("send".to_string(), String::new()),
    };
    PlanLine {
        when_utc: Some(at),
        when_local: at.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string(),
        time_zone: tz.name().to_string(),
        rule: rule.id.clone(),
        record: v.record.key.0.clone(),
        phone: v.phone.as_ref().map(|p| p.masked()).unwrap_or_default(),
        message,
        parameters,
        status,
        reason,
    }
}

fn blocked(rule: &RuleConfig, v: &RecordView, reason: &str) -> PlanLine {
    PlanLine {
        when_utc: None,
        when_local: String::new(),
        time_zone: String::new(),
        rule: rule.id.clone(),
        record: v.record.key.0.clone(),
        phone: v.phone.as_ref().map(|p| p.masked()).unwrap_or_default(),
        message: String::new(),
        parameters: Vec::new(),
        status: "not sent".into(),
        reason: reason.trim_start_matches("not sent: ").to_string(),
    }
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

/// Renders the plan.
pub fn render(lines: &[PlanLine], format: Format) -> String {
    match format {
        Format::Json => serde_json::to_string_pretty(lines).unwrap_or_else(|_| "[]".into()),
        Format::Csv => {
            let mut out =
                String::from("when_local,time_zone,when_utc,rule,record,phone,message,parameters,status,reason\n");
            for l in lines {
                let cells = [
                    l.when_local.clone(),
                    l.time_zone.clone(),
                    l.when_utc.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    l.rule.clone(),
                    l.record.clone(),
                    l.phone.clone(),
                    l.message.clone(),
                    l.parameters.join(" | "),
                    l.status.clone(),
                    l.reason.clone(),
                ];
                let escaped: Vec<String> = cells.iter().map(|c| format!("\"{}\"", c.replace('"', "\"\""))).collect();
                out.push_str(&escaped.join(","));
                out.push('\n');
            }
            out
        }
        Format::Table => {
            let mut out = String::new();
            let sends = lines.iter().filter(|l| l.status == "send").count();
            out.push_str(&format!(
                "{sends} message(s) planned, {} record(s) that will get nothing\n\n",
                lines.len() - sends
            ));
            let w = |f: fn(&PlanLine) -> usize, min: usize| lines.iter().map(f).max().unwrap_or(0).max(min);
            let (wr, wk, wm) = (
                w(|l| l.rule.chars().count(), 4),
                w(|l| l.record.chars().count(), 6),
                w(|l| l.message.chars().count(), 7),
            );
            out.push_str(&format!(
                "{:<16}  {:<17}  {:<wr$}  {:<wk$}  {:<13}  {:<wm$}  {}\n",
                "when (local)", "when (UTC)", "rule", "record", "phone", "message", "parameters / reason"
            ));
            for l in lines {
                let utc = l.when_utc.map(|t| t.format("%Y-%m-%d %H:%MZ").to_string()).unwrap_or_else(|| "—".into());
                let detail =
                    if l.status == "send" { l.parameters.join(" | ") } else { format!("NOT SENT: {}", l.reason) };
                let local = if l.when_local.is_empty() { "—" } else { &l.when_local };
                out.push_str(&format!(
                    "{local:<16}  {utc:<17}  {:<wr$}  {:<wk$}  {:<13}  {:<wm$}  {detail}\n",
                    l.rule, l.record, l.phone, l.message
                ));
            }
            out.push_str(
                "\nrow_added and changed rules fire when a record is added or edited; they have nothing planned in advance.\n",
            );
            out
        }
    }
}
