//! A blocking admin-socket client: one request line out, one response line back.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use crate::admin::protocol::{self, Response, Verb};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent is not running, or the socket path is wrong, or permission is missing.
    #[error("cannot connect to the agent at {path}: {cause}; {}", next_step(cause))]
    Connect {
        path: String,
        /// Not `source`: the message already says it, and a source is printed again.
        cause: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the agent sent an unreadable response ({0}); are the client and agent the same release?"
    )]
    Decode(#[from] serde_json::Error),
}

/// What to do about a failed connection, by its cause.
fn next_step(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind::*;
    match e.kind() {
        PermissionDenied => "the socket is root's: run the command with sudo",
        ConnectionRefused => {
            "no agent listens there (it stopped?): start it with `systemctl start lb` \
             or `sudo lb run --config <file>`"
        }
        _ => {
            "is `lb run` running? Start it with `systemctl start lb` or \
             `sudo lb run --config <file>`, or point at its socket with --socket or --config"
        }
    }
}

/// Sends `verb` and returns the agent's response.
pub fn call(socket: &Path, verb: &Verb) -> Result<Response, ClientError> {
    call_line(socket, &protocol::encode_request(verb))
}

/// Sends a raw line (tests use it for malformed requests).
pub fn call_line(socket: &Path, line: &str) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|cause| ClientError::Connect {
        path: socket.display().to_string(),
        cause,
    })?;
    // A reload or a change waits for map writes; 30 s is far beyond any of them.
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(line.as_bytes())?;
    s.write_all(b"\n")?;
    let mut r = BufReader::new(s);
    let mut out = String::new();
    r.read_line(&mut out)?;
    Ok(serde_json::from_str(&out)?)
}
