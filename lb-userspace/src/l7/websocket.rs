//! WebSocket (and any HTTP/1.1 Upgrade) tunnels: once the backend answers 101, both
//! upgraded connections are spliced with `copy_bidirectional` for at most the
//! backend-service timeout (SEMANTICS: WebSocket upgrades are proxied for the life of the
//! backend-service timeout; RFC 6455 §4.1).
//!
//! The tunnel task owns both connections, so a reload (which only swaps the routing table)
//! leaves open WebSockets alone; they close when their backend is evicted (connection
//! draining over, maintenance).

use super::body::InFlight;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Splices the client and backend sides once both upgrades complete.
pub fn spawn_tunnel(client: OnUpgrade, backend: OnUpgrade, limit: Duration, guard: InFlight) {
    tokio::spawn(async move {
        // Held for the tunnel's life: the backend counts it as in flight.
        let guard = guard;
        let (client, backend) = match tokio::try_join!(client, backend) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let evicted = guard.backend().wait_evicted();
        let mut client = TokioIo::new(client);
        let mut backend = TokioIo::new(backend);
        tokio::select! {
            r = tokio::time::timeout(limit, tokio::io::copy_bidirectional(&mut client, &mut backend)) => match r {
                Ok(Ok((up, down))) => tracing::debug!(up, down, "tunnel closed"),
                Ok(Err(e)) => tracing::debug!(error = %e, "tunnel broke"),
                Err(_) => tracing::debug!("tunnel reached the backend service timeout"),
            },
            // Connection draining is over for the backend: the tunnel closes with it.
            _ = evicted => tracing::debug!("tunnel closed: backend drained"),
        }
    });
}
