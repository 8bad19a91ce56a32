//! What `/healthz` reports: each loop, each source and each provider, with when it last worked,
//! how many times in a row it failed, its last error, and how many times its loop was
//! restarted after a panic. A component that keeps failing is degraded.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

/// A round of a loop lasting longer than this is taken for a stuck loop: `/healthz` fails and
/// systemd's watchdog stops being fed, so recado is restarted. Generous: one round may make
/// several vendor calls of up to two minutes each (a very large source's first read).
pub const STUCK_AFTER: Duration = Duration::from_secs(600);

/// Consecutive failures after which a component is reported degraded.
pub const DEGRADED_AFTER: u32 = 3;

/// The health of one component.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ComponentHealth {
    /// `loop`, `source` or `provider`.
    pub kind: &'static str,
    /// Unix ms of the last success.
    pub ok_at: Option<i64>,
    pub consecutive_failures: u32,
    /// Failed rounds since the process started.
    pub failures: u64,
    pub last_error: Option<String>,
    /// Times its loop was restarted after a panic.
    pub restarts: u32,
    /// Completed rounds (polls, flushes, …).
    pub rounds: u64,
    pub degraded: bool,
    /// A source's request budget, as of its last round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaHealth>,
}

/// Where a source stands with its vendor's request quota.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QuotaHealth {
    /// Requests a minute recado allows itself.
    pub per_minute: u32,
    /// "Too many requests" answers in a row.
    pub rate_limit_strikes: u32,
    /// How much longer requests wait after the last such answer.
    pub paused_for_ms: Option<u64>,
    /// Requests counted against the quota in its window, when known.
    pub used: Option<u64>,
    /// What the window allows, when known.
    pub allowed: Option<u64>,
    /// `minute` or `day`.
    pub window: &'static str,
}

#[derive(Default)]
pub struct Health {
    components: Mutex<BTreeMap<String, ComponentHealth>>,
    /// Loops in the middle of a round, since when. A loop waiting for work is not here: only a
    /// round that never ends (a call that hangs, a deadlock) stays, and makes the loop stuck.
    busy: Mutex<HashMap<String, Instant>>,
}

/// A round in progress (see [`Health::busy`]); the round ends when this is dropped.
pub struct Busy {
    health: Arc<Health>,
    name: String,
    since: Instant,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let mut busy = self.health.busy.lock().unwrap_or_else(PoisonError::into_inner);
        if busy.get(&self.name) == Some(&self.since) {
            busy.remove(&self.name);
        }
    }
}

impl Health {
    fn with<R>(&self, name: &str, kind: &'static str, f: impl FnOnce(&mut ComponentHealth) -> R) -> R {
        let mut map = self.components.lock().unwrap_or_else(PoisonError::into_inner);
        let c = map.entry(name.to_string()).or_insert_with(|| ComponentHealth { kind, ..Default::default() });
        let r = f(c);
        c.degraded = c.consecutive_failures >= DEGRADED_AFTER;
        r
    }

    /// Declares a component (so it shows before its first round).
    pub fn register(&self, name: &str, kind: &'static str) {
        self.with(name, kind, |_| ());
    }

    /// A round went well.
    pub fn ok(&self, name: &str, kind: &'static str, now_ms: i64) {
        self.with(name, kind, |c| {
            c.ok_at = Some(now_ms);
            c.consecutive_failures = 0;
            c.last_error = None;
            c.rounds += 1;
        });
    }

    /// A round failed.
    pub fn failed(&self, name: &str, kind: &'static str, error: &str) {
        self.with(name, kind, |c| {
            c.consecutive_failures = c.consecutive_failures.saturating_add(1);
            c.failures = c.failures.saturating_add(1);
            c.last_error = Some(error.chars().take(300).collect());
            c.rounds += 1;
        });
    }

    /// A source's quota state after a round.
    pub fn quota(&self, name: &str, quota: QuotaHealth) {
        self.with(name, "source", |c| c.quota = Some(quota));
    }

    /// A loop panicked and was restarted.
    pub fn restarted(&self, name: &str, reason: &str) {
        self.with(name, "loop", |c| {
            c.restarts = c.restarts.saturating_add(1);
            c.consecutive_failures = c.consecutive_failures.saturating_add(1);
            c.last_error = Some(format!("panicked: {}", reason.chars().take(280).collect::<String>()));
        });
    }

    pub fn get(&self, name: &str) -> Option<ComponentHealth> {
        self.components.lock().unwrap_or_else(PoisonError::into_inner).get(name).cloned()
    }

    /// Completed rounds of a component (tests wait on it instead of on the clock).
    pub fn rounds(&self, name: &str) -> u64 {
        self.get(name).map(|c| c.rounds).unwrap_or(0)
    }

    pub fn all(&self) -> BTreeMap<String, ComponentHealth> {
        self.components.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A round of `name`'s loop begins; it ends when the returned guard is dropped.
    pub fn busy(self: &Arc<Self>, name: &str) -> Busy {
        let since = Instant::now();
        self.busy.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_string(), since);
        Busy { health: Arc::clone(self), name: name.to_string(), since }
    }

    /// Loops whose current round has lasted longer than `after`, with how long.
    pub fn stuck(&self, after: Duration) -> Vec<(String, Duration)> {
        let busy = self.busy.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(String, Duration)> =
            busy.iter().map(|(n, t)| (n.clone(), t.elapsed())).filter(|(_, d)| *d > after).collect();
        out.sort();
        out
    }

    pub fn degraded(&self) -> bool {
        self.components.lock().unwrap_or_else(PoisonError::into_inner).values().any(|c| c.degraded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stuck_only_while_a_round_lasts_too_long() {
        let health = Arc::new(Health::default());
        let round = health.busy("loop:inbox");
        assert_eq!(health.stuck(Duration::ZERO).len(), 1, "in a round");
        assert!(health.stuck(Duration::from_secs(60)).is_empty(), "not for long");
        drop(round);
        assert!(health.stuck(Duration::ZERO).is_empty(), "waiting for work is not stuck");
    }
}
