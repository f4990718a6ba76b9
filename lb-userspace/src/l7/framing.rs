//! Observes the raw HTTP/1.1 byte stream of a client connection to catch the framing
//! problems hyper normalizes away before the service sees the request: repeated equal
//! Content-Length lines (hyper keeps one) and Content-Length together with
//! Transfer-Encoding (hyper drops Content-Length). SEMANTICS.md wants both answered 400
//! without reaching a backend; RFC 9112 §6.3 calls the second a likely smuggling attempt.
//!
//! Parsing is httparse's (the parser hyper itself uses), for request heads and chunk-size
//! lines; this module only follows message boundaries so it knows where the next head
//! starts. It pushes one verdict per request head, in order; hyper serves HTTP/1.1 requests
//! of a connection in order, so the service pops them in step. When unsure (an upgrade, an
//! HTTP/2 preface, a head httparse or hyper rejects) it stops observing for good, and the
//! service then finds no verdict and lets hyper's own checks stand.

use super::idle::Activity;
use std::{
    collections::VecDeque,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Verdicts of the heads seen so far, oldest first: `Some(reason)` to refuse.
#[derive(Debug, Default)]
pub struct Verdicts(Mutex<VecDeque<Option<&'static str>>>, AtomicBool);

impl Verdicts {
    /// Whether the client sent a chunk-size line that does not parse. The request's head
    /// has reached the backend by then; the seeds close both connections (no answer).
    pub fn chunk_broken(&self) -> bool {
        self.1.load(Ordering::Relaxed)
    }

    /// The verdict of the next request the service handles.
    pub fn pop(&self) -> Option<&'static str> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front()
            .flatten()
    }

    /// Frees the queue's allocation when it is empty, for a connection parked between
    /// requests (the next head allocates it again).
    pub fn shed(&self) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_empty() {
            *q = VecDeque::new();
        }
    }

    fn push(&self, v: Option<&'static str>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(v);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a request head.
    Head,
    /// Skipping this many body bytes.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize,
    /// Skipping chunk data plus its CRLF.
    ChunkData(u64),
    /// Collecting trailer lines until the empty one.
    Trailers,
    /// Not observing any more.
    Off,
}

/// An I/O wrapper that watches what the client sends.
pub struct Observed<T> {
    inner: T,
    /// Bytes read before and given back (hyper's read buffer when a connection is parked,
    /// see [`super::park`]): served first, already observed.
    rewound: bytes::Bytes,
    state: State,
    line: Vec<u8>,
    limit: usize,
    verdicts: Arc<Verdicts>,
    activity: Arc<Activity>,
}

impl<T> Observed<T> {
    /// `limit`: the largest head worth collecting (hyper refuses bigger ones anyway).
    /// `activity` learns when a head starts and ends (the head timer) and every read and
    /// write (the keep-alive timer).
    pub fn new(
        inner: T,
        limit: usize,
        verdicts: Arc<Verdicts>,
        activity: Arc<Activity>,
    ) -> Observed<T> {
        Observed {
            inner,
            rewound: bytes::Bytes::new(),
            state: State::Head,
            line: Vec::new(),
            limit,
            verdicts,
            activity,
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped stream, for a connection parked between requests (whose wrapper is
    /// made anew when it is served again: between heads it holds nothing else).
    pub fn into_inner(self) -> T {
        debug_assert!(self.rewound.is_empty());
        self.inner
    }

    /// Gives back bytes this wrapper already read and observed; the next reads return
    /// them first.
    pub fn rewind(&mut self, bytes: bytes::Bytes) {
        debug_assert!(self.rewound.is_empty());
        self.rewound = bytes;
    }

    fn set(&mut self, state: State) {
        if state == State::Off {
            // No longer following heads: no head timer either.
            self.activity.head_done();
        }
        self.state = state;
        self.activity.set_between_messages(state == State::Head);
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Body(n) | State::ChunkData(n) => {
                    let take = (n.min(data.len() as u64)) as usize;
                    data = &data[take..];
                    let left = n - take as u64;
                    let next = match (self.state, left) {
                        (State::Body(_), 0) => State::Head,
                        (State::Body(_), l) => State::Body(l),
                        (_, 0) => State::ChunkSize,
                        (_, l) => State::ChunkData(l),
                    };
                    self.set(next);
                }
                State::Head => {
                    if self.line.is_empty() {
                        self.activity.head_started();
                    }
                    let start = self.line.len().saturating_sub(2);
                    self.line.extend_from_slice(data);
                    let Some(end) = head_end(&self.line, start) else {
                        if self.line.len() > self.limit {
                            self.set(State::Off);
                        }
                        return;
                    };
                    let mut head = std::mem::take(&mut self.line);
                    let next = self.judge(&head[..end]);
                    self.activity.head_done();
                    self.set(next);
                    // Usually empty (no allocation): the bytes after the head, its body or
                    // the next head.
                    let rest = head[end..].to_vec();
                    head.clear();
                    self.line = head; // keep the capacity for the next head
                    if !rest.is_empty() {
                        self.feed(&rest);
                    }
                    return;
                }
                State::ChunkSize | State::Trailers => {
                    let Some(nl) = data.iter().position(|b| *b == b'\n') else {
                        self.line.extend_from_slice(data);
                        if self.line.len() > 4096 {
                            self.set(State::Off);
                        }
                        return;
                    };
                    self.line.extend_from_slice(&data[..=nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.line);
                    let next = if self.state == State::Trailers {
                        if line == b"\r\n" {
                            State::Head
                        } else {
                            State::Trailers
                        }
                    } else {
                        match httparse::parse_chunk_size(&line) {
                            Ok(httparse::Status::Complete((_, 0))) => State::Trailers,
                            // Chunk data is followed by CRLF (RFC 9112 §7.1).
                            Ok(httparse::Status::Complete((_, n))) => {
                                State::ChunkData(n.saturating_add(2))
                            }
                            _ => {
                                self.verdicts.1.store(true, Ordering::Relaxed);
                                State::Off
                            }
                        }
                    };
                    self.set(next);
                }
            }
        }
    }

    /// Parses one head, records its verdict and returns the state after it.
    fn judge(&self, head: &[u8]) -> State {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) if req.version == Some(1) => {}
            // HTTP/1.0, HTTP/2 preface, or a head hyper will refuse itself.
            _ => return State::Off,
        }
        if has_bare_lf(head) {
            // hyper accepts bare LF line endings; RFC 9112 §2.2 lets a server refuse them,
            // and a proxy should, since the next hop may split lines differently.
            self.verdicts
                .push(Some("bare LF line ending in the request head"));
            return State::Off;
        }
        let mut cl: Vec<&[u8]> = Vec::new();
        let mut te = false;
        let mut upgrade = false;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                cl.push(h.value);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = true;
            } else if h.name.eq_ignore_ascii_case("upgrade") {
                upgrade = true;
            }
        }
        let verdict = if cl.len() > 1 {
            Some("several Content-Length values")
        } else if te && !cl.is_empty() {
            Some("both Content-Length and Transfer-Encoding")
        } else {
            None
        };
        self.verdicts.push(verdict);
        if upgrade || verdict.is_some() {
            // After an upgrade the bytes are another protocol; after a refusal the
            // connection closes.
            return State::Off;
        }
        if te {
            return State::ChunkSize;
        }
        match cl.first().map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        }) {
            None => State::Head,
            Some(Some(0)) => State::Head,
            Some(Some(n)) => State::Body(n),
            Some(None) => State::Off,
        }
    }
}

/// The end of a request head (just past its empty line) in `buf`, searching from `from`:
/// the first LF followed by LF or CR LF, so heads with bare LF endings are found too.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// Whether a line of the head ends with LF alone.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, b)| *b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

impl<T: AsyncRead + Unpin> AsyncRead for Observed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.rewound.is_empty() {
            let n = this.rewound.len().min(buf.remaining());
            buf.put_slice(&this.rewound.split_to(n));
            if this.rewound.is_empty() {
                // An empty remainder can still hold the whole buffer it was cut from.
                this.rewound = bytes::Bytes::new();
            }
            this.activity.read_done(false);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.activity.read_done(r.is_pending());
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() > before {
                this.activity.touch();
            }
            if this.state != State::Off {
                this.feed(&buf.filled()[before..]);
            }
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Observed<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.activity.write_done(r.is_pending());
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.activity.touch();
            }
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.activity.write_done(r.is_pending());
        r
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.activity.write_done(r.is_pending());
        if let Poll::Ready(Ok(n)) = r {
            if n > 0 {
                self.activity.touch();
            }
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(chunks: &[&[u8]]) -> Vec<Option<&'static str>> {
        let v = Arc::new(Verdicts::default());
        let mut o = Observed::new((), 65536, v.clone(), Arc::default());
        for c in chunks {
            o.feed(c);
        }
        let q = v.0.lock().unwrap();
        q.iter().copied().collect()
    }

    #[test]
    fn follows_keep_alive_and_pipelined_requests() {
        let two =
            b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(run(&[two]), vec![None, None]);
        // Split at every byte: boundaries do not depend on how reads fall.
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        let bytes: Vec<&[u8]> = chunked.chunks(1).collect();
        assert_eq!(
            run(&bytes),
            vec![None, Some("several Content-Length values")]
        );
    }

    #[test]
    fn refuses_cl_with_te_and_stops_after_upgrades_and_h2() {
        assert_eq!(
            run(&[b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"]),
            vec![Some("both Content-Length and Transfer-Encoding")]
        );
        assert_eq!(
            run(&[b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nGET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"]),
            vec![None],
            "bytes after an upgrade are not HTTP"
        );
        assert!(run(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]).is_empty());
    }

    #[test]
    fn refuses_bare_lf_heads_and_notes_broken_chunks() {
        let bare = b"GET / HTTP/1.1\nHost: a\n\n";
        let bytes: Vec<&[u8]> = bare.chunks(1).collect();
        assert_eq!(
            run(&bytes),
            vec![Some("bare LF line ending in the request head")]
        );
        assert_eq!(
            run(&[b"GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n"]),
            vec![Some("bare LF line ending in the request head")]
        );
        let v = Arc::new(Verdicts::default());
        let mut o = Observed::new((), 65536, v.clone(), Arc::default());
        o.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert!(v.chunk_broken());
    }
}
