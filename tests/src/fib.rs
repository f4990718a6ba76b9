//! A private network namespace for FIB lookups in BPF_PROG_TEST_RUN: `bpf_fib_lookup`
//! consults the namespace of the interface a frame "arrived" on, so encapsulation fixtures
//! and benchmarks build this one (a veth pair with addresses, routes and permanent
//! neighbours) and run the program from a thread inside it.

use crate::{
    netns::{sh, Ns},
    xdp::XdpHarness,
};
use lb_userspace::dataplane::plan::L4Plan;

/// The balancer's side: `up0` (10.9.0.2/24, fd09::2/64, MAC `OUR_MAC`), the router at .1
/// (`ROUTER_MAC`); routed backends in 10.20.0.0/16 and fd20::/64 behind it. `up1`
/// (10.8.0.2/24) leads to 10.30.0.0/16 through 10.8.0.1; 10.40.0.0/16 goes through a next
/// hop with no neighbour entry.
pub const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x02];
pub const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x01];
pub const OTHER_ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x0e, 0x08];
pub const SRC: [u8; 4] = [10, 9, 0, 2];
pub const SRC6: [u8; 16] = [0xfd, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
pub const BACKEND: [u8; 4] = [10, 20, 0, 5];
pub const BACKEND6: [u8; 16] = [0xfd, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5];

/// A private namespace with the routes above; deleted on drop.
pub struct FibNs(pub Ns);

impl FibNs {
    pub fn new() -> anyhow::Result<Self> {
        let ns = Ns(crate::unique("lbfib"));
        sh(&["ip", "netns", "add", &ns.0])?;
        let me = FibNs(ns);
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let cmds: Vec<Vec<String>> = [
            "ip link set lo up".to_string(),
            "ip link add up0 type veth peer name up0p".into(),
            "ip link add up1 type veth peer name up1p".into(),
            format!("ip link set up0 address {}", mac(OUR_MAC)),
            "ip link set up0 mtu 1500".into(),
            "ip addr add 10.9.0.2/24 dev up0".into(),
            "ip addr add 10.8.0.2/24 dev up1".into(),
            "ip -6 addr add fd09::2/64 dev up0 nodad".into(),
            "ip link set up0 up".into(),
            "ip link set up0p up".into(),
            "ip link set up1 up".into(),
            "ip link set up1p up".into(),
            format!(
                "ip neigh add 10.9.0.1 lladdr {} dev up0 nud permanent",
                mac(ROUTER_MAC)
            ),
            format!(
                "ip neigh add fd09::1 lladdr {} dev up0 nud permanent",
                mac(ROUTER_MAC)
            ),
            format!(
                "ip neigh add 10.8.0.1 lladdr {} dev up1 nud permanent",
                mac(OTHER_ROUTER_MAC)
            ),
            "ip route add 10.20.0.0/16 via 10.9.0.1 dev up0".into(),
            "ip route add 10.30.0.0/16 via 10.8.0.1 dev up1".into(),
            "ip route add 10.40.0.0/16 via 10.9.0.40 dev up0".into(),
            "ip route add blackhole 10.50.0.0/16".into(),
            "ip -6 route add fd20::/64 via fd09::1 dev up0".into(),
            "sysctl -qw net.ipv4.conf.all.forwarding=1".into(),
            "sysctl -qw net.ipv6.conf.all.forwarding=1".into(),
        ]
        .iter()
        .map(|c| c.split(' ').map(String::from).collect())
        .collect();
        for c in &cmds {
            let args: Vec<&str> = c.iter().map(String::as_str).collect();
            me.0.exec(&args)?;
        }
        Ok(me)
    }

    /// Runs `f` with a harness holding `plan`, from a thread inside the namespace, with the
    /// ifindex of `up0`.
    pub fn run<T: Send + 'static>(
        &self,
        plan: L4Plan,
        f: impl FnOnce(&XdpHarness, u32) -> T + Send + 'static,
    ) -> T {
        self.0
            .run_in(move || {
                // sysfs shows the mounter's namespace; if_nametoindex asks this thread's.
                // SAFETY: a NUL-terminated name.
                let ifindex = unsafe { libc::if_nametoindex(c"up0".as_ptr()) };
                assert_ne!(ifindex, 0, "up0 in the test namespace");
                let mut h = XdpHarness::new(crate::xdp_cases::RING).unwrap();
                h.apply(&plan).unwrap();
                f(&h, ifindex)
            })
            .unwrap()
    }
}

impl Drop for FibNs {
    fn drop(&mut self) {
        let _ignored = sh(&["ip", "netns", "del", &self.0 .0]);
    }
}
