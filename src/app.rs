//! Wiring: builds every part from a validated [`Config`], spawns the loops, and stops them in
//! order. This and the vendor folders are the only places that name vendors: a new source or
//! provider is wired in [`connect_sources`] / [`connect_providers`].
//!
//! One way to spawn (here, each loop inside a supervisor), one way to stop
//! ([`RunningApp::stop`]), in stages: intake stops first (the webhook server, pollers, the
//! timer loop), then the dispatchers finish the sends in flight and record them, then the inbox
//! applies what arrived meanwhile, then the flushers write everything back, then the store
//! closes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::config::{Config, SourceConfig};
use crate::engine::dispatcher::Dispatcher;
use crate::engine::flusher::Flusher;
use crate::engine::inbox::InboxProcessor;
use crate::engine::poller::SourcePoller;
use crate::engine::retention::RetentionLoop;
use crate::engine::supervisor::supervise;
use crate::engine::timers::TimerLoop;
use crate::engine::{Clock, EngineCtx, Shutdown};
use crate::providers::Provider;
use crate::rules::RuleSet;
use crate::sources::{google_sheets, salesforce, Source, SourceWriter};
use crate::store::Store;

/// The HTTP client for vendor APIs. Each call also sets its own timeout.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(64)
        .user_agent(concat!("recado/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("building the HTTP client")
}

/// The read side of every source (in configuration order) and the writers of their write
/// groups.
pub type Connected = (Vec<Arc<Source>>, Vec<Arc<SourceWriter>>);

/// Connects every configured source.
pub fn connect_sources(config: &Config, http: &reqwest::Client) -> anyhow::Result<Connected> {
    let mut sheets = Vec::new();
    let mut orgs = Vec::new();
    for s in &config.sources {
        match s {
            SourceConfig::GoogleSheets(g) => sheets.push(g.clone()),
            SourceConfig::Salesforce(c) => orgs.push(c.clone()),
        }
    }
    let (readers, sheet_writers) = google_sheets::connect(&sheets, http).map_err(anyhow::Error::msg)?;
    let mut by_id: HashMap<String, Arc<Source>> =
        readers.into_iter().map(|r| (r.settings().id.clone(), Arc::new(Source::GoogleSheets(r)))).collect();
    let (records, record_writers) = salesforce::connect(&orgs, http).map_err(anyhow::Error::msg)?;
    by_id.extend(records.into_iter().map(|r| (r.settings().id.clone(), Arc::new(Source::Salesforce(r)))));
    let sources = config.sources.iter().filter_map(|s| by_id.remove(s.id())).collect();
    let writers = sheet_writers
        .into_iter()
        .map(SourceWriter::GoogleSheets)
        .chain(record_writers.into_iter().map(SourceWriter::Salesforce))
        .map(Arc::new)
        .collect();
    Ok((sources, writers))
}

/// Every configured provider, by id. Vendors that call recado back at a URL given with each
/// message (status callbacks) are told `http.public_url`, or else the address recado listens
/// on (the sandbox and tests, where the vendor is on this machine).
pub fn connect_providers(
    config: &Config,
    http: &reqwest::Client,
    listening: Option<SocketAddr>,
) -> HashMap<String, Provider> {
    let public_base = config.http.public_url.clone().or_else(|| listening.map(|a| format!("http://{a}")));
    config.providers.iter().map(|p| (p.id().to_string(), p.connect(http, public_base.as_deref()))).collect()
}

/// A stop signal and the loops that listen to it.
struct Stage {
    stop: watch::Sender<bool>,
    shutdown: Shutdown,
    handles: Vec<JoinHandle<()>>,
}

impl Stage {
    fn new() -> Self {
        let (stop, shutdown) = Shutdown::new();
        Self { stop, shutdown, handles: Vec::new() }
    }

    /// Signals the stage's loops and waits for them until `deadline`; loops still busy then
    /// (a vendor call that hangs) are cut off. Nothing is lost by that: what they had not
    /// finished stays in the store (queued values, sends in doubt) for the next start.
    async fn stop_by(self, stage: &'static str, deadline: tokio::time::Instant) {
        let _ = self.stop.send(true);
        let mut handles = self.handles.into_iter();
        while let Some(mut h) = handles.next() {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                let left = 1 + handles.len();
                warn!(stage, loops = left, "stop took too long: cutting off the loops still busy; their work waits in the store for the next start");
                h.abort();
                for h in handles.by_ref() {
                    h.abort();
                }
            }
        }
    }
}

/// How long a graceful stop may take in all, kept under the unit's `TimeoutStopSec=60`
/// (`deploy/recado.service`) so systemd never has to kill recado mid-write.
pub const STOP_BUDGET: Duration = Duration::from_secs(50);

/// The daemon, running.
pub struct RunningApp {
    /// Held until the daemon stops: a second daemon on the same state refuses to start.
    _lock: crate::store::StateLock,
    ctx: Arc<EngineCtx>,
    webhook_addr: SocketAddr,
    intake: Stage,
    senders: Stage,
    inbox: Stage,
    writers: Stage,
}

/// Starts everything on the system clock.
pub async fn start(config: Config) -> anyhow::Result<RunningApp> {
    start_with_clock(config, Arc::new(Clock::system())).await
}

/// Starts everything. Returns once the webhook server listens and every loop is spawned.
pub async fn start_with_clock(config: Config, clock: Arc<Clock>) -> anyhow::Result<RunningApp> {
    let config = Arc::new(config);
    let lock = crate::store::StateLock::acquire(&config.state.path)?;
    let store = Store::open(&config.state.path).await?;
    let rules = Arc::new(RuleSet::compile(&config.rules).map_err(anyhow::Error::msg)?);
    let http = http_client()?;
    let (sources, writers) = connect_sources(&config, &http)?;
    let groups: Vec<Vec<String>> = writers.iter().map(|w| w.source_ids()).collect();
    let ctx = EngineCtx::new(store, Arc::clone(&config), rules, clock, &groups);
    let (mut intake, mut senders, mut inbox, mut writers_stage) =
        (Stage::new(), Stage::new(), Stage::new(), Stage::new());

    // The webhook server first: deliveries that arrive while we start are stored, not lost.
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("cannot listen on {} (http.listen)", config.http.listen))?;
    let webhook_addr = listener.local_addr()?;
    let providers = connect_providers(&config, &http, Some(webhook_addr));
    {
        let (ctx, sd, providers) = (Arc::clone(&ctx), intake.shutdown.clone(), providers.clone());
        intake.handles.push(tokio::spawn(async move {
            if let Err(e) = crate::http::serve(listener, ctx, providers, sd).await {
                tracing::error!("webhook server stopped: {e}");
            }
        }));
    }

    for source in sources {
        let name = (format!("source:{}", source.id()), "source");
        let (ctx2, sd) = (Arc::clone(&ctx), intake.shutdown.clone());
        intake.handles.push(supervise(name, Arc::clone(&ctx.health), intake.shutdown.clone(), move || {
            let (ctx, source, mut sd) = (Arc::clone(&ctx2), Arc::clone(&source), sd.clone());
            async move {
                loop {
                    match SourcePoller::new(Arc::clone(&source), Arc::clone(&ctx)).await {
                        Ok(p) => return p.run(sd).await,
                        Err(e) => {
                            tracing::error!(source = %source.id(), "cannot load the source's state, retrying in 5 s: {e}");
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                                _ = sd.wait() => return,
                            }
                        }
                    }
                }
            }
        }));
    }
    {
        let (ctx2, sd) = (Arc::clone(&ctx), intake.shutdown.clone());
        intake.handles.push(supervise(
            ("loop:timers".into(), "loop"),
            Arc::clone(&ctx.health),
            sd.clone(),
            move || TimerLoop::new(Arc::clone(&ctx2)).run(sd.clone()),
        ));
    }
    {
        let (ctx2, sd) = (Arc::clone(&ctx), intake.shutdown.clone());
        intake.handles.push(supervise(
            ("loop:retention".into(), "loop"),
            Arc::clone(&ctx.health),
            sd.clone(),
            move || RetentionLoop::new(Arc::clone(&ctx2)).run(sd.clone()),
        ));
    }
    for provider in providers.values() {
        let (ctx2, sd, provider) = (Arc::clone(&ctx), senders.shutdown.clone(), provider.clone());
        let name = (format!("provider:{}", provider.id()), "provider");
        senders.handles.push(supervise(name, Arc::clone(&ctx.health), sd.clone(), move || {
            Dispatcher::new(provider.clone(), Arc::clone(&ctx2)).run(sd.clone())
        }));
    }
    {
        let (ctx2, sd, providers) = (Arc::clone(&ctx), inbox.shutdown.clone(), providers.clone());
        inbox.handles.push(supervise(("loop:inbox".into(), "loop"), Arc::clone(&ctx.health), sd.clone(), move || {
            InboxProcessor::new(Arc::clone(&ctx2), providers.clone()).run(sd.clone())
        }));
    }
    {
        // Files people sent: fetched apart from the inbox (a download may take seconds); a
        // file not fetched when the daemon stops is fetched at the next start.
        let (ctx2, sd, providers) = (Arc::clone(&ctx), senders.shutdown.clone(), providers.clone());
        senders.handles.push(supervise(
            ("loop:media".into(), "loop"),
            Arc::clone(&ctx.health),
            sd.clone(),
            move || crate::engine::media::MediaFetcher::new(Arc::clone(&ctx2), providers.clone()).run(sd.clone()),
        ));
    }
    for writer in writers {
        let (ctx2, sd) = (Arc::clone(&ctx), writers_stage.shutdown.clone());
        let name = (format!("flusher:{}", writer.label()), "loop");
        writers_stage.handles.push(supervise(name, Arc::clone(&ctx.health), sd.clone(), move || {
            Flusher::new(Arc::clone(&writer), Arc::clone(&ctx2)).run(sd.clone())
        }));
    }
    info!(webhooks = %webhook_addr, sources = config.sources.len(), providers = config.providers.len(), rules = config.rules.len(), "recado started");
    if let Some(public) = &config.http.public_url {
        // A `user:pass@` in the URL is a credential: never logged.
        let public = match public.split_once("://") {
            Some((scheme, rest)) => {
                let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
                match authority.rsplit_once('@') {
                    Some((_, host)) => format!("{scheme}://…@{host}{path}"),
                    None => public.clone(),
                }
            }
            None => public.clone(),
        };
        for p in &config.providers {
            info!(provider = %p.id(), "webhook callback URL to configure at the provider: {public}/webhooks/{}", p.id());
        }
    }
    Ok(RunningApp { _lock: lock, ctx, webhook_addr, intake, senders, inbox, writers: writers_stage })
}

impl RunningApp {
    /// Where the webhook server listens.
    pub fn webhook_addr(&self) -> SocketAddr {
        self.webhook_addr
    }

    pub fn ctx(&self) -> &Arc<EngineCtx> {
        &self.ctx
    }

    /// Graceful stop, in stages: intake, senders (in-flight sends finish and are recorded), the
    /// inbox (applies what arrived), write-back (a last flush that sees every outcome), the
    /// store.
    pub async fn stop(self) {
        self.stop_within(STOP_BUDGET).await
    }

    /// [`RunningApp::stop`] within `budget`: the senders get up to half of it, the inbox up to
    /// a fifth of what is then left, and write-back the rest (its last flush is what users see).
    pub async fn stop_within(self, budget: Duration) {
        info!("stopping: no new work is taken; in-flight sends finish");
        let start = tokio::time::Instant::now();
        let end = start + budget;
        self.intake.stop_by("intake", start + budget / 10).await;
        self.senders.stop_by("senders", start + budget / 2).await;
        let inbox_until = tokio::time::Instant::now() + end.saturating_duration_since(tokio::time::Instant::now()) / 5;
        self.inbox.stop_by("inbox", inbox_until).await;
        self.writers.stop_by("write-back", end).await;
        self.ctx.store.close().await;
        info!("stopped");
    }
}

/// `recado run`: starts and runs until SIGTERM or Ctrl-C, telling systemd how it goes when
/// it runs under a `Type=notify` unit.
pub async fn run_until_signal(config: Config) -> anyhow::Result<()> {
    run_notifying(config, crate::systemd::Notifier::from_env(), wait_for_signal()).await
}

pub use crate::engine::STUCK_AFTER;

/// Runs until `stop` completes. Through `notifier`: `READY=1` once the store is open, the
/// webhook server listens and every source has completed its first read; `WATCHDOG=1` while
/// no loop is stuck; `STATUS=` with what is queued; `STOPPING=1` when `stop` completes.
pub async fn run_notifying(
    config: Config,
    notifier: crate::systemd::Notifier,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let app = start(config).await?;
    let notifier = Arc::new(notifier);
    let (done, done_rx) = watch::channel(false);
    let pinger = tokio::spawn(notify_loop(Arc::clone(&app.ctx), Arc::clone(&notifier), done_rx));
    stop.await;
    notifier.stopping();
    let _ = done.send(true);
    let _ = pinger.await;
    app.stop().await;
    Ok(())
}

/// What systemd hears while recado runs (see [`run_notifying`]).
async fn notify_loop(ctx: Arc<EngineCtx>, notifier: Arc<crate::systemd::Notifier>, mut done: watch::Receiver<bool>) {
    if !notifier.enabled() {
        return;
    }
    let tick = notifier
        .watchdog_interval()
        .unwrap_or(Duration::from_secs(5))
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    let sources: Vec<String> = ctx.config.sources.iter().map(|s| format!("source:{}", s.id())).collect();
    let mut ready = false;
    let mut last_status = String::new();
    let mut last_status_at = std::time::Instant::now();
    let mut stuck_reported = false;
    loop {
        let stuck = ctx.health.stuck(STUCK_AFTER);
        if stuck.is_empty() {
            stuck_reported = false;
            if notifier.watchdog_interval().is_some() {
                notifier.watchdog();
            }
        } else if !stuck_reported {
            stuck_reported = true;
            let names: Vec<String> = stuck.iter().map(|(n, d)| format!("{n} ({} s)", d.as_secs())).collect();
            tracing::error!(loops = %names.join(", "), "a loop is stuck in one round: systemd's watchdog is no longer fed, so the service will be restarted");
        }
        let status = if ready {
            // The queue is asked for every ten seconds at most.
            if last_status_at.elapsed() >= Duration::from_secs(10) {
                last_status_at = std::time::Instant::now();
                queue_status(&ctx).await
            } else {
                last_status.clone()
            }
        } else {
            let waiting = sources.iter().find(|s| ctx.health.get(s).is_none_or(|c| c.ok_at.is_none()));
            match waiting {
                None => {
                    ready = true;
                    let status = queue_status(&ctx).await;
                    notifier.ready(&status);
                    info!("ready: every source has completed its first read");
                    last_status = status.clone();
                    last_status_at = std::time::Instant::now();
                    status
                }
                Some(first) => {
                    let error = ctx
                        .health
                        .get(first)
                        .and_then(|c| c.last_error)
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default();
                    format!("starting: waiting for the first read of {}{error}", first.trim_start_matches("source:"))
                }
            }
        };
        if status != last_status {
            notifier.status(&status);
            last_status = status;
        }
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = done.changed() => return,
        }
    }
}

/// `STATUS=` once running: what waits to be sent, written back and applied.
async fn queue_status(ctx: &EngineCtx) -> String {
    let counts = async {
        let mut c = ctx.store.conn().await?;
        let by_state = crate::store::counts_by_state(&mut c).await?;
        let queued: i64 = by_state.iter().filter(|(s, _)| s == "queued").map(|(_, n)| n).sum();
        let writes = crate::store::pending_write_count(&mut c).await?;
        let webhooks = crate::store::pending_webhook_count(&mut c).await?;
        Ok::<_, crate::store::StoreError>((queued, writes, webhooks))
    };
    match counts.await {
        Ok((queued, writes, webhooks)) => {
            format!("running: {queued} message(s) queued, {writes} write-back value(s) pending, {webhooks} webhook deliveries to apply")
        }
        Err(e) => format!("running (the queue cannot be read: {e})"),
    }
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
