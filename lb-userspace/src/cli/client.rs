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
    #[error("cannot connect to the agent at {path}: {source} (is `lb run` running? is --socket right? are you root?)")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the agent: {0}")]
    Io(#[from] std::io::Error),
    #[error(
        "the agent sent an unreadable response ({0}); are the client and agent the same release?"
    )]
    Decode(#[from] serde_json::Error),
}

/// Sends `verb` and returns the agent's response.
pub fn call(socket: &Path, verb: &Verb) -> Result<Response, ClientError> {
    call_line(socket, &protocol::encode_request(verb))
}

/// Sends a raw line (tests use it for malformed requests).
pub fn call_line(socket: &Path, line: &str) -> Result<Response, ClientError> {
    let mut s = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.display().to_string(),
        source,
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
