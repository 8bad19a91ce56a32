//! systemd's service notification protocol (`sd_notify(3)`), spoken by `recado run` under a
//! `Type=notify` unit: `READY=1` once the daemon can do its job, `WATCHDOG=1` while its loops
//! are alive, `STATUS=` lines a `systemctl status` shows, `STOPPING=1` when it begins to stop.
//!
//! The protocol is one datagram per message to the Unix socket named by `$NOTIFY_SOCKET` (a
//! path, or an abstract name written with a leading `@`). Outside systemd the variable is not
//! set and every notification is a no-op, so the same binary runs anywhere. The environment is
//! read once, in `main`'s path ([`Notifier::from_env`]); tests build a [`Notifier`] on a socket
//! of their own instead of touching the environment.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::{debug, warn};

/// Where notifications go, and how often systemd expects a watchdog ping.
#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<PathBuf>,
    /// `WatchdogSec=` as systemd passes it (`$WATCHDOG_USEC`), when it is for this process.
    watchdog: Option<Duration>,
    warned: AtomicBool,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the watchdog is ours only
    /// when the PID is absent or ours).
    pub fn from_env() -> Self {
        let socket = std::env::var_os("NOTIFY_SOCKET").filter(|s| !s.is_empty()).map(PathBuf::from);
        let ours = std::env::var("WATCHDOG_PID").ok().is_none_or(|p| p.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && ours)
            .map(Duration::from_micros);
        Self { socket, watchdog, warned: AtomicBool::new(false) }
    }

    /// Notifications to `socket`, expecting a ping every `watchdog` (tests).
    pub fn to_socket(socket: PathBuf, watchdog: Option<Duration>) -> Self {
        Self { socket: Some(socket), watchdog, warned: AtomicBool::new(false) }
    }

    /// No notifications (not under systemd).
    pub fn disabled() -> Self {
        Self::default()
    }

    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// How often to ping the watchdog: half of `WatchdogSec=`, as `sd_watchdog_enabled(3)`
    /// advises. `None` when no watchdog is set up.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Sends one notification (several `KEY=value` lines). Best effort: a failure is logged
    /// once and never stops the daemon.
    pub fn notify(&self, message: &str) {
        let Some(socket) = &self.socket else { return };
        match send(socket, message) {
            Ok(()) => debug!(message = %message.lines().next().unwrap_or(""), "systemd notified"),
            Err(e) => {
                if !self.warned.swap(true, Ordering::AcqRel) {
                    warn!(socket = %socket.display(), "cannot notify systemd (further failures not logged): {e}");
                }
            }
        }
    }

    pub fn ready(&self, status: &str) {
        self.notify(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }

    pub fn watchdog(&self) {
        self.notify("WATCHDOG=1");
    }

    pub fn stopping(&self) {
        self.notify("STOPPING=1\nSTATUS=stopping: finishing sends in flight and the last write-back");
    }
}

/// A status is one line of the protocol.
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

#[cfg(unix)]
fn send(socket: &std::path::Path, message: &str) -> std::io::Result<()> {
    use std::os::unix::net::UnixDatagram;
    let sock = UnixDatagram::unbound()?;
    let text = socket.to_string_lossy();
    if let Some(name) = text.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(message.as_bytes(), &addr)?;
            return Ok(());
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = name;
            return Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "abstract sockets are Linux-only"));
        }
    }
    sock.send_to(message.as_bytes(), socket)?;
    Ok(())
}

#[cfg(not(unix))]
fn send(_socket: &std::path::Path, _message: &str) -> std::io::Result<()> {
    Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "systemd notification needs Unix sockets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_arrive_as_one_datagram_each() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        let n = Notifier::to_socket(path, Some(Duration::from_secs(30)));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(15)));
        n.ready("ready: 2 sources read\nsecond line");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(std::str::from_utf8(&buf[..len]).unwrap(), "READY=1\nSTATUS=ready: 2 sources read second line");
        assert!(!Notifier::disabled().enabled());
        Notifier::disabled().watchdog();
    }
}
