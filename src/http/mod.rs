//! The daemon's HTTP server: `/webhooks/{provider-id}`, `/healthz` (alive: no loop stuck),
//! `/readyz` (doing its job: every source read recently, nothing failing) and `/metrics`
//! (Prometheus; see `metrics`), the team's `/dashboard` ([`dashboard`], behind a password) and
//! `/media/{id}/{signature}` (a file a person sent, to whoever has its signed link: the team,
//! in their records). It names no vendor. Only `/webhooks/` (and `/media/`, for links
//! opened from outside) needs to be public.
//!
//! A webhook request is verified by its provider over the exact bytes received (and, for
//! vendors that sign URLs, over the URL the vendor called: the configured public URL with this
//! path and query), stored, and only then acknowledged with what the vendor expects;
//! processing happens from the store (see `engine::inbox`). Unsigned requests get 401 (or
//! 403, where a vendor treats both alike), mis-signed ones 403, bodies that are not text 400,
//! and none of them changes anything.
//! Bodies are size-limited: a request whose declared `Content-Length` is over the limit is
//! refused with 413 before a byte of its body is read (a client that sent
//! `Expect: 100-continue` never sends it), and a body without a length is cut off at the limit.

mod dashboard;
mod ingest;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tracing::{info, warn};

use crate::engine::{EngineCtx, Shutdown};
use crate::providers::{Handshake, Provider, WebhookRejection, WebhookRequest};
use crate::store;

#[derive(Clone)]
struct AppState {
    ctx: Arc<EngineCtx>,
    providers: Arc<HashMap<String, Provider>>,
    ingest: ingest::Ingest,
}

/// Builds the router (also used by tests through a real listener). Starts the task that
/// stores webhook deliveries (see [`ingest`]); it ends with the router.
pub fn router(ctx: Arc<EngineCtx>, providers: HashMap<String, Provider>) -> Router {
    let limit = ctx.config.http.max_body_bytes;
    Router::new()
        .route("/webhooks/{provider}", get(handshake).post(receive))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/dashboard", get(dashboard::page))
        .route("/media/{id}/{signature}", get(media))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(move |req, next| refuse_declared_oversize(limit, req, next)))
        .with_state(AppState {
            ingest: ingest::Ingest::start(ctx.store.clone(), ctx.metrics.clone()),
            ctx,
            providers: Arc::new(providers),
        })
}

/// Answers 413 from the headers alone when the declared length is over the limit, so the
/// client hears the refusal before it streams the body (reading part of it and then closing
/// would reset the connection under the client's feet).
async fn refuse_declared_oversize(limit: usize, req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return (StatusCode::PAYLOAD_TOO_LARGE, "request body over the configured limit").into_response();
    }
    next.run(req).await
}

/// Serves until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<EngineCtx>,
    providers: HashMap<String, Provider>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    info!(%addr, "webhook server listening");
    axum::serve(listener, router(ctx, providers)).with_graceful_shutdown(async move { shutdown.wait().await }).await
}

async fn handshake(State(st): State<AppState>, Path(provider): Path<String>, RawQuery(query): RawQuery) -> Response {
    let Some(p) = st.providers.get(&provider) else {
        return (StatusCode::NOT_FOUND, "unknown provider").into_response();
    };
    match p.handshake(query.as_deref().unwrap_or("")) {
        Handshake::Accepted(challenge) => {
            info!(provider = %provider, "webhook subscription verified");
            (StatusCode::OK, challenge).into_response()
        }
        Handshake::Refused => {
            warn!(provider = %provider, "webhook verification refused");
            (StatusCode::FORBIDDEN, "verification failed").into_response()
        }
        Handshake::NotSupported => {
            (StatusCode::METHOD_NOT_ALLOWED, "this provider has no verification handshake").into_response()
        }
    }
}

/// The URL the vendor called, as the vendor sees it: behind a reverse proxy the request's own
/// URL is not what was signed, the configured public URL is.
fn public_url(st: &AppState, headers: &HeaderMap, uri: &axum::http::Uri) -> String {
    let path_and_query = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    match &st.ctx.config.http.public_url {
        Some(base) => format!("{base}{path_and_query}"),
        None => {
            let host = headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}{path_and_query}")
        }
    }
}

async fn receive(
    State(st): State<AppState>,
    Path(provider): Path<String>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(p) = st.providers.get(&provider) else {
        return (StatusCode::NOT_FOUND, "unknown provider").into_response();
    };
    let metrics = &st.ctx.metrics;
    let url = public_url(&st, &headers, &uri);
    if let Err(e) = p.verify_webhook(&WebhookRequest { url: &url, headers: &headers, body: &body }) {
        warn!(provider = %provider, "webhook refused: {e}");
        let (status, result) = match e {
            WebhookRejection::Unsigned(_) => (StatusCode::UNAUTHORIZED, "unsigned"),
            WebhookRejection::Forged(_) => (StatusCode::FORBIDDEN, "forged"),
        };
        metrics.webhook(&provider, result);
        return (status, e.to_string()).into_response();
    }
    let Ok(text) = std::str::from_utf8(&body) else {
        warn!(provider = %provider, "webhook refused: the body is not UTF-8 text");
        metrics.webhook(&provider, "not_text");
        return (StatusCode::BAD_REQUEST, "the body is not UTF-8 text").into_response();
    };
    let stored = st
        .ingest
        .store(store::NewWebhook {
            provider_id: provider.clone(),
            query: uri.query().unwrap_or("").to_string(),
            body: text.to_string(),
            received_at: st.ctx.now_ms(),
        })
        .await;
    match stored {
        Ok(_) => {
            metrics.webhook(&provider, "accepted");
            st.ctx.inbox_wake.notify_one();
            let ack = p.acknowledgement();
            (StatusCode::OK, [(header::CONTENT_TYPE, ack.content_type)], ack.body).into_response()
        }
        Err(e) => {
            // Not stored means not acknowledged: the provider will deliver it again.
            metrics.webhook(&provider, "not_stored");
            warn!(provider = %provider, "could not store a webhook, answering 503 so it is sent again: {e}");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// A file a person sent, to a link whose signature opens it (403 otherwise, and for an id
/// that does not exist, so ids cannot be probed). One still being fetched answers 404 with
/// that said; one that was not kept answers 410 with why (over the size cap, gone at the
/// provider).
async fn media(State(st): State<AppState>, Path((id, signature)): Path<(String, String)>) -> Response {
    let refused = || (StatusCode::FORBIDDEN, "this link does not open a file\n").into_response();
    let Ok(id) = id.parse::<i64>() else { return refused() };
    let found = async {
        let mut conn = st.ctx.store.conn().await?;
        let key = store::media_link_key(&mut conn).await?;
        let row = store::media_by_id(&mut conn, id).await?;
        Ok::<_, store::StoreError>(row.filter(|r| crate::engine::media::link_opens(&key, id, r.created_at, &signature)))
    }
    .await;
    let row = match found {
        Ok(Some(row)) => row,
        Ok(None) => return refused(),
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("the state store is unavailable: {e}\n")).into_response()
        }
    };
    match row.state.as_str() {
        "stored" => {}
        "failed" | "expired" => {
            let why = row.error.unwrap_or_else(|| "not kept".into());
            return (StatusCode::GONE, format!("{why}\n")).into_response();
        }
        _ => return (StatusCode::NOT_FOUND, "the file is still being fetched: try again shortly\n").into_response(),
    }
    let path = crate::engine::media::file_path(&st.ctx, id);
    match tokio::fs::File::open(&path).await {
        Ok(file) => {
            let len = file.metadata().await.map(|m| m.len()).ok();
            let name = row.filename.unwrap_or_else(|| format!("{}-{id}", row.media_type));
            let name: String = name.chars().filter(|c| c.is_ascii_alphanumeric() || "._- ".contains(*c)).collect();
            let mime = safe_mime(&row.mime_type);
            // Shown in the browser only what cannot run anything; the rest is a download.
            let inline = ["image/", "audio/", "video/", "application/pdf"].iter().any(|p| mime.starts_with(p))
                && !mime.starts_with("image/svg");
            let disposition = if inline { "inline" } else { "attachment" };
            let mut response = (
                [
                    (header::CONTENT_TYPE, mime),
                    (header::CONTENT_DISPOSITION, format!("{disposition}; filename=\"{name}\"")),
                    (header::REFERRER_POLICY, "no-referrer".to_string()),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_string()),
                    (header::CONTENT_SECURITY_POLICY, "sandbox".to_string()),
                    (header::CACHE_CONTROL, "private, no-store".to_string()),
                ],
                axum::body::Body::from_stream(file_chunks(file)),
            )
                .into_response();
            if let Some(len) = len {
                response.headers_mut().insert(header::CONTENT_LENGTH, len.into());
            }
            response
        }
        Err(_) => (StatusCode::GONE, "the file is no longer kept (state.retention.media)\n").into_response(),
    }
}

/// A file in 64 KiB chunks, read as the client takes them (a 100 MB file is never in memory).
fn file_chunks(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, std::io::Error>> + Send + 'static {
    futures_util::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt;
        let mut f = file?;
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(axum::body::Bytes::from(buf)), Some(f)))
            }
            // The error ends the response; nothing more is read.
            Err(e) => Some((Err(e), None)),
        }
    })
}

/// A content type as the provider announced it, kept to the characters a header may carry
/// (anything odd becomes a download).
fn safe_mime(m: &str) -> String {
    let ok = !m.is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric() || "/+.-;= ".contains(c));
    if ok {
        m.to_string()
    } else {
        "application/octet-stream".into()
    }
}

async fn healthz(State(st): State<AppState>) -> Response {
    let result = async {
        let mut conn = st.ctx.store.conn().await?;
        let counts = store::counts_by_state(&mut conn).await?;
        let writes = store::pending_write_count(&mut conn).await?;
        let inbox = store::pending_webhook_count(&mut conn).await?;
        let parked = store::parked_webhook_count(&mut conn).await?;
        Ok::<_, store::StoreError>((counts, writes, inbox, parked))
    }
    .await;
    let components = st.ctx.health.all();
    // Liveness: only a loop stuck in one round makes the process worth restarting. A source
    // or provider that keeps failing is reported (`degraded`), and makes `/readyz` fail.
    let stuck = st.ctx.health.stuck(crate::engine::STUCK_AFTER);
    let degraded = st.ctx.health.degraded();
    match result {
        Ok((counts, writes, inbox, parked)) => {
            let messages: serde_json::Map<String, serde_json::Value> =
                counts.into_iter().map(|(k, v)| (k, json!(v))).collect();
            let status = if !stuck.is_empty() {
                "stuck"
            } else if degraded {
                "degraded"
            } else {
                "ok"
            };
            let code = if stuck.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
            (
                code,
                Json(json!({
                    "status": status,
                    "components": components,
                    "messages": messages,
                    "pending_write_back": writes,
                    "pending_webhooks": inbox,
                    "parked_webhooks": parked,
                    "stuck_loops": stuck.iter().map(|(n, d)| json!({"loop": n, "for_s": d.as_secs()})).collect::<Vec<_>>(),
                })),
            )
                .into_response()
        }
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "store unavailable", "error": e.to_string(), "components": components })),
        )
            .into_response(),
    }
}

/// Readiness: 200 `ready` when every source has completed a read recently (within three poll
/// intervals, or five minutes for slower polls), no source or provider keeps failing and no
/// loop is stuck; else 503 `not ready` with each reason.
async fn readyz(State(st): State<AppState>) -> Response {
    let ctx = &st.ctx;
    let now = ctx.now_ms();
    let mut reasons: Vec<String> = Vec::new();
    for source in &ctx.config.sources {
        let settings = source.settings();
        let name = format!("source:{}", settings.id);
        let allowed = (settings.poll_interval * 3).max(std::time::Duration::from_secs(300));
        match ctx.health.get(&name).and_then(|c| c.ok_at) {
            None => reasons.push(format!("{name}: no read completed yet")),
            Some(at) if now - at > allowed.as_millis() as i64 => {
                reasons.push(format!("{name}: last read completed {} s ago", (now - at) / 1000))
            }
            Some(_) => {}
        }
    }
    for (name, c) in ctx.health.all() {
        if c.degraded {
            let error = c.last_error.unwrap_or_default();
            reasons.push(format!("{name}: failed {} times in a row ({error})", c.consecutive_failures));
        }
    }
    for (name, d) in ctx.health.stuck(crate::engine::STUCK_AFTER) {
        reasons.push(format!("{name}: stuck in one round for {} s", d.as_secs()));
    }
    let ready = reasons.is_empty();
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let status = if ready { "ready" } else { "not ready" };
    (code, Json(json!({ "status": status, "reasons": reasons, "components": ctx.health.all() }))).into_response()
}

/// Prometheus text exposition. The states (funnels, backlogs, quotas) are read now; the event
/// counters were counted as things happened.
async fn metrics(State(st): State<AppState>) -> Response {
    let ctx = &st.ctx;
    let m = &ctx.metrics;
    let started = std::time::Instant::now();
    let read = async {
        let mut conn = ctx.store.conn().await?;
        let funnels = store::report::funnel(&mut conn, 0, None).await?;
        let (writes, timers) = store::report::backlog(&mut conn).await?;
        let webhooks = store::pending_webhook_count(&mut conn).await?;
        let handoffs = store::handoff_counts(&mut conn).await?;
        Ok::<_, store::StoreError>((funnels, writes, timers, webhooks, handoffs))
    }
    .await;
    match read {
        Ok((funnels, writes, timers, webhooks, (open, unanswered))) => {
            m.messages.clear();
            for f in &funnels {
                for stage in store::report::FUNNEL_STAGES {
                    m.messages
                        .get_or_create(&crate::metrics::RuleStage { rule: f.rule.clone(), stage: stage.to_string() })
                        .set(f.stage(stage));
                }
            }
            m.write_back_pending.set(writes);
            m.timers_pending.set(timers);
            m.webhooks_pending.set(webhooks);
            m.handoffs_open.set(open);
            m.handoffs_unanswered.set(unanswered);
        }
        Err(e) => {
            warn!("metrics: reading the store failed: {e}");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("the state store is unavailable: {e}")).into_response();
        }
    }
    for (name, c) in ctx.health.all() {
        let (Some(source), Some(q)) = (name.strip_prefix("source:"), c.quota.as_ref()) else {
            continue;
        };
        let labels = crate::metrics::SourceWindow { source: source.to_string(), window: q.window.to_string() };
        if let Some(used) = q.used {
            m.quota_used.get_or_create(&labels).set(used as i64);
        }
        if let Some(allowed) = q.allowed {
            m.quota_limit.get_or_create(&labels).set(allowed as i64);
        }
    }
    m.scrape_seconds.set(started.elapsed().as_secs_f64());
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], m.encode())
        .into_response()
}
