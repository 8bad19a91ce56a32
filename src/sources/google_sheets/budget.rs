//! The per-source Google request budget: a steady rate under the per-minute quota, and an
//! exponential pause after a 429 (a delay, never an error shown to users).

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

pub struct Budget {
    limiter: DefaultDirectRateLimiter,
    pause: Mutex<Pause>,
}

#[derive(Default)]
struct Pause {
    until: Option<Instant>,
    strikes: u32,
}

impl Budget {
    /// `per_minute` requests a minute, in bursts of at most a sixth of that, so that no
    /// 60-second window can exceed the quota by more than the burst.
    pub fn new(per_minute: u32) -> Self {
        let per_minute = NonZeroU32::new(per_minute.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new((per_minute.get() / 6).max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::direct(Quota::per_minute(per_minute).allow_burst(burst)),
            pause: Mutex::new(Pause::default()),
        }
    }

    /// Waits for the pause (if any) and a slot in the rate.
    pub async fn acquire(&self) {
        loop {
            let until = self.pause.lock().map(|p| p.until).unwrap_or(None);
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => break,
            }
        }
        self.limiter.until_ready().await;
    }

    /// Google said 429: pause 1 s, 2 s, 4 s … up to 64 s, with jitter. Returns the pause.
    pub fn rate_limited(&self) -> Duration {
        let Ok(mut p) = self.pause.lock() else { return Duration::from_secs(1) };
        p.strikes = (p.strikes + 1).min(7);
        let base = Duration::from_secs(1u64 << (p.strikes - 1));
        let jitter = Duration::from_millis(rand::random::<u64>() % 250);
        let d = base + jitter;
        p.until = Some(Instant::now() + d);
        d
    }

    pub fn succeeded(&self) {
        if let Ok(mut p) = self.pause.lock() {
            p.strikes = 0;
        }
    }
}
