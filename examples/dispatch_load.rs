//! End-to-end dispatch load run: the real daemon sends N queued messages to the Meta or the
//! Twilio emulator over HTTP, with the provider's throughput set to `--rate` and the emulator's
//! sender throughput set to the same value. Reports the achieved rate and how many sends the
//! emulator refused (Meta: 130429 above the ceiling; Twilio: 429/20429 above the account's
//! concurrent-request limit, since Twilio queues rather than refuses above a sender's pace).
//!
//! `cargo run --release --example dispatch_load -- --rate 80 --messages 2000 [--provider twilio]`
//! (figures in BENCHMARKS.md).

#[path = "load_daemon/mod.rs"]
mod load_daemon;

use std::time::{Duration, Instant};

use load_daemon::{arg, twilio_chosen, LoadDaemon};
use recado::store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rate = arg("--rate", 80.0);
    let n = arg("--messages", (rate * 20.0).max(500.0)) as usize;
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
