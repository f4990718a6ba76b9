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
    /// `lb node drain` (absent in files written before it existed: not drained).
    #[serde(default)]
    node_drained: bool,
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
            .map(
                |(
                    crate::ids::BackendKey {
                        service: s,
                        backend: b,
                    },
                    o,
                )| SavedOverride {
                    service: s.clone(),
                    backend: b.clone(),
                    drain_started_unix_ms: o.drain_started.map(to_wall),
                    maintenance: o.maintenance,
                    forced: o.forced,
                },
            )
            .collect(),
        node_drained: ov.node_drained,
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
    let mut ov = Overrides {
        node_drained: saved.node_drained,
        ..Default::default()
    };
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

/// The largest state file read back: real ones hold a few hundred bytes per override, so
/// anything bigger is not ours and is refused rather than read into memory.
pub const MAX_STATE_BYTES: u64 = 1024 * 1024;

/// Writes the file atomically (temporary file, then rename), mode 0600. The temporary is
/// created with `O_EXCL | O_NOFOLLOW`, so a file or symlink planted at its path is never
/// written through: a leftover regular file (a crash between create and rename) is removed
/// first, anything else (a symlink, a folder, a fifo) is refused with an error naming it.
pub fn save(path: &Path, ov: &Overrides) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    match std::fs::symlink_metadata(&tmp) {
        Ok(m) if m.file_type().is_file() => std::fs::remove_file(&tmp)?,
        Ok(m) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "{}: refusing to write the state through a {} left at the temporary's path; remove it",
                    tmp.display(),
                    kind_of(&m.file_type())
                ),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut f = open_exclusive(&tmp)?;
    let written = f
        .write_all(encode(ov, Instant::now(), SystemTime::now()).as_bytes())
        .and_then(|()| f.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ignored = std::fs::remove_file(&tmp);
    }
    written
}

fn open_exclusive(tmp: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(tmp)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", tmp.display())))
}

fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "folder"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

/// Reads the file; a missing file is no overrides. The file is opened without following a
/// symlink, must be a regular file and at most [`MAX_STATE_BYTES`]; every refusal names it.
pub fn load(path: &Path) -> Result<Overrides, String> {
    let text = match read_capped(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Overrides::default()),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    decode(&text, Instant::now(), SystemTime::now()).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`load`] at start: an unreadable state file stops the agent (its drained and maintained
/// backends would silently return to rotation), unless the operator said to discard it.
pub fn load_or_stop(path: &Path, discard: bool) -> anyhow::Result<Overrides> {
    match load(path) {
        Ok(ov) => Ok(ov),
        Err(e) if discard => {
            tracing::warn!(error = %e, "--discard-state: starting without the saved overrides (drain, maintenance, forced health); the file is replaced at the next change");
            Ok(Overrides::default())
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot read the saved admin overrides: {e}\nThe agent stops rather than return drained or maintained backends to rotation. Fix or remove the file, or start with `lb run --discard-state` to drop it."
        )),
    }
}

fn read_capped(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "is a symlink; the state file is never read through one",
            ),
            _ => e,
        })?;
    let meta = f.metadata()?;
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidData, msg);
    if !meta.file_type().is_file() {
        return Err(invalid(format!(
            "not a regular file (a {})",
            kind_of(&meta.file_type())
        )));
    }
    if meta.len() > MAX_STATE_BYTES {
        return Err(invalid(format!(
            "{} bytes is over the {MAX_STATE_BYTES}-byte limit of a state file",
            meta.len()
        )));
    }
    let mut text = String::new();
    f.take(MAX_STATE_BYTES + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX_STATE_BYTES {
        return Err(invalid(format!(
            "over the {MAX_STATE_BYTES}-byte limit of a state file"
        )));
    }
    Ok(text)
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
        ov.node_drained = true;
        let text = encode(&ov, now, wall);
        // Decoded 10 s later by another process: the drain is 40 s old.
        let later = now + Duration::from_secs(10);
        let back = decode(&text, later, wall + Duration::from_secs(10)).unwrap();
        let d = back.get("web", "b1").drain_started.unwrap();
        assert_eq!(later.duration_since(d), Duration::from_secs(40));
        assert!(back.get("web", "b2").maintenance);
        assert_eq!(back.get("web", "b3").forced, Some(false));
        assert_eq!(back.by_backend.len(), 3);
        assert!(back.node_drained);
        // A file from before node drains existed reads as not drained.
        let old = r#"{"version":1,"overrides":[]}"#;
        assert!(!decode(old, now, wall).unwrap().node_drained);
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

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lb-persist-{tag}-{}", std::process::id()));
        let _ignored = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn one_override() -> Overrides {
        let mut ov = Overrides::default();
        ov.update("web", "b1", |o| o.maintenance = true);
        ov
    }

    /// An attacker who could plant a symlink at the temporary's path (owned by `nobody`,
    /// pointing at a file root owns) must not make `save` write through it.
    #[test]
    fn a_symlinked_temporary_is_refused_and_its_target_untouched() {
        let d = scratch("symlink-tmp");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let state = d.join("admin.state.json");
        save(&state, &one_override()).unwrap();
        let before = std::fs::read(&state).unwrap();
        let tmp = state.with_extension("json.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        // Best effort: as root, give the link to nobody like an attacker's would be.
        let _ = std::os::unix::fs::lchown(&tmp, Some(65534), Some(65534));
        let mut ov = one_override();
        ov.update("web", "b2", |o| o.forced = Some(false));
        let err = save(&state, &ov).unwrap_err().to_string();
        assert!(
            err.contains("symlink") && err.contains("admin.state.json.tmp"),
            "{err}"
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        assert_eq!(
            std::fs::read(&state).unwrap(),
            before,
            "the saved state stays"
        );
        // A leftover regular temporary (a crash mid-save) is replaced, not refused.
        std::fs::remove_file(&tmp).unwrap();
        std::fs::write(&tmp, "half").unwrap();
        save(&state, &ov).unwrap();
        assert_eq!(load(&state).unwrap().by_backend.len(), 2);
        assert!(!tmp.exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_symlinked_or_huge_or_corrupt_state_file_is_an_error_naming_it() {
        let d = scratch("bad-state");
        let state = d.join("admin.state.json");
        std::os::unix::fs::symlink("/etc/hostname", &state).unwrap();
        let err = load(&state).unwrap_err();
        assert!(
            err.contains("admin.state.json") && err.contains("symlink"),
            "{err}"
        );
        std::fs::remove_file(&state).unwrap();

        let f = std::fs::File::create(&state).unwrap();
        f.set_len(MAX_STATE_BYTES + 1).unwrap();
        let err = load(&state).unwrap_err();
        assert!(
            err.contains("admin.state.json") && err.contains("limit"),
            "{err}"
        );

        std::fs::write(&state, "{\"version\":1,\"overrides\":[").unwrap();
        let err = load(&state).unwrap_err();
        assert!(
            err.contains("admin.state.json") && err.contains("EOF"),
            "{err}"
        );

        std::fs::write(&state, "{\"version\":2,\"overrides\":[]}").unwrap();
        let err = load(&state).unwrap_err();
        assert!(
            err.contains("admin.state.json") && err.contains("version 2"),
            "{err}"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn state_file_sits_next_to_the_socket() {
        assert_eq!(
            state_file(Path::new("/run/lb/admin.sock")),
            PathBuf::from("/run/lb/admin.state.json")
        );
    }
}
