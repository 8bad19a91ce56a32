//! The daemon under load as its own process, as systemd runs it: the release binary started
//! with `recado run --config FILE` on a free loopback port, its state store read from outside
//! (as `recado report` would), its peak memory and CPU read from `/proc`, and a graceful stop
//! with SIGTERM. Shared by the load runs that measure the daemon alone.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use recado::store::{self, Store};

/// A free loopback port (bound and released: the daemon binds it next).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `binary` on the configuration `yaml` (written to `dir`), and waits until it answers
/// on `port`.
pub async fn start(binary: &str, yaml: &str, dir: &Path, port: u16) -> anyhow::Result<Child> {
    let file = dir.join("recado.yaml");
    std::fs::write(&file, yaml)?;
    let child = std::process::Command::new(binary)
        .args(["run", "--config"])
        .arg(&file)
        // `RECADO_LOAD_LOG=recado::engine=debug` shows what the daemon did.
        .env("RECADO_LOG", std::env::var("RECADO_LOAD_LOG").unwrap_or_else(|_| "warn".into()))
        .spawn()
        .map_err(|e| anyhow::anyhow!("starting {binary}: {e}"))?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while http.get(format!("http://127.0.0.1:{port}/metrics")).send().await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "the daemon did not listen within 30 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(child)
}

/// The daemon's state store at `db`, once the first read of source `source` is committed.
pub async fn after_first_read(db: &Path, source: &str, within: Duration) -> anyhow::Result<Store> {
    let deadline = Instant::now() + within;
    let store = loop {
        if let Ok(s) = Store::open(db).await {
            break s;
        }
        anyhow::ensure!(Instant::now() < deadline, "the daemon's state store did not appear");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    loop {
        let mut c = store.conn().await?;
        if store::source_state(&mut c, source).await?.baseline_done {
            return Ok(store);
        }
        drop(c);
        anyhow::ensure!(Instant::now() < deadline, "the first read of {source} did not finish within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stops the daemon as systemd does (SIGTERM) and waits for it.
pub fn stop(mut child: Child) -> anyhow::Result<()> {
    std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    child.wait()?;
    Ok(())
}

/// A process's peak resident set (`VmHWM`), in MB.
pub fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU seconds a process has used (user + system), from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after its closing `)`.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
