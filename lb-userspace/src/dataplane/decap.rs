//! The backend side of routed forwarding (`lb decap`): the `lb-decap` XDP program, a
//! separate object from the balancer with three small maps, pinned per interface under
//! `/sys/fs/bpf/lb-decap/<iface>` (maps and the link), so it keeps working after the
//! command exits. Running `up` again adopts the pins: the program is swapped into the
//! pinned link atomically and the address list and GUE port are rewritten in place.

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb_common::{
    decap::{names, AddrKey, Reason, Settings},
    FAMILY_V4, FAMILY_V6,
};
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use super::{
    loader::{self, open_pinned, Attached, LoadError},
    DECAP_OBJECT,
};

/// Folder holding one pin folder per interface.
pub const PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";

/// Maps pinned in an interface's pin folder.
const PINNED_MAPS: [&str; 3] = [names::MAP_ADDRS, names::MAP_SETTINGS, names::MAP_COUNTS];

/// The default pin folder of `iface`.
pub fn default_pin_dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
}

/// What the program on one interface should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Outer destinations to decapsulate for.
    pub addresses: Vec<IpAddr>,
    /// GUE destination port.
    pub gue_port: u16,
}

/// Loads the object with its maps pinned in `pin_dir` (adopting pins already there); a
/// pinned counter map of another shape (an upgrade added verdicts) is recreated.
pub fn load(pin_dir: &Path, object: &[u8]) -> Result<Ebpf, LoadError> {
    loader::ensure_bpffs()?;
    std::fs::create_dir_all(pin_dir)
        .map_err(|e| LoadError::Io(format!("creating {}: {e}", pin_dir.display())))?;
    let counts = pin_dir.join(names::MAP_COUNTS);
    if counts.exists() {
        let same = MapData::from_pin(&counts)
            .and_then(|m| m.info())
            .is_ok_and(|i| i.max_entries() == Reason::COUNT);
        if !same {
            let _ignored = std::fs::remove_file(&counts);
        }
    }
    let mut l = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = PINNED_MAPS.iter().map(|n| (*n, pin_dir.join(n))).collect();
    for (name, path) in &paths {
        l.map_pin_path(name, path.as_path());
    }
    Ok(l.load(object)?)
}

/// Rewrites the address list (exactly `want.addresses` afterwards) and the GUE port.
pub fn configure(ebpf: &mut Ebpf, want: &Desired) -> Result<(), LoadError> {
    let missing = |n: &str| LoadError::Io(format!("{n} map missing from the decap object"));
    let mut settings: Array<&mut MapData, Settings> = Array::try_from(
        ebpf.map_mut(names::MAP_SETTINGS)
            .ok_or_else(|| missing(names::MAP_SETTINGS))?,
    )?;
    settings.set(
        0,
        Settings {
            gue_port_be: want.gue_port.to_be(),
            _pad: 0,
        },
        0,
    )?;
    let mut addrs: HashMap<&mut MapData, AddrKey, u32> = HashMap::try_from(
        ebpf.map_mut(names::MAP_ADDRS)
            .ok_or_else(|| missing(names::MAP_ADDRS))?,
    )?;
    let keys: Vec<AddrKey> = want.addresses.iter().map(|a| addr_key(*a)).collect();
    // New addresses first, then the stale ones out: an address kept across the update is
    // never missing for a moment.
    for k in &keys {
        addrs.insert(k, 0, 0)?;
    }
    let stale: Vec<AddrKey> = addrs
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !keys.contains(k))
        .collect();
    for k in stale {
        addrs.remove(&k)?;
    }
    Ok(())
}

/// Loads (or adopts), configures and attaches the program on `iface`; the maps are written
/// before the program is attached, so it never runs with an empty address list. A failure
/// on an interface that had nothing attached removes what it pinned.
pub fn up(
    iface: &str,
    pin_dir: &Path,
    want: &Desired,
    mode: crate::config::XdpMode,
) -> Result<Attached, LoadError> {
    let fresh = !loader::link_pin(pin_dir, iface).exists();
    let result = (|| {
        let mut ebpf = load(pin_dir, DECAP_OBJECT)?;
        configure(&mut ebpf, want)?;
        let prog: &mut Xdp = ebpf
            .program_mut(names::PROG_DECAP)
            .ok_or_else(|| LoadError::Io(format!("program {} missing", names::PROG_DECAP)))?
            .try_into()?;
        let pin = loader::link_pin(pin_dir, iface);
        match loader::attach_program(prog, &pin, iface, mode) {
            // A pinned link outlives its interface: once the interface is removed (and
            // perhaps made again under the same name) the link is defunct and refuses the
            // swap. Dropping its pin releases it; then attach afresh.
            Err(e) if !fresh => {
                tracing::warn!(iface, error = %e, "the pinned link refused the new program (its interface was removed?); attaching afresh");
                let _ignored = std::fs::remove_file(&pin);
                loader::attach_program(prog, &pin, iface, mode)
            }
            r => r,
        }
    })();
    if result.is_err() && fresh {
        let _ignored = loader::teardown(pin_dir);
    }
    result
}

/// The interface a pin folder's program is attached to (from its `link_<iface>` pin).
pub fn attached_interface(pin_dir: &Path) -> Option<String> {
    std::fs::read_dir(pin_dir)
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .find_map(|n| n.strip_prefix("link_").map(str::to_string))
}

/// Every pin folder under [`PIN_ROOT`] (one per interface `lb decap` attached to).
pub fn pinned_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(PIN_ROOT)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// What one pin folder holds: the interface, the addresses, the port and the counters.
#[derive(Debug, Clone)]
pub struct Report {
    pub interface: Option<String>,
    pub pin_path: PathBuf,
    pub gue_port: u16,
    pub addresses: Vec<IpAddr>,
    /// Packets per verdict, summed over CPUs, in `Reason` order.
    pub counters: Vec<(&'static str, u64)>,
}

/// Reads a pin folder (no program needs to be loaded).
pub fn report(pin_dir: &Path) -> Result<Report, LoadError> {
    let counts: PerCpuArray<MapData, u64> = open_pinned(pin_dir, names::MAP_COUNTS)?;
    let mut counters = Vec::new();
    for i in 0..Reason::COUNT {
        counters.push((Reason(i).name(), counts.get(&i, 0)?.iter().sum()));
    }
    let settings: Array<MapData, Settings> = open_pinned(pin_dir, names::MAP_SETTINGS)?;
    let addrs: HashMap<MapData, AddrKey, u32> = open_pinned(pin_dir, names::MAP_ADDRS)?;
    let mut addresses: Vec<IpAddr> = addrs.keys().filter_map(Result::ok).map(key_addr).collect();
    addresses.sort();
    Ok(Report {
        interface: attached_interface(pin_dir),
        pin_path: pin_dir.to_path_buf(),
        gue_port: u16::from_be(settings.get(&0, 0)?.gue_port_be),
        addresses,
        counters,
    })
}

/// Human-readable form of [`report`]s.
pub fn table(reports: &[Report]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for r in reports {
        let addrs: Vec<String> = r.addresses.iter().map(IpAddr::to_string).collect();
        let _ = writeln!(
            out,
            "{} ({}): GUE port {}, addresses {}",
            r.interface.as_deref().unwrap_or("not attached"),
            r.pin_path.display(),
            r.gue_port,
            if addrs.is_empty() {
                "none".to_string()
            } else {
                addrs.join(" ")
            }
        );
        for (name, n) in &r.counters {
            let _ = writeln!(out, "  {name:<22}{n:>14}");
        }
    }
    out
}

/// Addresses of `iface` in this network namespace (getifaddrs(3), which asks the kernel
/// over netlink), IPv4 then IPv6, without duplicates.
pub fn interface_addresses(iface: &str) -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: out-pointer to a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned, alive until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string of the node.
        if unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_bytes() != iface.as_bytes() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says its real type.
        match i32::from(unsafe { (*ifa.ifa_addr).sa_family }) {
            libc::AF_INET => {
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            }
            libc::AF_INET6 => {
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    out.sort();
    out.dedup();
    Ok(out)
}

/// True when pins made here would not outlive the command: no bpffs is mounted at
/// /sys/fs/bpf and this process has a mount namespace of its own (as `ip netns exec`
/// gives), so the bpffs the loader would mount dies with the process, and the program with
/// its pins. A fresh host (one mount namespace, bpffs not yet mounted) is fine.
pub fn pins_would_not_last() -> bool {
    let bpffs_mounted = std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"/sys/fs/bpf") && f.get(2) == Some(&"bpf")
        })
    });
    let ns = |p: &str| std::fs::read_link(p).ok();
    let own_mount_ns = ns("/proc/self/ns/mnt") != ns("/proc/1/ns/mnt");
    !bpffs_mounted && own_mount_ns
}

/// Whether this network namespace has an interface named `iface` (if_nametoindex(3): the
/// calling process's namespace, unlike /sys/class/net, which shows the namespace of
/// whoever mounted sysfs).
pub fn interface_exists(iface: &str) -> bool {
    let Ok(name) = std::ffi::CString::new(iface) else {
        return false;
    };
    // SAFETY: valid C string.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}

/// The `DECAP_ADDRS` key of an address.
pub fn addr_key(a: IpAddr) -> AddrKey {
    let mut k = AddrKey::default();
    match a {
        IpAddr::V4(v4) => {
            k.addr[..4].copy_from_slice(&v4.octets());
            k.family = FAMILY_V4;
        }
        IpAddr::V6(v6) => {
            k.addr = v6.octets();
            k.family = FAMILY_V6;
        }
    }
    k
}

fn key_addr(k: AddrKey) -> IpAddr {
    if k.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(k.addr[0], k.addr[1], k.addr[2], k.addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(k.addr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_both_families() {
        for a in ["10.1.2.3", "fd00::11", "::ffff:10.0.0.1"] {
            let a: IpAddr = a.parse().unwrap();
            assert_eq!(key_addr(addr_key(a)), a);
        }
        let k = addr_key("10.1.2.3".parse().unwrap());
        assert_eq!(&k.addr[4..], &[0; 12]);
    }

    #[test]
    fn loopback_has_its_addresses_and_unknown_interfaces_none() {
        assert!(interface_exists("lo"));
        assert!(!interface_exists("no-such-if0"));
        let lo = interface_addresses("lo").unwrap();
        assert!(lo.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{lo:?}");
        assert!(interface_addresses("no-such-if0").unwrap().is_empty());
    }
}
