//! systemd's service notification protocol (`sd_notify(3)`), for `Type=notify` units:
//! `READY=1` once the agent serves, `WATCHDOG=1` from the agent's loop at half the interval
//! systemd asks for, `STOPPING=1` on the way out. The protocol is one datagram per message
//! to the `AF_UNIX` socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace); a few lines of std, so no crate. Outside systemd (no `NOTIFY_SOCKET`) every
//! call does nothing.

use std::{os::unix::net::UnixDatagram, time::Duration};
use tracing::{debug, warn};

/// Where notifications go, if anywhere, and how often the watchdog wants to hear from us.
pub struct Notifier {
    target: Option<(UnixDatagram, std::os::unix::net::SocketAddr)>,
    watchdog: Option<tokio::time::Interval>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` (a watchdog meant for
    /// another process is ignored, as sd_watchdog_enabled does).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|name| {
            match open(&name) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(socket = ?name, error = %e, "NOTIFY_SOCKET unusable; systemd will not hear from the agent");
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let period = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us && target.is_some())
            .map(|u| Duration::from_micros(u / 2).max(Duration::from_millis(1)));
        let watchdog = period.map(|p| {
            debug!(period = ?p, "systemd watchdog enabled");
            let mut i = tokio::time::interval(p);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        Notifier { target, watchdog }
    }

    /// The agent serves: dataplane programmed, L7 listeners bound, admin socket answering.
    pub fn ready(&self) {
        self.send("READY=1\nSTATUS=serving");
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// Completes at the next watchdog period; never when there is no watchdog, so it can
    /// sit in the agent's `select!` unconditionally.
    pub async fn watchdog_due(&mut self) {
        match self.watchdog.as_mut() {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Tells systemd the loop is alive. Sent from the agent's own loop, so a wedged loop
    /// stops the pings and systemd restarts the agent.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, msg: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(msg.as_bytes(), addr) {
                warn!(error = %e, msg, "sd_notify failed");
            }
        }
    }
}

fn open(name: &std::ffi::OsStr) -> std::io::Result<(UnixDatagram, std::os::unix::net::SocketAddr)> {
    use std::os::{linux::net::SocketAddrExt, unix::ffi::OsStrExt};
    let bytes = name.as_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(abstract_name) => std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)?,
        None if bytes.starts_with(b"/") => std::os::unix::net::SocketAddr::from_pathname(name)?,
        None => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "neither an absolute path nor @abstract",
            ))
        }
    };
    Ok((UnixDatagram::unbound()?, addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names_are_refused() {
        assert!(open(std::ffi::OsStr::new("relative/sock")).is_err());
        assert!(open(std::ffi::OsStr::new("@abstract-lb-test")).is_ok());
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("lb-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ignored = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let n = Notifier {
            target: Some(open(path.as_os_str()).unwrap()),
            watchdog: None,
        };
        n.ready();
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=serving");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
