//! Parked HTTP/1.1 connections without a task of their own. A connection parked between
//! requests ([`super::park`]) used to keep its tokio task (its future with the watchdog's
//! timer, 128-byte aligned), tokio's registration of its socket (a 128-byte aligned
//! `ScheduledIo`) and its bookkeeping, about 3.5 KB of resident memory per idle connection
//! against nginx's 0.6 KB. Here a worker's parked connections are one table ([`Lot`]): each
//! holds its socket (taken out of tokio's I/O driver), its deadline and the value the caller
//! parks with it. One task per lot waits on an epoll set of the parked sockets and one timer
//! for the earliest deadline: a socket that becomes readable (bytes, or the client closing)
//! is taken out and handed to the lot's `ready` function (which starts a task to serve it
//! again); a connection whose deadline passes is dropped (closed).
//!
//! Deadlines sit in a binary heap; a connection that leaves early leaves its heap entry
//! behind (it no longer matches its slot), and the heap is rebuilt from the slots when such
//! stale entries outnumber the live ones, so it stays within twice the lot's size.

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};
use tokio::{io::unix::AsyncFd, sync::Notify, time::Instant};

/// What a lot does with a connection whose socket became readable.
pub type Ready<T> = Box<dyn Fn(std::net::TcpStream, T) + Send + Sync>;

/// One worker's parked connections (see the module).
pub struct Lot<T> {
    inner: Mutex<Inner<T>>,
    epoll: AsyncFd<OwnedFd>,
    /// A connection was parked with a deadline earlier than the one the task sleeps until.
    earlier: Notify,
    /// Whether the lot's task still runs (it ends with its runtime).
    alive: AtomicBool,
    ready: Ready<T>,
}

struct Inner<T> {
    slots: slab::Slab<Slot<T>>,
    /// (deadline, slot, generation), earliest first; entries of slots gone are stale.
    deadlines: BinaryHeap<Reverse<(Instant, u32, u32)>>,
    next_gen: u32,
    /// The deadline the task sleeps until.
    armed: Option<Instant>,
}

struct Slot<T> {
    stream: std::net::TcpStream,
    gen: u32,
    deadline: Instant,
    value: T,
}

/// Readiness events taken from the epoll set per system call.
const BATCH: usize = 64;

impl<T: Send + 'static> Lot<T> {
    /// A lot whose task runs on the current tokio runtime.
    pub fn start(ready: Ready<T>) -> io::Result<Arc<Lot<T>>> {
        // SAFETY: epoll_create1 returns a new descriptor (or -1), which the OwnedFd owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a descriptor just created and owned by nothing else; the OwnedFd
        // keeps it open for as long as the AsyncFd lives.
        let epoll = unsafe {
            AsyncFd::register_with_interest(OwnedFd::from_raw_fd(fd), tokio::io::Interest::READABLE)
        }
        .map_err(|e| e.into_parts().1)?;
        let lot = Arc::new(Lot {
            inner: Mutex::new(Inner {
                slots: slab::Slab::new(),
                deadlines: BinaryHeap::new(),
                next_gen: 0,
                armed: None,
            }),
            epoll,
            earlier: Notify::new(),
            alive: AtomicBool::new(true),
            ready,
        });
        tokio::spawn(lot.clone().run());
        Ok(lot)
    }

    /// Whether the lot still takes connections (its task runs).
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Connections parked now.
    pub fn count(&self) -> usize {
        self.lock().slots.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Parks `stream` (non-blocking, not registered with tokio) until it is readable or
    /// `deadline` passes; gives both back when the lot cannot take it.
    pub fn park(
        &self,
        stream: std::net::TcpStream,
        deadline: Instant,
        value: T,
    ) -> Result<(), (std::net::TcpStream, T)> {
        if !self.alive() {
            return Err((stream, value));
        }
        let mut inner = self.lock();
        let gen = inner.next_gen;
        inner.next_gen = gen.wrapping_add(1);
        let fd = stream.as_raw_fd();
        let key = inner.slots.insert(Slot {
            stream,
            gen,
            deadline,
            value,
        });
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLONESHOT) as u32,
            u64: token(key as u32, gen),
        };
        // SAFETY: both descriptors are open (the slot owns `fd`); `ev` is a valid event.
        let rc = unsafe {
            libc::epoll_ctl(
                self.epoll.get_ref().as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd,
                &mut ev,
            )
        };
        if rc != 0 {
            let s = inner.slots.remove(key);
            return Err((s.stream, s.value));
        }
        inner.deadlines.push(Reverse((deadline, key as u32, gen)));
        if inner.deadlines.len() > 2 * inner.slots.len() + 64 {
            inner.rebuild_deadlines();
        }
        if inner.armed.is_none_or(|a| deadline < a) {
            self.earlier.notify_one();
        }
        Ok(())
    }

    /// The lot's task: hands out readable connections and drops expired ones.
    async fn run(self: Arc<Self>) {
        // Ends with the runtime: the parked sockets are closed then (no task to serve them).
        struct Closing<'a, T>(&'a Lot<T>);
        impl<T> Drop for Closing<'_, T> {
            fn drop(&mut self) {
                self.0.alive.store(false, Ordering::Release);
                let slots = {
                    let mut inner = self.0.inner.lock().unwrap_or_else(|p| p.into_inner());
                    inner.deadlines.clear();
                    std::mem::take(&mut inner.slots)
                };
                drop(slots);
            }
        }
        let _closing = Closing(&self);
        let far = || Instant::now() + Duration::from_secs(86_400);
        let sleep = tokio::time::sleep_until(far());
        tokio::pin!(sleep);
        loop {
            let next = self.expire();
            let at = next.unwrap_or_else(far);
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                guard = self.epoll.readable() => match guard {
                    Ok(mut guard) => {
                        if !self.take_ready() {
                            guard.clear_ready();
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "parked connections: epoll failed");
                        return;
                    }
                },
                _ = &mut sleep => {}
                _ = self.earlier.notified() => {}
            }
        }
    }

    /// Drops the connections whose deadline passed; returns the next deadline (also noted
    /// as armed).
    fn expire(&self) -> Option<Instant> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let next = {
            let mut inner = self.lock();
            while let Some(&Reverse((at, key, gen))) = inner.deadlines.peek() {
                if at > now {
                    break;
                }
                inner.deadlines.pop();
                if inner.matches(key, gen, at) {
                    let slot = inner.slots.remove(key as usize);
                    self.forget(&slot.stream);
                    expired.push(slot);
                }
            }
            let next = inner.deadlines.peek().map(|Reverse((at, _, _))| *at);
            inner.armed = next;
            next
        };
        if !expired.is_empty() {
            tracing::debug!(
                closed = expired.len(),
                "idle connections closed by their timer"
            );
        }
        drop(expired); // closes the sockets, outside the lock
        next
    }

    /// Takes the connections whose sockets are readable and hands them to `ready`; returns
    /// whether the batch was full (more may be ready).
    fn take_ready(&self) -> bool {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        // SAFETY: the buffer holds BATCH events; timeout 0 does not block.
        let n = unsafe {
            libc::epoll_wait(
                self.epoll.get_ref().as_raw_fd(),
                events.as_mut_ptr(),
                BATCH as libc::c_int,
                0,
            )
        };
        if n < 0 {
            // Interrupted: look again rather than clear the readiness with events pending.
            return io::Error::last_os_error().kind() == io::ErrorKind::Interrupted;
        }
        if n == 0 {
            return false;
        }
        let mut woken = Vec::with_capacity(n as usize);
        {
            let mut inner = self.lock();
            for ev in &events[..n as usize] {
                let (key, gen) = untoken(ev.u64);
                if inner.slots.get(key as usize).is_some_and(|s| s.gen == gen) {
                    let slot = inner.slots.remove(key as usize);
                    self.forget(&slot.stream);
                    woken.push(slot);
                }
            }
        }
        for slot in woken {
            (self.ready)(slot.stream, slot.value);
        }
        n as usize == BATCH
    }

    /// Takes a socket out of the epoll set.
    fn forget(&self, stream: &std::net::TcpStream) {
        // SAFETY: both descriptors are open; DEL takes no event.
        unsafe {
            libc::epoll_ctl(
                self.epoll.get_ref().as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                stream.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }
}

impl<T> Inner<T> {
    fn matches(&self, key: u32, gen: u32, at: Instant) -> bool {
        self.slots
            .get(key as usize)
            .is_some_and(|s| s.gen == gen && s.deadline == at)
    }

    fn rebuild_deadlines(&mut self) {
        self.deadlines = self
            .slots
            .iter()
            .map(|(k, s)| Reverse((s.deadline, k as u32, s.gen)))
            .collect();
    }
}

fn token(key: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(key)
}

fn untoken(t: u64) -> (u32, u32) {
    (t as u32, (t >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A connected pair: (client, server side as a non-blocking std stream).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, _) = l.accept().unwrap();
        s.set_nonblocking(true).unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn a_readable_connection_is_handed_back_and_an_expired_one_closed() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let lot = Lot::start(Box::new(move |s, v: u32| {
            let _ = tx.send((s, v));
        }))
        .unwrap();
        let far = Instant::now() + Duration::from_secs(60);
        let (mut c1, s1) = pair();
        let (mut c2, s2) = pair();
        lot.park(s1, far, 1).map_err(|_| "park").unwrap();
        lot.park(s2, Instant::now() + Duration::from_millis(100), 2)
            .map_err(|_| "park")
            .unwrap();
        assert_eq!(lot.count(), 2);
        c1.write_all(b"x").unwrap();
        let (mut s, v) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v, 1);
        let mut b = [0u8; 1];
        s.set_nonblocking(false).unwrap();
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");
        // The second one expires: the lot closes it, the client reads the end.
        c2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let t0 = std::time::Instant::now();
        let n = tokio::task::spawn_blocking(move || c2.read(&mut [0u8; 1]).unwrap())
            .await
            .unwrap();
        assert_eq!(n, 0, "closed by the lot");
        assert!(t0.elapsed() < Duration::from_secs(4));
        assert_eq!(lot.count(), 0);
        assert!(
            rx.try_recv().is_err(),
            "an expired connection is not served"
        );
    }

    #[tokio::test]
    async fn stale_deadlines_do_not_pile_up() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let lot = Lot::start(Box::new(move |s, v: u32| {
            let _ = tx.send((s, v));
        }))
        .unwrap();
        let (mut c, mut s) = pair();
        let far = Instant::now() + Duration::from_secs(60);
        for i in 0..500 {
            lot.park(s, far, i).map_err(|_| "park").unwrap();
            c.write_all(b"y").unwrap();
            let (back, v) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(v, i);
            let mut b = [0u8; 1];
            back.set_nonblocking(false).unwrap();
            (&back).read_exact(&mut b).unwrap();
            back.set_nonblocking(true).unwrap();
            s = back;
        }
        assert!(lot.lock().deadlines.len() <= 64 + 2);
    }
}
