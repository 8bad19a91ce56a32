//! Wiring: builds every part from a validated [`Config`], spawns the loops, and stops them in
//! order. One way to spawn (here), one way to stop ([`RunningApp::stop`]): intake stops first,
//! in-flight sends finish and are recorded, write-back gets a last flush, then the store closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::config::{Config, SourceConfig};
use crate::engine::dispatcher::Dispatcher;
use crate::engine::flusher::Flusher;
use crate::engine::inbox::InboxProcessor;
use crate::engine::poller::SheetPoller;
use crate::engine::{EngineCtx, Shutdown};
use crate::providers::Provider;
use crate::rules::RuleSet;
use crate::sources::google_sheets::{Budget, GoogleSheets};
use crate::store::Store;

/// The daemon, running.
pub struct RunningApp {
    ctx: Arc<EngineCtx>,
    webhook_addr: SocketAddr,
    stop: watch::Sender<bool>,
    intake: Vec<JoinHandle<()>>,
    senders: Vec<JoinHandle<()>>,
    writers: Vec<JoinHandle<()>>,
}

/// The HTTP client for provider APIs and Drive probes.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .user_agent(concat!("recado/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// Starts everything. Returns once the webhook server listens and every loop is spawned.
pub async fn start(config: Config) -> anyhow::Result<RunningApp> {
    let config = Arc::new(config);
    let store = Store::open(&config.state.path).await?;
    let rules = Arc::new(RuleSet::compile(&config.rules).map_err(anyhow::Error::msg)?);
    let ctx = EngineCtx::new(store, Arc::clone(&config), rules);
    let http = http_client()?;
    let (stop, shutdown) = Shutdown::new();

    let providers: HashMap<String, Provider> =
        config.providers.iter().map(|p| (p.id().to_string(), Provider::new(p, http.clone()))).collect();

    // The webhook server first: deliveries that arrive while we start are stored, not lost.
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    let webhook_addr = listener.local_addr()?;
    let mut intake = Vec::new();
    {
        let ctx = Arc::clone(&ctx);
        let sd = shutdown.clone();
        intake.push(tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listener, ctx, sd).await {
                tracing::error!("webhook server stopped: {e:#}");
            }
        }));
    }

    // Sources: a poller per tab, a flusher per spreadsheet.
    let mut writers = Vec::new();
    let mut sheets: HashMap<String, (GoogleSheets, Vec<crate::config::GoogleSheetsConfig>)> = HashMap::new();
    for s in &config.sources {
        let SourceConfig::GoogleSheets(g) = s;
        let budget = Arc::new(Budget::new(g.requests_per_minute));
        let client = GoogleSheets::connect(g, http.clone(), budget).await?;
        let poller = SheetPoller::new(g.clone(), client.clone(), Arc::clone(&ctx)).await?;
        intake.push(tokio::spawn(poller.run(shutdown.clone())));
        sheets.entry(g.spreadsheet_id.clone()).or_insert_with(|| (client, Vec::new())).1.push(g.clone());
    }
    for (_, (client, tabs)) in sheets {
        let flusher = Flusher::new(tabs, client, Arc::clone(&ctx));
        writers.push(tokio::spawn(flusher.run(shutdown.clone())));
    }
    intake.push(tokio::spawn(crate::engine::timers::TimerLoop::new(Arc::clone(&ctx)).run(shutdown.clone())));
    let inbox = InboxProcessor::new(Arc::clone(&ctx), providers.clone());
    writers.push(tokio::spawn(inbox.run(shutdown.clone())));

    let mut senders = Vec::new();
    for p in &config.providers {
        if let Some(provider) = providers.get(p.id()) {
            let d = Dispatcher::new(p, provider.clone(), Arc::clone(&ctx));
            senders.push(tokio::spawn(d.run(shutdown.clone())));
        }
    }
    info!(webhooks = %webhook_addr, sources = config.sources.len(), providers = config.providers.len(), rules = config.rules.len(), "recado started");
    if let Some(public) = &config.http.public_url {
        for p in &config.providers {
            info!(provider = %p.id(), "webhook callback URL to configure at the provider: {public}/webhooks/{}", p.id());
        }
    }
    Ok(RunningApp { ctx, webhook_addr, stop, intake, senders, writers })
}

impl RunningApp {
    /// Where the webhook server listens.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    pub fn ctx(&self) -> &Arc<EngineCtx> {
        &self.ctx
    }

    /// Graceful stop: pollers and the webhook server stop taking work, dispatchers finish the
    /// sends in flight, the inbox and the flushers finish, then the store closes.
    pub async fn stop(self) {
        info!("stopping: no new work is taken; in-flight sends finish");
        let _ = self.stop.send(true);
        for h in self.intake {
            let _ = h.await;
        }
        for h in self.senders {
            let _ = h.await;
        }
        for h in self.writers {
            let _ = h.await;
        }
        self.ctx.store.close().await;
        info!("stopped");
    }
}

/// `recado run`: starts and runs until SIGTERM or Ctrl-C.
pub async fn run_until_signal(config: Config) -> anyhow::Result<()> {
    let app = start(config).await?;
    wait_for_signal().await;
    app.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
