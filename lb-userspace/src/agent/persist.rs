//! Admin overrides survive an agent restart: the dataplane keeps running while the agent is
//! down, so a drained or maintained backend must not come back into rotation just because
//! the agent restarted (or crashed). Overrides are saved after every change to a small JSON
//! file next to the admin socket (`admin.sock` → `admin.state.json`) and read at start.
//!
//! Drain start times are stored as wall-clock time (an `Instant` means nothing to another
//! process) and turned back into `Instant`s on load, so a drain's timeout counts from the
//! original `lb drain`, not from the restart.
//!
//! Configuration changes made through the socket (add/remove backend, weight) are not
//! saved: like HAProxy's runtime API they last until the next reload or restart, and the
//! file stays the source of truth for the configuration.

use serde::{Deserialize, Serialize};
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::overrides::{Override, Overrides};

/// The state file of an admin socket path.
pub fn state_file(socket: &Path) -> PathBuf {
    socket.with_extension("state.json")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Saved {
    version: u32,
    overrides: Vec<SavedOverride>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedOverride {
    service: String,
    backend: String,
    /// Milliseconds since the Unix epoch when the drain started.
    drain_started_unix_ms: Option<u64>,
    maintenance: bool,
    forced: Option<bool>,
}

/// Serializes overrides, mapping `Instant`s to wall time through (`now`, `wall_now`).
pub fn encode(ov: &Overrides, now: Instant, wall_now: SystemTime) -> String {
    let to_wall = |t: Instant| {
        let wall = wall_now
            .checked_sub(now.saturating_duration_since(t))
            .unwrap_or(UNIX_EPOCH);
        wall.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64
    };
    let saved = Saved {
        version: 1,
        overrides: ov
            .by_backend
            .iter()
            .map(|((s, b), o)| SavedOverride {
                service: s.clone(),
                backend: b.clone(),
                drain_started_unix_ms: o.drain_started.map(to_wall),
                maintenance: o.maintenance,
                forced: o.forced,
            })
            .collect(),
    };
    serde_json::to_string_pretty(&saved).unwrap_or_default()
}

/// The inverse of [`encode`].
pub fn decode(text: &str, now: Instant, wall_now: SystemTime) -> Result<Overrides, String> {
    let saved: Saved = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if saved.version != 1 {
        return Err(format!("state version {} is not supported", saved.version));
    }
    let wall_now_ms = wall_now
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64;
    let mut ov = Overrides::default();
    for s in saved.overrides {
        let drain_started = s.drain_started_unix_ms.map(|ms| {
            let ago = Duration::from_millis(wall_now_ms.saturating_sub(ms));
            now.checked_sub(ago).unwrap_or(now)
        });
        ov.update(&s.service, &s.backend, |o| {
            *o = Override {
                drain_started,
                maintenance: s.maintenance,
                forced: s.forced,
            }
        });
    }
    Ok(ov)
}

/// Writes the file atomically (temporary file, then rename), mode 0600.
pub fn save(path: &Path, ov: &Overrides) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(encode(ov, Instant::now(), SystemTime::now()).as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads the file; a missing file is no overrides.
pub fn load(path: &Path) -> Result<Overrides, String> {
    match std::fs::read_to_string(path) {
        Ok(t) => decode(&t, Instant::now(), SystemTime::now())
            .map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_the_drain_start() {
        let now = Instant::now();
        let wall = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut ov = Overrides::default();
        ov.update("web", "b1", |o| {
            o.drain_started = Some(now - Duration::from_secs(30))
        });
        ov.update("web", "b2", |o| o.maintenance = true);
        ov.update("web", "b3", |o| o.forced = Some(false));
        let text = encode(&ov, now, wall);
        // Decoded 10 s later by another process: the drain is 40 s old.
        let later = now + Duration::from_secs(10);
        let back = decode(&text, later, wall + Duration::from_secs(10)).unwrap();
        let d = back.get("web", "b1").drain_started.unwrap();
        assert_eq!(later.duration_since(d), Duration::from_secs(40));
        assert!(back.get("web", "b2").maintenance);
        assert_eq!(back.get("web", "b3").forced, Some(false));
        assert_eq!(back.by_backend.len(), 3);
    }

    #[test]
    fn bad_files_are_errors_and_missing_is_empty() {
        let now = Instant::now();
        assert!(decode("{", now, SystemTime::now()).is_err());
        assert!(
            decode(r#"{"version":7,"overrides":[]}"#, now, SystemTime::now())
                .unwrap_err()
                .contains("version 7")
        );
        let p = std::env::temp_dir().join(format!("lb-no-state-{}.json", std::process::id()));
        assert_eq!(load(&p).unwrap(), Overrides::default());
        let mut ov = Overrides::default();
        ov.update("s", "b", |o| o.maintenance = true);
        save(&p, &ov).unwrap();
        assert_eq!(load(&p).unwrap().by_backend.len(), 1);
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn state_file_sits_next_to_the_socket() {
        assert_eq!(
            state_file(Path::new("/run/lb/admin.sock")),
            PathBuf::from("/run/lb/admin.state.json")
        );
    }
}
