//! End-to-end status-ingestion run: the real daemon sends N messages to the Meta or the Twilio
//! emulator (which sends no statuses of its own here), then this run POSTs each message's
//! `sent`, `delivered` and `read` status — 3·N single-event deliveries, signed exactly as the
//! vendor signs them — from `--concurrency` senders at once. Reports deliveries answered a
//! second (verified and stored before the 200), their latency, and how long the daemon took to
//! apply them all (outbox states and the row's status cell queued for write-back).
//!
//! `cargo run --release --example webhook_load -- --messages 3000 --concurrency 32 [--provider twilio]`
//! (figures in BENCHMARKS.md).

// Shared with dispatch_load, which uses the parts this run does not.
#[allow(dead_code)]
#[path = "load_daemon/mod.rs"]
mod load_daemon;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use load_daemon::{arg, twilio_chosen, LoadDaemon};
use recado::sandbox::SignedRequest;
use recado::store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--messages", 3000.0) as usize;
    let concurrency = arg("--concurrency", 32.0).max(1.0) as usize;
    let load = LoadDaemon::start(twilio_chosen(), 1000.0, n).await?;
    load.baseline_done().await?;
    load.queue(n).await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut c = load.app.ctx().store.conn().await?;
        let counts = store::counts_by_state(&mut c).await?;
        if counts.iter().any(|(state, count)| state == "sent" && *count as usize == n) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the {n} messages were not all sent: {counts:?}");
        drop(c);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every status of every message, in the order the vendor would send them.
    let mut requests: Vec<SignedRequest> = Vec::with_capacity(3 * n);
    for status in ["sent", "delivered", "read"] {
        if load.twilio {
            let sent = load.sandbox.twilio().sent();
            requests.extend(
                sent.iter()
                    .filter(|m| m.direction != "inbound")
                    .filter_map(|m| load.sandbox.twilio().signed_status(m, status)),
            );
        } else {
            requests
                .extend(load.sandbox.meta().sent().iter().filter_map(|m| load.sandbox.meta().signed_status(m, status)));
        }
    }
    anyhow::ensure!(requests.len() == 3 * n, "built {} deliveries for {n} messages", requests.len());
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(3 * n)));
    let refused = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        let (requests, next, latencies, refused, http) =
            (requests.clone(), next.clone(), latencies.clone(), refused.clone(), http.clone());
        senders.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(r) = requests.get(next.fetch_add(1, Ordering::Relaxed)) {
                let mut post = http.post(&r.url).body(r.body.clone()).timeout(Duration::from_secs(15));
                for (name, value) in &r.headers {
                    post = post.header(*name, value);
                }
                let t = Instant::now();
                let ok = post.send().await.is_ok_and(|resp| resp.status().is_success());
                mine.push(t.elapsed());
                if !ok {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
            latencies.lock().map(|mut l| l.extend(mine)).ok();
        }));
    }
    for s in senders {
        s.await?;
    }
    let answered = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut c = load.app.ctx().store.conn().await?;
        if store::pending_webhook_count(&mut c).await? == 0 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the deliveries were not all applied in 5 minutes");
        drop(c);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = started.elapsed();
    let mut c = load.app.ctx().store.conn().await?;
    let counts = store::counts_by_state(&mut c).await?;
    let parked = store::parked_webhook_count(&mut c).await?;
    drop(c);
    let mut lat = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    lat.sort();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let total = requests.len() as f64;
    println!(
        "{} · {} deliveries from {concurrency} senders · answered {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, not 200: {}) · all applied after {:.2} s = {:.0} events/s · parked {parked} · outbox: {counts:?}",
        if load.twilio { "twilio" } else { "meta" },
        requests.len(),
        total / answered.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lat.last().copied()),
        refused.load(Ordering::Relaxed),
        applied.as_secs_f64(),
        total / applied.as_secs_f64(),
    );
    load.stop().await;
    Ok(())
}
