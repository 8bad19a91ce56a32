//! `/dashboard`: one server-rendered page for a programme team and its operator. Each rule's
//! funnel as a bar chart, messages over the last 14 days, sources and providers with their
//! health and quota, recent failures with their reasons, and messages waiting for their hour
//! with when they will go. Plain HTML and inline SVG, no JavaScript; it reloads itself every
//! minute.
//!
//! It shows people's records, so it needs the password `http.dashboard_password` (HTTP Basic,
//! any user name; compared in constant time); without one configured it is off. Numbers are
//! masked. Every value from the store or a vendor is HTML-escaped.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use chrono::{TimeZone, Utc};

use super::AppState;
use crate::domain::mask_phone;
use crate::store::report::{MessageLine, RuleFunnel, FUNNEL_STAGES};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// Days of history in the "messages over time" chart.
const HISTORY_DAYS: i64 = 14;

/// Serves the page after checking the password.
pub async fn page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let Some(password) = &st.ctx.config.http.dashboard_password else {
        return (StatusCode::NOT_FOUND, "the dashboard is off: set http.dashboard_password to turn it on")
            .into_response();
    };
    if !authorised(&headers, password.expose()) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"recado\", charset=\"UTF-8\"")],
            "the dashboard needs the password in http.dashboard_password",
        )
            .into_response();
    }
    match render(&st).await {
        Ok(html) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
                (header::REFRESH, "60"),
                (header::HeaderName::from_static("x-frame-options"), "DENY"),
                (
                    header::HeaderName::from_static("content-security-policy"),
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                ),
            ],
            html,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("the state store is unavailable: {e}")).into_response(),
    }
}

/// HTTP Basic with any user name and the configured password.
fn authorised(headers: &HeaderMap, password: &str) -> bool {
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
    else {
        return false;
    };
    let Some((_, given_password)) = given.split_once(':') else {
        return false;
    };
    // Compared as HMACs, whose check is constant-time: the time taken says nothing about how
    // much of the password was right.
    use hmac::Mac as _;
    type Check = hmac::Hmac<sha2::Sha256>;
    let (Ok(mut expected), Ok(mut given)) =
        (Check::new_from_slice(b"recado dashboard"), Check::new_from_slice(b"recado dashboard"))
    else {
        return false;
    };
    expected.update(password.as_bytes());
    given.update(given_password.as_bytes());
    given.verify_slice(&expected.finalize().into_bytes()).is_ok()
}

/// HTML-escapes text.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(ms: i64, tz: chrono_tz::Tz) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .map(|t| t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

const STAGE_COLOURS: [(&str, &str); 7] = [
    ("queued", "#9aa5b1"),
    ("sent", "#4c78a8"),
    ("delivered", "#3a9d8f"),
    ("read", "#59a14f"),
    ("replied", "#b07aa1"),
    ("failed", "#e15759"),
    ("skipped", "#f1a340"),
];

fn colour(stage: &str) -> &'static str {
    STAGE_COLOURS.iter().find(|(s, _)| *s == stage).map(|(_, c)| *c).unwrap_or("#777")
}

async fn render(st: &AppState) -> Result<String, crate::store::StoreError> {
    let ctx = &st.ctx;
    let now = ctx.now_ms();
    // Times in the configured zone (else the first source's), as the team reads its records.
    let tz = ctx.config.defaults.time_zone.or_else(|| ctx.time_zones_first()).unwrap_or(chrono_tz::UTC);
    let mut conn = ctx.store.conn().await?;
    let funnels = crate::store::report::funnel(&mut conn, 0, None).await?;
    let history =
        crate::store::report::messages_over_time(&mut conn, (now / DAY_MS - HISTORY_DAYS + 1) * DAY_MS, DAY_MS).await?;
    let failures = crate::store::report::recent_failures(&mut conn, 20).await?;
    let deferred = crate::store::report::deferred(&mut conn, now, 20).await?;
    let (writes, timers) = crate::store::report::backlog(&mut conn).await?;
    drop(conn);

    let mut html = String::from(
        // The charset and the reload every minute travel as headers (`Content-Type`, `Refresh`).
        "<!doctype html><html lang=\"en\"><head><title>recado</title><style>\
         body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1f2933;background:#f7f9fa}\
         h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:28px 0 8px}\
         section{background:#fff;border:1px solid #e1e5ea;border-radius:6px;padding:12px 16px;margin-bottom:16px}\
         table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:4px 8px;border-bottom:1px solid #eef1f4;vertical-align:top}\
         th{font-weight:600;color:#52606d}.num{text-align:right;font-variant-numeric:tabular-nums}\
         .bad{color:#c62828;font-weight:600}.ok{color:#2e7d32;font-weight:600}.muted{color:#7b8794}\
         .legend span{display:inline-block;margin-right:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}\
         </style></head><body>",
    );
    let _ = write!(
        html,
        "<h1>recado</h1><div class=\"muted\">{} ({}) · reloads every minute · {} value(s) waiting to be written back · {} timer(s) pending</div>",
        esc(&when(now, tz)),
        esc(tz.name()),
        writes,
        timers
    );
    html.push_str("<div class=\"legend\" style=\"margin-top:8px\">");
    for (stage, c) in STAGE_COLOURS {
        let _ = write!(html, "<span><i style=\"background:{c}\"></i>{stage}</span>");
    }
    html.push_str("</div>");

    html.push_str("<h2>Each rule's funnel</h2><section>");
    if funnels.is_empty() {
        html.push_str("<p class=\"muted\">No messages yet.</p>");
    }
    for f in &funnels {
        funnel_chart(&mut html, f);
    }
    html.push_str("</section>");

    let _ = write!(html, "<h2>Messages over the last {HISTORY_DAYS} days <span class=\"muted\">(UTC days, by the state they are in now)</span></h2><section>");
    history_chart(&mut html, &history, now);
    html.push_str("</section>");

    html.push_str("<h2>Sources and providers</h2><section><table><tr><th>component</th><th>state</th><th>last worked</th><th>failures in a row</th><th>quota</th><th>last error</th></tr>");
    for (name, c) in ctx.health.all() {
        if c.kind == "loop" && !c.degraded {
            continue;
        }
        let state = if c.degraded { "<span class=\"bad\">failing</span>" } else { "<span class=\"ok\">ok</span>" };
        let quota = c
            .quota
            .as_ref()
            .and_then(|q| Some(format!("{} / {} per {}", q.used?, q.allowed?, q.window)))
            .unwrap_or_default();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{state}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&name),
            c.ok_at.map(|t| esc(&when(t, tz))).unwrap_or_else(|| "never".into()),
            c.consecutive_failures,
            esc(&quota),
            esc(&crate::domain::mask_phones_in(c.last_error.as_deref().unwrap_or("")))
        );
    }
    html.push_str("</table></section>");

    html.push_str("<h2>Recent failures</h2><section>");
    message_table(&mut html, &failures, tz, false);
    html.push_str("</section><h2>Waiting for their hour</h2><section>");
    message_table(&mut html, &deferred, tz, true);
    html.push_str("</section></body></html>");
    Ok(html)
}

/// One rule: a horizontal bar per stage, scaled to the rule's total.
fn funnel_chart(html: &mut String, f: &RuleFunnel) {
    const WIDTH: f64 = 520.0;
    const ROW: i64 = 18;
    let total = f.total.max(1) as f64;
    let height = ROW * FUNNEL_STAGES.len() as i64 + 24;
    let _ = write!(
        html,
        "<div style=\"margin-bottom:12px\"><strong>{}</strong> <span class=\"muted\">{} message(s)</span><br>\
         <svg role=\"img\" aria-label=\"funnel of {}\" width=\"700\" height=\"{height}\" viewBox=\"0 0 700 {height}\">",
        esc(&f.rule),
        f.total,
        esc(&f.rule)
    );
    for (i, stage) in FUNNEL_STAGES.iter().enumerate() {
        let y = 8 + i as i64 * ROW;
        let n = f.stage(stage);
        let w = (n as f64 / total * WIDTH).max(if n > 0 { 2.0 } else { 0.0 });
        let _ = write!(
            html,
            "<text x=\"0\" y=\"{}\" font-size=\"12\" fill=\"#52606d\">{stage}</text>\
             <rect x=\"80\" y=\"{y}\" width=\"{w:.1}\" height=\"{}\" rx=\"2\" fill=\"{}\"></rect>\
             <text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{n}</text>",
            y + 12,
            ROW - 4,
            colour(stage),
            86.0 + w,
            y + 12
        );
    }
    html.push_str("</svg></div>");
}

/// One stacked column per day, coloured by the state the day's messages are in now.
fn history_chart(html: &mut String, history: &[(i64, String, i64)], now: i64) {
    const HEIGHT: f64 = 160.0;
    const COLUMN: i64 = 44;
    let first_day = now / DAY_MS - HISTORY_DAYS + 1;
    let mut days: Vec<[i64; 7]> = vec![[0; 7]; HISTORY_DAYS as usize];
    for (bucket, state, n) in history {
        let Some(day) = usize::try_from(bucket / DAY_MS - first_day).ok().filter(|d| *d < days.len()) else {
            continue;
        };
        let stage = match state.as_str() {
            "sending" => "queued",
            s => s,
        };
        if let Some(i) = STAGE_COLOURS.iter().position(|(s, _)| *s == stage) {
            days[day][i] += n;
        }
    }
    let max = days.iter().map(|d| d.iter().sum::<i64>()).max().unwrap_or(0).max(1) as f64;
    let width = COLUMN * HISTORY_DAYS + 40;
    let _ = write!(
        html,
        "<svg role=\"img\" aria-label=\"messages per day\" width=\"{width}\" height=\"{}\" viewBox=\"0 0 {width} {}\">",
        HEIGHT + 40.0,
        HEIGHT + 40.0
    );
    for (d, counts) in days.iter().enumerate() {
        let x = 20 + d as i64 * COLUMN;
        let mut top = HEIGHT + 10.0;
        for (i, n) in counts.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let h = *n as f64 / max * HEIGHT;
            top -= h;
            let _ = write!(
                html,
                "<rect x=\"{x}\" y=\"{top:.1}\" width=\"{}\" height=\"{h:.1}\" fill=\"{}\"><title>{} {}</title></rect>",
                COLUMN - 8,
                STAGE_COLOURS[i].1,
                n,
                STAGE_COLOURS[i].0
            );
        }
        let total: i64 = counts.iter().sum();
        if total > 0 {
            let _ = write!(html, "<text x=\"{x}\" y=\"{:.1}\" font-size=\"11\">{total}</text>", top - 3.0);
        }
        let day = Utc
            .timestamp_millis_opt((first_day + d as i64) * DAY_MS)
            .single()
            .map(|t| t.format("%d/%m").to_string())
            .unwrap_or_default();
        let _ =
            write!(html, "<text x=\"{x}\" y=\"{:.1}\" font-size=\"11\" fill=\"#52606d\">{day}</text>", HEIGHT + 28.0);
    }
    html.push_str("</svg>");
}

fn message_table(html: &mut String, lines: &[MessageLine], tz: chrono_tz::Tz, deferred: bool) {
    if lines.is_empty() {
        html.push_str("<p class=\"muted\">None.</p>");
        return;
    }
    let last = if deferred { "goes at" } else { "reason" };
    let _ = write!(html, "<table><tr><th>when</th><th>rule</th><th>record</th><th>number</th><th>{last}</th></tr>");
    for m in lines {
        let record = if m.source.is_empty() { "-".to_string() } else { format!("{}/{}", m.source, m.record) };
        let detail = if deferred {
            when(m.next_attempt_at, tz)
        } else {
            crate::domain::mask_phones_in(m.error.as_deref().unwrap_or(""))
        };
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&when(if deferred { m.created_at } else { m.state_at }, tz)),
            esc(&m.rule),
            esc(&record),
            esc(&mask_phone(&m.phone)),
            esc(&detail)
        );
    }
    html.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_configured_password_opens_the_dashboard() {
        let basic = |userpass: &str| {
            let mut h = HeaderMap::new();
            let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(userpass));
            h.insert(header::AUTHORIZATION, v.parse().expect("header"));
            h
        };
        assert!(authorised(&basic("equipo:clave larga"), "clave larga"));
        assert!(authorised(&basic(":clave larga"), "clave larga"));
        assert!(!authorised(&basic("equipo:clave"), "clave larga"));
        assert!(!authorised(&basic("clave larga"), "clave larga"));
        assert!(!authorised(&HeaderMap::new(), "clave larga"));
    }

    #[test]
    fn text_from_records_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;"
        );
    }
}
