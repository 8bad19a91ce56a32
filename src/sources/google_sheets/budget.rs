//! The per-source Google request budget: a steady rate under the per-minute quota, and an
//! exponential pause after a rate-limit answer (a delay, never an error shown to users).

use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::sources::QuotaState;

pub struct Budget {
    limiter: DefaultDirectRateLimiter,
    per_minute: u32,
    pause: Mutex<Pause>,
    /// When the requests of the last minute were paid for: the quota used, for `/metrics`.
    recent: Mutex<std::collections::VecDeque<Instant>>,
}

#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    strikes: u32,
}

impl Budget {
    /// `per_minute` requests a minute, in bursts of at most a sixth of that (and at least two, so
    /// a read and the write that follows it can be paid for together without waiting), so that
    /// no 60-second window exceeds the quota by more than the burst.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = per_minute.max(1);
        let burst = (per_minute / 6).max(2);
        let quota = Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
        Self {
            limiter: RateLimiter::direct(quota),
            per_minute,
            pause: Mutex::new(Pause::default()),
            recent: Mutex::new(std::collections::VecDeque::new()),
        }
    }

    fn pause(&self) -> std::sync::MutexGuard<'_, Pause> {
        // A panic elsewhere while holding the lock leaves valid data: keep using it.
        self.pause.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for the pause (if any) and for `n` requests' worth of budget. A flush pays for its
    /// read and its write before the read, so nothing waits between them. (One at a time: a
    /// rate limiter asked for two at once is starved by callers asking for one.)
    pub async fn acquire(&self, n: u32) {
        loop {
            let until = self.pause().until;
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        for _ in 0..n.max(1) {
            self.limiter.until_ready().await;
            let now = Instant::now();
            let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.push_back(now);
            forget_older_than_a_minute(&mut recent, now);
        }
    }

    /// Google said "too many requests": pause 1 s, 2 s, 4 s … up to 64 s, with jitter.
    pub fn rate_limited(&self) -> Duration {
        let mut p = self.pause();
        p.strikes = (p.strikes + 1).min(7);
        let base = Duration::from_secs(1u64 << (p.strikes - 1));
        let d = base + Duration::from_millis(rand::random::<u64>() % 250);
        p.until = Some(Instant::now() + d);
        d
    }

    pub fn succeeded(&self) {
        self.pause().strikes = 0;
    }

    pub fn state(&self) -> QuotaState {
        let p = self.pause();
        QuotaState {
            paused_for: p.until.and_then(|t| t.checked_duration_since(Instant::now())),
            strikes: p.strikes,
            per_minute: self.per_minute,
            used: Some(self.used_last_minute()),
            allowed: Some(u64::from(self.per_minute)),
            window: "minute",
        }
    }

    /// Requests paid for in the last 60 seconds.
    fn used_last_minute(&self) -> u64 {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        forget_older_than_a_minute(&mut recent, Instant::now());
        recent.len() as u64
    }
}

fn forget_older_than_a_minute(recent: &mut std::collections::VecDeque<Instant>, now: Instant) {
    while recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= Duration::from_secs(60)) {
        recent.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_pause_still_pauses() {
        let b = std::sync::Arc::new(Budget::new(60));
        let b2 = std::sync::Arc::clone(&b);
        let _ = std::thread::spawn(move || {
            let _guard = b2.pause.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(b.pause.is_poisoned());
        let d = b.rate_limited();
        assert!(d >= Duration::from_secs(1));
        assert!(b.state().paused_for.is_some(), "the pause holds despite the poisoned lock");
    }
}
