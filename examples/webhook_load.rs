//! End-to-end status-ingestion run: the real daemon sends N messages to the Meta or the Twilio
//! emulator (which sends no statuses of its own here), then this run POSTs each message's
//! `sent`, `delivered` and `read` status — 3·N single-event deliveries, signed exactly as the
//! vendor signs them — from `--concurrency` senders at once. Reports deliveries answered a
//! second (verified and stored before the 200), their latency, and how long the daemon took to
//! apply them all (outbox states and the row's status cell queued for write-back).
//!
//! `cargo run --release --example webhook_load -- --messages 3000 --concurrency 32 [--provider twilio]`
//! (figures in BENCHMARKS.md). With `--daemon PATH` the daemon is that binary in a process of
//! its own (as systemd runs it), the emulator and the senders in this one, and the run also
//! reports the CPU the daemon used to take and apply the deliveries. `--lean-sender` posts
//! with a minimal HTTP/1.1 writer on kept-alive connections instead of reqwest, so that the
//! senders take less of the two cores the daemon also runs on.

// Shared with dispatch_load, which uses the parts this run does not.
#[allow(dead_code)]
#[path = "load_daemon/mod.rs"]
mod load_daemon;
#[allow(dead_code)]
#[path = "separate_daemon/mod.rs"]
mod separate_daemon;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use load_daemon::{arg, twilio_chosen, LoadDaemon};
use recado::sandbox::{Sandbox, SignedRequest};
use recado::store::{self, Store};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = arg("--messages", 3000.0) as usize;
    let concurrency = arg("--concurrency", 32.0).max(1.0) as usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = args.iter().position(|a| a == "--daemon").and_then(|i| args.get(i + 1)) {
        return separate(path, twilio_chosen(), n, concurrency).await;
    }
    let load = LoadDaemon::start(twilio_chosen(), 1000.0, n).await?;
    load.baseline_done().await?;
    load.queue(n).await?;
    all_sent(&load.app.ctx().store, n).await?;

    let requests = statuses_of_every_message(&load.sandbox, load.twilio, n)?;
    let posted = post_all(requests, concurrency).await?;
    let store = load.app.ctx().store.clone();
    let applied = all_applied(&store, posted.started).await?;
    report(&store, load.twilio, concurrency, &posted, applied).await?;
    load.stop().await;
    Ok(())
}

/// Every status of every message the emulator accepted, signed as the vendor signs them, in
/// the order the vendor would send them.
fn statuses_of_every_message(sandbox: &Sandbox, twilio: bool, n: usize) -> anyhow::Result<Vec<SignedRequest>> {
    let mut requests: Vec<SignedRequest> = Vec::with_capacity(3 * n);
    for status in ["sent", "delivered", "read"] {
        if twilio {
            let sent = sandbox.twilio().sent();
            requests.extend(
                sent.iter()
                    .filter(|m| m.direction != "inbound")
                    .filter_map(|m| sandbox.twilio().signed_status(m, status)),
            );
        } else {
            requests.extend(sandbox.meta().sent().iter().filter_map(|m| sandbox.meta().signed_status(m, status)));
        }
    }
    anyhow::ensure!(requests.len() == 3 * n, "built {} deliveries for {n} messages", requests.len());
    Ok(requests)
}

/// What the senders saw.
struct Posted {
    started: Instant,
    answered: Duration,
    total: usize,
    latencies: Vec<Duration>,
    refused: usize,
}

/// POSTs every request from `concurrency` senders at once, each waiting for its answer.
async fn post_all(requests: Vec<SignedRequest>, concurrency: usize) -> anyhow::Result<Posted> {
    let total = requests.len();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(total)));
    let refused = Arc::new(AtomicUsize::new(0));
    let http = reqwest::Client::builder().pool_max_idle_per_host(concurrency).build()?;
    let lean = std::env::args().any(|a| a == "--lean-sender");
    // The lean sender's requests, written out whole before the clock starts.
    let wire: Arc<Vec<Vec<u8>>> = Arc::new(if lean { requests.iter().map(http1_bytes).collect() } else { Vec::new() });
    let address = requests.first().and_then(|r| host_port(&r.url)).unwrap_or_default();
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..concurrency {
        let (requests, next, latencies, refused, http) =
            (requests.clone(), next.clone(), latencies.clone(), refused.clone(), http.clone());
        if lean {
            let (wire, address) = (Arc::clone(&wire), address.clone());
            senders.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                let mut connection = None;
                while let Some(bytes) = wire.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let t = Instant::now();
                    let ok = tokio::time::timeout(Duration::from_secs(15), post_lean(&mut connection, &address, bytes))
                        .await
                        .unwrap_or(false);
                    mine.push(t.elapsed());
                    if !ok {
                        refused.fetch_add(1, Ordering::Relaxed);
                        connection = None;
                    }
                }
                latencies.lock().map(|mut l| l.extend(mine)).ok();
            }));
            continue;
        }
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
    let mut latencies = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    latencies.sort();
    Ok(Posted { started, answered, total, latencies, refused: refused.load(Ordering::Relaxed) })
}

/// `host:port` of an `http://` URL.
fn host_port(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    Some(rest.split('/').next()?.to_string())
}

/// A request as HTTP/1.1 bytes on a kept-alive connection.
fn http1_bytes(r: &SignedRequest) -> Vec<u8> {
    let rest = r.url.strip_prefix("http://").unwrap_or(&r.url);
    let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
    let mut head = format!("POST /{path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n", r.body.len());
    for (name, value) in &r.headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&r.body);
    bytes
}

/// The lean sender: writes one request on a kept-alive connection (opened if there is none)
/// and reads its answer by its `content-length`. Whether it was a 200. What a vendor's
/// delivery infrastructure spends is not on the daemon's machine; this keeps what the senders
/// spend here small (reqwest's client costs more CPU a request than the daemon's answer).
async fn post_lean(connection: &mut Option<tokio::net::TcpStream>, address: &str, bytes: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if connection.is_none() {
        let Ok(stream) = tokio::net::TcpStream::connect(address).await else { return false };
        let _ = stream.set_nodelay(true);
        *connection = Some(stream);
    }
    let Some(stream) = connection.as_mut() else { return false };
    if stream.write_all(bytes).await.is_err() {
        return false;
    }
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => answer.extend_from_slice(&chunk[..k]),
        }
    };
    let head = String::from_utf8_lossy(&answer[..head_end]).to_ascii_lowercase();
    // The daemon's answers carry a length; one without (or chunked) is not read here, and
    // counts as a failure rather than leaving its body to be taken for the next answer.
    let Some(length) =
        head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok())
    else {
        *connection = None;
        return false;
    };
    while answer.len() < head_end + length {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(k) => answer.extend_from_slice(&chunk[..k]),
        }
    }
    if head.contains("connection: close") {
        *connection = None;
    }
    head.starts_with("http/1.1 200")
}

/// Waits until all `n` messages are accepted and their acceptance recorded (else a status
/// could come before the daemon knows the message's id, and wait to be matched).
async fn all_sent(store: &Store, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut c = store.conn().await?;
        let counts = store::counts_by_state(&mut c).await?;
        drop(c);
        if counts.iter().any(|(state, count)| state == "sent" && *count as usize == n) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the {n} messages were not all sent: {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the daemon has applied every stored delivery; how long after `started`.
async fn all_applied(store: &Store, started: Instant) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let mut c = store.conn().await?;
        if store::pending_webhook_count(&mut c).await? == 0 {
            return Ok(started.elapsed());
        }
        anyhow::ensure!(Instant::now() < deadline, "the deliveries were not all applied in 5 minutes");
        drop(c);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn report(
    store: &Store,
    twilio: bool,
    concurrency: usize,
    posted: &Posted,
    applied: Duration,
) -> anyhow::Result<()> {
    let mut c = store.conn().await?;
    let counts = store::counts_by_state(&mut c).await?;
    let parked = store::parked_webhook_count(&mut c).await?;
    drop(c);
    let lat = &posted.latencies;
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied();
    let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let total = posted.total as f64;
    println!(
        "{} · {} deliveries from {concurrency} senders · answered {:.0}/s (p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, not 200: {}) · all applied after {:.2} s = {:.0} events/s · parked {parked} · outbox: {counts:?}",
        if twilio { "twilio" } else { "meta" },
        posted.total,
        total / posted.answered.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        ms(lat.last().copied()),
        posted.refused,
        applied.as_secs_f64(),
        total / applied.as_secs_f64(),
    );
    Ok(())
}

/// The daemon as its own process: N rows appear in the sheet at once, it sends their
/// messages, then every status of every message is posted to it.
async fn separate(path: &str, twilio: bool, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let (sandbox, content_sid) = load_daemon::sandbox(1000.0, 0).await?;
    let dir = tempfile::tempdir()?;
    let port = separate_daemon::free_port()?;
    let yaml = load_daemon::config_yaml(&sandbox, &content_sid, twilio, 1000.0, dir.path(), port, "1s")?;
    sandbox.meta().update_settings(|s| s.webhook_url = Some(format!("http://127.0.0.1:{port}/webhooks/p")));
    let child = separate_daemon::start(path, &yaml, dir.path(), port).await?;
    let pid = child.id();
    let store = separate_daemon::after_first_read(&dir.path().join("load.db"), "s", Duration::from_secs(60)).await?;
    let rows = (0..n).map(|i| vec![serde_json::json!(i), serde_json::json!(load_daemon::phone(i))]).collect();
    anyhow::ensure!(sandbox.google().append_rows("load", "T", rows), "the rows could not be added");
    all_sent(&store, n).await?;
    let requests = statuses_of_every_message(&sandbox, twilio, n)?;
    let cpu_before = separate_daemon::cpu_seconds(pid).unwrap_or(0.0);
    let posted = post_all(requests, concurrency).await?;
    let applied = all_applied(&store, posted.started).await?;
    let cpu = separate_daemon::cpu_seconds(pid).unwrap_or(0.0) - cpu_before;
    report(&store, twilio, concurrency, &posted, applied).await?;
    println!(
        "daemon in its own process: {cpu:.2} s of CPU from the first delivery until all were applied ({:.2} cores over {:.2} s; {:.0} µs a delivery)",
        cpu / applied.as_secs_f64(),
        applied.as_secs_f64(),
        cpu / posted.total as f64 * 1e6,
    );
    store.close().await;
    separate_daemon::stop(child)?;
    sandbox.stop().await;
    Ok(())
}
