//! The time every loop reads. In production it is the system clock. A test moves it forward
//! with [`Clock::advance`] (the system clock plus an offset), and every loop that waits for a
//! due time is woken to look again, so reminders, quiet hours and lateness are tested without
//! waiting on a busy machine's wall clock.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use tokio::sync::watch;

pub struct Clock {
    offset_ms: AtomicI64,
    /// Bumped on every move, so sleepers wake.
    moved: watch::Sender<u64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self { offset_ms: AtomicI64::new(0), moved: watch::channel(0).0 }
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis().saturating_add(self.offset_ms.load(Ordering::Acquire))
    }

    pub fn now(&self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.now_ms()).single().unwrap_or_else(Utc::now)
    }

    /// Moves time forward (tests).
    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(by.as_millis().min(i64::MAX as u128) as i64, Ordering::AcqRel);
        self.moved.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sleeps until `at_ms` on this clock, at most `cap`, waking early if the clock is moved.
    pub async fn sleep_until(&self, at_ms: i64, cap: Duration) {
        let wait = Duration::from_millis(
            (at_ms - self.now_ms()).clamp(0, cap.as_millis().min(i64::MAX as u128) as i64) as u64,
        );
        let mut moved = self.moved.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = moved.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn advancing_wakes_sleepers() {
        let clock = std::sync::Arc::new(Clock::system());
        let target = clock.now_ms() + 3_600_000;
        let c = std::sync::Arc::clone(&clock);
        let sleeper = tokio::spawn(async move { c.sleep_until(target, Duration::from_secs(7200)).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_secs(3600));
        tokio::time::timeout(Duration::from_secs(5), sleeper).await.expect("woken").expect("no panic");
        assert!(clock.now_ms() >= target);
    }
}
