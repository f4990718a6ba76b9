//! Addresses in map layout: 16 bytes and a family (`FAMILY_V4`: the first 4 bytes, the rest
//! zero; `FAMILY_V6`: all 16), to and from `core::net::IpAddr`. Userspace's one conversion,
//! so every map writer and reader agrees with the program.

use crate::{FAMILY_V4, FAMILY_V6};
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The 16-byte field and family of `ip`.
pub fn to_map(ip: IpAddr) -> ([u8; 16], u8) {
    let mut a = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => {
            a[..4].copy_from_slice(&v4.octets());
            (a, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

/// The address a 16-byte field holds; any family but `FAMILY_V6` reads as IPv4.
pub fn from_map(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == FAMILY_V6 {
        IpAddr::V6(Ipv6Addr::from(*a))
    } else {
        IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_both_families() {
        for ip in ["10.0.0.1", "fd00::1", "::ffff:10.0.0.1"] {
            let ip: IpAddr = ip.parse().unwrap();
            let (a, f) = to_map(ip);
            assert_eq!(from_map(f, &a), ip);
        }
        assert_eq!(to_map("10.0.0.1".parse().unwrap()).0[4..], [0; 12]);
    }
}
