//! Facts about the interfaces XDP attaches to. A veth gets a warning: frames from senders
//! that leave TCP/UDP checksums to offload (the default on veth) reach XDP with partial
//! checksums, `XDP_TX` sends them on as they are, and the backend drops them. It works
//! once the senders finish checksums in software (`ethtool -K <if> tx off`).

use std::io;

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` of <linux/ethtool.h>.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut DrvInfo,
    _pad: [u8; 16],
}

/// Fails on the first configured interface this network namespace does not have, before
/// anything is loaded or pinned.
pub fn check_present(ifaces: &[String]) -> Result<(), String> {
    match ifaces
        .iter()
        .find(|i| !std::path::Path::new("/sys/class/net").join(i).exists())
    {
        Some(iface) => Err(format!(
            "no network interface {iface:?} here: fix dataplane.interfaces (`ip link` lists \
             this host's interfaces; the agent must run in the interface's network namespace)"
        )),
        None => Ok(()),
    }
}

/// The interface's driver name as `ethtool -i` shows it (SIOCETHTOOL, ETHTOOL_GDRVINFO).
pub fn driver(iface: &str) -> io::Result<String> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "bad interface name",
        ));
    }
    // SAFETY: all-zero is a valid value of this plain-data struct.
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: req is a valid ifreq whose data points at a drvinfo living across the call.
    let rc = unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err);
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Logs a warning when XDP goes onto a veth (see the module comment).
pub fn warn_if_veth(iface: &str) {
    if driver(iface).is_ok_and(|d| d == "veth") {
        tracing::warn!(
            iface,
            "XDP attached to a veth: senders must compute TCP/UDP checksums in software \
             (`ethtool -K <their interface> tx off`), or backends drop the forwarded frames"
        );
    }
}

/// Encapsulating services send packets on through the kernel's FIB, which forwards only for
/// interfaces with IP forwarding on (`bpf_fib_lookup` answers "forwarding disabled"
/// otherwise and every packet would be dropped). Refuses a plan that needs it where it is
/// off, naming the sysctl to set.
pub fn check_forwarding(ifaces: &[String], plan: &super::plan::L4Plan) -> Result<(), String> {
    let mut families = std::collections::BTreeSet::new();
    for s in plan.services.iter().filter(|s| s.forwarding != 0) {
        for b in &s.backends {
            families.insert(if b.addr.is_ipv4() { "ipv4" } else { "ipv6" });
        }
    }
    for iface in ifaces {
        for fam in &families {
            let path = format!("/proc/sys/net/{fam}/conf/{iface}/forwarding");
            let on = std::fs::read_to_string(&path).is_ok_and(|v| v.trim() != "0");
            if !on {
                return Err(format!(
                    "IPIP/GUE forwarding needs IP forwarding on {iface} (the kernel's FIB forwards only there): \
                     sysctl -w net.{fam}.conf.{iface}.forwarding=1"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn loopback_is_not_a_veth_and_bad_names_are_refused() {
        // lo answers GDRVINFO with an empty or "loopback"-like name, never "veth".
        if let Ok(d) = super::driver("lo") {
            assert_ne!(d, "veth");
        }
        assert!(super::driver("").is_err());
        assert!(super::driver("a-name-far-too-long-for-linux").is_err());
    }
}
