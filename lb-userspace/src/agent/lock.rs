//! One agent per dataplane and per admin socket. Two agents over the same `pin_path` would
//! both program the same maps, each believing it owns every slot; two on one socket path
//! would remove each other's socket. So `lb run` takes exclusive `flock`s before it touches
//! either, and a second agent stops at once with a message naming the holder's path:
//! - the pin folder itself (`dataplane.pin_path`, created if missing) when the L4 tier is
//!   on: bpffs holds only pinned objects, so the folder is the lock;
//! - `admin.lock` next to the admin socket, always (the only lock when the L4 tier is off),
//!   after the socket folder passed its ownership checks.
//!
//! The kernel drops a `flock` when its holder dies, so a crashed agent never leaves a stale
//! lock behind, and the lock files are never removed (removing one would let a third agent
//! lock a new file while the second still holds the old one).

use std::{
    fs::File,
    os::unix::{fs::OpenOptionsExt, io::AsRawFd},
    path::{Path, PathBuf},
};

use crate::{admin, config::Config};

/// Held locks; dropping them (agent exit) releases them.
#[derive(Debug)]
pub struct InstanceLock {
    _files: Vec<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another lb agent is running over {path} ({what}); two agents would fight over the same {over}. Stop it first, or give this one another {what}")]
    Held {
        path: PathBuf,
        what: &'static str,
        over: &'static str,
    },
    #[error("locking {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Socket(#[from] admin::server::ServerError),
}

/// Takes every lock `cfg` calls for (see the module comment).
pub fn acquire(cfg: &Config) -> Result<InstanceLock, LockError> {
    let mut files = Vec::new();
    if !cfg.dataplane.interfaces.is_empty() {
        let pins = &cfg.dataplane.pin_path;
        std::fs::create_dir_all(pins).map_err(io(pins))?;
        let f = open(pins, libc::O_DIRECTORY)?;
        lock(f, pins, "dataplane.pin_path", "pinned maps", &mut files)?;
    }
    admin::server::secure_dir(&cfg.admin.socket)?;
    let path = socket_lock_file(&cfg.admin.socket);
    let f = open(&path, libc::O_CREAT)?;
    lock(f, &path, "admin.socket", "admin socket", &mut files)?;
    Ok(InstanceLock { _files: files })
}

/// The lock file of an admin socket path (`admin.sock` → `admin.lock`).
pub fn socket_lock_file(socket: &Path) -> PathBuf {
    socket.with_extension("lock")
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn open(path: &Path, flags: i32) -> Result<File, LockError> {
    let mut o = std::fs::OpenOptions::new();
    o.read(true)
        .custom_flags(flags | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o600);
    if flags & libc::O_CREAT != 0 {
        // Write access is needed for O_CREAT through std; the file stays empty.
        o.write(true).create(true);
    }
    o.open(path).map_err(io(path))
}

fn lock(
    f: File,
    path: &Path,
    what: &'static str,
    over: &'static str,
    held: &mut Vec<File>,
) -> Result<(), LockError> {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            LockError::Held {
                path: path.to_path_buf(),
                what,
                over,
            }
        } else {
            io(path)(e)
        });
    }
    held.push(f);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, pins: Option<&Path>) -> Config {
        let mut c = Config::default();
        c.admin.socket = dir.join("admin.sock");
        if let Some(p) = pins {
            c.dataplane.interfaces = vec!["lo".into()];
            c.dataplane.pin_path = p.to_path_buf();
        }
        c
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_goes() {
        let d = std::env::temp_dir().join(format!("lb-lock-{}", std::process::id()));
        let _ignored = std::fs::remove_dir_all(&d);
        // A plain folder stands in for the pin folder: flock works on any folder.
        let pins = d.join("pins");
        let first = acquire(&cfg(&d.join("a"), Some(&pins))).unwrap();
        let e = acquire(&cfg(&d.join("b"), Some(&pins)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("pins") && e.contains("dataplane.pin_path"),
            "{e}"
        );
        // Same socket folder, L4 tier off: the socket's lock refuses.
        let e = acquire(&cfg(&d.join("a"), None)).unwrap_err().to_string();
        assert!(
            e.contains("admin.lock") && e.contains("admin.socket"),
            "{e}"
        );
        drop(first);
        let again = acquire(&cfg(&d.join("a"), Some(&pins))).unwrap();
        drop(again);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
