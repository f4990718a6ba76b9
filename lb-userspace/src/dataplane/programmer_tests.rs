//! The programmer against in-memory maps (no root): allocation, write order, refusals that
//! write nothing, adoption by a second programmer, rollback after a failed write at every
//! position, and a rollback that fails too.

use super::*;
use crate::dataplane::{
    maps::fake::{Contents, FakeMaps, Write},
    plan::{L4Backend, L4Service, L4Vip},
};
use lb_common::PROTO_TCP;
use std::net::Ipv4Addr;

const RING: u32 = 13;
const MAX_SERVICES: u32 = 4;

fn b(name: &str, last: u8) -> L4Backend {
    L4Backend {
        name: name.into(),
        addr: std::net::Ipv4Addr::new(10, 0, 0, last).into(),
        mac: Some([2, 0, 0, 0, 0, last]),
        src: None,
        weight: 1,
        in_table: true,
        healthy: true,
        draining: false,
        evict: false,
        failover: false,
    }
}

fn svc(name: &str, backends: Vec<L4Backend>) -> L4Service {
    L4Service {
        name: name.into(),
        hash_mode: 0,
        flags: 0,
        idle_timeout_s: 600,
        forwarding: 0,
        gue_port: 0,
        backends,
    }
}

fn vip(name: &str, last: u8, port: u16, service: &str) -> L4Vip {
    L4Vip {
        name: name.into(),
        addr: std::net::Ipv4Addr::new(10, 0, 0, last).into(),
        port,
        proto: PROTO_TCP,
        service: service.into(),
    }
}

/// web (b1, b2) behind 10.0.0.100:80.
fn plan_a() -> L4Plan {
    L4Plan {
        services: vec![svc("web", vec![b("b1", 1), b("b2", 2)])],
        vips: vec![vip("web-vip", 100, 80, "web")],
    }
}

/// web loses b1 and gains b3; a second service and VIP appear; the old VIP moves port.
fn plan_b() -> L4Plan {
    L4Plan {
        services: vec![
            svc("web", vec![b("b2", 2), b("b3", 3)]),
            svc("api", vec![b("a1", 11)]),
        ],
        vips: vec![
            vip("web-vip", 100, 81, "web"),
            vip("api-vip", 101, 0, "api"),
        ],
    }
}

fn programmer() -> Programmer<FakeMaps> {
    Programmer::with_maps(FakeMaps::new(MAX_SERVICES, RING), RING, MAX_SERVICES).unwrap()
}

/// What packets see, independent of which Maglev half or generation holds it: each VIP's
/// service id and state, the addresses flagged, the active table of each live service
/// (as backend addresses), and every in-use backend slot.
type View = (
    BTreeMap<VipKey, (u32, u32, u32)>,
    BTreeMap<([u8; 16], u8), (u8, u8)>,
    BTreeMap<u32, Vec<[u8; 16]>>,
    BTreeMap<u32, ([u8; 16], [u8; 6], u32, u32)>,
);

fn view(c: &Contents) -> View {
    let vips = c
        .vips
        .iter()
        .map(|(k, m)| {
            (
                *k,
                (m.service, m.vip_id, c.vip_state[m.vip_id as usize].service),
            )
        })
        .collect();
    let live: BTreeSet<u32> = c.vips.values().map(|m| m.service).collect();
    let tables = live
        .into_iter()
        .map(|sid| {
            let base = ((sid * 2 + (c.services[sid as usize].active & 1)) * RING) as usize;
            let t = c.maglev[base..base + RING as usize]
                .iter()
                .map(|s| c.backends[*s as usize].addr)
                .collect();
            (sid, t)
        })
        .collect();
    let backends = c
        .backends
        .iter()
        .enumerate()
        .filter(|(_, b)| b.flags & backend_flags::IN_USE != 0)
        .map(|(i, b)| (i as u32, (b.addr, b.mac, b.flags, b.service)))
        .collect();
    (vips, addresses(c), tables, backends)
}

/// The VIP address set's contents, wherever each address sits: (address, family) → its TCP
/// and UDP flags.
fn addresses(c: &Contents) -> BTreeMap<([u8; 16], u8), (u8, u8)> {
    c.addr_set
        .values()
        .filter(|s| s.family != 0 && s.family != lb_common::vip_addr_set::TOMBSTONE)
        .map(|s| ((s.addr, s.family), (s.tcp, s.udp)))
        .collect()
}

#[test]
fn ids_are_stable_and_a_reused_slot_gets_a_new_generation() {
    let mut p = programmer();
    let a = p.apply(&plan_a()).unwrap();
    assert_eq!(a.service_ids["web"], 0);
    let (b1, b2) = (
        a.backend_slots[&crate::ids::BackendKey::new("web", "b1")],
        a.backend_slots[&crate::ids::BackendKey::new("web", "b2")],
    );
    assert_eq!((b1, b2), (0, 1));
    let bb = p.apply(&plan_b()).unwrap();
    assert_eq!(bb.service_ids["web"], 0, "a service keeps its id");
    assert_eq!(bb.service_ids["api"], 1);
    assert_eq!(
        bb.backend_slots[&crate::ids::BackendKey::new("web", "b2")],
        b2,
        "a kept backend keeps its slot"
    );
    let b3 = bb.backend_slots[&crate::ids::BackendKey::new("web", "b3")];
    assert!(
        b3 != b1,
        "a slot freed by this very plan is not reused by it"
    );
    assert_eq!(
        p.maps().c.backends[b1 as usize].flags,
        0,
        "b1's slot is freed"
    );
    // b1 comes back: it takes the lowest free slot (its old one), one generation later.
    let mut c = plan_b();
    c.services[0].backends.push(b("b1", 1));
    let cc = p.apply(&c).unwrap();
    assert_eq!(
        cc.backend_slots[&crate::ids::BackendKey::new("web", "b1")],
        b1
    );
    assert_eq!(p.maps().c.backends[b1 as usize].generation, 2);
}

#[test]
fn a_plan_that_does_not_fit_writes_nothing() {
    let mut p = Programmer::with_maps(FakeMaps::new(1, RING), RING, 1).unwrap();
    p.apply(&plan_a()).unwrap();
    let before = p.maps().c.clone();
    let writes = p.maps().log.len();
    let e = p.apply(&plan_b()).unwrap_err().to_string();
    assert!(e.contains("raise dataplane.max_services"), "{e}");
    assert_eq!(p.maps().log.len(), writes, "no write at all");
    assert_eq!(p.maps().c, before);
    assert!(!p.is_dirty());
}

#[test]
fn an_unchanged_plan_writes_nothing() {
    let mut p = programmer();
    p.apply(&plan_a()).unwrap();
    let writes = p.maps().log.len();
    p.apply(&plan_a()).unwrap();
    assert_eq!(p.maps().log.len(), writes);
}

/// Backends before the tables naming them, a table into the inactive half before the flip,
/// VIP state before the VIP, removals after every insert.
#[test]
fn writes_come_in_the_order_packets_need() {
    let mut p = programmer();
    p.apply(&plan_a()).unwrap();
    let start = p.maps().log.len();
    let active_before = p.maps().c.services[0].active;
    p.apply(&plan_b()).unwrap();
    let log = &p.maps().log[start..];
    let pos = |w: &dyn Fn(&Write) -> bool| log.iter().position(w);
    let mut ready: BTreeSet<u32> = [1].into(); // b2's slot, written by plan A
    let mut first_removal = None;
    for (i, w) in log.iter().enumerate() {
        match w {
            Write::Backend(s) => {
                ready.insert(*s);
            }
            Write::Maglev { base, slots } => {
                for s in slots.iter().filter(|s| **s != NO_BACKEND) {
                    assert!(
                        ready.contains(s),
                        "table names slot {s} before it is written"
                    );
                }
                let sid = base / (2 * RING);
                let flip = pos(&|w| matches!(w, Write::Service(x, _) if *x == sid)).unwrap();
                assert!(flip > i, "the flip comes after its table");
                if sid == 0 {
                    let half = (base / RING) % 2;
                    assert_ne!(half, active_before, "never into the active half");
                }
            }
            Write::InsertVip(k) => {
                let m = p.maps().c.vips[k];
                let st = pos(&|w| *w == Write::VipState(m.vip_id)).unwrap();
                assert!(st < i, "VIP state before the VIP");
            }
            Write::RemoveVip(_) => {
                first_removal.get_or_insert(i);
            }
            _ => {}
        }
    }
    let last_insert = log
        .iter()
        .rposition(|w| matches!(w, Write::InsertVip(_)))
        .unwrap();
    assert!(first_removal.unwrap() > last_insert, "removals come last");
}

#[test]
fn a_second_programmer_adopts_the_maps_and_rewrites_nothing() {
    let mut p = programmer();
    let a = p.apply(&plan_b()).unwrap();
    let mut maps = p.maps().clone();
    maps.log.clear();
    let mut q = Programmer::with_maps(maps, RING, MAX_SERVICES).unwrap();
    assert_eq!(q.apply(&plan_b()).unwrap(), a, "same ids after adoption");
    assert!(q.maps().log.is_empty(), "{:?}", q.maps().log);
}

/// Plan B fails at its k-th write, for every k; applying A again restores what packets see.
#[test]
fn rollback_after_a_failed_write_at_any_position_restores_the_maps() {
    let mut probe = programmer();
    probe.apply(&plan_a()).unwrap();
    let start = probe.maps().log.len();
    probe.apply(&plan_b()).unwrap();
    let writes_of_b = probe.maps().log.len() - start;
    assert!(writes_of_b > 10, "plan B makes {writes_of_b} writes");
    for k in 0..writes_of_b {
        let mut p = programmer();
        p.apply(&plan_a()).unwrap();
        let good = view(&p.maps().c);
        p.maps_mut().fail_after(k, false);
        let e = p.apply(&plan_b()).unwrap_err().to_string();
        assert!(e.contains("injected"), "{e}");
        assert!(p.is_dirty());
        p.apply(&plan_a())
            .unwrap_or_else(|e| panic!("rollback after write {k}: {e}"));
        assert!(!p.is_dirty());
        assert_eq!(view(&p.maps().c), good, "after a failure at write {k}");
        // And B can still be applied whole afterwards.
        p.apply(&plan_b()).unwrap();
        let mut fresh = programmer();
        fresh.apply(&plan_b()).unwrap();
        assert_eq!(view(&p.maps().c).0.len(), view(&fresh.maps().c).0.len());
    }
}

/// The rollback fails too: the programmer stays dirty, and once the maps work again the
/// next apply rewrites every entry, even those it believes are there.
#[test]
fn a_failed_rollback_leaves_it_dirty_and_the_next_apply_rewrites_everything() {
    let mut p = programmer();
    p.apply(&plan_a()).unwrap();
    let good = view(&p.maps().c);
    p.maps_mut().fail_after(3, true);
    assert!(p.apply(&plan_b()).is_err());
    assert!(p.apply(&plan_a()).is_err(), "the rollback fails as well");
    assert!(p.is_dirty());
    p.maps_mut().heal();
    // Something the programmer believes is written is not (a half-done write).
    p.maps_mut().c.backends[0] = Backend::default();
    let writes = p.maps().log.len();
    p.apply(&plan_a()).unwrap();
    let rewritten = &p.maps().log[writes..];
    assert!(rewritten.contains(&Write::Backend(0)), "{rewritten:?}");
    assert!(rewritten.iter().any(|w| matches!(w, Write::Maglev { .. })));
    assert!(rewritten.iter().any(|w| matches!(w, Write::InsertVip(_))));
    assert_eq!(view(&p.maps().c), good);
    assert!(!p.is_dirty());
    let writes = p.maps().log.len();
    p.apply(&plan_a()).unwrap();
    assert_eq!(p.maps().log.len(), writes, "clean again: nothing rewritten");
}

/// The active table of `service`, as backend addresses.
fn table_by_address(p: &Programmer<FakeMaps>, service: &str) -> Vec<Ipv4Addr> {
    let c = &p.maps().c;
    let sid = p.cur.service_ids[service];
    let base = ((sid * 2 + (c.services[sid as usize].active & 1)) * RING) as usize;
    c.maglev[base..base + RING as usize]
        .iter()
        .map(|s| {
            let a = c.backends[*s as usize].addr;
            Ipv4Addr::new(a[0], a[1], a[2], a[3])
        })
        .collect()
}

/// Two balancers given the same backends, one in file order and one by another order with
/// other names and a removal and re-add in between, hold different slots but map every
/// Maglev slot to the same backend address (what ECMP across balancers needs).
#[test]
fn tables_depend_on_the_backend_set_only_not_on_order_names_or_history() {
    let weights = [(1u8, 1u32), (2, 3), (3, 1), (4, 2)];
    let with = |order: &[usize], prefix: &str| -> L4Plan {
        let backends = order
            .iter()
            .map(|&i| {
                let (last, w) = weights[i];
                L4Backend {
                    weight: w,
                    ..b(&format!("{prefix}{last}"), last)
                }
            })
            .collect();
        L4Plan {
            services: vec![svc("web", backends)],
            vips: vec![vip("web-vip", 100, 80, "web")],
        }
    };
    let mut a = programmer();
    a.apply(&with(&[0, 1, 2, 3], "b")).unwrap();
    let mut other = programmer();
    // A different history: one backend, then adds in another order, a removal and a re-add.
    other.apply(&with(&[2], "x")).unwrap();
    other.apply(&with(&[2, 3, 0], "x")).unwrap();
    other.apply(&with(&[2, 3, 0, 1], "x")).unwrap();
    other.apply(&with(&[3, 0, 1], "x")).unwrap();
    other.apply(&with(&[3, 1, 0, 2], "y")).unwrap();
    let slots = |p: &Programmer<FakeMaps>| p.cur.slots.values().map(|v| v.0).collect::<Vec<_>>();
    assert_ne!(
        slots(&a),
        slots(&other),
        "the histories should give other slots"
    );
    assert_eq!(table_by_address(&a, "web"), table_by_address(&other, "web"));
    // And a restarted agent (adopting the maps) keeps it.
    let mut adopted = Programmer::with_maps(other.maps().clone(), RING, MAX_SERVICES).unwrap();
    adopted.apply(&with(&[1, 0, 3, 2], "z")).unwrap();
    assert_eq!(
        table_by_address(&a, "web"),
        table_by_address(&adopted, "web")
    );
}

/// The program's array-based address set always answers as the plan says: for every
/// address and protocol (flags: an all-ports rule, a rule with a port), across plans that
/// add, move and remove VIPs.
#[test]
fn the_vip_address_set_answers_as_the_plan_says() {
    let mut p = programmer();
    let agrees = |c: &Contents, plan: &L4Plan| {
        let mut want: BTreeMap<([u8; 16], u8, u8), u32> = BTreeMap::new();
        for v in &plan.vips {
            let (addr, family) = lb_common::addr::to_map(v.addr);
            let flag = if v.port == 0 {
                lb_common::VIP_ADDR_ALL_PORTS
            } else {
                lb_common::VIP_ADDR_PORTS
            };
            *want.entry((addr, family, v.proto)).or_default() |= flag;
        }
        let mut addrs: Vec<([u8; 16], u8)> = want.keys().map(|k| (k.0, k.1)).collect();
        addrs.push((
            lb_common::addr::to_map(Ipv4Addr::new(10, 0, 0, 250).into()).0,
            4,
        ));
        for (addr, family) in addrs {
            for proto in [PROTO_TCP, lb_common::PROTO_UDP] {
                assert_eq!(
                    crate::dataplane::vip_addr_set::lookup(&c.addr_set, (addr, family), proto),
                    want.get(&(addr, family, proto)).copied(),
                    "{addr:?} proto {proto}"
                );
            }
        }
    };
    for plan in [plan_a(), plan_b(), plan_a()] {
        p.apply(&plan).unwrap();
        agrees(&p.maps().c, &plan);
    }
    assert!(!p.maps().c.addr_set.is_empty());
}
