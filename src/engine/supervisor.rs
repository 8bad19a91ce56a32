//! Supervision: every long-lived loop runs inside a supervisor that notices a panic, logs it,
//! marks the loop's health, and starts the loop again after a growing pause (1 s … 60 s), so
//! a bug in one loop neither dies silently nor takes the daemon down with it. A restart counts
//! against the same health component the loop reports its rounds to, so the loop's next good
//! round clears it. Aborting the supervisor (a stop that ran out of time) aborts the loop too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::error;

use super::health::Health;
use super::Shutdown;

/// Spawns `make()` and starts it again whenever it panics, until it returns (it stopped) or
/// shutdown is requested.
pub fn supervise<F, Fut>(
    (name, kind): (String, &'static str),
    health: Arc<Health>,
    shutdown: Shutdown,
    make: F,
) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    health.register(&name, kind);
    tokio::spawn(async move {
        let mut backoff = Duration::from_secs(1);
        loop {
            let mut running = AbortOnDrop(tokio::spawn(make()));
            match (&mut running.0).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let reason = payload
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "unknown panic".into());
                    error!(task = %name, restart_in = ?backoff, "loop panicked, restarting it: {reason}");
                    health.restarted(&name, &reason);
                    let mut sd = shutdown.clone();
                    if sd.is_set() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = sd.wait() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
                Err(_) => return,
            }
        }
    })
}

/// The running loop, cut off with its supervisor: a stop that gives up on a hung loop aborts
/// the supervisor, and the loop must not run on unseen.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn a_panicking_loop_is_restarted_and_reported() {
        let health = Arc::new(Health::default());
        let (stop, shutdown) = Shutdown::new();
        let runs = Arc::new(AtomicU32::new(0));
        let r = Arc::clone(&runs);
        let handle = supervise(("test".into(), "loop"), Arc::clone(&health), shutdown.clone(), move || {
            let r = Arc::clone(&r);
            let mut sd = shutdown.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    panic!("boom");
                }
                sd.wait().await;
            }
        });
        tokio::time::timeout(Duration::from_secs(10), async {
            while runs.load(Ordering::SeqCst) < 2 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("restarted");
        let h = health.get("test").expect("registered");
        assert_eq!(h.restarts, 1);
        assert!(h.last_error.unwrap_or_default().contains("boom"));
        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("stops").expect("no panic");
    }
}
