//! End-to-end dispatch load run: the real daemon sends N queued messages to the Meta or the
//! Twilio emulator over HTTP, with the provider's throughput set to `--rate` and the emulator's
//! sender throughput set to the same value. Reports the achieved rate and how many sends the
//! emulator refused (Meta: 130429 above the ceiling; Twilio: 429/20429 above the account's
//! concurrent-request limit, since Twilio queues rather than refuses above a sender's pace).
//!
//! `cargo run --release --example dispatch_load -- --rate 80 --messages 2000 [--provider twilio]`
//! `cargo build --release && cargo run --release --example dispatch_load -- --rate 1000 --messages 20000 --daemon target/release/recado`
//! (figures in BENCHMARKS.md). With `--daemon PATH` the daemon is that binary in a process of
//! its own, and the messages come the way they do in production: N rows added to the sheet at
//! once, found by one poll; the run also reports the CPU the daemon used while sending.

#[path = "load_daemon/mod.rs"]
mod load_daemon;
// Each load run uses part of it.
#[allow(dead_code)]
#[path = "separate_daemon/mod.rs"]
mod separate_daemon;

use std::time::{Duration, Instant};

use load_daemon::{arg, twilio_chosen, LoadDaemon};
use recado::store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = arg("--rate", 80.0);
    let n = arg("--messages", (rate * 20.0).max(500.0)) as usize;
    let args: Vec<String> = std::env::args().collect();
    if let Some(path) = args.iter().position(|a| a == "--daemon").and_then(|i| args.get(i + 1)) {
        return separate(path, twilio_chosen(), rate, n).await;
    }
    // An empty sheet: the run measures sending alone, not a poll of N rows beside it.
    let load = LoadDaemon::start(twilio_chosen(), rate, 0).await?;
    load.baseline_done().await?;
    load.queue(n).await?;
    let started = Instant::now();
    while load.sent_count() < n {
        if started.elapsed() > Duration::from_secs((n as f64 / rate * 3.0 + 30.0) as u64) {
            anyhow::bail!("only {} of {n} sent", load.sent_count());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let accepted_at = load.accepted_at_ms();
    let first = accepted_at.iter().copied().min().unwrap_or(0);
    let last = accepted_at.iter().copied().max().unwrap_or(0);
    let achieved = (n as f64 - 1.0) / ((last - first).max(1) as f64 / 1000.0);
    let mut c = load.app.ctx().store.conn().await?;
    let counts = store::counts_by_state(&mut c).await?;
    drop(c);
    let refused =
        if load.twilio { load.sandbox.twilio().refused_concurrency() } else { load.sandbox.meta().throttled() };
    println!(
        "{} · rate {rate}/s · {n} messages · achieved {achieved:.1}/s ({:.1}% of the ceiling) · refused by the emulator (429): {refused} · outbox: {counts:?}",
        if load.twilio { "twilio" } else { "meta" },
        achieved / rate * 100.0,
    );
    load.stop().await;
    Ok(())
}

/// The daemon as its own process: N rows appear in the sheet at once, and it sends their
/// welcome messages at `rate`.
async fn separate(path: &str, twilio: bool, rate: f64, n: usize) -> anyhow::Result<()> {
    let (sandbox, content_sid) = load_daemon::sandbox(rate, 0).await?;
    let dir = tempfile::tempdir()?;
    let port = separate_daemon::free_port()?;
    let yaml = load_daemon::config_yaml(&sandbox, &content_sid, twilio, rate, dir.path(), port, "2s")?;
    let child = separate_daemon::start(path, &yaml, dir.path(), port).await?;
    let pid = child.id();
    let store = separate_daemon::after_first_read(&dir.path().join("load.db"), "s", Duration::from_secs(60)).await?;
    let cpu_idle = separate_daemon::cpu_seconds(pid).unwrap_or(0.0);
    let rows = (0..n).map(|i| vec![serde_json::json!(i), serde_json::json!(load_daemon::phone(i))]).collect();
    anyhow::ensure!(sandbox.google().append_rows("load", "T", rows), "the rows could not be added");
    let sent = || if twilio { sandbox.twilio().sent_count() } else { sandbox.meta().sent_count() };
    let started = Instant::now();
    // From the first quarter sent on, the poll of the new rows is long over: what the daemon
    // spends then is sending alone.
    let mut quarter: Option<(Instant, f64)> = None;
    while sent() < n {
        if started.elapsed() > Duration::from_secs((n as f64 / rate * 3.0 + 60.0) as u64) {
            anyhow::bail!("only {} of {n} sent", sent());
        }
        if quarter.is_none() && sent() >= n / 4 {
            quarter = Some((Instant::now(), separate_daemon::cpu_seconds(pid).unwrap_or(0.0)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_end = separate_daemon::cpu_seconds(pid).unwrap_or(0.0);
    let cpu_used = cpu_end - cpu_idle;
    let sending_alone = quarter.map(|(at, cpu)| (cpu_end - cpu) / at.elapsed().as_secs_f64().max(0.001));
    let accepted_at: Vec<i64> = if twilio {
        sandbox.twilio().sent().iter().map(|m| m.at_ms).collect()
    } else {
        sandbox.meta().sent().iter().map(|m| m.at_ms).collect()
    };
    let first = accepted_at.iter().copied().min().unwrap_or(0);
    let last = accepted_at.iter().copied().max().unwrap_or(0);
    let span = (last - first).max(1) as f64 / 1000.0;
    let achieved = (n as f64 - 1.0) / span;
    if std::env::var_os("RECADO_LOAD_TIMELINE").is_some() {
        // Sends a tenth of a second, from the first: where the pace fell behind.
        let mut tenths = vec![0u32; ((last - first) / 100 + 1) as usize];
        for t in &accepted_at {
            tenths[((t - first) / 100) as usize] += 1;
        }
        eprintln!("sends per 100 ms: {tenths:?}");
    }
    let refused = if twilio { sandbox.twilio().refused_concurrency() } else { sandbox.meta().throttled() };
    let mut c = store.conn().await?;
    let counts = store::counts_by_state(&mut c).await?;
    drop(c);
    store.close().await;
    println!(
        "{} · daemon in its own process · rate {rate}/s · {n} rows added at once · achieved {achieved:.1}/s ({:.1}% of the ceiling) over {span:.1} s · refused by the emulator: {refused} · outbox: {counts:?}",
        if twilio { "twilio" } else { "meta" },
        achieved / rate * 100.0,
    );
    println!(
        "daemon CPU from the rows' appearance to the last send: {cpu_used:.1} s over {:.1} s = {:.2} cores (polls included)",
        started.elapsed().as_secs_f64(),
        cpu_used / started.elapsed().as_secs_f64()
    );
    if let Some(cores) = sending_alone {
        println!("daemon CPU from the first quarter sent to the last send (sending alone): {cores:.2} cores");
    }
    // The same daemon with nothing to send, polling the same sheet: what the polls alone cost.
    let before = separate_daemon::cpu_seconds(pid).unwrap_or(0.0);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let polling = (separate_daemon::cpu_seconds(pid).unwrap_or(0.0) - before) / 10.0;
    println!("daemon CPU afterwards, polling the {n}-row sheet every 2 s with nothing to send: {polling:.2} cores");
    separate_daemon::stop(child)?;
    sandbox.stop().await;
    Ok(())
}
