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

/// Creates the folder, removes a stale socket left by a killed agent, binds, sets 0600.
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ServerError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io(path))?;
    }
    let listener = UnixListener::bind(path).map_err(io(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    Ok(listener)
}

/// Accepts connections until the listener fails or the agent goes away.
pub async fn serve(listener: UnixListener, agent: mpsc::Sender<Call>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let agent = agent.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, agent).await {
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

/// Whether a peer with this uid may change anything.
pub fn may_change(peer_uid: Option<u32>, own_uid: u32) -> bool {
    peer_uid.is_some_and(|u| u == 0 || u == own_uid)
}

async fn connection(stream: UnixStream, agent: mpsc::Sender<Call>) -> std::io::Result<()> {
    let peer = stream.peer_cred().ok();
    // SAFETY: geteuid has no preconditions and cannot fail.
    let own = unsafe { libc::geteuid() };
    let allowed = may_change(peer.map(|c| c.uid()), own);
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut r)
            .take(protocol::MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await?;
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
            answer(&line, allowed, peer.map(|c| c.uid()), &agent).await
        };
        let mut out = serde_json::to_string(&resp).unwrap_or_default();
        out.push('\n');
        w.write_all(out.as_bytes()).await?;
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
        tokio::spawn(serve(listener, tx));
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
