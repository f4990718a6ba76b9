//! Connection draining on removal (SEMANTICS: connection draining timeout): a backend that
//! leaves a backend service's configuration stops taking new flows at once, but its slot
//! stays in use — marked draining — for the service's draining timeout, so established
//! connections finish. After the timeout the slot is freed and any flow still pinned to it
//! is hashed again.

use super::plan::{L4Backend, L4Plan};
use std::{collections::BTreeMap, time::Duration, time::Instant};

/// Backends removed from the plan and still draining, by (service, backend name).
#[derive(Debug, Default, Clone)]
pub struct Lingering {
    removed: BTreeMap<crate::ids::BackendKey, (L4Backend, Instant)>,
}

impl Lingering {
    /// Adds to `next` the backends that `prev` had and `next` lacks, as draining, until
    /// `timeout(service)` after their removal. Backends that come back stop lingering.
    pub fn apply(
        &mut self,
        prev: Option<&L4Plan>,
        next: &mut L4Plan,
        timeout: &dyn Fn(&str) -> Duration,
        now: Instant,
    ) {
        if let Some(prev) = prev {
            for ps in &prev.services {
                let Some(ns) = next.services.iter().find(|s| s.name == ps.name) else {
                    continue;
                };
                for b in &ps.backends {
                    let key = crate::ids::BackendKey::new(ps.name.clone(), b.name.clone());
                    let present = ns
                        .backends
                        .iter()
                        .any(|n| n.name == b.name && n.addr == b.addr);
                    if !present && !self.removed.contains_key(&key) && !timeout(&ps.name).is_zero()
                    {
                        self.removed.insert(key, (b.clone(), now));
                    }
                }
            }
        }
        self.removed.retain(
            |crate::ids::BackendKey {
                 service: svc,
                 backend: name,
             },
             (b, at)| {
                let Some(ns) = next.services.iter_mut().find(|s| &s.name == svc) else {
                    return false;
                };
                if ns
                    .backends
                    .iter()
                    .any(|n| &n.name == name || n.addr == b.addr)
                {
                    return false;
                }
                if now.duration_since(*at) >= timeout(svc) {
                    return false;
                }
                let mut d = b.clone();
                d.in_table = false;
                d.draining = true;
                d.evict = false;
                ns.backends.push(d);
                true
            },
        );
    }

    /// Removed backends still draining, for status displays.
    pub fn draining(&self) -> impl Iterator<Item = (&crate::ids::BackendKey, &Instant)> {
        self.removed.iter().map(|(k, (_, at))| (k, at))
    }

    /// Whether nothing is draining any more.
    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.removed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::plan::L4Service;

    fn b(n: u8) -> L4Backend {
        L4Backend {
            name: format!("b{n}"),
            addr: std::net::Ipv4Addr::new(10, 0, 0, n).into(),
            mac: Some([2, 0, 0, 0, 0, n]),
            src: None,
            weight: 1,
            in_table: true,
            healthy: true,
            draining: false,
            evict: false,
            failover: false,
        }
    }

    fn plan(bs: Vec<L4Backend>) -> L4Plan {
        L4Plan {
            services: vec![L4Service {
                name: "s".into(),
                hash_mode: 0,
                flags: 0,
                idle_timeout_s: 600,
                forwarding: 0,
                gue_port: 0,
                backends: bs,
            }],
            vips: vec![],
        }
    }

    #[test]
    fn removed_backend_drains_then_goes() {
        let mut l = Lingering::default();
        let t0 = Instant::now();
        let to = |_: &str| Duration::from_secs(10);
        let prev = plan(vec![b(1), b(2)]);
        let mut next = plan(vec![b(1)]);
        l.apply(Some(&prev), &mut next, &to, t0);
        let d = next.services[0]
            .backends
            .iter()
            .find(|x| x.name == "b2")
            .unwrap();
        assert!(d.draining && !d.in_table);
        let mut later = plan(vec![b(1)]);
        l.apply(Some(&next), &mut later, &to, t0 + Duration::from_secs(5));
        assert_eq!(later.services[0].backends.len(), 2, "still draining at 5 s");
        let mut gone = plan(vec![b(1)]);
        l.apply(Some(&later), &mut gone, &to, t0 + Duration::from_secs(11));
        assert_eq!(
            gone.services[0].backends.len(),
            1,
            "freed after the timeout"
        );
        assert!(l.is_empty());
    }

    #[test]
    fn zero_timeout_removes_at_once_and_return_cancels() {
        let mut l = Lingering::default();
        let t0 = Instant::now();
        let prev = plan(vec![b(1), b(2)]);
        let mut next = plan(vec![b(1)]);
        l.apply(Some(&prev), &mut next, &|_| Duration::ZERO, t0);
        assert_eq!(next.services[0].backends.len(), 1);
        let mut next = plan(vec![b(1)]);
        l.apply(Some(&prev), &mut next, &|_| Duration::from_secs(10), t0);
        let mut back = plan(vec![b(1), b(2)]);
        l.apply(Some(&next), &mut back, &|_| Duration::from_secs(10), t0);
        assert_eq!(back.services[0].backends.len(), 2);
        assert!(back.services[0].backends.iter().all(|x| !x.draining));
        assert!(l.is_empty());
    }
}
