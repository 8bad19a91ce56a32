//! The daemon's HTTP server: `/webhooks/{provider-id}` and `/healthz`.
//!
//! A webhook is verified over its raw bytes, stored, and only then acknowledged with 200;
//! processing happens from the store (see `engine::inbox`). Unsigned or mis-signed deliveries
//! get 401/403 and change nothing. Bodies are size-limited.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tracing::{info, warn};

use crate::config::ProviderConfig;
use crate::engine::{now_ms, EngineCtx, Shutdown};
use crate::providers::meta_cloud::webhook as meta;
use crate::store;

#[derive(Clone)]
struct AppState {
    ctx: Arc<EngineCtx>,
    providers: Arc<HashMap<String, ProviderConfig>>,
}

/// Builds the router (also used by tests through a real listener).
pub fn router(ctx: Arc<EngineCtx>) -> Router {
    let providers: HashMap<String, ProviderConfig> =
        ctx.config.providers.iter().map(|p| (p.id().to_string(), p.clone())).collect();
    let limit = ctx.config.http.max_body_bytes;
    Router::new()
        .route("/webhooks/{provider}", get(verify).post(receive))
        .route("/healthz", get(healthz))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(AppState { ctx, providers: Arc::new(providers) })
}

/// Serves until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    ctx: Arc<EngineCtx>,
    mut shutdown: Shutdown,
) -> anyhow::Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    info!(%addr, "webhook server listening");
    axum::serve(listener, router(ctx)).with_graceful_shutdown(async move { shutdown.wait().await }).await?;
    Ok(())
}

async fn verify(
    State(st): State<AppState>,
    Path(provider): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(ProviderConfig::MetaCloud(cfg)) = st.providers.get(&provider) else {
        return (StatusCode::NOT_FOUND, "unknown provider").into_response();
    };
    match meta::verify_subscription(
        q.get("hub.mode").map(String::as_str),
        q.get("hub.verify_token").map(String::as_str),
        q.get("hub.challenge").map(String::as_str),
        cfg.verify_token.expose(),
    ) {
        Some(challenge) => {
            info!(provider = %provider, "webhook subscription verified");
            (StatusCode::OK, challenge.to_string()).into_response()
        }
        None => {
            warn!(provider = %provider, "webhook verification refused: wrong mode or verify token");
            (StatusCode::FORBIDDEN, "verification failed").into_response()
        }
    }
}

async fn receive(
    State(st): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(ProviderConfig::MetaCloud(cfg)) = st.providers.get(&provider) else {
        return (StatusCode::NOT_FOUND, "unknown provider").into_response();
    };
    let sig = headers.get(meta::SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if let Err(e) = meta::verify_signature(cfg.app_secret.expose(), &body, sig) {
        warn!(provider = %provider, "webhook refused: {e}");
        let status = match e {
            meta::SignatureError::Missing => StatusCode::UNAUTHORIZED,
            _ => StatusCode::FORBIDDEN,
        };
        return (status, e.to_string()).into_response();
    }
    let stored = async {
        let mut conn = st.ctx.store.conn().await?;
        store::insert_inbox(&mut conn, &provider, &body, now_ms()).await
    }
    .await;
    match stored {
        Ok(_) => {
            st.ctx.inbox_wake.notify_one();
            StatusCode::OK.into_response()
        }
        Err(e) => {
            // Not stored means not acknowledged: Meta will deliver it again.
            warn!(provider = %provider, "could not store a webhook, answering 503 so it is retried: {e}");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

async fn healthz(State(st): State<AppState>) -> Response {
    let result = async {
        let mut conn = st.ctx.store.conn().await?;
        let counts = store::counts_by_state(&mut conn).await?;
        let writes = store::pending_write_count(&mut conn).await?;
        let inbox = store::pending_inbox_count(&mut conn).await?;
        Ok::<_, sqlx::Error>((counts, writes, inbox))
    }
    .await;
    match result {
        Ok((counts, writes, inbox)) => {
            let messages: serde_json::Map<String, serde_json::Value> =
                counts.into_iter().map(|(k, v)| (k, json!(v))).collect();
            Json(json!({ "status": "ok", "messages": messages, "pending_write_back": writes, "pending_webhooks": inbox })).into_response()
        }
        Err(e) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "store unavailable", "error": e.to_string() })))
                .into_response()
        }
    }
}
