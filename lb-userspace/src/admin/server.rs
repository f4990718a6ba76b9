//! The admin socket server. Connections are served concurrently, but every request is
//! carried out by the agent's own task (through a channel), so changes are serialized and
//! each sees the state the previous one left.
//!
//! Permission: SO_PEERCRED (the kernel's record of the connecting process, which the peer
//! cannot forge) must name uid 0 or the agent's own uid for any change. The socket file is
//! mode 0600 as a first fence; the credential check is what holds if the mode is widened.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, oneshot},
};
use tracing::{debug, warn};

use super::protocol::{self, ErrorBody, ErrorKind, Response, Verb};

/// A request on its way to the agent's task, with where to send the answer.
pub struct Call {
    pub verb: Verb,
    pub reply: oneshot::Sender<Response>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Another process answers on the socket path.
    #[error("{0} is in use by a running agent; stop it first or set admin.socket to another path")]
    InUse(PathBuf),
    /// The socket's folder could be changed by another user.
    #[error("admin socket folder {dir}: refusing to use it: {why}")]
    UnsafeDir { dir: PathBuf, why: String },
    /// Something that is not a socket sits at the socket path; it is left alone.
    #[error("{0} exists and is not a socket; refusing to remove it (move it away or set admin.socket to another path)")]
    NotASocket(PathBuf),
    /// Creating the folder, binding or setting the mode failed.
    #[error("admin socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates the socket's folder (mode 0700) when missing, and refuses one that another user
/// could tamper with: it must be a folder owned by root or the agent's user, and not group-
/// or other-writable (otherwise its owner could swap the socket or plant links where the
/// agent writes its state). Returns the folder.
pub fn secure_dir(socket: &Path) -> Result<PathBuf, ServerError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let dir = match socket.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io(&dir))?;
    let meta = std::fs::metadata(&dir).map_err(io(&dir))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    check_dir(&dir, meta.is_dir(), meta.uid(), meta.mode(), own)?;
    // The folders above it too: whoever may rename an entry of a parent could swap the
    // whole folder for one of their own.
    let real = std::fs::canonicalize(&dir).map_err(io(&dir))?;
    for parent in real.ancestors().skip(1) {
        let m = std::fs::metadata(parent).map_err(io(parent))?;
        check_parent(&dir, parent, m.uid(), m.mode(), own)?;
    }
    Ok(dir)
}

/// A folder above the socket's: owned by root or the agent's user, and writable by its
/// group or others only with the sticky bit (as `/tmp`), which keeps others from renaming
/// entries they do not own.
pub fn check_parent(
    dir: &Path,
    parent: &Path,
    uid: u32,
    mode: u32,
    own: u32,
) -> Result<(), ServerError> {
    let why = if uid != 0 && uid != own {
        format!(
            "the folder above it, {}, is owned by uid {uid}, who could swap it",
            parent.display()
        )
    } else if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        format!(
            "the folder above it, {}, is writable by its group or by others without the sticky bit (mode {:o})",
            parent.display(),
            mode & 0o7777
        )
    } else {
        return Ok(());
    };
    Err(ServerError::UnsafeDir {
        dir: dir.to_path_buf(),
        why,
    })
}

/// The pure part of [`secure_dir`].
pub fn check_dir(
    dir: &Path,
    is_dir: bool,
    uid: u32,
    mode: u32,
    own: u32,
) -> Result<(), ServerError> {
    let why = if !is_dir {
        Some("it is not a folder".to_string())
    } else if uid != 0 && uid != own {
        Some(format!(
            "it is owned by uid {uid}, neither root nor the agent's user (uid {own})"
        ))
    } else if mode & 0o022 != 0 {
        Some(format!(
            "it is writable by its group or by others (mode {:o}); use a folder only root or the agent's user can write, e.g. chmod go-w",
            mode & 0o7777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(ServerError::UnsafeDir {
            dir: dir.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

/// Checks the folder, removes a stale socket left by a killed agent (never anything that is
/// not a socket), binds, sets 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::FileTypeExt;
    secure_dir(path)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io(path))?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(path)(e)),
    }
    let listener = UnixListener::bind(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    Ok(listener)
}

/// Bounds on what peers may hold open.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections per class of peer (may change / may not); more are answered `busy`.
    pub max_connections: usize,
    /// Silence after which a connection is closed.
    pub idle_timeout: Duration,
}

impl Limits {
    pub fn from_config(admin: &crate::config::Admin) -> Self {
        Limits {
            max_connections: admin.max_connections.get() as usize,
            idle_timeout: Duration::from_secs(admin.idle_timeout_sec.get() as u64),
        }
    }
}

/// Open connections of one class; a slot is given back when its guard drops.
#[derive(Clone, Default)]
struct Gauge(Arc<AtomicUsize>);

struct Slot(Arc<AtomicUsize>);

impl Gauge {
    fn take(&self, max: usize) -> Option<Slot> {
        let taken = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            });
        taken.ok().map(|_| Slot(self.0.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Accepts connections until the listener fails or the agent goes away. Peers that may
/// change and the others have separate connection budgets, so a flood from users who may
/// only read never locks root out.
pub async fn serve(listener: UnixListener, agent: mpsc::Sender<Call>, limits: Limits) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    let (operators, others) = (Gauge::default(), Gauge::default());
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let uid = stream.peer_cred().ok().map(|c| c.uid());
                let allowed = may_change(uid, own);
                let gauge = if allowed { &operators } else { &others };
                let Some(slot) = gauge.take(limits.max_connections) else {
                    refuse_busy(stream, uid, limits.max_connections);
                    continue;
                };
                let agent = agent.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) =
                        connection(stream, agent, allowed, uid, limits.idle_timeout).await
                    {
                        debug!(error = %e, "admin connection ended with an error");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accepting an admin connection failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        if agent.is_closed() {
            return;
        }
    }
}

/// Answers `busy` without waiting on the peer (a non-blocking write of one short line into
/// a fresh socket's empty buffer), then closes.
fn refuse_busy(stream: UnixStream, uid: Option<u32>, max: usize) {
    debug!(peer_uid = ?uid, "admin connection refused: {max} already open");
    let resp = Response::err(ErrorBody::new(
        ErrorKind::Busy,
        format!("the agent already serves {max} admin connections of this kind (admin.max_connections); try again"),
    ));
    let mut out = serde_json::to_string(&resp).unwrap_or_default();
    out.push('\n');
    let _ignored = stream.try_write(out.as_bytes());
}

/// Whether a peer with this uid may change anything.
pub fn may_change(peer_uid: Option<u32>, own_uid: u32) -> bool {
    peer_uid.is_some_and(|u| u == 0 || u == own_uid)
}

async fn connection(
    stream: UnixStream,
    agent: mpsc::Sender<Call>,
    allowed: bool,
    uid: Option<u32>,
    idle: Duration,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Every read is bounded twice: in length (one line, MAX_LINE) and in time (idle).
        let mut limited = (&mut r).take(protocol::MAX_LINE as u64 + 1);
        let read = limited.read_until(b'\n', &mut buf);
        let n = match tokio::time::timeout(idle, read).await {
            Ok(n) => n?,
            Err(_) => {
                debug!(peer_uid = ?uid, "admin connection idle for {idle:?}; closing");
                let resp = Response::err(ErrorBody::new(
                    ErrorKind::Timeout,
                    format!(
                        "no complete request for {} s (admin.idle_timeout_sec); closing",
                        idle.as_secs()
                    ),
                ));
                let mut out = serde_json::to_string(&resp).unwrap_or_default();
                out.push('\n');
                // Bounded too: a peer that does not read cannot hold the task.
                let _ignored =
                    tokio::time::timeout(Duration::from_secs(1), w.write_all(out.as_bytes())).await;
                return Ok(());
            }
        };
        if n == 0 {
            return Ok(());
        }
        let too_long = buf.len() > protocol::MAX_LINE;
        let resp = if too_long {
            Response::err(ErrorBody::new(
                ErrorKind::BadRequest,
                format!("request longer than {} bytes", protocol::MAX_LINE),
            ))
        } else {
            let line = String::from_utf8_lossy(&buf);
            if line.trim().is_empty() {
                continue;
            }
            answer(&line, allowed, uid, &agent).await
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_default();
        out.push('\n');
        tokio::time::timeout(idle, w.write_all(out.as_bytes()))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "peer does not read")
            })??;
        if too_long {
            // The rest of the oversized line cannot be framed reliably; close.
            return Ok(());
        }
    }
}

async fn answer(
    line: &str,
    allowed: bool,
    uid: Option<u32>,
    agent: &mpsc::Sender<Call>,
) -> Response {
    let verb = match protocol::parse_request(line) {
        Ok(v) => v,
        Err(e) => return Response::err(e),
    };
    if verb.is_change() && !allowed {
        warn!(peer_uid = ?uid, "admin change refused: peer is neither root nor the agent's user");
        return Response::err(ErrorBody::new(
            ErrorKind::PermissionDenied,
            format!(
                "permission denied: uid {} may not change the load balancer (only root or the agent's user)",
                uid.map_or("unknown".into(), |u| u.to_string())
            ),
        ));
    }
    let (tx, rx) = oneshot::channel();
    if agent.send(Call { verb, reply: tx }).await.is_err() {
        return Response::err(ErrorBody::new(
            ErrorKind::Internal,
            "the agent is shutting down",
        ));
    }
    rx.await.unwrap_or_else(|_| {
        Response::err(ErrorBody::new(
            ErrorKind::Internal,
            "the agent dropped the request",
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_or_own_uid_may_change() {
        assert!(may_change(Some(0), 1000));
        assert!(may_change(Some(1000), 1000));
        assert!(!may_change(Some(65534), 1000));
        assert!(!may_change(Some(65534), 0));
        assert!(!may_change(None, 0), "unknown peer: refuse");
    }

    fn test_limits() -> Limits {
        Limits {
            max_connections: 3,
            idle_timeout: Duration::from_millis(400),
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lb-admin-{tag}-{}", std::process::id()));
        let _ignored = std::fs::remove_dir_all(&d);
        d
    }

    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn folder_rules() {
        let d = Path::new("/run/lb");
        assert!(check_dir(d, true, 0, 0o40700, 0).is_ok());
        assert!(
            check_dir(d, true, 1000, 0o40755, 1000).is_ok(),
            "the agent's own user"
        );
        let e = check_dir(d, true, 65534, 0o40700, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/run/lb") && e.contains("owned by uid 65534"),
            "{e}"
        );
        let e = check_dir(d, true, 0, 0o40770, 0).unwrap_err().to_string();
        assert!(
            e.contains("writable by its group") && e.contains("770"),
            "{e}"
        );
        let e = check_dir(d, true, 0, 0o41777, 0).unwrap_err().to_string();
        assert!(e.contains("1777"), "sticky /tmp-like folders too: {e}");
        assert!(check_dir(d, false, 0, 0o100600, 0).is_err());
        let up = Path::new("/run");
        assert!(check_parent(d, up, 0, 0o40755, 0).is_ok());
        assert!(
            check_parent(d, up, 0, 0o41777, 0).is_ok(),
            "sticky, as /tmp"
        );
        let e = check_parent(d, up, 0, 0o40777, 0).unwrap_err().to_string();
        assert!(
            e.contains("/run") && e.contains("without the sticky bit"),
            "{e}"
        );
        let e = check_parent(d, up, 1000, 0o40755, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("owned by uid 1000"), "{e}");
    }

    #[tokio::test]
    async fn a_new_folder_is_0700_and_tampered_folders_are_refused() {
        let d = scratch("dirs");
        let sock = d.join("new/admin.sock");
        bind(&sock).unwrap();
        let mode = std::fs::metadata(d.join("new"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);

        let gw = d.join("group-writable");
        std::fs::create_dir_all(&gw).unwrap();
        std::fs::set_permissions(&gw, std::fs::Permissions::from_mode(0o770)).unwrap();
        let e = bind(&gw.join("admin.sock")).unwrap_err().to_string();
        assert!(
            e.contains("group-writable") && e.contains("writable by its group"),
            "{e}"
        );
        assert!(!gw.join("admin.sock").exists(), "nothing bound there");

        if is_root() {
            // A folder handed to another user (as if that user had created it first).
            let foreign = d.join("foreign");
            std::fs::create_dir_all(&foreign).unwrap();
            std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
            let e = bind(&foreign.join("admin.sock")).unwrap_err().to_string();
            assert!(e.contains("owned by uid 65534"), "{e}");
            assert!(!foreign.join("admin.sock").exists());
            // A folder of root's inside a folder nobody owns: nobody could swap it.
            let inner = foreign.join("inner");
            std::fs::create_dir(&inner).unwrap();
            let e = bind(&inner.join("admin.sock")).unwrap_err().to_string();
            assert!(
                e.contains("the folder above it") && e.contains("uid 65534"),
                "{e}"
            );
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn a_file_at_the_socket_path_is_never_removed() {
        let d = scratch("not-a-socket");
        std::fs::create_dir_all(&d).unwrap();
        let sock = d.join("admin.sock");
        std::fs::write(&sock, "someone's file").unwrap();
        let e = bind(&sock).unwrap_err().to_string();
        assert!(
            e.contains("is not a socket") && e.contains("admin.sock"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&sock).unwrap(), "someone's file");
        std::fs::remove_file(&sock).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &sock).unwrap();
        assert!(bind(&sock).is_err(), "a symlink is not a socket either");
        assert!(Path::new("/etc/hostname").exists());
        // A stale socket (its agent killed) is replaced.
        std::fs::remove_file(&sock).unwrap();
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        bind(&sock).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// Answers every call with ok, as the agent's task would.
    fn fake_agent() -> mpsc::Sender<Call> {
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let _sent = c
                    .reply
                    .send(Response::ok(serde_json::json!({"seen": true})));
            }
        });
        tx
    }

    async fn status(path: &Path) -> Response {
        let s = UnixStream::connect(path).await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"{\"version\":1,\"verb\":\"status\"}\n")
            .await
            .unwrap();
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[tokio::test]
    async fn silent_peers_are_closed_and_the_cap_refuses_the_rest() {
        let d = scratch("limits");
        let path = d.join("admin.sock");
        let listener = bind(&path).unwrap();
        tokio::spawn(serve(listener, fake_agent(), test_limits()));
        // A silent peer, and one that sends half a line and stops.
        let silent = UnixStream::connect(&path).await.unwrap();
        let mut half = UnixStream::connect(&path).await.unwrap();
        half.write_all(b"{\"version\":1,").await.unwrap();
        // Meanwhile another client is served.
        assert!(status(&path).await.ok);
        let started = std::time::Instant::now();
        for mut s in [silent, half] {
            let mut text = String::new();
            let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut text));
            read.await.expect("closed within the deadline").unwrap();
            assert!(
                text.contains("\"timeout\"") && text.contains("idle_timeout_sec"),
                "{text}"
            );
        }
        assert!(started.elapsed() < Duration::from_secs(2));

        // Three held connections fill the cap; the fourth is told so and closed.
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(UnixStream::connect(&path).await.unwrap());
        }
        let mut fourth = UnixStream::connect(&path).await.unwrap();
        let mut text = String::new();
        tokio::time::timeout(Duration::from_secs(5), fourth.read_to_string(&mut text))
            .await
            .unwrap()
            .unwrap();
        assert!(
            text.contains("\"busy\"") && text.contains("max_connections"),
            "{text}"
        );
        drop(held);
        // Slots come back when connections close.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !status(&path).await.ok {
            assert!(std::time::Instant::now() < deadline, "slots never freed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[tokio::test]
    async fn socket_is_0600_and_refuses_bad_lines_without_the_agent() {
        let dir = std::env::temp_dir().join(format!("lb-admin-test-{}", std::process::id()));
        let path = dir.join("sub/admin.sock");
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(
            matches!(bind(&path), Err(ServerError::InUse(_))),
            "a live socket is not replaced"
        );
        let (tx, mut rx) = mpsc::channel::<Call>(4);
        tokio::spawn(serve(listener, tx, test_limits()));
        // Answer every call with an ok status so the round trip is visible.
        tokio::spawn(async move {
            while let Some(c) = rx.recv().await {
                let _sent = c.reply.send(Response::ok(
                    serde_json::json!({"seen": format!("{:?}", c.verb)}),
                ));
            }
        });
        let s = UnixStream::connect(&path).await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        w.write_all(b"garbage\n{\"version\":1,\"verb\":\"status\"}\n")
            .await
            .unwrap();
        r.read_line(&mut line).await.unwrap();
        let resp: Response = serde_json::from_str(&line).unwrap();
        assert!(!resp.ok && resp.error.unwrap().kind == ErrorKind::BadRequest);
        line.clear();
        r.read_line(&mut line).await.unwrap();
        let resp: Response = serde_json::from_str(&line).unwrap();
        assert!(resp.ok, "{line}");
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
