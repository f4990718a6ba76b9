//! Backend connections counted against the descriptor budget ([`super::limits`]): every
//! backend connection, from our HTTP/1.1 pool or hyper-util's clients (H2C, HTTPS, HTTP2),
//! holds an [`OpenGuard`] while its socket lives; a connection beyond the cap is not
//! opened and the attempt fails as a connect failure (502, or a retry elsewhere).

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    task::{Context, Poll},
};

/// Open backend connections and their cap, shared by every client.
#[derive(Debug)]
pub struct BackendBudget {
    open: Arc<AtomicUsize>,
    max: AtomicUsize,
}

impl Default for BackendBudget {
    fn default() -> Self {
        BackendBudget {
            open: Arc::default(),
            max: AtomicUsize::new(usize::MAX),
        }
    }
}

impl BackendBudget {
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    /// Backend connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// A guard for one more connection, or the error to fail the attempt with.
    pub fn admit(&self) -> io::Result<OpenGuard> {
        let max = self.max.load(Ordering::Relaxed);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| {
                io::Error::other("too many open backend connections (descriptor budget)")
            })?;
        Ok(OpenGuard(self.open.clone()))
    }
}

/// One open backend connection.
#[derive(Debug)]
pub struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// hyper-util's TCP connector, counting what it opens.
#[derive(Clone, Debug)]
pub struct Counted {
    inner: HttpConnector,
    budget: Arc<BackendBudget>,
}

impl Counted {
    pub fn new(inner: HttpConnector, budget: Arc<BackendBudget>) -> Counted {
        Counted { inner, budget }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for Counted {
    type Response = CountedIo<<HttpConnector as tower_service::Service<Uri>>::Response>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let guard = self.budget.admit();
        let connecting = self.inner.call(dst);
        Box::pin(async move {
            let guard = guard?;
            let io = connecting.await?;
            Ok(CountedIo { io, _guard: guard })
        })
    }
}

/// A connection holding its place in the budget.
#[derive(Debug)]
pub struct CountedIo<T> {
    io: T,
    _guard: OpenGuard,
}

impl<T: Read + Unpin> Read for CountedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for CountedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for CountedIo<T> {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_caps_and_frees() {
        let b = BackendBudget::default();
        b.set_max(2);
        let g1 = b.admit().unwrap();
        let _g2 = b.admit().unwrap();
        assert!(b.admit().is_err());
        drop(g1);
        assert_eq!(b.open(), 1);
        assert!(b.admit().is_ok());
    }
}
